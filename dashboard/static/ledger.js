// The ledger lanes of each performer's timeline, as the server sends them per label
// window: what was intended there (the cue in force or the scenario arc's step) and what
// the observers perceived (the label most of them held, agreed or disputed; the
// performer's own tags never count). The self-tagged lane is the timeline's own (the
// performer's tags) and the measured one the model lanes. Separate because these are the
// server's reading of each window, not events: a revision of a window replaces its row.

import { hooks, panelFor } from "./shared.js";

// Rows are [performer_id, window_ts_us, window_us, intent, perceived] with
//   intent    [label, intensity, source, cue kind, cue text, cue since_ts_us, cue shown]
//             or null: nothing intended there;
//   perceived [label, observers tagging, agreed, disputed] or null: no observer tagged.
export function newLedgerState() {
  return {
    intent: new Map(), // window_ts_us -> {start, end, label, strong, source, kind, text, since}
    perceived: new Map(), // window_ts_us -> {start, end, label, observers, agreed, disputed}
    intentRuns: [], // intent windows merged into runs, remade when a row changes
    intentDirty: false,
  };
}

export function addLedgerRows(rows) {
  if (!Array.isArray(rows)) return;
  const touched = new Set();
  for (const row of rows) {
    if (!Array.isArray(row) || row.length < 5 || typeof row[0] !== "string") continue;
    const panel = panelFor(row[0]);
    const start = Number(row[1]);
    const end = start + (Number(row[2]) || 0);
    if (!Number.isFinite(start)) continue;
    const intent = Array.isArray(row[3]) ? row[3] : null;
    if (intent) {
      panel.intent.set(start, {
        start,
        end,
        label: typeof intent[0] === "string" ? intent[0] : null,
        strong: intent[1] === "strong",
        source: intent[2] || null,
        kind: intent[3] || null,
        text: typeof intent[4] === "string" ? intent[4] : null,
        since: typeof intent[5] === "number" ? intent[5] : null,
      });
    } else {
      panel.intent.delete(start);
    }
    panel.intentDirty = true;
    const seen = Array.isArray(row[4]) ? row[4] : null;
    if (seen && typeof seen[0] === "string") {
      panel.perceived.set(start, { start, end, label: seen[0], observers: Number(seen[1]) || 0, agreed: !!seen[2], disputed: !!seen[3] });
    } else {
      panel.perceived.delete(start);
    }
    touched.add(panel);
  }
  for (const panel of touched) noteLedger(panel);
}

export function pruneLedger(panel, cutoff) {
  let changed = false;
  for (const [key, item] of panel.intent) {
    if (item.end < cutoff) {
      panel.intent.delete(key);
      changed = true;
    }
  }
  for (const [key, item] of panel.perceived) {
    if (item.end < cutoff) {
      panel.perceived.delete(key);
      changed = true;
    }
  }
  if (changed) {
    panel.intentDirty = true;
    noteLedger(panel);
  }
}

// Adjacent windows of one intent (same label, intensity and cue) are drawn as one run:
// ten windows a second would otherwise be ten rectangles a second per lane.
export function intentRuns(panel) {
  if (!panel.intentDirty) return panel.intentRuns;
  panel.intentDirty = false;
  const items = Array.from(panel.intent.values()).sort((a, b) => a.start - b.start);
  const runs = [];
  let run = null;
  for (const item of items) {
    const same =
      run && run.end >= item.start && run.label === item.label && run.strong === item.strong && run.kind === item.kind && run.text === item.text && run.since === item.since;
    if (same) {
      run.end = item.end;
      run.windows += 1;
    } else {
      run = { ...item, windows: 1 };
      runs.push(run);
    }
  }
  panel.intentRuns = runs;
  return runs;
}

function noteLedger(panel) {
  let agreed = 0;
  let disputed = 0;
  for (const item of panel.perceived.values()) {
    if (item.agreed) agreed += 1;
    else if (item.disputed) disputed += 1;
  }
  hooks.ledger[panel.id] = { intent: panel.intent.size, perceived: panel.perceived.size, agreed, disputed };
}
