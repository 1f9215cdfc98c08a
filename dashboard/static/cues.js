// The director's live cues: per performer tile, the cue in force and whether the
// performer's page showed it (and how many ms after it was sent); for the director, the
// controls to send one (an emotion of the vocabulary in its colour, normal or strong, or
// a short line of text; "clear" withdraws it), per performer and for everyone at once
// (the side panel). An observer's dashboard shows no cue at all (the server sends it
// none): knowing what was intended would bias what the observer perceives.
// window.livetagDashboard.cue({to, kind, label, intensity, text}) sends one and resolves
// with the server's answer ({type: "cue_sent", cue_ids, group_id, ts_us} or {type:
// "error", code, message}). Separate because it is the one part of the page that steers
// the scene, and its records come back twice (sent, then shown).

import { $, dash, el, hooks, labelColour, panelFor, pushError, send, sessionNowUs } from "./shared.js";

const REPLY_TIMEOUT_MS = 10000; // an unanswered cue is reported as such after this
const STATE_TEXT_MS = 250; // a cue still waiting to be shown has its age refreshed at 4 Hz
const MAX_TEXT = 200; // records.MAX_CUE_TEXT
const TO_ALL = "all";

let vocabulary = []; // [{label, colour}] of the session
let controls = false; // this dashboard is the director's
let nextRequest = 1;
const pending = []; // cue requests awaiting the server's answer: {id, resolve, timer, status}
const cuesByPerformer = new Map(); // performer_id -> {cues: Map(cue_id -> entry), current}
const allControl = { root: null, status: null, parts: null };

// ---- sending --------------------------------------------------------------------------
// Each request carries its own id, which the server echoes with its answer or refusal.
export function cue({ to, kind = "emotion", label = null, intensity = "normal", text = "" } = {}) {
  const id = nextRequest;
  nextRequest += 1;
  const message = { type: "cue", to, kind, request_id: id };
  if (kind === "emotion") {
    message.label = label;
    message.intensity = intensity;
  } else if (kind === "text") {
    message.text = text;
  }
  if (!send(message)) return Promise.resolve({ type: "error", code: "offline", message: "not connected" });
  hooks.cuesRequested += 1;
  return new Promise((resolve) => {
    const timer = setTimeout(() => settle(id, { type: "error", code: "timeout", message: "the server did not answer the cue" }), REPLY_TIMEOUT_MS);
    pending.push({ id, resolve, timer });
  });
}
hooks.cue = cue;

function settle(id, reply) {
  const index = pending.findIndex((request) => request.id === id);
  if (index < 0) return false;
  const [request] = pending.splice(index, 1);
  clearTimeout(request.timer);
  hooks.cueReplies.push(reply);
  if (hooks.cueReplies.length > 50) hooks.cueReplies.shift();
  request.resolve(reply);
  return true;
}

// The server's answers: a cue_sent, or an error naming the request it refuses (an error
// naming none is about something else: a take, a link).
export function onCueSent(message) {
  settle(message.request_id, message);
}

export function onCueError(message) {
  if (message.request_id !== undefined) return settle(message.request_id, message);
  return false;
}

// The connection is gone: no answer will come for what was sent on it.
export function failPendingCues() {
  for (const request of [...pending]) settle(request.id, { type: "error", code: "offline", message: "the connection closed before the server answered" });
}

// ---- the session's vocabulary and who may send ---------------------------------------
export function setCueVocabulary(entries) {
  vocabulary = (entries || []).filter((entry) => entry && entry.label).map((entry) => ({ label: entry.label }));
  for (const panel of dash.panels.values()) if (panel.cueRow) fillControls(panel.cueRow.parts, panel.id);
  if (allControl.parts) fillControls(allControl.parts, TO_ALL);
}

export function setCueControls(isDirector) {
  controls = !!isDirector;
  for (const panel of dash.panels.values()) {
    if (!panel.cueRow) continue;
    panel.cueRow.root.hidden = !controls; // an observer's tile has no cue row at all
    panel.cueRow.parts.root.hidden = !controls;
  }
  if (allControl.parts) allControl.parts.root.hidden = !controls;
  const side = $("cue-all");
  if (side) side.hidden = !controls;
}

// ---- the controls (one per performer tile, one for everyone) --------------------------
function createControls(to) {
  const root = el("div", "cue-controls");
  root.hidden = !controls;
  const emotions = el("div", "cue-emotions");
  emotions.setAttribute("role", "group");
  emotions.setAttribute("aria-label", to === TO_ALL ? "cue an emotion to every performer" : `cue an emotion to ${to}`);
  const strong = el("button", "cue-strong", "strong");
  strong.type = "button";
  strong.setAttribute("aria-pressed", "false");
  strong.title = "intensity of the next emotion cue: normal, or strong when pressed (shift+click an emotion: strong once)";
  strong.addEventListener("click", () => strong.setAttribute("aria-pressed", strong.getAttribute("aria-pressed") === "true" ? "false" : "true"));
  const text = el("input", "cue-text");
  text.type = "text";
  text.maxLength = MAX_TEXT;
  text.placeholder = "a line of text…";
  text.setAttribute("aria-label", to === TO_ALL ? "a line of text for every performer" : `a line of text for ${to}`);
  const sendText = el("button", "cue-send-text", "Send");
  sendText.type = "button";
  sendText.title = "send the line of text as the cue (Enter in the field)";
  const clear = el("button", "cue-clear", "Clear");
  clear.type = "button";
  clear.title = "withdraw the cue in force";
  const parts = { root, emotions, strong, text, sendText, clear, to, status: null };
  const submitText = () => {
    const line = text.value.trim();
    if (!line) {
      pushError({ type: "error", code: "malformed", message: "write the line to send first" });
      return;
    }
    dispatch(parts, { to, kind: "text", text: line }).then((reply) => {
      if (reply.type === "cue_sent") text.value = "";
    });
  };
  sendText.addEventListener("click", submitText);
  text.addEventListener("keydown", (event) => {
    if (event.key === "Enter") {
      event.preventDefault();
      submitText();
    } else if (event.key === "Escape") text.value = "";
  });
  clear.addEventListener("click", () => dispatch(parts, { to, kind: "clear" }));
  const line = el("div", "cue-line");
  line.append(strong, text, sendText, clear);
  root.append(emotions, line);
  fillControls(parts, to);
  return parts;
}

function fillControls(parts, to) {
  parts.emotions.textContent = "";
  for (const { label } of vocabulary) {
    const button = el("button", "cue-emotion", label);
    button.type = "button";
    button.dataset.label = label;
    button.style.setProperty("--label-colour", labelColour(label));
    button.title = `cue ${label} to ${to === TO_ALL ? "every performer" : to} (shift: strong)`;
    button.addEventListener("click", (event) => {
      const strong = event.shiftKey || parts.strong.getAttribute("aria-pressed") === "true";
      dispatch(parts, { to, kind: "emotion", label, intensity: strong ? "strong" : "normal" });
    });
    parts.emotions.append(button);
  }
}

// A control's request: its buttons wait for the answer; a refusal is shown under it.
function dispatch(parts, request) {
  parts.root.dataset.pending = "1";
  const promise = cue(request);
  promise.then((reply) => {
    delete parts.root.dataset.pending;
    if (parts.status) {
      if (reply.type === "error") {
        parts.status.textContent = `${reply.code}: ${reply.message}`;
        parts.status.dataset.level = "bad";
      } else {
        parts.status.textContent = "";
        delete parts.status.dataset.level;
      }
    }
  });
  return promise;
}

// A performer tile's cue row: the cue in force and its state, and the controls.
export function createCueRow(performerId) {
  const root = el("div", "perf-cue");
  root.hidden = !controls; // the director's only
  const now = el("p", "cue-now num");
  now.dataset.state = "none";
  now.textContent = "no cue";
  const parts = createControls(performerId);
  const status = el("p", "cue-status");
  status.setAttribute("role", "status");
  parts.status = status;
  root.append(now, parts.root, status);
  return { root, now, parts };
}

// The side panel's control for every performer at once.
export function mountCueAll() {
  const host = $("cue-all-controls");
  if (!host || allControl.root) return;
  const parts = createControls(TO_ALL);
  const status = $("cue-all-status");
  parts.status = status;
  allControl.root = parts.root;
  allControl.status = status;
  allControl.parts = parts;
  host.append(parts.root);
}

// ---- the cues as the server tells them ------------------------------------------------
function stateOf(performerId) {
  let state = cuesByPerformer.get(performerId);
  if (!state) {
    state = { cues: new Map(), current: null, known: false };
    cuesByPerformer.set(performerId, state);
  }
  return state;
}

// entries: [{cue_id, performer_id, group_id, kind, label, intensity, text, sent_by, ts_us,
// shown_ts_us, latency_ms, state}], a later one replacing the earlier of the same cue_id
export function addCues(entries) {
  if (!Array.isArray(entries)) return;
  const touched = new Set();
  for (const entry of entries) {
    if (!entry || typeof entry !== "object" || !entry.cue_id || !entry.performer_id) continue;
    const state = stateOf(entry.performer_id);
    state.cues.set(entry.cue_id, entry);
    touched.add(entry.performer_id);
  }
  for (const performerId of touched) showCue(performerId);
}

// current: performer_id -> the cue in force's id (null: none, or cleared)
export function setCurrentCues(current) {
  if (!current || typeof current !== "object") return;
  for (const [performerId, cueId] of Object.entries(current)) {
    const state = stateOf(performerId);
    state.current = cueId;
    state.known = true;
    showCue(performerId);
  }
}

// The newest cue (a clear among them) decides what the tile says.
function newest(state) {
  let found = null;
  for (const entry of state.cues.values()) if (!found || entry.ts_us > found.ts_us || (entry.ts_us === found.ts_us && entry.cue_id > found.cue_id)) found = entry;
  return found;
}

function cueText(entry) {
  if (entry.kind === "emotion") return `${entry.label}${entry.intensity === "strong" ? " (strong)" : ""}`;
  if (entry.kind === "text") return `“${entry.text}”`;
  return "cleared";
}

function stateText(entry, nowUs) {
  if (entry.state === "shown") return `shown after ${Math.round(entry.latency_ms)} ms`;
  if (nowUs === null) return "sent, not shown yet";
  return `sent ${Math.max(0, (nowUs - entry.ts_us) / 1e6).toFixed(1)} s ago, not shown yet`;
}

function showCue(performerId) {
  const state = stateOf(performerId);
  const panel = panelFor(performerId);
  const last = newest(state);
  const inForce = state.current ? state.cues.get(state.current) || null : null;
  const row = panel.cueRow;
  const hook = { current: inForce, newest: last, kept: state.cues.size, state: "none", text: "" };
  if (!last) {
    row.now.dataset.state = "none";
    row.now.textContent = "no cue";
  } else {
    const text = `${last.kind === "clear" ? "cue cleared" : `cue: ${cueText(last)}`} · ${stateText(last, sessionNowUs())}`;
    row.now.textContent = "";
    if (last.kind === "emotion") {
      const swatch = el("span", "swatch");
      swatch.style.background = labelColour(last.label);
      row.now.append(swatch);
    }
    row.now.append(document.createTextNode(text));
    row.now.dataset.state = last.kind === "clear" ? "cleared" : last.state;
    row.now.title = `sent by ${last.sent_by} at ${last.ts_us} µs (session clock)${last.shown_ts_us ? `, shown at ${last.shown_ts_us} µs` : ""}${last.group_id ? `, to everyone (group ${last.group_id})` : ""}`;
    hook.state = row.now.dataset.state;
    hook.text = row.now.textContent;
  }
  hooks.cues[performerId] = hook;
}

// Every animation frame: a cue still waiting to be shown has its age refreshed.
let lastTickPerf = 0;
export function tickCues(perfNow) {
  if (perfNow - lastTickPerf < STATE_TEXT_MS) return;
  lastTickPerf = perfNow;
  for (const [performerId, state] of cuesByPerformer) {
    const last = newest(state);
    if (last && last.state === "sent") showCue(performerId);
  }
}

// Cues replaced before the timeline's span are dropped; the newest always stays.
export function pruneCues(cutoff) {
  for (const state of cuesByPerformer.values()) {
    const keep = newest(state);
    const ordered = Array.from(state.cues.values()).sort((a, b) => a.ts_us - b.ts_us);
    for (let i = 0; i + 1 < ordered.length; i += 1) {
      if (ordered[i] !== keep && ordered[i + 1].ts_us < cutoff) state.cues.delete(ordered[i].cue_id);
    }
  }
}
