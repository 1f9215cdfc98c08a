"""The data contract: every payload of every livetag topic, and its one wire format.

Every record carries ``ts_us``: the instant the thing happened, on the session clock (the
capture server's wall clock, integer microseconds). Processing time never replaces it.

Wire format (one path for all records, :func:`encode` / :func:`decode`):

- JSON records (session, prosody, face, tag, label, dead letter): the Kafka value is the
  record as UTF-8 JSON.
- Media records (audio chunk, video frame): the Kafka value is the raw payload (PCM or
  JPEG) and the header record is JSON in the Kafka record header ``livetag-header``.
- Every message also has the header ``livetag-record: <record type>/<schema version>``.
  Decoding accepts a JSON record without it, so any Kafka client can produce one.
- Keys: ``session_id`` on ``livetag.sessions``, ``session_id/performer_id`` elsewhere.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final, Literal, TypeVar

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    ValidationError,
    model_validator,
)

from streams import strict_json
from streams.errors import BadInputError

SCHEMA_VERSION: Final = 1
RECORD_HEADER = "livetag-record"
MEDIA_HEADER = "livetag-header"

# Ids end up in topic names and in `session/performer` keys: keep them to characters
# that are legal in Kafka topic names and never contain the key separator.
SessionId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,47}$")]
ParticipantId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
TimestampUs = Annotated[StrictInt, Field(ge=0, description="Session clock, microseconds.")]
DurationUs = Annotated[StrictInt, Field(ge=0, description="Microseconds.")]
# Finite numbers only: JSON has no inf/NaN (they would encode as null and not decode back).
Number = Annotated[StrictFloat, Field(allow_inf_nan=False)] | StrictInt
Unit = Annotated[Number, Field(ge=0.0, le=1.0)]
Label = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]
Colour = Annotated[str, StringConstraints(pattern=r"^#[0-9a-fA-F]{6}$")]
TagId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]
# The id (JWT ``jti``) of a join link's token, shared by the credentials made from it.
TokenId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_-]{8,64}$")]

Role = Literal["performer", "observer", "director"]
#: A session's states, in the only order it goes through them.
SessionState = Literal["created", "live", "ended", "archived"]
Intensity = Literal["normal", "strong"]
TimingSource = Literal["sender_report", "abs_capture_time", "arrival_fit"]

MAX_DEAD_LETTER_PAYLOAD = 4096
#: The largest JSON record (or media header) decoded: what livetag's producers may send at
#: most (streams.kafka.clients's max_request_size); anything larger is no record of theirs.
MAX_JSON_RECORD_BYTES: Final = 4 * 1024 * 1024


class RecordError(BadInputError, ValueError):
    """A payload could not be decoded or validated. ``reason`` says why, for humans."""

    def __init__(self, reason: str, *, record_type: str | None = None) -> None:
        self.reason = reason
        self.record_type = record_type
        prefix = f"{record_type}: " if record_type else ""
        super().__init__(prefix + reason)

    @classmethod
    def from_validation(cls, error: ValidationError, record_type: str) -> RecordError:
        problems = []
        for item in error.errors(include_url=False):
            where = ".".join(str(part) for part in item["loc"]) or "(record)"
            problems.append(f"{where}: {item['msg']}")
        return cls("; ".join(problems), record_type=record_type)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Record(_Model):
    """Base of every topic payload."""

    record_type: ClassVar[str]
    schema_version: Literal[1] = SCHEMA_VERSION
    ts_us: TimestampUs


class PerformerRecord(Record):
    """A record about one performer of one session; keyed ``session_id/performer_id``."""

    session_id: SessionId
    performer_id: ParticipantId

    @property
    def key(self) -> bytes:
        return performer_key(self.session_id, self.performer_id)


def performer_key(session_id: str, performer_id: str) -> bytes:
    return f"{session_id}/{performer_id}".encode()


# ---------------------------------------------------------------- livetag.sessions


class Performer(_Model):
    performer_id: ParticipantId
    display_name: Annotated[str, StringConstraints(min_length=1, max_length=80)]


class VocabularyEntry(_Model):
    label: Label
    hotkey: Annotated[str, StringConstraints(min_length=1, max_length=16)]
    colour: Colour
    description: Annotated[str, StringConstraints(max_length=200)] = ""
    intensity: StrictBool = Field(
        default=True, description="Raters may mark this label strong (Shift + hotkey)."
    )


class Take(_Model):
    take_id: Annotated[StrictInt, Field(ge=1)]
    start_ts_us: TimestampUs
    end_ts_us: TimestampUs | None = None


class Presence(_Model):
    """Whether a participant is in the call, since when (joins and leaves)."""

    participant_id: ParticipantId
    role: Role
    connected: StrictBool
    since_ts_us: TimestampUs


class SessionTopics(_Model):
    audio: str
    video: str
    prosody: str
    face: str
    model: str | None = Field(
        default=None,
        description=(
            "The model lane's per-window readings (model_reading records); absent on "
            "sessions created before the model lane existed."
        ),
    )


#: Who besides the scene's performers sees a scenario's text: observers see the prompt
#: (default), the prompt and every role's brief, or nothing of it.
ObserverView = Literal["prompt", "prompt_and_roles", "nothing"]
ScenarioId = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,47}$")]
DayId = SessionId


class ArcStep(_Model):
    """One step of a scenario's emotional arc: from ``at_s`` seconds into each take (until
    the next step), the scene means to show ``label``."""

    at_s: Annotated[Number, Field(ge=0, le=24 * 3600)]
    label: Label
    intensity: Intensity = "normal"


class ScenarioRole(_Model):
    """A part in a scenario: its performer sees the brief; ``targets`` are the emotions the
    part means to show."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=80)]
    brief: Annotated[str, StringConstraints(max_length=2000)] = ""
    targets: list[Label] = []


class Scenario(_Model):
    """A scene's prompt, its parts, the emotions it targets and their arc."""

    scenario_id: ScenarioId
    title: Annotated[str, StringConstraints(min_length=1, max_length=120)]
    prompt: Annotated[str, StringConstraints(max_length=4000)]
    roles: Annotated[list[ScenarioRole], Field(min_length=1, max_length=16)]
    targets: list[Label] = []
    arc: list[ArcStep] = []
    duration_s: Annotated[StrictInt, Field(gt=0, le=24 * 3600)] | None = None
    observers_see: ObserverView = "prompt"

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        _require_unique("role name", (role.name for role in self.roles))
        times = [step.at_s for step in self.arc]
        if times != sorted(times) or len(set(times)) != len(times):
            raise ValueError("arc steps must be in strictly increasing at_s order")
        return self

    def labels(self) -> set[str]:
        """Every emotion the scenario names (targets, role targets, arc)."""
        named = set(self.targets) | {step.label for step in self.arc}
        for role in self.roles:
            named |= set(role.targets)
        return named


class ScenarioRecord(Record):
    """A scenario of the library on ``livetag.scenarios``, keyed by scenario id; the newest
    record per key is the scenario, ``deleted`` withdraws it. ts_us = when it was saved."""

    record_type: ClassVar[str] = "scenario"
    scenario: Scenario
    saved_by: Annotated[str, StringConstraints(max_length=80)] = ""
    deleted: StrictBool = False

    @property
    def key(self) -> bytes:
        return self.scenario.scenario_id.encode()


class SessionRecord(Record):
    """The state of one session; the latest record per key is the current state."""

    record_type: ClassVar[str] = "session"
    session_id: SessionId
    created_ts_us: TimestampUs
    prompt: Annotated[str, StringConstraints(max_length=4000)]
    roster: Annotated[list[Performer], Field(min_length=1)]
    vocabulary: list[VocabularyEntry]
    state: SessionState
    takes: list[Take] = []
    topics: SessionTopics
    presence: list[Presence] = []
    scenario: Scenario | None = Field(
        default=None, description="The scene's scenario; the prompt is its prompt."
    )
    roles: dict[ParticipantId, str] = Field(
        default={}, description="Each performer's part (a role name of the scenario)."
    )
    day_id: DayId | None = Field(
        default=None, description="The casting day this scene belongs to, if any."
    )

    @property
    def key(self) -> bytes:
        return self.session_id.encode()

    @model_validator(mode="after")
    def _unique_names(self) -> SessionRecord:
        _require_unique("roster performer_id", (p.performer_id for p in self.roster))
        _require_unique("vocabulary label", (v.label for v in self.vocabulary))
        _require_unique("vocabulary hotkey", (v.hotkey for v in self.vocabulary))
        performers = {p.performer_id for p in self.roster}
        for performer_id, role in self.roles.items():
            if performer_id not in performers:
                raise ValueError(f"roles: {performer_id!r} is not in the roster")
            if self.scenario is None or role not in {r.name for r in self.scenario.roles}:
                raise ValueError(f"roles: {role!r} is not a part of the scenario")
        if self.scenario is not None:
            unknown = self.scenario.labels() - {v.label for v in self.vocabulary}
            if unknown:
                raise ValueError(
                    f"scenario: {', '.join(sorted(unknown))} not in the session's vocabulary"
                )
        return self


def _require_unique(what: str, values: Iterable[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"duplicate {what} {value!r}")
        seen.add(value)


# ---------------------------------------------------------------- media topics


class MediaHeader(PerformerRecord):
    seq: Annotated[StrictInt, Field(ge=0, description="Per performer and stream, from 0.")]
    timing: TimingSource = Field(
        description="How ts_us was obtained; arrival_fit only until the first sender report."
    )
    rtp_timestamp: Annotated[StrictInt, Field(ge=0, lt=2**32)] | None = None
    replayed: StrictBool = False


class AudioChunkHeader(MediaHeader):
    """Header of a PCM chunk on ``livetag.media.audio.SID``; ts_us = first sample."""

    record_type: ClassVar[str] = "audio_chunk"
    sample_rate: Literal[16000] = 16000
    channels: Literal[1] = 1
    sample_format: Literal["s16le"] = "s16le"
    sample_count: Annotated[StrictInt, Field(gt=0, le=16000)]


class VideoFrameHeader(MediaHeader):
    """Header of a JPEG frame on ``livetag.media.video.SID``; ts_us = capture instant."""

    record_type: ClassVar[str] = "video_frame"
    encoding: Literal["jpeg"] = "jpeg"
    width: Annotated[StrictInt, Field(gt=0, le=8192)]
    height: Annotated[StrictInt, Field(gt=0, le=8192)]


@dataclass(frozen=True)
class AudioChunk:
    header: AudioChunkHeader
    pcm: bytes

    record_type: ClassVar[str] = AudioChunkHeader.record_type

    def __post_init__(self) -> None:
        expected = self.header.sample_count * 2
        if len(self.pcm) != expected:
            raise RecordError(
                f"payload has {len(self.pcm)} bytes, header says {self.header.sample_count} "
                f"s16le samples ({expected} bytes)",
                record_type=self.record_type,
            )

    @property
    def key(self) -> bytes:
        return self.header.key


@dataclass(frozen=True)
class VideoFrame:
    header: VideoFrameHeader
    jpeg: bytes

    record_type: ClassVar[str] = VideoFrameHeader.record_type

    def __post_init__(self) -> None:
        if not self.jpeg.startswith(b"\xff\xd8"):
            raise RecordError("payload is not a JPEG image", record_type=self.record_type)

    @property
    def key(self) -> bytes:
        return self.header.key


# ---------------------------------------------------------------- feature topics


class VoiceQuality(_Model):
    window_us: DurationUs = 500_000
    hnr_db: Number | None
    jitter_local: Annotated[Number, Field(ge=0)] | None
    shimmer_local: Annotated[Number, Field(ge=0)] | None


class HopMeasures(_Model):
    """What one 10 ms prosody hop measures (the same in a record's hop and an archive row)."""

    f0_hz: Annotated[Number, Field(gt=0)] | None = Field(description="null when unvoiced")
    voicing_probability: Unit
    voiced: StrictBool
    loudness_db: Number
    voice_quality: VoiceQuality | None = Field(
        default=None, description="Every 100 ms, over the window ending at this hop."
    )

    def measures(self) -> dict[str, Any]:
        """The measured fields, as they are (no copy, no validation)."""
        return {name: getattr(self, name) for name in HopMeasures.model_fields}


class ProsodyFrame(HopMeasures, PerformerRecord):
    """One 10 ms analysis hop of a performer; ts_us = start of the hop. Identity: key +
    ts_us. On the prosody topic hops travel in :class:`ProsodyHops` records; this is how
    the archive (one row per hop), the aligner and the dashboard see each of them."""

    record_type: ClassVar[str] = "prosody_frame"
    hop_us: Annotated[StrictInt, Field(gt=0)] = 10_000


class ProsodyHop(HopMeasures):
    """One hop of a :class:`ProsodyHops` record; ts_us = start of the hop."""

    ts_us: TimestampUs


#: Hops in one prosody record at most (5 s of audio; an analysis step makes ~10).
MAX_PROSODY_HOPS: Final = 500


class ProsodyHops(PerformerRecord):
    """Consecutive 10 ms prosody hops of one performer, as one analysis step made them.

    ``ts_us`` is the start of the first hop; every hop carries its own start (hops follow
    the audio's capture stamps, so they are ~10 ms apart, not exactly). One record per
    step instead of one per hop: 10 records a second per performer instead of 100, for
    every reader of the topic. A hop's identity is the key + its own ``ts_us``: after a
    processor restart a record may repeat hops an earlier one carried (at-least-once), so
    consumers dedupe per hop.
    """

    record_type: ClassVar[str] = "prosody_hops"
    hop_us: Annotated[StrictInt, Field(gt=0)] = 10_000
    hops: Annotated[list[ProsodyHop], Field(min_length=1, max_length=MAX_PROSODY_HOPS)]

    @model_validator(mode="after")
    def _check_hops(self) -> ProsodyHops:
        if self.hops[0].ts_us != self.ts_us:
            raise ValueError("ts_us must be the first hop's ts_us")
        for earlier, later in zip(self.hops, self.hops[1:], strict=False):
            if later.ts_us <= earlier.ts_us:
                raise ValueError("hops must be in increasing ts_us")
        return self

    @classmethod
    def of(cls, frames: Sequence[ProsodyFrame]) -> ProsodyHops:
        """The record of consecutive hops of one performer."""
        first = frames[0]
        return cls(
            ts_us=first.ts_us,
            session_id=first.session_id,
            performer_id=first.performer_id,
            hop_us=first.hop_us,
            hops=[ProsodyHop(ts_us=frame.ts_us, **frame.measures()) for frame in frames],
        )

    def frames(self) -> list[ProsodyFrame]:
        """Each hop with its performer (validated already: built without checks)."""
        return [
            ProsodyFrame.model_construct(
                ts_us=hop.ts_us,
                session_id=self.session_id,
                performer_id=self.performer_id,
                hop_us=self.hop_us,
                **hop.measures(),
            )
            for hop in self.hops
        ]


LANDMARK_ENCODING: Final = "f16le-base64"


class Landmarks(_Model):
    """Face landmarks as x, y, z triples, packed: base64 of little-endian float16.

    Read with ``numpy.frombuffer(base64.b64decode(data), "<f2").reshape(count, 3)``.
    """

    encoding: Literal["f16le-base64"] = LANDMARK_ENCODING
    count: Annotated[StrictInt, Field(gt=0, le=1000)]
    data: str

    @model_validator(mode="after")
    def _check_size(self) -> Landmarks:
        try:
            raw = base64.b64decode(self.data, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"data is not base64: {exc}") from None
        if len(raw) != self.count * 3 * 2:
            raise ValueError(f"data has {len(raw)} bytes, expected {self.count * 6}")
        return self

    @classmethod
    def from_xyz(cls, xyz: Sequence[Sequence[float]] | np.ndarray) -> Landmarks:
        array = np.asarray(xyz, dtype="<f2")
        if array.ndim != 2 or array.shape[1] != 3:
            raise ValueError(f"expected an (n, 3) array, got shape {array.shape}")
        return cls(count=array.shape[0], data=base64.b64encode(array.tobytes()).decode())

    def xyz(self) -> np.ndarray:
        return np.frombuffer(base64.b64decode(self.data), dtype="<f2").reshape(self.count, 3)


class HeadPose(_Model):
    yaw_deg: Number
    pitch_deg: Number
    roll_deg: Number


FaceSkipReason = Literal["late"]


class FaceFrame(PerformerRecord):
    """One video frame's face features; ts_us = the frame's capture instant.

    Every forked video frame gets exactly one such record. ``skipped`` says the processors
    did not analyse it, on purpose: ``"late"`` = the frame was already older than the
    processors' lag budget (``face_max_lag_ms``) when they read it, so analysing it would
    only have added lag (a machine that cannot keep the analysis rate thins frames instead
    of falling behind). A skipped frame has ``face_present`` null and no features.
    """

    record_type: ClassVar[str] = "face_frame"
    video_seq: Annotated[StrictInt, Field(ge=0)]
    face_present: StrictBool | None
    landmarks: Landmarks | None = None
    blendshapes: dict[str, Unit] = {}
    head_pose: HeadPose | None = None
    skipped: FaceSkipReason | None = None

    @model_validator(mode="after")
    def _absent_face_is_empty(self) -> FaceFrame:
        if (self.face_present is None) != (self.skipped is not None):
            raise ValueError("face_present is null exactly when the frame was skipped")
        if not self.face_present and (self.landmarks or self.blendshapes or self.head_pose):
            raise ValueError("a frame without a face carries no landmarks, blendshapes or pose")
        return self


# ---------------------------------------------------------------- livetag.tags


class TagTiming(_Model):
    """How a tag's ts_us was derived, kept so a consumer can audit or redo it."""

    client_press_ts_us: StrictInt = Field(description="Key press on the client's own clock.")
    clock_offset_us: StrictInt = Field(description="Session clock minus client clock.")
    rtt_us: DurationUs
    clock_uncertainty_us: DurationUs
    reaction_lag_us: DurationUs = 0
    media_rtp_timestamp: Annotated[StrictInt, Field(ge=0, lt=2**32)] | None = None
    media_capture_ts_us: TimestampUs | None = Field(
        default=None, description="Capture instant of the frame on the rater's screen."
    )
    basis: Literal["key_press", "frame_on_screen"] = "key_press"


class TagEvent(PerformerRecord):
    """A rater's tag on a performer (performer_id is the target). Idempotent by tag_id."""

    record_type: ClassVar[str] = "tag"
    tag_id: TagId
    rater_id: ParticipantId
    rater_role: Role
    action: Literal["onset", "offset", "point", "undo"]
    label: Label | None = None
    intensity: Intensity = "normal"
    span_us: DurationUs | None = Field(default=None, description="Span of a point tag.")
    undoes_tag_id: TagId | None = None
    onset_tag_id: TagId | None = Field(
        default=None, description="The onset an offset ends (hold = onset + offset)."
    )
    timing: TagTiming
    received_ts_us: TimestampUs = Field(description="Server receipt, for audit only.")

    @model_validator(mode="after")
    def _action_fields(self) -> TagEvent:
        if self.action == "undo":
            if self.undoes_tag_id is None:
                raise ValueError("an undo names undoes_tag_id")
        elif self.label is None:
            raise ValueError(f"a {self.action} tag needs a label")
        if self.action == "point" and self.span_us is None:
            raise ValueError("a point tag needs span_us")
        if (self.action == "offset") != (self.onset_tag_id is not None):
            raise ValueError("an offset names onset_tag_id, and only an offset does")
        return self


# ---------------------------------------------------------------- livetag.cues

#: A director's cue: an ``emotion`` to show (label and intensity of the vocabulary), a
#: short line of ``text``, or ``clear`` (the performer's cue is withdrawn).
CueKind = Literal["emotion", "text", "clear"]
MAX_CUE_TEXT: Final = 200


class CueShown(_Model):
    """When the performer's page showed the cue, as the page measured it."""

    client_shown_ts_us: StrictInt = Field(description="Shown, on the page's own clock.")
    clock_offset_us: StrictInt = Field(description="Session clock minus the page's clock.")
    rtt_us: DurationUs


class Cue(PerformerRecord):
    """A director's cue to one performer (performer_id is who sees it); ts_us = when it was
    sent, on the session clock. A cue to every performer is one record per performer, with
    one ``cue_id`` each and a shared ``group_id``. A cue stands until the performer's next
    cue replaces it or a ``clear`` withdraws it. Each cue is published twice, keyed
    session/performer: when sent (``shown_ts_us`` unset), and once the page showed it (with
    ``shown_ts_us`` and ``shown``). Idempotent by cue_id (the shown record supersedes)."""

    record_type: ClassVar[str] = "cue"
    cue_id: TagId
    group_id: TagId | None = None
    kind: CueKind
    label: Label | None = None
    intensity: Intensity = "normal"
    text: Annotated[str, StringConstraints(max_length=MAX_CUE_TEXT)] = ""
    sent_by: ParticipantId
    shown_ts_us: TimestampUs | None = Field(
        default=None, description="When the performer's page showed it, on the session clock."
    )
    shown: CueShown | None = None

    @model_validator(mode="after")
    def _kind_fields(self) -> Cue:
        if self.kind == "emotion" and self.label is None:
            raise ValueError("an emotion cue names its label")
        if self.kind != "emotion" and self.label is not None:
            raise ValueError("only an emotion cue names a label")
        if self.kind == "text" and not self.text.strip():
            raise ValueError("a text cue has text")
        if (self.shown_ts_us is None) != (self.shown is None):
            raise ValueError("shown_ts_us and shown go together")
        return self


# ---------------------------------------------------------------- livetag.ratings

#: Continuous rating modes: a 2-D valence/arousal pad, or a 1-D intensity slider for one
#: emotion of the session's vocabulary.
RatingMode = Literal["valence_arousal", "intensity"]
RatingDimension = Literal["valence", "arousal", "intensity"]
RATING_DIMENSIONS: dict[str, tuple[RatingDimension, ...]] = {
    "valence_arousal": ("valence", "arousal"),
    "intensity": ("intensity",),
}
Bipolar = Annotated[Number, Field(ge=-1.0, le=1.0)]
MAX_RATING_SAMPLES: Final = 600


class RatingSample(_Model):
    """One sample of a continuous rating, on the session clock, not lag-corrected."""

    ts_us: TimestampUs = Field(
        description=(
            "The instant rated: the capture instant of the frame on the rater's screen "
            "(basis frame_on_screen), else the sampling instant converted to the session clock."
        )
    )
    client_ts_us: StrictInt = Field(description="The sampling instant on the client's clock.")
    basis: Literal["key_press", "frame_on_screen"] = "key_press"
    media_rtp_timestamp: Annotated[StrictInt, Field(ge=0, lt=2**32)] | None = Field(
        default=None, description="RTP timestamp of the frame on the rater's screen, if known."
    )
    valence: Bipolar | None = None
    arousal: Bipolar | None = None
    intensity: Unit | None = None


class RatingBatch(PerformerRecord):
    """A batch of one rater's continuous samples of one performer (the target).
    ts_us = the first sample's. Idempotent by batch_id; keyed session/performer."""

    record_type: ClassVar[str] = "rating_batch"
    batch_id: TagId
    rater_id: ParticipantId
    rater_role: Role
    mode: RatingMode
    label: Label | None = Field(default=None, description="The emotion an intensity rates.")
    rate_hz: Annotated[StrictInt, Field(ge=1, le=60)]
    samples: Annotated[list[RatingSample], Field(min_length=1, max_length=MAX_RATING_SAMPLES)]
    clock_offset_us: StrictInt = Field(description="Session clock minus client clock.")
    clock_uncertainty_us: DurationUs
    reaction_lag_us: DurationUs = Field(
        default=0, description="The rater's calibrated lag at the time (not applied to ts_us)."
    )
    received_ts_us: TimestampUs = Field(description="Server receipt, for audit only.")

    @model_validator(mode="after")
    def _dimensions(self) -> RatingBatch:
        wanted = set(RATING_DIMENSIONS[self.mode])
        if (self.mode == "intensity") != (self.label is not None):
            raise ValueError("an intensity rating names its label, and only it does")
        for index, sample in enumerate(self.samples):
            present = {
                name
                for name in ("valence", "arousal", "intensity")
                if getattr(sample, name) is not None
            }
            if present != wanted:
                raise ValueError(
                    f"samples.{index}: a {self.mode} sample has exactly {sorted(wanted)}"
                )
        return self


# ---------------------------------------------------------------- livetag.raters

#: How a rater's reaction lag was found: ``calibration`` (the page's reaction-time trials),
#: ``consensus`` (cross-correlation of the rater's continuous trace with the other raters'),
#: ``onsets`` (tag presses against onsets the features define), ``none`` (no correction).
LagMethod = Literal["none", "calibration", "consensus", "onsets"]


class LagCorrection(_Model):
    """A reaction-lag correction: the rater's times were moved earlier by ``lag_us``."""

    method: LagMethod
    lag_us: DurationUs
    spread_us: DurationUs = Field(default=0, description="The rater's jitter around lag_us.")
    confidence: Unit = 0.0
    relative: StrictBool = Field(
        default=False,
        description=(
            "A consensus estimate with no absolute anchor: the lag is measured from the "
            "group's fastest confident rater, not from the event."
        ),
    )


class RaterLag(Record):
    """A rater's reaction lag in a session as the aligner estimates it; the newest per key
    counts. ts_us = when it was estimated. Keyed session/rater."""

    record_type: ClassVar[str] = "rater_lag"
    session_id: SessionId
    rater_id: ParticipantId
    rater_role: Role
    applied: LagCorrection = Field(description="The correction the aligner applies now.")
    estimates: list[LagCorrection] = Field(
        default=[],
        description=(
            "Every method's estimate this round (the applied correction may be one kept "
            "from an earlier round: a new one replaces it only when it ranks higher, "
            "differs by more than 50 ms, or the kept one went unconfirmed for 3 rounds)."
        ),
    )
    evidence: dict[LagMethod, Annotated[StrictInt, Field(ge=0)]] = Field(
        default={}, description="How many samples, presses or trials each estimate used."
    )

    @property
    def key(self) -> bytes:
        return f"{self.session_id}/{self.rater_id}".encode()


# ---------------------------------------------------------------- model readings


class ModelReading(PerformerRecord):
    """A model's reading of one performer over one label window, on the session's model
    topic: the model rates like a rater named after it. ts_us = the window's start."""

    record_type: ClassVar[str] = "model_reading"
    window_us: Annotated[StrictInt, Field(gt=0)]
    model: ParticipantId = Field(description="The model rater's name.")
    frames_read: Annotated[StrictInt, Field(ge=0)]
    frames_thinned: Annotated[StrictInt, Field(ge=0)] = Field(
        default=0,
        description=(
            "Frames the model skipped to stay within budget: with a face, or skipped late "
            "by the face analysis (face unknown)."
        ),
    )
    frames_failed: Annotated[StrictInt, Field(ge=0)] = Field(
        default=0, description="Frames with a face the model rater failed to read."
    )
    class_probabilities: dict[str, Unit] = Field(
        default={}, description="Mean probability per class of the model's own."
    )
    probabilities: dict[Label, Unit] = Field(
        default={}, description="The classes mapped to the session's vocabulary."
    )
    top_label: Label | None = None
    valence: Bipolar | None = None
    arousal: Bipolar | None = None
    unread: Literal["no_face", "thinned", "failed"] | None = Field(
        default=None, description="Why a window with frames has no reading (frames_read 0)."
    )


def model_top_label(probabilities: Mapping[str, float]) -> str | None:
    """A model reading's top label: the most probable vocabulary label, unless the model's
    classes outside the vocabulary are together at least as probable (a neutral face has
    no top label)."""
    if not probabilities:
        return None
    best = max(probabilities, key=lambda label: (probabilities[label], label))
    outside = 1.0 - sum(probabilities.values())
    return best if probabilities[best] > outside else None


def merge_model_readings(first: ModelReading, second: ModelReading) -> ModelReading:
    """Two readings of one model of one window (the window's frames read in two parts: a
    pause, a restart) as one: probabilities and valence/arousal averaged weighted by the
    frames each read, counts added. The aligner and the archive both fold readings so."""
    if (first.key, first.ts_us, first.model) != (second.key, second.ts_us, second.model):
        raise ValueError("only readings of one model of one window merge")
    total = first.frames_read + second.frames_read

    def mean(a: Mapping[str, float], b: Mapping[str, float]) -> dict[str, float]:
        return {
            name: round(
                (a.get(name, 0.0) * first.frames_read + b.get(name, 0.0) * second.frames_read)
                / total,
                4,
            )
            for name in sorted({*a, *b})
        }

    def scalar(a: float | None, b: float | None) -> float | None:
        weighted = ((a, first.frames_read), (b, second.frames_read))
        kept = [(v, n) for v, n in weighted if v is not None and n > 0]
        if not kept:
            return None
        return round(sum(v * n for v, n in kept) / sum(n for _, n in kept), 4)

    counts = {
        "frames_read": total,
        "frames_thinned": first.frames_thinned + second.frames_thinned,
        "frames_failed": first.frames_failed + second.frames_failed,
    }
    if total == 0:
        return first.model_copy(update=counts)
    probabilities = mean(first.probabilities, second.probabilities)
    return first.model_copy(
        update={
            **counts,
            "class_probabilities": mean(first.class_probabilities, second.class_probabilities),
            "probabilities": probabilities,
            "top_label": model_top_label(probabilities),
            "valence": scalar(first.valence, second.valence),
            "arousal": scalar(first.arousal, second.arousal),
            "unread": None,
        }
    )


# ---------------------------------------------------------------- livetag.labels


class WindowFeatures(_Model):
    f0_mean_hz: Number | None = None
    loudness_mean_db: Number | None = None
    voiced_fraction: Unit | None = None
    face_present_fraction: Unit | None = None
    top_blendshapes: dict[str, Unit] = {}
    head_pose: HeadPose | None = None
    face_frames_skipped: Annotated[StrictInt, Field(ge=0)] = Field(
        default=0,
        description=(
            "Video frames of the window the processors knowingly did not analyse (face "
            "records with skipped set); the face fields summarise the analysed ones only."
        ),
    )
    prosody_hops: Annotated[StrictInt, Field(ge=0)] = Field(
        default=0, description="Prosody hops the prosody fields summarise."
    )
    face_frames: Annotated[StrictInt, Field(ge=0)] = Field(
        default=0, description="Analysed video frames the face fields summarise."
    )


class ActiveLabel(_Model):
    label: Label
    intensity: Intensity
    tag_id: TagId
    lag: LagCorrection | None = Field(
        default=None,
        description=(
            "Set only where the rater's labels in this window were placed under different "
            "corrections (the rater's lag is then unset): the one this label's tag was "
            "placed with; unset there: it stands where the tag service put it."
        ),
    )


class RaterLabels(_Model):
    rater_id: ParticipantId
    rater_role: Role
    labels: list[ActiveLabel]
    lag: LagCorrection | None = Field(
        default=None,
        description=(
            "The reaction-lag correction applied to every one of this rater's tags here "
            "(their raw times are lag_us later); none: the tags stand where the tag service "
            "put them, unless their labels carry corrections of their own (labels[].lag: "
            "they were placed under different ones)."
        ),
    )


class RaterTrace(_Model):
    """One rater's continuous rating of the performer over the window."""

    rater_id: ParticipantId
    rater_role: Role
    mode: RatingMode
    label: Label | None = None
    mean: dict[RatingDimension, Bipolar]
    last: dict[RatingDimension, Bipolar]
    coverage: Unit = Field(description="Share of the window's sample slots with a sample.")
    samples: Annotated[StrictInt, Field(ge=0)]
    lag: LagCorrection | None = None


class ModelEstimate(_Model):
    """A model rater's reading of the window (the model_reading record, folded in)."""

    model: ParticipantId
    probabilities: dict[Label, Unit]
    top_label: Label | None = None
    valence: Bipolar | None = None
    arousal: Bipolar | None = None
    frames_read: Annotated[StrictInt, Field(ge=0)] = 0


class CueInForce(_Model):
    """The director's cue the performer had on screen over the window."""

    cue_id: TagId
    kind: Literal["emotion", "text"]
    label: Label | None = None
    intensity: Intensity = "normal"
    text: Annotated[str, StringConstraints(max_length=MAX_CUE_TEXT)] = ""
    since_ts_us: TimestampUs = Field(
        description="Shown on the page (sent, while the page has not said it showed it)."
    )
    shown: StrictBool = Field(description="The page has said it showed the cue.")


class Intent(_Model):
    """What the scene meant the performer to show over the window: the cue in force, the
    scenario arc's step, the part's targets. ``label`` is the one intended emotion: the
    emotion cue's, else the arc step's, else none."""

    label: Label | None = None
    intensity: Intensity = "normal"
    source: Literal["cue", "arc"] | None = None
    cue: CueInForce | None = None
    arc_label: Label | None = None
    targets: list[Label] = []


#: The feature streams a label window summarises.
FeatureStream = Literal["prosody", "face"]
FEATURE_STREAMS: tuple[FeatureStream, ...] = ("prosody", "face")

#: Why a label window lacks a feature stream:
#: - ``late``: the stream was silent past the wait (label_feature_wait_ms) before it reached
#:   the window; if its features still come within the grace, a revision carries them;
#: - ``ended``: the performer had left the call (their presence on the session record);
#: - ``no_media``: the stream went past the window with nothing in it (an outage, a
#:   reconnect: no media was captured then);
#: - ``absent``: the performer never had the stream (e.g. no camera).
StreamGap = Literal["late", "ended", "no_media", "absent"]


class LabelWindow(PerformerRecord):
    """One window of the labeled stream; ts_us = window start. Identity: key + ts_us.

    Every window of a performer, from their first to their last captured instant, goes
    out (its index ts_us // window_us is contiguous); the newest revision counts."""

    record_type: ClassVar[str] = "label_window"
    window_us: Annotated[StrictInt, Field(gt=0)]
    features: WindowFeatures
    raters: list[RaterLabels]
    consensus: Label | None
    consensus_agreement: Unit | None = None
    correction: StrictBool = False
    revision: Annotated[StrictInt, Field(ge=0)] = 0
    final_after_us: TimestampUs | None = Field(
        default=None,
        description=(
            "No revision of this window comes after this session-clock instant (its end + "
            "label_grace_s): the newest revision a consumer holds by then is final."
        ),
    )
    missing: dict[FeatureStream, StreamGap] = Field(
        default={},
        description=(
            "The feature streams this revision lacks, each with the reason (late, ended, "
            "no_media, absent); empty: the window is complete."
        ),
    )
    ratings: list[RaterTrace] = Field(
        default=[], description="Continuous ratings of the performer over the window."
    )
    models: list[ModelEstimate] = Field(
        default=[], description="Model raters' readings of the window (not in consensus)."
    )
    intent: Intent | None = Field(
        default=None,
        description="What the scene meant the performer to show (cue, scenario arc); "
        "unset: nothing was intended.",
    )


# ---------------------------------------------------------------- livetag.coverage

#: What observers perceived in a window that no observer tagged (or agreed on nothing).
NOTHING_PERCEIVED: Final = "(none)"


class CoverageCell(_Model):
    """Seconds of one emotion for one performer, each from the final revision of windows:
    intended (the window's intent.label), self-tagged (the performer's own tags),
    perceived (the observers' majority label), agreed (perceived by at least two observers
    with consensus_agreement >= 2/3), hit (intended and perceived alike), disputed (observers
    tagged it, but did not agree on the window)."""

    intended_s: Annotated[Number, Field(ge=0)] = 0
    self_tagged_s: Annotated[Number, Field(ge=0)] = 0
    perceived_s: Annotated[Number, Field(ge=0)] = 0
    agreed_s: Annotated[Number, Field(ge=0)] = 0
    hit_s: Annotated[Number, Field(ge=0)] = 0
    disputed_s: Annotated[Number, Field(ge=0)] = 0


class Coverage(PerformerRecord):
    """One performer's ledger so far in one session, per emotion, from the aligner's
    windows; ts_us = the end of the newest window counted. Keyed session/performer on
    ``livetag.coverage`` (compacted: the newest record is the state)."""

    record_type: ClassVar[str] = "coverage"
    window_us: Annotated[StrictInt, Field(gt=0)]
    windows: Annotated[StrictInt, Field(ge=0)]
    cells: dict[Label, CoverageCell] = {}
    confusion: dict[Label, dict[str, Annotated[StrictInt, Field(ge=0)]]] = Field(
        default={},
        description=(
            "Windows by intended emotion, then by what observers perceived (a label, or "
            "'(none)'): only windows with an intended emotion."
        ),
    )


# ---------------------------------------------------------------- livetag.casting / lobby


class DeviceCheck(_Model):
    """A performer's camera and microphone check in the lobby."""

    camera: StrictBool
    microphone: StrictBool
    face_found: StrictBool
    audio_level_db: Number | None = None
    checked_ts_us: TimestampUs


class LobbyPresence(Record):
    """A performer of a casting day in the lobby (waiting) or not; keyed day/performer on
    ``livetag.lobby`` (compacted). ts_us = when this changed."""

    record_type: ClassVar[str] = "lobby_presence"
    day_id: DayId
    performer_id: ParticipantId
    waiting: StrictBool
    since_ts_us: TimestampUs
    check: DeviceCheck | None = None

    @property
    def key(self) -> bytes:
        return f"{self.day_id}/{self.performer_id}".encode()


class SceneRef(_Model):
    """A scene of the day: a session with its performers and scenario."""

    session_id: SessionId
    performers: Annotated[list[ParticipantId], Field(min_length=1)]
    scenario_id: ScenarioId | None = None
    roles: dict[ParticipantId, str] = {}
    started_ts_us: TimestampUs
    ended_ts_us: TimestampUs | None = None


class CastingDay(Record):
    """A casting day: its performers (one link each for the whole day), its vocabulary and
    the scenes played so far. Keyed by day id on ``livetag.casting`` (compacted)."""

    record_type: ClassVar[str] = "casting_day"
    day_id: DayId
    created_ts_us: TimestampUs
    title: Annotated[str, StringConstraints(max_length=200)] = ""
    roster: Annotated[list[Performer], Field(min_length=1)]
    vocabulary: list[VocabularyEntry]
    scenes: list[SceneRef] = []
    state: Literal["open", "closed"] = "open"

    @property
    def key(self) -> bytes:
        return self.day_id.encode()

    @model_validator(mode="after")
    def _unique_names(self) -> CastingDay:
        _require_unique("roster performer_id", (p.performer_id for p in self.roster))
        _require_unique("scene session_id", (scene.session_id for scene in self.scenes))
        return self


# ---------------------------------------------------------------- livetag.deadletter


class DeadLetter(Record):
    """What could not be decoded or validated; ts_us = when it was rejected."""

    record_type: ClassVar[str] = "dead_letter"
    source_topic: str
    source_partition: StrictInt | None = None
    source_offset: StrictInt | None = None
    source_key: str | None = None
    service: str
    reason: str
    payload_size: Annotated[StrictInt, Field(ge=0)]
    payload_head_b64: str = Field(
        description=f"The first {MAX_DEAD_LETTER_PAYLOAD} bytes of the payload, base64."
    )

    @classmethod
    def of(
        cls,
        *,
        ts_us: int,
        source_topic: str,
        service: str,
        reason: str,
        payload: bytes,
        key: bytes | None = None,
        partition: int | None = None,
        offset: int | None = None,
    ) -> DeadLetter:
        head = payload[:MAX_DEAD_LETTER_PAYLOAD]
        return cls(
            ts_us=ts_us,
            source_topic=source_topic,
            source_partition=partition,
            source_offset=offset,
            source_key=None if key is None else key.decode("utf-8", errors="replace"),
            service=service,
            reason=reason,
            payload_size=len(payload),
            payload_head_b64=base64.b64encode(head).decode(),
        )

    @property
    def key(self) -> bytes:
        return self.source_topic.encode()


# ---------------------------------------------------------------- livetag.health

#: The services that count what happens to a performer's data.
CounterSource = Literal["capture", "aligner"]
CounterName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]


class PipelineCounters(PerformerRecord):
    """One service's counters for one performer of a session: cumulative for the whole
    session (across reconnects and restarts), so the newest record per key is the count.
    ts_us = when they were taken. Keyed ``session/performer/source``."""

    record_type: ClassVar[str] = "pipeline_counters"
    source: CounterSource
    counters: dict[CounterName, Annotated[StrictInt, Field(ge=0)]]
    carried: dict[CounterName, Annotated[StrictInt, Field(ge=0)]] = Field(
        default={},
        description=(
            "For the service's successor after a restart: the part of the counters it "
            "carries on from (the aligner counts the windows still open to revision anew "
            "from livetag.labels)."
        ),
    )
    carried_through_us: Annotated[StrictInt, Field(ge=0)] = Field(
        default=0, description="The carried part covers the label windows before this instant."
    )

    @property
    def key(self) -> bytes:
        return counters_key(self.session_id, self.performer_id, self.source)


def counters_key(session_id: str, performer_id: str, source: str) -> bytes:
    return f"{session_id}/{performer_id}/{source}".encode()


# ---------------------------------------------------------------- livetag.revocations


class TokenRevocation(Record):
    """A withdrawn join link: one token id, or every link of one participant issued up to
    ``ts_us`` (a fresh link issued after it is valid). Every service checks it at admission
    and closes the open connections it covers. ts_us = when it was revoked (Unix µs).
    Keyed ``session/token/ID`` or ``session/participant/ID``: revocations are never undone,
    and the newest one of a participant covers what an older one did, so compaction keeps
    what counts."""

    record_type: ClassVar[str] = "token_revocation"
    session_id: SessionId
    token_id: TokenId | None = None
    participant_id: ParticipantId | None = None
    reason: Annotated[str, StringConstraints(max_length=500)] = ""

    @model_validator(mode="after")
    def _one_target(self) -> TokenRevocation:
        if (self.token_id is None) == (self.participant_id is None):
            raise ValueError("name exactly one of token_id and participant_id")
        return self

    @property
    def key(self) -> bytes:
        if self.token_id is not None:
            return f"{self.session_id}/token/{self.token_id}".encode()
        return f"{self.session_id}/participant/{self.participant_id}".encode()


# ---------------------------------------------------------------- encode / decode

JsonRecord = (
    SessionRecord
    | ProsodyHops
    | FaceFrame
    | TagEvent
    | LabelWindow
    | DeadLetter
    | PipelineCounters
    | TokenRevocation
    | RatingBatch
    | RaterLag
    | ModelReading
    | ScenarioRecord
    | Cue
    | Coverage
    | LobbyPresence
    | CastingDay
)
AnyRecord = JsonRecord | AudioChunk | VideoFrame
R = TypeVar("R", bound=AnyRecord)

JSON_RECORD_TYPES: tuple[type[Record], ...] = (
    SessionRecord,
    ProsodyHops,
    FaceFrame,
    TagEvent,
    LabelWindow,
    DeadLetter,
    PipelineCounters,
    TokenRevocation,
    RatingBatch,
    RaterLag,
    ModelReading,
    ScenarioRecord,
    Cue,
    Coverage,
    LobbyPresence,
    CastingDay,
)
MEDIA_RECORD_TYPES: tuple[type[AudioChunk] | type[VideoFrame], ...] = (AudioChunk, VideoFrame)
MEDIA_HEADER_TYPES: dict[str, type[MediaHeader]] = {
    "audio_chunk": AudioChunkHeader,
    "video_frame": VideoFrameHeader,
}

#: Every payload with a JSON Schema: the JSON records and the media headers.
SCHEMA_MODELS: tuple[type[Record], ...] = (
    *JSON_RECORD_TYPES,
    ProsodyFrame,  # a row of the archive's prosody.parquet: one hop with its performer
    AudioChunkHeader,
    VideoFrameHeader,
)

Headers = Sequence[tuple[str, bytes]]


@dataclass(frozen=True)
class KafkaMessage:
    """A record in wire form, ready for any producer."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def _type_header(record_type: str) -> tuple[str, bytes]:
    return (RECORD_HEADER, f"{record_type}/{SCHEMA_VERSION}".encode())


def encode(record: AnyRecord) -> KafkaMessage:
    """The one way a record becomes a Kafka message."""
    if isinstance(record, AudioChunk | VideoFrame):
        payload = record.pcm if isinstance(record, AudioChunk) else record.jpeg
        return KafkaMessage(
            key=record.key,
            value=payload,
            headers=[
                _type_header(record.record_type),
                (MEDIA_HEADER, record.header.model_dump_json().encode()),
            ],
        )
    return KafkaMessage(
        key=record.key,
        value=record.model_dump_json().encode(),
        headers=[_type_header(record.record_type)],
    )


def _header(headers: Headers | None, name: str) -> bytes | None:
    for header_name, header_value in headers or ():
        if header_name == name:
            return header_value
    return None


def _check_type_header(headers: Headers | None, record_type: str) -> None:
    raw = _header(headers, RECORD_HEADER)
    if raw is None:
        return
    expected = f"{record_type}/{SCHEMA_VERSION}"
    if raw != expected.encode():
        found = raw.decode("utf-8", errors="replace")
        raise RecordError(f"header {RECORD_HEADER} is {found!r}, expected {expected!r}")


def _validate(model: type[Record], data: bytes) -> Any:
    try:
        parsed = strict_json.loads_object(data, max_bytes=MAX_JSON_RECORD_BYTES)
    except strict_json.JsonInputError as exc:
        raise RecordError(exc.reason, record_type=model.record_type) from None
    try:
        return model.model_validate(parsed)
    except ValidationError as exc:
        raise RecordError.from_validation(exc, model.record_type) from None


def decode(record_class: type[R], value: bytes | None, headers: Headers | None = None) -> R:
    """Decode one Kafka message as ``record_class``; raises :class:`RecordError`."""
    record_type = record_class.record_type
    if value is None:
        raise RecordError("empty message (null value)", record_type=record_type)
    try:
        _check_type_header(headers, record_type)
    except RecordError as exc:
        raise RecordError(exc.reason, record_type=record_type) from None
    if record_class is AudioChunk or record_class is VideoFrame:
        header_json = _header(headers, MEDIA_HEADER)
        if header_json is None:
            raise RecordError(f"missing header {MEDIA_HEADER}", record_type=record_type)
        header = _validate(MEDIA_HEADER_TYPES[record_type], header_json)
        return record_class(header, value)  # type: ignore[call-arg]
    return _validate(record_class, value)  # type: ignore[arg-type]


def json_schema(model: type[Record]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema["$id"] = f"urn:livetag:{model.record_type}:{SCHEMA_VERSION}"
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
