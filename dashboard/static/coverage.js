// What the scene has shown so far, from each performer's ledger (livetag.coverage, the
// aligner's count over the label windows): the coverage matrix (emotion x performer:
// seconds intended, self-tagged and perceived with the observers agreeing, coloured by the
// agreed seconds), the hit rate per emotion (how much of what was intended observers
// perceived as intended, and what they saw instead most often), a small confusion matrix
// (intended x perceived), per performer and over the session, and the next cue livetag
// suggests, which the director sends with one click. Every number is the server's
// (dashboard/directing.py); the page lays them out.

import { $, el, hooks, labelColour } from "./shared.js";
import { cue } from "./cues.js";

const SESSION_SCOPE = "(session)"; // dashboard.directing.SESSION_SCOPE
const NOTHING = "(none)"; // records.NOTHING_PERCEIVED

let summary = null;
let scope = SESSION_SCOPE;
let controls = false;

function seconds(value) {
  if (typeof value !== "number" || !value) return "0";
  return value < 10 ? value.toFixed(1) : String(Math.round(value));
}

function pct(share) {
  return typeof share === "number" ? `${Math.round(share * 100)}%` : "—";
}

function scopeName(key) {
  return key === SESSION_SCOPE ? "session" : key;
}

export function setCoverageControls(isDirector) {
  controls = !!isDirector;
  renderSuggestion();
}

// summary: {labels, performers, cells: {scope: {label: {intended_s, self_tagged_s,
// perceived_s, agreed_s, hit_s, disputed_s}}}, windows, as_of_us, hit: {scope: [{label,
// intended_s, hit_s, hit_rate, hit_rate_where_perceived, confused_with, confused_share}]},
// confusion: {scope: {intended: {perceived: windows}}}, targets, suggestion}
export function setCoverage(next) {
  if (!next || typeof next !== "object") return;
  summary = next;
  hooks.coverage = next;
  hooks.suggestion = next.suggestion || null;
  if (scope !== SESSION_SCOPE && !(next.hit || {})[scope]) scope = SESSION_SCOPE;
  renderMatrix();
  renderSuggestion();
  renderScopes();
  renderHit();
}

// ---- the coverage matrix --------------------------------------------------------------
function renderMatrix() {
  const table = $("coverage-matrix");
  const performers = (summary.performers || []).filter((p) => (summary.cells || {})[p]);
  const head = table.tHead;
  const body = table.tBodies[0];
  head.textContent = "";
  body.textContent = "";
  const cellsHook = {};
  const top = document.createElement("tr");
  top.append(el("th", "", "emotion"));
  for (const performer of performers) top.append(el("th", "", performer));
  head.append(top);
  let most = 0;
  for (const performer of performers) for (const cell of Object.values(summary.cells[performer])) most = Math.max(most, cell.agreed_s || 0);
  const targets = new Set(summary.targets || []);
  const suggested = summary.suggestion || {};
  for (const label of summary.labels || []) {
    const tr = document.createElement("tr");
    tr.dataset.label = label;
    const name = el("th", "coverage-label");
    const swatch = el("span", "swatch");
    swatch.style.background = labelColour(label);
    name.append(swatch, document.createTextNode(label));
    if (targets.has(label)) {
      name.append(el("span", "coverage-target", " ◎"));
      name.title = "a target of the scene";
    }
    tr.append(name);
    for (const performer of performers) {
      const cell = summary.cells[performer][label] || {};
      const text = `${seconds(cell.intended_s)} · ${seconds(cell.self_tagged_s)} · ${seconds(cell.agreed_s)}`;
      const td = el("td", "coverage-cell", text);
      td.dataset.performer = performer;
      td.dataset.label = label;
      if (cell.agreed_s && most) {
        td.style.setProperty("--cell-colour", labelColour(label));
        td.style.setProperty("--cell-alpha", String(0.15 + 0.4 * (cell.agreed_s / most)));
        td.dataset.agreed = "1";
      }
      if (cell.disputed_s > (cell.agreed_s || 0)) td.dataset.disputed = "1";
      if (suggested.performer_id === performer && suggested.label === label) td.dataset.suggested = "1";
      td.title =
        `${performer}, ${label}: intended ${seconds(cell.intended_s)} s, self-tagged ${seconds(cell.self_tagged_s)} s, ` +
        `perceived ${seconds(cell.perceived_s)} s, agreed ${seconds(cell.agreed_s)} s, disputed ${seconds(cell.disputed_s)} s, ` +
        `perceived as intended ${seconds(cell.hit_s)} s`;
      tr.append(td);
      (cellsHook[performer] ||= {})[label] = text;
    }
    body.append(tr);
  }
  $("coverage-empty").hidden = performers.length > 0;
  hooks.coverageCells = cellsHook;
}

// ---- the next cue ---------------------------------------------------------------------
function renderSuggestion() {
  const text = $("next-cue-text");
  const button = $("next-cue-send");
  const suggestion = summary && summary.suggestion;
  text.textContent = "";
  if (!suggestion) {
    text.append(document.createTextNode(summary ? "nothing to suggest" : "no ledger yet"));
    text.classList.add("dim");
    button.hidden = true;
    return;
  }
  text.classList.remove("dim");
  const what = el("strong", "next-cue-what");
  const swatch = el("span", "swatch");
  swatch.style.background = labelColour(suggestion.label);
  what.append(swatch, document.createTextNode(`${suggestion.label} → ${suggestion.performer_id}`));
  text.append(what, el("span", "next-cue-reason dim", ` · ${suggestion.reason}`));
  button.hidden = !controls;
  button.dataset.performer = suggestion.performer_id;
  button.dataset.label = suggestion.label;
}

$("next-cue-send").addEventListener("click", async () => {
  const button = $("next-cue-send");
  const status = $("next-cue-status");
  button.disabled = true;
  const reply = await cue({ to: button.dataset.performer, kind: "emotion", label: button.dataset.label, intensity: "normal" });
  button.disabled = false;
  status.textContent = reply.type === "error" ? `${reply.code}: ${reply.message}` : `sent ${button.dataset.label} to ${button.dataset.performer}`;
  status.dataset.level = reply.type === "error" ? "bad" : "ok";
});

// ---- hit rate and confusion -----------------------------------------------------------
function renderScopes() {
  const box = $("hit-scopes");
  const scopes = Object.keys(summary.hit || {}).sort((a, b) => (a === SESSION_SCOPE ? -1 : b === SESSION_SCOPE ? 1 : a.localeCompare(b)));
  box.textContent = "";
  for (const key of scopes) {
    const button = el("button", "hit-scope", scopeName(key));
    button.type = "button";
    button.dataset.scope = key;
    button.setAttribute("aria-pressed", key === scope ? "true" : "false");
    button.addEventListener("click", () => {
      scope = key;
      renderScopes();
      renderHit();
    });
    box.append(button);
  }
}

function renderHit() {
  const rows = (summary.hit || {})[scope] || [];
  const body = $("hit-table").tBodies[0];
  body.textContent = "";
  const shown = [];
  for (const row of rows) {
    const tr = document.createElement("tr");
    tr.dataset.label = row.label;
    const name = el("td", "hit-label");
    const swatch = el("span", "swatch");
    swatch.style.background = labelColour(row.label);
    name.append(swatch, document.createTextNode(row.label));
    const confused = row.confused_with ? `${row.confused_with} ${pct(row.confused_share)}` : "—";
    const cells = [seconds(row.intended_s), pct(row.hit_rate), confused];
    tr.append(name, ...cells.map((text) => el("td", "num", text)));
    tr.title =
      `${row.label}: intended ${row.intended_s} s, observers perceived it as intended for ${row.hit_s} s (${pct(row.hit_rate)}; ` +
      `${pct(row.hit_rate_where_perceived)} of the seconds they perceived anything)` +
      (row.confused_with ? `; most often perceived as ${row.confused_with} instead (${pct(row.confused_share)} of its windows)` : "");
    body.append(tr);
    shown.push([row.label, ...cells]);
  }
  $("hit-empty").hidden = rows.length > 0;
  hooks.hitScope = scope;
  hooks.hitRows = shown;
  renderConfusion((summary.confusion || {})[scope] || {});
}

function renderConfusion(matrix) {
  const table = $("confusion-matrix");
  table.textContent = "";
  const order = [...(summary.labels || []), NOTHING];
  const intended = order.filter((label) => matrix[label]);
  const perceived = order.filter((label) => intended.some((row) => (matrix[row] || {})[label]));
  const cellsHook = {};
  if (!intended.length) {
    hooks.confusion = cellsHook;
    return;
  }
  const head = document.createElement("tr");
  head.append(el("th", "confusion-corner", "intended ↓ seen →"));
  for (const label of perceived) {
    const th = el("th", "confusion-col", label === NOTHING ? "none" : label.slice(0, 5));
    th.title = label === NOTHING ? "no observer perceived anything" : label;
    head.append(th);
  }
  table.append(head);
  for (const label of intended) {
    const row = matrix[label] || {};
    const total = Object.values(row).reduce((sum, n) => sum + n, 0) || 1;
    const tr = document.createElement("tr");
    tr.dataset.label = label;
    const name = el("th", "confusion-row");
    const swatch = el("span", "swatch");
    swatch.style.background = labelColour(label);
    name.append(swatch, document.createTextNode(label));
    tr.append(name);
    for (const seen of perceived) {
      const windows = row[seen] || 0;
      const share = windows / total;
      const td = el("td", "confusion-cell", windows ? pct(share) : "");
      td.dataset.perceived = seen;
      if (seen === label) td.dataset.hit = "1";
      td.style.setProperty("--cell-alpha", String(windows ? 0.12 + 0.45 * share : 0));
      td.style.setProperty("--cell-colour", seen === NOTHING ? "#8a8f98" : labelColour(seen));
      td.title = `intended ${label}, perceived ${seen}: ${windows} of ${total} windows`;
      tr.append(td);
      if (windows) (cellsHook[label] ||= {})[seen] = windows;
    }
    table.append(tr);
  }
  hooks.confusion = cellsHook;
}
