// The continuous-ratings lane of each performer tile: every rater's traces over the last
// 30 s, one colour per rater, as rated (their reaction lag not taken off: the lag table
// says what it is; the timeline's tags are where the tag service put them, lag taken off,
// so the two are on different time bases and the lane says so). A trace is one rater's
// rating in one mode (and, for the slider, of one emotion): a rater who moves from the
// amusement slider to the anger slider starts a second trace, named in the legend. Its
// points are 50 ms means the server made of the rater's samples. One
// dimension at a time, chosen on the lane: valence or arousal (-1..1, from the 2-D pad)
// or intensity (0..1, the 1-D slider of one emotion). Hidden until a rating arrives.
// Separate from the timeline: a trace is a stream of values drawn as lines, not events.

import { drawTakes, drawTimeGrid } from "./lanes.js";
import { COLOURS, beginCanvas, dash, el, makeCanvas, raterColour } from "./shared.js";

const GAP_US = 300e3; // a trace breaks over gaps longer than this
const PAD = 3;
const DIMENSIONS = ["valence", "arousal", "intensity"];
const SHORT = { valence: "V", arousal: "A", intensity: "I" };
const TITLES = {
  valence: "valence, -1 (unpleasant) to 1 (pleasant), from the 2-D pad",
  arousal: "arousal, -1 (calm) to 1 (excited), from the 2-D pad",
  intensity: "intensity of the rated emotion, 0 to 1, from the 1-D slider",
};

// ---- a tile's lane ------------------------------------------------------------------
export function createRatingsChart(performerId, panelRef) {
  const ratingsWrap = el("div", "chart ratings-wrap");
  ratingsWrap.hidden = true;
  ratingsWrap.title =
    "continuous ratings, one colour per rater, as rated (reaction lag not taken off), last 30 s; " +
    "the tags on the timeline below are placed with each rater's calibrated lag taken off, so a trace runs later than the same rater's tags by their lag";
  const ratings = makeCanvas("ratings", `continuous ratings of ${performerId}`);
  // The time bases differ: say so on the lane, not only in its tooltip.
  const basis = el("p", "ratings-basis dim", "as rated, lag not taken off (tags below: lag taken off)");
  const picker = el("div", "rating-dims");
  const buttons = {};
  for (const dim of DIMENSIONS) {
    const button = el("button", "rating-dim", SHORT[dim]);
    button.type = "button";
    button.dataset.dim = dim;
    button.title = TITLES[dim];
    button.hidden = true;
    button.addEventListener("click", () => {
      const panel = panelRef();
      panel.ratingDim = dim;
      showDimension(panel);
    });
    picker.append(button);
    buttons[dim] = button;
  }
  ratingsWrap.append(ratings, picker, basis);
  return { ratingsWrap, ratings, ratingButtons: buttons };
}

export function newRatingsState() {
  return {
    // traceKey(rater_id, mode, label) -> {rater, mode, label, colour, role, points: [{t, valence, arousal, intensity}]}
    traces: new Map(),
    ratingDim: null, // the dimension drawn; null until the first rating chooses one
    ratingDims: new Set(), // the dimensions any trace has had
  };
}

// ---- ratings from the server --------------------------------------------------------
// One trace per rater, mode and rated emotion: the key names them (the test hooks count
// points by it), e.g. "r1/valence_arousal" or "r1/intensity/anger".
export function traceKey(rater, mode, label) {
  return mode === "valence_arousal" || !label ? `${rater}/${mode}` : `${rater}/${mode}/${label}`;
}

// Groups are {rater_id, rater_role, mode, label, points}: points [ts_us, valence, arousal]
// (mode valence_arousal) or [ts_us, intensity] (mode intensity), in time order.
export function addRatings(panel, groups) {
  if (!Array.isArray(groups)) return;
  for (const group of groups) {
    if (!group || typeof group.rater_id !== "string" || !Array.isArray(group.points)) continue;
    const pad = group.mode === "valence_arousal";
    const mode = pad ? "valence_arousal" : "intensity";
    const label = pad ? null : group.label || null;
    const key = traceKey(group.rater_id, mode, label);
    let trace = panel.traces.get(key);
    if (!trace) {
      trace = { rater: group.rater_id, mode, label, colour: raterColour(group.rater_id), role: group.rater_role, points: [] };
      panel.traces.set(key, trace);
    }
    for (const dim of pad ? ["valence", "arousal"] : ["intensity"]) panel.ratingDims.add(dim);
    for (const raw of group.points) {
      if (!Array.isArray(raw)) continue;
      const point = pad
        ? { t: Number(raw[0]), valence: raw[1], arousal: raw[2], intensity: null }
        : { t: Number(raw[0]), valence: null, arousal: null, intensity: raw[1] };
      if (Number.isFinite(point.t)) insertInOrder(trace.points, point);
    }
  }
  panel.ratingsWrap.hidden = false;
  if (panel.ratingDim === null) panel.ratingDim = panel.ratingDims.has("valence") ? "valence" : "intensity";
  showDimension(panel);
  noteRatings(panel);
}

// Points come in time order per rater; a batch the rater's page sent again later lands in
// its place instead of drawing the line back in time.
function insertInOrder(points, point) {
  let i = points.length;
  while (i > 0 && points[i - 1].t > point.t) i -= 1;
  if (i > 0 && points[i - 1].t === point.t) points[i - 1] = point;
  else points.splice(i, 0, point);
}

function showDimension(panel) {
  for (const [dim, button] of Object.entries(panel.ratingButtons)) {
    button.hidden = !panel.ratingDims.has(dim);
    button.dataset.on = dim === panel.ratingDim ? "1" : "0";
  }
  panel.hook.ratingDimension = panel.ratingDim;
}

export function pruneRatings(panel, cutoff) {
  for (const [key, trace] of panel.traces) {
    let n = 0;
    while (n < trace.points.length && trace.points[n].t < cutoff) n += 1;
    if (n) trace.points.splice(0, n);
    if (!trace.points.length) panel.traces.delete(key); // a slider long left: its legend goes too
  }
  noteRatings(panel);
}

function noteRatings(panel) {
  const counts = {};
  for (const [key, trace] of panel.traces) counts[key] = trace.points.length;
  panel.hook.ratings = counts;
}

// ---- drawing ------------------------------------------------------------------------
export function drawRatings(panel, now) {
  const canvas = panel.ratings;
  const w = canvas._w;
  const h = canvas._h;
  if (panel.ratingsWrap.hidden || !w || !h) return;
  const ctx = beginCanvas(canvas);
  const t0 = now - dash.windowUs;
  const scaleX = w / dash.windowUs;
  const dim = panel.ratingDim;
  const bipolar = dim !== "intensity";
  const span = h - 2 * PAD;
  // bipolar -1..1, intensity 0..1, to 0 (bottom) .. 1 (top)
  const level = bipolar ? (v) => (v + 1) / 2 : (v) => v;
  ctx.strokeStyle = COLOURS.grid;
  ctx.lineWidth = 1;
  ctx.beginPath();
  for (const value of bipolar ? [-1, 0, 1] : [0, 0.5, 1]) {
    const y = Math.round(PAD + span * (1 - level(value))) + 0.5;
    ctx.moveTo(0, y);
    ctx.lineTo(w, y);
  }
  ctx.stroke();
  drawTimeGrid(ctx, w, h, now, t0, scaleX);
  drawTakes(ctx, h, now, t0, scaleX);

  ctx.lineWidth = 1.4;
  ctx.lineJoin = "round";
  let legendX = 4;
  const legend = [];
  ctx.font = "9px system-ui, sans-serif";
  ctx.textBaseline = "top";
  for (const trace of panel.traces.values()) {
    ctx.strokeStyle = trace.colour;
    ctx.beginPath();
    let prevT = -Infinity;
    let penDown = false;
    let drawn = 0;
    for (const point of trace.points) {
      if (point.t < t0 - GAP_US) continue;
      const v = point[dim];
      if (typeof v !== "number") {
        penDown = false;
        continue;
      }
      const x = (point.t - t0) * scaleX;
      const y = PAD + span * (1 - level(v));
      if (!penDown || point.t - prevT > GAP_US) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
      penDown = true;
      prevT = point.t;
      drawn += 1;
    }
    ctx.stroke();
    if (drawn) {
      const text = trace.label ? `${trace.rater} (${trace.label})` : trace.rater;
      ctx.fillStyle = trace.colour;
      ctx.fillText(text, legendX, 2);
      legendX += ctx.measureText(text).width + 8;
      legend.push(text);
    }
  }
  panel.hook.ratingLegend = legend;
  // The legend is redrawn on the next frame after a dimension switch, not at the click.
  panel.hook.ratingLegendDimension = dim;
  ctx.fillStyle = COLOURS.gridLabel;
  ctx.textBaseline = "bottom";
  ctx.fillText(dim, 4, h - 1);
  panel.hook.ratingDraws += 1;
}
