// livetag call page: publish my camera + mic (performers), watch the other performers,
// answer clock-sync probes, show the director's cues (and say when each was on screen),
// and rejoin by myself after a blip or a server restart.
//
// An ES module (no build step), loaded by call.html and, from another origin, by the
// director dashboard, which sets window.LIVETAG_CAPTURE_BASE and window.LIVETAG_CREDENTIALS
// before importing it. The imports are absolute paths: they resolve against this module's
// own address, the capture server, wherever the page that loads it comes from (the capture
// server lets any origin load its static files).

import { Backoff, LivetagCredentials } from "/tagger/credentials.js";

const params = new URLSearchParams(location.search);
// The capture server this page talks to: its own origin, or the one the director
// dashboard (served from another origin) names before loading this script.
const captureBase = new URL(window.LIVETAG_CAPTURE_BASE || location.origin);
const captureWs = `${captureBase.protocol === "https:" ? "wss" : "ws"}://${captureBase.host}`;
// The page's credential: the dashboard's when this script runs inside it, else one for
// this page's link, exchanged at the capture server (credentials.js: the link's token
// leaves the address bar at once).
const credentials =
  window.LIVETAG_CREDENTIALS ||
  new LivetagCredentials({ exchangeUrl: `${captureBase.origin}/api/credential`, storageKey: "livetag-call-link" });
const statusEl = document.getElementById("status");
const tiles = document.getElementById("tiles");

// This page's own random id, the same across its reconnects: while its media is on the
// server, only this page may replace it (a second page with the same link is refused).
// Handed over in sessionStorage only as the page unloads, so a reload keeps it while a
// duplicated tab (which copies sessionStorage) gets one of its own.
const PAGE_ID_KEY = "livetag-call-page";
const pageId = (() => {
  let id = null;
  try {
    id = sessionStorage.getItem(PAGE_ID_KEY);
    sessionStorage.removeItem(PAGE_ID_KEY);
  } catch (error) {
    // No storage (a private window's policy): a fresh id, lost at a reload.
  }
  if (!/^[0-9a-f]{32}$/.test(id || "")) {
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    id = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  }
  addEventListener("pagehide", () => {
    try {
      sessionStorage.setItem(PAGE_ID_KEY, id);
    } catch (error) {
      // As above.
    }
  });
  addEventListener("pageshow", (event) => {
    if (!event.persisted) return;
    try {
      sessionStorage.removeItem(PAGE_ID_KEY); // back from the cache: still this page
    } catch (error) {
      // As above.
    }
  });
  return id;
})();
// Another page holds this performer's media: asked again this often (it may close).
const TAKEN_RETRY_MS = 5000;

// ?watch=0: publish only, watch nobody (the capture benchmark measures the fork alone).
const watchOthers = params.get("watch") !== "0";

const state = {
  role: null,
  me: null,
  ws: null,
  localStream: null,
  publishPc: null,
  subscriptions: new Map(), // performer_id -> {pc, generation, tile}
  roster: new Map(),
  connects: 0,
  lastRequestId: 0,
  errors: [],
  // Every time this page lost part of its call, and when it was back (Unix ms; upUnixMs
  // null while still down): what a health view or a benchmark reads.
  outages: [],
  lastServerMessageMs: 0,
  tagger: null, // the tagging widget, once started
  taggerStarting: false, // its module is being imported
};

// A connection that stops answering is given this long before it is rebuilt. Browsers
// report "disconnected" after a few seconds without ICE answers, and "failed" only after
// ~30 s: waiting for "failed" kept pages down for 17-19 s.
const DISCONNECTED_GRACE_MS = 2000;
// The server probes the clock every 2 s: 5 s of silence means it is gone or unreachable.
const SERVER_SILENCE_MS = 5000;
// Rejoining waits 0.5 s, doubling to 2 s; 10-20 s after a refusal (credentials.js).
const backoff = new Backoff({ startMs: 500, maxMs: 2000 });

function outageBegins(key, reason) {
  if (state.outages.some((outage) => outage.key === key && outage.upUnixMs === null)) return;
  state.outages.push({ key, reason, downUnixMs: Date.now(), upUnixMs: null });
}

function outageEnds(key) {
  for (const outage of state.outages) {
    if (outage.key === key && outage.upUnixMs === null) outage.upUnixMs = Date.now();
  }
}

// Calls `onLost` when `pc` stays disconnected past the grace period, or fails.
function watchConnection(pc, isCurrent, onLost) {
  let timer = null;
  pc.addEventListener("connectionstatechange", () => {
    if (!isCurrent()) return;
    clearTimeout(timer);
    if (pc.connectionState === "failed") onLost("failed");
    else if (pc.connectionState === "disconnected") {
      timer = setTimeout(() => {
        if (isCurrent() && pc.connectionState !== "connected") onLost("disconnected");
      }, DISCONNECTED_GRACE_MS);
    }
  });
}
window.livetag = state; // tests and the tagging widget read this

// ---- the director's cues ----------------------------------------------------------------
// A cue stays on screen until the next one replaces it or a "clear" takes it away. Once
// it is painted the page tells the server when, on the clock its clock replies read (the
// server puts it on the session clock). The elements exist on the performer's page only:
// the director's dashboard loads this module too, and gets no cues.
const cueEls = {
  box: document.getElementById("cue"),
  label: document.getElementById("cue-label"),
  intensity: document.getElementById("cue-intensity"),
  text: document.getElementById("cue-text"),
};
const SHOWN_IDS_KEPT = 500;
const CUE_RING_MS = 900;
const call = {
  cue: null, // the cue on screen: {cue_id, kind, label, intensity, text, ts_us}, or null
  // The newest cue's ts_us (clears included): at a join the server sends the cue in force
  // while a newer one may already be on its way, so cues can arrive out of order.
  lastTsUs: null,
  cuesOutOfOrder: 0, // older cues that arrived after a newer one: not shown, not acked
  cuesShown: 0, // cues (clears included) this page painted, each counted once
  shownIds: new Set(),
  unsent: [], // "shown" messages the connection was down for: sent after the next welcome
  paints: [], // per recent cue: {cue_id, ms}, ms from its message to its "shown" (render and paint)
  ringTimer: undefined, // takes the arrival ring off the newest cue
};
window.livetagCall = call; // tests read this

function labelColour(label) {
  const entry = (state.vocabulary || []).find((item) => item.label === label);
  return entry ? entry.colour : "#7cc4ff";
}

function renderCue(cue) {
  if (!cueEls.box) return;
  const shown = cue.kind === "clear" ? null : cue;
  cueEls.box.hidden = shown === null;
  if (!shown) return;
  cueEls.box.dataset.kind = shown.kind;
  cueEls.box.style.setProperty("--cue-colour", shown.kind === "emotion" ? labelColour(shown.label) : "#e8e8ea");
  cueEls.label.textContent = shown.kind === "emotion" ? shown.label : "";
  cueEls.intensity.hidden = !(shown.kind === "emotion" && shown.intensity === "strong");
  cueEls.text.textContent = shown.kind === "text" ? shown.text : "";
  // The arrival ring: on with each new cue, off CUE_RING_MS after the newest one.
  cueEls.box.classList.add("is-new");
  clearTimeout(call.ringTimer);
  call.ringTimer = setTimeout(() => cueEls.box.classList.remove("is-new"), CUE_RING_MS);
}

function onCue(cue) {
  const receivedUs = clientNowUs();
  if (call.lastTsUs !== null && cue.ts_us < call.lastTsUs) {
    // The newer cue stands: this one was never on screen, so it is not said shown.
    call.cuesOutOfOrder += 1;
    return;
  }
  call.lastTsUs = cue.ts_us;
  call.cue = cue.kind === "clear" ? null : cue;
  renderCue(cue);
  // The frame with the cue is painted after this animation frame's callbacks: a task
  // queued from one runs once it is (the same clock as the clock replies).
  requestAnimationFrame(() =>
    setTimeout(() => {
      const message = { type: "cue_shown", cue_id: cue.cue_id, client_shown_ts_us: clientNowUs() };
      call.paints.push({ cue_id: cue.cue_id, ms: (message.client_shown_ts_us - receivedUs) / 1000 });
      if (call.paints.length > SHOWN_IDS_KEPT) call.paints.shift();
      if (!call.shownIds.has(cue.cue_id)) {
        call.shownIds.add(cue.cue_id);
        call.cuesShown += 1;
        if (call.shownIds.size > SHOWN_IDS_KEPT) call.shownIds.delete(call.shownIds.values().next().value);
      }
      if (!send(message)) call.unsent.push(message);
    }, 0),
  );
}

function sendUnsentShown() {
  const unsent = call.unsent.splice(0);
  for (const message of unsent) if (!send(message)) call.unsent.push(message);
}

// ---- the scene's text and the way back to the lobby --------------------------------------
// scenario_view: {prompt, scenario: {title, role: {name, brief}, ...} | null}, the part of
// the scene's scenario this page may see (streams.scenarios.performer_view).
function showScene(message) {
  const view = message.scenario_view || { prompt: message.prompt, scenario: null };
  const scenario = view.scenario || null;
  const prompt = document.getElementById("prompt");
  if (prompt) prompt.textContent = view.prompt;
  const title = document.querySelector("#scene h2");
  if (title && prompt) title.textContent = scenario && scenario.title ? scenario.title : "Scene";
  const roleBox = document.getElementById("role");
  const part = scenario && scenario.role ? scenario.role : null;
  if (roleBox) {
    roleBox.hidden = !part;
    if (part) {
      document.getElementById("role-name").textContent = part.name || "";
      document.getElementById("role-brief").textContent = part.brief || "";
    }
  }
}

// A performer of a casting day goes back to the lobby by themselves after this long
// (the link stays, for those who do not want to wait).
const LOBBY_RETURN_MS = 5000;
let lobbyTimer = null;

function sessionOver() {
  const lobby = document.getElementById("lobby");
  if (!lobby || !state.dayId) return;
  lobby.hidden = false;
  if (lobbyTimer === null) {
    const href = lobby.querySelector("a").getAttribute("href");
    lobbyTimer = setTimeout(() => location.assign(href), LOBBY_RETURN_MS);
  }
}

// ---- connection quality: the media path's round trip, the partner's frame rate ------------
const qualityEl = document.getElementById("quality");
const QUALITY_EVERY_MS = 2000;

async function measureQuality() {
  if (!qualityEl) return;
  let rttMs = null;
  const fps = [];
  const pcs = [state.publishPc, ...[...state.subscriptions.values()].map((s) => s.pc)].filter(Boolean);
  for (const pc of pcs) {
    if (pc.connectionState !== "connected") continue;
    const report = await pc.getStats();
    report.forEach((stat) => {
      if (stat.type === "candidate-pair" && stat.nominated && typeof stat.currentRoundTripTime === "number") {
        rttMs = Math.max(rttMs || 0, stat.currentRoundTripTime * 1000);
      }
      if (stat.type === "inbound-rtp" && stat.kind === "video" && typeof stat.framesPerSecond === "number") {
        fps.push(stat.framesPerSecond);
      }
    });
  }
  const parts = [];
  if (rttMs !== null) parts.push(`${Math.round(rttMs)} ms`);
  if (fps.length) parts.push(`${Math.round(Math.min(...fps))} fps`);
  qualityEl.textContent = parts.join(" · ");
}
if (qualityEl) {
  setInterval(() => measureQuality().catch(() => {}), QUALITY_EVERY_MS);
}

function setStatus(kind, text) {
  statusEl.dataset.state = kind;
  statusEl.textContent = text;
}

function clientNowUs() {
  return Math.round((performance.timeOrigin + performance.now()) * 1000);
}

function send(message) {
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return false;
  state.ws.send(JSON.stringify(message));
  return true;
}

function newPeerConnection() {
  // No STUN/TURN: the server advertises the addresses it was configured with.
  return new RTCPeerConnection({ iceServers: [] });
}

function gatheringComplete(pc) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const check = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", check);
  });
}

async function offerFor(pc) {
  await pc.setLocalDescription(await pc.createOffer());
  await gatheringComplete(pc);
  return pc.localDescription.sdp;
}

async function publish(capture) {
  if (!state.localStream) {
    state.localStream = await navigator.mediaDevices.getUserMedia({
      // Prosody is measured on this audio: no automatic gain or noise suppression that
      // would reshape loudness. Echo cancellation stays on, for performers on speakers.
      audio: { echoCancellation: true, noiseSuppression: false, autoGainControl: false },
      // The server's capture rate (the analysis rate by default): every frame above it
      // costs each browser an encode or decode, and the server a decode. The ceiling has
      // a frame of slack: a camera running at exactly that rate, with jitter, must not
      // lose frames to the browser's rate limiter (a one-frame flash would vanish).
      video: { width: capture.width, height: capture.height, frameRate: { ideal: capture.fps, max: capture.fps + 1 } },
    });
    const selfTile = document.getElementById("self-tile");
    selfTile.hidden = false;
    document.getElementById("self-video").srcObject = state.localStream;
  }
  if (state.publishPc) state.publishPc.close();
  const pc = newPeerConnection();
  state.publishPc = pc;
  for (const track of state.localStream.getTracks()) {
    pc.addTransceiver(track, { direction: "sendonly", streams: [state.localStream] });
  }
  pc.addEventListener("connectionstatechange", () => {
    if (pc !== state.publishPc) return;
    if (pc.connectionState === "connected") {
      setStatus("live", "live");
      outageEnds("call");
      backoff.reset();
    }
  });
  watchConnection(pc, () => pc === state.publishPc, (why) => reconnectSoon(`media connection ${why}`));
  send({ type: "publish", sdp: await offerFor(pc), page_id: pageId });
}

function tileFor(performerId) {
  const figure = document.createElement("figure");
  figure.className = "tile";
  figure.dataset.performer = performerId;
  const video = document.createElement("video");
  video.autoplay = true;
  video.playsInline = true;
  const caption = document.createElement("figcaption");
  caption.textContent = state.roster.get(performerId) || performerId;
  figure.append(video, caption);
  tiles.append(figure);
  return figure;
}

async function subscribe(performerId, generation) {
  unsubscribe(performerId);
  const pc = newPeerConnection();
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.addTransceiver("video", { direction: "recvonly" });
  const tile = tileFor(performerId);
  const stream = new MediaStream();
  const video = tile.querySelector("video");
  video.srcObject = stream;
  pc.addEventListener("track", (event) => stream.addTrack(event.track));
  const requestId = ++state.lastRequestId;
  const subscription = { pc, generation, tile, frames: [], requestId };
  state.subscriptions.set(performerId, subscription);
  watchFrames(video, subscription);
  const key = `watch:${performerId}`;
  pc.addEventListener("connectionstatechange", () => {
    if (pc.connectionState === "connected") outageEnds(key);
  });
  // A watched performer that is lost (not one we dropped) is asked for again.
  watchConnection(pc, () => state.subscriptions.get(performerId) === subscription, (why) => {
    outageBegins(key, `watching ${performerId}: ${why}`);
    subscribe(performerId, generation);
  });
  send({ type: "subscribe", performer_id: performerId, sdp: await offerFor(pc), request_id: requestId });
}

// Which frame is on screen, per watched performer: its RTP timestamp on this page's
// subscription and when it was presented (Unix ms). A tag pressed while watching carries
// the frame on screen, which the server maps back to that frame's capture instant.
function watchFrames(video, subscription) {
  if (!("requestVideoFrameCallback" in HTMLVideoElement.prototype)) return;
  const onFrame = (_now, metadata) => {
    if (metadata.rtpTimestamp !== undefined) {
      subscription.frames.push({
        rtpTimestamp: metadata.rtpTimestamp,
        // When it becomes visible (expectedDisplayTime), not when it was handed to the
        // compositor (presentationTime, about a vsync earlier): a press in between was
        // still looking at the previous frame.
        presentedUnixMs: performance.timeOrigin + metadata.expectedDisplayTime,
      });
      if (subscription.frames.length > 300) subscription.frames.shift();
    }
    if (subscription.tile.isConnected) video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}

state.frameOnScreen = function frameOnScreen(performerId) {
  const subscription = state.subscriptions.get(performerId);
  if (!subscription || subscription.frames.length === 0) return null;
  return subscription.frames[subscription.frames.length - 1];
};

function unsubscribe(performerId) {
  const subscription = state.subscriptions.get(performerId);
  if (!subscription) return;
  subscription.pc.close();
  subscription.tile.remove();
  state.subscriptions.delete(performerId);
}

function onLive(live) {
  if (!watchOthers) return;
  const wanted = new Map(live.filter((p) => p.performer_id !== state.me).map((p) => [p.performer_id, p.generation]));
  for (const performerId of [...state.subscriptions.keys()]) {
    if (!wanted.has(performerId)) unsubscribe(performerId);
  }
  for (const [performerId, generation] of wanted) {
    const current = state.subscriptions.get(performerId);
    if (!current || current.generation !== generation) subscribe(performerId, generation);
  }
}

// The tagging widget (taggers/static/tagger.js), created once after the first welcome.
// ?tagger=0: no widget. Someone watching a performer tags the frame on screen at the press.
function frameAtPress(performerId, pressUnixMs) {
  const subscription = state.subscriptions.get(performerId);
  if (!subscription || subscription.frames.length === 0) return null;
  const frames = subscription.frames;
  let frame = frames[frames.length - 1];
  for (let i = frames.length - 1; i >= 0; i -= 1) {
    if (frames[i].presentedUnixMs <= pressUnixMs) {
      frame = frames[i];
      break;
    }
  }
  return { rtp_timestamp: frame.rtpTimestamp };
}

// The tagging widget is imported when it starts, not with this module: a widget that
// fails to load (or to start) costs the page its tagging, never its call.
async function startTagger() {
  if (state.tagger || state.taggerStarting || params.get("tagger") === "0") return;
  state.taggerStarting = true;
  try {
    const { LivetagTagger } = await import("/tagger/tagger.js");
    state.tagger = new LivetagTagger({
      url: `${captureWs}/ws/tag`,
      // The current credential at each (re)connect; the tag service renews it too.
      token: async () => ((await credentials.ensure()).ok ? credentials.current() : null),
      onCredential: (message) => credentials.accept(message),
      // Unacknowledged tags are kept per session and rater: they survive a new credential
      // and a reload.
      storageKey: `livetag-tagger:${state.sessionId}:${state.me}`,
      mount: document.getElementById("tagger"),
      targetMode: state.role === "performer" ? "self" : "choose",
      frameSource: state.role !== "performer" ? frameAtPress : undefined,
    });
  } catch (error) {
    console.error("livetag: tagging widget failed", error);
  } finally {
    state.taggerStarting = false;
  }
}

async function onMessage(event) {
  const message = JSON.parse(event.data);
  switch (message.type) {
    case "clock_probe":
      send({ type: "clock_reply", probe_id: message.probe_id, server_send_us: message.server_send_us, client_time_us: clientNowUs() });
      break;
    case "welcome":
      if (message.you.role !== "performer") outageEnds("call");
      state.role = message.you.role;
      state.me = message.you.participant_id;
      state.sessionId = message.session_id;
      state.vocabulary = message.vocabulary;
      state.dayId = message.day_id || null;
      for (const performer of message.roster) state.roster.set(performer.performer_id, performer.display_name);
      showScene(message);
      sendUnsentShown();
      document.getElementById("who").textContent = `${state.roster.get(state.me) || state.me} (${state.role})`;
      // The backoff starts over once the page is really back: for a performer, when its
      // media connects (a page whose media keeps failing must not retry ever faster).
      if (message.you.role !== "performer") backoff.reset();
      startTagger();
      state.capture = message.capture;
      if (state.role === "performer") await publish(message.capture);
      else setStatus("live", "watching");
      onLive(message.live);
      break;
    case "publish_answer":
      await state.publishPc.setRemoteDescription({ type: "answer", sdp: message.sdp });
      break;
    case "subscribe_answer": {
      const subscription = state.subscriptions.get(message.performer_id);
      if (subscription && subscription.requestId === message.request_id) {
        await subscription.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
      }
      break;
    }
    case "performers":
      onLive(message.live);
      break;
    case "cue":
      if (message.cue) onCue(message.cue);
      break;
    case "publish_lost":
      // The server lost this page's media connection (e.g. ICE consent expired): join
      // again now rather than after the browser's own checks time out.
      reconnectSoon("media connection lost on the server");
      break;
    case "credential":
      // The server's renewal of this page's credential, before the current one runs out.
      credentials.accept(message);
      break;
    case "error":
      state.errors.push(message);
      console.warn("livetag:", message.code, message.message);
      if (message.code === "session_ended") sessionOver();
      if (message.code === "performer_taken") {
        // Not this page's media: say why, and ask again (the other page may close).
        setStatus("error", message.message);
        const ws = state.ws;
        setTimeout(() => {
          if (state.ws !== ws || ws.readyState !== WebSocket.OPEN || !state.capture) return;
          publish(state.capture).catch((error) => console.error(error));
        }, TAKEN_RETRY_MS);
      }
      break;
  }
}

let reconnectTimer = null;
function reconnectSoon(reason, slow) {
  if (reconnectTimer) return;
  outageBegins("call", reason);
  setStatus("reconnecting", `reconnecting (${reason})…`);
  if (state.ws) state.ws.close();
  for (const performerId of [...state.subscriptions.keys()]) unsubscribe(performerId);
  if (state.publishPc) state.publishPc.close();
  state.publishPc = null;
  reconnectTimer = setTimeout(() => {
    reconnectTimer = null;
    connect();
  }, backoff.next(slow));
}

async function connect() {
  // A credential for this page's link: exchanged once, then renewed over the websocket;
  // exchanged again only when the page has none left (a reload, a long outage).
  const ready = await credentials.ensure();
  if (!ready.ok) {
    if (ready.final) setStatus("error", ready.message);
    else reconnectSoon(ready.message);
    return;
  }
  // The credential goes in the handshake's subprotocols, not in the URL: the browser
  // prints a failed websocket's URL in the console.
  const ws = new WebSocket(`${captureWs}/ws/call`, credentials.protocols());
  state.ws = ws;
  state.connects += 1;
  state.lastServerMessageMs = Date.now();
  ws.addEventListener("message", (event) => {
    state.lastServerMessageMs = Date.now();
    onMessage(event).catch((error) => console.error(error));
  });
  ws.addEventListener("close", async (event) => {
    if (ws !== state.ws) return;
    // Revoked, ran out, the session over: rejoining cannot help. Refused for now (the
    // session, this address or the server full): later. Else: soon (credentials.js).
    const verdict = await credentials.closed(event, `${captureBase.origin}/api/token`);
    if (ws !== state.ws) return; // a newer connection took over meanwhile
    if (!verdict.retry) {
      setStatus("error", verdict.message);
      if (verdict.code === "session_ended") sessionOver();
      return;
    }
    reconnectSoon(verdict.message, verdict.slow);
  });
}

// For tests and health views: frames and audio received per watched performer.
state.receiveStats = async function receiveStats() {
  const result = {};
  for (const [performerId, { pc }] of state.subscriptions) {
    const report = await pc.getStats();
    const entry = { framesDecoded: 0, audioSamples: 0, audioEnergy: 0 };
    report.forEach((stat) => {
      if (stat.type === "inbound-rtp" && stat.kind === "video") entry.framesDecoded = stat.framesDecoded || 0;
      if (stat.type === "inbound-rtp" && stat.kind === "audio") {
        entry.audioSamples = stat.totalSamplesReceived || 0;
        entry.audioEnergy = stat.totalAudioEnergy || 0;
      }
    });
    result[performerId] = entry;
  }
  return result;
};

// A network cut can leave the websocket open for minutes with nothing arriving: the
// server's silence is the sign.
setInterval(() => {
  if (reconnectTimer || !state.ws || state.ws.readyState !== WebSocket.OPEN) return;
  if (Date.now() - state.lastServerMessageMs > SERVER_SILENCE_MS) reconnectSoon("server silent");
}, 1000);

connect();
