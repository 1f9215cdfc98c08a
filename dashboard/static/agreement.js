// How far the raters agree, per performer: the Krippendorff's alpha badge in each tile's
// header (session and last 60 s, computed by the server). Separate because it comes from
// the server's reading of all raters together, not from any one tag.

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
