// What the widget has sent: the outbox of tags not yet acknowledged (kept in storage, so
// they survive a reload and are re-sent; the service is idempotent on tag_id), the acks and
// refusals that came back, and the recent history the widget lists. Apart from the
// connection and the DOM so the rules of "sent, acked, failed, undone" are plain state.
//
// `storage`: {get(name) -> string | null, set(name, string | null)}; a failing storage
// leaves the outbox in memory only.

import { isResendable } from "./protocol.js";

// Recent tags kept for the list, undo and the test hooks.
const HISTORY_KEEP = 200;

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
    const raw = this.storage.get("outbox");
    if (!raw) return;
    let messages;
    try {
      messages = JSON.parse(raw);
    } catch (error) {
      return;
    }
    if (!Array.isArray(messages)) return;
    for (const message of messages) {
      if (!isResendable(message)) continue;
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
