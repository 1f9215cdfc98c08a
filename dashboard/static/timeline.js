// The tag timeline of each performer tile, the four lanes of the ledger from top to
// bottom: what was intended (the cue in force or the scenario arc's step, ledger.js; a
// text cue as a mark with its line; on the director's page only: an observer is never
// told what was intended), what the performer self-tagged (their own tags, hatched),
// then their scene partners' tags on them ("partner: bob", hatched too: a performer's
// tags never count as perceived), what the observers perceived (one lane per observer or
// director, each point tag or hold drawn over what the server says it covers, in its
// label's colour, then the observers' perception per window: solid where they agreed,
// faded and hatched where they disputed), and what was measured: one lane per model
// rater, its top label per window, marked underneath where the server says the humans
// agreed and the model read otherwise.
// Separate because tags are events the server decides, not a stream: a later message
// about the same tag (or window) replaces or removes it, and the page never works out
// coverage, perception or a miss itself.

import { drawTakes, drawTimeGrid } from "./lanes.js";
import { intentRuns } from "./ledger.js";
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
const TEXT_MARK_W = 150; // the most of a text cue's line drawn on the intent lane
// The intent lane is drawn on the director's page only (showIntentLane).
let intentShown = false;

export function setVocabulary(entries) {
  setLabelColours(entries);
  for (const panel of dash.panels.values()) {
    for (const item of panel.items.values()) item.colour = colourOf(item.label);
  }
}

const colourOf = labelColour;

// The director's page draws the intent lane; an observer's has none (and no intent).
export function showIntentLane(shown) {
  intentShown = !!shown;
  for (const panel of dash.panels.values()) setLaneHeight(panel);
}

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
    lanes: [], // the raters' lanes: {key, label, self: false, partner, role}
    selfLane: { key: "\u0000self", label: "self", self: true, partner: false, role: "performer", y: LANE_H },
    laneCount: "", // "intent/partner lanes/observer lanes/model lanes" the canvas was sized for
    models: new Map(), // model -> Map(window ts_us -> row), the rows as the server sent them
    highlight: null, // {start, end, untilPerf}: a moment the gap panel (gap.js) points at
    newestTagTs: null, // for the tags lane's age (lanes.js)
  };
}

function laneFor(panel, tag) {
  if (tag.rater_role === "performer" && tag.rater_id === panel.id) return panel.selfLane;
  const key = String(tag.rater_id);
  for (let i = 0; i < panel.lanes.length; i += 1) if (panel.lanes[i].key === key) return panel.lanes[i];
  // Another performer of the scene tagging this one: drawn, never counted as perceived
  // (streams.labels.ledger: only observers and the director are), and named so.
  const partner = tag.rater_role === "performer";
  const lane = { key, label: partner ? `partner: ${key}` : key, self: false, partner, role: tag.rater_role };
  panel.lanes.push(lane);
  setLaneHeight(panel);
  return lane;
}

export function setLaneHeight(panel) {
  const partners = panel.lanes.filter((lane) => lane.partner).length;
  const observers = panel.lanes.length - partners;
  const n = `${intentShown}/${partners}/${observers}/${panel.models.size}`;
  if (n === panel.laneCount) return;
  panel.laneCount = n;
  // (intent) + self + partners' lanes + observers' lanes + perceived + model lanes + axis
  const lanes = (intentShown ? 1 : 0) + 1 + partners + Math.max(observers, 1) + 1 + panel.models.size;
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
  // drop the raters' lanes nobody draws in any more (intent and self always stay)
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
  selfHatch = makeHatch(ctx, "rgba(255,255,255,0.13)");
  return selfHatch;
}

// Over a disputed window of the perceived lane: darker stripes across its colour.
let disputeHatch = null;
function disputePattern(ctx) {
  if (disputeHatch) return disputeHatch;
  disputeHatch = makeHatch(ctx, "rgba(15,17,21,0.75)", 2);
  return disputeHatch;
}

function makeHatch(ctx, stroke, width = 1) {
  const tile = document.createElement("canvas");
  tile.width = 8;
  tile.height = 8;
  const t = tile.getContext("2d");
  t.strokeStyle = stroke;
  t.lineWidth = width;
  t.beginPath();
  t.moveTo(0, 8);
  t.lineTo(8, 0);
  t.moveTo(-2, 2);
  t.lineTo(2, -2);
  t.moveTo(6, 10);
  t.lineTo(10, 6);
  t.stroke();
  return ctx.createPattern(tile, "repeat");
}

function laneName(ctx, text, y, colour) {
  const tw = ctx.measureText(text).width;
  ctx.fillStyle = "rgba(15,17,21,0.75)";
  ctx.fillRect(0, y + 1, tw + 8, LANE_H - 2);
  ctx.fillStyle = colour;
  ctx.fillText(text, 4, y + LANE_H / 2);
}

// The intent lane: each run of one intent in its emotion's colour (a cue's solid, the
// arc's fainter; strong taller), a text cue as a white mark at its start with its line.
function drawIntent(ctx, panel, w, now, t0, scaleX, counts) {
  const y = 0;
  for (const run of intentRuns(panel)) {
    if (run.end < t0 || run.start > now) continue;
    const x0 = Math.max(0, (run.start - t0) * scaleX);
    const x1 = Math.min(w, (run.end - t0) * scaleX);
    if (run.label) {
      const bh = run.strong ? LANE_H - 2 : Math.round(LANE_H * 0.6);
      ctx.globalAlpha = run.source === "cue" ? 0.95 : 0.45;
      ctx.fillStyle = colourOf(run.label);
      ctx.fillRect(x0, y + (LANE_H - bh) / 2, Math.max(1, x1 - x0), bh);
      counts.intent += 1;
    }
    if (run.kind === "text") {
      ctx.globalAlpha = 0.8;
      ctx.fillStyle = "#ffffff";
      ctx.fillRect(x0, y + LANE_H - 2, Math.max(1, x1 - x0), 1);
    }
  }
  ctx.globalAlpha = 1;
  // The marks after the runs, so a line is never painted over by the next run.
  ctx.font = "10px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  const marked = new Set(); // a cue's line once, however many runs it spans
  for (const run of intentRuns(panel)) {
    if (run.kind !== "text" || !run.text || run.end < t0 || run.start > now) continue;
    const at = run.since === null ? run.start : run.since;
    const key = `${at}/${run.text}`;
    if (marked.has(key)) continue;
    marked.add(key);
    // A cue that began before the lane's left edge keeps its line at that edge.
    const x = (Math.max(at, t0) - t0) * scaleX;
    ctx.fillStyle = "#ffffff";
    ctx.fillRect(x, y, 2, LANE_H);
    const text = run.text.length > 40 ? `${run.text.slice(0, 39)}…` : run.text;
    const tw = Math.min(TEXT_MARK_W, ctx.measureText(text).width);
    const tx = Math.min(x + 4, w - tw - 2);
    ctx.fillStyle = "rgba(15,17,21,0.8)";
    ctx.fillRect(tx - 2, y + 1, tw + 4, LANE_H - 2);
    ctx.fillStyle = "#ffffff";
    ctx.fillText(text, tx, y + LANE_H / 2, TEXT_MARK_W);
    counts.textMarks += 1;
  }
}

// The perceived lane: per window the label most observers held, solid where they
// agreed, faded and hatched where they disputed, half-faded where one observer alone
// tagged (neither).
function drawPerceived(ctx, panel, w, y, now, t0, scaleX, counts) {
  for (const item of panel.perceived.values()) {
    if (item.end < t0 || item.start > now) continue;
    const x0 = Math.round(Math.max(0, (item.start - t0) * scaleX));
    const x1 = Math.round(Math.min(w, (item.end - t0) * scaleX));
    const bw = Math.max(1, x1 - x0);
    ctx.globalAlpha = item.agreed ? 1 : item.disputed ? 0.4 : 0.6;
    ctx.fillStyle = colourOf(item.label);
    ctx.fillRect(x0, y + 1, bw, LANE_H - 2);
    if (item.disputed) {
      ctx.globalAlpha = 1;
      ctx.fillStyle = disputePattern(ctx);
      ctx.fillRect(x0, y + 1, bw, LANE_H - 2);
      counts.disputed += 1;
    } else if (item.agreed) counts.agreed += 1;
    counts.perceived += 1;
  }
  ctx.globalAlpha = 1;
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
  // The performer's side first (self, then partners), then the observers who count.
  const partners = panel.lanes.filter((lane) => lane.partner);
  const observers = panel.lanes.filter((lane) => !lane.partner);
  const lanes = [...partners, ...observers];
  const nLanes = lanes.length;
  const selfLane = panel.selfLane;
  selfLane.y = intentShown ? LANE_H : 0;
  const partnersY = selfLane.y + LANE_H;
  const observersY = partnersY + partners.length * LANE_H;
  const perceivedY = observersY + Math.max(observers.length, 1) * LANE_H + 2;
  const modelsY = perceivedY + LANE_H;
  const axisY = modelsY + panel.models.size * LANE_H + 1;
  const counts = { intent: 0, textMarks: 0, self: 0, partners: 0, observers: 0, perceived: 0, agreed: 0, disputed: 0, measured: 0 };

  // lane backgrounds
  if (intentShown) {
    ctx.fillStyle = "rgba(255,255,255,0.05)";
    ctx.fillRect(0, 0, w, LANE_H);
  }
  ctx.fillStyle = COLOURS.laneAlt;
  ctx.fillRect(0, selfLane.y, w, LANE_H);
  ctx.fillStyle = hatchPattern(ctx);
  ctx.fillRect(0, selfLane.y, w, LANE_H);
  ctx.strokeStyle = "rgba(245,183,0,0.55)";
  ctx.lineWidth = 1;
  ctx.strokeRect(0.5, selfLane.y + 0.5, w - 1, LANE_H - 1);
  for (let i = 0; i < partners.length; i += 1) {
    const lane = partners[i];
    lane.y = partnersY + i * LANE_H;
    ctx.fillStyle = COLOURS.lane;
    ctx.fillRect(0, lane.y, w, LANE_H);
    ctx.fillStyle = hatchPattern(ctx); // a performer's tags, like self: not perceived
    ctx.fillRect(0, lane.y, w, LANE_H);
  }
  for (let i = 0; i < observers.length; i += 1) {
    const lane = observers[i];
    lane.y = observersY + i * LANE_H;
    ctx.fillStyle = i % 2 ? COLOURS.laneAlt : COLOURS.lane;
    ctx.fillRect(0, lane.y, w, LANE_H);
  }
  ctx.fillStyle = "rgba(255,255,255,0.05)";
  ctx.fillRect(0, perceivedY, w, LANE_H);
  for (let j = 0; j < panel.models.size; j += 1) {
    ctx.fillStyle = j % 2 ? COLOURS.lane : COLOURS.laneAlt;
    ctx.fillRect(0, modelsY + j * LANE_H, w, LANE_H);
  }
  drawTimeGrid(ctx, w, axisY, now, t0, scaleX);
  drawTakes(ctx, axisY, now, t0, scaleX);

  if (intentShown) drawIntent(ctx, panel, w, now, t0, scaleX, counts);
  drawPerceived(ctx, panel, w, perceivedY, now, t0, scaleX, counts);

  // model lanes: the top label's colour, alpha by its probability; marked beneath a miss
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
    counts.measured += drawnHere;
    j += 1;
  }
  ctx.globalAlpha = 1;

  // the self-tags and the observers' tags
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
    if (lane.self) counts.self += 1;
    else if (lane.partner) counts.partners += 1;
    else counts.observers += 1;
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

  // now line, lane names, time axis
  ctx.fillStyle = COLOURS.now;
  ctx.fillRect(w - 1, 0, 1, axisY);
  ctx.font = "10px system-ui, sans-serif";
  ctx.textBaseline = "middle";
  if (intentShown) laneName(ctx, "intent", 0, COLOURS.laneText);
  laneName(ctx, "self", selfLane.y, "#f5b700");
  for (let i = 0; i < nLanes; i += 1) laneName(ctx, lanes[i].label, lanes[i].y, lanes[i].partner ? "#f5b700" : COLOURS.laneText);
  if (observers.length === 0) {
    ctx.fillStyle = COLOURS.gridLabel;
    ctx.fillText("no observer tags in the last minute", 4, observersY + LANE_H / 2 - 1);
  }
  laneName(ctx, "perceived", perceivedY, COLOURS.laneText);
  j = 0;
  for (const model of panel.models.keys()) {
    laneName(ctx, `model ${model}`, modelsY + j * LANE_H, COLOURS.laneText);
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
  panel.hook.lanes = counts;
}
