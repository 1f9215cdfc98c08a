// Reaction-lag calibration: a dialog shows a square after a random wait and the rater
// presses Space as soon as it appears, CALIBRATION_TRIALS times. The reaction times go to
// the tag service, which keeps their median as the rater's lag (taggers/protocol.py,
// reaction_lag_from_samples). A dialog of its own: while it is open it takes every key,
// and its timing (frames, timers) has nothing to do with tagging.

import { el } from "./view.js";

const CALIBRATION_TRIALS = 8;
// Too-early presses start a trial over: this many attempts in all, then it stops.
const CALIBRATION_MAX_ATTEMPTS = 24;
const CALIBRATION_MISS_MS = 3000;

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
  }

  start() {
    this.square = el("div", { class: "lt-cal-square", "aria-hidden": "true" });
    this.text = el("p", { class: "lt-cal-text", role: "status", "aria-live": "polite" });
    const cancel = el("button", { type: "button", class: "lt-btn", text: "Cancel", "aria-label": "cancel calibration" });
    this.overlay = el("div", { class: "livetag-cal", role: "dialog", "aria-modal": "true", "aria-label": "reaction lag calibration" }, [
      el("div", { class: "lt-cal-box" }, [this.text, this.square, cancel]),
    ]);
    cancel.addEventListener("click", () => this.end("calibration cancelled"));
    document.body.append(this.overlay);
    this.active = true;
    this._next();
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
    this.overlay.remove();
    this.onEnd(note);
  }
}
