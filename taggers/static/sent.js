// What the widget has sent: the outbox of tags not yet acknowledged (kept in storage, so
// they survive a reload and are re-sent; the service is idempotent on tag_id), the acks and
// refusals that came back, and the recent history the widget lists; and the same for the
// batches of a continuous rating (SentRatings). Apart from the connection and the DOM so
// the rules of "sent, acked, failed, undone" are plain state (the page's life, which the
// rating outbox follows, comes in as `page`).
//
// `storage`: {get(name) -> string | null, set(name, string | null)}; a failing storage
// leaves the outbox in memory only.
//
// Tags are written to storage at every change (a few a minute). The rating outbox is
// written at most every RATINGS_WRITE_MS: it is up to half a MB, and writing it whole at
// every batch and every ack would load the main thread that runs the sampling timer. Each
// write is the whole outbox, so a batch is in storage within RATINGS_WRITE_MS of its
// sampling, and at once when the page goes (pagehide: a reload, a closed tab, a
// navigation) or is hidden (a hidden tab may be discarded with no pagehide). Only a tab
// that crashes within that window loses its newest batch; an ack written late only means
// a re-send, which the service answers from its ledger.

import { isResendable, isResendableBatch } from "./protocol.js";

// Recent tags kept for the list, undo and the test hooks.
const HISTORY_KEEP = 200;
// Unacknowledged rating batches kept: 10 minutes of a rater's trace in half-second
// batches (about half a MB in storage at 20 Hz). Past that the oldest go, counted and
// shown: a page offline that long keeps what is newest. The tag service remembers as many
// of each rater's batches and a quarter more to answer re-sends (PAGE_OUTBOX_BATCHES in
// taggers/protocol.py).
const RATING_BATCHES_KEPT = 1200;
// Acks of rating batches kept for the test hooks.
const RATING_ACKS_KEEP = 500;
// At most one write of the rating outbox to storage in this long.
const RATINGS_WRITE_MS = 400;

// The messages a previous load of this page left in `storage` under `key`: those that
// pass `isValid` (anything else there, or nothing, is no outbox).
export function loadOutbox(storage, key, isValid) {
  const raw = storage.get(key);
  if (!raw) return [];
  let messages;
  try {
    messages = JSON.parse(raw);
  } catch (error) {
    return [];
  }
  return Array.isArray(messages) ? messages.filter(isValid) : [];
}

// The page's life as the rating outbox needs it: whether the page is hidden, and a call as
// the page goes away or is hidden.
export function browserPage() {
  return {
    hidden: () => document.visibilityState === "hidden",
    onLeave(write) {
      addEventListener("pagehide", write);
      document.addEventListener("visibilitychange", () => {
        if (document.visibilityState === "hidden") write();
      });
    },
  };
}

export class SentTags {
  constructor(storage) {
    this.storage = storage;
    this.outbox = new Map(); // tag_id -> message, insertion (send) order
    this.acked = []; // each tag's first ack
    this.ackedIds = new Set();
    this.failed = []; // {tag_id, code, message, sent}: refused for good
    this.history = []; // {tag_id, action, label, performer_id, state, ...}, oldest first
    this.historyById = new Map();
    this.lastPresses = []; // {tag_id, action, press_unix_us_true, frame}: what tests compare
  }

  // The outbox a previous load of this page left unacknowledged.
  restore() {
    for (const message of loadOutbox(this.storage, "outbox", isResendable)) {
      this.outbox.set(message.tag_id, message);
      this._remember(message, true);
    }
  }

  // A new tag or undo, pressed at `press` (the clock's press): kept until acked.
  add(message, press) {
    this.outbox.set(message.tag_id, message);
    this._persist();
    this._remember(message, false);
    this.lastPresses.push({
      tag_id: message.tag_id,
      action: message.type === "undo" ? "undo" : message.action,
      press_unix_us_true: press.trueUs,
      frame: message.frame || null,
    });
    if (this.lastPresses.length > HISTORY_KEEP) this.lastPresses.shift();
  }

  ack(message) {
    const tagId = message.tag_id;
    if (typeof tagId !== "string") return;
    if (this.outbox.delete(tagId)) this._persist();
    if (!this.ackedIds.has(tagId)) {
      this.ackedIds.add(tagId);
      this.acked.push(message);
    }
    const entry = this.historyById.get(tagId);
    if (entry && entry.state !== "failed") {
      entry.state = message.held ? "held" : "acked";
      entry.ts_us = message.ts_us;
      entry.basis = message.basis;
    }
  }

  // The service refused a tag for good (an error that a re-send cannot pass).
  fail(error) {
    const tagId = error.tag_id;
    const pending = this.outbox.get(tagId);
    if (this.outbox.delete(tagId)) this._persist();
    this.failed.push({ tag_id: tagId, code: error.code, message: error.message, sent: pending || null });
    const entry = this.historyById.get(tagId);
    if (entry) {
      entry.state = "failed";
      entry.error = `${error.code}: ${error.message}`;
    }
  }

  // This rater's newest tag that an undo would retract, or null. A hold is one tag:
  // undoing its onset retracts it whole, so its offset is skipped.
  lastUndoable() {
    for (let i = this.history.length - 1; i >= 0; i -= 1) {
      const entry = this.history[i];
      if (entry.action === "undo" || entry.action === "offset" || entry.undone || entry.state === "failed") continue;
      return entry;
    }
    return null;
  }

  _persist() {
    this.storage.set("outbox", this.outbox.size ? JSON.stringify([...this.outbox.values()]) : null);
  }

  _remember(message, restored) {
    const entry = {
      tag_id: message.tag_id,
      action: message.type === "undo" ? "undo" : message.action,
      label: message.label || null,
      performer_id: message.performer_id,
      undoes_tag_id: message.undoes_tag_id || null,
      onset_tag_id: message.onset_tag_id || null,
      state: "pending",
      undone: false,
      restored,
    };
    if (entry.action === "undo" && entry.undoes_tag_id) {
      const target = this.historyById.get(entry.undoes_tag_id);
      if (target) {
        target.undone = true;
        entry.label = target.label;
      }
    }
    this.history.push(entry);
    this.historyById.set(entry.tag_id, entry);
    while (this.history.length > HISTORY_KEEP) {
      const old = this.history.shift();
      this.historyById.delete(old.tag_id);
    }
  }
}

// What the widget has sent of its continuous ratings: the outbox of batches not yet
// acknowledged (kept in storage like tags, re-sent after a reconnect or a reload; the
// service is idempotent on batch_id), how many are on the wire now (at most `window`, so
// a page back from a long outage re-sends its backlog at the pace of the acks rather than
// all at once), and what came back. `page`: browserPage() or a stand-in with its shape.
export class SentRatings {
  constructor(storage, window, page) {
    this.storage = storage;
    this.window = window || 8;
    this.page = page || browserPage();
    this.writeTimer = null; // the next write of the outbox to storage, when one is due
    this.writes = 0; // writes to storage, for tests
    this.page.onLeave(() => this.flush());
    this.outbox = new Map(); // batch_id -> message, in sampling order
    this.inFlight = new Set(); // batch_ids sent on this connection, not answered yet
    this.acked = []; // recent acks (ratings_ack), oldest first
    this.ackedBatches = 0;
    this.ackedSamples = 0;
    this.lastAckedUs = null; // the newest acked sample's session time
    this.failed = []; // {batch_id, code, message, samples}: refused for good
    this.dropped = 0; // batches dropped unsent: the page held more than it keeps
  }

  restore() {
    for (const message of loadOutbox(this.storage, "ratings", isResendableBatch)) this.outbox.set(message.batch_id, message);
  }

  get size() {
    return this.outbox.size;
  }

  unackedSamples() {
    let count = 0;
    for (const message of this.outbox.values()) count += message.samples.length;
    return count;
  }

  add(message) {
    this.outbox.set(message.batch_id, message);
    while (this.outbox.size > RATING_BATCHES_KEPT) {
      const oldest = this.outbox.keys().next().value;
      this.outbox.delete(oldest);
      this.inFlight.delete(oldest);
      this.dropped += 1;
    }
    this._persist();
    // A hidden page may never run its timers again: what it sampled last is kept now.
    if (this.page.hidden()) this.flush();
  }

  // The batches to send now: the oldest unsent ones, up to the window.
  due() {
    const out = [];
    for (const [batchId, message] of this.outbox) {
      if (this.inFlight.size + out.length >= this.window) break;
      if (!this.inFlight.has(batchId)) out.push(message);
    }
    return out;
  }

  sending(batchId) {
    this.inFlight.add(batchId);
  }

  // A new connection: nothing is on the wire any more.
  reset() {
    this.inFlight.clear();
  }

  ack(message) {
    const batchId = message.batch_id;
    if (typeof batchId !== "string") return;
    this.inFlight.delete(batchId);
    if (!this.outbox.delete(batchId)) return; // a second answer to a re-send
    this._persist();
    this.ackedBatches += 1;
    if (Number.isInteger(message.samples)) this.ackedSamples += message.samples;
    if (Number.isInteger(message.end_ts_us)) this.lastAckedUs = Math.max(this.lastAckedUs || 0, message.end_ts_us);
    this.acked.push(message);
    if (this.acked.length > RATING_ACKS_KEEP) this.acked.shift();
  }

  // Refused for a passing reason: the batch waits to go again.
  retryLater(batchId) {
    this.inFlight.delete(batchId);
  }

  // Refused for good.
  fail(error) {
    const batchId = error.batch_id;
    this.inFlight.delete(batchId);
    const pending = this.outbox.get(batchId);
    if (this.outbox.delete(batchId)) this._persist();
    this.failed.push({ batch_id: batchId, code: error.code, message: error.message, samples: pending ? pending.samples.length : 0 });
    if (this.failed.length > HISTORY_KEEP) this.failed.shift();
  }

  // Write the outbox to storage now, if it changed since the last write.
  flush() {
    if (this.writeTimer === null) return;
    clearTimeout(this.writeTimer);
    this.writeTimer = null;
    this.writes += 1;
    this.storage.set("ratings", this.outbox.size ? JSON.stringify([...this.outbox.values()]) : null);
  }

  // The outbox changed: written with the other changes of the next RATINGS_WRITE_MS.
  _persist() {
    if (this.writeTimer === null) this.writeTimer = setTimeout(() => this.flush(), RATINGS_WRITE_MS);
  }
}
