// Continuous rating: a rater moves a point on a valence/arousal pad, or one label's
// intensity on a slider, and the widget samples it at a fixed rate (the welcome's rate_hz,
// 20 Hz by default) into batches for the tag service (protocol.js `ratings`). The rules
// live here with no DOM and no socket: what a key, a pointer position or a gamepad stick
// does to the point, when a sample is taken, when a batch closes. The caller (tagger.js)
// gives the clock, the frame on screen, the gamepads and whether the page can be rated now.
//
//  - The value holds while the rater does not move it: a trace is a step function,
//    sampled at the rate, as in the continuous-annotation tools (DARMA, CARMA, PAGAN,
//    RankTrace).
//  - Nothing is sampled before the rater first moves the point in a mode, for a target:
//    a trace never starts with a flat line at the default position nobody chose. Choosing
//    another mode, label or performer starts a new trace, untouched again.
//  - Nothing is sampled while paused (the page hidden, the calibration dialog open): the
//    rater is not watching then. The held value goes on once the page is back.

export const RATING_MODES = {
  valence_arousal: ["valence", "arousal"],
  intensity: ["intensity"],
};
const RANGES = { valence: [-1, 1], arousal: [-1, 1], intensity: [0, 1] };
const NEUTRAL = { valence: 0, arousal: 0, intensity: 0 };

// A key press moves the point by 0.05 (Shift: 0.2): forty steps across the pad, twenty
// along the slider.
export const KEY_STEP = 0.05;
export const KEY_STEP_COARSE = 0.2;
// Keys a continuous rating takes (never a label's hotkey: taggers/vocabulary.py).
const RATING_KEYS = new Set(["ArrowUp", "ArrowDown", "ArrowLeft", "ArrowRight", "Home"]);

// A gamepad stick moves the point (it does not place it: a stick springs back to the
// centre when let go, and the rating must hold). Beyond the dead zone, full deflection
// crosses the whole range in 1/STICK_RANGE_PER_S seconds.
export const STICK_DEADZONE = 0.15;
export const STICK_RANGE_PER_S = 0.75;

// Sample values are sent with 3 decimals: finer than any hand, shorter messages.
const round3 = (value) => Math.round(value * 1000) / 1000;

function clamp(name, value) {
  const [low, high] = RANGES[name];
  return Math.min(high, Math.max(low, value));
}

function span(name) {
  const [low, high] = RANGES[name];
  return high - low;
}

// What a keydown does to a continuous rating: null (not a rating key), or
// {kind: "nudge", deltas} (dimension -> change) or {kind: "centre"}. Arrows: left/right
// move valence, up/down arousal; on the intensity slider up and right raise it. Home puts
// the point back to neutral (the pad's centre, no intensity).
export function readRatingKey(event, mode) {
  if (!mode || !RATING_KEYS.has(event.key)) return null;
  if (event.ctrlKey || event.altKey || event.metaKey) return null;
  if (event.key === "Home") return { kind: "centre" };
  const step = event.shiftKey ? KEY_STEP_COARSE : KEY_STEP;
  const up = event.key === "ArrowUp";
  const down = event.key === "ArrowDown";
  const right = event.key === "ArrowRight";
  if (mode === "intensity") {
    return { kind: "nudge", deltas: { intensity: (up || right ? 1 : -1) * step } };
  }
  if (up || down) return { kind: "nudge", deltas: { arousal: (up ? 1 : -1) * step } };
  return { kind: "nudge", deltas: { valence: (right ? 1 : -1) * step } };
}

// The first connected gamepad's left stick, {x, y} (y down, as the Gamepad API gives
// it) with the dead zone taken out, or null when there is no gamepad.
export function readStick(pads) {
  for (const pad of pads || []) {
    if (!pad || pad.connected === false || !pad.axes || pad.axes.length < 2) continue;
    const x = Number(pad.axes[0]) || 0;
    const y = Number(pad.axes[1]) || 0;
    const length = Math.hypot(x, y);
    if (length <= STICK_DEADZONE) return { x: 0, y: 0 };
    // Radial dead zone: the stick's direction is kept, its reach rescaled to start at 0.
    const scale = Math.min(1, (length - STICK_DEADZONE) / (1 - STICK_DEADZONE)) / length;
    return { x: x * scale, y: y * scale };
  }
  return null;
}

// How a stick moves the point over `seconds`: dimension -> change, or null if it rests.
// On the pad, right is pleasant and up is aroused; on the slider up (or right) is more.
export function stickDeltas(stick, mode, seconds) {
  if (!stick || (stick.x === 0 && stick.y === 0) || !(seconds > 0)) return null;
  const reach = STICK_RANGE_PER_S * seconds;
  if (mode === "intensity") {
    const push = Math.abs(stick.x) > Math.abs(stick.y) ? stick.x : -stick.y;
    return { intensity: push * reach * span("intensity") };
  }
  return { valence: stick.x * reach * span("valence"), arousal: -stick.y * reach * span("arousal") };
}

// The values of a point on the pad or the slider from its place in the element, as
// fractions of its width (fx, left to right) and height (fy, top to bottom).
export function pointValues(mode, fx, fy) {
  const x = Math.min(1, Math.max(0, fx));
  const y = Math.min(1, Math.max(0, fy));
  if (mode === "intensity") return { intensity: x };
  return { valence: 2 * x - 1, arousal: 1 - 2 * y };
}

// One trace: a rater's continuous rating of one performer in one mode, sampled at a
// fixed rate into batches. `options`: rateHz, batchMs, maxSamples (per batch), and the
// caller's hooks: now() -> {clientUs, unixMs} (the page clock), frameAt(performerId,
// unixMs) -> the RTP timestamp of the performer's frame on screen then, or null;
// pads() -> the gamepads (navigator.getGamepads()); paused() -> true while the rater cannot
// be watching; onBatch({mode, label, performerId, rateHz, samples}) as each batch closes;
// onChange() after the point or the state changed; schedule(fn, ms) / cancel(timer).
export class ContinuousRating {
  constructor(options) {
    this.options = options;
    this.rateHz = options.rateHz;
    this.batchMs = options.batchMs;
    // A batch closes after batchMs of samples (or maxSamples, or a pause): counted in
    // samples, so a timer's jitter never makes one a sample longer.
    this.batchSamples = Math.max(1, Math.min(options.maxSamples, Math.round((options.batchMs * options.rateHz) / 1000)));
    this.schedule = options.schedule || ((fn, ms) => setTimeout(fn, ms));
    this.cancel = options.cancel || ((timer) => clearTimeout(timer));
    this.mode = null; // null: off; "valence_arousal" or "intensity"
    this.label = null;
    this.performerId = null;
    this.values = { ...NEUTRAL };
    this.engaged = false;
    this.wasPaused = false;
    this.samples = []; // the open batch
    this.timer = null;
    this.nextDueMs = null;
    this.lastTickMs = null;
    this.samplesTaken = 0; // every sample, for tests and the view
    this.ticksSkipped = 0; // sampling slots missed (a throttled or busy page), counted
  }

  get active() {
    return this.mode !== null;
  }

  // Start (or switch to) a trace: mode, label (intensity only), performer. A change of any
  // of them closes the trace so far and starts an untouched one.
  start(mode, label, performerId) {
    if (!RATING_MODES[mode]) throw new Error(`unknown rating mode ${mode}`);
    const wanted = mode === "intensity" ? label : null;
    if (mode === this.mode && wanted === this.label && performerId === this.performerId) return;
    this._closeTrace();
    this.mode = mode;
    this.label = wanted;
    this.performerId = performerId;
    if (this.timer === null) this._scheduleTick();
    this._changed();
  }

  stop() {
    if (!this.active) return;
    this._closeTrace();
    this.mode = null;
    this.label = null;
    if (this.timer !== null) this.cancel(this.timer);
    this.timer = null;
    this.nextDueMs = null;
    this._changed();
  }

  setTarget(performerId) {
    if (this.active && performerId !== this.performerId) this.start(this.mode, this.label, performerId);
  }

  // The rater placed the point (pointer): the values given, the others kept.
  place(values) {
    if (!this.active) return;
    this._set(values);
  }

  // The rater moved the point by `deltas` (keys, a stick).
  nudge(deltas) {
    if (!this.active) return;
    const moved = {};
    for (const [name, delta] of Object.entries(deltas)) moved[name] = this.values[name] + delta;
    this._set(moved);
  }

  centre() {
    if (!this.active) return;
    const neutral = {};
    for (const name of RATING_MODES[this.mode]) neutral[name] = NEUTRAL[name];
    this._set(neutral);
  }

  // The current values of the trace's dimensions.
  current() {
    if (!this.active) return {};
    const out = {};
    for (const name of RATING_MODES[this.mode]) out[name] = this.values[name];
    return out;
  }

  _set(values) {
    for (const name of RATING_MODES[this.mode]) {
      if (name in values && Number.isFinite(values[name])) this.values[name] = clamp(name, values[name]);
    }
    this.engaged = true;
    this._changed();
  }

  _changed() {
    if (this.options.onChange) this.options.onChange();
  }

  // The neutral point and no samples: a new trace waits for the rater's first move.
  _closeTrace() {
    this._flush();
    this.engaged = false;
    this.values = { ...NEUTRAL };
  }

  _flush() {
    if (this.samples.length === 0) return;
    const samples = this.samples;
    this.samples = [];
    this.options.onBatch({
      mode: this.mode,
      label: this.label,
      performerId: this.performerId,
      rateHz: this.rateHz,
      samples,
    });
  }

  // Ticks on a fixed grid of 1/rate: a late timer does not shift the grid, and slots a
  // throttled page missed are skipped (and counted), not made up with a burst.
  _scheduleTick() {
    const periodMs = 1000 / this.rateHz;
    const nowMs = performance.now();
    if (this.nextDueMs === null) this.nextDueMs = nowMs + periodMs;
    this.timer = this.schedule(() => this._tick(), Math.max(0, this.nextDueMs - nowMs));
  }

  _tick() {
    this.timer = null;
    if (!this.active) return;
    const periodMs = 1000 / this.rateHz;
    const nowMs = performance.now();
    const late = Math.floor((nowMs - this.nextDueMs) / periodMs);
    if (late > 0) {
      this.ticksSkipped += late;
      this.nextDueMs += late * periodMs;
    }
    this.nextDueMs += periodMs;
    const seconds = this.lastTickMs === null ? 0 : (nowMs - this.lastTickMs) / 1000;
    this.lastTickMs = nowMs;
    this.sampleNow(seconds);
    if (this.active && this.timer === null) this._scheduleTick();
  }

  // One sampling slot: the gamepad is read, then (engaged, not paused) a sample taken.
  // `seconds`: time since the last slot, for the stick's motion. Public for tests.
  sampleNow(seconds) {
    const paused = Boolean(this.options.paused && this.options.paused());
    if (paused) {
      // Samples taken before the pause go out now rather than wait for the page's return.
      if (!this.wasPaused) this._flush();
      this.wasPaused = true;
      return;
    }
    if (this.wasPaused) {
      this.wasPaused = false;
      this._changed();
    }
    const stick = readStick(this.options.pads ? this.options.pads() : null);
    const deltas = stickDeltas(stick, this.mode, Math.min(seconds, 0.25));
    if (deltas) this.nudge(deltas);
    if (!this.engaged) return;
    const now = this.options.now();
    let rtp = null;
    if (this.options.frameAt) rtp = this.options.frameAt(this.performerId, now.unixMs);
    const sample = [now.clientUs];
    for (const name of RATING_MODES[this.mode]) sample.push(round3(this.values[name]));
    sample.push(Number.isInteger(rtp) ? rtp : null);
    this.samples.push(sample);
    this.samplesTaken += 1;
    if (this.samples.length >= this.batchSamples) this._flush();
  }

  // Whether samples are being taken now, for the view: "off", "waiting" (no move yet),
  // "paused" or "sampling".
  state() {
    if (!this.active) return "off";
    if (this.wasPaused) return "paused";
    return this.engaged ? "sampling" : "waiting";
  }
}
