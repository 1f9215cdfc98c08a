// The tag timeline of each performer tile: one lane per rater (the performer's own
// self-tags hatched, on top), each point tag or hold drawn over what the server says it
// covers, in its label's colour, under them the aligner's consensus windows, and under
// those one lane per model rater: its top label per window, marked red underneath where
// the server says the humans agreed and the model read otherwise.
// Separate because tags are events the server decides, not a stream: a later message
// about the same tag (or window) replaces or removes it, and the page never works out
// coverage, consensus or a miss itself.

import { drawTakes, drawTimeGrid } from "./lanes.js";
import {
  COLOURS,
  beginCanvas,
  dash,
  el,
  hooks,
  labelColour,
  makeCanvas,
  panelFor,
  setLabelColours,
} from "./shared.js";

const LANE_H = 14;
const AXIS_H = 14;

export function setVocabulary(entries) {
  setLabelColours(entries);
  for (const panel of dash.panels.values()) {
    for (const item of panel.items.values()) item.colour = colourOf(item.label);
  }
}

const colourOf = labelColour;

// ---- a tile's timeline --------------------------------------------------------------
export function createTimelineChart(performerId) {
  const timelineWrap = el("div", "chart timeline-wrap");
  const timeline = makeCanvas("timeline", `tags on ${performerId}`);
  timelineWrap.append(timeline);
  return { timelineWrap, timeline };
}

export function newTagState() {
  return {
    items: new Map(), // tag_id (point or onset) -> item, as the server decided it
    lanes: [], // {key, label, self}
    laneCount: "", // "rater lanes/model lanes" the canvas was last sized for
    models: new Map(), // model -> Map(window ts_us -> row), the rows as the server sent them
    highlight: null, // {start, end, untilPerf}: a moment the gap panel (gap.js) points at
    newestTagTs: null, // for the tags lane's age (lanes.js)
  };
}

function laneFor(panel, tag) {
  const self = tag.rater_role === "performer" && tag.rater_id === panel.id;
  const key = self ? "\u0000self" : String(tag.rater_id);
  for (let i = 0; i < panel.lanes.length; i += 1) if (panel.lanes[i].key === key) return panel.lanes[i];
  const lane = { key, label: self ? "self" : String(tag.rater_id), self, role: tag.rater_role };
  if (self) panel.lanes.unshift(lane);
  else panel.lanes.push(lane);
  setLaneHeight(panel);
  return lane;
}

export function setLaneHeight(panel) {
  const n = `${panel.lanes.length}/${panel.models.size}`;
  if (n === panel.laneCount) return;
  panel.laneCount = n;
  // rater lanes + consensus lane + model lanes + time axis
  const lanes = Math.max(panel.lanes.length, 1) + 1 + panel.models.size;
  panel.timeline.style.height = `${lanes * LANE_H + AXIS_H + 3}px`;
}

// ---- tags ---------------------------------------------------------------------------
// One point tag or hold as the server has it now: what it covers was decided there, by
// the rule the label windows and the export follow (streams/labels/tag_rules.py), so the page
// draws it as sent; a later message about the same tag_id replaces it, or removes it.
export function addTag(mark) {
  if (!mark || typeof mark !== "object" || !mark.performer_id || !mark.tag_id) return;
  const panel = panelFor(mark.performer_id);
  if (mark.removed) {
    panel.items.delete(mark.tag_id);
    return;
  }
  const start = Number(mark.start_us);
  const end = Number(mark.end_us);
  if (!Number.isFinite(start) || !Number.isFinite(end)) return;
  panel.items.set(mark.tag_id, {
    id: mark.tag_id,
    offsetId: mark.offset_tag_id || null,
    lane: laneFor(panel, mark),
    label: mark.label,
    colour: colourOf(mark.label),
    strong: mark.intensity === "strong",
    start,
    end, // an open hold's too: where it ends unless its key-up comes
    open: mark.open === true,
    hold: mark.kind === "hold",
  });
}

// The newest tag instant per performer, for the tags lane's age: each tag entry's ts_us
// (its newest key press); a removal carries none, and removing a tag is no newer tag.
export function noteTagTimes(tags) {
  for (const tag of tags) {
    if (!tag || typeof tag !== "object" || tag.removed) continue;
    const panel = dash.panels.get(tag.performer_id);
    const ts = Number(tag.ts_us);
    if (!panel || !Number.isFinite(ts)) continue;
    if (panel.newestTagTs === null || ts > panel.newestTagTs) panel.newestTagTs = ts;
  }
}

export function pruneTags(panel, cutoff) {
  for (const [id, item] of panel.items) {
    if (item.end < cutoff) panel.items.delete(id);
  }
  // drop lanes nobody draws in any more
  if (panel.lanes.length) {
    const used = new Set();
    for (const item of panel.items.values()) used.add(item.lane);
    const kept = panel.lanes.filter((lane) => used.has(lane));
    if (kept.length !== panel.lanes.length) {
      panel.lanes = kept;
      setLaneHeight(panel);
    }
  }
}

// ---- model lanes --------------------------------------------------------------------
// Rows are [performer_id, window_ts_us, window_us, model, top_label, probability, missed];
// a later row for the same model and window replaces the earlier one, and one with no top
// label (a revision without the model's reading) takes it off the lane.
export function addModelRows(rows) {
  if (!Array.isArray(rows)) return;
  const touched = new Set();
  for (const row of rows) {
    if (!Array.isArray(row) || row.length < 7 || typeof row[3] !== "string") continue;
    const panel = panelFor(row[0]);
    let lane = panel.models.get(row[3]);
    if (!lane) {
      lane = new Map();
      panel.models.set(row[3], lane);
      setLaneHeight(panel);
    }
    if (row[4]) lane.set(Number(row[1]), row);
    else lane.delete(Number(row[1]));
    touched.add(panel);
  }
  for (const panel of touched) noteModels(panel);
}

export function pruneModels(panel, cutoff) {
  for (const lane of panel.models.values()) {
    for (const [key, row] of lane) {
      if (key + (Number(row[2]) || 0) < cutoff) lane.delete(key);
    }
  }
  noteModels(panel);
}

function noteModels(panel) {
  const seen = {};
  for (const [model, lane] of panel.models) {
    let missed = 0;
    for (const row of lane.values()) if (row[6]) missed += 1;
    seen[model] = { windows: lane.size, missed };
  }
  hooks.models[panel.id] = seen;
}

// ---- drawing ------------------------------------------------------------------------
let selfHatch = null;
function hatchPattern(ctx) {
  if (selfHatch) return selfHatch;
  const tile = document.createElement("canvas");
  tile.width = 8;
  tile.height = 8;
  const t = tile.getContext("2d");
  t.strokeStyle = "rgba(255,255,255,0.13)";
  t.lineWidth = 1;
  t.beginPath();
  t.moveTo(0, 8);
  t.lineTo(8, 0);
  t.moveTo(-2, 2);
  t.lineTo(2, -2);
  t.moveTo(6, 10);
  t.lineTo(10, 6);
  t.stroke();
  selfHatch = ctx.createPattern(tile, "repeat");
  return selfHatch;
}

export function drawTimeline(panel, now) {
  const canvas = panel.timeline;
  const w = canvas._w;
  const h = canvas._h;
  const drawn = panel.drawnIds;
  drawn.length = 0;
  if (!w || !h) return;
  const ctx = beginCanvas(canvas);
  const t0 = now - dash.windowUs;
  const scaleX = w / dash.windowUs;
  const lanes = panel.lanes;
  const nLanes = lanes.length;
  const consensusY = Math.max(nLanes, 1) * LANE_H + 2;
  const modelsY = consensusY + LANE_H;
  const axisY = modelsY + panel.models.size * LANE_H + 1;

  // lane backgrounds
  for (let i = 0; i < nLanes; i += 1) {
    const lane = lanes[i];
    lane.y = i * LANE_H;
    ctx.fillStyle = i % 2 ? COLOURS.laneAlt : COLOURS.lane;
    ctx.fillRect(0, lane.y, w, LANE_H);
    if (lane.self) {
      ctx.fillStyle = hatchPattern(ctx);
      ctx.fillRect(0, lane.y, w, LANE_H);
      ctx.strokeStyle = "rgba(245,183,0,0.55)";
      ctx.lineWidth = 1;
      ctx.strokeRect(0.5, lane.y + 0.5, w - 1, LANE_H - 1);
    }
  }
  ctx.fillStyle = "rgba(255,255,255,0.05)";
  ctx.fillRect(0, consensusY, w, LANE_H);
  for (let j = 0; j < panel.models.size; j += 1) {
    ctx.fillStyle = j % 2 ? COLOURS.lane : COLOURS.laneAlt;
    ctx.fillRect(0, modelsY + j * LANE_H, w, LANE_H);
  }
  drawTimeGrid(ctx, w, axisY, now, t0, scaleX);
  drawTakes(ctx, axisY, now, t0, scaleX);

  // consensus windows (agreement.js keeps them): colour of the label, alpha by agreement
  for (const row of panel.consensus.values()) {
    const label = row[3];
    if (!label) continue;
    const start = Number(row[1]);
    const end = start + (Number(row[2]) || 0);
    if (end < t0 || start > now) continue;
    const agreement = row[4];
    ctx.globalAlpha = typeof agreement === "number" ? 0.15 + 0.85 * Math.max(0, Math.min(1, agreement)) : 0.5;
    ctx.fillStyle = colourOf(label);
    const x0 = Math.round(Math.max(0, (start - t0) * scaleX));
    const x1 = Math.round(Math.min(w, (end - t0) * scaleX));
    ctx.fillRect(x0, consensusY + 1, Math.max(1, x1 - x0), LANE_H - 2);
  }
  ctx.globalAlpha = 1;

  // model lanes: the top label's colour, alpha by its probability; red beneath a miss
  const modelsDrawn = panel.hook.modelWindowsDrawn;
  let j = 0;
  for (const [model, lane] of panel.models) {
    const y = modelsY + j * LANE_H;
    let drawnHere = 0;
    for (const row of lane.values()) {
      const start = Number(row[1]);
      const end = start + (Number(row[2]) || 0);
      if (end < t0 || start > now) continue;
      const p = row[5];
      const x0 = Math.round(Math.max(0, (start - t0) * scaleX));
      const x1 = Math.round(Math.min(w, (end - t0) * scaleX));
      ctx.globalAlpha = typeof p === "number" ? 0.35 + 0.65 * Math.max(0, Math.min(1, p)) : 0.6;
      ctx.fillStyle = colourOf(row[4]);
      ctx.fillRect(x0, y + 1, Math.max(1, x1 - x0), LANE_H - 5);
      if (row[6]) {
        ctx.globalAlpha = 1;
        ctx.fillStyle = COLOURS.missed;
        ctx.fillRect(x0, y + LANE_H - 3, Math.max(1, x1 - x0), 2);
      }
      drawnHere += 1;
    }
    modelsDrawn[model] = drawnHere;
    j += 1;
  }
  ctx.globalAlpha = 1;

  // rater tags
  for (const item of panel.items.values()) {
    // An open hold is drawn up to now: it still grows, at most to where it ends.
    const end = item.open ? Math.min(now, item.end) : item.end;
    if (end < t0 || item.start > now) continue;
    const lane = item.lane;
    if (lane.y === undefined) continue;
    const x0 = Math.max(0, (item.start - t0) * scaleX);
    const x1 = Math.min(w, (end - t0) * scaleX);
    const bw = Math.max(2, x1 - x0);
    const bh = item.strong ? LANE_H - 2 : Math.round(LANE_H * 0.55);
    const y = lane.y + (LANE_H - bh) / 2;
    ctx.globalAlpha = item.strong ? 1 : 0.7;
    ctx.fillStyle = item.colour;
    ctx.fillRect(x0, y, bw, bh);
    if (item.strong) {
      ctx.globalAlpha = 0.9;
      ctx.strokeStyle = "#ffffff";
      ctx.lineWidth = 1;
      ctx.strokeRect(x0 + 0.5, y + 0.5, bw - 1, bh - 1);
    }
    if (item.open && now < item.end) {
      // open hold: bright leading edge at now
      ctx.globalAlpha = 1;
      ctx.fillStyle = "#ffffff";
      ctx.fillRect(x1 - 2, y, 2, bh);
    }
    drawn.push(item.id);
    if (item.offsetId) drawn.push(item.offsetId);
  }
  ctx.globalAlpha = 1;

  // the moment the gap panel points at, while it is in view
  const mark = panel.highlight;
  if (mark && performance.now() < mark.untilPerf && mark.end >= t0 && mark.start <= now) {
    const x0 = Math.max(0, (mark.start - t0) * scaleX);
    const x1 = Math.min(w, (mark.end - t0) * scaleX);
    ctx.strokeStyle = COLOURS.highlight;
    ctx.lineWidth = 1.5;
    ctx.strokeRect(x0 - 1, 0.75, Math.max(2, x1 - x0) + 2, axisY - 1.5);
  }

  // now line, lane labels, time axis
  ctx.fillStyle = COLOURS.now;
  ctx.fillRect(w - 1, 0, 1, axisY);
  ctx.font = "10px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  for (let i = 0; i < nLanes; i += 1) {
    const lane = lanes[i];
    const text = lane.label;
    const tw = ctx.measureText(text).width;
    ctx.fillStyle = "rgba(15,17,21,0.75)";
    ctx.fillRect(0, lane.y + 1, tw + 8, LANE_H - 2);
    ctx.fillStyle = lane.self ? "#f5b700" : COLOURS.laneText;
    ctx.fillText(text, 4, lane.y + LANE_H / 2);
  }
  if (nLanes === 0) {
    ctx.fillStyle = COLOURS.gridLabel;
    ctx.fillText("no tags in the last minute", 4, LANE_H / 2 - 1);
  }
  {
    const tw = 62;
    ctx.fillStyle = "rgba(15,17,21,0.75)";
    ctx.fillRect(0, consensusY + 1, tw, LANE_H - 2);
    ctx.fillStyle = COLOURS.laneText;
    ctx.fillText("consensus", 4, consensusY + LANE_H / 2);
  }
  j = 0;
  for (const model of panel.models.keys()) {
    const y = modelsY + j * LANE_H;
    const text = `model ${model}`;
    const tw = ctx.measureText(text).width;
    ctx.fillStyle = "rgba(15,17,21,0.75)";
    ctx.fillRect(0, y + 1, tw + 8, LANE_H - 2);
    ctx.fillStyle = COLOURS.laneText;
    ctx.fillText(text, 4, y + LANE_H / 2);
    j += 1;
  }
  ctx.fillStyle = COLOURS.gridLabel;
  ctx.font = "9px system-ui, sans-serif";
  ctx.textBaseline = "top";
  const secs = dash.windowUs / 1e6;
  for (let s = 0; s <= secs; s += 5) {
    const x = w - (s / secs) * w;
    const text = s === 0 ? "now" : `-${s}s`;
    const tw = ctx.measureText(text).width;
    ctx.fillText(text, Math.min(w - tw, Math.max(0, x - tw / 2)), axisY + 2);
  }
}
