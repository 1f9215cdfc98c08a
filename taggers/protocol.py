"""The tag protocol: messages between a tagging client and the tag service, sans I/O.

One websocket per tagging client (performer page, observer page, dashboard), JSON text
messages with a ``type``. Nothing here reads a clock or touches a socket: the service
passes ``now_us`` in and sends what comes out, so every rule is tested as plain functions.

Client -> server                           Server -> client
  hello         the join token first         welcome       who you are, roster, vocabulary
  clock_reply   echo of each clock_probe     clock_probe   NTP-style probe (taggers.clock)
  tag           onset / offset / point       ack           tag_id stored, with its ts_us
  undo          retract one of my tags       error         code + message (+ tag_id)
  reaction_lag  set or calibrate my lag      reaction_lag  the lag now applied

A tag carries the client's own key-press time; the service converts it to the session
clock with the connection's clock estimate and subtracts the rater's reaction lag. A tag
pressed while watching a performer's video also carries the RTP timestamp of the frame on
screen, and then lands on that frame's capture instant instead (DESIGN.md, Time model).
Every conversion input is kept in the tag (``TagTiming``) so it can be audited or redone.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError

from streams import records, strict_json
from streams.errors import BadInputError
from streams.records import Intensity, Label, ParticipantId, TagId
from taggers.clock import ClockEstimate, ClockReply

__all__ = [
    "MIN_CALIBRATION_SAMPLES",
    "ClientMessage",
    "FrameOnScreen",
    "Hello",
    "ProtocolError",
    "RateLimiter",
    "ReactionLag",
    "TagLimits",
    "TagMessage",
    "UndoMessage",
    "ack",
    "check_tag",
    "error",
    "parse_client_message",
    "reaction_lag_from_samples",
    "tag_event",
    "welcome",
]

_ClientTime = Annotated[StrictInt, Field(ge=0, lt=2**62, description="Client clock, µs.")]


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Hello(_Message):
    type: Literal["hello"]
    token: Annotated[str, Field(min_length=1, max_length=2048)]
    reaction_lag_us: Annotated[StrictInt, Field(ge=0)] | None = Field(
        default=None, description="The lag this client calibrated earlier, re-applied."
    )
    clock_id: TagId | None = Field(
        default=None,
        description=(
            "Names the client's clock (one per page load): a reconnect with the same id "
            "keeps the clock sync measured so far."
        ),
    )


class FrameOnScreen(_Message):
    """The target performer's frame on the rater's screen at the key press."""

    rtp_timestamp: Annotated[StrictInt, Field(ge=0, lt=2**32)]


class TagMessage(_Message):
    type: Literal["tag"]
    tag_id: TagId
    action: Literal["onset", "offset", "point"]
    performer_id: ParticipantId
    label: Label
    intensity: Intensity = "normal"
    client_press_us: _ClientTime
    span_us: Annotated[StrictInt, Field(gt=0, le=60_000_000)] | None = None
    onset_tag_id: TagId | None = None
    frame: FrameOnScreen | None = None


class UndoMessage(_Message):
    type: Literal["undo"]
    tag_id: TagId
    undoes_tag_id: TagId
    performer_id: ParticipantId
    client_press_us: _ClientTime


class ReactionLag(_Message):
    """Set the rater's reaction lag: directly, or from calibration reaction times."""

    type: Literal["reaction_lag"]
    lag_us: Annotated[StrictInt, Field(ge=0)] | None = None
    samples_us: Annotated[list[StrictInt], Field(max_length=100)] | None = None


ClientMessage = Annotated[
    Hello | ClockReply | TagMessage | UndoMessage | ReactionLag, Field(discriminator="type")
]
_CLIENT_MESSAGE: TypeAdapter[Hello | ClockReply | TagMessage | UndoMessage | ReactionLag]
_CLIENT_MESSAGE = TypeAdapter(ClientMessage)


class ProtocolError(BadInputError, ValueError):
    """A message the service refuses; ``code`` is stable, ``message`` is for people."""

    def __init__(self, code: str, message: str, tag_id: str | None = None) -> None:
        self.code = code
        self.message = message
        self.tag_id = tag_id
        super().__init__(f"{code}: {message}")

    def to_message(self) -> dict[str, Any]:
        return error(self.code, self.message, self.tag_id)


@dataclass(frozen=True, slots=True)
class TagLimits:
    max_message_bytes: int = 4096
    rate_per_s: float = 20.0
    burst: int = 256
    default_span_us: int = 500_000
    max_reaction_lag_us: int = 1_500_000


def parse_client_message(
    raw: str | bytes, max_bytes: int
) -> Hello | ClockReply | TagMessage | UndoMessage | ReactionLag:
    """The message in one websocket frame, or :class:`ProtocolError` saying what is wrong."""
    if isinstance(raw, bytes):
        raise ProtocolError("malformed", "binary messages are not accepted: send JSON text")
    # Measured before parsing (the parser reports its own size refusal as malformed).
    if len(raw) > max_bytes or len(raw.encode("utf-8", "surrogatepass")) > max_bytes:
        raise ProtocolError("too_big", f"message is over {max_bytes} bytes")
    try:
        document = strict_json.loads_object(raw, max_bytes=max_bytes)
    except strict_json.JsonInputError as exc:
        raise ProtocolError("malformed", exc.reason) from None
    tag_id = document.get("tag_id")
    try:
        return _CLIENT_MESSAGE.validate_python(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "message"
        raise ProtocolError(
            "malformed", f"{where}: {first['msg']}", tag_id if isinstance(tag_id, str) else None
        ) from None


class RateLimiter:
    """Token bucket: ``burst`` messages at once, ``rate_per_s`` sustained."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_us = rate_per_s / 1e6
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at_us: int | None = None

    def allow(self, now_us: int) -> bool:
        if self._at_us is not None:
            elapsed = max(0, now_us - self._at_us)
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate_per_us)
        self._at_us = now_us
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def check_tag(
    message: TagMessage | UndoMessage,
    session: records.SessionRecord,
    rater_id: str,
    role: records.Role,
) -> None:
    """Refuse a tag naming a label or performer the session does not have, or a target
    the rater may not tag (a performer tags only themself)."""
    tag_id = message.tag_id
    roster = {performer.performer_id for performer in session.roster}
    if message.performer_id not in roster:
        raise ProtocolError(
            "unknown_performer",
            f"performer {message.performer_id!r} is not in session {session.session_id!r}",
            tag_id,
        )
    if role == "performer" and message.performer_id != rater_id:
        raise ProtocolError("forbidden", "a performer tags only themself", tag_id)
    if isinstance(message, TagMessage):
        labels = {entry.label: entry for entry in session.vocabulary}
        if message.label not in labels:
            raise ProtocolError(
                "unknown_label",
                f"label {message.label!r} is not in this session's vocabulary",
                tag_id,
            )
        if message.intensity != "normal" and not labels[message.label].intensity:
            raise ProtocolError(
                "malformed", f"label {message.label!r} takes no intensity in this session", tag_id
            )
        if (message.action == "offset") != (message.onset_tag_id is not None):
            raise ProtocolError(
                "malformed", "an offset names onset_tag_id, and only an offset does", tag_id
            )
        if message.action != "point" and message.span_us is not None:
            raise ProtocolError("malformed", "span_us is for point tags only", tag_id)


@dataclass(slots=True)
class FrameCapture:
    """What the service found for a tag's frame on screen."""

    rtp_timestamp: int
    capture_ts_us: int | None


def tag_event(
    message: TagMessage | UndoMessage,
    *,
    session_id: str,
    rater_id: str,
    role: records.Role,
    estimate: ClockEstimate | None,
    reaction_lag_us: int,
    frame: FrameCapture | None,
    default_span_us: int,
    received_us: int,
) -> records.TagEvent:
    """The tag on the session clock: the record produced to ``livetag.tags``.

    Key-press basis: the press converted with the clock estimate. Frame basis (when the
    frame on screen was found): that frame's capture instant, which is what the rater saw.
    Either way the rater's reaction lag is subtracted, and everything used is recorded.
    """
    if estimate is None:
        raise ProtocolError(
            "not_synced",
            "no clock reply from this connection yet: answer a clock_probe, then re-send",
            message.tag_id,
        )
    press_session_us = estimate.to_session_us(message.client_press_us)
    # A press cannot come after its own receipt (beyond the clock's error), and a tag from
    # before the session's records are kept is no tag of this scene: both are client bugs
    # or forgeries, refused rather than kept forever by every consumer.
    slack_us = estimate.uncertainty_at(received_us) + _FUTURE_SLACK_US
    if press_session_us > received_us + slack_us:
        raise ProtocolError(
            "bad_time",
            f"key press {(press_session_us - received_us) / 1000:.0f} ms after it was received",
            message.tag_id,
        )
    if press_session_us < received_us - _OLDEST_PRESS_US:
        raise ProtocolError("bad_time", "key press is more than an hour old", message.tag_id)
    basis: Literal["key_press", "frame_on_screen"] = "key_press"
    instant_us = press_session_us
    if frame is not None and frame.capture_ts_us is not None:
        basis = "frame_on_screen"
        instant_us = frame.capture_ts_us
    timing = records.TagTiming(
        client_press_ts_us=message.client_press_us,
        clock_offset_us=estimate.offset_at(press_session_us),
        rtt_us=estimate.rtt_us,
        clock_uncertainty_us=estimate.uncertainty_at(press_session_us),
        reaction_lag_us=reaction_lag_us,
        media_rtp_timestamp=None if frame is None else frame.rtp_timestamp,
        media_capture_ts_us=None if frame is None else frame.capture_ts_us,
        basis=basis,
    )
    common: dict[str, Any] = {
        "ts_us": max(0, instant_us - reaction_lag_us),
        "session_id": session_id,
        "performer_id": message.performer_id,
        "tag_id": message.tag_id,
        "rater_id": rater_id,
        "rater_role": role,
        "timing": timing,
        "received_ts_us": received_us,
    }
    if isinstance(message, UndoMessage):
        return records.TagEvent(action="undo", undoes_tag_id=message.undoes_tag_id, **common)
    span = None
    if message.action == "point":
        span = default_span_us if message.span_us is None else message.span_us
    return records.TagEvent(
        action=message.action,
        label=message.label,
        intensity=message.intensity,
        span_us=span,
        onset_tag_id=message.onset_tag_id,
        **common,
    )


_FUTURE_SLACK_US = 50_000
_OLDEST_PRESS_US = 3_600_000_000

MIN_CALIBRATION_SAMPLES = 5
_ANTICIPATION_US = 100_000  # faster than any visual reaction: the key was pressed early


def reaction_lag_from_samples(samples_us: list[int], max_lag_us: int) -> int:
    """A rater's reaction lag from calibration trials (stimulus shown -> key pressed).

    Presses faster than 100 ms anticipated the stimulus and slower than the maximum were
    missed: both are dropped. The median of the rest resists the odd distracted trial.
    """
    kept = [sample for sample in samples_us if _ANTICIPATION_US <= sample <= max_lag_us]
    if len(kept) < MIN_CALIBRATION_SAMPLES:
        raise ProtocolError(
            "calibration_failed",
            f"{len(kept)} of {len(samples_us)} reactions were between "
            f"{_ANTICIPATION_US // 1000} and {max_lag_us // 1000} ms; "
            f"at least {MIN_CALIBRATION_SAMPLES} are needed: run the calibration again",
        )
    return round(statistics.median(kept))


def resolve_reaction_lag(message: ReactionLag, max_lag_us: int) -> int:
    """The lag a ``reaction_lag`` message asks for, validated."""
    if (message.lag_us is None) == (message.samples_us is None):
        raise ProtocolError("malformed", "give exactly one of lag_us and samples_us")
    if message.samples_us is not None:
        return reaction_lag_from_samples(message.samples_us, max_lag_us)
    assert message.lag_us is not None
    if message.lag_us > max_lag_us:
        raise ProtocolError(
            "malformed", f"lag_us {message.lag_us} is over the maximum {max_lag_us}"
        )
    return message.lag_us


def welcome(
    session: records.SessionRecord,
    *,
    rater_id: str,
    role: records.Role,
    reaction_lag_us: int,
    limits: TagLimits,
) -> dict[str, Any]:
    return {
        "type": "welcome",
        "session_id": session.session_id,
        "rater_id": rater_id,
        "role": role,
        "roster": [performer.model_dump() for performer in session.roster],
        "vocabulary": [entry.model_dump() for entry in session.vocabulary],
        "reaction_lag_us": reaction_lag_us,
        "default_span_us": limits.default_span_us,
        "limits": {
            "max_message_bytes": limits.max_message_bytes,
            "rate_per_s": limits.rate_per_s,
            "burst": limits.burst,
            "max_reaction_lag_us": limits.max_reaction_lag_us,
        },
    }


def ack(tag: records.TagEvent, *, duplicate: bool, held: bool) -> dict[str, Any]:
    """``held``: the broker was unreachable and the tag waits in the durable spool."""
    return {
        "type": "ack",
        "tag_id": tag.tag_id,
        "ts_us": tag.ts_us,
        "basis": tag.timing.basis,
        "duplicate": duplicate,
        "held": held,
    }


def error(code: str, message: str, tag_id: str | None = None) -> dict[str, Any]:
    payload: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if tag_id is not None:
        payload["tag_id"] = tag_id
    return payload


@dataclass(slots=True)
class TagLedger:
    """The tags a session's service has stored, by tag_id: what makes re-sends idempotent.

    Bounded: the oldest entries go first once ``capacity`` is reached (a client re-sends
    only what it sent in the last minutes; the aligner dedupes on tag_id as well).
    """

    capacity: int = 200_000
    _tags: dict[str, records.TagEvent] = field(default_factory=dict)

    def get(self, tag_id: str) -> records.TagEvent | None:
        return self._tags.get(tag_id)

    def remember(self, tag: records.TagEvent) -> None:
        self._tags[tag.tag_id] = tag
        while len(self._tags) > self.capacity:
            del self._tags[next(iter(self._tags))]

    def __len__(self) -> int:
        return len(self._tags)
