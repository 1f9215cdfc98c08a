// Reaction-lag calibration, two ways, in a dialog of its own: while it is open it takes
// every key, and its timing (frames, timers) has nothing to do with tagging.
// - Squares: a square shows after a random wait and the rater presses Space as soon as it
//   appears, CALIBRATION_TRIALS times (~20 s): the rater's simple reaction time.
// - Expression clip: 60 s of a drawn face whose expression changes at known instants
//   (smiles, frowns, surprise, each growing over a quarter of a second as a real expression
//   does); the rater presses Space at each change. Slower than the squares and closer to
//   the task: noticing an expression, not a light.
// Either way the reaction times go to the tag service, which keeps their median as the
// rater's lag (taggers/protocol.py, reaction_lag_from_samples; method "calibration").

import { el } from "./view.js";

const CALIBRATION_TRIALS = 8;
// Too-early presses start a trial over: this many attempts in all, then it stops.
const CALIBRATION_MAX_ATTEMPTS = 24;
const CALIBRATION_MISS_MS = 3000;

// The expression clip: how long, when changes happen, how they unfold.
const CLIP_MS = 60_000;
const CLIP_FIRST_CHANGE_MS = 2500;
const CLIP_GAP_MS = [3200, 5200]; // between the starts of two changes, drawn at random
const CLIP_RISE_MS = 250;
const CLIP_HOLD_MS = 1200;
const CLIP_FALL_MS = 400;
// A press this long after a change's onset still answers it; later ones are false alarms.
const CLIP_ANSWER_MS = 1500;
const CLIP_EXPRESSIONS = [
  { smile: 1, brow: 0.2, open: 0.15 },
  { smile: -0.9, brow: -0.6, open: 0 },
  { smile: 0.1, brow: 1, open: 0.9 },
  { smile: 0.7, brow: 0.5, open: 0.6 },
];

// The change schedule of one clip run: onsets (ms from the clip's start) and targets.
export function clipSchedule(random = Math.random) {
  const changes = [];
  let at = CLIP_FIRST_CHANGE_MS;
  while (at + CLIP_RISE_MS + CLIP_HOLD_MS + CLIP_FALL_MS < CLIP_MS) {
    changes.push({ atMs: at, expression: CLIP_EXPRESSIONS[changes.length % CLIP_EXPRESSIONS.length] });
    at += CLIP_GAP_MS[0] + random() * (CLIP_GAP_MS[1] - CLIP_GAP_MS[0]);
  }
  return changes;
}

// How far into its change the face is at `elapsedMs` from the change's onset: 0..1.
export function changeWeight(elapsedMs) {
  if (elapsedMs < 0) return 0;
  if (elapsedMs < CLIP_RISE_MS) return Math.sin((elapsedMs / CLIP_RISE_MS) * (Math.PI / 2));
  if (elapsedMs < CLIP_RISE_MS + CLIP_HOLD_MS) return 1;
  const falling = elapsedMs - CLIP_RISE_MS - CLIP_HOLD_MS;
  return falling < CLIP_FALL_MS ? 1 - falling / CLIP_FALL_MS : 0;
}

export class ReactionCalibration {
  // onFinish(samplesUs): the trials are done; onEnd(note): the dialog closed (done or
  // cancelled), with a note for people.
  constructor(options) {
    this.onFinish = options.onFinish;
    this.onEnd = options.onEnd;
    this.active = false;
    this.samples = [];
    this.trials = 0;
    this.attempts = 0;
    this.shownAt = null; // the frame timeStamp the square was first on screen
    this.waitTimer = null;
    this.missTimer = null;
    this.seq = 0; // bumped per trial: callbacks of an earlier trial are void
    this.paused = false;
    this.kind = null; // "squares" or "clip" once chosen
    this.clip = null; // the running ExpressionClip
  }

  // kind: "squares" or "clip" starts that one; none lets the rater choose.
  start(kind) {
    this.square = el("div", { class: "lt-cal-square", "aria-hidden": "true" });
    this.text = el("p", { class: "lt-cal-text", role: "status", "aria-live": "polite" });
    const cancel = el("button", { type: "button", class: "lt-btn", text: "Cancel", "aria-label": "cancel calibration" });
    this.overlay = el("div", { class: "livetag-cal", role: "dialog", "aria-modal": "true", "aria-label": "reaction lag calibration" }, [
      el("div", { class: "lt-cal-box" }, [this.text, this.square, cancel]),
    ]);
    cancel.addEventListener("click", () => this.end("calibration cancelled"));
    document.body.append(this.overlay);
    this.active = true;
    if (kind === "squares" || kind === "clip") {
      this._begin(kind);
      return;
    }
    this.square.hidden = true;
    this.text.textContent = "Measure your reaction lag:";
    const squares = el("button", { type: "button", class: "lt-btn", text: "Squares (8 trials, ~20 s)" });
    const clip = el("button", { type: "button", class: "lt-btn", text: "Expression clip (60 s)" });
    this.chooser = el("div", { class: "lt-cal-choice" }, [squares, clip]);
    this.text.after(this.chooser);
    squares.addEventListener("click", () => this._begin("squares"));
    clip.addEventListener("click", () => this._begin("clip"));
    squares.focus();
  }

  _begin(kind) {
    if (!this.active || this.kind) return;
    this.kind = kind;
    if (this.chooser) this.chooser.remove();
    if (kind === "squares") {
      this.square.hidden = false;
      this._next();
      return;
    }
    this.square.remove();
    const canvas = el("canvas", { class: "lt-cal-face", width: "240", height: "240", "aria-hidden": "true" });
    this.text.after(canvas);
    this.clip = new ExpressionClip(canvas, this.text, (samples) => {
      this.clip = null;
      this.end("sending\u2026");
      this.onFinish(samples);
    });
    this.clip.start();
  }

  _next() {
    if (!this.active) return;
    if (this.trials >= CALIBRATION_TRIALS || this.attempts >= CALIBRATION_MAX_ATTEMPTS) {
      const samples = this.samples.slice();
      this.end("sending\u2026");
      this.onFinish(samples);
      return;
    }
    this.attempts += 1;
    this.seq += 1;
    const seq = this.seq;
    this.paused = false;
    this.shownAt = null;
    this.square.classList.remove("is-shown");
    this.text.textContent = `Trial ${this.trials + 1} of ${CALIBRATION_TRIALS}: press Space as soon as the square appears.`;
    const current = () => this.active && this.seq === seq;
    this.waitTimer = setTimeout(() => {
      this.waitTimer = null;
      requestAnimationFrame(() => {
        if (!current()) return;
        this.square.classList.add("is-shown"); // painted at the end of this frame...
        // ...so the next frame's start is when it was on screen.
        requestAnimationFrame((frameTs) => {
          if (!current()) return;
          this.shownAt = frameTs;
        });
        this.missTimer = setTimeout(() => {
          this.missTimer = null;
          if (!current()) return;
          this.samples.push(CALIBRATION_MISS_MS * 1000); // missed: the server drops it
          this.trials += 1;
          this._next();
        }, CALIBRATION_MISS_MS);
      });
    }, 1000 + Math.random() * 2000);
  }

  // Every keydown while the dialog is open.
  onKey(event) {
    if (event.key === "Escape") {
      event.preventDefault();
      this.end("calibration cancelled");
      return;
    }
    if (event.key !== " " && event.code !== "Space") return;
    event.preventDefault();
    if (event.repeat) return;
    if (this.clip) {
      this.clip.press(event.timeStamp);
      return;
    }
    if (this.kind !== "squares") return;
    if (this.paused) return;
    if (this.shownAt === null) {
      // Anticipation: pressed before the square showed. Sent as a 0 µs reaction, which
      // the server drops (< 100 ms); the trial starts over.
      if (this.waitTimer) clearTimeout(this.waitTimer);
      this.waitTimer = null;
      this.seq += 1; // a frame callback still pending for this trial is void
      this.paused = true;
      this.samples.push(0);
      this.text.textContent = "Too early: wait for the square.";
      setTimeout(() => {
        if (this.active) this._next();
      }, 600);
      return;
    }
    if (this.missTimer) clearTimeout(this.missTimer);
    this.missTimer = null;
    this.seq += 1;
    this.samples.push(Math.max(0, Math.round((event.timeStamp - this.shownAt) * 1000)));
    this.trials += 1;
    this.shownAt = null;
    this.square.classList.remove("is-shown");
    this._next();
  }

  end(note) {
    if (!this.active) return;
    this.active = false;
    if (this.waitTimer) clearTimeout(this.waitTimer);
    if (this.missTimer) clearTimeout(this.missTimer);
    if (this.clip) this.clip.stop();
    this.clip = null;
    this.overlay.remove();
    this.onEnd(note);
  }
}

// The 60 s expression clip: draws the face every frame, notes when each change was first
// on screen, and matches the rater's presses to changes.
class ExpressionClip {
  constructor(canvas, text, onDone) {
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.text = text;
    this.onDone = onDone;
    this.changes = clipSchedule().map((change) => ({ ...change, shownAt: null, drawnAt: null, reactionUs: null }));
    this.startedAt = null;
    this.falseAlarms = 0;
    this.frame = null;
    this.stopped = false;
  }

  start() {
    this.frame = requestAnimationFrame((ts) => this._draw(ts));
  }

  stop() {
    this.stopped = true;
    if (this.frame !== null) cancelAnimationFrame(this.frame);
    this.frame = null;
  }

  press(timeStamp) {
    // The latest change on screen before the press, if the press can still answer it.
    let answered = null;
    for (const change of this.changes) {
      if (change.shownAt !== null && change.shownAt <= timeStamp) answered = change;
    }
    if (answered && answered.reactionUs === null && timeStamp - answered.shownAt <= CLIP_ANSWER_MS) {
      answered.reactionUs = Math.round((timeStamp - answered.shownAt) * 1000);
    } else {
      this.falseAlarms += 1;
    }
  }

  _draw(frameTs) {
    this.frame = null;
    if (this.stopped) return;
    if (this.startedAt === null) this.startedAt = frameTs;
    const clipMs = frameTs - this.startedAt;
    let face = { smile: 0, brow: 0, open: 0 };
    for (const change of this.changes) {
      // Painted at the end of the frame it was first drawn in: on screen from the next.
      if (change.drawnAt !== null && change.shownAt === null && frameTs > change.drawnAt) {
        change.shownAt = frameTs;
        // For whoever watches the dialog (the end-to-end test plays a rater with it).
        this.canvas.dispatchEvent(new CustomEvent("livetag-change-shown", { bubbles: true }));
      }
      const weight = changeWeight(clipMs - change.atMs);
      if (weight > 0) {
        if (change.drawnAt === null) change.drawnAt = frameTs;
        face = {
          smile: weight * change.expression.smile,
          brow: weight * change.expression.brow,
          open: weight * change.expression.open,
        };
      }
    }
    this._paint(face);
    const left = Math.max(0, Math.ceil((CLIP_MS - clipMs) / 1000));
    this.text.textContent = `Press Space each time the face changes expression. ${left} s left.`;
    if (clipMs >= CLIP_MS) {
      this.stopped = true;
      // A change never answered counts as missed: sent as too slow, the server drops it.
      this.onDone(this.changes.map((change) => (change.reactionUs === null ? CALIBRATION_MISS_MS * 1000 : change.reactionUs)));
      return;
    }
    this.frame = requestAnimationFrame((ts) => this._draw(ts));
  }

  _paint({ smile, brow, open }) {
    const g = this.context;
    const { width, height } = this.canvas;
    const cx = width / 2;
    const cy = height / 2;
    g.clearRect(0, 0, width, height);
    g.fillStyle = "#e9c39b";
    g.beginPath();
    g.arc(cx, cy, 100, 0, 2 * Math.PI);
    g.fill();
    g.strokeStyle = "#3a2a1e";
    g.fillStyle = "#3a2a1e";
    g.lineWidth = 5;
    g.lineCap = "round";
    for (const side of [-1, 1]) {
      g.beginPath();
      g.arc(cx + side * 36, cy - 20, 8 + 3 * Math.max(0, brow), 0, 2 * Math.PI);
      g.fill();
      const browY = cy - 48 - 14 * brow;
      g.beginPath();
      g.moveTo(cx + side * 20, browY + (brow < 0 ? 8 * -brow : 0));
      g.lineTo(cx + side * 52, browY);
      g.stroke();
    }
    // The mouth: corners up for a smile, down for a frown; open for surprise.
    const cornerY = cy + 45 - 18 * smile;
    g.beginPath();
    g.moveTo(cx - 40, cornerY);
    g.quadraticCurveTo(cx, cy + 45 + 26 * smile + 30 * open, cx + 40, cornerY);
    if (open > 0.05) {
      g.quadraticCurveTo(cx, cy + 45 - 10 * open, cx - 40, cornerY);
      g.fill();
    }
    g.stroke();
  }
}
