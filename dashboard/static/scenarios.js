// The director's scenario editor: a collapsible "Scenarios" panel listing the library
// (livetag.scenarios), and a TOML editor with Check, Save and Delete. The server checks
// and keeps everything (dashboard/scenarios.py): the page sends the text and shows what
// comes back, an error with its line (the line is selected in the editor).
//
// Its answers come on the dashboard's websocket, which dashboard.js reads; this module
// listens on the socket each request went out on, for the answers that carry the
// request's id (a reconnect drops what was pending: it times out and says so).

import { dash, el, hooks } from "./shared.js";

// What a scenario message may weigh (MAX_SCENARIO_MESSAGE_BYTES on the server).
const MAX_MESSAGE_BYTES = 32 * 1024;
const ANSWER_TIMEOUT_MS = 10000;
const NEW_SCENARIO = `scenario_id = "new-scenario"
title = "A new scenario"
prompt = """
Where the scene is, who is there, and what has just happened."""
duration_s = 120
observers_see = "prompt"        # or "prompt_and_roles", or "nothing"
targets = []

[[roles]]
name = "the first part"
brief = "What this part wants, and what is in the way."
targets = []

[[roles]]
name = "the second part"
brief = ""
targets = []

# [[arc]]                       # optional: the emotions meant, in time order
# at_s = 0
# label = "amusement"
# intensity = "normal"          # or "strong"
`;

const state = {
  mounted: false,
  nextRequest: 1,
  pending: new Map(), // request_id -> {resolve, timer}
  listened: new WeakSet(), // sockets this module reads answers from
  editing: null, // the id of the scenario opened in the editor (null: a new one)
  ui: null,
};

// The test hooks: what the panel shows; request(message) sends one as the panel does.
hooks.scenarios = { ids: [], editing: null, lastError: null, lastReply: null, status: "", request: (message) => request(message) };

// ---- requests -----------------------------------------------------------------------
function onSocketMessage(event) {
  let message;
  try {
    message = JSON.parse(event.data);
  } catch (error) {
    return;
  }
  if (!message || typeof message !== "object" || typeof message.request_id !== "string") return;
  const waiting = state.pending.get(message.request_id);
  if (!waiting) return;
  state.pending.delete(message.request_id);
  clearTimeout(waiting.timer);
  waiting.resolve(message);
}

// Send a message; resolves with its answer (an error message too), or with a local
// error when it could not be sent or no answer came.
function request(message) {
  const ws = dash.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) {
    return Promise.resolve({ type: "error", code: "offline", message: "not connected: try again in a moment" });
  }
  const requestId = `scenario-${state.nextRequest++}`;
  const text = JSON.stringify({ ...message, request_id: requestId });
  if (new TextEncoder().encode(text).length > MAX_MESSAGE_BYTES) {
    return Promise.resolve({
      type: "error",
      code: "too_large",
      message: `the scenario is over ${MAX_MESSAGE_BYTES / 1024} KiB: load it from a file (livetag scenarios load)`,
    });
  }
  if (!state.listened.has(ws)) {
    state.listened.add(ws);
    ws.addEventListener("message", onSocketMessage);
  }
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      state.pending.delete(requestId);
      resolve({ type: "error", code: "no_answer", message: "no answer from the dashboard server" });
    }, ANSWER_TIMEOUT_MS);
    state.pending.set(requestId, { resolve, timer });
    ws.send(text);
  });
}

// ---- what the panel shows -------------------------------------------------------------
function setStatus(text, kind) {
  const { status } = state.ui;
  status.textContent = text;
  status.dataset.kind = kind || "";
  hooks.scenarios.status = text;
}

function showError(error) {
  hooks.scenarios.lastError = error;
  setStatus(error.message || error.reason || String(error), "error");
  if (typeof error.line === "number") selectLine(error.line);
}

// Select line `line` (1-based) of the editor, scrolled into view.
function selectLine(line) {
  const { text } = state.ui;
  const lines = text.value.split("\n");
  if (line < 1 || line > lines.length) return;
  let start = 0;
  for (let i = 0; i < line - 1; i++) start += lines[i].length + 1;
  text.focus();
  text.setSelectionRange(start, start + lines[line - 1].length);
  const lineHeight = parseFloat(getComputedStyle(text).lineHeight) || 16;
  text.scrollTop = Math.max(0, (line - 3) * lineHeight);
}

function setEditing(scenarioId) {
  state.editing = scenarioId;
  hooks.scenarios.editing = scenarioId;
  state.ui.editing.textContent = scenarioId ? `editing ${scenarioId}` : "a new scenario";
  state.ui.remove.disabled = !scenarioId;
  markCurrent();
}

// The scenario opened in the editor stands out in the list.
function markCurrent() {
  for (const item of state.ui.list.querySelectorAll(".scenario-item")) {
    const current = item.dataset.scenarioId === state.editing;
    item.dataset.current = current ? "1" : "0";
    item.firstChild.setAttribute("aria-current", current ? "true" : "false");
  }
}

function renderList(scenarios) {
  const { list } = state.ui;
  list.textContent = "";
  hooks.scenarios.ids = scenarios.map((s) => s.scenario_id);
  if (!scenarios.length) list.append(el("li", "dim", "the library is empty"));
  for (const scenario of scenarios) {
    const item = el("li", "scenario-item");
    item.dataset.scenarioId = scenario.scenario_id;
    const open = el("button", "scenario-open");
    open.type = "button";
    const duration = scenario.duration_s ? ` · ${Math.round(scenario.duration_s / 60)} min` : "";
    open.append(
      el("span", "scenario-id mono", scenario.scenario_id),
      el("span", "scenario-title", scenario.title),
      el("span", "scenario-meta dim", `${scenario.parts.length} part${scenario.parts.length === 1 ? "" : "s"}${duration}`),
    );
    open.title = `parts: ${scenario.parts.join(", ")}\nemotions: ${scenario.targets.join(", ") || "none"}\nsaved by ${scenario.saved_by || "?"}`;
    open.addEventListener("click", () => openScenario(scenario.scenario_id));
    item.append(open);
    list.append(item);
  }
  markCurrent();
}

function answered(reply) {
  hooks.scenarios.lastReply = reply;
  if (reply.type === "error") {
    showError({ line: null, reason: reply.message, message: `${reply.code}: ${reply.message}` });
    return false;
  }
  return true;
}

// ---- actions ------------------------------------------------------------------------
async function refresh() {
  const reply = await request({ type: "scenario_list" });
  if (answered(reply) && Array.isArray(reply.scenarios)) renderList(reply.scenarios);
}

async function openScenario(scenarioId) {
  const reply = await request({ type: "scenario_get", scenario_id: scenarioId });
  if (!answered(reply)) return;
  state.ui.text.value = reply.text;
  state.ui.text.scrollTop = 0;
  setEditing(reply.scenario_id);
  hooks.scenarios.lastError = null;
  setStatus(`opened ${reply.scenario_id}`, "");
}

function newScenario() {
  state.ui.text.value = NEW_SCENARIO;
  state.ui.text.scrollTop = 0;
  setEditing(null);
  hooks.scenarios.lastError = null;
  setStatus("a new scenario: give it its own scenario_id", "");
}

async function check() {
  setStatus("checking…", "busy");
  const reply = await request({ type: "scenario_check", text: state.ui.text.value });
  if (!answered(reply)) return;
  if (!reply.ok) {
    showError(reply.error);
    return;
  }
  hooks.scenarios.lastError = null;
  const s = reply.scenario;
  setStatus(`fine: ${s.scenario_id}, ${s.roles.length} part${s.roles.length === 1 ? "" : "s"}, ${s.arc.length} arc step${s.arc.length === 1 ? "" : "s"}`, "ok");
}

async function save() {
  setStatus("saving…", "busy");
  const reply = await request({ type: "scenario_save", text: state.ui.text.value, editing: state.editing });
  if (!answered(reply)) return;
  if (!reply.ok) {
    showError(reply.error);
    return;
  }
  hooks.scenarios.lastError = null;
  setEditing(reply.scenario_id);
  if (Array.isArray(reply.scenarios)) renderList(reply.scenarios);
  setStatus(`saved ${reply.scenario_id} to the library`, "ok");
}

async function remove() {
  const scenarioId = state.editing;
  if (!scenarioId) return;
  if (!window.confirm(`Delete scenario ${scenarioId} from the library? Sessions that played it keep their copy.`)) return;
  const reply = await request({ type: "scenario_delete", scenario_id: scenarioId });
  if (!answered(reply)) return;
  hooks.scenarios.lastError = null;
  if (Array.isArray(reply.scenarios)) renderList(reply.scenarios);
  setEditing(null);
  setStatus(`deleted ${reply.scenario_id}`, "ok");
}

// ---- mounting -----------------------------------------------------------------------
function button(text, className, onClick) {
  const node = el("button", className, text);
  node.type = "button";
  node.addEventListener("click", onClick);
  return node;
}

function vocabularyHint() {
  const vocabulary = (hooks.hello && hooks.hello.session && hooks.hello.session.vocabulary) || [];
  return vocabulary.length ? `emotions: ${vocabulary.map((v) => v.label).join(", ")}` : "";
}

// Build the panel into `root` (a director's dashboard only; called again on every hello,
// it only refreshes the list when the panel is open).
export function mountScenarios(root) {
  if (!root) return;
  if (state.mounted) {
    state.ui.hint.textContent = vocabularyHint();
    if (state.ui.details.open) refresh();
    return;
  }
  state.mounted = true;
  const details = el("details", "scenarios-details");
  const summary = el("summary", null);
  summary.append(el("h2", null, "Scenarios"));
  const list = el("ul", "scenario-list");
  list.setAttribute("aria-label", "the scenario library");
  const listButtons = el("div", "scenario-buttons");
  listButtons.append(button("New", "scenario-new", newScenario), button("Refresh", "scenario-refresh", refresh));
  const editing = el("p", "scenario-editing dim", "a new scenario");
  const text = el("textarea", "scenario-text mono");
  text.spellcheck = false;
  text.rows = 16;
  text.setAttribute("aria-label", "scenario (TOML)");
  text.value = NEW_SCENARIO;
  const hint = el("p", "scenario-hint dim", vocabularyHint());
  const actions = el("div", "scenario-buttons");
  const removeButton = button("Delete", "scenario-delete danger", remove);
  removeButton.disabled = true;
  actions.append(button("Check", "scenario-check", check), button("Save", "scenario-save", save), removeButton);
  const status = el("p", "scenario-status");
  status.setAttribute("role", "status");
  details.append(summary, list, listButtons, editing, text, hint, actions, status);
  details.addEventListener("toggle", () => {
    if (details.open) refresh();
  });
  root.textContent = "";
  root.append(details);
  root.hidden = false;
  state.ui = { details, list, text, hint, status, editing, remove: removeButton };
}
