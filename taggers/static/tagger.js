// livetag tagging widget: hotkeys and buttons that send emotion tags over /ws/tag.
//
// An ES module (no build step) exporting LivetagTagger. The call page (performers tag
// themselves; observers and directors tag any performer) creates one, also when the
// director dashboard loads the call page's module. Protocol: taggers/protocol.py.
//
// This module wires the parts together and decides what each message and key means; each
// part is a module of its own: protocol.js (the wire messages), clock.js (the page's clock
// and its answers to clock probes), connection.js (the websocket and its reconnects),
// keys.js (hotkeys, taps and holds), sent.js (outbox, acks, history), calibration.js (the
// reaction-lag dialog), view.js (the DOM), rating.js (continuous rating: the pad, the
// slider, sampling and batches) and rating_view.js (its DOM).
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
//  - Observers and the director can also rate continuously (rateContinuously): samples of a
//    valence/arousal pad or one label's intensity, at the welcome's rate, go in `ratings`
//    batches with the same durability as tags (kept until acked, re-sent, idempotent on
//    batch_id). Performers keep to hotkeys.
//  - window.livetagTagger is the newest widget: tests, benchmarks and the dashboard (to
//    pick the performer to tag) read it.

import { ReactionCalibration } from "./calibration.js";
import { PageClock, skewUsFromQuery } from "./clock.js";
import { TagConnection } from "./connection.js";
import { Holds, readKeyDown } from "./keys.js";
import * as protocol from "./protocol.js";
import { ContinuousRating, pointValues, readRatingKey } from "./rating.js";
import { RatingView } from "./rating_view.js";
import { SentRatings, SentTags } from "./sent.js";
import { TaggerView, isTypingTarget } from "./view.js";

// A tag refused for a passing reason goes again this much later.
const RETRY_AFTER_MS = 500;

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

// This widget's entries in localStorage, under `prefix:`.
function keyedStorage(prefix) {
  return {
    get(name) {
      try {
        return window.localStorage.getItem(`${prefix}:${name}`);
      } catch (error) {
        return null;
      }
    },
    set(name, value) {
      try {
        if (value === null) window.localStorage.removeItem(`${prefix}:${name}`);
        else window.localStorage.setItem(`${prefix}:${name}`, value);
      } catch (error) {
        // storage full or disabled: the outbox still lives in memory
      }
    },
  };
}

export class LivetagTagger {
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
    this.targetMode = opts.targetMode === "self" ? "self" : "choose";
    this.frameSource = typeof opts.frameSource === "function" ? opts.frameSource : null;
    this.storageKey = opts.storageKey || `livetag-tagger:${tokenHash(String(opts.token))}`;
    this.storage = keyedStorage(this.storageKey);
    this.clock = new PageClock({ skewUs: skewUsFromQuery(location.search) });
    this.sent = new SentTags(this.storage);
    this.sentRatings = new SentRatings(this.storage);
    this.rating = null; // the ContinuousRating, once a welcome allows it
    this.ratingLimits = null; // the welcome's `ratings`

    // Test hooks and state.
    this.errors = [];
    this.connected = false; // welcome received on an open socket
    this.ready = false; // ... and the first clock_probe of that socket answered
    this.rater = null; // the welcome message
    this.reactionLagUs = this._loadLag();

    this.synced = false;
    this.connection = new TagConnection({
      url: this.url,
      hello: async () => {
        const token = await this._currentToken();
        // The page's clock id: the server keeps the clock sync it measured across
        // reconnects, so tags re-sent after a drop are converted with the whole history,
        // not one fresh probe.
        return token ? protocol.hello(token, this.clock.id, this.reactionLagUs) : null;
      },
      onMessage: (message) => this._onMessage(message),
      onStatus: (text) => this._setStatus(text),
      onReset: () => {
        this.synced = false;
        this.ready = false;
        this.connected = false;
        this.sentRatings.reset();
        // Access ended or the session is over: a trace would only pile up unsendable.
        if (this.connection && this.connection.stopped && this.rating) this.rating.stop();
        this._render();
      },
      onChange: () => this._render(),
    });
    this.holds = new Holds({
      onOnset: (press) => this._sendTag("onset", press.entry, press.performerId, press.intensity, press.down, null),
      onPoint: (press) => this._sendTag("point", press.entry, press.performerId, press.intensity, press.down, null),
      onOffset: (press, upTimeStamp) =>
        this._sendTag("offset", press.entry, press.performerId, press.intensity, this.clock.press(upTimeStamp), press.onsetTagId),
      onChange: () => this._render(),
    });
    this.target = null;
    this.pendingLagMessage = null;
    this.calibration = null; // the open ReactionCalibration
    this.statusText = "";

    this.sent.restore();
    this.sentRatings.restore();
    this.view = new TaggerView(opts.mount, {
      setLag: (ms) => this.setLagMs(ms),
      calibrate: () => this.calibrate(),
      undo: (timeStamp) => this.undoLast(timeStamp),
      tapLabel: (entry, strong, timeStamp) => {
        if (!this._canTag()) return;
        this._sendTag("point", entry, this.target, strong ? "strong" : "normal", this.clock.press(timeStamp), null);
      },
      selectTarget: (performerId) => this.selectTarget(performerId),
    });
    this.ratingView = new RatingView(this.view.dom.root, this.view.dom.status, {
      setMode: (mode, label) => (mode ? this.rateContinuously(mode, label) : this.stopRating()),
      place: (fx, fy) => {
        if (this.rating && this.rating.active) this.rating.place(pointValues(this.rating.mode, fx, fy));
      },
    });
    this._onVisibility = () => {
      // Hidden: the samples taken so far go out now, not when a throttled timer next runs.
      if (this.rating && document.visibilityState === "hidden") this.rating.sampleNow(0);
      this._renderRating();
    };
    document.addEventListener("visibilitychange", this._onVisibility);
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

  // What tests and benchmarks read, where they always found it.
  get outbox() {
    return this.sent.outbox;
  }

  get acked() {
    return this.sent.acked;
  }

  get failed() {
    return this.sent.failed;
  }

  get lastPresses() {
    return this.sent.lastPresses;
  }

  get history() {
    return this.sent.history;
  }

  get skewUs() {
    return this.clock.skewUs;
  }

  get ws() {
    return this.connection.ws;
  }

  get connects() {
    return this.connection.connects;
  }

  get stopped() {
    return this.connection.stopped;
  }

  clientNowUs() {
    return this.clock.nowUs();
  }

  _loadLag() {
    const raw = this.storage.get("reaction_lag_us");
    const value = raw === null ? NaN : Number(raw);
    return Number.isInteger(value) && value >= 0 ? value : null;
  }

  // ---- connection --------------------------------------------------------------------

  connect() {
    this.connection.connect();
  }

  async _currentToken() {
    try {
      const source = this.tokenSource;
      return typeof source === "function" ? await source() : source;
    } catch (error) {
      return null;
    }
  }

  disconnectForTest() {
    this.connection.drop();
  }

  _sendRaw(message) {
    return this.connection.send(message);
  }

  _onMessage(message) {
    switch (message.type) {
      case "clock_probe":
        this._sendRaw(this.clock.reply(message));
        if (!this.synced) {
          this.synced = true;
          this._maybeReady();
        }
        break;
      case "welcome":
        this.rater = message;
        this.connected = true;
        this.connection.welcomed();
        this._onWelcome(message);
        this._maybeReady();
        break;
      case "ack":
        this.sent.ack(message);
        this._render();
        break;
      case "ratings_ack":
        this.sentRatings.ack(message);
        this._pumpRatings();
        this._renderRating();
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
          this.storage.set("reaction_lag_us", String(message.lag_us));
          if (this.rater) this.rater.reaction_lag_us = message.lag_us;
          this._showLagNote(`lag set to ${Math.round(message.lag_us / 1000)} ms`);
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
    this._pumpRatings();
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
    this.view.showVocabulary({
      vocabulary: this.vocabulary,
      roster: this.roster,
      targetMode: this.targetMode,
      selfName: this.targetMode === "self" ? this._displayName(this.rater.rater_id) : null,
    });
    this._setUpRating(message.ratings);
    this._render();
  }

  _onError(message) {
    this.errors.push(message);
    if (typeof message.batch_id === "string" && message.batch_id) {
      this._onRatingError(message);
      return;
    }
    const tagId = message.tag_id;
    if (typeof tagId === "string" && tagId) {
      if (protocol.isRetryable(message.code)) {
        if (this.outbox.has(tagId)) {
          setTimeout(() => {
            const pending = this.outbox.get(tagId);
            if (pending && this.ready) this._sendRaw(pending);
          }, RETRY_AFTER_MS);
        }
      } else {
        this.sent.fail(message);
      }
    } else {
      this._setStatus(`${message.code}: ${message.message}`);
      if (message.code === "calibration_failed") this._showLagNote(message.message, true);
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
      return protocol.frameOnScreen(this.frameSource(performerId, unixMs));
    } catch (error) {
      console.warn("livetag tagger: frameSource failed", error);
    }
    return null;
  }

  _enqueue(message, press) {
    this.sent.add(message, press);
    if (this.ready) this._sendRaw(message);
    this._render();
    return message.tag_id;
  }

  _sendTag(action, entry, performerId, intensity, press, onsetTagId) {
    const frame = this._frameAt(performerId, press.unixMs);
    const message = protocol.tag({ action, entry, performerId, intensity, clientPressUs: press.clientUs, onsetTagId, frame });
    return this._enqueue(message, press);
  }

  _sendUndo(press) {
    const entry = this.sent.lastUndoable();
    if (!entry) {
      this._setStatus("nothing to undo");
      return null;
    }
    return this._enqueue(protocol.undo(entry.tag_id, entry.performer_id, press.clientUs), press);
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
    return this._sendTag("point", entry, performerId, "normal", this.clock.press(timeStamp), null);
  }

  // Public: undo this rater's last tag that was not undone. Returns the undo's tag_id.
  undoLast(timeStamp) {
    return this._sendUndo(this.clock.press(timeStamp));
  }

  selectTarget(performerId) {
    if (this.targetMode === "self") return;
    if (!(this.roster || []).some((p) => p.performer_id === performerId)) return;
    this.target = performerId;
    if (this.rating) this.rating.setTarget(performerId);
    this._render();
  }

  // ---- continuous rating -------------------------------------------------------------

  // The welcome says whether this rater may rate continuously, and at which rate.
  _setUpRating(limits) {
    const usable = Boolean(limits) && Number.isInteger(limits.rate_hz) && this.targetMode !== "self";
    this.ratingLimits = usable ? limits : null;
    if (usable && !this.rating) {
      this.rating = new ContinuousRating({
        rateHz: limits.rate_hz,
        batchMs: limits.batch_ms,
        maxSamples: limits.max_samples,
        now: () => this.clock.press(performance.now()),
        frameAt: (performerId, unixMs) => {
          const frame = this._frameAt(performerId, unixMs);
          return frame ? frame.rtp_timestamp : null;
        },
        pads: () => (typeof navigator.getGamepads === "function" ? navigator.getGamepads() : null),
        paused: () => document.visibilityState === "hidden" || Boolean(this.calibration),
        onBatch: (batch) => this._queueBatch(batch),
        onChange: () => this._renderRating(),
      });
      if (Number.isInteger(limits.in_flight) && limits.in_flight > 0) this.sentRatings.window = Math.min(limits.in_flight, 8);
    }
    if (!usable && this.rating) this.rating.stop();
    this.ratingView.showModes(usable, this.vocabulary || []);
  }

  // Public: rate the current target continuously, on the valence/arousal pad or the
  // intensity of `label` (a label of the session). Sampling starts at the rater's first
  // move of the point.
  rateContinuously(mode, label) {
    if (!this.rating) {
      this._setStatus("continuous rating is for observers and the director, after the welcome");
      return false;
    }
    if (!this._canTag()) return false;
    let chosen = null;
    if (mode === "intensity") {
      chosen = this._entryFor(label) ? label : (this.vocabulary || [])[0]?.label;
      if (!chosen) return false;
    }
    this.rating.start(mode, chosen, this.target);
    this._render();
    return true;
  }

  stopRating() {
    if (this.rating) this.rating.stop();
    this._render();
  }

  _queueBatch(batch) {
    const message = protocol.ratings({ batchId: protocol.newTagId(), ...batch });
    this.sentRatings.add(message);
    this._pumpRatings();
    this._renderRating();
  }

  // Send what the window allows: the oldest unacknowledged batches first.
  _pumpRatings() {
    if (!this.ready) return;
    for (const message of this.sentRatings.due()) {
      if (!this._sendRaw(message)) return;
      this.sentRatings.sending(message.batch_id);
    }
  }

  _onRatingError(message) {
    const batchId = message.batch_id;
    if (protocol.isRetryable(message.code)) {
      this.sentRatings.retryLater(batchId);
      setTimeout(() => this._pumpRatings(), RETRY_AFTER_MS);
    } else {
      this.sentRatings.fail(message);
      this._setStatus(`continuous rating: ${message.code}: ${message.message}`);
      // The session takes no more: the trace stops rather than pile up refusals.
      if (message.code === "session_ended" && this.rating) this.rating.stop();
      this._pumpRatings();
    }
    this._renderRating();
  }

  _onRatingKey(event) {
    if (!this.rating || !this.rating.active || isTypingTarget(event.target)) return false;
    const intent = readRatingKey(event, this.rating.mode);
    if (!intent) return false;
    event.preventDefault();
    if (intent.kind === "centre") this.rating.centre();
    else this.rating.nudge(intent.deltas);
    return true;
  }

  _renderRating() {
    if (!this.ratingView) return;
    const rating = this.rating;
    this.ratingView.render({
      mode: rating ? rating.mode : null,
      label: rating ? rating.label : null,
      values: rating ? rating.values : { valence: 0, arousal: 0, intensity: 0 },
      state: rating ? rating.state() : "off",
      rateHz: this.ratingLimits ? this.ratingLimits.rate_hz : null,
      unacked: this.sentRatings.size,
      acked: this.sentRatings.ackedSamples,
      dropped: this.sentRatings.dropped,
      failed: this.sentRatings.failed.length,
    });
  }

  // ---- keyboard ----------------------------------------------------------------------

  _onKeyDown(event) {
    if (this.calibration) {
      this.calibration.onKey(event);
      return;
    }
    if (this._onRatingKey(event)) return;
    const { prevent, intent } = readKeyDown(event, {
      typing: isTypingTarget(event.target),
      held: this.holds.has(event.code),
      joined: Boolean(this.rater),
      targetMode: this.targetMode,
      roster: this.roster,
      vocabulary: this.vocabulary,
    });
    if (prevent) event.preventDefault();
    if (!intent) return;
    if (intent.kind === "undo") {
      this._sendUndo(this.clock.press(event.timeStamp));
    } else if (intent.kind === "target") {
      this.selectTarget(intent.performerId);
    } else if (this._canTag()) {
      this.holds.begin(event.code, {
        entry: intent.entry,
        performerId: this.target,
        intensity: intent.intensity,
        down: this.clock.press(event.timeStamp),
        downTimeStamp: event.timeStamp,
      });
    }
  }

  _onKeyUp(event) {
    if (this.calibration) return;
    if (this.holds.has(event.code)) {
      event.preventDefault();
      this.holds.end(event.code, event.timeStamp);
    }
  }

  // The window lost focus with a key down: its keyup will never come; end the hold now.
  _onBlur() {
    this.holds.endAll(performance.now());
  }

  // ---- reaction lag ------------------------------------------------------------------

  _sendLag(message) {
    if (this.ready && this._sendRaw(message)) return;
    this.pendingLagMessage = message;
    this._showLagNote("will be sent when connected");
  }

  setLagMs(ms) {
    const value = Math.round(Number(ms) * 1000);
    if (!Number.isInteger(value) || value < 0) {
      this._setStatus("reaction lag must be a number of ms \u2265 0");
      return;
    }
    this._sendLag(protocol.reactionLag(value));
  }

  // kind: "squares" or "clip"; none: the dialog lets the rater choose.
  calibrate(kind) {
    if (this.calibration) return;
    this._onBlur(); // a key held now would otherwise become a hold spanning the calibration
    this.calibration = new ReactionCalibration({
      onFinish: (samplesUs) => this._sendLag(protocol.reactionLagFromSamples(samplesUs)),
      onEnd: (note) => {
        this.calibration = null;
        this._showLagNote(note);
        this.view.focusCalibrate();
      },
    });
    this.calibration.start(kind);
  }

  // ---- view --------------------------------------------------------------------------

  _showLagNote(text, isError) {
    if (this.view) this.view.showLagNote(text, isError);
  }

  _setStatus(text) {
    this.statusText = text || "";
    if (this.view) this.view.showStatus(this.statusText);
  }

  _displayName(performerId) {
    const performer = (this.roster || []).find((p) => p.performer_id === performerId);
    return performer ? performer.display_name : performerId;
  }

  _render() {
    if (!this.view) return;
    const state = this.ready ? "live" : this.connected ? "syncing" : this.connection.ws ? "connecting" : "offline";
    const lagUs = this.rater && Number.isInteger(this.rater.reaction_lag_us) ? this.rater.reaction_lag_us : this.reactionLagUs;
    this.view.render({
      state,
      unacked: this.outbox.size,
      lagUs,
      status: this.statusText,
      target: this.target,
      holding: this.holds.holdingLabels(),
      history: this.sent.history,
      entryOf: (label) => this._entryFor(label),
      nameOf: (performerId) => this._displayName(performerId),
    });
    this._renderRating();
  }
}
