"""The tag protocol: messages between a tagging client and the tag service, sans I/O.

One websocket per tagging client (performer page, observer page, dashboard), JSON text
messages with a ``type``. Nothing here reads a clock or touches a socket: the service
passes ``now_us`` in and sends what comes out, so every rule is tested as plain functions.

Client -> server                           Server -> client
  hello         the join token first         welcome       who you are, roster, vocabulary
  clock_reply   echo of each clock_probe     clock_probe   NTP-style probe (taggers.clock)
  tag           onset / offset / point       ack           tag_id stored, with its ts_us
  undo          retract one of my tags       error         code + message (+ tag_id or
  reaction_lag  set or calibrate my lag                    batch_id)
  ratings       a batch of continuous        reaction_lag  the lag now applied
                rating samples               ratings_ack   batch_id stored, its first and
                                                           last sample's ts_us

A tag carries the client's own key-press time; the service converts it to the session
clock with the connection's clock estimate and subtracts the rater's reaction lag. A tag
pressed while watching a performer's video also carries the RTP timestamp of the frame on
screen, and then lands on that frame's capture instant instead (DESIGN.md, Time model).
Every conversion input is kept in the tag (``TagTiming``) so it can be audited or redone.

A ``ratings`` batch is a continuous rater's trace of one performer (a valence/arousal pad or
one label's intensity), sampled at a fixed rate: each sample is converted like a tag press
(or lands on its frame on screen), but the reaction lag is only recorded, not subtracted:
the aligner corrects a trace with the lag it estimates (``records.RatingBatch``).
"""

from __future__ import annotations

import statistics
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, TypeAdapter, ValidationError

from streams import records, strict_json
from streams.errors import BadInputError
from streams.records import Intensity, Label, Number, ParticipantId, RatingMode, TagId
from taggers.clock import ClockEstimate, ClockReply

__all__ = [
    "MIN_CALIBRATION_SAMPLES",
    "PAGE_OUTBOX_BATCHES",
    "RATER_BATCHES_REMEMBERED",
    "RATING_RATES_HZ",
    "BatchLedger",
    "ClientMessage",
    "FrameOnScreen",
    "Hello",
    "ProtocolError",
    "RateLimiter",
    "RatingSampleIn",
    "RatingsMessage",
    "ReactionLag",
    "StoredBatch",
    "TagLimits",
    "TagMessage",
    "UndoMessage",
    "ack",
    "check_ratings",
    "check_tag",
    "error",
    "parse_client_message",
    "rating_batch",
    "ratings_ack",
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


#: The sampling rates a continuous rater may use: the range continuous-annotation tools
#: (CARMA, DARMA, PAGAN, RankTrace) read the rater's control at.
RATING_RATES_HZ = range(10, 31)

#: One sample as it travels: [client_ts_us, value..., rtp_timestamp or null], one value per
#: dimension of the mode (valence and arousal, or intensity). Checked by check_ratings,
#: which names the sample and what is wrong with it.
_WireSample = Annotated[list[Number | None], Field(min_length=2, max_length=5)]


class RatingsMessage(_Message):
    """A batch of one continuous rater's samples of one performer."""

    type: Literal["ratings"]
    batch_id: TagId
    performer_id: ParticipantId
    mode: RatingMode
    label: Label | None = None
    rate_hz: StrictInt
    samples: Annotated[list[_WireSample], Field(min_length=1)]


AnyClientMessage = Hello | ClockReply | TagMessage | UndoMessage | ReactionLag | RatingsMessage
ClientMessage = Annotated[AnyClientMessage, Field(discriminator="type")]
_CLIENT_MESSAGE: TypeAdapter[AnyClientMessage] = TypeAdapter(ClientMessage)


class ProtocolError(BadInputError, ValueError):
    """A message the service refuses; ``code`` is stable, ``message`` is for people.
    ``tag_id`` or ``batch_id`` names the tag or rating batch refused, when there is one."""

    def __init__(
        self, code: str, message: str, tag_id: str | None = None, *, batch_id: str | None = None
    ) -> None:
        self.code = code
        self.message = message
        self.tag_id = tag_id
        self.batch_id = batch_id
        super().__init__(f"{code}: {message}")

    def to_message(self) -> dict[str, Any]:
        return error(self.code, self.message, self.tag_id, batch_id=self.batch_id)


@dataclass(frozen=True, slots=True)
class TagLimits:
    max_message_bytes: int = 4096
    rate_per_s: float = 20.0
    burst: int = 256
    default_span_us: int = 500_000
    max_reaction_lag_us: int = 1_500_000
    # Continuous ratings have a budget of their own: a 20 Hz trace in two batches a second
    # would otherwise eat the tag budget, and a page re-sends minutes of batches after a
    # reconnect. Both buckets must allow a batch: one counts batches, one samples.
    rating_rate_hz: int = 20
    rating_batch_ms: int = 500
    max_rating_samples: int = records.MAX_RATING_SAMPLES
    # A batch of MAX_RATING_SAMPLES samples of [time, 2 values, rtp] is about 40 KB.
    max_rating_message_bytes: int = 64 * 1024
    rating_batches_per_s: float = 20.0
    rating_batch_burst: int = 200
    rating_samples_per_s: float = 600.0
    rating_sample_burst: int = 12_000
    rating_in_flight: int = 32


def parse_client_message(
    raw: str | bytes, max_bytes: int, *, max_ratings_bytes: int | None = None
) -> AnyClientMessage:
    """The message in one websocket frame, or :class:`ProtocolError` saying what is wrong.

    Every message is at most ``max_bytes``, but a ``ratings`` batch, which may be larger,
    is at most ``max_ratings_bytes`` (default: ``max_bytes`` too)."""
    if isinstance(raw, bytes):
        raise ProtocolError("malformed", "binary messages are not accepted: send JSON text")
    largest = max(max_bytes, max_ratings_bytes or 0)
    # Measured before parsing (the parser reports its own size refusal as malformed).
    size = len(raw)
    if size <= largest:
        size = len(raw.encode("utf-8", "surrogatepass"))
    if size > largest:
        raise ProtocolError("too_big", f"message is over {largest} bytes")
    try:
        document = strict_json.loads_object(raw, max_bytes=largest)
    except strict_json.JsonInputError as exc:
        # Only a ratings batch may be larger than max_bytes: anything else that large is
        # refused for its size, whether or not it parses.
        if size > max_bytes:
            raise ProtocolError("too_big", f"message is over {max_bytes} bytes") from None
        raise ProtocolError("malformed", exc.reason) from None
    if size > max_bytes and document.get("type") != "ratings":
        raise ProtocolError("too_big", f"message is over {max_bytes} bytes")
    tag_id = document.get("tag_id")
    batch_id = document.get("batch_id")
    try:
        return _CLIENT_MESSAGE.validate_python(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "message"
        raise ProtocolError(
            "malformed",
            f"{where}: {first['msg']}",
            tag_id if isinstance(tag_id, str) else None,
            batch_id=batch_id if isinstance(batch_id, str) else None,
        ) from None


class RateLimiter:
    """Token bucket: ``burst`` tokens at once, ``rate_per_s`` sustained; a message costs
    one token unless it says otherwise (a rating batch costs one per sample)."""

    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate_per_us = rate_per_s / 1e6
        self.burst = float(burst)
        self._tokens = float(burst)
        self._at_us: int | None = None

    def _refill(self, now_us: int) -> None:
        if self._at_us is not None:
            elapsed = max(0, now_us - self._at_us)
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate_per_us)
        self._at_us = now_us

    def allow(self, now_us: int, cost: float = 1.0) -> bool:
        self._refill(now_us)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def can_afford(self, now_us: int, cost: float = 1.0) -> bool:
        """Whether :meth:`allow` would pass now, without spending anything."""
        self._refill(now_us)
        return self._tokens >= cost


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


# ---------------------------------------------------------------- continuous ratings

#: Continuous rating is for people watching the performers: a performer mid-scene has no
#: hand free to hold a pad, and tags themself with hotkeys.
RATING_ROLES: tuple[records.Role, ...] = ("observer", "director")
_RATING_RANGES: dict[str, tuple[float, float]] = {
    "valence": (-1.0, 1.0),
    "arousal": (-1.0, 1.0),
    "intensity": (0.0, 1.0),
}
_CLIENT_TIME_LIMIT = 2**62
_RTP_LIMIT = 2**32


@dataclass(frozen=True, slots=True)
class RatingSampleIn:
    """One sample of a ``ratings`` message, checked: the client's sampling instant, the
    value of each dimension of the mode, and the frame on screen (its RTP timestamp)."""

    client_ts_us: int
    values: dict[records.RatingDimension, float | int]
    rtp_timestamp: int | None


def _sample_shape(mode: str) -> str:
    names = ", ".join(records.RATING_DIMENSIONS[mode])
    return f"[client_ts_us, {names}, rtp_timestamp or null]"


def check_ratings(
    message: RatingsMessage,
    session: records.SessionRecord,
    role: records.Role,
    limits: TagLimits,
) -> list[RatingSampleIn]:
    """The batch's samples, checked against the session and the protocol's rules, or
    :class:`ProtocolError` naming the first thing wrong (and the batch)."""
    batch_id = message.batch_id

    def refuse(code: str, text: str) -> ProtocolError:
        return ProtocolError(code, text, batch_id=batch_id)

    if role not in RATING_ROLES:
        raise refuse("forbidden", "continuous rating is for observers and the director")
    if message.performer_id not in {performer.performer_id for performer in session.roster}:
        raise refuse(
            "unknown_performer",
            f"performer {message.performer_id!r} is not in session {session.session_id!r}",
        )
    if message.mode == "intensity":
        if message.label is None:
            raise refuse("malformed", "an intensity rating names its label")
        if message.label not in {entry.label for entry in session.vocabulary}:
            raise refuse(
                "unknown_label", f"label {message.label!r} is not in this session's vocabulary"
            )
    elif message.label is not None:
        raise refuse("malformed", f"a {message.mode} rating names no label")
    if message.rate_hz not in RATING_RATES_HZ:
        raise refuse(
            "malformed",
            f"rate_hz {message.rate_hz} is not between {RATING_RATES_HZ.start} and "
            f"{RATING_RATES_HZ.stop - 1}",
        )
    if len(message.samples) > limits.max_rating_samples:
        raise refuse(
            "too_many_samples",
            f"{len(message.samples)} samples in one batch; at most "
            f"{limits.max_rating_samples}: send smaller batches",
        )
    dimensions = records.RATING_DIMENSIONS[message.mode]
    checked: list[RatingSampleIn] = []
    for index, raw in enumerate(message.samples):
        if len(raw) != len(dimensions) + 2:
            raise refuse(
                "malformed",
                f"samples.{index}: a {message.mode} sample is {_sample_shape(message.mode)}",
            )
        client_ts_us, *values, rtp = raw
        if not isinstance(client_ts_us, int) or not 0 <= client_ts_us < _CLIENT_TIME_LIMIT:
            raise refuse(
                "malformed", f"samples.{index}: client_ts_us must be an integer of µs (>= 0)"
            )
        if rtp is not None and (not isinstance(rtp, int) or not 0 <= rtp < _RTP_LIMIT):
            raise refuse(
                "malformed", f"samples.{index}: rtp_timestamp must be a 32-bit integer or null"
            )
        named: dict[records.RatingDimension, float | int] = {}
        for name, value in zip(dimensions, values, strict=True):
            low, high = _RATING_RANGES[name]
            if value is None:  # the parser admits only finite numbers
                raise refuse("malformed", f"samples.{index}: {name} must be a number")
            if not low <= value <= high:
                raise refuse(
                    "out_of_range",
                    f"samples.{index}: {name} {value} is outside [{low:g}, {high:g}]",
                )
            named[name] = value
        if checked and client_ts_us <= checked[-1].client_ts_us:
            raise refuse(
                "malformed", f"samples.{index}: not after the one before (samples in time order)"
            )
        checked.append(RatingSampleIn(client_ts_us, named, rtp))
    # A page samples on a fixed grid and stamps each sample when its timer ran, up to a
    # period late: two samples may be close, but no span holds more than the rate allows
    # (one more, and a quarter for timer granularity).
    span_us = checked[-1].client_ts_us - checked[0].client_ts_us
    allowed = span_us * message.rate_hz * 1.25 / 1_000_000 + 1
    if len(checked) - 1 > allowed:
        raise refuse(
            "malformed",
            f"{len(checked)} samples in {span_us / 1000:g} ms: more than {message.rate_hz} Hz "
            "allows",
        )
    return checked


def rating_batch(
    message: RatingsMessage,
    samples: Sequence[RatingSampleIn],
    *,
    session_id: str,
    rater_id: str,
    role: records.Role,
    estimate: ClockEstimate | None,
    reaction_lag_us: int,
    frame_captures: Sequence[int | None],
    received_us: int,
) -> records.RatingBatch:
    """The batch on the session clock: the record produced to ``livetag.ratings``.

    Each sample is placed like a tag press: its sampling instant converted with the clock
    estimate, or, when the frame on screen then was found (``frame_captures``, one per
    sample), that frame's capture instant. The reaction lag is recorded, not applied."""
    batch_id = message.batch_id
    if estimate is None:
        raise ProtocolError(
            "not_synced",
            "no clock reply from this connection yet: answer a clock_probe, then re-send",
            batch_id=batch_id,
        )
    converted = [estimate.to_session_us(sample.client_ts_us) for sample in samples]
    first_us, last_us = converted[0], converted[-1]
    # As for tags: a sample cannot come after its own receipt (beyond the clock's error),
    # and one over an hour old is no sample of this scene.
    slack_us = estimate.uncertainty_at(received_us) + _FUTURE_SLACK_US
    if last_us > received_us + slack_us:
        raise ProtocolError(
            "bad_time",
            f"sample {len(samples) - 1} taken {(last_us - received_us) / 1000:.0f} ms after "
            "the batch was received",
            batch_id=batch_id,
        )
    if first_us < received_us - _OLDEST_PRESS_US:
        raise ProtocolError("bad_time", "sample 0 is more than an hour old", batch_id=batch_id)
    try:
        out = [
            records.RatingSample(
                ts_us=capture_us if capture_us is not None else max(0, session_us),
                client_ts_us=sample.client_ts_us,
                basis="key_press" if capture_us is None else "frame_on_screen",
                media_rtp_timestamp=sample.rtp_timestamp,
                **sample.values,
            )
            for sample, session_us, capture_us in zip(
                samples, converted, frame_captures, strict=True
            )
        ]
        return records.RatingBatch(
            ts_us=out[0].ts_us,
            session_id=session_id,
            performer_id=message.performer_id,
            batch_id=batch_id,
            rater_id=rater_id,
            rater_role=role,
            mode=message.mode,
            label=message.label,
            rate_hz=message.rate_hz,
            samples=out,
            clock_offset_us=estimate.offset_at(first_us),
            clock_uncertainty_us=max(
                estimate.uncertainty_at(first_us), estimate.uncertainty_at(last_us)
            ),
            reaction_lag_us=reaction_lag_us,
            received_ts_us=received_us,
        )
    except ValidationError as exc:
        # What check_ratings let through but the record refuses is said to the page as
        # refused for good: a re-send would only be refused again.
        reason = records.RecordError.from_validation(exc, "rating_batch").reason
        raise ProtocolError("malformed", reason, batch_id=batch_id) from None


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """What the ledger keeps of a stored rating batch: enough to answer a re-send."""

    batch_id: str
    rater_id: str
    ts_us: int
    end_ts_us: int
    samples: int
    frame_samples: int

    @classmethod
    def of(cls, batch: records.RatingBatch) -> StoredBatch:
        return cls(
            batch_id=batch.batch_id,
            rater_id=batch.rater_id,
            ts_us=batch.ts_us,
            end_ts_us=batch.samples[-1].ts_us,
            samples=len(batch.samples),
            frame_samples=sum(sample.basis == "frame_on_screen" for sample in batch.samples),
        )


def ratings_ack(batch: StoredBatch, *, duplicate: bool, held: bool) -> dict[str, Any]:
    """``held``: the broker was unreachable and the batch waits in the durable spool."""
    return {
        "type": "ratings_ack",
        "batch_id": batch.batch_id,
        "ts_us": batch.ts_us,
        "end_ts_us": batch.end_ts_us,
        "samples": batch.samples,
        "frame_samples": batch.frame_samples,
        "duplicate": duplicate,
        "held": held,
    }


#: Unacknowledged rating batches a page keeps to re-send (``RATING_BATCHES_KEPT`` in
#: taggers/static/sent.js): ten minutes of a 20 Hz trace in half-second batches.
PAGE_OUTBOX_BATCHES = 1200
#: Batches a session's ledger remembers per rater: a page's whole outbox and a quarter more
#: (a rater on a second device, a page that reloaded). About 0.5 MB a rater.
RATER_BATCHES_REMEMBERED = PAGE_OUTBOX_BATCHES + PAGE_OUTBOX_BATCHES // 4


@dataclass(slots=True)
class BatchLedger:
    """The rating batches a session's service has stored, by batch_id: a re-send is answered
    from it instead of being stored again.

    A page re-sends only what its outbox holds (at most :data:`PAGE_OUTBOX_BATCHES`), and a
    batch stored whose ack was lost is among the first it re-sends on the next connection,
    so each rater's newest ``per_rater`` batches answer every re-send with room to spare;
    a rater's older ones go first. ``capacity`` bounds the session whatever its number of
    raters (the oldest of all go first). A batch re-sent after it was forgotten is stored
    again, and still counted once downstream: the aligner skips a batch_id it has seen and,
    after it forgets one, a sample already in its window; the archive keeps the first batch
    of an id (streams/labels/aligner_core.py, streams/archive/store.py)."""

    per_rater: int = RATER_BATCHES_REMEMBERED
    capacity: int = 32 * RATER_BATCHES_REMEMBERED
    _batches: OrderedDict[str, StoredBatch] = field(default_factory=OrderedDict)
    _by_rater: dict[str, deque[str]] = field(default_factory=dict)

    def get(self, batch_id: str) -> StoredBatch | None:
        return self._batches.get(batch_id)

    def remember(self, batch: StoredBatch) -> None:
        if batch.batch_id in self._batches:
            return
        self._batches[batch.batch_id] = batch
        mine = self._by_rater.setdefault(batch.rater_id, deque())
        mine.append(batch.batch_id)
        if len(mine) > self.per_rater:
            del self._batches[mine.popleft()]
        while len(self._batches) > self.capacity:
            # The oldest of the session is also the oldest of its rater.
            _, oldest = self._batches.popitem(last=False)
            theirs = self._by_rater[oldest.rater_id]
            theirs.popleft()
            if not theirs:
                del self._by_rater[oldest.rater_id]

    def __len__(self) -> int:
        return len(self._batches)


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
        # How this rater may rate continuously (null: not at all, as for a performer).
        "ratings": None
        if role not in RATING_ROLES
        else {
            "rate_hz": limits.rating_rate_hz,
            "batch_ms": limits.rating_batch_ms,
            "max_samples": limits.max_rating_samples,
            "max_message_bytes": limits.max_rating_message_bytes,
            "batches_per_s": limits.rating_batches_per_s,
            "batch_burst": limits.rating_batch_burst,
            "samples_per_s": limits.rating_samples_per_s,
            "in_flight": limits.rating_in_flight,
            "modes": {mode: list(names) for mode, names in records.RATING_DIMENSIONS.items()},
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


def error(
    code: str, message: str, tag_id: str | None = None, *, batch_id: str | None = None
) -> dict[str, Any]:
    payload: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if tag_id is not None:
        payload["tag_id"] = tag_id
    if batch_id is not None:
        payload["batch_id"] = batch_id
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
