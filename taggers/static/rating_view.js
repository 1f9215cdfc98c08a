// The continuous rating's DOM: the mode buttons (off, valence/arousal pad, intensity
// slider with its label), the pad, the slider and what is being sent. Like view.js it is
// handed what to show (showModes, render) and calls back what the rater did (`actions`):
// setMode(mode or null, label), place(fx, fy) with the pointer's place as fractions of
// the pad's or slider's width and height. Pointer events cover mouse, pen and touch; the
// pad and slider take no scrolling gestures (touch-action: none, tagger.css).

import { el } from "./view.js";

const STATE_TEXT = {
  off: "",
  waiting: "move the point to start (nothing is sent before)",
  paused: "paused: the page is hidden",
  sampling: "\u25cf sampling",
};
const KEYS_TEXT = {
  valence_arousal: "\u2190 \u2192 valence, \u2191 \u2193 arousal (Shift: bigger steps), Home: centre; gamepad: left stick",
  intensity: "\u2191 \u2192 more, \u2193 \u2190 less (Shift: bigger steps), Home: none; gamepad: left stick",
};

const batches = (n) => `${n} ${n === 1 ? "batch" : "batches"}`;
const signed = (value) => `${value >= 0 ? "+" : "\u2212"}${Math.abs(value).toFixed(2)}`;

export class RatingView {
  // mount: the widget's root; `before`: the element the panel goes before.
  constructor(mount, before, actions) {
    this.actions = actions;
    const off = this._modeButton("off", "Hotkeys only", "continuous rating off");
    const pad = this._modeButton("valence_arousal", "Valence/arousal pad", "rate valence and arousal continuously");
    const slider = this._modeButton("intensity", "Intensity", "rate the intensity of one emotion continuously");
    const label = el("select", { class: "lt-rating-label", "aria-label": "the emotion the intensity slider rates" });
    const state = el("span", { class: "lt-rating-state", role: "status", "aria-live": "polite" });
    const count = el("span", { class: "lt-rating-count" });
    const point = el("div", { class: "lt-pad-point", "aria-hidden": "true" });
    const readout = el("span", { class: "lt-rating-readout", "aria-live": "off" });
    const padArea = el(
      "div",
      { class: "lt-pad", role: "application", "aria-label": "valence/arousal pad: drag the point, or use the arrow keys" },
      [
        el("span", { class: "lt-pad-axis is-top", text: "aroused" }),
        el("span", { class: "lt-pad-axis is-bottom", text: "calm" }),
        el("span", { class: "lt-pad-axis is-left", text: "unpleasant" }),
        el("span", { class: "lt-pad-axis is-right", text: "pleasant" }),
        point,
      ],
    );
    const fill = el("div", { class: "lt-slider-fill", "aria-hidden": "true" });
    const sliderArea = el(
      "div",
      { class: "lt-slider", role: "slider", "aria-label": "intensity", "aria-valuemin": "0", "aria-valuemax": "1", "aria-valuenow": "0" },
      [fill],
    );
    const keys = el("div", { class: "lt-rating-keys" });
    const root = el("div", { class: "lt-rating", role: "group", "aria-label": "continuous rating", hidden: "" }, [
      el("div", { class: "lt-rating-bar" }, [el("span", { class: "lt-rating-title", text: "Continuous" }), off, pad, slider, label, state, count]),
      el("div", { class: "lt-rating-area" }, [padArea, sliderArea, readout]),
      keys,
    ]);
    mount.insertBefore(root, before);
    label.addEventListener("change", () => {
      label.blur(); // the arrows go back to the rating, not to this list
      actions.setMode("intensity", label.value);
    });
    this._drag(padArea);
    this._drag(sliderArea);
    this.dom = { root, buttons: { off, valence_arousal: pad, intensity: slider }, label, state, count, point, readout, padArea, sliderArea, fill, keys };
  }

  _modeButton(mode, text, title) {
    const button = el("button", { type: "button", class: "lt-btn lt-rating-mode", text, title, "aria-pressed": "false", dataset: { mode } });
    button.addEventListener("click", () => {
      button.blur(); // keys stay with the hotkeys and the arrows
      this.actions.setMode(mode === "off" ? null : mode, this.dom.label.value);
    });
    return button;
  }

  // Pointer down places the point and captures the pointer: the drag goes on outside the
  // area (clamped to its edge) until the pointer is up.
  _drag(area) {
    const place = (event) => {
      const box = area.getBoundingClientRect();
      if (box.width <= 0 || box.height <= 0) return;
      this.actions.place((event.clientX - box.left) / box.width, (event.clientY - box.top) / box.height);
    };
    area.addEventListener("pointerdown", (event) => {
      if (event.button !== 0) return;
      event.preventDefault();
      area.setPointerCapture(event.pointerId);
      place(event);
    });
    area.addEventListener("pointermove", (event) => {
      if (area.hasPointerCapture(event.pointerId)) place(event);
    });
    const release = (event) => {
      if (area.hasPointerCapture(event.pointerId)) area.releasePointerCapture(event.pointerId);
    };
    area.addEventListener("pointerup", release);
    area.addEventListener("pointercancel", release);
  }

  // Which modes this rater has (none: the panel stays hidden) and the labels an intensity
  // can rate.
  showModes(available, vocabulary) {
    const dom = this.dom;
    dom.root.hidden = !available;
    const chosen = dom.label.value;
    dom.label.replaceChildren(...vocabulary.map((entry) => el("option", { value: entry.label, text: entry.label })));
    if (vocabulary.some((entry) => entry.label === chosen)) dom.label.value = chosen;
  }

  // mode: null or the mode; label; values: the current point; state: off, waiting,
  // paused or sampling; rateHz; unacked: batches not yet acknowledged; acked: samples
  // acknowledged; dropped: batches dropped unsent; failed: batches refused.
  render({ mode, label, values, state, rateHz, unacked, acked, dropped, failed }) {
    const dom = this.dom;
    for (const [name, button] of Object.entries(dom.buttons)) {
      const on = (mode || "off") === name;
      button.classList.toggle("is-selected", on);
      button.setAttribute("aria-pressed", String(on));
    }
    if (label && dom.label.value !== label) dom.label.value = label;
    dom.label.hidden = mode !== "intensity";
    dom.padArea.hidden = mode !== "valence_arousal";
    dom.sliderArea.hidden = mode !== "intensity";
    dom.root.dataset.state = state;
    dom.root.classList.toggle("is-active", Boolean(mode));
    dom.state.textContent = state === "sampling" ? `${STATE_TEXT.sampling} ${rateHz} Hz` : STATE_TEXT[state] || "";
    const problems = [];
    if (dropped) problems.push(`${batches(dropped)} dropped (offline too long)`);
    if (failed) problems.push(`${batches(failed)} refused`);
    const counts = `${acked} samples acked, ${batches(unacked)} unacked`;
    dom.count.textContent = mode || acked || unacked ? `${counts}${problems.length ? `; ${problems.join(", ")}` : ""}` : "";
    dom.count.classList.toggle("has-pending", unacked > 1 || problems.length > 0);
    dom.keys.textContent = mode ? KEYS_TEXT[mode] : "";
    if (mode === "valence_arousal") {
      dom.point.style.left = `${((values.valence + 1) / 2) * 100}%`;
      dom.point.style.top = `${((1 - values.arousal) / 2) * 100}%`;
      dom.point.classList.toggle("is-untouched", state === "waiting");
      dom.readout.textContent = `valence ${signed(values.valence)} \u00b7 arousal ${signed(values.arousal)}`;
    } else if (mode === "intensity") {
      dom.fill.style.width = `${values.intensity * 100}%`;
      dom.fill.classList.toggle("is-untouched", state === "waiting");
      dom.sliderArea.setAttribute("aria-valuenow", values.intensity.toFixed(2));
      dom.sliderArea.setAttribute("aria-label", `intensity of ${label}`);
      dom.readout.textContent = `${label} ${values.intensity.toFixed(2)}`;
    } else {
      dom.readout.textContent = "";
    }
  }
}
