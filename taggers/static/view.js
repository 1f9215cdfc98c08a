// The tagging widget's DOM: the status bar (connection, unacked count, reaction lag), the
// performer chips, one button per label, undo, and the recent tags. Apart from the widget's
// logic so that logic never touches the page: the view is handed what to show
// (showVocabulary, render) and calls back what people did (`actions`). Styles: tagger.css.

// The number of recent tags listed.
const FEEDBACK_ROWS = 12;
const ACTION_TEXT = { point: "tap", onset: "hold \u25b6", offset: "hold \u25a0", undo: "undo" };
const CONNECTION_TEXT = {
  live: "\u25cf connected",
  syncing: "\u25cf syncing clock",
  connecting: "\u25cf connecting",
  offline: "\u25cf reconnecting",
};

// An element with attributes (class, text, dataset, style with --custom properties, any
// other attribute) and children (null ones skipped).
export function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "style") {
      for (const [name, v] of Object.entries(value)) {
        if (name.startsWith("--")) node.style.setProperty(name, v);
        else node.style[name] = v;
      }
    } else node.setAttribute(key, value);
  }
  for (const child of children || []) if (child) node.append(child);
  return node;
}

// Keys typed into a text field are not hotkeys.
export function isTypingTarget(target) {
  if (!target || !(target instanceof Element)) return false;
  if (target.isContentEditable) return true;
  const tag = target.tagName;
  return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT";
}

function formatClock(tsUs) {
  const date = new Date(Math.floor(tsUs / 1000));
  const pad = (n, w) => String(n).padStart(w || 2, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
}

export class TaggerView {
  // mount: the element to fill (a new section at the end of the body if none).
  // actions: setLag(ms text), calibrate(), undo(timeStamp), tapLabel(entry, strong,
  // timeStamp), selectTarget(performerId).
  constructor(mount, actions) {
    this.actions = actions;
    let root = mount;
    if (!root) {
      root = el("section", { "aria-label": "tagging" });
      document.body.append(root);
    }
    root.classList.add("livetag-tagger");
    root.replaceChildren();
    const conn = el("span", { class: "lt-conn", role: "status", "aria-live": "polite" });
    const unacked = el("span", { class: "lt-unacked", title: "tags not yet acknowledged" });
    const lagValue = el("span", { class: "lt-lag-value" });
    const lagInput = el("input", { type: "number", min: "0", max: "1500", step: "10", class: "lt-lag-input", "aria-label": "reaction lag in milliseconds" });
    const lagSet = el("button", { type: "button", class: "lt-btn", text: "Set", "aria-label": "set reaction lag" });
    const calibrate = el("button", { type: "button", class: "lt-btn", text: "Calibrate", "aria-label": "calibrate reaction lag" });
    const lagNote = el("span", { class: "lt-lag-note", "aria-live": "polite" });
    const targets = el("div", { class: "lt-targets", role: "group", "aria-label": "performer to tag" });
    const labels = el("div", { class: "lt-labels", role: "group", "aria-label": "labels" });
    const undo = el("button", { type: "button", class: "lt-btn lt-undo", text: "Undo \u232b", "aria-label": "undo my last tag (Backspace)" });
    const status = el("div", { class: "lt-status", role: "alert" });
    const list = el("ol", { class: "lt-recent", "aria-label": "recent tags" });
    const bar = el("div", { class: "lt-bar" }, [
      conn,
      unacked,
      el("span", { class: "lt-lag" }, [el("span", { text: "lag " }), lagValue]),
      lagInput,
      lagSet,
      calibrate,
      lagNote,
    ]);
    root.append(bar, targets, el("div", { class: "lt-row" }, [labels, undo]), status, list);

    lagSet.addEventListener("click", () => {
      if (lagInput.value !== "") actions.setLag(lagInput.value);
    });
    lagInput.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && lagInput.value !== "") actions.setLag(lagInput.value);
    });
    calibrate.addEventListener("click", () => actions.calibrate());
    undo.addEventListener("click", (event) => actions.undo(event.timeStamp));
    this.dom = { root, conn, unacked, lagValue, lagInput, calibrate, lagNote, targets, labels, status, list, labelButtons: new Map(), chips: new Map() };
  }

  // The label buttons and the performer chips of the session (from the welcome).
  // selfName: the rater's own name when targetMode is "self".
  showVocabulary({ vocabulary, roster, targetMode, selfName }) {
    const dom = this.dom;
    dom.labels.replaceChildren();
    dom.labelButtons.clear();
    for (const entry of vocabulary) {
      const button = el(
        "button",
        {
          type: "button",
          class: "lt-label",
          "aria-label": `${entry.label} (key ${entry.hotkey})${entry.description ? `: ${entry.description}` : ""}`,
          "aria-pressed": "false",
          title: entry.description || entry.label,
          style: { "--lt-colour": entry.colour },
          dataset: { label: entry.label },
        },
        [el("span", { class: "lt-dot", "aria-hidden": "true" }), el("span", { class: "lt-name", text: entry.label }), el("kbd", { text: entry.hotkey })],
      );
      button.addEventListener("click", (event) => {
        // Keyboard focus stays on the hotkeys: a focused button would re-fire on Space.
        button.blur();
        this.actions.tapLabel(entry, event.shiftKey, event.timeStamp);
      });
      dom.labels.append(button);
      dom.labelButtons.set(entry.label, button);
    }
    dom.targets.replaceChildren();
    dom.chips.clear();
    if (targetMode === "self") {
      dom.targets.append(el("span", { class: "lt-self", text: `tagging yourself (${selfName})` }));
      return;
    }
    roster.forEach((performer, index) => {
      const hotkey = index < 9 ? String(index + 1) : "";
      const chip = el(
        "button",
        { type: "button", class: "lt-chip", "aria-label": `tag ${performer.display_name}${hotkey ? ` (key ${hotkey})` : ""}`, "aria-pressed": "false", dataset: { performer: performer.performer_id } },
        [hotkey ? el("kbd", { text: hotkey }) : null, el("span", { text: performer.display_name })],
      );
      chip.addEventListener("click", () => this.actions.selectTarget(performer.performer_id));
      dom.targets.append(chip);
      dom.chips.set(performer.performer_id, chip);
    });
    if (!roster.length) dom.targets.append(el("span", { class: "lt-self", text: "no performers in this session" }));
  }

  showStatus(text) {
    this.dom.status.textContent = text;
  }

  showLagNote(text, isError) {
    this.dom.lagNote.textContent = text || "";
    this.dom.lagNote.classList.toggle("is-error", Boolean(isError));
  }

  focusCalibrate() {
    this.dom.calibrate.focus();
  }

  // Everything that changes as tags go and come back. `state`: live, syncing, connecting
  // or offline; `lagUs`: null when unknown; `holding`: labels held now; `history`: the
  // sent tags, oldest first; entryOf(label): its vocabulary entry or null;
  // nameOf(performerId): the display name, else the id.
  render({ state, unacked, lagUs, status, target, holding, history, entryOf, nameOf }) {
    const dom = this.dom;
    dom.conn.dataset.state = state;
    dom.conn.textContent = CONNECTION_TEXT[state];
    dom.root.dataset.state = state;
    dom.unacked.textContent = `${unacked} unacked`;
    dom.unacked.classList.toggle("has-pending", unacked > 0);
    dom.lagValue.textContent = lagUs === null || lagUs === undefined ? "\u2014" : `${Math.round(lagUs / 1000)} ms`;
    dom.status.textContent = status;

    for (const [performerId, chip] of dom.chips) {
      const selected = performerId === target;
      chip.classList.toggle("is-selected", selected);
      chip.setAttribute("aria-pressed", String(selected));
    }
    for (const [label, button] of dom.labelButtons) {
      const on = holding.has(label);
      button.classList.toggle("is-holding", on);
      button.setAttribute("aria-pressed", String(on));
    }

    const rows = history.slice(-FEEDBACK_ROWS).reverse();
    dom.list.replaceChildren(
      ...rows.map((entry) => {
        const vocab = entry.label ? entryOf(entry.label) : null;
        let stateText = "pending\u2026";
        if (entry.state === "acked") stateText = `\u2713 ${Number.isFinite(entry.ts_us) ? formatClock(entry.ts_us) : ""}`;
        else if (entry.state === "held") stateText = "\u2713 held";
        else if (entry.state === "failed") stateText = `\u2717 ${entry.error || "failed"}`;
        return el("li", { class: `lt-item is-${entry.state}${entry.undone ? " is-undone" : ""}`, dataset: { tagId: entry.tag_id } }, [
          el("span", { class: "lt-dot", "aria-hidden": "true", style: { background: vocab ? vocab.colour : "#888" } }),
          el("span", { class: "lt-item-label", text: entry.label || "?" }),
          el("span", { class: "lt-item-target", text: nameOf(entry.performer_id) }),
          el("span", { class: "lt-item-action", text: ACTION_TEXT[entry.action] || entry.action }),
          el("span", { class: "lt-item-state", text: stateText }),
        ]);
      }),
    );
  }
}
