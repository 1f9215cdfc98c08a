// Pipeline health in the side panel: broker up or down, per performer video fps in and
// out, drops and feature latency, the session's cumulative counters (what was lost or
// incomplete), the processors' consumer lag, every page's clock offset; and the header's
// state of this page's own connection. Separate because it is all tables of the
// server's numbers, redrawn in place row by row, with no time axis.

import { $, dash, fmt, hooks } from "./shared.js";

// The header's indicator of this page's websocket (connecting, live, reconnecting, error).
export function setConn(state, text) {
  const connEl = $("conn");
  connEl.dataset.state = state;
  connEl.textContent = text;
}

function cell(row, index, text, level) {
  while (row.cells.length <= index) row.insertCell();
  const c = row.cells[index];
  if (c.textContent !== text) c.textContent = text;
  if (level !== undefined && c.dataset.level !== level) c.dataset.level = level;
}

// One row per key, in the keys' order, reusing the rows already there: an update (15 a
// second) rewrites only the cells whose text changed.
function syncRows(tbody, keys) {
  const rows = new Map();
  for (const row of Array.from(tbody.rows)) rows.set(row.dataset.key, row);
  const ordered = [];
  for (const key of keys) {
    let row = rows.get(key);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.key = key;
    }
    rows.delete(key);
    ordered.push(row);
  }
  for (const row of rows.values()) row.remove();
  for (let i = 0; i < ordered.length; i += 1) {
    if (tbody.rows[i] !== ordered[i]) tbody.insertBefore(ordered[i], tbody.rows[i] || null);
  }
  return ordered;
}

function latencyLevel(ms) {
  if (typeof ms !== "number") return "na";
  if (ms > 1000) return "bad";
  if (ms > 400) return "warn";
  return "ok";
}

// Performers in the tiles' order (the roster's), anyone else after them by id.
function byTileOrder() {
  const rosterOrder = Array.from(dash.panels.keys());
  return (a, b) => {
    const ia = rosterOrder.indexOf(a);
    const ib = rosterOrder.indexOf(b);
    return (ia < 0 ? 1e9 : ia) - (ib < 0 ? 1e9 : ib) || (a < b ? -1 : a > b ? 1 : 0);
  };
}

export function setHealth(health) {
  hooks.health = health;
  if (!health || typeof health !== "object") return;
  const broker = $("broker");
  if (health.broker !== undefined) {
    broker.dataset.ok = health.broker ? "true" : "false";
    broker.textContent = health.broker ? "broker up" : "broker DOWN";
  }
  const tileOrder = byTileOrder();
  const perf = health.performers || {};
  const perfKeys = Object.keys(perf).sort(tileOrder);
  const perfRows = syncRows($("health-performers").tBodies[0], perfKeys);
  perfKeys.forEach((key, i) => {
    const v = perf[key] || {};
    const row = perfRows[i];
    cell(row, 0, key);
    cell(row, 1, fmt(v.video_fps_in, 1), typeof v.video_fps_in === "number" && v.video_fps_in < 5 ? "warn" : "ok");
    cell(row, 2, fmt(v.video_fps_out, 1), typeof v.video_fps_out === "number" && v.video_fps_out < 3 ? "warn" : "ok");
    cell(row, 3, fmt(v.frames_dropped, 0), v.frames_dropped > 0 ? "warn" : "ok");
    cell(row, 4, fmt(v.audio_dropped, 0), v.audio_dropped > 0 ? "warn" : "ok");
    cell(row, 5, fmt(v.prosody_latency_ms, 0), latencyLevel(v.prosody_latency_ms));
    cell(row, 6, fmt(v.face_latency_ms, 0), latencyLevel(v.face_latency_ms));
    cell(row, 7, fmt(v.face_fps_analysed, 1), typeof v.face_fps_analysed === "number" && v.face_fps_analysed < 10 ? "warn" : "ok");
    cell(row, 8, fmt(v.face_frames_skipped, 0), v.face_frames_skipped > 0 ? "warn" : "ok");
  });
  // The session's cumulative counters (the health records /metrics exports): what was
  // lost or incomplete shows here, for the whole session, not only while it happens.
  const counters = health.counters || {};
  const counterKeys = Object.keys(counters).sort(tileOrder);
  const counterRows = syncRows($("health-counters").tBodies[0], counterKeys);
  counterKeys.forEach((key, i) => {
    const capture = (counters[key] || {}).capture || {};
    const aligner = (counters[key] || {}).aligner || {};
    const row = counterRows[i];
    const count = (value, warnAbove) =>
      [fmt(value, 0), typeof value !== "number" ? "na" : value > warnAbove ? "warn" : "ok"];
    cell(row, 0, key);
    cell(row, 1, ...count(capture.reconnects, 0));
    cell(row, 2, ...count(capture.video_frames_dropped, 0));
    cell(row, 3, ...count(capture.audio_chunks_dropped, 0));
    cell(row, 4, ...count(aligner.windows_emitted, Infinity));
    cell(row, 5, ...count(aligner.windows_incomplete, 0));
    cell(row, 6, ...count(aligner.windows_without_media, 0));
    cell(row, 7, ...count(aligner.late_features_lost, 0));
    cell(row, 8, ...count(aligner.late_tags, 0));
  });
  const lag = health.consumer_lag || {};
  const lagKeys = Object.keys(lag).sort();
  const lagRows = syncRows($("health-lag").tBodies[0], lagKeys);
  lagKeys.forEach((key, i) => {
    const n = lag[key];
    cell(lagRows[i], 0, key);
    lagRows[i].cells[0].title = key;
    cell(lagRows[i], 1, fmt(n, 0), typeof n !== "number" ? "na" : n > 500 ? "bad" : n > 50 ? "warn" : "ok");
  });
  const clients = Array.isArray(health.clients) ? health.clients : [];
  const clientKeys = clients.map((c, i) => `${c.participant_id}|${c.kind}|${i}`);
  const clientRows = syncRows($("health-clients").tBodies[0], clientKeys);
  clients.forEach((c, i) => {
    const row = clientRows[i];
    cell(row, 0, String(c.participant_id ?? "—"));
    cell(row, 1, String(c.role ?? "—"));
    cell(row, 2, String(c.kind ?? "—"));
    cell(row, 3, fmt(c.offset_ms, 1));
    cell(row, 4, fmt(c.rtt_ms, 1), typeof c.rtt_ms === "number" && c.rtt_ms > 300 ? "warn" : "ok");
    cell(row, 5, fmt(c.uncertainty_ms, 1), typeof c.uncertainty_ms === "number" && c.uncertainty_ms > 100 ? "warn" : "ok");
  });
}
