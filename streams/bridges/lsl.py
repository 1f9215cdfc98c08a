"""The Lab Streaming Layer bridge: one session's features, labels and tags as LSL streams.

Labs record EEG, eye tracking and physiology with LSL (LabRecorder writes XDF). This
bridge follows one session's Kafka topics and publishes, per performer of the session's
roster (performers added to the roster later get theirs when the newer session record
arrives), four LSL outlets:

- ``prosody``: one sample per 10 ms hop (nominal rate 100 Hz, float64): F0, voicing,
  loudness and the voice-quality fields (NaN where the hop has no value);
- ``face``: one sample per video frame (nominal rate = the analysis rate, float64):
  face present, head pose and the 52 blendshape scores by name. A frame the processors
  skipped (``skipped: late``) is pushed with every channel NaN (the stream keeps its
  rate); a frame without a face has ``face_present`` 0 and NaN elsewhere. The 478
  landmarks are left out: 1434 channels per frame would dwarf everything else in an XDF
  file, and the archive keeps them;
- ``labels``: one sample per label-window revision (irregular rate: a correction repeats
  its window's timestamp with a higher ``revision``; the newest revision counts):
  window features, the consensus as an index into the vocabulary listed in the stream's
  description, and per vocabulary label the number of raters who have it active;
- ``tags``: a marker stream (type ``Markers``, one string channel, irregular rate): one
  sample per tag event, the tag record's JSON exactly as on ``livetag.tags``.

Time: every sample carries its record's ``ts_us`` (session clock: Unix microseconds of the
capture server's wall clock) mapped to LSL's clock (``local_clock()``, monotonic seconds)
with one offset measured at start: ``lsl_s = (ts_us - offset_us) / 1e6``. The offset and
its uncertainty are in every stream's description (``desc/clock``), so a reader can undo
the mapping exactly: ``ts_us = round(lsl_s * 1e6) + offset_us``. Samples are never stamped
with the time they were pushed.

Everything that needs no network (layouts, descriptions, the clock mapping, record ->
sample conversion) is plain functions and :class:`BridgeCore`; :func:`run_bridge` does the
I/O (Kafka consumer, LSL outlets, the optional marker inlet).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import math
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Final, Literal, Protocol, TypeAlias

import pylsl  # type: ignore[import-untyped]
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition

from streams import records
from streams.errors import BadInputError
from streams.kafka import clients, topics
from streams.kafka.sessions import SessionDirectory
from streams.session_clock import now_us
from streams.settings import Settings

log = logging.getLogger(__name__)

SERVICE: Final = "lsl-bridge"

StreamKind = Literal["prosody", "face", "labels", "tags"]
STREAM_KINDS: tuple[StreamKind, ...] = ("prosody", "face", "labels", "tags")

#: LSL content types. The XDF conventions name types for raw signals (EEG, Audio, Gaze,
#: MoCap, ...) and ``Markers`` for event strings; none covers derived features, and
#: borrowing ``Audio`` for prosody would tell importers it is a waveform. So the feature
#: streams get types of their own, and the tags the conventional ``Markers`` that EEGLAB,
#: MNE and LabRecorder users filter events by.
STREAM_TYPES: Final[dict[StreamKind, str]] = {
    "prosody": "Prosody",
    "face": "FaceExpression",
    "labels": "EmotionLabels",
    "tags": "Markers",
}

#: The blendshape categories of mediapipe's FaceLandmarker (streams.features.face), in its output
#: order. The face outlet's channels must be fixed before the first face is seen, so the
#: names are listed here; tests/unit/test_lsl_bridge.py checks them against mediapipe.
BLENDSHAPE_NAMES: Final[tuple[str, ...]] = (
    "_neutral",
    "browDownLeft",
    "browDownRight",
    "browInnerUp",
    "browOuterUpLeft",
    "browOuterUpRight",
    "cheekPuff",
    "cheekSquintLeft",
    "cheekSquintRight",
    "eyeBlinkLeft",
    "eyeBlinkRight",
    "eyeLookDownLeft",
    "eyeLookDownRight",
    "eyeLookInLeft",
    "eyeLookInRight",
    "eyeLookOutLeft",
    "eyeLookOutRight",
    "eyeLookUpLeft",
    "eyeLookUpRight",
    "eyeSquintLeft",
    "eyeSquintRight",
    "eyeWideLeft",
    "eyeWideRight",
    "jawForward",
    "jawLeft",
    "jawOpen",
    "jawRight",
    "mouthClose",
    "mouthDimpleLeft",
    "mouthDimpleRight",
    "mouthFrownLeft",
    "mouthFrownRight",
    "mouthFunnel",
    "mouthLeft",
    "mouthLowerDownLeft",
    "mouthLowerDownRight",
    "mouthPressLeft",
    "mouthPressRight",
    "mouthPucker",
    "mouthRight",
    "mouthRollLower",
    "mouthRollUpper",
    "mouthShrugLower",
    "mouthShrugUpper",
    "mouthSmileLeft",
    "mouthSmileRight",
    "mouthStretchLeft",
    "mouthStretchRight",
    "mouthUpperUpLeft",
    "mouthUpperUpRight",
    "noseSneerLeft",
    "noseSneerRight",
)

#: Codes of the labels stream's ``*_missing`` channels (a window's ``missing`` reasons).
GAP_CODES: Final[dict[str, int]] = {"late": 1, "ended": 2, "no_media": 3, "absent": 4}

NAN: Final = math.nan


# ---------------------------------------------------------------- the clock mapping


@dataclass(frozen=True)
class ClockMapping:
    """Session clock (Unix µs) <-> LSL clock (``pylsl.local_clock()``, seconds).

    ``offset_us`` = wall clock minus LSL clock, both in integer microseconds, read together
    once. Integer arithmetic first keeps the mapping exact: ``ts_us - offset_us`` is the
    LSL instant in µs (an integer of the size of the machine's uptime), and a double holds
    it divided by 1e6 to far better than a microsecond, so the inverse gives ``ts_us`` back.
    """

    offset_us: int
    uncertainty_us: int = 0
    measured_at_lsl_s: float = 0.0

    def to_lsl_s(self, ts_us: int) -> float:
        seconds = (ts_us - self.offset_us) / 1e6
        # liblsl reads a timestamp of exactly 0.0 as "now" and -1.0 as "deduce from the
        # rate": a sample mapped onto one of them moves by the smallest step instead.
        if seconds in (0.0, pylsl.util.DEDUCED_TIMESTAMP):
            seconds = math.nextafter(seconds, math.inf)
        return seconds

    def to_session_us(self, lsl_s: float) -> int:
        return round(lsl_s * 1e6) + self.offset_us


def measure_clock_mapping(
    local_clock: Callable[[], float] = pylsl.local_clock,
    wall_ns: Callable[[], int] = time.time_ns,
    tries: int = 25,
) -> ClockMapping:
    """Read the wall clock between two LSL clock readings, ``tries`` times, and keep the
    tightest pair: the wall reading is set against the middle of its LSL bracket, and half
    the bracket is the uncertainty (a preempted reading only widens its own bracket)."""
    best: tuple[float, int, float] | None = None
    for _ in range(tries):
        before = local_clock()
        wall = wall_ns()
        after = local_clock()
        width = after - before
        if best is None or width < best[0]:
            best = (width, wall, (before + after) / 2)
    assert best is not None
    width, wall, middle = best
    return ClockMapping(
        offset_us=wall // 1000 - round(middle * 1e6),
        uncertainty_us=math.ceil(width * 1e6 / 2),
        measured_at_lsl_s=middle,
    )


# ---------------------------------------------------------------- layouts and descriptions


@dataclass(frozen=True)
class Channel:
    label: str
    unit: str
    type: str


#: An XML description as data: ordered (element name, text or child elements) pairs.
DescTree: TypeAlias = list[tuple[str, "str | DescTree"]]


@dataclass(frozen=True)
class StreamLayout:
    """Everything an outlet is declared with; fixed for the outlet's lifetime."""

    session_id: str
    performer_id: str
    kind: StreamKind
    nominal_srate: float
    channel_format: Literal["double64", "string"]
    channels: tuple[Channel, ...]
    #: Kind-specific description elements (the vocabulary, codes).
    extra: DescTree = field(default_factory=list)
    #: The labels stream's vocabulary, in the order of its ``raters_*`` channels.
    vocabulary: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        # No session id in the name: LabRecorder's RequiredStreams can list the same
        # names for every session; the source id tells sessions apart.
        return f"livetag-{self.performer_id}-{self.kind}"

    @property
    def type(self) -> str:
        return STREAM_TYPES[self.kind]

    @property
    def source_id(self) -> str:
        return source_id(self.session_id, self.performer_id, self.kind)

    @property
    def key(self) -> StreamKey:
        return (self.performer_id, self.kind)


StreamKey = tuple[str, StreamKind]


def source_id(session_id: str, performer_id: str, kind: StreamKind) -> str:
    """Stable across bridge restarts, so an inlet (LabRecorder) finds the stream again."""
    return f"livetag:{session_id}:{performer_id}:{kind}"


PROSODY_CHANNELS: Final = (
    Channel("f0_hz", "Hz", "F0"),
    Channel("voicing_probability", "probability", "Voicing"),
    Channel("voiced", "boolean", "Voicing"),
    Channel("loudness_db", "dBFS", "Loudness"),
    Channel("hnr_db", "dB", "VoiceQuality"),
    Channel("jitter_local", "ratio", "VoiceQuality"),
    Channel("shimmer_local", "ratio", "VoiceQuality"),
)

FACE_CHANNELS: Final = (
    Channel("face_present", "boolean", "FacePresence"),
    Channel("head_yaw_deg", "degrees", "HeadPose"),
    Channel("head_pitch_deg", "degrees", "HeadPose"),
    Channel("head_roll_deg", "degrees", "HeadPose"),
    *(Channel(name, "score", "Blendshape") for name in BLENDSHAPE_NAMES),
)

#: The labels stream's channels before the per-label ones.
LABEL_CHANNELS: Final = (
    Channel("revision", "count", "Revision"),
    Channel("correction", "boolean", "Revision"),
    Channel("consensus", "index", "Consensus"),
    Channel("consensus_agreement", "fraction", "Consensus"),
    Channel("f0_mean_hz", "Hz", "F0"),
    Channel("loudness_mean_db", "dBFS", "Loudness"),
    Channel("voiced_fraction", "fraction", "Voicing"),
    Channel("face_present_fraction", "fraction", "FacePresence"),
    Channel("head_yaw_deg", "degrees", "HeadPose"),
    Channel("head_pitch_deg", "degrees", "HeadPose"),
    Channel("head_roll_deg", "degrees", "HeadPose"),
    Channel("prosody_hops", "count", "Coverage"),
    Channel("face_frames", "count", "Coverage"),
    Channel("face_frames_skipped", "count", "Coverage"),
    Channel("prosody_missing", "code", "Coverage"),
    Channel("face_missing", "code", "Coverage"),
)

TAG_CHANNELS: Final = (Channel("tag", "json", "Marker"),)

#: The prosody hop rate (records.ProsodyHops' hop): 10 ms, 100 Hz.
HOP_US: Final[int] = records.ProsodyHops.model_fields["hop_us"].default


def _leaves(name: str, values: Iterable[str]) -> DescTree:
    return [(name, value) for value in values]


def label_channel_name(label: str) -> str:
    return f"raters_{label}"


def layouts_for(
    session: records.SessionRecord, performer_id: str, *, face_rate_hz: float
) -> list[StreamLayout]:
    """The four outlets of one performer (the vocabulary is the session's as of now)."""
    vocabulary = tuple(entry.label for entry in session.vocabulary)
    session_id = session.session_id
    return [
        StreamLayout(
            session_id,
            performer_id,
            "prosody",
            nominal_srate=1e6 / HOP_US,
            channel_format="double64",
            channels=PROSODY_CHANNELS,
            extra=[("missing_values", "NaN: the hop has no such value")],
        ),
        StreamLayout(
            session_id,
            performer_id,
            "face",
            nominal_srate=face_rate_hz,
            channel_format="double64",
            channels=FACE_CHANNELS,
            extra=[
                (
                    "missing_values",
                    "NaN: the value is absent; every channel NaN: the frame was not "
                    "analysed (skipped); face_present 0: analysed, no face",
                )
            ],
        ),
        StreamLayout(
            session_id,
            performer_id,
            "labels",
            nominal_srate=pylsl.IRREGULAR_RATE,
            channel_format="double64",
            channels=(
                *LABEL_CHANNELS,
                *(Channel(label_channel_name(label), "raters", "Label") for label in vocabulary),
            ),
            vocabulary=vocabulary,
            extra=[
                ("vocabulary", _leaves("label", vocabulary)),
                ("consensus_index", "index into vocabulary (0 = first label); NaN: none"),
                (
                    "missing_codes",
                    _leaves(
                        "code",
                        ["0=present", *(f"{code}={reason}" for reason, code in GAP_CODES.items())],
                    ),
                ),
                (
                    "revisions",
                    "a correction repeats its window's timestamp with a higher revision; "
                    "the newest revision of a timestamp counts",
                ),
                ("timestamp", "the window's start"),
            ],
        ),
        StreamLayout(
            session_id,
            performer_id,
            "tags",
            nominal_srate=pylsl.IRREGULAR_RATE,
            channel_format="string",
            channels=TAG_CHANNELS,
            extra=[("sample", "the tag record's JSON, exactly as on livetag.tags")],
        ),
    ]


def _livetag_version() -> str:
    try:
        return metadata.version("livetag")
    except metadata.PackageNotFoundError:
        return "unknown"


def description(
    layout: StreamLayout,
    clock: ClockMapping,
    session: records.SessionRecord,
    *,
    source_topic: str,
) -> DescTree:
    """The stream's ``desc`` element: channels (label, unit, type: the XDF meta-data
    conventions), what made it (acquisition), the clock mapping, and kind-specific parts."""
    display = {p.performer_id: p.display_name for p in session.roster}
    return [
        (
            "channels",
            [
                ("channel", [("label", c.label), ("unit", c.unit), ("type", c.type)])
                for c in layout.channels
            ],
        ),
        (
            "acquisition",
            [
                ("manufacturer", "livetag"),
                ("model", "livetag lsl bridge"),
                ("version", _livetag_version()),
                ("session_id", layout.session_id),
                ("performer_id", layout.performer_id),
                ("performer_name", display.get(layout.performer_id, layout.performer_id)),
                ("stream", layout.kind),
                ("source_topic", source_topic),
                ("schema_version", str(records.SCHEMA_VERSION)),
            ],
        ),
        (
            "clock",
            [
                ("session_clock", "unix_us: the capture server's wall clock, microseconds"),
                ("offset_us", str(clock.offset_us)),
                ("offset_uncertainty_us", str(clock.uncertainty_us)),
                ("measured_at_lsl_s", repr(clock.measured_at_lsl_s)),
                ("to_lsl", "lsl_s = (ts_us - offset_us) / 1e6"),
                ("to_session", "ts_us = round(lsl_s * 1e6) + offset_us"),
            ],
        ),
        *layout.extra,
    ]


def _write_desc(element: Any, tree: DescTree) -> None:
    for name, value in tree:
        if isinstance(value, str):
            element.append_child_value(name, value)
        else:
            _write_desc(element.append_child(name), value)


def stream_info(layout: StreamLayout, desc: DescTree) -> pylsl.StreamInfo:
    """The pylsl declaration of an outlet (no network: an outlet made from it goes live)."""
    info = pylsl.StreamInfo(
        name=layout.name,
        type=layout.type,
        channel_count=len(layout.channels),
        nominal_srate=layout.nominal_srate,
        channel_format=pylsl.cf_string if layout.channel_format == "string" else pylsl.cf_double64,
        source_id=layout.source_id,
    )
    _write_desc(info.desc(), desc)
    return info


# ---------------------------------------------------------------- record -> sample


def _number(value: float | int | None) -> float:
    return NAN if value is None else float(value)


def _flag(value: bool | None) -> float:
    return NAN if value is None else float(value)


def _pose(pose: records.HeadPose | None) -> list[float]:
    """Yaw, pitch and roll in degrees; NaN without a pose."""
    if pose is None:
        return [NAN, NAN, NAN]
    return [float(pose.yaw_deg), float(pose.pitch_deg), float(pose.roll_deg)]


def prosody_sample(hop: records.HopMeasures) -> list[float]:
    quality = hop.voice_quality
    return [
        _number(hop.f0_hz),
        float(hop.voicing_probability),
        _flag(hop.voiced),
        float(hop.loudness_db),
        NAN if quality is None else _number(quality.hnr_db),
        NAN if quality is None else _number(quality.jitter_local),
        NAN if quality is None else _number(quality.shimmer_local),
    ]


def face_sample(frame: records.FaceFrame) -> list[float]:
    """Skipped: all NaN. No face: face_present 0, the rest NaN. Names outside
    BLENDSHAPE_NAMES are not in the layout (see :func:`unlisted_blendshapes`)."""
    return [
        _flag(frame.face_present),
        *_pose(frame.head_pose),
        *(_number(frame.blendshapes.get(name)) for name in BLENDSHAPE_NAMES),
    ]


def unlisted_blendshapes(frame: records.FaceFrame) -> list[str]:
    return [name for name in frame.blendshapes if name not in _BLENDSHAPE_SET]


_BLENDSHAPE_SET: Final = frozenset(BLENDSHAPE_NAMES)


def label_sample(window: records.LabelWindow, vocabulary: Sequence[str]) -> list[float]:
    """``vocabulary``: the labels of the stream's layout, in channel order."""
    features = window.features
    active: Counter[str] = Counter()
    for rater in window.raters:
        # A rater counts once per label, however many of their tags hold it active.
        active.update({label.label for label in rater.labels})
    consensus = NAN
    if window.consensus is not None and window.consensus in vocabulary:
        consensus = float(vocabulary.index(window.consensus))
    return [
        float(window.revision),
        float(window.correction),
        consensus,
        _number(window.consensus_agreement),
        _number(features.f0_mean_hz),
        _number(features.loudness_mean_db),
        _number(features.voiced_fraction),
        _number(features.face_present_fraction),
        *_pose(features.head_pose),
        float(features.prosody_hops),
        float(features.face_frames),
        float(features.face_frames_skipped),
        float(GAP_CODES[window.missing["prosody"]]) if "prosody" in window.missing else 0.0,
        float(GAP_CODES[window.missing["face"]]) if "face" in window.missing else 0.0,
        *(float(active[label]) for label in vocabulary),
    ]


def tag_sample(tag: records.TagEvent) -> list[str]:
    return [records.encode(tag).value.decode("utf-8")]


# ---------------------------------------------------------------- the core (no I/O)


@dataclass
class Push:
    """Samples for one outlet, each with its LSL timestamp."""

    key: StreamKey
    samples: list[list[float]] | list[list[str]]
    timestamps: list[float]


@dataclass
class BridgeCounts:
    """What the bridge did, per stream kind; printed at exit."""

    samples: Counter[str] = field(default_factory=Counter)
    malformed: Counter[str] = field(default_factory=Counter)
    duplicates: Counter[str] = field(default_factory=Counter)
    unknown_performer: Counter[str] = field(default_factory=Counter)
    unlisted: Counter[str] = field(default_factory=Counter)
    markers_taken: int = 0
    markers_refused: int = 0
    tags_sent: int = 0
    dead_letters: int = 0

    def lines(self) -> list[str]:
        """One ``what<TAB>stream<TAB>count`` line per counter (zeros included for the
        per-stream ones, so a reader sees nothing was lost rather than nothing said)."""
        out: list[str] = []
        for name in ("samples", "malformed", "duplicates", "unknown_performer", "unlisted"):
            counter: Counter[str] = getattr(self, name)
            out.extend(f"{name}\t{kind}\t{counter[kind]}" for kind in STREAM_KINDS)
        out.extend(
            f"{name}\tmarkers\t{getattr(self, name)}"
            for name in ("markers_taken", "markers_refused", "tags_sent", "dead_letters")
        )
        return out


#: Malformed records of one stream logged one by one; after that one line per this many.
_LOG_EACH_FIRST = 20
_LOG_EVERY = 100

_UNSTATED_FINAL_US: Final = 600_000_000


class RecentInstants:
    """The ``ts_us`` of a performer's recent hops or frames, to push each once.

    A restarted processor sends again what it sent since its last commit (about a second):
    the same instants, found here. Exact instants rather than "not after the newest one":
    the capture clock may be re-anchored backwards, and the frames after that are new."""

    def __init__(self, keep: int = 4096) -> None:
        self._order: deque[int] = deque()
        self._seen: set[int] = set()
        self._keep = keep

    def add(self, ts_us: int) -> bool:
        """False if ``ts_us`` was seen lately; else remember it."""
        if ts_us in self._seen:
            return False
        self._seen.add(ts_us)
        self._order.append(ts_us)
        if len(self._order) > self._keep:
            self._seen.discard(self._order.popleft())
        return True


_RECORD_CLASSES: Final[dict[StreamKind, Any]] = {
    "prosody": records.ProsodyHops,
    "face": records.FaceFrame,
    "labels": records.LabelWindow,
    "tags": records.TagEvent,
}


class BridgeCore:
    """Kafka messages of one session in, LSL pushes out. No I/O; never raises on input.

    Dedupe (livetag is at-least-once): a prosody hop or face frame once per instant among
    its performer's recent ones (:class:`RecentInstants`); a label window only with a
    revision newer than the one pushed for its instant; a tag once per ``tag_id``.
    """

    def __init__(
        self,
        session: records.SessionRecord,
        clock: ClockMapping,
        *,
        face_rate_hz: float,
    ) -> None:
        self.session = session
        self.clock = clock
        self.face_rate_hz = face_rate_hz
        self.counts = BridgeCounts()
        self.layouts: dict[StreamKey, StreamLayout] = {}
        self._key_prefix = f"{session.session_id}/".encode()
        # A session's topic names never change (they are made from its id).
        self._kinds: dict[str, StreamKind] = {
            session.topics.prosody: "prosody",
            session.topics.face: "face",
            topics.LABELS: "labels",
            topics.TAGS: "tags",
        }
        self._recent: dict[StreamKey, RecentInstants] = {}
        # (performer, window ts_us) -> (newest revision pushed, final_after_us or None).
        self._windows: dict[tuple[str, int], tuple[int, int | None]] = {}
        self._newest_window_us = 0
        self._tag_ids: set[str] = set()
        self.update_session(session)

    def kind_of(self, topic: str) -> StreamKind | None:
        return self._kinds.get(topic)

    def topics(self) -> list[str]:
        return list(self._kinds)

    def source_topic(self, kind: StreamKind) -> str:
        return next(topic for topic, of in self._kinds.items() if of == kind)

    def update_session(self, session: records.SessionRecord) -> list[StreamLayout]:
        """Take a newer session record; returns the layouts of performers new to the roster."""
        self.session = session
        new: list[StreamLayout] = []
        for performer in session.roster:
            if (performer.performer_id, "prosody") in self.layouts:
                continue
            for layout in layouts_for(
                session, performer.performer_id, face_rate_hz=self.face_rate_hz
            ):
                self.layouts[layout.key] = layout
                new.append(layout)
        return new

    def take(self, message: ConsumerRecord[bytes, bytes]) -> list[Push]:
        """The pushes one message makes (none for another session's or a bad one)."""
        kind = self.kind_of(message.topic)
        if kind is None:
            return []
        if kind in ("labels", "tags") and not (message.key or b"").startswith(self._key_prefix):
            return []  # a shared topic: another session's record
        try:
            record = records.decode(_RECORD_CLASSES[kind], message.value, message.headers)
        except records.RecordError as exc:
            self._malformed(kind, message, exc.reason)
            return []
        except Exception as exc:  # a decoder bug costs this record, never the bridge
            self._malformed(kind, message, repr(exc))
            return []
        assert isinstance(record, records.PerformerRecord)
        if record.session_id != self.session.session_id:
            return []
        if (record.performer_id, kind) not in self.layouts:
            self.counts.unknown_performer[kind] += 1
            if self.counts.unknown_performer[kind] == 1:
                log.warning(
                    "%s record for %r, who is not on session %s's roster: not published",
                    kind,
                    record.performer_id,
                    self.session.session_id,
                )
            return []
        return self._convert(kind, record)

    def _convert(self, kind: StreamKind, record: records.PerformerRecord) -> list[Push]:
        key: StreamKey = (record.performer_id, kind)
        samples: list[Any] = []
        stamps: list[float] = []
        if isinstance(record, records.ProsodyHops):
            recent = self._recent.setdefault(key, RecentInstants())
            for hop in record.hops:
                if not recent.add(hop.ts_us):
                    self.counts.duplicates[kind] += 1
                    continue
                samples.append(prosody_sample(hop))
                stamps.append(self.clock.to_lsl_s(hop.ts_us))
        elif isinstance(record, records.FaceFrame):
            if not self._recent.setdefault(key, RecentInstants()).add(record.ts_us):
                self.counts.duplicates[kind] += 1
            else:
                if unlisted_blendshapes(record):
                    self.counts.unlisted[kind] += 1
                samples.append(face_sample(record))
                stamps.append(self.clock.to_lsl_s(record.ts_us))
        elif isinstance(record, records.LabelWindow):
            identity = (record.performer_id, record.ts_us)
            pushed = self._windows.get(identity)
            if pushed is not None and pushed[0] >= record.revision:
                self.counts.duplicates[kind] += 1
            else:
                self._windows[identity] = (record.revision, record.final_after_us)
                self._forget_final_windows(record.ts_us)
                vocabulary = self.layouts[(record.performer_id, "labels")].vocabulary
                if record.consensus is not None and record.consensus not in vocabulary:
                    self.counts.unlisted[kind] += 1
                samples.append(label_sample(record, vocabulary))
                stamps.append(self.clock.to_lsl_s(record.ts_us))
        elif isinstance(record, records.TagEvent):
            if record.tag_id in self._tag_ids:
                self.counts.duplicates[kind] += 1
            else:
                self._tag_ids.add(record.tag_id)
                samples.append(tag_sample(record))
                stamps.append(self.clock.to_lsl_s(record.ts_us))
        if not samples:
            return []
        self.counts.samples[kind] += len(samples)
        return [Push(key, samples, stamps)]

    def _forget_final_windows(self, newest_us: int) -> None:
        """Drop the windows no revision can follow any more (their final_after_us is past
        the newest window seen), so a long session does not grow the table without end."""
        if newest_us <= self._newest_window_us:
            return
        self._newest_window_us = newest_us
        if len(self._windows) < 4096:
            return
        self._windows = {
            identity: pushed
            for identity, pushed in self._windows.items()
            # A window without final_after_us (older aligners): kept for ten minutes.
            if (identity[1] + _UNSTATED_FINAL_US if pushed[1] is None else pushed[1]) >= newest_us
        }

    def _malformed(self, kind: StreamKind, message: ConsumerRecord[bytes, bytes], why: str) -> None:
        self.counts.malformed[kind] += 1
        count = self.counts.malformed[kind]
        if count <= _LOG_EACH_FIRST or count % _LOG_EVERY == 0:
            log.warning(
                "malformed %s record skipped (%s partition %s offset %s; %d so far): %s",
                kind,
                message.topic,
                message.partition,
                message.offset,
                count,
                why,
            )


# ---------------------------------------------------------------- markers -> tags


def marker_tags(
    session: records.SessionRecord,
    marker: str,
    lsl_s: float,
    clock: ClockMapping,
    *,
    rater_id: str,
    performer_id: str | None,
    span_us: int,
    stream_uid: str,
    received_us: int,
) -> list[records.TagEvent]:
    """The point tags one LSL marker makes: one per target performer (``performer_id``, or
    every performer on the roster). Raises ValueError when the marker is not a label of
    the session's vocabulary (or the target is not on the roster).

    ``ts_us`` is the marker's own timestamp mapped back to the session clock; the timing
    keeps what was used, as the tag service does for a key press (the LSL instant as the
    client's press, the offset, its uncertainty). A stimulus program is no director and
    no performer: its tags come from an ``observer``."""
    label = marker.strip()
    vocabulary = [entry.label for entry in session.vocabulary]
    if label not in vocabulary:
        raise ValueError(
            f"marker {label!r} is not in session {session.session_id}'s vocabulary "
            f"({', '.join(vocabulary)})"
        )
    roster = [p.performer_id for p in session.roster]
    if performer_id is not None and performer_id not in roster:
        raise ValueError(
            f"performer {performer_id!r} is not on session {session.session_id}'s roster"
        )
    press_lsl_us = round(lsl_s * 1e6)
    ts_us = press_lsl_us + clock.offset_us
    targets = roster if performer_id is None else [performer_id]
    tags = []
    for target in targets:
        # The same marker read twice (an inlet that recovered) makes the same tag_id, so
        # consumers that dedupe on it see it once.
        identity = f"{stream_uid}|{lsl_s!r}|{label}|{target}|{rater_id}".encode()
        tags.append(
            records.TagEvent(
                ts_us=max(0, ts_us),
                session_id=session.session_id,
                performer_id=target,
                tag_id="lsl-" + hashlib.blake2b(identity, digest_size=12).hexdigest(),
                rater_id=rater_id,
                rater_role="observer",
                action="point",
                label=label,
                span_us=span_us,
                timing=records.TagTiming(
                    client_press_ts_us=press_lsl_us,
                    clock_offset_us=clock.offset_us,
                    rtt_us=0,
                    clock_uncertainty_us=clock.uncertainty_us,
                ),
                received_ts_us=received_us,
            )
        )
    return tags


def marker_source(session_id: str, stream_name: str) -> str:
    """The dead letters' ``source_topic`` for a refused marker: not a Kafka topic, so it
    says ``lsl:``; with the session id, so ``livetag tail deadletter --session`` finds it."""
    return f"lsl:{session_id}:{stream_name}"


def refused_marker_letter(
    session_id: str, stream_name: str, marker: str, lsl_s: float, reason: str, received_us: int
) -> records.DeadLetter:
    payload = json.dumps(
        {"stream": stream_name, "marker": marker, "lsl_timestamp": lsl_s},
        separators=(",", ":"),
    ).encode()
    return records.DeadLetter.of(
        ts_us=received_us,
        source_topic=marker_source(session_id, stream_name),
        service=SERVICE,
        reason=reason,
        payload=payload,
        key=session_id.encode(),
    )


# ---------------------------------------------------------------- I/O: outlets, Kafka, inlet


class BridgeError(BadInputError, RuntimeError):
    """The bridge cannot run (no such session, an archived one, a bad marker stream)."""


class TagSink(Protocol):
    """Where the marker inlet's tags go: taggers.outbox.TagOutbox in ``livetag lsl``."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def deliver(self, tag: records.TagEvent) -> Any: ...


class DirectTagSink:
    """Tags produced straight to livetag.tags (no spool while the broker is away)."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def deliver(self, tag: records.TagEvent) -> None:
        message = records.encode(tag)
        await self._producer.send_and_wait(
            topics.TAGS, message.value, key=message.key, headers=message.headers
        )


@dataclass(frozen=True)
class MarkerInletOptions:
    stream_name: str
    rater_id: str
    performer_id: str | None = None
    resolve_timeout_s: float = 1.0


class Outlets:
    """The live pylsl outlets by (performer, kind). Blocking calls: use from a thread."""

    def __init__(self) -> None:
        self._outlets: dict[StreamKey, pylsl.StreamOutlet] = {}

    def open(self, layout: StreamLayout, desc: DescTree) -> None:
        self._outlets[layout.key] = pylsl.StreamOutlet(stream_info(layout, desc))

    def push(self, push: Push) -> None:
        outlet = self._outlets[push.key]
        if len(push.samples) == 1:
            outlet.push_sample(push.samples[0], push.timestamps[0])
        else:
            outlet.push_chunk(push.samples, push.timestamps)

    def have_consumers(self) -> int:
        return sum(1 for outlet in self._outlets.values() if outlet.have_consumers())

    def close(self) -> None:
        # Destroying an outlet tells its inlets the stream ended (they recover by
        # source_id when a new bridge publishes it again).
        self._outlets.clear()


async def _seek_to_session_start(
    consumer: AIOKafkaConsumer, partitions: list[TopicPartition], created_ts_us: int
) -> None:
    from streams.labels.aligner import offset_at_time

    for partition in partitions:
        consumer.seek(partition, await offset_at_time(consumer, partition, created_ts_us // 1000))


async def _assign(
    consumer: AIOKafkaConsumer, core: BridgeCore, settings: Settings, *, from_beginning: bool
) -> None:
    available = await consumer.topics()  # refreshes the metadata
    assigned: dict[str, list[TopicPartition]] = {}
    for topic in core.topics():
        numbers = consumer.partitions_for_topic(topic) if topic in available else None
        if not numbers:
            raise BridgeError(f"topic {topic} does not exist on {settings.bootstrap_servers}")
        assigned[topic] = [TopicPartition(topic, n) for n in sorted(numbers)]
    consumer.assign([tp for tps in assigned.values() for tp in tps])
    if not from_beginning:
        await consumer.seek_to_end(*(tp for tps in assigned.values() for tp in tps))
        return
    session = core.session
    await consumer.seek_to_beginning(
        *assigned[session.topics.prosody], *assigned[session.topics.face]
    )
    # Shared topics hold every session: start at this one's creation, not at the oldest.
    await _seek_to_session_start(
        consumer, assigned[topics.LABELS] + assigned[topics.TAGS], session.created_ts_us
    )


async def _wait_for_first_inlet(outlets: Outlets, stop: asyncio.Event, settle_s: float) -> None:
    """Until an inlet connects, then ``settle_s`` more without a new one (a recorder
    connects to the streams it records within moments of each other)."""
    log.info("waiting for an inlet (e.g. LabRecorder recording) before replaying the session")
    connected = 0
    quiet_since = time.monotonic()
    while not stop.is_set():
        now_connected = await asyncio.to_thread(outlets.have_consumers)
        if now_connected != connected:
            connected, quiet_since = now_connected, time.monotonic()
        elif connected and time.monotonic() - quiet_since >= settle_s:
            log.info("%d streams have inlets: replaying from the session's start", connected)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def run_bridge(
    settings: Settings,
    session_id: str,
    *,
    stop: asyncio.Event,
    from_beginning: bool = False,
    marker_inlet: MarkerInletOptions | None = None,
    tag_sink: Callable[[AIOKafkaProducer], TagSink] | None = None,
    inlet_settle_s: float = 1.0,
    session_timeout_s: float = 5.0,
) -> BridgeCounts:
    """Publish the session's streams until ``stop`` is set or the session is archived
    (its topics then go); returns the counts. Raises :class:`BridgeError` when it cannot
    start. ``tag_sink`` makes the sink for the marker inlet's tags from a producer
    (default: :class:`DirectTagSink`)."""
    topics.check_session_id(session_id)
    directory = SessionDirectory(settings)
    await directory.start()
    try:
        try:
            session = await directory.wait_for(session_id, timeout_s=session_timeout_s)
        except TimeoutError:
            session = None
        if session is None:
            raise BridgeError(f"no session {session_id!r} on {topics.SESSIONS}")
        if session.state == "archived":
            raise BridgeError(
                f"session {session_id} is archived: its topics are gone (its archive has "
                "everything: livetag export)"
            )
        roster = [performer.performer_id for performer in session.roster]
        if marker_inlet is not None and marker_inlet.performer_id not in (None, *roster):
            raise BridgeError(
                f"performer {marker_inlet.performer_id!r} is not on session {session_id}'s "
                f"roster ({', '.join(roster)})"
            )
        clock = await asyncio.to_thread(measure_clock_mapping)
        core = BridgeCore(session, clock, face_rate_hz=settings.video_fps)
        log.info(
            "session %s: LSL clock offset %d us (+-%d us); lsl_s = (ts_us - offset_us) / 1e6",
            session_id,
            clock.offset_us,
            clock.uncertainty_us,
        )
        return await _bridge(
            settings,
            directory,
            core,
            stop=stop,
            from_beginning=from_beginning,
            marker_inlet=marker_inlet,
            tag_sink=tag_sink,
            inlet_settle_s=inlet_settle_s,
        )
    finally:
        await directory.stop()


def _open_outlets(outlets: Outlets, core: BridgeCore, layouts: Iterable[StreamLayout]) -> None:
    for layout in layouts:
        desc = description(
            layout, core.clock, core.session, source_topic=core.source_topic(layout.kind)
        )
        outlets.open(layout, desc)
        log.info(
            "LSL outlet %s (type %s, source_id %s)", layout.name, layout.type, layout.source_id
        )


async def _bridge(
    settings: Settings,
    directory: SessionDirectory,
    core: BridgeCore,
    *,
    stop: asyncio.Event,
    from_beginning: bool,
    marker_inlet: MarkerInletOptions | None,
    tag_sink: Callable[[AIOKafkaProducer], TagSink] | None,
    inlet_settle_s: float,
) -> BridgeCounts:
    outlets = Outlets()
    consumer = clients.make_consumer(settings)
    producer: AIOKafkaProducer | None = None
    sink: TagSink | None = None
    inlet_task: asyncio.Task[None] | None = None
    try:
        await consumer.start()
        await _assign(consumer, core, settings, from_beginning=from_beginning)
        # Outlets only once the consumer has its positions: a stream an inlet can resolve
        # carries every record produced from then on.
        await asyncio.to_thread(_open_outlets, outlets, core, list(core.layouts.values()))
        if marker_inlet is not None:
            producer = clients.make_producer(settings)
            await producer.start()
            sink = (tag_sink or DirectTagSink)(producer)
            await sink.start()
            inlet_task = asyncio.create_task(
                _follow_markers(marker_inlet, core, sink, producer, stop, settings),
                name="lsl-marker-inlet",
            )
        if from_beginning:
            await _wait_for_first_inlet(outlets, stop, inlet_settle_s)
        await _consume(consumer, directory, core, outlets, stop, inlet_task)
    finally:
        stop.set()
        if inlet_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await inlet_task
        if sink is not None:
            await sink.stop()
        if producer is not None:
            await producer.stop()
        await consumer.stop()
        await asyncio.to_thread(outlets.close)
    return core.counts


async def _consume(
    consumer: AIOKafkaConsumer,
    directory: SessionDirectory,
    core: BridgeCore,
    outlets: Outlets,
    stop: asyncio.Event,
    inlet_task: asyncio.Task[None] | None,
) -> None:
    session_id = core.session.session_id

    def process(messages: list[ConsumerRecord[bytes, bytes]]) -> None:
        # Decoding and pushing happen here, in a worker thread: pydantic validation of a
        # busy session's records is real CPU work, and the loop also serves the inlet.
        for message in messages:
            for push in core.take(message):
                outlets.push(push)

    while not stop.is_set():
        if inlet_task is not None and inlet_task.done():
            inlet_task.result()  # a failed inlet (bad stream) ends the bridge with its error
        current = directory.get(session_id)
        if current is not None and current is not core.session:
            new = core.update_session(current)
            if new:
                await asyncio.to_thread(_open_outlets, outlets, core, new)
            if current.state == "archived":
                log.info("session %s is archived: its topics go, the bridge stops", session_id)
                return
        batches = await consumer.getmany(timeout_ms=200)
        messages = [message for batch in batches.values() for message in batch]
        if messages:
            await asyncio.to_thread(process, messages)


async def _follow_markers(
    options: MarkerInletOptions,
    core: BridgeCore,
    sink: TagSink,
    producer: AIOKafkaProducer,
    stop: asyncio.Event,
    settings: Settings,
) -> None:
    """Resolve the named marker stream (waiting for it), then turn each marker into tags;
    a stream that is lost (its program quit, with no source_id to recover by) is resolved
    again."""
    while not stop.is_set():
        log.info("resolving the LSL marker stream %r", options.stream_name)
        found: list[Any] = []
        while not found and not stop.is_set():
            found = await asyncio.to_thread(
                pylsl.resolve_byprop, "name", options.stream_name, 1, options.resolve_timeout_s
            )
        if stop.is_set():
            return
        try:
            await _read_markers(options, core, sink, producer, stop, settings, found[0])
        except (pylsl.util.LostError, pylsl.util.TimeoutError) as exc:
            log.warning("LSL marker stream %r was lost (%s)", options.stream_name, exc)


async def _read_markers(
    options: MarkerInletOptions,
    core: BridgeCore,
    sink: TagSink,
    producer: AIOKafkaProducer,
    stop: asyncio.Event,
    settings: Settings,
    found: Any,
) -> None:
    # A stimulus program on another machine stamps with its own clock: the inlet's clock
    # correction brings its timestamps onto this machine's. On this machine both sides
    # read the same clock, and an estimated correction would only add its error.
    here = found.hostname() == socket.gethostname()
    flags = pylsl.proc_none if here else pylsl.proc_clocksync
    inlet = await asyncio.to_thread(pylsl.StreamInlet, found, processing_flags=flags)
    try:
        info = await asyncio.to_thread(inlet.info, 10.0)
        if info.channel_format() != pylsl.cf_string:
            raise BridgeError(
                f"LSL stream {options.stream_name!r} has numeric samples: only string "
                "markers (labels of the session's vocabulary) become tags"
            )
        uid = info.uid()
        log.info(
            "marker stream %r (source_id %r) found: its markers become tags from %s",
            options.stream_name,
            info.source_id(),
            options.rater_id,
        )
        await asyncio.to_thread(inlet.open_stream, 10.0)
        while not stop.is_set():
            sample, lsl_s = await asyncio.to_thread(inlet.pull_sample, 0.2)
            if sample is None:
                continue
            await _take_marker(
                options, core, sink, producer, str(sample[0]), float(lsl_s), uid, settings
            )
    finally:
        await asyncio.to_thread(inlet.close_stream)


async def _take_marker(
    options: MarkerInletOptions,
    core: BridgeCore,
    sink: TagSink,
    producer: AIOKafkaProducer,
    marker: str,
    lsl_s: float,
    uid: str,
    settings: Settings,
) -> None:
    received = now_us()
    try:
        tags = marker_tags(
            core.session,
            marker,
            lsl_s,
            core.clock,
            rater_id=options.rater_id,
            performer_id=options.performer_id,
            span_us=settings.tag_default_span_ms * 1000,
            stream_uid=uid,
            received_us=received,
        )
    except ValueError as exc:
        core.counts.markers_refused += 1
        reason = f"LSL marker refused: {exc}"
        log.warning("%s (stream %r): dead-lettered", reason, options.stream_name)
        letter = refused_marker_letter(
            core.session.session_id, options.stream_name, marker, lsl_s, reason, received
        )
        message = records.encode(letter)
        try:
            await producer.send_and_wait(
                topics.DEADLETTER, message.value, key=message.key, headers=message.headers
            )
        except Exception as send_error:
            log.warning("could not dead-letter the refused marker: %s", send_error)
        else:
            core.counts.dead_letters += 1
        return
    core.counts.markers_taken += 1
    for tag in tags:
        await sink.deliver(tag)
        core.counts.tags_sent += 1
