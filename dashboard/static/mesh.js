// The face of each performer tile: the face mesh drawn over the video from
// livetag.features.face, and beside it the blendshape bars, head pose and face state of
// the same record. Separate because the face stream has a clock of its own: its records
// are buffered and drawn at the stream's own latency, not as they land, and an old mesh
// fades instead of vanishing.

import { COLOURS, beginCanvas, el, fmt, hooks, makeCanvas, sessionNowUs } from "./shared.js";

// The mesh is drawn at the face stream's own latency: the largest arrival latency of
// its records over the last second, so the jitter of fetches and update ticks (a few
// 100 ms) does not stutter the playback, and a stream that catches up is followed
// within a second (a longer span would keep a current stream drawn needlessly old).
const FACE_DELAY_SPAN_MS = 1000;
const FACE_BUFFER_MAX = 200; // face records waiting to be drawn (13 s at 15 fps)
// An old mesh fades, from full opacity at 0.5 s to a floor at 5 s, and stays visible:
// a late mesh is information (the analysis runs behind), a blank one is not.
const MESH_FADE_FROM_US = 0.5e6;
const MESH_FADE_TO_US = 5e6;
const MESH_MIN_OPACITY = 0.3;
const BLEND_ROWS = 8;

// mediapipe's tessellation as pairs of landmark indices (hello.mesh_edges); without it
// the landmarks are drawn as dots.
let edges = new Uint16Array(0);

export function setMeshEdges(meshEdges) {
  if (!Array.isArray(meshEdges)) return;
  const pairs = new Uint16Array(meshEdges.length * 2);
  let k = 0;
  for (const edge of meshEdges) {
    if (!Array.isArray(edge) || edge.length < 2) continue;
    pairs[k] = edge[0];
    pairs[k + 1] = edge[1];
    k += 2;
  }
  edges = pairs.subarray(0, k);
}

// ---- landmarks: base64 of little-endian float16 triples -----------------------------
let halfTable = null;
function halfToFloatTable() {
  if (halfTable) return halfTable;
  halfTable = new Float32Array(65536);
  for (let h = 0; h < 65536; h += 1) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >> 10) & 0x1f;
    const frac = h & 0x3ff;
    let v;
    if (exp === 0) v = sign * frac * 5.960464477539063e-8;
    else if (exp === 31) v = frac ? NaN : sign * Infinity;
    else v = sign * (1 + frac / 1024) * Math.pow(2, exp - 15);
    halfTable[h] = v;
  }
  return halfTable;
}

// Decodes x, y of each landmark into out (x0, y0, x1, y1, ...); returns the count.
function decodeLandmarks(data, out) {
  if (!data || typeof data !== "string") return 0;
  let raw;
  try {
    raw = atob(data);
  } catch (error) {
    return 0;
  }
  const table = halfToFloatTable();
  const count = Math.min(Math.floor(raw.length / 6), out.length >> 1);
  for (let i = 0; i < count; i += 1) {
    const o = i * 6;
    out[2 * i] = table[raw.charCodeAt(o) | (raw.charCodeAt(o + 1) << 8)];
    out[2 * i + 1] = table[raw.charCodeAt(o + 2) | (raw.charCodeAt(o + 3) << 8)];
  }
  return count;
}

// ---- a tile's face parts ------------------------------------------------------------
// The mesh canvas (video.js lays it over the video) and the side panel of bars.
export function createFaceParts(performerId) {
  const mesh = makeCanvas("mesh", `face mesh of ${performerId}`);
  const side = el("div", "face-side");
  const bars = el("ol", "blend");
  const blendRows = [];
  for (let i = 0; i < BLEND_ROWS; i += 1) {
    const row = el("li", "blend-row");
    const label = el("span", "blend-name", "");
    const track = el("span", "blend-track");
    const fill = el("span", "blend-fill");
    track.append(fill);
    const value = el("span", "blend-value num", "");
    row.append(label, track, value);
    bars.append(row);
    blendRows.push({ row, label, fill, value, name: null });
  }
  const poseEl = el("div", "pose num", "yaw — pitch — roll —");
  const faceStateEl = el("div", "face-state", "no face data");
  side.append(faceStateEl, bars, poseEl);
  return { mesh, side, blendRows, poseEl, faceStateEl };
}

// A tile's face state: records in ts_us order waiting to be drawn (the first is the one
// drawn once drawing started), the record drawn, and the stream's latency.
export function newFaceState() {
  return {
    faces: [],
    face: null,
    faceLatency: [], // {perf, us} of recent arrivals, latencies decreasing (windowed max)
    faceDelayUs: 0,
    xy: new Float32Array(2000), // the drawn record's landmarks, decoded
    faceCount: 0,
    meshOpacity: 1,
    meshDirty: false,
    lastVw: 0,
    lastVh: 0,
  };
}

// ---- face records -------------------------------------------------------------------
// A face record arrives: buffered until the lane's delay reaches it, and its arrival
// latency (on the session clock) updates the delay.
export function setFace(panel, face) {
  if (!face || typeof face !== "object") return;
  const ts = Number(face.ts_us);
  if (!Number.isFinite(ts)) return;
  const faces = panel.faces;
  const newest = faces.length ? faces[faces.length - 1].ts : panel.face ? panel.face.ts : -Infinity;
  if (ts <= newest) return; // re-delivered, or older than what is drawn already
  let data = face.landmarks;
  if (data && typeof data === "object") data = data.data; // a Landmarks record
  const present = face.face_present === true;
  faces.push({
    ts,
    present,
    landmarks: present && typeof data === "string" ? data : null, // decoded when drawn
    blendshapes: face.blendshapes && typeof face.blendshapes === "object" ? face.blendshapes : {},
    pose: face.head_pose || null,
  });
  if (faces.length > FACE_BUFFER_MAX) faces.splice(0, faces.length - FACE_BUFFER_MAX);
  const now = sessionNowUs();
  if (now !== null) noteFaceLatency(panel, now - ts);
}

// The face stream's current latency: the largest arrival latency of the last second. A
// stream arriving 2 s late is then drawn continuously 2 s behind, frame after frame,
// instead of jumping to each newest record as it lands; a stream that stops arriving
// keeps its last delay (its last record stays drawn, ageing).
function noteFaceLatency(panel, latencyUs) {
  const perf = performance.now();
  const samples = panel.faceLatency;
  while (samples.length && samples[0].perf < perf - FACE_DELAY_SPAN_MS) samples.shift();
  while (samples.length && samples[samples.length - 1].us <= latencyUs) samples.pop();
  samples.push({ perf, us: latencyUs });
  panel.faceDelayUs = Math.max(0, samples[0].us);
  panel.hook.meshDelayMs = Math.round(panel.faceDelayUs / 1000);
}

// The record to draw now: the newest one captured at or before now minus the lane's
// delay. Never an older one than is drawn (a growing delay holds the mesh instead of
// playing it backwards), and never nothing once something was drawn.
function pickFace(panel, now) {
  const faces = panel.faces;
  if (!faces.length) return;
  const target = now - panel.faceDelayUs;
  let pick = -1;
  for (let i = faces.length - 1; i >= 0; i -= 1) {
    if (faces[i].ts <= target) {
      pick = i;
      break;
    }
  }
  if (pick < 0) {
    if (panel.face) return;
    pick = 0; // nothing is that old yet: the oldest there is, rather than a blank
  }
  const face = faces[pick];
  faces.splice(0, pick); // the older ones will never be drawn
  if (face === panel.face) return;
  panel.face = face;
  panel.faceCount = face.present ? decodeLandmarks(face.landmarks, panel.xy) : 0;
  face.landmarks = null; // decoded: the string is not needed any more
  panel.meshDirty = true;
  showFace(panel, face);
}

// Blendshape bars, head pose and face state of the record the mesh draws, so the side
// panel and the mesh always describe the same moment.
function showFace(panel, face) {
  const present = face.present;
  const blend = face.blendshapes;
  panel.hook.blendshapes = blend;
  panel.hook.meshFaceTsUs = face.ts;
  const entries = Object.entries(blend)
    .filter((e) => typeof e[1] === "number")
    .sort((a, b) => b[1] - a[1]);
  for (let i = 0; i < BLEND_ROWS; i += 1) {
    const row = panel.blendRows[i];
    const entry = entries[i];
    if (!entry || !present) {
      if (row.name !== null) {
        row.name = null;
        row.label.textContent = "";
        row.value.textContent = "";
        row.fill.style.transform = "scaleX(0)";
      }
      continue;
    }
    if (row.name !== entry[0]) {
      row.name = entry[0];
      row.label.textContent = entry[0];
      row.label.title = entry[0];
    }
    const v = Math.max(0, Math.min(1, entry[1]));
    row.fill.style.transform = `scaleX(${v.toFixed(3)})`;
    row.value.textContent = v.toFixed(2);
  }
  const pose = face.pose;
  panel.poseEl.textContent = pose && present
    ? `yaw ${fmt(pose.yaw_deg, 1)}°  pitch ${fmt(pose.pitch_deg, 1)}°  roll ${fmt(pose.roll_deg, 1)}°`
    : "yaw —  pitch —  roll —";
  panel.faceStateEl.textContent = present ? "face" : "no face";
  panel.faceStateEl.dataset.present = present ? "1" : "0";
}

// Opacity of a mesh of this age: full while current, fading to a floor, never hidden.
function meshOpacity(ageUs) {
  if (!(ageUs > MESH_FADE_FROM_US)) return 1;
  const faded = Math.min(1, (ageUs - MESH_FADE_FROM_US) / (MESH_FADE_TO_US - MESH_FADE_FROM_US));
  return 1 - faded * (1 - MESH_MIN_OPACITY);
}

// ---- drawing ------------------------------------------------------------------------
export function drawMesh(panel, now) {
  const canvas = panel.mesh;
  if (!canvas._w) return;
  const video = panel.video;
  const vw = video && video.videoWidth ? video.videoWidth : 0;
  const vh = video && video.videoHeight ? video.videoHeight : 0;
  if (vw !== panel.lastVw || vh !== panel.lastVh) {
    panel.lastVw = vw;
    panel.lastVh = vh;
    panel.meshDirty = true;
  }
  if (now !== null) pickFace(panel, now);
  const face = panel.face;
  if (face && now !== null) {
    // A CSS opacity, not a redraw: fading costs no stroke of the mesh.
    const opacity = Math.round(meshOpacity(now - face.ts) * 20) / 20;
    if (opacity !== panel.meshOpacity) {
      panel.meshOpacity = opacity;
      canvas.style.opacity = String(opacity);
      panel.hook.meshOpacity = opacity;
    }
  }
  if (!panel.meshDirty) return;
  panel.meshDirty = false;
  const ctx = beginCanvas(canvas);
  if (!face || panel.faceCount === 0) return; // no face in the drawn record: rightly blank
  const w = canvas._w;
  const h = canvas._h;
  // object-fit: contain: the picture is letterboxed inside the element box
  const srcW = vw || 16;
  const srcH = vh || 9;
  const scale = Math.min(w / srcW, h / srcH);
  const bw = srcW * scale;
  const bh = srcH * scale;
  const ox = (w - bw) / 2;
  const oy = (h - bh) / 2;
  const xy = panel.xy;
  const n = panel.faceCount;
  ctx.strokeStyle = COLOURS.mesh;
  ctx.fillStyle = COLOURS.mesh;
  ctx.lineWidth = 0.6;
  ctx.beginPath();
  if (edges.length >= 2) {
    for (let k = 0; k + 1 < edges.length; k += 2) {
      const a = edges[k];
      const b = edges[k + 1];
      if (a >= n || b >= n) continue;
      ctx.moveTo(ox + xy[2 * a] * bw, oy + xy[2 * a + 1] * bh);
      ctx.lineTo(ox + xy[2 * b] * bw, oy + xy[2 * b + 1] * bh);
    }
    ctx.stroke();
  } else {
    for (let i = 0; i < n; i += 1) ctx.rect(ox + xy[2 * i] * bw - 0.6, oy + xy[2 * i + 1] * bh - 0.6, 1.2, 1.2);
    ctx.fill();
  }
  panel.hook.meshDraws += 1;
  hooks.meshDrawn[panel.id] = { atUnixMs: performance.timeOrigin + performance.now(), faceTsUs: face.ts };
}
