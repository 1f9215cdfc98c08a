// livetag casting page: the director of a casting day sees who waits in the lobby (with
// their camera / microphone / face check), starts scenes by hand or from livetag's
// proposals, opens each scene's dashboard and ends it. Server side: dashboard/casting.py.
//
// Actions go over /ws/casting with a request_id; each answers with its reply or an error
// ({type: "error", code, message}). Test hook: window.livetagCasting.

import { Backoff, LivetagCredentials } from "/dashboard/credentials.js";

const credentials = new LivetagCredentials({
  exchangeUrl: `${location.origin}/api/casting-credential`,
  storageKey: "livetag-casting-link",
});
const wsBase = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;
const RETRY_MAX_MS = 5000;

const el = (id) => document.getElementById(id);
const selected = new Set();
const pending = new Map(); // request_id -> {resolve}
let nextRequest = 1;
let clockOffsetMs = 0; // server clock minus this page's (waiting times are the server's)

const state = {
  connected: false,
  day: null,
  proposals: [],
  lastError: null,
  errors: [],
  ws: null,
  get waiting() {
    return state.day ? state.day.performers.filter((p) => p.status === "waiting").map((p) => p.performer_id) : [];
  },
  get scenes() {
    return state.day ? state.day.scenes : [];
  },
};
window.livetagCasting = state;

function text(tag, content, className) {
  const node = document.createElement(tag);
  if (content !== undefined && content !== null) node.textContent = String(content);
  if (className) node.className = className;
  return node;
}

function showError(code, message) {
  state.lastError = { code, message };
  state.errors.push(state.lastError);
  el("errors").textContent = `${code}: ${message}`;
}

function clearError() {
  el("errors").textContent = "";
}

// ---------------------------------------------------------------- actions

function request(message) {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    return Promise.resolve({ type: "error", code: "unavailable", message: "not connected" });
  }
  const requestId = nextRequest++;
  return new Promise((resolve) => {
    pending.set(requestId, resolve);
    ws.send(JSON.stringify({ ...message, request_id: requestId }));
  });
}

async function act(message) {
  const reply = await request(message);
  if (reply.type === "error") showError(reply.code, reply.message);
  else clearError();
  return reply;
}

state.startScene = (scene) => act({ type: "start_scene", ...scene });
state.propose = async (options) => {
  const reply = await act({ type: "propose", ...(options || {}) });
  if (reply.type === "proposals") {
    state.proposals = reply.proposals;
    renderProposals();
  }
  return reply;
};
state.approve = (index) => {
  const proposal = state.proposals[index];
  if (!proposal) return Promise.resolve({ type: "error", code: "malformed", message: "no such proposal" });
  return startAndOpen({ performers: proposal.performers, scenario_id: proposal.scenario_id, roles: proposal.roles });
};
state.endScene = (sessionId) => act({ type: "end_scene", session_id: sessionId });
state.sceneLink = (sessionId) => act({ type: "scene_link", session_id: sessionId });

async function startAndOpen(scene) {
  // Take 1 starts by itself once every performer of the scene has joined, unless unticked.
  const reply = await state.startScene({ ...scene, auto_take: el("auto-take").checked });
  if (reply.type === "scene_started") {
    // The scene's director link, minted with it: its row links to it.
    if (reply.dashboard_url) dashboardUrls.set(reply.session_id, reply.dashboard_url);
    if (state.day) renderScenes();
    selected.clear();
    state.proposals = [];
    renderProposals();
  }
  return reply;
}

// ---------------------------------------------------------------- rendering

function waitedText(sinceUs) {
  if (sinceUs === null || sinceUs === undefined) return "";
  const seconds = Math.max(0, Math.floor((Date.now() + clockOffsetMs - sinceUs / 1000) / 1000));
  const minutes = Math.floor(seconds / 60);
  return minutes ? `${minutes}:${String(seconds % 60).padStart(2, "0")}` : `${seconds} s`;
}

function checkCell(value) {
  if (value === null || value === undefined) return text("td", "…");
  return text("td", value ? "✔" : "✘", value ? "ok" : "bad");
}

function renderLobby() {
  const day = state.day;
  const body = el("lobby").querySelector("tbody");
  body.replaceChildren();
  const elsewhere = el("elsewhere");
  elsewhere.replaceChildren();
  for (const performer of day.performers) {
    const id = performer.performer_id;
    if (performer.status !== "waiting") {
      selected.delete(id);
      const where = performer.status === "in_scene" ? `in scene ${performer.scene}` : "away";
      elsewhere.append(text("li", `${performer.display_name} — ${where}`, performer.status === "in_scene" ? "running" : "dim"));
      continue;
    }
    const row = document.createElement("tr");
    row.dataset.performer = id;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = selected.has(id);
    box.addEventListener("change", () => {
      if (box.checked) selected.add(id);
      else selected.delete(id);
      renderRoles();
    });
    const pick = document.createElement("td");
    pick.append(box);
    const check = performer.check || {};
    const db = check.audio_level_db;
    // The loudest second the lobby measured lately; digital silence says so.
    const level = db === null || db === undefined ? "–" : db <= -100 ? "silent" : `${Math.round(db)}`;
    const partners = Object.entries(performer.partners).map(([who, n]) => `${who}×${n}`).join(", ");
    const waited = text("td", waitedText(performer.since_us));
    waited.className = "waited";
    waited.dataset.since = performer.since_us;
    row.append(
      pick,
      text("td", performer.display_name),
      waited,
      checkCell(performer.check ? check.camera : null),
      checkCell(performer.check ? check.microphone : null),
      checkCell(performer.check ? check.face_found : null),
      text("td", level),
      text("td", performer.scenes),
      text("td", partners || "—", "dim"),
    );
    body.append(row);
  }
  if (!body.children.length) {
    const row = document.createElement("tr");
    const cell = text("td", "nobody is waiting", "dim");
    cell.colSpan = 9;
    row.append(cell);
    body.append(row);
  }
}

function scenarioOf(id) {
  return state.day ? state.day.scenarios.find((s) => s.scenario_id === id) : undefined;
}

function renderScenarios() {
  const select = el("scenario");
  const chosen = select.value;
  select.replaceChildren(text("option", "— no scenario —"));
  select.firstChild.value = "";
  for (const scenario of state.day.scenarios) {
    const option = text("option", `${scenario.title} (${scenario.roles.length} roles)`);
    option.value = scenario.scenario_id;
    select.append(option);
  }
  select.value = scenarioOf(chosen) ? chosen : "";
  renderScenarioInfo();
}

function renderScenarioInfo() {
  const scenario = scenarioOf(el("scenario").value);
  el("prompt-box").hidden = Boolean(scenario);
  el("scenario-info").textContent = scenario
    ? `${scenario.prompt} — targets: ${scenario.targets.join(", ") || "none"}`
    : "";
  if (scenario) el("size").value = String(scenario.roles.length);
  renderRoles();
}

function renderRoles() {
  const box = el("roles");
  box.replaceChildren();
  const scenario = scenarioOf(el("scenario").value);
  if (!scenario) return;
  for (const id of selected) {
    const label = text("label", `${id} plays `);
    const select = document.createElement("select");
    select.dataset.performer = id;
    select.append(text("option", "(any free part)"));
    select.firstChild.value = "";
    for (const role of scenario.roles) {
      const option = text("option", role);
      option.value = role;
      select.append(option);
    }
    label.append(select);
    box.append(label);
  }
}

function renderProposals() {
  const box = el("proposals");
  box.replaceChildren();
  state.proposals.forEach((proposal, index) => {
    const card = text("div", null, "proposal");
    card.dataset.index = String(index);
    const scenario = proposal.scenario_id ? `in ${proposal.scenario_id}` : "without a scenario";
    card.append(text("strong", `${proposal.performers.join(" + ")} ${scenario}`));
    const reasons = document.createElement("ul");
    for (const reason of proposal.reasons) reasons.append(text("li", reason));
    const approve = text("button", "Approve and start");
    approve.type = "button";
    approve.addEventListener("click", () => state.approve(index));
    card.append(reasons, approve);
    box.append(card);
  });
}

// session_id -> the director dashboard link minted when this page started the scene.
const dashboardUrls = new Map();

function renderScenes() {
  const list = el("scenes");
  list.replaceChildren();
  for (const scene of state.day.scenes) {
    const running = scene.ended_ts_us === null;
    const item = text("li", null, running ? "running" : "");
    item.dataset.session = scene.session_id;
    const what = scene.scenario_id ? ` · ${scene.scenario_id}` : "";
    const when = new Date(scene.started_ts_us / 1000).toLocaleTimeString();
    item.append(text("div", `${scene.performers.join(" + ")}${what}`));
    item.append(text("div", `${scene.session_id} · ${when} · ${running ? scene.state || "starting" : "ended"}`, "dim"));
    const buttons = text("div", null, "buttons");
    // The link minted when this page started the scene; else (started elsewhere, or
    // before a reload) one asked for at the click.
    const minted = dashboardUrls.get(scene.session_id);
    const open = minted ? text("a", "open dashboard", "dashboard-link") : text("button", "Open dashboard");
    if (minted) {
      open.href = minted;
      open.target = "_blank";
      open.rel = "noopener noreferrer";
    } else {
      open.type = "button";
      open.addEventListener("click", async () => {
        const reply = await state.sceneLink(scene.session_id);
        if (reply.type === "scene_link") window.open(reply.url, "_blank", "noopener");
      });
    }
    buttons.append(open);
    if (running) {
      const end = text("button", "End scene", "danger");
      end.type = "button";
      end.addEventListener("click", () => state.endScene(scene.session_id));
      buttons.append(end);
    }
    item.append(buttons);
    list.append(item);
  }
  if (!list.children.length) list.append(text("li", "no scene yet", "dim"));
}

function render() {
  const day = state.day;
  el("day-title").textContent = day.title || day.day_id;
  renderLobby();
  renderScenarios();
  renderScenes();
}

setInterval(() => {
  for (const cell of document.querySelectorAll("td.waited")) {
    cell.textContent = waitedText(Number(cell.dataset.since));
  }
}, 1000);

el("scenario").addEventListener("change", renderScenarioInfo);
el("start").addEventListener("click", () => {
  const scenarioId = el("scenario").value || null;
  const roles = {};
  for (const select of el("roles").querySelectorAll("select")) {
    if (select.value) roles[select.dataset.performer] = select.value;
  }
  startAndOpen({
    performers: [...selected],
    scenario_id: scenarioId,
    roles,
    prompt: scenarioId ? null : el("prompt").value,
  });
});
el("propose").addEventListener("click", () => {
  const scenarioId = el("scenario").value || null;
  const size = Number(el("size").value) || null;
  state.propose(scenarioId ? { scenario_id: scenarioId } : { size });
});

// ---------------------------------------------------------------- the server

function onMessage(event) {
  const message = JSON.parse(event.data);
  if (message.request_id !== undefined && pending.has(message.request_id)) {
    const resolve = pending.get(message.request_id);
    pending.delete(message.request_id);
    resolve(message);
    return;
  }
  switch (message.type) {
    case "welcome":
      state.connected = true;
      backoff.reset();
      el("conn").dataset.state = "live";
      el("conn").textContent = "live";
      break;
    case "day":
      clockOffsetMs = message.server_now_us / 1000 - Date.now();
      state.day = message;
      render();
      break;
    case "credential":
      credentials.accept(message);
      break;
    case "error":
      showError(message.code, message.message);
      break;
    default:
      break;
  }
}

let reconnectTimer = null;
const backoff = new Backoff({ startMs: 500, maxMs: RETRY_MAX_MS });

function reconnectSoon(reason, slow) {
  state.connected = false;
  el("conn").dataset.state = "reconnecting";
  el("conn").textContent = `reconnecting (${reason})`;
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(connect, backoff.next(slow));
}

async function connect() {
  const ready = await credentials.ensure();
  if (!ready.ok) {
    if (ready.final) {
      el("conn").dataset.state = "error";
      el("conn").textContent = ready.message;
    } else reconnectSoon(ready.message);
    return;
  }
  const ws = new WebSocket(`${wsBase}/ws/casting`, credentials.protocols());
  state.ws = ws;
  ws.addEventListener("message", onMessage);
  ws.addEventListener("close", async (event) => {
    if (ws !== state.ws) return;
    state.connected = false;
    for (const resolve of pending.values()) resolve({ type: "error", code: "unavailable", message: "connection lost" });
    pending.clear();
    // Rejoining cannot help (revoked, ran out), later (refused for now), or soon.
    const verdict = await credentials.closed(event, `${location.origin}/api/casting-token`);
    if (ws !== state.ws) return;
    if (!verdict.retry) {
      el("conn").dataset.state = "error";
      el("conn").textContent = verdict.message;
    } else reconnectSoon(verdict.message, verdict.slow);
  });
}

connect();
