// The raters' reaction lags in the side panel: one row per rater with the lag the aligner
// applies now (from livetag.raters, the newest estimate per rater), how it was found,
// its spread and confidence, "rel" where it is relative to the other raters' mean (a
// consensus estimate has no absolute anchor); a click on a row opens every method's
// estimate, which its tooltip lists too. Separate because it is the one table about
// people rather than the pipeline, and its rows open.

import { $, el, fmt, hooks, raterColour } from "./shared.js";

const METHODS = {
  none: "no correction",
  calibration: "the observer page's calibration clip (reaction-time trials)",
  consensus: "cross-correlation of the rater's continuous trace with the other raters'",
  onsets: "tag presses against onsets the features define (a smile rising, a laugh's burst)",
};

const open = new Set(); // raters whose estimates are shown

function estimateText(e) {
  const evidence = typeof e.evidence === "number" ? `, n=${e.evidence}` : "";
  const relative = e.relative ? ", relative" : "";
  return `${e.method}: ${fmt(e.lag_ms, 0)} ms ± ${fmt(e.spread_ms, 0)}, confidence ${fmt(e.confidence, 2)}${relative}${evidence}`;
}

// rows: [{rater_id, rater_role, ts_us, applied, estimates}], by rater id (dashboard/view.py)
export function setRaterLags(rows) {
  if (!Array.isArray(rows)) return;
  hooks.raters = rows;
  const section = $("raters");
  section.hidden = rows.length === 0;
  const body = $("raters-table").tBodies[0];
  body.textContent = "";
  for (const row of rows) {
    const applied = row.applied || {};
    const tr = document.createElement("tr");
    tr.className = "rater-row";
    tr.dataset.key = row.rater_id;
    tr.tabIndex = 0;
    tr.title = [`${row.rater_id} (${row.rater_role}): applied ${estimateText(applied)}`, ...(row.estimates || []).map(estimateText)].join("\n");
    const who = el("td", "rater-who");
    const swatch = el("span", "swatch");
    swatch.style.background = raterColour(row.rater_id);
    who.append(swatch, document.createTextNode(row.rater_id));
    const lag = el("td", "num", fmt(applied.lag_ms, 0));
    const method = el("td", "rater-method", applied.method || "—");
    method.title = METHODS[applied.method] || "";
    const spread = el("td", "num", `± ${fmt(applied.spread_ms, 0)}`);
    const confidence = el("td", "num", fmt(applied.confidence, 2));
    const relative = el("td", "rater-rel", applied.relative ? "rel" : "");
    if (applied.relative) relative.title = "relative to the other raters' mean lag: a consensus estimate with no absolute anchor";
    tr.append(who, lag, method, spread, confidence, relative);
    const toggle = () => {
      if (open.has(row.rater_id)) open.delete(row.rater_id);
      else open.add(row.rater_id);
      setRaterLags(hooks.raters);
    };
    tr.addEventListener("click", toggle);
    tr.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        toggle();
      }
    });
    tr.setAttribute("aria-expanded", open.has(row.rater_id) ? "true" : "false");
    body.append(tr);
    if (open.has(row.rater_id)) {
      const more = document.createElement("tr");
      more.className = "rater-estimates";
      const cell = el("td");
      cell.colSpan = 6;
      const list = el("ul");
      for (const e of row.estimates || []) list.append(el("li", e.method === applied.method ? "applied" : "", estimateText(e)));
      if (!list.children.length) list.append(el("li", "dim", "no other estimate"));
      cell.append(list);
      more.append(cell);
      body.append(more);
    }
  }
}
