// livetag tagging widget: hotkeys and buttons that send emotion tags over /ws/tag.
//
// Plain script (no modules, no build step): defines the global class LivetagTagger.
// The call page (performers tag themselves; observers and directors tag any performer)
// and the director dashboard create one. Protocol: taggers/protocol.py.
//
//  - The first message is {type:"hello", token}; nothing is tagged before the server's
//    welcome and the first clock_probe answered on that connection. The token is the
//    page's session credential (credentials.js), read at every (re)connect from
//    opts.token (a function); the service's renewals ({type:"credential"}) go to
//    opts.onCredential. A connection closed because its link was revoked or ran out, or
//    because the session is over (4403, 4410, 4409), is not reopened.
//  - A tag carries the client's key-press time (event.timeStamp on the Unix clock) and,
//    when watching a performer's video, the RTP timestamp of the frame on screen.
//  - Every tag stays in a persisted outbox until acked, and is re-sent on reconnect (the
//    server is idempotent on tag_id).
"use strict";

(function () {
  const HOLD_MS = 250;
  const RETRY_CODES = new Set(["too_frequent", "not_synced", "unavailable"]);
  const RETRY_AFTER_MS = 500;
  const BACKOFF_START_MS = 500;
  const BACKOFF_MAX_MS = 5000;
  // Refused (close codes 4400-4599 carry the reason, infra.connection_gate): try again
  // after 10-20 s, not at the usual pace.
  const REFUSED_RETRY_MS = 10000;
  const FEEDBACK_ROWS = 12;
  const HISTORY_KEEP = 200;
  const CALIBRATION_TRIALS = 8;
  const CALIBRATION_MAX_ATTEMPTS = 24;
  const CALIBRATION_MISS_MS = 3000;
  const TAG_ID_RE = /^[A-Za-z0-9_-]{8,64}$/;

  function skewFromUrl() {
    try {
      const raw = new URLSearchParams(location.search).get("clock_skew_ms");
      const value = raw === null ? 0 : Number(raw);
      return Number.isFinite(value) ? Math.round(value * 1000) : 0;
    } catch (error) {
      return 0;
    }
  }

  // Short stable hash of the token, so storage keys do not hold the token itself.
  function tokenHash(text) {
    let a = 0x811c9dc5;
    let b = 0x01000193;
    for (let i = 0; i < text.length; i += 1) {
      const code = text.charCodeAt(i);
      a = Math.imul(a ^ code, 0x01000193) >>> 0;
      b = Math.imul(b ^ code, 0x5bd1e995) >>> 0;
      b = (b ^ (b >>> 13)) >>> 0;
    }
    return a.toString(16).padStart(8, "0") + b.toString(16).padStart(8, "0");
  }

  function newTagId() {
    const c = globalThis.crypto;
    if (c && typeof c.randomUUID === "function") {
      try {
        const id = c.randomUUID();
        if (TAG_ID_RE.test(id)) return id;
      } catch (error) {
        // not a secure context: fall through
      }
    }
    const bytes = new Uint8Array(16);
    if (c && typeof c.getRandomValues === "function") c.getRandomValues(bytes);
    else for (let i = 0; i < bytes.length; i += 1) bytes[i] = Math.floor(Math.random() * 256);
    return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
  }

  function formatClock(tsUs) {
    const date = new Date(Math.floor(tsUs / 1000));
    const pad = (n, w) => String(n).padStart(w || 2, "0");
    return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
  }

  function isTypingTarget(target) {
    if (!target || !(target instanceof Element)) return false;
    if (target.isContentEditable) return true;
    const tag = target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT";
  }

  function el(tag, attrs, children) {
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
      }
      else node.setAttribute(key, value);
    }
    for (const child of children || []) if (child) node.append(child);
    return node;
  }

  const ACTION_TEXT = { point: "tap", onset: "hold \u25b6", offset: "hold \u25a0", undo: "undo" };

  class LivetagTagger {
    constructor(options) {
      const opts = options || {};
      if (!opts.url) throw new Error("LivetagTagger: url is required");
      if (!opts.token) throw new Error("LivetagTagger: token is required");
      if (typeof opts.token === "function" && !opts.storageKey) {
        throw new Error("LivetagTagger: a token function needs a storageKey");
      }
      this.url = opts.url;
      // A string, or a function giving the current credential (maybe a Promise).
      this.tokenSource = opts.token;
      this.onCredential = typeof opts.onCredential === "function" ? opts.onCredential : null;
      this.stopped = false; // the link was revoked or ran out: no more reconnects
      this.targetMode = opts.targetMode === "self" ? "self" : "choose";
      this.frameSource = typeof opts.frameSource === "function" ? opts.frameSource : null;
      this.storageKey = opts.storageKey || `livetag-tagger:${tokenHash(String(opts.token))}`;
      this.skewUs = skewFromUrl();

      // Test hooks and state.
      this.acked = [];
      this.outbox = new Map(); // tag_id -> message, insertion (send) order
      this.failed = [];
      this.errors = [];
      this.connected = false; // welcome received on an open socket
      this.ready = false; // ... and the first clock_probe of that socket answered
      this.rater = null; // the welcome message
      this.lastPresses = [];
      this.reactionLagUs = this._loadLag();
      this.clockId = newTagId();

      this.ws = null;
      this.synced = false;
      this.retryMs = BACKOFF_START_MS;
      this.reconnectTimer = null;
      this.connects = 0;
      this.history = []; // {tag_id, action, label, performer_id, state, ...}, oldest first
      this.historyById = new Map();
      this.ackedIds = new Set();
      this.presses = new Map(); // KeyboardEvent.code -> active press
      this.target = null;
      this.pendingLagMessage = null;
      this.calibration = null;
      this.statusText = "";

      this._restoreOutbox();
      this._buildDom(opts.mount);
      this._onKeyDown = this._onKeyDown.bind(this);
      this._onKeyUp = this._onKeyUp.bind(this);
      this._onBlur = this._onBlur.bind(this);
      window.addEventListener("keydown", this._onKeyDown);
      window.addEventListener("keyup", this._onKeyUp);
      window.addEventListener("blur", this._onBlur);
      window.livetagTagger = this;
      this._render();
      this.connect();
    }

    // ---- clock -------------------------------------------------------------------------

    clientNowUs() {
      return Math.round((performance.timeOrigin + performance.now()) * 1000) + this.skewUs;
    }

    // A DOM event's timeStamp (ms since timeOrigin) on the Unix clock, µs, without skew.
    _trueUs(timeStamp) {
      return Math.round((performance.timeOrigin + timeStamp) * 1000);
    }

    _press(timeStamp) {
      const ts = typeof timeStamp === "number" && timeStamp > 0 ? timeStamp : performance.now();
      const trueUs = this._trueUs(ts);
      return { trueUs, clientUs: trueUs + this.skewUs, unixMs: performance.timeOrigin + ts };
    }

    // ---- storage -----------------------------------------------------------------------

    _storageGet(suffix) {
      try {
        return window.localStorage.getItem(`${this.storageKey}:${suffix}`);
      } catch (error) {
        return null;
      }
    }

    _storageSet(suffix, value) {
      try {
        if (value === null) window.localStorage.removeItem(`${this.storageKey}:${suffix}`);
        else window.localStorage.setItem(`${this.storageKey}:${suffix}`, value);
      } catch (error) {
        // storage full or disabled: the outbox still lives in memory
      }
    }

    _loadLag() {
      const raw = this._storageGet("reaction_lag_us");
      const value = raw === null ? NaN : Number(raw);
      return Number.isInteger(value) && value >= 0 ? value : null;
    }

    _persistOutbox() {
      this._storageSet("outbox", this.outbox.size ? JSON.stringify([...this.outbox.values()]) : null);
    }

    _restoreOutbox() {
      const raw = this._storageGet("outbox");
      if (!raw) return;
      let messages;
      try {
        messages = JSON.parse(raw);
      } catch (error) {
        return;
      }
      if (!Array.isArray(messages)) return;
      for (const message of messages) {
        if (!message || typeof message.tag_id !== "string" || !TAG_ID_RE.test(message.tag_id)) continue;
        if (message.type !== "tag" && message.type !== "undo") continue;
        this.outbox.set(message.tag_id, message);
        this._remember(message, { restored: true });
      }
    }

    // ---- connection --------------------------------------------------------------------

    connect() {
      if (this.reconnectTimer) {
        clearTimeout(this.reconnectTimer);
        this.reconnectTimer = null;
      }
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (error) {
        this._setStatus(`cannot open ${this.url}: ${error.message}`);
        this._scheduleReconnect();
        return;
      }
      this.ws = ws;
      this.connects += 1;
      this.synced = false;
      this.ready = false;
      this.connected = false;
      this._render();
      ws.addEventListener("open", async () => {
        if (ws !== this.ws) return;
        const token = await this._currentToken();
        if (ws !== this.ws) return;
        if (!token) {
          this._setStatus("no credential for this page yet: retrying");
          ws.close();
          return;
        }
        // clock_id names this page's clock (performance.timeOrigin): the server keeps the
        // clock sync it measured across reconnects, so tags re-sent after a drop are
        // converted with the whole history, not one fresh probe.
        const hello = { type: "hello", token, clock_id: this.clockId };
        if (this.reactionLagUs !== null) hello.reaction_lag_us = this.reactionLagUs;
        ws.send(JSON.stringify(hello));
        this._render();
      });
      ws.addEventListener("message", (event) => {
        if (ws !== this.ws) return;
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (error) {
          return;
        }
        try {
          this._onMessage(message);
        } catch (error) {
          console.error("livetag tagger:", error);
        }
      });
      ws.addEventListener("close", (event) => {
        if (ws !== this.ws) return;
        this.ws = null;
        this.connected = false;
        this.ready = false;
        this.synced = false;
        if (event.code === 4403 || event.code === 4409 || event.code === 4410) {
          // The director revoked this link, the session is over, or the link ran out:
          // reconnecting cannot help.
          this.stopped = true;
          this._setStatus(String(event.reason || "access ended").replace(/^[a-z_]+: /, ""));
          this._render();
          return;
        }
        if (event.code >= 4400 && event.code < 4600) {
          this._setStatus(event.reason || `refused (${event.code})`);
          this.retryMs = Math.max(this.retryMs, REFUSED_RETRY_MS * (1 + Math.random()));
        }
        this._scheduleReconnect();
        this._render();
      });
    }

    async _currentToken() {
      try {
        const source = this.tokenSource;
        return typeof source === "function" ? await source() : source;
      } catch (error) {
        return null;
      }
    }

    _scheduleReconnect() {
      if (this.reconnectTimer || this.stopped) return;
      const delay = this.retryMs;
      this.retryMs = Math.min(this.retryMs * 2, BACKOFF_MAX_MS);
      this.reconnectTimer = setTimeout(() => {
        this.reconnectTimer = null;
        this.connect();
      }, delay);
    }

    disconnectForTest() {
      if (this.ws) this.ws.close();
    }

    _sendRaw(message) {
      if (this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.ws.send(JSON.stringify(message));
        return true;
      }
      return false;
    }

    _onMessage(message) {
      switch (message.type) {
        case "clock_probe":
          this._sendRaw({
            type: "clock_reply",
            probe_id: message.probe_id,
            server_send_us: message.server_send_us,
            client_time_us: this.clientNowUs(),
          });
          if (!this.synced) {
            this.synced = true;
            this._maybeReady();
          }
          break;
        case "welcome":
          this.rater = message;
          this.connected = true;
          this.retryMs = BACKOFF_START_MS;
          this._onWelcome(message);
          this._maybeReady();
          break;
        case "ack":
          this._onAck(message);
          break;
        case "error":
          this._onError(message);
          break;
        case "credential":
          // The service renewed the page's credential before it runs out.
          if (this.onCredential) this.onCredential(message);
          else if (typeof message.credential === "string") this.tokenSource = message.credential;
          break;
        case "reaction_lag":
          if (Number.isInteger(message.lag_us)) {
            this.reactionLagUs = message.lag_us;
            this._storageSet("reaction_lag_us", String(message.lag_us));
            if (this.rater) this.rater.reaction_lag_us = message.lag_us;
            this._calibrationResult(`lag set to ${Math.round(message.lag_us / 1000)} ms`);
          }
          this._render();
          break;
        default:
          break;
      }
    }

    _maybeReady() {
      if (this.ready || !this.connected || !this.synced) return;
      this.ready = true;
      if (this.pendingLagMessage && this._sendRaw(this.pendingLagMessage)) this.pendingLagMessage = null;
      for (const message of this.outbox.values()) this._sendRaw(message);
      this._render();
    }

    _onWelcome(message) {
      this.vocabulary = Array.isArray(message.vocabulary) ? message.vocabulary : [];
      this.roster = Array.isArray(message.roster) ? message.roster : [];
      if (this.targetMode === "self") {
        this.target = message.rater_id;
      } else if (!this.roster.some((p) => p.performer_id === this.target)) {
        this.target = this.roster.length ? this.roster[0].performer_id : null;
      }
      this._setStatus("");
      this._renderVocabulary();
      this._render();
    }

    _onAck(message) {
      const tagId = message.tag_id;
      if (typeof tagId !== "string") return;
      if (this.outbox.delete(tagId)) this._persistOutbox();
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
      this._render();
    }

    _onError(message) {
      this.errors.push(message);
      const tagId = message.tag_id;
      if (typeof tagId === "string" && tagId) {
        if (RETRY_CODES.has(message.code)) {
          if (this.outbox.has(tagId)) {
            setTimeout(() => {
              const pending = this.outbox.get(tagId);
              if (pending && this.ready) this._sendRaw(pending);
            }, RETRY_AFTER_MS);
          }
        } else {
          const pending = this.outbox.get(tagId);
          if (this.outbox.delete(tagId)) this._persistOutbox();
          this.failed.push({ tag_id: tagId, code: message.code, message: message.message, sent: pending || null });
          const entry = this.historyById.get(tagId);
          if (entry) {
            entry.state = "failed";
            entry.error = `${message.code}: ${message.message}`;
          }
        }
      } else {
        this._setStatus(`${message.code}: ${message.message}`);
        if (message.code === "calibration_failed") this._calibrationResult(message.message, true);
      }
      this._render();
    }

    // ---- sending tags ------------------------------------------------------------------

    _entryFor(label) {
      return (this.vocabulary || []).find((entry) => entry.label === label) || null;
    }

    _frameAt(performerId, unixMs) {
      if (!this.frameSource) return null;
      try {
        const frame = this.frameSource(performerId, unixMs);
        if (!frame) return null;
        const rtp = frame.rtp_timestamp;
        if (Number.isInteger(rtp) && rtp >= 0 && rtp < 2 ** 32) return { rtp_timestamp: rtp };
      } catch (error) {
        console.warn("livetag tagger: frameSource failed", error);
      }
      return null;
    }

    _remember(message, extra) {
      const entry = {
        tag_id: message.tag_id,
        action: message.type === "undo" ? "undo" : message.action,
        label: message.label || null,
        performer_id: message.performer_id,
        undoes_tag_id: message.undoes_tag_id || null,
        onset_tag_id: message.onset_tag_id || null,
        state: "pending",
        undone: false,
        restored: Boolean(extra && extra.restored),
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
      return entry;
    }

    _enqueue(message, press) {
      this.outbox.set(message.tag_id, message);
      this._persistOutbox();
      this._remember(message);
      this.lastPresses.push({
        tag_id: message.tag_id,
        action: message.type === "undo" ? "undo" : message.action,
        press_unix_us_true: press.trueUs,
        frame: message.frame || null,
      });
      if (this.lastPresses.length > HISTORY_KEEP) this.lastPresses.shift();
      if (this.ready) this._sendRaw(message);
      this._render();
      return message.tag_id;
    }

    _sendTag(action, entry, performerId, intensity, press, onsetTagId) {
      const message = {
        type: "tag",
        tag_id: newTagId(),
        action,
        performer_id: performerId,
        label: entry.label,
        // Shift = strong, where the session's vocabulary gives the label an intensity.
        intensity: intensity === "strong" && entry.intensity !== false ? "strong" : "normal",
        client_press_us: press.clientUs,
      };
      if (onsetTagId) message.onset_tag_id = onsetTagId;
      const frame = this._frameAt(performerId, press.unixMs);
      if (frame) message.frame = frame;
      return this._enqueue(message, press);
    }

    _sendUndo(press) {
      for (let i = this.history.length - 1; i >= 0; i -= 1) {
        const entry = this.history[i];
        // A hold is one tag: undoing its onset retracts it whole, so its offset is skipped.
        if (entry.action === "undo" || entry.action === "offset" || entry.undone || entry.state === "failed") continue;
        return this._enqueue(
          {
            type: "undo",
            tag_id: newTagId(),
            undoes_tag_id: entry.tag_id,
            performer_id: entry.performer_id,
            client_press_us: press.clientUs,
          },
          press,
        );
      }
      this._setStatus("nothing to undo");
      return null;
    }

    _canTag() {
      if (!this.rater) {
        this._setStatus("not connected yet: tags start after the welcome");
        return false;
      }
      if (!this.target) {
        this._setStatus("choose a performer first");
        return false;
      }
      return true;
    }

    // Public: a point tag now (or at the given DOM event timeStamp). Returns the tag_id.
    tap(label, performerId, timeStamp) {
      const entry = this._entryFor(label);
      if (!entry) throw new Error(`unknown label ${label}`);
      if (performerId === undefined || performerId === null) {
        if (!this._canTag()) return null;
        performerId = this.target;
      }
      return this._sendTag("point", entry, performerId, "normal", this._press(timeStamp), null);
    }

    // Public: undo this rater's last tag that was not undone. Returns the undo's tag_id.
    undoLast(timeStamp) {
      return this._sendUndo(this._press(timeStamp));
    }

    selectTarget(performerId) {
      if (this.targetMode === "self") return;
      if (!(this.roster || []).some((p) => p.performer_id === performerId)) return;
      this.target = performerId;
      this._render();
    }

    // ---- keyboard ----------------------------------------------------------------------

    _onKeyDown(event) {
      if (this.calibration) {
        this._calibrationKey(event);
        return;
      }
      if (event.ctrlKey || event.altKey || event.metaKey) return;
      if (isTypingTarget(event.target)) return;
      if (event.repeat) {
        if (this.presses.has(event.code)) event.preventDefault();
        return;
      }
      if (!this.rater) return;
      const key = (event.key || "").toLowerCase();
      if (key === "backspace") {
        event.preventDefault();
        this._sendUndo(this._press(event.timeStamp));
        return;
      }
      if (this.targetMode === "choose" && /^[1-9]$/.test(event.key)) {
        const performer = (this.roster || [])[Number(event.key) - 1];
        if (performer) {
          event.preventDefault();
          this.selectTarget(performer.performer_id);
        }
        return;
      }
      const entry = (this.vocabulary || []).find((v) => String(v.hotkey).toLowerCase() === key);
      if (!entry || this.presses.has(event.code)) return;
      event.preventDefault();
      if (!this._canTag()) return;
      const press = {
        entry,
        performerId: this.target,
        intensity: event.shiftKey ? "strong" : "normal",
        down: this._press(event.timeStamp),
        downTimeStamp: event.timeStamp,
        onsetTagId: null,
        timer: null,
      };
      press.timer = setTimeout(() => this._startHold(press), HOLD_MS);
      this.presses.set(event.code, press);
    }

    _startHold(press) {
      press.timer = null;
      if (press.onsetTagId) return;
      press.onsetTagId = this._sendTag("onset", press.entry, press.performerId, press.intensity, press.down, null);
      this._render();
    }

    _endPress(code, timeStamp) {
      const press = this.presses.get(code);
      if (!press) return;
      this.presses.delete(code);
      if (press.timer) clearTimeout(press.timer);
      press.timer = null;
      const heldMs = timeStamp - press.downTimeStamp;
      if (!press.onsetTagId && heldMs < HOLD_MS) {
        this._sendTag("point", press.entry, press.performerId, press.intensity, press.down, null);
        return;
      }
      if (!press.onsetTagId) this._startHold(press); // the timer ran late: onset first
      this._sendTag("offset", press.entry, press.performerId, press.intensity, this._press(timeStamp), press.onsetTagId);
    }

    _onKeyUp(event) {
      if (this.calibration) return;
      if (this.presses.has(event.code)) {
        event.preventDefault();
        this._endPress(event.code, event.timeStamp);
      }
    }

    // The window lost focus with a key down: its keyup will never come; end the hold now.
    _onBlur() {
      const now = performance.now();
      for (const code of [...this.presses.keys()]) this._endPress(code, now);
    }

    // ---- reaction lag ------------------------------------------------------------------

    _sendLag(message) {
      if (this.ready && this._sendRaw(message)) return;
      this.pendingLagMessage = message;
      this._calibrationResult("will be sent when connected");
    }

    setLagMs(ms) {
      const value = Math.round(Number(ms) * 1000);
      if (!Number.isInteger(value) || value < 0) {
        this._setStatus("reaction lag must be a number of ms \u2265 0");
        return;
      }
      this._sendLag({ type: "reaction_lag", lag_us: value });
    }

    calibrate() {
      if (this.calibration) return;
      this._onBlur(); // a key held now would otherwise become a hold spanning the calibration
      const square = el("div", { class: "lt-cal-square", "aria-hidden": "true" });
      const text = el("p", { class: "lt-cal-text", role: "status", "aria-live": "polite" });
      const cancel = el("button", { type: "button", class: "lt-btn", text: "Cancel", "aria-label": "cancel calibration" });
      const overlay = el("div", { class: "livetag-cal", role: "dialog", "aria-modal": "true", "aria-label": "reaction lag calibration" }, [
        el("div", { class: "lt-cal-box" }, [text, square, cancel]),
      ]);
      cancel.addEventListener("click", () => this._endCalibration("calibration cancelled"));
      document.body.append(overlay);
      this.calibration = { overlay, square, text, samples: [], trials: 0, attempts: 0, shownAt: null, waitTimer: null, missTimer: null, waitStart: 0, seq: 0, paused: false };
      this._calibrationNext();
    }

    _calibrationNext() {
      const cal = this.calibration;
      if (!cal) return;
      if (cal.trials >= CALIBRATION_TRIALS || cal.attempts >= CALIBRATION_MAX_ATTEMPTS) {
        const samples = cal.samples.slice();
        this._endCalibration("sending\u2026");
        this._sendLag({ type: "reaction_lag", samples_us: samples });
        return;
      }
      cal.attempts += 1;
      cal.seq += 1;
      const seq = cal.seq;
      cal.paused = false;
      cal.shownAt = null;
      cal.square.classList.remove("is-shown");
      cal.text.textContent = `Trial ${cal.trials + 1} of ${CALIBRATION_TRIALS}: press Space as soon as the square appears.`;
      cal.waitStart = performance.now();
      cal.waitTimer = setTimeout(() => {
        cal.waitTimer = null;
        requestAnimationFrame(() => {
          if (this.calibration !== cal || cal.seq !== seq) return;
          cal.square.classList.add("is-shown"); // painted at the end of this frame...
          // ...so the next frame's start is when it was on screen.
          requestAnimationFrame((frameTs) => {
            if (this.calibration !== cal || cal.seq !== seq) return;
            cal.shownAt = frameTs;
          });
          cal.missTimer = setTimeout(() => {
            cal.missTimer = null;
            if (this.calibration !== cal || cal.seq !== seq) return;
            cal.samples.push(CALIBRATION_MISS_MS * 1000); // missed: the server drops it
            cal.trials += 1;
            this._calibrationNext();
          }, CALIBRATION_MISS_MS);
        });
      }, 1000 + Math.random() * 2000);
    }

    _calibrationKey(event) {
      const cal = this.calibration;
      if (event.key === "Escape") {
        event.preventDefault();
        this._endCalibration("calibration cancelled");
        return;
      }
      if (event.key !== " " && event.code !== "Space") return;
      event.preventDefault();
      if (event.repeat) return;
      if (cal.paused) return;
      if (cal.shownAt === null) {
        // Anticipation: pressed before the square showed. Sent as a 0 µs reaction, which
        // the server drops (< 100 ms); the trial starts over.
        if (cal.waitTimer) clearTimeout(cal.waitTimer);
        cal.waitTimer = null;
        cal.seq += 1; // a frame callback still pending for this trial is void
        cal.paused = true;
        cal.samples.push(0);
        cal.text.textContent = "Too early: wait for the square.";
        setTimeout(() => {
          if (this.calibration === cal) this._calibrationNext();
        }, 600);
        return;
      }
      if (cal.missTimer) clearTimeout(cal.missTimer);
      cal.missTimer = null;
      cal.seq += 1;
      cal.samples.push(Math.max(0, Math.round((event.timeStamp - cal.shownAt) * 1000)));
      cal.trials += 1;
      cal.shownAt = null;
      cal.square.classList.remove("is-shown");
      this._calibrationNext();
    }

    _endCalibration(note) {
      const cal = this.calibration;
      if (!cal) return;
      if (cal.waitTimer) clearTimeout(cal.waitTimer);
      if (cal.missTimer) clearTimeout(cal.missTimer);
      cal.overlay.remove();
      this.calibration = null;
      this._calibrationResult(note);
      if (this.dom && this.dom.calibrate) this.dom.calibrate.focus();
    }

    _calibrationResult(text, isError) {
      if (!this.dom) return;
      this.dom.lagNote.textContent = text || "";
      this.dom.lagNote.classList.toggle("is-error", Boolean(isError));
    }

    // ---- DOM ---------------------------------------------------------------------------

    _setStatus(text) {
      this.statusText = text || "";
      if (this.dom) this.dom.status.textContent = this.statusText;
    }

    _buildDom(mount) {
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
        if (lagInput.value !== "") this.setLagMs(lagInput.value);
      });
      lagInput.addEventListener("keydown", (event) => {
        if (event.key === "Enter" && lagInput.value !== "") this.setLagMs(lagInput.value);
      });
      calibrate.addEventListener("click", () => this.calibrate());
      undo.addEventListener("click", (event) => this.undoLast(event.timeStamp));
      this.dom = { root, conn, unacked, lagValue, lagInput, calibrate, lagNote, targets, labels, status, list, labelButtons: new Map(), chips: new Map() };
    }

    _renderVocabulary() {
      const dom = this.dom;
      dom.labels.replaceChildren();
      dom.labelButtons.clear();
      for (const entry of this.vocabulary) {
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
          if (!this._canTag()) return;
          this._sendTag("point", entry, this.target, event.shiftKey ? "strong" : "normal", this._press(event.timeStamp), null);
        });
        dom.labels.append(button);
        dom.labelButtons.set(entry.label, button);
      }
      dom.targets.replaceChildren();
      dom.chips.clear();
      if (this.targetMode === "self") {
        const name = this._displayName(this.rater.rater_id);
        dom.targets.append(el("span", { class: "lt-self", text: `tagging yourself (${name})` }));
        return;
      }
      this.roster.forEach((performer, index) => {
        const hotkey = index < 9 ? String(index + 1) : "";
        const chip = el(
          "button",
          { type: "button", class: "lt-chip", "aria-label": `tag ${performer.display_name}${hotkey ? ` (key ${hotkey})` : ""}`, "aria-pressed": "false", dataset: { performer: performer.performer_id } },
          [hotkey ? el("kbd", { text: hotkey }) : null, el("span", { text: performer.display_name })],
        );
        chip.addEventListener("click", () => this.selectTarget(performer.performer_id));
        dom.targets.append(chip);
        dom.chips.set(performer.performer_id, chip);
      });
      if (!this.roster.length) dom.targets.append(el("span", { class: "lt-self", text: "no performers in this session" }));
    }

    _displayName(performerId) {
      const performer = (this.roster || []).find((p) => p.performer_id === performerId);
      return performer ? performer.display_name : performerId;
    }

    _render() {
      const dom = this.dom;
      if (!dom) return;
      const state = this.ready ? "live" : this.connected ? "syncing" : this.ws ? "connecting" : "offline";
      dom.conn.dataset.state = state;
      dom.conn.textContent = { live: "\u25cf connected", syncing: "\u25cf syncing clock", connecting: "\u25cf connecting", offline: "\u25cf reconnecting" }[state];
      dom.root.dataset.state = state;
      dom.unacked.textContent = `${this.outbox.size} unacked`;
      dom.unacked.classList.toggle("has-pending", this.outbox.size > 0);
      const lagUs = this.rater && Number.isInteger(this.rater.reaction_lag_us) ? this.rater.reaction_lag_us : this.reactionLagUs;
      dom.lagValue.textContent = lagUs === null || lagUs === undefined ? "\u2014" : `${Math.round(lagUs / 1000)} ms`;
      dom.status.textContent = this.statusText;

      for (const [performerId, chip] of dom.chips) {
        const selected = performerId === this.target;
        chip.classList.toggle("is-selected", selected);
        chip.setAttribute("aria-pressed", String(selected));
      }
      const holding = new Set();
      for (const press of this.presses.values()) if (press.onsetTagId) holding.add(press.entry.label);
      for (const [label, button] of dom.labelButtons) {
        const on = holding.has(label);
        button.classList.toggle("is-holding", on);
        button.setAttribute("aria-pressed", String(on));
      }

      const rows = this.history.slice(-FEEDBACK_ROWS).reverse();
      dom.list.replaceChildren(
        ...rows.map((entry) => {
          const vocab = entry.label ? this._entryFor(entry.label) : null;
          let stateText = "pending\u2026";
          if (entry.state === "acked") stateText = `\u2713 ${Number.isFinite(entry.ts_us) ? formatClock(entry.ts_us) : ""}`;
          else if (entry.state === "held") stateText = "\u2713 held";
          else if (entry.state === "failed") stateText = `\u2717 ${entry.error || "failed"}`;
          return el("li", { class: `lt-item is-${entry.state}${entry.undone ? " is-undone" : ""}`, dataset: { tagId: entry.tag_id } }, [
            el("span", { class: "lt-dot", "aria-hidden": "true", style: { background: vocab ? vocab.colour : "#888" } }),
            el("span", { class: "lt-item-label", text: entry.label || "?" }),
            el("span", { class: "lt-item-target", text: this._displayName(entry.performer_id) }),
            el("span", { class: "lt-item-action", text: ACTION_TEXT[entry.action] || entry.action }),
            el("span", { class: "lt-item-state", text: stateText }),
          ]);
        }),
      );
    }
  }

  window.LivetagTagger = LivetagTagger;
})();
