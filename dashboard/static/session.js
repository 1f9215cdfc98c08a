// Session control in the header: the session's id, prompt and state, who is connected,
// the running take, the director's buttons (start/end a take, end the session) and the
// join links the director asks for. Separate because it is the one part of the page that
// acts: each button sends a request the server may refuse, and the buttons stay disabled
// while one is pending.

import { $, dash, el, hooks, pushError, send, sessionNowUs } from "./shared.js";

// A request sent disables the buttons for this long, unless the server answers sooner
// (a new session record or an error).
const ACTION_PENDING_MS = 3000;

let sessionId = null;
let lastTakeText = "";
let actionPendingUntil = 0;
let inviteRow = null; // the link row waiting for the server's invite answer

// ---- a tile's presence dot (filled in by renderPresence) ----------------------------
export function createPresenceDot() {
  const presence = el("span", "dot");
  presence.dataset.ok = "unknown";
  presence.title = "presence";
  return presence;
}

// ---- the session --------------------------------------------------------------------
// The header's id and prompt, and the tab's title, from hello.session.
export function showSessionHeader(session) {
  sessionId = session.session_id || null;
  $("session-id").textContent = session.session_id || "—";
  $("session-prompt").textContent = session.prompt || "";
  $("session-prompt").title = session.prompt || "";
  document.title = `livetag · ${session.session_id || "director"}`;
}

function openTake() {
  const takes = dash.session.takes || [];
  const last = takes[takes.length - 1];
  return last && (last.end_ts_us === null || last.end_ts_us === undefined) ? last : null;
}

// A session record (whole in hello, its changed parts in updates).
export function setSession(session) {
  if (!session || typeof session !== "object") return;
  if (session.state !== undefined) dash.session.state = session.state;
  if (Array.isArray(session.takes)) dash.session.takes = session.takes;
  if (Array.isArray(session.presence)) dash.session.presence = session.presence;
  hooks.session = { state: dash.session.state, takes: dash.session.takes, presence: dash.session.presence };
  const stateEl = $("session-state");
  stateEl.textContent = dash.session.state || "—";
  stateEl.dataset.state = dash.session.state || "";
  // An ended or archived session shows that alone: the header's "● live" (this page's
  // connection) and the call status next to an ENDED badge read as a live session.
  document.body.dataset.session = dash.session.state || "";
  renderPresence();
  actionPendingUntil = 0;
  renderTakeControls();
}

export function renderTakeControls() {
  const state = dash.session.state;
  const finished = state === "ended" || state === "archived";
  const open = openTake();
  const connected = hooks.connected;
  const pending = performance.now() < actionPendingUntil;
  $("take-start").disabled = !connected || pending || finished || !!open;
  $("take-end").disabled = !connected || pending || !open;
  $("end-session").disabled = !connected || pending || finished;
  const takes = dash.session.takes || [];
  $("take-start").textContent = open ? "Start take" : `Start take ${takes.length + 1}`;
  $("take-end").textContent = open ? `End take ${open.take_id}` : "End take";
  updateTakeInfo();
}

function clockText(us) {
  const total = Math.max(0, Math.floor(us / 1e6));
  const m = Math.floor(total / 60);
  const s = total % 60;
  return `${m}:${String(s).padStart(2, "0")}`;
}

function updateTakeInfo() {
  const open = openTake();
  const takes = dash.session.takes || [];
  let text;
  if (open) {
    const now = sessionNowUs();
    text = `● take ${open.take_id} · ${now === null ? "—" : clockText(now - open.start_ts_us)}`;
  } else {
    text = takes.length ? `no take running · ${takes.length} done` : "no take yet";
  }
  if (text !== lastTakeText) {
    lastTakeText = text;
    const info = $("take-info");
    info.textContent = text;
    info.dataset.open = open ? "1" : "0";
  }
}

// Every animation frame: the running take's clock, and the buttons again once a
// request's wait has run out unanswered.
export function tickTakeControls(now, perfNow) {
  if (now !== null) updateTakeInfo();
  if (actionPendingUntil && perfNow >= actionPendingUntil) {
    actionPendingUntil = 0;
    renderTakeControls();
  }
}

// The server refused something (an error message): a pending request or invite is over.
export function settleRefusedAction() {
  if (inviteRow) {
    inviteRow.ask.disabled = false;
    inviteRow = null;
  }
  actionPendingUntil = 0;
  renderTakeControls();
}

function renderPresence() {
  const list = $("presence");
  list.textContent = "";
  const connectedIds = new Set();
  for (const p of dash.session.presence || []) {
    const item = el("li", "presence-item");
    const dot = el("span", "dot");
    dot.dataset.ok = p.connected ? "true" : "false";
    item.append(dot, document.createTextNode(`${p.participant_id} `), el("span", "dim", p.role || ""));
    list.append(item);
    if (p.connected) connectedIds.add(p.participant_id);
  }
  for (const panel of dash.panels.values()) {
    const known = (dash.session.presence || []).some((p) => p.participant_id === panel.id);
    panel.presenceEl.dataset.ok = known ? String(connectedIds.has(panel.id)) : "unknown";
  }
}

// ---- join links ---------------------------------------------------------------------
// Join links are made when the director asks (each with a token id of its own, which
// "livetag session revoke --token-id" takes): one row per performer, and one to invite
// an observer by name.
export function renderLinks(roster) {
  const list = $("links-list");
  list.textContent = "";
  for (const performer of roster || []) {
    list.append(linkRow("performer", performer.performer_id, `performer ${performer.performer_id}`));
  }
  list.append(linkRow("observer", null, "observer"));
}

function linkRow(role, name, label) {
  const item = el("li", "link-row");
  const who = el("span", "link-who", label);
  let nameInput = null;
  if (name === null) {
    nameInput = el("input", "link-name");
    nameInput.type = "text";
    nameInput.placeholder = "name";
    nameInput.maxLength = 64;
    who.textContent = "";
    who.append(nameInput);
  }
  const input = el("input", "link-url mono");
  input.type = "text";
  input.readOnly = true;
  input.placeholder = "a new link, when asked for";
  input.addEventListener("focus", () => input.select());
  const ask = el("button", "link-copy", role === "observer" ? "Invite" : "New link");
  ask.type = "button";
  ask.addEventListener("click", () => {
    const wanted = name === null ? nameInput.value.trim() : name;
    if (!wanted) {
      pushError({ type: "error", code: "bad_invite", message: "give the observer a name" });
      return;
    }
    if (send({ type: "invite", role, name: wanted })) {
      inviteRow = { input, ask };
      ask.disabled = true;
    }
  });
  item.append(who, input, ask);
  return item;
}

// The server's answer to an invite: the new link, copied to the clipboard if allowed.
export async function onInvite(message) {
  hooks.invites.push({ role: message.role, participant_id: message.participant_id, token_id: message.token_id });
  const row = inviteRow;
  inviteRow = null;
  if (!row || typeof message.url !== "string") return;
  row.ask.disabled = false;
  row.input.value = message.url;
  row.input.title = `${message.role} ${message.participant_id}, token id ${message.token_id}`;
  let ok = false;
  try {
    if (navigator.clipboard && navigator.clipboard.writeText) {
      await navigator.clipboard.writeText(message.url);
      ok = true;
    }
  } catch (error) {
    ok = false;
  }
  if (!ok) {
    row.input.focus();
    row.input.select();
  }
  row.ask.textContent = ok ? "Copied" : "Select ⌘/Ctrl+C";
  setTimeout(() => {
    row.ask.textContent = row.input.closest(".link-row").querySelector(".link-name") ? "Invite" : "New link";
  }, 1800);
}

// ---- the director's controls --------------------------------------------------------
// An observer's dashboard watches and tags: takes, the session's end and new links are
// the director's (the server refuses them too).
export function applyControls(controls) {
  for (const id of ["take-start", "take-end", "end-session", "links"]) $(id).hidden = !controls;
}

function action(type) {
  if (send({ type })) {
    actionPendingUntil = performance.now() + ACTION_PENDING_MS;
    renderTakeControls();
  }
}

$("take-start").addEventListener("click", () => action("take_start"));
$("take-end").addEventListener("click", () => action("take_end"));
$("end-session").addEventListener("click", () => {
  if (window.confirm(`End session ${sessionId || ""} for everyone? This cannot be undone.`)) action("end_session");
});
