// How far the raters agree, per performer: the Krippendorff's alpha badge in each tile's
// header (session and last 60 s, computed by the server), and the aligner's consensus
// windows that the timeline draws under the rater lanes. Separate because both come
// from the server's reading of all raters together, not from any one tag.

import { el, fmt, hooks, panelFor } from "./shared.js";

// ---- a tile's alpha badge -----------------------------------------------------------
export function createAlphaBadge() {
  const alpha = el("span", "perf-alpha num", "α —");
  alpha.title = "Krippendorff's alpha (nominal): whole session · last 60 s";
  return alpha;
}

function alphaClass(value) {
  if (typeof value !== "number") return "na";
  if (value >= 0.667) return "good";
  if (value >= 0.4) return "fair";
  return "poor";
}

// agreement: performer_id -> {session, last_60s, raters, units}
export function setAgreement(agreement) {
  hooks.agreement = agreement;
  for (const [performerId, value] of Object.entries(agreement || {})) {
    const panel = panelFor(performerId);
    const v = value || {};
    panel.alphaEl.textContent = `α ${fmt(v.session, 2)} · 60 s ${fmt(v.last_60s, 2)} · ${v.raters ?? 0} raters`;
    panel.alphaEl.dataset.level = alphaClass(v.last_60s ?? v.session);
    panel.alphaEl.title = `Krippendorff's alpha (nominal): session ${fmt(v.session, 3)}, last 60 s ${fmt(v.last_60s, 3)}; ${v.raters ?? 0} raters, ${v.units ?? 0} units`;
  }
}

// ---- consensus windows --------------------------------------------------------------
// Rows are [performer_id, window_ts_us, window_us, label, agreement]; a later row for the
// same window (a revision) replaces the earlier one.
export function newConsensusState() {
  return { consensus: new Map() }; // window_ts_us -> row
}

export function addConsensus(rows) {
  if (!Array.isArray(rows)) return;
  for (const row of rows) {
    if (!Array.isArray(row) || row.length < 3) continue;
    const panel = panelFor(row[0]);
    panel.consensus.set(Number(row[1]), row);
    hooks.consensus[panel.id] = panel.consensus.size;
  }
}

export function pruneConsensus(panel, cutoff) {
  for (const [key, row] of panel.consensus) {
    if (key + (Number(row[2]) || 0) < cutoff) panel.consensus.delete(key);
  }
  hooks.consensus[panel.id] = panel.consensus.size;
}
