// livetag director dashboard: live video with face mesh, prosody charts, continuous
// ratings, tag timelines with the ledger's lanes and the model lane, rater agreement, the
// model gap, the raters' reaction lags, the director's cues, coverage and hit rate, and
// pipeline health, fed by /ws/dashboard on this origin. Video and
// tagging come from the capture server: its call page module (call.js, which brings the
// tagging widget) is imported from hello.capture_url once the first hello names it.
//
// Native ES modules, no build step. This one only wires the parts to the websocket: it
// holds the page's credential and the connection (with its retries), hands each
// server message to the part it is about, and runs the frame loop that draws them.
//   shared.js     test hooks, shared state, session clock, DOM and canvas helpers
//   video.js      the performer tiles, the call page's video in them, its frame age
//   mesh.js       face mesh, blendshape bars and head pose, at the face stream's latency
//   lanes.js      pitch and loudness charts, time grid and takes, each lane's age
//   ratings.js    continuous ratings: each rater's trace
//   timeline.js   the ledger's lanes: intent, self-tags, observers' tags, perceived, models
//   ledger.js     each window's intent and perception, as the timeline draws them
//   agreement.js  the alpha badge
//   gap.js        the model gap per emotion, its latest missed moments
//   raters.js     each rater's reaction lag
//   cues.js       the director's cues: the controls, each performer's cue and its state
//   coverage.js   coverage matrix, hit rate and confusion, the next cue
//   health.js     the health tables, this page's connection state
//   session.js    session header, presence, takes, end of session, join links
//   scenarios.js  the director's scenario editor (the library on livetag.scenarios)

import { LivetagCredentials } from "/dashboard/credentials.js";
import { setAgreement } from "./agreement.js";
import { setCoverage, setCoverageControls } from "./coverage.js";
import {
  addCues,
  failPendingCues,
  mountCueAll,
  onCueError,
  onCueSent,
  pruneCues,
  setCueControls,
  setCueVocabulary,
  setCurrentCues,
  tickCues,
} from "./cues.js";
import { setModelGap } from "./gap.js";
import { setConn, setHealth } from "./health.js";
import { addProsody, drawLoudness, drawPitch, pruneProsody, updateLaneAges } from "./lanes.js";
import { addLedgerRows, pruneLedger } from "./ledger.js";
import { drawMesh, setFace, setMeshEdges } from "./mesh.js";
import { setRaterLags } from "./raters.js";
import { mountScenarios } from "./scenarios.js";
import { addRatings, drawRatings, pruneRatings } from "./ratings.js";
import {
  applyControls,
  onInvite,
  renderLinks,
  renderTakeControls,
  setSession,
  settleRefusedAction,
  showSessionHeader,
  tickTakeControls,
} from "./session.js";
import { dash, hooks, panelFor, pushError, sessionNowUs, syncClock } from "./shared.js";
import {
  addModelRows,
  addTag,
  drawTimeline,
  noteTagTimes,
  pruneModels,
  pruneTags,
  setVocabulary,
  showIntentLane,
} from "./timeline.js";
import { applyRoster, checkFigure, startCapture } from "./video.js";

const KEEP_US = 60e6; // drawing buffers keep 60 s
const BACKOFF_START_MS = 500;
const BACKOFF_MAX_MS = 5000;
// Refused for want of room (this session, this address or the server full: HTTP 429/503,
// or close codes 4400-4599 with the reason, streams/runtime/connection_gate.py): try again after
// 10-20 s, not at the usual pace.
const REFUSED_RETRY_MS = 10000;
const OFFSCREEN_DRAW_MS = 250; // panels scrolled out of view redraw at 4 Hz
const CHART_FPS = 20;

// This page's credential for its link (credentials.js: the link's token leaves the
// address bar at once, and is exchanged here for a short-lived credential the server
// renews over the websocket). The call page module imported later uses the same one.
const credentials = new LivetagCredentials({ exchangeUrl: "/api/credential", storageKey: "livetag-dashboard-link" });
window.LIVETAG_CREDENTIALS = credentials;

const connection = {
  retryMs: BACKOFF_START_MS,
  retryTimer: null,
  stopped: false,
};

// ---- server messages ----------------------------------------------------------------
function onHello(message) {
  hooks.hello = message;
  hooks.connected = true;
  connection.retryMs = BACKOFF_START_MS;
  setConn("live", "live");
  if (typeof message.window_s === "number" && message.window_s > 0) dash.windowUs = Math.min(message.window_s, 60) * 1e6;
  setMeshEdges(message.mesh_edges);
  const session = message.session || {};
  showSessionHeader(session);
  setVocabulary(session.vocabulary);
  setCueVocabulary(session.vocabulary);
  mountCueAll();
  applyRoster(session.roster || []);
  setSession({ state: session.state, takes: session.takes || [], presence: session.presence || [] });
  const you = message.you || {};
  hooks.you = { rater_id: you.rater_id, role: you.role, controls: !!you.controls };
  applyControls(!!you.controls);
  setCueControls(!!you.controls);
  setCoverageControls(!!you.controls);
  // What was intended (cues, the intent lane, coverage) is the director's: an observer's
  // server sends none of it, and their page has no place for it.
  showIntentLane(!!you.controls);
  document.getElementById("directing").hidden = !you.controls;
  if (you.controls) renderLinks(session.roster || []);
  if (you.controls) mountScenarios(document.getElementById("scenarios"));
  startCapture(message.capture_url);
}

function onUpdate(message) {
  hooks.updates += 1;
  if (typeof message.now_us === "number") syncClock(message.now_us);
  if (message.performers && typeof message.performers === "object") {
    for (const [performerId, data] of Object.entries(message.performers)) {
      if (!data) continue;
      const panel = panelFor(performerId);
      if (data.prosody) addProsody(panel, data.prosody);
      if (data.face) setFace(panel, data.face);
      if (data.ratings) addRatings(panel, data.ratings);
    }
  }
  if (Array.isArray(message.tags)) for (const tag of message.tags) addTag(tag);
  if (Array.isArray(message.tags)) noteTagTimes(message.tags);
  if (message.ledger) addLedgerRows(message.ledger);
  if (message.cues) addCues(message.cues);
  if (message.cues_current) setCurrentCues(message.cues_current);
  if (message.coverage) setCoverage(message.coverage);
  if (message.models) addModelRows(message.models);
  if (message.agreement) setAgreement(message.agreement);
  if (message.gap) setModelGap(message.gap);
  if (message.raters) setRaterLags(message.raters);
  if (message.health) setHealth(message.health);
  if (message.session) setSession(message.session);
}

function onMessage(event) {
  let message;
  try {
    message = JSON.parse(event.data);
  } catch (error) {
    return;
  }
  if (!message || typeof message !== "object") return;
  switch (message.type) {
    case "hello":
      onHello(message);
      break;
    case "update":
      onUpdate(message);
      break;
    case "credential":
      // The server's renewal of this page's credential, before the current one runs out.
      credentials.accept(message);
      break;
    case "invite":
      onInvite(message);
      break;
    case "cue_sent":
      onCueSent(message);
      break;
    case "error":
      pushError(message);
      // An error naming a request belongs to that request's owner: a cue here, the
      // scenario editor ("scenario-N") on its own listener. Only an error naming none
      // answers a take, the session's end or a link.
      if (message.request_id !== undefined && message.request_id !== null) onCueError(message);
      else settleRefusedAction();
      break;
    default:
      break;
  }
}

// ---- websocket ----------------------------------------------------------------------
function scheduleReconnect() {
  if (connection.retryTimer || connection.stopped) return;
  setConn("reconnecting", `reconnecting in ${(connection.retryMs / 1000).toFixed(1)} s…`);
  connection.retryTimer = setTimeout(() => {
    connection.retryTimer = null;
    connect();
  }, connection.retryMs);
  connection.retryMs = Math.min(connection.retryMs * 2, BACKOFF_MAX_MS);
}

function stop(text) {
  connection.stopped = true;
  setConn("error", text);
  pushError({ type: "error", code: "refused", message: text });
}

async function connect() {
  const ready = await credentials.ensure();
  if (!ready.ok) {
    if (ready.final) stop(ready.message);
    else scheduleReconnect();
    return;
  }
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let ws;
  try {
    // The credential rides in the handshake's subprotocols: never in a URL, which the
    // browser would print in the console when the connection fails.
    ws = new WebSocket(`${scheme}://${location.host}/ws/dashboard`, credentials.protocols());
  } catch (error) {
    scheduleReconnect();
    return;
  }
  dash.ws = ws;
  if (!hooks.hello) setConn("connecting", "connecting…");
  ws.addEventListener("message", onMessage);
  ws.addEventListener("close", async (event) => {
    if (ws !== dash.ws) return;
    hooks.connected = false;
    failPendingCues();
    renderTakeControls();
    if (LivetagCredentials.isFinalClose(event.code)) {
      // The director revoked this link, or it ran out: reconnecting cannot help.
      stop(LivetagCredentials.closeMessage(event.reason));
      return;
    }
    const refused = event.code >= 4400 && event.code < 4600;
    setConn("reconnecting", refused ? event.reason || `refused (${event.code})` : "connection lost");
    // A refused handshake looks like any lost connection: ask why (the credential in a
    // POST body, out of the console), and stop retrying when the link itself is bad.
    // An expired credential (401) is exchanged again at the next connect.
    try {
      const why = await credentials.why("/api/dashboard-token");
      if (!why.ok && why.final) {
        stop(why.message);
        return;
      }
      if (why.status === 429 || why.status === 503) {
        pushError({ type: "error", code: "refused", message: why.message });
        connection.retryMs = Math.max(connection.retryMs, REFUSED_RETRY_MS * (1 + Math.random()));
      } else if (refused) {
        pushError({ type: "error", code: "refused", message: event.reason || `refused (${event.code})` });
        connection.retryMs = Math.max(connection.retryMs, REFUSED_RETRY_MS * (1 + Math.random()));
      }
    } catch (error) {
      // the server is away: keep retrying
    }
    scheduleReconnect();
  });
}

// ---- frame loop ---------------------------------------------------------------------
let lastPrunePerf = 0;
let lastChartPerf = 0;

function frame() {
  requestAnimationFrame(frame);
  if (document.hidden) return;
  const perfNow = performance.now();
  const now = sessionNowUs();
  if (now !== null && perfNow - lastPrunePerf > 1000) {
    lastPrunePerf = perfNow;
    const cutoff = now - KEEP_US;
    for (const panel of dash.panels.values()) {
      pruneProsody(panel, cutoff);
      pruneTags(panel, cutoff);
      pruneLedger(panel, cutoff);
      pruneModels(panel, cutoff);
      pruneRatings(panel, cutoff);
    }
    pruneCues(cutoff);
  }
  // Charts scroll at CHART_FPS, not at the display's rate: a 30 s window moves about a
  // pixel per 50 ms, and redrawing every chart at 60 Hz cost the director's browser
  // more CPU than the call itself on a small machine. The mesh is stroked when the record
  // it shows changes (its fading is a CSS opacity).
  const drawCharts = perfNow - lastChartPerf >= 1000 / CHART_FPS;
  if (drawCharts) lastChartPerf = perfNow;
  for (const panel of dash.panels.values()) {
    checkFigure(panel);
    if (!panel.visible && perfNow - panel.lastDrawPerf < OFFSCREEN_DRAW_MS) continue;
    drawMesh(panel, now);
    updateLaneAges(panel, now, perfNow);
    if (now === null || !drawCharts) continue;
    panel.lastDrawPerf = perfNow;
    drawPitch(panel, now);
    drawLoudness(panel, now);
    drawRatings(panel, now);
    drawTimeline(panel, now);
  }
  tickTakeControls(now, perfNow);
  tickCues(perfNow);
}

connect();
requestAnimationFrame(frame);
