// What every part of the director dashboard shares: the test hooks
// (window.livetagDashboard), the state more than one part reads (the colours of labels
// and raters among it), this page's estimate of the session clock, the performer tiles by
// id, and small DOM and canvas helpers. Separate so that the parts (video, mesh, lanes,
// ratings, timeline, ledger, agreement, gap, raters, cues, coverage, health, session)
// import this one module instead of each other.

export const COLOURS = {
  grid: "rgba(255,255,255,0.08)",
  gridLabel: "rgba(200,205,215,0.55)",
  pitch: "#7cc4ff",
  loud: "#9be28f",
  mesh: "rgba(120,230,255,0.55)",
  lane: "rgba(255,255,255,0.035)",
  laneAlt: "rgba(255,255,255,0.06)",
  laneText: "rgba(225,228,235,0.85)",
  now: "rgba(255,255,255,0.35)",
  take: "rgba(245,183,0,0.7)",
  unknown: "#8a8f98",
  missed: "#ffffff", // beneath a model window where the humans agreed and it read otherwise
  highlight: "rgba(255,255,255,0.9)",
};

// One colour per rater across the page (their trace on the ratings lane, their swatch in
// the lag table), given in the order raters first appear; distinct from the vocabulary's
// label colours, which fill the tag and model lanes.
const RATER_PALETTE = ["#7cc4ff", "#ff9f43", "#c792ea", "#2ec4b6", "#ff6b9a", "#e9f06b", "#a0a8ff", "#b5e48c"];
const raterColours = new Map();

export function raterColour(raterId) {
  let colour = raterColours.get(raterId);
  if (!colour) {
    colour = RATER_PALETTE[raterColours.size % RATER_PALETTE.length];
    raterColours.set(raterId, colour);
  }
  return colour;
}

// label -> colour, from the session's vocabulary (hello): the tag, consensus and model
// lanes and the gap panel colour a label alike.
const labelColours = new Map();

export function setLabelColours(entries) {
  labelColours.clear();
  for (const entry of entries || []) {
    if (entry && entry.label) labelColours.set(entry.label, /^#[0-9a-fA-F]{6}$/.test(entry.colour) ? entry.colour : COLOURS.unknown);
  }
}

export function labelColour(label) {
  return labelColours.get(label) || COLOURS.unknown;
}

// Update samples of the server clock kept for its estimate (see syncClock).
const CLOCK_SPAN_MS = 20000;

// ---- test hooks ---------------------------------------------------------------------
export const hooks = {
  connected: false,
  hello: null,
  updates: 0,
  performers: {},
  timeline: {},
  ledger: {}, // performer_id -> {intent, perceived, agreed, disputed}: the windows held
  models: {}, // performer_id -> {model: {windows, missed}} on its model lanes
  agreement: null,
  gap: null, // the model gap summary as the server sent it
  raters: null, // the rater lag table as the server sent it
  health: null,
  session: null,
  errors: [],
  you: null, // {rater_id, role, controls}: who this dashboard is
  invites: [], // links the director asked for: {role, participant_id, token_id}
  cue: null, // cue({to, kind, label, intensity, text}) -> Promise of the server's answer (cues.js)
  cuesRequested: 0,
  cueReplies: [], // the latest answers to cues sent from this page
  cues: {}, // performer_id -> {current, newest, kept, state, text}: what the tile shows
  coverage: null, // the coverage summary as the server sent it
  coverageCells: {}, // performer_id -> label -> the matrix cell's text
  suggestion: null, // the next cue as the server suggested it
  hitScope: null, // the scope the hit-rate table shows: "(session)" or a performer
  hitRows: [], // the hit-rate table's rows as shown: [label, intended s, hit, seen instead]
  confusion: {}, // intended -> perceived -> windows, as the confusion matrix shows them
  meshDrawn: {}, // performer_id -> {atUnixMs, faceTsUs} of the last mesh drawn
};
window.livetagDashboard = hooks;

// ---- state read by more than one part -------------------------------------------------
export const dash = {
  ws: null,
  windowUs: 30e6, // the span the charts and the timeline show
  panels: new Map(), // performer_id -> panel (its tile and everything drawn in it)
  clockOffsetUs: null, // session clock minus performance.now() (µs)
  clockSamples: [], // {perf, offset} of recent updates, offsets decreasing (see syncClock)
  session: { state: null, takes: [], presence: [] },
};

// ---- DOM helpers --------------------------------------------------------------------
export const $ = (id) => document.getElementById(id);
const dpr = () => window.devicePixelRatio || 1;

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = text;
  return node;
}

export function fmt(value, digits) {
  if (value === null || value === undefined || !Number.isFinite(Number(value))) return "—";
  return Number(value).toFixed(digits);
}

export function pushError(error) {
  hooks.errors.push(error);
  if (hooks.errors.length > 200) hooks.errors.splice(0, hooks.errors.length - 200);
  const box = $("errors");
  const row = el("div", "error-row", error.code ? `${error.code}: ${error.message || ""}` : String(error.message || error));
  const close = el("button", "error-close", "×");
  close.type = "button";
  close.setAttribute("aria-label", "dismiss");
  close.addEventListener("click", () => row.remove());
  row.append(close);
  box.append(row);
  while (box.children.length > 4) box.firstChild.remove();
  setTimeout(() => row.remove(), 12000);
}

// A message to the server over the dashboard's websocket (opened by dashboard.js).
export function send(message) {
  if (dash.ws && dash.ws.readyState === WebSocket.OPEN) {
    dash.ws.send(JSON.stringify(message));
    return true;
  }
  pushError({ type: "error", code: "offline", message: "not connected: try again in a moment" });
  return false;
}

// ---- session clock ------------------------------------------------------------------
// Every update carries the server's clock when it was built, and reaches this page later
// by however long its delivery took (longer on a busy machine): each sample is behind the
// true offset, never ahead. The estimate is the largest sample of the last 20 s, the
// least delayed one (minimum-delay filtering, as the call's clock sync does); the window
// lets drift and a stepped server clock through. A late sample no longer drags the
// estimate back, which would understate every lane's age.
export function syncClock(nowUs) {
  const perf = performance.now();
  const offset = nowUs - perf * 1000;
  const samples = dash.clockSamples;
  while (samples.length && samples[0].perf < perf - CLOCK_SPAN_MS) samples.shift();
  // A sample below a newer one can never be the largest again: dropped, so the first
  // kept sample is always the largest of the window.
  while (samples.length && samples[samples.length - 1].offset <= offset) samples.pop();
  samples.push({ perf, offset });
  dash.clockOffsetUs = samples[0].offset;
}

export function sessionNowUs() {
  return dash.clockOffsetUs === null ? null : performance.now() * 1000 + dash.clockOffsetUs;
}

// ---- performer tiles ----------------------------------------------------------------
// Any message may name a performer first (a roster, an update, a tag, agreement). The
// tile is built by video.js, which registers its builder here, so the parts that only
// fill a tile do not import the part that builds it.
let buildPanel = null;

export function setPanelBuilder(builder) {
  buildPanel = builder;
}

export function panelFor(performerId) {
  return dash.panels.get(performerId) || buildPanel(performerId, performerId);
}

// ---- canvases -----------------------------------------------------------------------
// Canvases keep their CSS size and device pixel ratio on themselves (_w, _h, _dpr), set
// here as their boxes change; a box observed for a canvas inside it names it as _canvas.
const resizer = new ResizeObserver((entries) => {
  for (const entry of entries) {
    const canvas = entry.target._canvas || entry.target;
    const w = entry.contentRect.width;
    const h = entry.contentRect.height;
    const ratio = dpr();
    canvas._w = w;
    canvas._h = h;
    canvas._dpr = ratio;
    canvas.width = Math.max(1, Math.round(w * ratio));
    canvas.height = Math.max(1, Math.round(h * ratio));
    if (canvas._panel) canvas._panel.meshDirty = true;
  }
});

export function observeSize(node) {
  resizer.observe(node);
}

// A tile scrolled out of view is drawn less often (see OFFSCREEN_DRAW_MS in dashboard.js).
const visibility = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    const panel = entry.target._panel;
    if (panel) panel.visible = entry.isIntersecting;
  }
});

export function observeVisibility(node) {
  visibility.observe(node);
}

export function beginCanvas(canvas) {
  const ctx = canvas._ctx;
  const ratio = canvas._dpr || 1;
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, canvas._w, canvas._h);
  return ctx;
}

export function makeCanvas(className, label) {
  const canvas = el("canvas", className);
  canvas._ctx = canvas.getContext("2d");
  canvas._w = 0;
  canvas._h = 0;
  canvas.setAttribute("role", "img");
  if (label) canvas.setAttribute("aria-label", label);
  return canvas;
}
