// livetag lobby: a performer waits here between the scenes of a casting day.
//
// The page exchanges its day link for a credential (credentials.js: the link leaves the
// address bar and stays in this tab's sessionStorage, so a scene's call page can send the
// performer back to /lobby), shows the camera, a microphone level meter (WebAudio
// AnalyserNode, dBFS) and whether the server finds a face in a small snapshot sent every
// face_check_interval_ms. When the director starts a scene with this performer, the
// server sends {type: "scene", url}: the page goes to that scene's call page.
// Server side: capture/lobby.py.

import { Backoff, LivetagCredentials } from "/tagger/credentials.js";

const credentials = new LivetagCredentials({
  exchangeUrl: `${location.origin}/api/lobby-credential`,
  storageKey: "livetag-lobby-link",
});
const wsBase = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;

const CHECK_EVERY_MS = 1000; // the device check (camera, microphone, level)
const METER_EVERY_MS = 100;
const SNAPSHOT_WIDTH = 320;
const SNAPSHOT_HEIGHT = 180;
// A snapshot not answered within this long is given up: the next one goes.
const SNAPSHOT_ANSWER_MS = 5000;
const METER_FLOOR_DB = -60; // the meter's empty end
const SILENCE_DB = -120; // what digital silence is reported as
// The meter holds a peak and lets it fall this much per reading: speech between words
// would make a bare RMS meter flicker to the floor.
const METER_FALL_DB = 2;
const RETRY_MAX_MS = 5000;

const el = (id) => document.getElementById(id);
const statusEl = el("status");

const state = {
  connected: false,
  welcome: null,
  camera: false,
  microphone: false,
  faceFound: null,
  levelDb: null,
  peakDb: null, // the loudest the meter has shown
  checksSent: 0,
  snapshotsSent: 0,
  faceAnswers: 0,
  scene: null,
  errors: [],
  ws: null,
};
window.livetagLobby = state; // tests read this

function setStatus(kind, text) {
  statusEl.dataset.state = kind;
  statusEl.textContent = text;
}

function mark(id, ok) {
  el(id).dataset.ok = ok === null ? "unknown" : ok ? "yes" : "no";
}

// ---------------------------------------------------------------- devices

let stream = null;
let analyser = null;
let audioContext = null;
let samples = null;
let loudestDb = null; // the loudest meter reading since the last check message
let shownDb = SILENCE_DB; // what the meter shows (a falling peak)

async function openDevices() {
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      video: { width: 640, height: 360 },
      audio: true,
    });
  } catch (error) {
    // One of them may still work alone: the check says which is missing.
    stream = new MediaStream();
    for (const kind of ["video", "audio"]) {
      try {
        const alone = await navigator.mediaDevices.getUserMedia({ [kind]: true });
        alone.getTracks().forEach((track) => stream.addTrack(track));
      } catch (failure) {
        state.errors.push(`${kind}: ${failure.name}`);
      }
    }
  }
  state.camera = stream.getVideoTracks().length > 0;
  state.microphone = stream.getAudioTracks().length > 0;
  mark("camera", state.camera);
  mark("microphone", state.microphone);
  if (state.camera) el("preview").srcObject = stream;
  else el("face").textContent = "no camera";
  if (state.microphone) startMeter();
}

function startMeter() {
  audioContext = new AudioContext();
  const source = audioContext.createMediaStreamSource(new MediaStream(stream.getAudioTracks()));
  analyser = audioContext.createAnalyser();
  analyser.fftSize = 2048;
  samples = new Float32Array(analyser.fftSize);
  source.connect(analyser);
  if (audioContext.state === "suspended") {
    // A browser that wants a gesture before it plays or analyses audio.
    const button = el("start-check");
    button.hidden = false;
    button.addEventListener("click", async () => {
      await audioContext.resume();
      button.hidden = true;
    });
  }
  setInterval(readMeter, METER_EVERY_MS);
}

function readMeter() {
  if (!analyser || audioContext.state !== "running") return;
  analyser.getFloatTimeDomainData(samples);
  let sum = 0;
  for (const sample of samples) sum += sample * sample;
  const rms = Math.sqrt(sum / samples.length);
  const db = rms > 0 ? Math.max(SILENCE_DB, 20 * Math.log10(rms)) : SILENCE_DB;
  state.levelDb = db;
  state.peakDb = state.peakDb === null ? db : Math.max(state.peakDb, db);
  loudestDb = loudestDb === null ? db : Math.max(loudestDb, db);
  shownDb = Math.max(db, shownDb - METER_FALL_DB);
  const fill = Math.min(1, Math.max(0, (shownDb - METER_FLOOR_DB) / -METER_FLOOR_DB));
  el("meter-bar").style.width = `${Math.round(fill * 100)}%`;
  el("level").textContent = shownDb <= SILENCE_DB + 1 ? "silent" : `${shownDb.toFixed(0)} dBFS`;
}

// ---------------------------------------------------------------- the server

function send(message) {
  const ws = state.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(message);
  return true;
}

function sendCheck() {
  const level = loudestDb === null ? null : Math.round(loudestDb * 10) / 10;
  loudestDb = null;
  const check = { type: "check", camera: state.camera, microphone: state.microphone, audio_level_db: level };
  if (send(JSON.stringify(check))) state.checksSent += 1;
}

let snapshotSentAt = 0;
let snapshotOpen = false;
const canvas = document.createElement("canvas");
canvas.width = SNAPSHOT_WIDTH;
canvas.height = SNAPSHOT_HEIGHT;

function sendSnapshot() {
  const video = el("preview");
  if (!state.camera || video.readyState < 2 || !state.connected) return;
  if (snapshotOpen && performance.now() - snapshotSentAt < SNAPSHOT_ANSWER_MS) return;
  canvas.getContext("2d").drawImage(video, 0, 0, SNAPSHOT_WIDTH, SNAPSHOT_HEIGHT);
  canvas.toBlob(
    (blob) => {
      if (!blob) return;
      if (!send(blob)) return;
      snapshotOpen = true;
      snapshotSentAt = performance.now();
      state.snapshotsSent += 1;
    },
    "image/jpeg",
    0.7,
  );
}

function showFace(found) {
  state.faceFound = found;
  state.faceAnswers += 1;
  mark("face-check", found);
  const face = el("face");
  face.dataset.state = found ? "found" : "missing";
  face.textContent = found ? "face found" : "no face found: look into the camera";
}

function onMessage(event) {
  const message = JSON.parse(event.data);
  switch (message.type) {
    case "welcome": {
      state.welcome = message;
      state.connected = true;
      backoff.reset();
      el("day-title").textContent = message.title || message.day_id;
      el("hello").textContent = `Hello ${message.you.display_name}.`;
      setStatus("waiting", "waiting");
      sendCheck();
      if (!state.snapshotTimer) {
        state.snapshotTimer = setInterval(sendSnapshot, message.face_check_interval_ms);
      }
      break;
    }
    case "face":
      snapshotOpen = false;
      showFace(message.face_found);
      break;
    case "face_busy":
      snapshotOpen = false;
      break;
    case "credential":
      credentials.accept(message);
      break;
    case "scene": {
      state.scene = message;
      const role = message.role ? ` (${message.role})` : "";
      setStatus("scene", "your scene starts");
      el("waiting").textContent = `Your scene${role} is starting…`;
      // The call page of the scene: this tab keeps the day link for the way back.
      location.assign(message.url);
      break;
    }
    case "error":
      if (message.code === "bad_snapshot" || message.code === "face_check_unavailable") snapshotOpen = false;
      state.errors.push(`${message.code}: ${message.message}`);
      break;
    default:
      break;
  }
}

let reconnectTimer = null;
const backoff = new Backoff({ startMs: 500, maxMs: RETRY_MAX_MS });

function reconnectSoon(reason, slow) {
  state.connected = false;
  setStatus("reconnecting", `reconnecting (${reason})`);
  clearTimeout(reconnectTimer);
  reconnectTimer = setTimeout(() => {
    reconnectTimer = null;
    connect();
  }, backoff.next(slow));
}

async function connect() {
  const ready = await credentials.ensure();
  if (!ready.ok) {
    if (ready.final) setStatus("error", ready.message);
    else reconnectSoon(ready.message);
    return;
  }
  const ws = new WebSocket(`${wsBase}/ws/lobby`, credentials.protocols());
  state.ws = ws;
  ws.addEventListener("message", (event) => {
    if (typeof event.data === "string") onMessage(event);
  });
  ws.addEventListener("close", async (event) => {
    if (ws !== state.ws) return;
    state.connected = false;
    if (state.scene) return; // on the way to the scene
    // Rejoining cannot help (revoked, ran out), later (refused for now), or soon.
    const verdict = await credentials.closed(event, `${location.origin}/api/lobby-token`);
    if (ws !== state.ws) return;
    if (!verdict.retry) setStatus("error", verdict.message);
    else reconnectSoon(verdict.message, verdict.slow);
  });
}

setInterval(sendCheck, CHECK_EVERY_MS);
openDevices()
  .catch((error) => state.errors.push(String(error)))
  .finally(connect);
