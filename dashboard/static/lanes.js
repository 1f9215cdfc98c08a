// The feature lanes of each performer tile: pitch and loudness over the last 30 s on
// their canvases (from the prosody hops in each update, kept in a ring buffer), the time
// grid and take marks every lane shares, and the age label each lane shows (video, mesh,
// prosody, tags). Separate from the mesh and the timeline: the prosody arrives as
// points scrolled past at a fixed rate, and the ages read every lane's newest instant.

import { COLOURS, beginCanvas, dash, el, makeCanvas } from "./shared.js";

const PROSODY_CAP = 8192; // points per performer (ring buffer)
const F0_MIN = 60;
const F0_MAX = 500;
const DB_MIN = -70;
const DB_MAX = 0;
const LOG_F0_RANGE = Math.log(F0_MAX / F0_MIN);
const GAP_US = 300e3; // loudness line breaks over gaps longer than this
const PITCH_GRID = [100, 200, 400];
const LOUD_GRID = [-60, -40, -20];
const PITCH_TEXT = PITCH_GRID.map((hz) => `${hz} Hz`);
const LOUD_TEXT = LOUD_GRID.map((db) => `${db} dB`);
// Lane ages: labels refresh at 4 Hz; colour from these ages up.
const AGE_LABEL_MS = 250;
const AGE_WARN_US = 0.6e6;
const AGE_BAD_US = 2e6;

// ---- a tile's charts ----------------------------------------------------------------
export function createProsodyCharts(performerId) {
  const pitchWrap = el("div", "chart pitch-wrap");
  const pitch = makeCanvas("pitch", `pitch of ${performerId}`);
  pitchWrap.title = "pitch (F0, Hz, log scale 60-500), last 30 s";
  pitchWrap.append(pitch);
  const loudWrap = el("div", "chart loud-wrap");
  const loud = makeCanvas("loud", `loudness of ${performerId}`);
  loudWrap.title = "loudness (dB, -70..0), last 30 s";
  loudWrap.append(loud);
  return { pitchWrap, pitch, loudWrap, loud };
}

// A tile's prosody ring buffer: point i of count is at (head + i) % PROSODY_CAP.
export function newProsodyRing() {
  return {
    ts: new Float64Array(PROSODY_CAP),
    f0n: new Float32Array(PROSODY_CAP), // normalized log-F0 0..1, NaN when unvoiced
    dbn: new Float32Array(PROSODY_CAP), // normalized loudness 0..1
    head: 0,
    count: 0,
    lastTs: -Infinity,
  };
}

// ---- prosody ------------------------------------------------------------------------
// Points are [ts_us, f0 Hz or null, loudness dB], in time order.
export function addProsody(panel, points) {
  if (!Array.isArray(points)) return;
  const cap = PROSODY_CAP;
  for (const point of points) {
    if (!Array.isArray(point)) continue;
    const ts = Number(point[0]);
    if (!Number.isFinite(ts) || ts <= panel.lastTs) continue; // in time order; drops repeats
    const f0 = point[1];
    const db = point[2];
    if (panel.count === cap) {
      panel.head = (panel.head + 1) % cap;
      panel.count -= 1;
    }
    const idx = (panel.head + panel.count) % cap;
    panel.ts[idx] = ts;
    if (typeof f0 === "number" && f0 > 0) {
      const n = Math.log(f0 / F0_MIN) / LOG_F0_RANGE;
      panel.f0n[idx] = n < 0 ? 0 : n > 1 ? 1 : n;
      panel.hook.lastF0 = f0;
    } else {
      panel.f0n[idx] = NaN;
      panel.hook.lastF0 = null;
    }
    if (typeof db === "number" && Number.isFinite(db)) {
      const n = (db - DB_MIN) / (DB_MAX - DB_MIN);
      panel.dbn[idx] = n < 0 ? 0 : n > 1 ? 1 : n;
      panel.hook.lastLoudness = db;
    } else {
      panel.dbn[idx] = NaN;
      panel.hook.lastLoudness = null;
    }
    panel.count += 1;
    panel.lastTs = ts;
  }
  panel.hook.prosodyPoints = panel.count;
}

export function pruneProsody(panel, cutoff) {
  const cap = PROSODY_CAP;
  while (panel.count > 0 && panel.ts[panel.head] < cutoff) {
    panel.head = (panel.head + 1) % cap;
    panel.count -= 1;
  }
  panel.hook.prosodyPoints = panel.count;
}

// ---- what every time lane draws (the timeline too) ----------------------------------
export function drawTimeGrid(ctx, w, h, now, t0, scaleX) {
  const step = 5e6;
  ctx.strokeStyle = COLOURS.grid;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let t = Math.ceil(t0 / step) * step; t <= now; t += step) {
    const x = Math.round((t - t0) * scaleX) + 0.5;
    ctx.moveTo(x, 0);
    ctx.lineTo(x, h);
  }
  ctx.stroke();
}

export function drawTakes(ctx, h, now, t0, scaleX) {
  const takes = dash.session.takes;
  if (!takes || !takes.length) return;
  ctx.strokeStyle = COLOURS.take;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (let i = 0; i < takes.length; i += 1) {
    const take = takes[i];
    const s = take.start_ts_us;
    const e = take.end_ts_us;
    if (s >= t0 && s <= now) {
      const x = Math.round((s - t0) * scaleX) + 0.5;
      ctx.moveTo(x, 0);
      ctx.lineTo(x, h);
    }
    if (e !== null && e !== undefined && e >= t0 && e <= now) {
      const x = Math.round((e - t0) * scaleX) + 0.5;
      ctx.moveTo(x, 0);
      ctx.lineTo(x, h);
    }
  }
  ctx.stroke();
}

// ---- charts -------------------------------------------------------------------------
// A chart's canvas, cleared, with what its drawing needs: the last `dash.windowUs` up to
// `now` across its width, `pad` pixels kept free above and below. Null while it has no size.
function beginChart(canvas, now, pad) {
  const w = canvas._w;
  const h = canvas._h;
  if (!w || !h) return null;
  const ctx = beginCanvas(canvas);
  const t0 = now - dash.windowUs;
  return { ctx, w, h, pad, span: h - 2 * pad, now, t0, scaleX: w / dash.windowUs };
}

// A chart's frame: a labelled line at each of `values` (placed by `level`: 0 at the
// bottom of the plot, 1 at its top), then the time grid and the takes under the data.
function drawFrame(chart, values, labels, level) {
  const { ctx, w, h, pad, span, now, t0, scaleX } = chart;
  ctx.strokeStyle = COLOURS.grid;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (const value of values) {
    const y = Math.round(pad + span * (1 - level(value))) + 0.5;
    ctx.moveTo(0, y);
    ctx.lineTo(w, y);
  }
  ctx.stroke();
  drawTimeGrid(ctx, w, h, now, t0, scaleX);
  drawTakes(ctx, h, now, t0, scaleX);
  ctx.fillStyle = COLOURS.gridLabel;
  ctx.font = "9px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  values.forEach((value, i) => ctx.fillText(labels[i], 3, pad + span * (1 - level(value)) - 5));
}

export function drawPitch(panel, now) {
  const chart = beginChart(panel.pitch, now, 3);
  if (!chart) return;
  const { ctx, pad, span, t0, scaleX } = chart;
  drawFrame(chart, PITCH_GRID, PITCH_TEXT, (hz) => Math.log(hz / F0_MIN) / LOG_F0_RANGE);
  const cap = PROSODY_CAP;
  const ts = panel.ts;
  const f0n = panel.f0n;
  ctx.fillStyle = COLOURS.pitch;
  ctx.beginPath();
  for (let i = 0; i < panel.count; i += 1) {
    const idx = (panel.head + i) % cap;
    const t = ts[idx];
    if (t < t0) continue;
    const v = f0n[idx];
    if (v !== v) continue; // unvoiced (NaN)
    const x = (t - t0) * scaleX;
    const y = pad + span * (1 - v);
    ctx.rect(x - 1.2, y - 1.2, 2.4, 2.4);
  }
  ctx.fill();
  panel.hook.pitchChartDraws += 1;
}

export function drawLoudness(panel, now) {
  const chart = beginChart(panel.loud, now, 2);
  if (!chart) return;
  const { ctx, pad, span, t0, scaleX } = chart;
  drawFrame(chart, LOUD_GRID, LOUD_TEXT, (db) => (db - DB_MIN) / (DB_MAX - DB_MIN));
  const cap = PROSODY_CAP;
  const ts = panel.ts;
  const dbn = panel.dbn;
  ctx.strokeStyle = COLOURS.loud;
  ctx.lineWidth = 1.3;
  ctx.lineJoin = "round";
  ctx.beginPath();
  let prevT = -Infinity;
  let penDown = false;
  for (let i = 0; i < panel.count; i += 1) {
    const idx = (panel.head + i) % cap;
    const t = ts[idx];
    if (t < t0 - GAP_US) continue;
    const v = dbn[idx];
    if (v !== v) {
      penDown = false;
      continue;
    }
    const x = (t - t0) * scaleX;
    const y = pad + span * (1 - v);
    if (!penDown || t - prevT > GAP_US) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
    penDown = true;
    prevT = t;
  }
  ctx.stroke();
}

// ---- lane ages ----------------------------------------------------------------------
// Each lane says how old what it draws is: session now (this page's estimate of the
// server clock) minus the ts_us of the newest thing drawn. Late data is drawn late and
// labelled so, never dropped from view.
const LANE_TITLES = {
  video:
    "How long ago the frame on screen was captured, from its RTP timestamp against the " +
    "fastest-arriving frames (the network's minimum delay is not counted)",
  mesh: "How long ago the face record the mesh draws was captured (the mesh is drawn at the face stream's own latency)",
  prosody: "How long ago the newest pitch/loudness point drawn was captured",
  tags: "How long ago the newest tag on this performer happened (tags are events: an old one is no fault)",
};

export function attachLaneAges(panel, pitchWrap, timelineWrap) {
  const make = (lane) => {
    const label = el("span", `lane-age lane-age-${lane} num`, "");
    label.dataset.lane = lane;
    label.dataset.level = "na";
    label.title = LANE_TITLES[lane];
    return label;
  };
  const ageEls = { video: make("video"), mesh: make("mesh"), prosody: make("prosody"), tags: make("tags") };
  const onVideo = el("div", "video-ages");
  onVideo.append(ageEls.video, ageEls.mesh);
  panel.slot.append(onVideo);
  pitchWrap.append(ageEls.prosody);
  timelineWrap.insertBefore(ageEls.tags, timelineWrap.firstChild);
  panel.ageEls = ageEls;
}

function ageText(us) {
  const s = Math.max(0, us) / 1e6;
  if (s < 10) return `${s.toFixed(1)} s`;
  if (s < 120) return `${Math.round(s)} s`;
  return `${Math.round(s / 60)} min`;
}

function ageLevel(us) {
  if (us === null) return "na";
  if (us > AGE_BAD_US) return "bad";
  if (us > AGE_WARN_US) return "warn";
  return "ok";
}

function showAge(panel, lane, us, text, level) {
  const label = panel.ageEls[lane];
  if (label.textContent !== text) label.textContent = text;
  if (label.dataset.level !== level) label.dataset.level = level;
  panel.hook.ages[lane] = us === null ? null : Math.round(us / 1000);
}

// The newest instant of each lane is kept on the panel by its own part: videoClock
// (video.js), face (mesh.js), lastTs (here), newestTagTs (timeline.js).
export function updateLaneAges(panel, now, perfNow) {
  if (perfNow - panel.agesPerf < AGE_LABEL_MS) return;
  panel.agesPerf = perfNow;
  const clock = panel.videoClock;
  if (panel.video && clock && clock.captureMs !== null) {
    const us = (perfNow - clock.captureMs) * 1000;
    showAge(panel, "video", us, `video ${ageText(us)} behind`, ageLevel(us));
  } else {
    showAge(panel, "video", null, panel.video ? "video: no frame yet" : "video: none", "na");
  }
  if (now === null) return; // no update yet: the session clock is unknown
  const face = panel.face;
  if (face) {
    const us = now - face.ts;
    const text = `mesh ${ageText(us)} behind${face.present ? "" : " · no face"}`;
    showAge(panel, "mesh", us, text, ageLevel(us));
  } else {
    showAge(panel, "mesh", null, "mesh: no face data yet", "na");
  }
  if (panel.count > 0) {
    const us = now - panel.lastTs;
    showAge(panel, "prosody", us, `prosody ${ageText(us)} behind`, ageLevel(us));
  } else {
    showAge(panel, "prosody", null, "prosody: none yet", "na");
  }
  if (panel.newestTagTs !== null) {
    const us = now - panel.newestTagTs;
    showAge(panel, "tags", us, `tags: newest ${ageText(us)} ago`, "info");
  } else {
    showAge(panel, "tags", null, "tags: none yet", "na");
  }
}
