// The widget's keyboard: which key does what (a label's hotkey, 1-9 for a performer,
// Backspace for undo) and when a press is a tap or a hold. Kept apart from the widget so
// the rules of a press work on plain key events (key, code, repeat, modifiers,
// timeStamp) with no DOM: the caller says whether the key went to a text field.
//
// A label key released within HOLD_MS is a point tag. Held longer, it becomes an onset at
// the key-down (sent once the hold is certain) and an offset at the key-up. A window that
// loses focus with a key down never sees its keyup: the hold ends then.

export const HOLD_MS = 250;

// What a keydown asks for: {prevent, intent}. intent is null (not the widget's key),
// {kind: "undo"}, {kind: "target", performerId} or {kind: "press", entry, intensity}.
// `ctx`: typing (the key went to a text field), held (this physical key is already
// down as a press), joined (the welcome came), targetMode, roster, vocabulary.
export function readKeyDown(event, ctx) {
  const none = { prevent: false, intent: null };
  if (event.ctrlKey || event.altKey || event.metaKey) return none;
  if (ctx.typing) return none;
  // A held key repeats: the press is already under way.
  if (event.repeat) return { prevent: ctx.held, intent: null };
  if (!ctx.joined) return none;
  const key = (event.key || "").toLowerCase();
  if (key === "backspace") return { prevent: true, intent: { kind: "undo" } };
  if (ctx.targetMode === "choose" && /^[1-9]$/.test(event.key)) {
    const performer = (ctx.roster || [])[Number(event.key) - 1];
    if (!performer) return none;
    return { prevent: true, intent: { kind: "target", performerId: performer.performer_id } };
  }
  const entry = (ctx.vocabulary || []).find((v) => String(v.hotkey).toLowerCase() === key);
  if (!entry || ctx.held) return none;
  return { prevent: true, intent: { kind: "press", entry, intensity: event.shiftKey ? "strong" : "normal" } };
}

// The label keys down now, by KeyboardEvent.code, and what each becomes. The caller sends
// the tags: onOnset(press) -> the onset's tag_id, onPoint(press), onOffset(press, upTimeStamp);
// onChange() after a hold starts. A press: {entry, performerId, intensity, down (the
// clock's press), downTimeStamp}.
export class Holds {
  constructor(options) {
    this.onOnset = options.onOnset;
    this.onPoint = options.onPoint;
    this.onOffset = options.onOffset;
    this.onChange = options.onChange || (() => {});
    this.holdMs = options.holdMs ?? HOLD_MS;
    this.schedule = options.schedule || ((fn, ms) => setTimeout(fn, ms));
    this.cancel = options.cancel || ((timer) => clearTimeout(timer));
    this.presses = new Map(); // KeyboardEvent.code -> press
  }

  has(code) {
    return this.presses.has(code);
  }

  begin(code, press) {
    const held = { ...press, onsetTagId: null, timer: null };
    held.timer = this.schedule(() => this._startHold(held), this.holdMs);
    this.presses.set(code, held);
  }

  end(code, timeStamp) {
    const press = this.presses.get(code);
    if (!press) return;
    this.presses.delete(code);
    if (press.timer) this.cancel(press.timer);
    press.timer = null;
    const heldMs = timeStamp - press.downTimeStamp;
    if (!press.onsetTagId && heldMs < this.holdMs) {
      this.onPoint(press);
      return;
    }
    if (!press.onsetTagId) this._startHold(press); // the timer ran late: onset first
    this.onOffset(press, timeStamp);
  }

  endAll(timeStamp) {
    for (const code of [...this.presses.keys()]) this.end(code, timeStamp);
  }

  // Labels held past the threshold (their onset sent), for the buttons to show.
  holdingLabels() {
    const holding = new Set();
    for (const press of this.presses.values()) if (press.onsetTagId) holding.add(press.entry.label);
    return holding;
  }

  _startHold(press) {
    press.timer = null;
    if (press.onsetTagId) return;
    press.onsetTagId = this.onOnset(press);
    this.onChange();
  }
}
