// The tag protocol as the widget speaks it: the messages it sends to the tag service and
// how it reads the service's answers and close codes. The browser half of
// taggers/protocol.py (which checks every field named here), kept apart so the wire
// format lives in one place, readable beside the Python, with no DOM and no socket.
//
// Client -> server: hello, tag (point / onset / offset), undo, reaction_lag, ratings (a
// batch of continuous rating samples); clock_reply is the clock's (clock.js). Server ->
// client: welcome, clock_probe, ack, ratings_ack, error, credential, reaction_lag.

// TagId in streams/records.py.
const TAG_ID_RE = /^[A-Za-z0-9_-]{8,64}$/;

// Refusals a later re-send can pass: the tag waits in the outbox and goes again.
const RETRYABLE_CODES = new Set(["too_frequent", "not_synced", "unavailable"]);

export function isTagId(value) {
  return typeof value === "string" && TAG_ID_RE.test(value);
}

// A fresh tag_id (also names the page's clock): random, so re-sends stay idempotent.
export function newTagId() {
  const c = globalThis.crypto;
  if (c && typeof c.randomUUID === "function") {
    try {
      const id = c.randomUUID();
      if (isTagId(id)) return id;
    } catch (error) {
      // not a secure context: fall through
    }
  }
  const bytes = new Uint8Array(16);
  if (c && typeof c.getRandomValues === "function") c.getRandomValues(bytes);
  else for (let i = 0; i < bytes.length; i += 1) bytes[i] = Math.floor(Math.random() * 256);
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

// The first message on every connection. clock_id names the page's clock: the service
// keeps the clock sync measured under it across reconnects.
export function hello(token, clockId, reactionLagUs) {
  const message = { type: "hello", token, clock_id: clockId };
  if (reactionLagUs !== null && reactionLagUs !== undefined) message.reaction_lag_us = reactionLagUs;
  return message;
}

// A tag of `action` ("point", "onset", "offset") for a vocabulary entry. Shift = strong,
// where the session's vocabulary gives the label an intensity. `frame`: the performer's
// frame on screen at the press (frameOnScreen), if known.
export function tag({ action, entry, performerId, intensity, clientPressUs, onsetTagId, frame }) {
  const message = {
    type: "tag",
    tag_id: newTagId(),
    action,
    performer_id: performerId,
    label: entry.label,
    intensity: intensity === "strong" && entry.intensity !== false ? "strong" : "normal",
    client_press_us: clientPressUs,
  };
  if (onsetTagId) message.onset_tag_id = onsetTagId;
  if (frame) message.frame = frame;
  return message;
}

export function undo(undoesTagId, performerId, clientPressUs) {
  return {
    type: "undo",
    tag_id: newTagId(),
    undoes_tag_id: undoesTagId,
    performer_id: performerId,
    client_press_us: clientPressUs,
  };
}

// The rater's reaction lag, set directly (µs).
export function reactionLag(lagUs) {
  return { type: "reaction_lag", lag_us: lagUs };
}

// The rater's reaction lag, from calibration reaction times (µs): the service drops the
// implausible ones and keeps their median.
export function reactionLagFromSamples(samplesUs) {
  return { type: "reaction_lag", samples_us: samplesUs };
}

// The frame a frame source named, as FrameOnScreen takes it (an RTP timestamp, 32 bits),
// or null if it is not one.
export function frameOnScreen(frame) {
  if (!frame) return null;
  const rtp = frame.rtp_timestamp;
  return Number.isInteger(rtp) && rtp >= 0 && rtp < 2 ** 32 ? { rtp_timestamp: rtp } : null;
}

// A batch of one continuous rater's samples of one performer: `samples` are
// [client_ts_us, value..., rtp_timestamp or null], one value per dimension of the mode
// (valence and arousal, or intensity). `label`: the emotion an intensity rates.
export function ratings({ batchId, performerId, mode, label, rateHz, samples }) {
  const message = { type: "ratings", batch_id: batchId, performer_id: performerId, mode, rate_hz: rateHz, samples };
  if (mode === "intensity") message.label = label;
  return message;
}

// A message kept from an earlier page load that may be sent again as it is.
export function isResendable(message) {
  return Boolean(message) && isTagId(message.tag_id) && (message.type === "tag" || message.type === "undo");
}

// A rating batch kept from an earlier page load that may be sent again as it is.
export function isResendableBatch(message) {
  return Boolean(message) && message.type === "ratings" && isTagId(message.batch_id) && Array.isArray(message.samples) && message.samples.length > 0;
}

// A server message, or null for text that is not JSON.
export function parseServerMessage(text) {
  try {
    return JSON.parse(text);
  } catch (error) {
    return null;
  }
}

export function isRetryable(code) {
  return RETRYABLE_CODES.has(code);
}

// What a closed connection means: "final" (the link was revoked or ran out, or the
// session is over: 4403, 4410, 4409, taggers/credentials.py), "refused" (a close code
// 4400-4599 carries a refusal's reason, streams.runtime.connection_gate), else "lost".
export function closeKind(code) {
  if (code === 4403 || code === 4409 || code === 4410) return "final";
  if (code >= 4400 && code < 4600) return "refused";
  return "lost";
}

// "revoked: your links ..." -> the part for people.
export function finalCloseMessage(reason) {
  return String(reason || "access ended").replace(/^[a-z_]+: /, "");
}
