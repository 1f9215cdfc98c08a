// The model gap in the side panel: one card per emotion of the vocabulary, where the human
// raters agreed on it, how the model rater read those windows (share, misses, where it
// said the emotion while the humans agreed on another), and the latest moments the humans
// agreed and the model did not (a model that read the face and found no label of the
// vocabulary, FER2013's neutral, answered "(none)": a miss too), each a button: it names the moment on the session clock
// and in its take, scrolls to the performer's tile and outlines the moment on its timeline
// while it is in view (the timeline shows the last 30 s: there is no replay to seek).
// Every number is the server's (dashboard/model_gap.py); the page only lays it out.

import { $, dash, el, fmt, hooks, labelColour, panelFor } from "./shared.js";

const HIGHLIGHT_MS = 4000; // a moment picked stays outlined on the timeline this long

function pct(share) {
  return typeof share === "number" ? `${Math.round(share * 100)}%` : "—";
}

function timeOfDay(us) {
  const date = new Date(us / 1000);
  const pad = (n, k = 2) => String(n).padStart(k, "0");
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(Math.floor(date.getMilliseconds() / 100), 1)}`;
}

function inTake(us) {
  for (const take of dash.session.takes || []) {
    const end = take.end_ts_us;
    if (us >= take.start_ts_us && (end === null || end === undefined || us < end)) {
      const s = (us - take.start_ts_us) / 1e6;
      return `take ${take.take_id} +${Math.floor(s / 60)}:${(s % 60).toFixed(1).padStart(4, "0")}`;
    }
  }
  return "outside a take";
}

function whereText(moment) {
  return `${moment.performer_id}, ${timeOfDay(moment.start_us)}–${timeOfDay(moment.end_us)} (session clock), ${inTake(moment.start_us)}`;
}

function pick(moment, label) {
  const shown = $("gap-picked");
  shown.textContent = `${label} read as ${moment.model_label}: ${whereText(moment)}`;
  shown.hidden = false;
  hooks.gapPicked = moment;
  const panel = panelFor(moment.performer_id);
  // The timeline (timeline.js) outlines it while it is in its last 30 s.
  panel.highlight = { start: moment.start_us, end: moment.end_us, untilPerf: performance.now() + HIGHLIGHT_MS };
  panel.root.scrollIntoView({ block: "nearest", behavior: "smooth" });
}

// summary: {threshold, min_raters, no_label, agreed: {label: windows}, models: {model:
// {read, agree, share, kappa, said_none, labels: {label: {read, agree, share, missed, said_elsewhere,
// latest: [{performer_id, start_us, end_us, windows, model_label}]}}}}}
export function setModelGap(summary) {
  if (!summary || typeof summary !== "object") return;
  hooks.gap = summary;
  const rule = $("gap-rule");
  const threshold = fmt(summary.threshold, 2);
  rule.textContent = `where the humans agreed: consensus_agreement ≥ ${threshold}, ≥ ${summary.min_raters} raters holding a label`;
  const models = Object.entries(summary.models || {});
  const overall = $("gap-overall");
  overall.textContent = "";
  if (!models.length) overall.append(el("p", "dim", "no model readings yet"));
  for (const [model, m] of models) {
    const line = el("p", "gap-model-line num");
    line.dataset.model = model;
    const none = m.said_none ? ` · ${summary.no_label || "(none)"} in ${m.said_none}` : "";
    line.textContent = `${model}: agrees in ${m.agree} of ${m.read} agreed windows it read (${pct(m.share)}), Cohen's κ ${fmt(m.kappa, 2)}${none}`;
    line.title =
      "Over every window the humans agreed on that the model read (frames read): the share where its top label is the consensus, and Cohen's kappa (1960) between the two. " +
      "Where it read the face and no label of the vocabulary outweighed its other classes (FER2013's neutral), it answered (none): a miss, counted in the kappa.";
    overall.append(line);
  }
  const cards = $("gap-cards");
  cards.textContent = "";
  for (const [label, agreed] of Object.entries(summary.agreed || {})) {
    const card = el("article", "gap-card");
    card.dataset.label = label;
    const head = el("h3", "gap-label");
    const swatch = el("span", "swatch");
    swatch.style.background = labelColour(label);
    head.append(swatch, document.createTextNode(label), el("span", "gap-agreed num dim", `humans agreed: ${agreed} windows`));
    card.append(head);
    for (const [model, m] of models) {
      const v = (m.labels || {})[label] || {};
      // An emotion nobody agreed on and the model never said: its header says it all.
      if (!agreed && !v.said_elsewhere) continue;
      const line = el("p", "gap-line num");
      line.dataset.model = model;
      line.dataset.share = v.share ?? "";
      const prefix = models.length > 1 ? `${model}: ` : "model ";
      line.textContent = `${prefix}${v.agree ?? 0}/${v.read ?? 0} (${pct(v.share)}) · missed ${v.missed ?? 0} · said it elsewhere ${v.said_elsewhere ?? 0}`;
      line.title =
        `Of the ${v.read ?? 0} windows where the humans agreed on ${label} and the model read the face, ` +
        `it read ${label} in ${v.agree ?? 0}; it missed ${v.missed ?? 0} (another label, or (none)); ${agreed - (v.read ?? 0)} agreed windows it did not read. ` +
        `It said ${label} in ${v.said_elsewhere ?? 0} windows where the humans agreed on another label.`;
      card.append(line);
      const latest = Array.isArray(v.latest) ? v.latest : [];
      if (latest.length) {
        const list = el("ol", "gap-moments");
        for (const moment of latest) {
          const item = el("li");
          const button = el("button", "gap-moment num");
          button.type = "button";
          button.dataset.start = String(moment.start_us);
          const seconds = (moment.end_us - moment.start_us) / 1e6;
          button.textContent = `${moment.performer_id} ${timeOfDay(moment.start_us)} · ${seconds.toFixed(1)} s · read ${moment.model_label}`;
          button.title = `${whereText(moment)}; ${moment.windows} windows. Click: outline it on the timeline.`;
          button.addEventListener("click", () => pick(moment, label));
          item.append(button);
          list.append(item);
        }
        card.append(list);
      }
    }
    cards.append(card);
  }
}
