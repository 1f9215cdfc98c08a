"""The aligner's logic without I/O: one session's tags and features joined into label windows.

Each performer's session-clock timeline is cut into fixed windows ``[k*W, (k+1)*W)``. A
window collects the prosody hops and face frames whose ``ts_us`` fall in it, and the tags
whose intervals overlap it, and goes out as one :class:`~streams.records.LabelWindow`.
A tag's interval is what :mod:`streams.labels.tag_rules` says it covers, the rule the export
and the dashboard follow too.

Beside the tags, a window holds what else rated the performer in it: each rater's
continuous rating (the samples whose instant falls in the window, summarised by
:mod:`streams.labels.rating_traces`) and each model rater's reading (one per window and
model, never part of the consensus). A rater's tags and samples are placed where their
reaction-lag correction puts them (:meth:`SessionAligner.set_lag`): the correction in
force when they arrive, recorded in the window next to them.

Why sans-I/O: the hard parts (waiting for lagging streams, pairing holds, correcting
windows already sent when a tag arrives late) are pure bookkeeping on event times, and
they are far easier to test when the caller hands in ``now_us`` than when they hide behind
faust, Kafka and a wall clock. ``streams/labels/aligner.py`` wires this class to the topics.

``now_us`` only decides *when* a window goes out (a window waits for late tags and lagging
feature streams); it never stands in for an event time. All times are integer µs.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from streams.labels.ledger import (
    EMPTY_PLAN,
    CueTimeline,
    IntentMemo,
    Plan,
    cue_start_us,
    plan_of,
    windows_under,
)
from streams.labels.rater_lags import LagEvidence
from streams.labels.rating_traces import (
    RatedSample,
    TraceKey,
    WindowTrace,
    samples_of,
    summarise,
)
from streams.labels.tag_rules import (
    TagInterval,
    TagSet,
    offset_applies,
    point_interval,
    undo_applies,
)
from streams.records import (
    FEATURE_STREAMS,
    ActiveLabel,
    Cue,
    FaceFrame,
    FeatureStream,
    HeadPose,
    Intensity,
    Intent,
    LabelWindow,
    LagCorrection,
    ModelEstimate,
    ModelReading,
    ProsodyFrame,
    RaterLabels,
    RaterTrace,
    RatingBatch,
    Role,
    SessionRecord,
    StreamGap,
    TagEvent,
    WindowFeatures,
    merge_model_readings,
)


@dataclass(frozen=True, slots=True)
class AlignerConfig:
    window_us: int = 100_000  # window hop = length
    tag_wait_us: int = 100_000  # a window waits this long past its end (by now_us) for tags
    feature_wait_us: int = 500_000  # ...and at most this long for a lagging feature stream
    # After a restart, the streams the restored windows showed are waited for this long
    # (the successor re-reads their backlog, maybe on a busy machine) before windows go
    # out without them: going out early would make their tags late.
    restart_wait_us: int = 10_000_000
    grace_us: int = 30_000_000  # tags later than this no longer correct emitted windows
    max_hold_us: int = 30_000_000  # an onset whose offset never came ends onset+max_hold
    top_blendshapes: int = 5
    # The feature streams every performer is expected to have: one not seen yet is waited
    # for feature_wait_us from the performer's first record before windows go out without it.
    awaited_streams: tuple[str, ...] = ("prosody", "face")
    # A performer who left the call (their presence) is waited for this long after their
    # streams' last delivery: the media captured before the leave is still being analysed.
    ended_wait_us: int = 2_000_000
    # At most this many windows go out in one step (a performer back after an hour's
    # outage has 36 000 windows to fill); the rest go out in the next steps.
    max_windows_per_step: int = 2_000
    # A window waits at most this long past its end for the continuous raters of its
    # performer to rate past it (their samples come lag-corrected and in batches); a
    # rater who sent nothing for this long is not waited for.
    rating_wait_us: int = 1_000_000

    def __post_init__(self) -> None:
        if self.window_us <= 0:
            raise ValueError("window_us must be positive")
        if (
            min(
                self.tag_wait_us,
                self.feature_wait_us,
                self.restart_wait_us,
                self.ended_wait_us,
                self.grace_us,
                self.top_blendshapes,
                self.rating_wait_us,
            )
            < 0
        ):
            raise ValueError("waits, grace and top_blendshapes must not be negative")
        if self.max_hold_us <= 0 or self.max_windows_per_step <= 0:
            raise ValueError("max_hold_us and max_windows_per_step must be positive")


@dataclass(frozen=True, slots=True)
class LateTag:
    """A tag too late to correct anything: the wiring dead-letters it."""

    tag: TagEvent
    reason: str


@dataclass(frozen=True, slots=True)
class LateRatings:
    """A rating batch none of whose samples could be placed (every window they fall in
    left the grace, or lies before the performer's first): the wiring dead-letters it."""

    batch: RatingBatch
    reason: str


@dataclass(frozen=True, slots=True)
class RefusedReading:
    """A model reading that is not one label window's: the wiring dead-letters it."""

    reading: ModelReading
    reason: str


@dataclass(frozen=True, slots=True)
class LateCue:
    """A cue that changes only windows that left the grace: the wiring dead-letters it."""

    cue: Cue
    reason: str


#: What an aligner call returns besides label windows: input it could not use, with why.
Unplaced = LateTag | LateRatings | RefusedReading | LateCue


_T = TypeVar("_T")

# One prosody hop as the window summary needs it: f0 (voiced hops only), voiced, loudness.
_Hop = tuple[float | None, bool, float]


@dataclass(frozen=True, slots=True)
class _Sight:
    """One face frame reduced to what the summary needs (landmarks are not kept)."""

    present: bool
    blendshapes: dict[str, float]
    pose: tuple[float, float, float] | None


# A label active in a window, in a comparable, immutable form. Sorting these tuples gives
# the record's order: raters by id, each rater's labels by start then tag_id.
# (rater_id, start_us, tag_id, rater_role, label, intensity)
_Active = tuple[str, int, str, Role, str, Intensity]


@dataclass(slots=True)
class _Mark:
    """A point tag or a hold on the performer's timeline: the interval [start_us, end_us)
    that streams.labels.tag_rules gave it (or, restored, the windows it was seen in)."""

    tag_id: str
    rater_id: str
    rater_role: Role
    label: str
    intensity: Intensity
    start_us: int
    end_us: int
    # A hold whose offset has not come (yet): indexed by window only once it is closed,
    # as an offset usually cuts it short soon.
    open: bool = False

    @classmethod
    def of(cls, interval: TagInterval) -> _Mark:
        return cls(
            tag_id=interval.tag_id,
            rater_id=interval.rater_id,
            rater_role=interval.rater_role,
            label=interval.label,
            intensity=interval.intensity,
            start_us=interval.start_us,
            end_us=interval.end_us,
            open=interval.open,
        )


@dataclass(slots=True)
class _TagMemo:
    """What is remembered of every tag_id seen: enough for dedupe and forgetting (the
    tags themselves are in the aligner's TagSet)."""

    performer_id: str
    rater_id: str
    # The tag's action; "restored": known only from the label windows an earlier
    # instance emitted (see restore), not from the tag itself.
    action: str
    onset_tag_id: str | None
    forget_at_us: int


@dataclass(slots=True)
class _ModelFold:
    """One model's readings of one window folded into one (a window read in two parts: a
    pause, a restart of the model lane), and the readings folded, so one delivered again
    is told from a new part."""

    reading: ModelReading
    parts: list[ModelReading]

    def estimate(self) -> ModelEstimate:
        reading = self.reading
        return ModelEstimate(
            model=reading.model,
            probabilities=reading.probabilities,
            top_label=reading.top_label,
            valence=reading.valence,
            arousal=reading.arousal,
            frames_read=reading.frames_read,
        )


def _shown(model: _ModelFold | ModelEstimate) -> ModelEstimate:
    return model if isinstance(model, ModelEstimate) else model.estimate()


@dataclass(slots=True)
class _SentWindow:
    """A window already emitted, kept for grace_us so a late tag can correct it, and late
    features of a stream it went out without can complete it."""

    features: WindowFeatures
    labels: tuple[_Active, ...]
    revision: int
    missing: dict[FeatureStream, StreamGap] = field(default_factory=dict)
    # What its first revision said (the counters are made of the windows, see _tally).
    first_missing: dict[FeatureStream, StreamGap] = field(default_factory=dict)
    first_without_media: bool = False
    first_frames: int = 0
    # What the window had of each missing stream (a stream may stop in mid-window): its
    # late frames are summarised together with these.
    partial_hops: dict[int, _Hop] = field(default_factory=dict)
    partial_sights: dict[int, _Sight | None] = field(default_factory=dict)
    # Continuous ratings: the samples of each rater's trace; read back after a restart,
    # the trace as the window showed it (its samples are not known any more). The same
    # for the model readings.
    traces: dict[TraceKey, WindowTrace | RaterTrace] = field(default_factory=dict)
    models: dict[str, _ModelFold | ModelEstimate] = field(default_factory=dict)
    # What the scene meant the performer to show over it (streams.labels.ledger).
    intent: Intent | None = None


@dataclass(slots=True)
class _RatingStream:
    """One rater's continuous rating of a performer, as far as it has come."""

    newest_us: int  # the newest sample's (lag-corrected) instant
    arrived_us: int  # now_us when it last delivered


@dataclass(slots=True)
class _PerformerTrack:
    performer_id: str
    next_window: int | None = None  # every window below it has passed (emitted or skipped)
    passed_any: bool = False
    due_us: float = math.inf  # the earliest now_us at which next_window can be ready
    # The watermark of each stream: the newest ts_us it delivered (absent: never seen).
    newest: dict[FeatureStream, int] = field(default_factory=dict)
    # now_us when each stream last delivered: a stream that stopped delivering is given up
    # on, one that still delivers is waited for (however far behind, e.g. catching up).
    arrived: dict[FeatureStream, int] = field(default_factory=dict)
    # now_us when the performer was first heard of: a stream not seen yet is waited for
    # feature_wait_us from then (a performer's streams start at different times, the
    # later one maybe seconds behind on a busy machine).
    created_us: int = 0
    # Frames by window (window -> ts -> frame); below next_window: late frames of a window
    # that went out without their stream, waiting to complete it (see revisable).
    hops: dict[int, dict[int, _Hop]] = field(default_factory=dict)
    # None: a frame skipped on purpose (the window had video, so it exists, and says so).
    sights: dict[int, dict[int, _Sight | None]] = field(default_factory=dict)
    revisable: set[int] = field(default_factory=set)
    # Counts of the windows that left the grace (they can no longer change), and the
    # window below which they are all in it.
    settled: dict[str, int] = field(default_factory=dict)
    settled_through: int = 0
    # Windows below it went out before a restart (restore): their frames come again.
    restored_through: int = 0
    first_emitted: int | None = None  # the performer's first window that went out
    marks: dict[str, _Mark] = field(default_factory=dict)
    by_window: dict[int, set[str]] = field(default_factory=dict)  # closed marks only
    open_holds: set[str] = field(default_factory=set)
    # Offsets whose onset has not come (yet): onset_tag_id -> their tag_ids. The tags are
    # in the aligner's TagSet; this says the performer still waits on something.
    pending_offsets: dict[str, set[str]] = field(default_factory=dict)
    sent: dict[int, _SentWindow] = field(default_factory=dict)  # in window order (mostly)
    # Continuous ratings: each trace's progress (windows wait for it, see _stream_states),
    # the newest instant rated (windows go out up to it, as up to the last tag), and the
    # samples and model readings of windows that have not gone out yet.
    ratings: dict[TraceKey, _RatingStream] = field(default_factory=dict)
    rated_until: int | None = None
    pending_traces: dict[int, dict[TraceKey, WindowTrace]] = field(default_factory=dict)
    pending_models: dict[int, dict[str, _ModelFold]] = field(default_factory=dict)


# Per-performer counters that are events, not made of the windows (see _tally).
_PERFORMER_EVENTS = (
    "late_features_lost",
    "duplicate_features",
    "late_rating_samples",
    "late_model_readings",
)

_COUNTERS = (
    "windows_emitted",
    "windows_incomplete",
    "windows_without_media",
    "corrections",
    "feature_revisions",
    "late_features",
    "late_features_revised",
    "late_features_lost",
    "face_frames_skipped",
    "duplicate_features",
    "tags",
    "duplicate_tags",
    "late_tags",
    "undos",
    "ignored_undos",
    "ignored_offsets",
    "foreign_records",
    "restored_windows",
    "rating_batches",
    "rating_samples",
    "duplicate_rating_batches",
    "duplicate_rating_samples",
    "late_rating_samples",
    "rating_revisions",
    "model_readings",
    "duplicate_model_readings",
    "late_model_readings",
    "refused_model_readings",
    "model_revisions",
    "cues",
    "duplicate_cues",
    "late_cues",
    "intent_revisions",
    "restored_cues",
)


class SessionAligner:
    """Aligns one session; every method takes the session clock's ``now_us``.

    ``evidence``, if given, is told of every record taken in (the features, tags and
    ratings a rater's reaction lag is estimated from: streams.labels.rater_lags)."""

    def __init__(
        self, session_id: str, config: AlignerConfig, evidence: LagEvidence | None = None
    ) -> None:
        self.session_id = session_id
        self._config = config
        self._evidence = evidence
        # Rating batches seen (batch_id -> performer, forget_at_us), for dedupe.
        self._batches: dict[str, tuple[str, int]] = {}
        self._batch_queue: list[tuple[int, str]] = []
        # The reaction-lag correction in force per rater (none: the tag service's).
        self._lags: dict[str, LagCorrection] = {}
        # The correction each tag was placed with, when it had one (for the windows).
        self._tag_lags: dict[str, LagCorrection] = {}
        self._tracks: dict[str, _PerformerTrack] = {}
        self._tags: dict[str, _TagMemo] = {}
        # The tags themselves: what a point or hold covers is decided there (tag_rules),
        # from every tag that bears on it, whatever order they came in.
        self._tag_set = TagSet(config.max_hold_us)
        self._forget_queue: list[tuple[int, str]] = []
        self._counts = dict.fromkeys(_COUNTERS, 0)
        # Per performer, the events counted (late features lost, late tags...) and what
        # an earlier instance carried over: see performer_counters.
        self._carried: dict[str, dict[str, int]] = {}
        # The session-clock instant each performer who is out of the call left it.
        self._left_since: dict[str, int] = {}
        # The ledger's intent: each performer's cues and plan (takes, scenario arc,
        # targets), kept apart from the tracks like presence.
        self._cues: dict[str, CueTimeline] = {}
        self._plans: dict[str, Plan] = {}
        self._intents: dict[str, IntentMemo] = {}
        # Windows the current step (one now_us) may still emit: see _advance.
        self._step_now_us: int | None = None
        self._step_budget = config.max_windows_per_step

    # ------------------------------------------------------------------ public API

    def add_prosody(self, frame: ProsodyFrame, now_us: int) -> list[LabelWindow]:
        if frame.session_id != self.session_id:
            self._counts["foreign_records"] += 1
            return []
        self._forget_expired(now_us)
        track = self._track(frame.performer_id, now_us)
        self._delivered(track, "prosody", frame.ts_us, now_us)
        if self._evidence is not None:
            self._evidence.note_hop(frame)
        hop: _Hop = (frame.f0_hz if frame.voiced else None, frame.voiced, frame.loudness_db)
        self._buffer(track, "prosody", track.hops, frame.ts_us, hop)
        return self._emit_ready(now_us)

    def add_face(self, frame: FaceFrame, now_us: int) -> list[LabelWindow]:
        if frame.session_id != self.session_id:
            self._counts["foreign_records"] += 1
            return []
        self._forget_expired(now_us)
        track = self._track(frame.performer_id, now_us)
        self._delivered(track, "face", frame.ts_us, now_us)
        if self._evidence is not None:
            self._evidence.note_face(frame)
        if frame.face_present is None:
            # Skipped on purpose (the processors were behind): the stream has moved past
            # this instant, and the window had video, but there is nothing to summarise.
            self._count(track, "face_frames_skipped")
            self._buffer(track, "face", track.sights, frame.ts_us, None)
            return self._emit_ready(now_us)
        pose = frame.head_pose
        sight = _Sight(
            present=frame.face_present,
            blendshapes={name: float(value) for name, value in frame.blendshapes.items()},
            pose=None if pose is None else (pose.yaw_deg, pose.pitch_deg, pose.roll_deg),
        )
        self._buffer(track, "face", track.sights, frame.ts_us, sight)
        return self._emit_ready(now_us)

    def set_presence(self, performer_id: str, connected: bool, since_us: int, now_us: int) -> None:
        """The performer joined (again) or left the call at ``since_us``: after a leave
        their streams are waited for only ended_wait_us, and windows from the leave on
        that lack a stream say it had ended."""
        # Kept apart from the tracks: a performer on another worker's partitions must not
        # get a track (and counters) here.
        if connected:
            self._left_since.pop(performer_id, None)
        else:
            self._left_since[performer_id] = since_us

    def add_tag(self, tag: TagEvent, now_us: int) -> list[LabelWindow | LateTag]:
        if tag.session_id != self.session_id:
            self._counts["foreign_records"] += 1
            return []
        self._forget_expired(now_us)
        known = self._tags.get(tag.tag_id)
        was_restored = known is not None and known.action == "restored"
        changed: list[tuple[_PerformerTrack, tuple[int, int]]] = []
        if known is not None and was_restored:
            # The tag itself is back (re-read after a restart): it replaces the span that
            # was rebuilt from the emitted windows, and knows its future windows too.
            dropped = self._drop_restored(tag.tag_id, known)
            if dropped is not None:
                changed.append(dropped)
            known = None
        if known is not None:
            self._counts["duplicate_tags"] += 1
            return []
        self._counts["tags"] += 1
        if self._evidence is not None:
            self._evidence.note_tag(tag)
        tag, lag = self._placed(tag)
        if lag is not None:
            self._tag_lags[tag.tag_id] = lag
        track = self._track(tag.performer_id, now_us)
        self._remember(tag, now_us)
        if tag.action == "offset":
            self._add_offset(track, tag)
        elif tag.action == "onset":
            self._add_onset(track, tag)
        elif tag.action == "undo":
            withdrawn = self._undo(tag)
            if withdrawn is not None:
                changed.append(withdrawn)
        mark_id = self._tag_set.add(tag)
        if mark_id is not None:
            settled = self._settle(mark_id, now_us)
            if settled is not None:
                changed.append(settled)
        out: list[LabelWindow | LateTag] = []
        late = bool(changed)
        for changed_track, region in changed:
            corrected = self._correct(changed_track, region, now_us)
            if corrected is not None:
                late = False
                out.extend(corrected)
        if late and not was_restored:  # a restored tag's windows went out with it
            self._counts["late_tags"] += 1
            reason = (
                f"{tag.action} tag only affects windows that ended more than "
                f"{self._config.grace_us} us before now"
            )
            out.append(LateTag(tag=tag, reason=reason))
        for changed_track in {id(t): t for t, _ in changed}.values():
            self._refresh_due(changed_track)
        self._refresh_due(track)
        out.extend(self._emit_ready(now_us))
        return out

    def add_ratings(self, batch: RatingBatch, now_us: int) -> list[LabelWindow | LateRatings]:
        """A rater's batch of continuous samples: each sample goes to the window its
        lag-corrected instant falls in; windows already sent take it as a revision."""
        if batch.session_id != self.session_id:
            self._counts["foreign_records"] += 1
            return []
        self._forget_expired(now_us)
        if batch.batch_id in self._batches:
            self._counts["duplicate_rating_batches"] += 1
            return []
        self._remember_batch(batch, now_us)
        self._counts["rating_batches"] += 1
        self._counts["rating_samples"] += len(batch.samples)
        if self._evidence is not None:
            self._evidence.note_ratings(batch)
        track = self._track(batch.performer_id, now_us)
        lag = self.rating_correction(batch)
        key: TraceKey = (batch.rater_id, batch.mode, batch.label)
        samples = samples_of(batch, 0 if lag is None else lag.lag_us)
        newest = max(sample.ts_us for sample in samples)
        stream = track.ratings.get(key)
        if stream is None:
            stream = track.ratings[key] = _RatingStream(newest, now_us)
        stream.newest_us = max(stream.newest_us, newest)
        stream.arrived_us = now_us
        track.rated_until = max(track.rated_until or 0, newest)
        width = self._config.window_us
        oldest = self._oldest_correctable(now_us)
        revised: set[int] = set()
        placed = late = 0
        for sample in samples:
            window = sample.ts_us // width
            if window >= self._note_start(track, sample.ts_us):
                pending = track.pending_traces.setdefault(window, {})
                trace = pending.get(key)
                if trace is None:
                    trace = pending[key] = WindowTrace(batch.rater_role, {}, lag)
                placed += self._add_sample(track, trace, sample, lag)
                continue
            sent = track.sent.get(window) if window >= oldest else None
            held = None if sent is None else sent.traces.get(key)
            if window < track.restored_through and (sent is None or isinstance(held, RaterTrace)):
                # Read again after a restart: the window went out from an earlier
                # instance with this trace (its samples are not known here).
                self._count(track, "duplicate_rating_samples")
                continue
            if sent is None or isinstance(held, RaterTrace):
                late += 1
                continue
            if held is None:
                held = sent.traces[key] = WindowTrace(batch.rater_role, {}, lag)
            if self._add_sample(track, held, sample, lag):
                placed += 1
                revised.add(window)
        out: list[LabelWindow | LateRatings] = []
        for window in sorted(revised):
            out.append(self._revision(track, window, "rating_revisions"))
        self._count(track, "late_rating_samples", late)
        if late and not placed:
            reason = (
                f"every sample of the rating batch falls in windows that ended more than "
                f"{self._config.grace_us} us before now, or before the performer's first window"
            )
            out.append(LateRatings(batch=batch, reason=reason))
        self._refresh_due(track)
        out.extend(self._emit_ready(now_us))
        return out

    def add_model_readings(
        self, readings: Iterable[ModelReading], now_us: int
    ) -> list[LabelWindow | RefusedReading]:
        """Model raters' readings, each of one label window: folded into that window (a
        window already sent is revised once per call, whatever number of readings). A
        second reading of one window by one model is merged with the first
        (records.merge_model_readings); one the window already holds, or whose window was
        read back after a restart showing this model (what its reading was made of is not
        known here: this is one of its parts, read again), is a duplicate."""
        self._forget_expired(now_us)
        width = self._config.window_us
        oldest = self._oldest_correctable(now_us)
        out: list[LabelWindow | RefusedReading] = []
        revised: dict[str, set[int]] = {}
        for reading in readings:
            if reading.session_id != self.session_id:
                self._counts["foreign_records"] += 1
                continue
            if reading.window_us != width or reading.ts_us % width:
                self._counts["refused_model_readings"] += 1
                reason = (
                    f"a model reading covers one label window: ts_us a multiple of, and "
                    f"window_us equal to, {width} us (got ts_us {reading.ts_us}, "
                    f"window_us {reading.window_us})"
                )
                out.append(RefusedReading(reading=reading, reason=reason))
                continue
            self._counts["model_readings"] += 1
            track = self._track(reading.performer_id, now_us)
            window = reading.ts_us // width
            models: dict[str, _ModelFold] | dict[str, _ModelFold | ModelEstimate]
            if track.next_window is None or window >= track.next_window:
                models = track.pending_models.setdefault(window, {})
            else:
                sent = track.sent.get(window) if window >= oldest else None
                if sent is None:
                    # Its window left the grace (or lies before the performer's first):
                    # the model fell that far behind.
                    self._count(track, "late_model_readings")
                    continue
                models = sent.models
            held = models.get(reading.model)
            if isinstance(held, ModelEstimate) or (held is not None and reading in held.parts):
                self._counts["duplicate_model_readings"] += 1
                continue
            if held is None:
                models[reading.model] = _ModelFold(reading, [reading])
            else:
                held.reading = merge_model_readings(held.reading, reading)
                held.parts.append(reading)
            if track.next_window is not None and window < track.next_window:
                revised.setdefault(track.performer_id, set()).add(window)
        for performer_id, windows in revised.items():
            track = self._tracks[performer_id]
            for window in sorted(windows):
                out.append(self._revision(track, window, "model_revisions"))
        out.extend(self._emit_ready(now_us))
        return out

    def add_cue(self, cue: Cue, now_us: int) -> list[LabelWindow | LateCue]:
        """A director's cue (sent, or shown by the performer's page): windows already sent
        that it puts under another cue are revised (streams.labels.ledger decides the cue
        in force); windows to come take it as they go out, never waiting for cues."""
        if cue.session_id != self.session_id:
            self._counts["foreign_records"] += 1
            return []
        self._forget_expired(now_us)
        timeline = self._cues.get(cue.performer_id)
        if timeline is None:
            timeline = self._cues[cue.performer_id] = CueTimeline()
        changed = timeline.add(cue)
        if changed is None:
            self._counts["duplicate_cues"] += 1
            return []
        self._counts["cues"] += 1
        self.count_for(cue.performer_id, "cues")
        out: list[LabelWindow | LateCue] = []
        track = self._tracks.get(cue.performer_id)
        if track is None or track.next_window is None:
            return out
        width = self._config.window_us
        low, high = changed
        first = windows_under(low, low + width, width).start
        stop = math.inf if high is None else windows_under(low, high, width).stop
        oldest = self._oldest_correctable(now_us)
        if first < stop <= oldest:
            self._counts["late_cues"] += 1
            reason = (
                f"{cue.kind} cue only changes windows that ended more than "
                f"{self._config.grace_us} us before now"
            )
            out.append(LateCue(cue=cue, reason=reason))
            return out
        revised: list[LabelWindow] = []
        self._reintend(track, max(first, oldest), stop, revised)
        out.extend(revised)
        out.extend(self._emit_ready(now_us))
        return out

    def cue_settles_at_us(self, cue: Cue) -> int:
        """The instant whose label window must have gone out before the cue is
        acknowledged: the first window under it (a cue in force is known again from the
        windows it stands over after a restart, see restore)."""
        return cue_start_us(cue) + self._config.window_us

    def set_session(self, session: SessionRecord, now_us: int) -> list[LabelWindow]:
        """The scene's plan for each performer by its session record (takes, scenario arc,
        the part's targets): windows within the grace whose intent it changes are
        revised (a take that ended takes its arc off the windows after its end)."""
        if session.session_id != self.session_id:
            self._counts["foreign_records"] += 1
            return []
        out: list[LabelWindow] = []
        performers = {p.performer_id for p in session.roster} | set(self._plans)
        for performer_id in sorted(performers):
            plan = plan_of(session, performer_id)
            if self._plans.get(performer_id, EMPTY_PLAN) == plan:
                continue
            self._plans[performer_id] = plan
            track = self._tracks.get(performer_id)
            if track is not None and track.next_window is not None:
                self._reintend(track, self._oldest_correctable(now_us), math.inf, out)
        return out

    def set_lag(self, rater_id: str, correction: LagCorrection | None) -> None:
        """The reaction-lag correction for the rater's tags and samples from now on (None,
        or method none: tags stay where the tag service put them, samples take the lag
        their batch was calibrated with). What was placed before stays where it is."""
        if correction is None or correction.method == "none":
            self._lags.pop(rater_id, None)
        else:
            self._lags[rater_id] = correction

    def lag_of(self, rater_id: str) -> LagCorrection | None:
        """The correction set for the rater (None: the default)."""
        return self._lags.get(rater_id)

    def rating_correction(self, batch: RatingBatch) -> LagCorrection | None:
        """The correction the batch's samples are placed with: the rater's, else the lag
        the rater calibrated (the tag service takes it off tags, never off samples)."""
        correction = self._lags.get(batch.rater_id)
        if correction is not None:
            return correction
        if batch.reaction_lag_us:
            return LagCorrection(method="calibration", lag_us=batch.reaction_lag_us)
        return None

    def rating_settles_at_us(self, batch: RatingBatch) -> int:
        """The last instant whose label window the batch can still change."""
        correction = self.rating_correction(batch)
        lag = 0 if correction is None else correction.lag_us
        return max(0, max(sample.ts_us for sample in batch.samples) - lag)

    def tick(self, now_us: int) -> list[LabelWindow]:
        """Windows that are ready, and revisions of windows a late stream completed (looked
        for only here: each step of a stream would otherwise walk the revisable windows)."""
        self._forget_expired(now_us)
        out = self._emit_ready(now_us)
        for track in self._tracks.values():
            if track.revisable:
                self._revise(track, now_us, out)
        return out

    def restore(self, windows: Iterable[LabelWindow], now_us: int) -> int:
        """Take back what an earlier instance emitted, from its label windows.

        After a restart the windows that went out are known again (a late tag corrects
        them with the next revision instead of emitting them anew), and every tag in them
        is known by the span of windows it labels, so a correction keeps it. The tags
        that could still change anything are re-read from their topic (their offsets
        were not committed) and replace those spans. Returns the windows taken back.
        """
        width = self._config.window_us
        # A performer this instance has been aligning all along (a rebalance gave their
        # partition back to it) keeps its own state: what it reads back it emitted itself.
        aligning = {p for p, track in self._tracks.items() if track.next_window is not None}
        newest: dict[tuple[str, int], LabelWindow] = {}
        openings: dict[tuple[str, int], LabelWindow] = {}  # each window's first revision
        for window in windows:
            if window.session_id != self.session_id or window.window_us != width:
                continue
            if window.performer_id in aligning:
                continue
            identity = (window.performer_id, window.ts_us)
            known = newest.get(identity)
            # The first copy of a revision is the one consumers keep.
            if known is None or window.revision > known.revision:
                newest[identity] = window
            earliest = openings.get(identity)
            if earliest is None or window.revision < earliest.revision:
                openings[identity] = window
        spans: dict[str, tuple[str, int, int, str, Role, str, Intensity]] = {}
        lags: dict[str, LagCorrection] = {}
        for (performer_id, ts_us), window in newest.items():
            index = ts_us // width
            for rater in window.raters:
                # Corrections on the labels: they were placed under different ones.
                own = any(active.lag is not None for active in rater.labels)
                for active in rater.labels:
                    lag = active.lag if own else rater.lag
                    if lag is not None:
                        lags[active.tag_id] = lag
                    span = spans.get(active.tag_id)
                    first, last = (index, index) if span is None else (span[1], span[2])
                    spans[active.tag_id] = (
                        performer_id,
                        min(first, index),
                        max(last, index),
                        rater.rater_id,
                        rater.rater_role,
                        active.label,
                        active.intensity,
                    )
        for tag_id, (performer_id, first, last, rater_id, role, label, intensity) in spans.items():
            if tag_id in self._tags:
                continue
            if tag_id in lags:
                self._tag_lags[tag_id] = lags[tag_id]
            track = self._track(performer_id, now_us)
            start, end = first * width, (last + 1) * width
            mark = _Mark(tag_id, rater_id, role, label, intensity, start, end)
            track.marks[tag_id] = mark
            self._index(track, mark)
            forget_at = (
                max(mark.start_us, now_us) + self._config.max_hold_us + self._config.grace_us
            )
            self._tags[tag_id] = _TagMemo(performer_id, rater_id, "restored", None, forget_at)
            heapq.heappush(self._forget_queue, (forget_at, tag_id))
        self._restore_cues(window for _, window in sorted(newest.items()))
        oldest = self._oldest_correctable(now_us)
        for (performer_id, ts_us), window in sorted(newest.items(), key=lambda item: item[0][1]):
            index = ts_us // width
            track = self._track(performer_id, now_us)
            kept = track.sent.get(index)
            if kept is None or kept.revision < window.revision:
                opening = openings.get((performer_id, ts_us), window)
                restored = _SentWindow(
                    window.features,
                    self._labels_at(track, index),
                    window.revision,
                    dict(window.missing),
                    first_missing=dict(opening.missing),
                    first_without_media=_without_media(opening.missing, opening.features),
                    first_frames=_frames(opening.features),
                    traces={_key_of(trace): trace for trace in window.ratings},
                    models={estimate.model: estimate for estimate in window.models},
                    intent=window.intent,
                )
                if index >= oldest:
                    track.sent[index] = restored
                elif kept is None:
                    self._settle_window(track, index, restored)
            # The streams the windows show were delivering: waited for restart_wait_us as
            # if they had just delivered, until their re-read records arrive.
            waited_until = now_us + self._config.restart_wait_us - self._config.feature_wait_us
            for stream in FEATURE_STREAMS:
                if stream in window.missing or track.newest.get(stream, -1) >= ts_us:
                    continue
                track.newest[stream] = ts_us + width - 1
                track.arrived[stream] = waited_until
            if track.next_window is None or track.next_window <= index:
                # What this instance buffered for those windows is dropped: the re-read
                # records bring it again, as late features of the restored windows.
                pending: tuple[dict[int, Any], ...] = (
                    track.hops,
                    track.sights,
                    track.pending_traces,
                    track.pending_models,
                )
                for buffered in pending:
                    for stale in [w for w in buffered if w <= index]:
                        del buffered[stale]
                track.revisable.clear()
                track.next_window = index + 1
            track.passed_any = True
            track.restored_through = max(track.restored_through, index + 1)
            if track.first_emitted is None or index < track.first_emitted:
                track.first_emitted = index
        for track in self._tracks.values():
            self._refresh_due(track)
        self._counts["restored_windows"] += len(newest)
        return len(newest)

    def _drop_restored(
        self, tag_id: str, memo: _TagMemo
    ) -> tuple[_PerformerTrack, tuple[int, int]] | None:
        """Forget a span rebuilt from the windows; its track and span, if it had one."""
        del self._tags[tag_id]
        track = self._tracks.get(memo.performer_id)
        mark = None if track is None else track.marks.pop(tag_id, None)
        if track is None or mark is None:
            return None
        self._unindex(track, mark)
        return track, (mark.start_us, mark.end_us)

    def passed(self, performer_id: str, ts_us: int) -> bool:
        """Whether the window holding ``ts_us`` of this performer has gone out (or was
        skipped), so nothing that instant contributes can still be lost with this object.
        True when nothing is kept for the performer at all."""
        track = self._tracks.get(performer_id)
        if track is None:
            # A cue is acknowledged once a window under it went out (see add_cue).
            return performer_id not in self._cues
        if track.next_window is None:
            # No window yet: only an undo or offset came (nothing of them to emit).
            kept = (
                track.marks,
                track.pending_offsets,
                track.hops,
                track.sights,
                track.pending_traces,
                track.pending_models,
            )
            # A cue is acknowledged once a window under it went out (see add_cue).
            return not any(kept) and performer_id not in self._cues
        window = ts_us // self._config.window_us
        # Late frames that wait to complete a window that went out are not passed yet.
        return (
            window < track.next_window and window not in track.hops and window not in track.sights
        )

    def settles_at_us(self, tag: TagEvent) -> int:
        """The last instant whose label window this tag can still change (its input may
        be acknowledged once that window has passed): where the rater's lag correction
        in force now puts it."""
        tag, _ = self._placed(tag)
        if tag.action == "point":
            return point_interval(tag.ts_us, tag.span_us or 0, self._config.max_hold_us)[1]
        # An onset may stay open for max_hold, and is re-read with its offset (or the undo
        # that withdraws it) or a restarted aligner would reopen it.
        return tag.ts_us + self._config.max_hold_us

    def forget_performer(self, performer_id: str) -> None:
        """Drop a performer's state (their partitions went to another worker, which
        carries on from what this one emitted and published); their tag ids expire on
        their own."""
        self._tracks.pop(performer_id, None)
        self._carried.pop(performer_id, None)
        self._cues.pop(performer_id, None)
        self._intents.pop(performer_id, None)
        # Their tags and rating batches too: re-read by the new owner, they must not count
        # as duplicates if the partition comes back here.
        for tag_id in [t for t, memo in self._tags.items() if memo.performer_id == performer_id]:
            del self._tags[tag_id]
            self._tag_set.forget(tag_id)
            self._tag_lags.pop(tag_id, None)
        for batch_id in [b for b, (p, _) in self._batches.items() if p == performer_id]:
            del self._batches[batch_id]
        if self._evidence is not None:
            self._evidence.forget_performer(performer_id)

    def held_performers(self) -> set[str]:
        """The performers this instance keeps anything of."""
        return {*self._tracks, *self._carried}

    def performer_counters(self) -> dict[str, tuple[dict[str, int], dict[str, int], int]]:
        """Each performer's counters for the session health record: (the counters, the
        part a successor carries on from, and the session-clock instant the carried part
        covers the windows before).

        Window counters are made of the windows themselves (emitted, incomplete, without
        media, revisions, late features they took in, the frames they summarise): those
        still within the grace are counted from the windows kept, so a successor that
        reads them back from livetag.labels counts them the same; only the counts of older
        windows and of events (late features lost, late tags) are carried over."""
        width = self._config.window_us
        out: dict[str, tuple[dict[str, int], dict[str, int], int]] = {}
        for performer_id in {*self._carried, *self._tracks}:
            carried = dict(self._carried.get(performer_id, {}))
            track = self._tracks.get(performer_id)
            through = 0
            totals = dict(carried)
            if track is not None:
                _add_counts(carried, track.settled)
                through = track.settled_through * width
                totals = dict(carried)
                for sent in track.sent.values():
                    _add_counts(totals, _tally(sent))
            out[performer_id] = (totals, carried, through)
        return out

    def seed_counters(
        self, performer_id: str, carried: dict[str, int], carried_through_us: int, now_us: int
    ) -> bool:
        """Carry on from what an earlier instance published for the performer (after a
        restart, before its windows are read back: see restore). Only into a performer
        this instance knows nothing of: one it counted itself keeps its own counts."""
        if performer_id in self._carried or performer_id in self._tracks:
            return False
        self._carried[performer_id] = dict(carried)
        track = self._track(performer_id, now_us)
        track.settled_through = carried_through_us // self._config.window_us
        return True

    def count_for(self, performer_id: str, name: str, n: int = 1) -> None:
        """Count an event about the performer (a late tag the caller dead-letters)."""
        counts = self._carried.setdefault(performer_id, {})
        counts[name] = counts.get(name, 0) + n

    def _count(self, track: _PerformerTrack, name: str, n: int = 1) -> None:
        """Count in the aligner's stats; events (not made of the windows) per performer too."""
        if n:
            self._counts[name] += n
            if name in _PERFORMER_EVENTS:
                self.count_for(track.performer_id, name, n)

    @property
    def stats(self) -> dict[str, int]:
        """Counters since start, plus the current size of the kept state."""
        counts = dict(self._counts)
        tracks = self._tracks.values()
        counts["performers"] = len(self._tracks)
        counts["remembered_tags"] = len(self._tags)
        counts["marks"] = sum(len(t.marks) for t in tracks)
        counts["open_holds"] = sum(len(t.open_holds) for t in tracks)
        counts["pending_offsets"] = sum(len(t.pending_offsets) for t in tracks)
        counts["indexed_windows"] = sum(len(t.by_window) for t in tracks)
        counts["buffered_windows"] = sum(len(t.hops) + len(t.sights) for t in tracks)
        counts["revisable_windows"] = sum(len(t.revisable) for t in tracks)
        counts["kept_windows"] = sum(len(t.sent) for t in tracks)
        counts["remembered_batches"] = len(self._batches)
        counts["pending_rating_windows"] = sum(len(t.pending_traces) for t in tracks)
        counts["pending_model_windows"] = sum(len(t.pending_models) for t in tracks)
        counts["rating_streams"] = sum(len(t.ratings) for t in tracks)
        counts["kept_cues"] = sum(len(timeline) for timeline in self._cues.values())
        return counts

    # ------------------------------------------------------------------ features

    def _track(self, performer_id: str, now_us: int) -> _PerformerTrack:
        track = self._tracks.get(performer_id)
        if track is None:
            track = self._tracks[performer_id] = _PerformerTrack(performer_id, created_us=now_us)
        return track

    def _note_start(self, track: _PerformerTrack, ts_us: int) -> int:
        """Start (or, while nothing has passed yet, move back) the performer's first window."""
        window = ts_us // self._config.window_us
        if track.next_window is None or (not track.passed_any and window < track.next_window):
            track.next_window = window
        return track.next_window

    def _delivered(
        self, track: _PerformerTrack, stream: FeatureStream, ts_us: int, now_us: int
    ) -> None:
        track.arrived[stream] = now_us
        if ts_us > track.newest.get(stream, -1):
            track.newest[stream] = ts_us

    def _buffer(
        self,
        track: _PerformerTrack,
        stream: FeatureStream,
        buffers: dict[int, dict[int, _T]],
        ts_us: int,
        item: _T,
    ) -> None:
        window = ts_us // self._config.window_us
        if window < self._note_start(track, ts_us):
            sent = track.sent.get(window)
            if window < track.restored_through:
                # Read again after a restart: the window went out from an earlier instance,
                # which may have had it (what it had of a late stream is not known here,
                # so a restored window is not revised by features, only by tags).
                self._count(track, "duplicate_features")
                return
            self._count(track, "late_features")
            if sent is None or stream not in sent.missing:
                # Past the grace, or the window had this stream complete (a straggler
                # behind its own stream's watermark): nothing can take it any more.
                self._count(track, "late_features_lost")
                return
            # The window went out without this stream: its late frames complete it
            # with a revision once the stream is past the window (see _revise).
            track.revisable.add(window)
        frames = buffers.setdefault(window, {})
        if ts_us in frames:  # at-least-once redelivery
            self._count(track, "duplicate_features")
        else:
            frames[ts_us] = item
        self._refresh_due(track)

    # ------------------------------------------------------------------ ratings and lags

    def _add_sample(
        self,
        track: _PerformerTrack,
        trace: WindowTrace,
        sample: RatedSample,
        lag: LagCorrection | None,
    ) -> int:
        """Put a sample in a window's trace; 1 if it was new there."""
        if sample.raw_ts_us in trace.samples:  # sent again under another batch_id
            self._count(track, "duplicate_rating_samples")
            return 0
        trace.samples[sample.raw_ts_us] = sample
        trace.lag = lag
        return 1

    # ------------------------------------------------------------------ intent

    def _intent_of(self, performer_id: str, window: int) -> Intent | None:
        """The intent of a window going out (cheap when nothing is intended)."""
        timeline = self._cues.get(performer_id)
        plan = self._plans.get(performer_id, EMPTY_PLAN)
        if timeline is None and not plan.arc and not plan.targets:
            return None
        memo = self._intents.get(performer_id)
        if memo is None:
            memo = self._intents[performer_id] = IntentMemo()
        return memo.of(window * self._config.window_us, self._config.window_us, timeline, plan)

    def _reintend(
        self, track: _PerformerTrack, first: int, stop: float, out: list[LabelWindow]
    ) -> None:
        """Revise the windows sent in ``[first, stop)`` whose intent changed."""
        timeline = self._cues.get(track.performer_id)
        plan = self._plans.get(track.performer_id, EMPTY_PLAN)
        width = self._config.window_us
        memo = IntentMemo()
        for window, sent in track.sent.items():
            if window < first or window >= stop:
                continue
            intent = memo.of(window * width, width, timeline, plan)
            if intent == sent.intent:
                continue
            sent.intent = intent
            sent.revision += 1
            self._count(track, "intent_revisions")
            out.append(self._record(track, window, sent, correction=True))

    def _restore_cues(self, windows: Iterable[LabelWindow]) -> None:
        """The cues in force over restored windows, known again (their records were
        acknowledged once a window under them went out); where the windows stop showing
        a cue, a clear stands between them."""
        width = self._config.window_us
        shown: str | None = None
        performer: str | None = None
        for window in windows:  # by performer, then time
            if window.performer_id != performer:
                performer, shown = window.performer_id, None
            cue = None if window.intent is None else window.intent.cue
            timeline = self._cues.get(window.performer_id)
            if cue is not None and cue.cue_id != shown:
                if timeline is None:
                    timeline = self._cues[window.performer_id] = CueTimeline()
                if timeline.add_in_force(cue) is not None:
                    self._counts["restored_cues"] += 1
            elif cue is None and shown is not None and timeline is not None:
                timeline.add_clear(window.ts_us + width // 2)
            shown = None if cue is None else cue.cue_id

    def _revision(self, track: _PerformerTrack, window: int, counter: str) -> LabelWindow:
        """The next revision of a window already sent."""
        sent = track.sent[window]
        sent.revision += 1
        self._count(track, counter)
        return self._record(track, window, sent, correction=True)

    def _remember_batch(self, batch: RatingBatch, now_us: int) -> None:
        config = self._config
        # Past this instant no window its samples fall in is within grace any more (a
        # sample is only ever moved earlier); kept at least grace_us after arrival too.
        newest = max(sample.ts_us for sample in batch.samples)
        forget_at = max(newest + config.grace_us + config.window_us, now_us + config.grace_us)
        self._batches[batch.batch_id] = (batch.performer_id, forget_at)
        heapq.heappush(self._batch_queue, (forget_at, batch.batch_id))

    def _placed(self, tag: TagEvent) -> tuple[TagEvent, LagCorrection | None]:
        """The tag where the rater's correction puts it, and the correction (None: where
        the tag service put it). Its raw press is ts_us plus the lag the service took off."""
        lag = self._lags.get(tag.rater_id)
        if lag is None or tag.action == "undo":
            return tag, None
        raw = tag.ts_us + tag.timing.reaction_lag_us
        return tag.model_copy(update={"ts_us": max(0, raw - lag.lag_us)}), lag

    def _drop_unplaced(self, track: _PerformerTrack) -> None:
        """Samples and readings kept for windows that will never go out (before the
        performer's first window): counted, and dropped."""
        first = track.next_window
        if first is None:
            return
        for window in [w for w in track.pending_traces if w < first]:
            traces = track.pending_traces.pop(window)
            late = sum(len(trace.samples) for trace in traces.values())
            self._count(track, "late_rating_samples", late)
        for window in [w for w in track.pending_models if w < first]:
            folds = track.pending_models.pop(window).values()
            self._count(track, "late_model_readings", sum(len(fold.parts) for fold in folds))

    # ------------------------------------------------------------------ tags

    def _remember(self, tag: TagEvent, now_us: int) -> None:
        config = self._config
        # Past this instant no window the tag can touch is within grace any more; keep the
        # id at least grace_us after arrival so a quick redelivery is still a duplicate.
        horizon = tag.ts_us + config.max_hold_us + config.grace_us + config.window_us
        forget_at = max(horizon, now_us + config.grace_us)
        self._tags[tag.tag_id] = _TagMemo(
            tag.performer_id, tag.rater_id, tag.action, tag.onset_tag_id, forget_at
        )
        heapq.heappush(self._forget_queue, (forget_at, tag.tag_id))

    def _add_onset(self, track: _PerformerTrack, tag: TagEvent) -> None:
        for offset_id in track.pending_offsets.pop(tag.tag_id, set()):
            offset = self._tag_set.get(offset_id)
            if offset is not None and not offset_applies(tag, offset):
                self._counts["ignored_offsets"] += 1

    def _add_offset(self, track: _PerformerTrack, tag: TagEvent) -> None:
        onset_id = tag.onset_tag_id
        if onset_id is None:  # the record's validator already refuses this
            raise ValueError(f"offset tag {tag.tag_id} names no onset")
        onset = self._tag_set.get(onset_id)
        if onset is None:
            # Its onset has not come (yet): the TagSet pairs them when it does; until
            # then the performer has something in hand that no window shows.
            track.pending_offsets.setdefault(onset_id, set()).add(tag.tag_id)
        elif not offset_applies(onset, tag):
            self._counts["ignored_offsets"] += 1

    def _undo(self, tag: TagEvent) -> tuple[_PerformerTrack, tuple[int, int]] | None:
        """Count an undo; withdraw a span known only from restored windows (what an undo
        does to a tag itself, the TagSet decides). The span withdrawn, if any."""
        target_id = tag.undoes_tag_id
        if target_id is None:  # the record's validator already refuses this
            raise ValueError(f"undo tag {tag.tag_id} names no tag")
        target = self._tag_set.get(target_id)
        memo = self._tags.get(target_id)
        if target is not None:
            counts = target.action != "undo" and undo_applies(
                tag, target.rater_id, target.performer_id
            )
            self._counts["undos" if counts else "ignored_undos"] += 1
            return None
        if memo is None or memo.action != "restored":
            # The undo overtook its tag (both are in flight at once): kept in the TagSet,
            # it withdraws the tag when that arrives, if it is the same rater's.
            self._counts["undos"] += 1
            return None
        if not undo_applies(tag, memo.rater_id, memo.performer_id):
            self._counts["ignored_undos"] += 1
            return None
        self._counts["undos"] += 1
        track = self._tracks.get(memo.performer_id)
        mark = None if track is None else track.marks.pop(target_id, None)
        if track is None or mark is None:
            return None
        self._unindex(track, mark)
        return track, (mark.start_us, mark.end_us)

    def _settle(self, mark_id: str, now_us: int) -> tuple[_PerformerTrack, tuple[int, int]] | None:
        """Make a point's or hold's mark what the tag rules now say it covers; its track
        and the span whose windows may have changed (None: nothing changed)."""
        tag = self._tag_set.get(mark_id)
        if tag is None:
            return None
        interval = self._tag_set.interval(mark_id)
        if interval is None:
            track = self._tracks.get(tag.performer_id)
            if track is None:
                return None
        else:
            track = self._track(tag.performer_id, now_us)
        old = track.marks.get(mark_id)
        before = None if old is None else (old.start_us, old.end_us, old.open)
        after = None if interval is None else (interval.start_us, interval.end_us, interval.open)
        if before == after:
            return None
        if old is not None:
            del track.marks[mark_id]
            self._unindex(track, old)
        if interval is not None:
            mark = track.marks[mark_id] = _Mark.of(interval)
            self._index(track, mark)
            self._note_start(track, interval.start_us)
        return track, _changed_span(before, after)

    def _effective_end(self, mark: _Mark) -> int:
        return mark.end_us  # an open hold's too: tag_rules ends it max_hold after its onset

    def _index(self, track: _PerformerTrack, mark: _Mark) -> None:
        if mark.open:
            track.open_holds.add(mark.tag_id)
            return
        width = self._config.window_us
        for window in range(mark.start_us // width, (mark.end_us - 1) // width + 1):
            track.by_window.setdefault(window, set()).add(mark.tag_id)

    def _unindex(self, track: _PerformerTrack, mark: _Mark) -> None:
        if mark.open:
            track.open_holds.discard(mark.tag_id)
            return
        width = self._config.window_us
        for window in range(mark.start_us // width, (mark.end_us - 1) // width + 1):
            tag_ids = track.by_window.get(window)
            if tag_ids is not None:
                tag_ids.discard(mark.tag_id)
                if not tag_ids:
                    del track.by_window[window]

    def _labels_at(self, track: _PerformerTrack, window: int) -> tuple[_Active, ...]:
        tag_ids = set(track.by_window.get(window, ()))
        if track.open_holds:
            start = window * self._config.window_us
            end = start + self._config.window_us
            for tag_id in track.open_holds:
                hold = track.marks[tag_id]
                if hold.start_us < end and hold.end_us > start:
                    tag_ids.add(tag_id)
        if not tag_ids:
            return ()
        marks = (track.marks[tag_id] for tag_id in tag_ids)
        return tuple(
            sorted(
                (m.rater_id, m.start_us, m.tag_id, m.rater_role, m.label, m.intensity)
                for m in marks
            )
        )

    def _oldest_correctable(self, now_us: int) -> int:
        """The first window with now_us - window end <= grace_us."""
        width = self._config.window_us
        return -((self._config.grace_us - now_us) // width) - 1

    def _correct(
        self, track: _PerformerTrack, region: tuple[int, int], now_us: int
    ) -> list[LabelWindow] | None:
        """Re-emit passed windows in region whose labels changed; None if all are too old."""
        start, end = region
        if end <= start or track.next_window is None:
            return []
        width = self._config.window_us
        first, last = start // width, (end - 1) // width
        oldest = self._oldest_correctable(now_us)
        if last < track.next_window and last < oldest:
            return None
        out: list[LabelWindow] = []
        top = min(last, track.next_window - 1)
        lowest_sent = track.next_window if track.first_emitted is None else track.first_emitted
        # A tag reaching before the performer's first window brings those windows out,
        # and the ones between them and the first, so the windows stay contiguous.
        fill_to = lowest_sent - 1 if max(first, oldest) < lowest_sent else top
        created = False
        for window in range(max(first, oldest), max(top, fill_to) + 1):
            labels = self._labels_at(track, window)
            sent = track.sent.get(window)
            if sent is None:
                if window >= lowest_sent and not labels:
                    continue
                # Before the performer's first captured instant: no media there.
                gaps: dict[FeatureStream, StreamGap] = dict.fromkeys(FEATURE_STREAMS, "no_media")
                sent = track.sent[window] = _SentWindow(
                    WindowFeatures(),
                    labels,
                    0,
                    gaps,
                    first_missing=dict(gaps),
                    first_without_media=True,
                    intent=self._intent_of(track.performer_id, window),
                )
                created = True
                self._count(track, "windows_emitted")
                self._count(track, "windows_incomplete")
                self._count(track, "windows_without_media")
                out.append(self._record(track, window, sent, correction=bool(labels)))
                continue
            if window > top:
                continue
            if _visible(sent.labels) == _visible(labels):
                sent.labels = labels  # the same labels (a restored span became its tag)
                continue
            sent.revision += 1
            sent.labels = labels
            self._count(track, "corrections")
            out.append(self._record(track, window, sent, correction=True))
        if created:
            track.first_emitted = min(track.sent)
            # Kept in window order: windows leave the grace (and are settled) in that order.
            track.sent = dict(sorted(track.sent.items()))
        return out

    def _forget_expired(self, now_us: int) -> None:
        batches = self._batch_queue
        while batches and batches[0][0] < now_us:
            forget_batch_at, batch_id = heapq.heappop(batches)
            remembered = self._batches.get(batch_id)
            if remembered is not None and remembered[1] == forget_batch_at:
                del self._batches[batch_id]
        queue = self._forget_queue
        while queue and queue[0][0] < now_us:
            forget_at, tag_id = heapq.heappop(queue)
            memo = self._tags.get(tag_id)
            if memo is None or memo.forget_at_us != forget_at:
                continue  # replaced by a later memo for the same id
            del self._tags[tag_id]
            self._tag_set.forget(tag_id)
            self._tag_lags.pop(tag_id, None)
            track = self._tracks.get(memo.performer_id)
            if track is None:
                continue
            mark = track.marks.pop(tag_id, None)
            if mark is not None:
                self._unindex(track, mark)
            if memo.action == "offset" and memo.onset_tag_id is not None:
                pending = track.pending_offsets.get(memo.onset_tag_id)
                if pending is not None:
                    pending.discard(tag_id)
                    if not pending:
                        del track.pending_offsets[memo.onset_tag_id]

    # ------------------------------------------------------------------ emission

    def _refresh_due(self, track: _PerformerTrack) -> None:
        """When next_window becomes ready, so a tick skips idle performers in O(1)."""
        if track.next_window is None:
            track.due_us = math.inf
            return
        config = self._config
        end = (track.next_window + 1) * config.window_us
        # The earliest it can be ready; whether a lagging feature stream still holds it
        # back is decided when it is looked at (_advance).
        track.due_us = end + config.tag_wait_us

    def _emit_ready(self, now_us: int) -> list[LabelWindow]:
        out: list[LabelWindow] = []
        for track in self._tracks.values():
            if now_us >= track.due_us:
                self._advance(track, now_us, out)
        return out

    def _stream_states(
        self, track: _PerformerTrack, now_us: int
    ) -> tuple[int, dict[FeatureStream, StreamGap]]:
        """How far the streams let windows go out (an instant: windows ending at or before
        it are ready), and the streams not waited for, each with why it would be missing."""
        config = self._config
        ready_end = now_us - config.tag_wait_us  # tags had tag_wait_us
        given_up: dict[FeatureStream, StreamGap] = {}
        for stream in FEATURE_STREAMS:
            newest = track.newest.get(stream)
            if newest is None:
                if (
                    stream not in config.awaited_streams
                    or now_us - track.created_us >= config.feature_wait_us
                ):
                    given_up[stream] = "absent"  # never came: the performer has no such stream
                else:
                    ready_end = -1  # not seen yet, but may still come: nothing is ready
                continue
            silent_us = now_us - track.arrived[stream]
            left_since = self._left_since.get(track.performer_id)
            if left_since is not None and silent_us >= config.ended_wait_us:
                given_up[stream] = "ended"
            elif silent_us >= config.feature_wait_us:
                given_up[stream] = "late"  # stopped delivering: not waited for
            else:
                ready_end = min(ready_end, newest)  # still delivers: waited for
        # Continuous raters who still rate the performer are waited for, briefly: their
        # samples of a window come lag-corrected and a batch later than its end.
        rating_ready = now_us - config.rating_wait_us
        for rating in track.ratings.values():
            if now_us - rating.arrived_us < config.rating_wait_us:
                ready_end = min(ready_end, max(rating.newest_us, rating_ready))
        return ready_end, given_up

    def _advance(self, track: _PerformerTrack, now_us: int, out: list[LabelWindow]) -> None:
        window = track.next_window
        if window is None:
            return
        config = self._config
        ready_end, given_up = self._stream_states(track, now_us)
        limit = ready_end // config.window_us
        # Windows go out from the performer's first to their last captured instant, or
        # last labelled window: not on and on past both while nothing more comes.
        captured_end = max(track.newest.values(), default=-1) // config.window_us + 1
        if limit > captured_end:
            limit = min(limit, max(captured_end, self._labelled_end(track)))
        if now_us != self._step_now_us:  # a new step: every call in one step has its now_us
            self._step_now_us = now_us
            self._step_budget = config.max_windows_per_step
        limit = min(limit, window + self._step_budget)
        self._step_budget -= max(0, limit - window)
        while window < limit:
            out.append(self._close(track, window, given_up))
            window += 1
            track.passed_any = True
        track.next_window = window
        if track.pending_traces or track.pending_models:
            self._drop_unplaced(track)
        if track.ratings:
            # Raters who stopped rating the performer long ago: nothing of theirs is kept.
            stale = now_us - config.grace_us
            for key in [k for k, rating in track.ratings.items() if rating.arrived_us < stale]:
                del track.ratings[key]
        self._prune_sent(track, now_us)
        timeline = self._cues.get(track.performer_id)
        if timeline is not None and len(timeline) > 1:
            # The cues replaced before the oldest window that can still be revised.
            timeline.prune(self._oldest_correctable(now_us) * config.window_us)
        self._refresh_due(track)

    def _labelled_end(self, track: _PerformerTrack) -> int:
        """The window after the last one a tag or a continuous rating of the performer
        labels."""
        last = max((self._effective_end(mark) for mark in track.marks.values()), default=0)
        if track.rated_until is not None:
            last = max(last, track.rated_until + 1)
        if last == 0:
            return 0
        return (last - 1) // self._config.window_us + 1

    def _close(
        self, track: _PerformerTrack, window: int, given_up: dict[FeatureStream, StreamGap]
    ) -> LabelWindow:
        config = self._config
        hops = track.hops.pop(window, {})
        sights = track.sights.pop(window, {})
        labels = self._labels_at(track, window)
        start = window * config.window_us
        end = start + config.window_us
        missing: dict[FeatureStream, StreamGap] = {}
        for stream in FEATURE_STREAMS:
            if track.newest.get(stream, -1) >= end:
                if not (hops if stream == "prosody" else sights):
                    missing[stream] = "no_media"  # the stream went past it with nothing
            else:
                gap = given_up.get(stream, "late")
                left_since = self._left_since.get(track.performer_id)
                if left_since is not None and start >= left_since:
                    gap = "ended"
                if gap == "ended" and (hops if stream == "prosody" else sights):
                    continue  # the stream ended inside the window: it has all there was
                missing[stream] = gap
        features = WindowFeatures(**_prosody_summary(hops), **_face_summary(sights, config))
        sent = track.sent[window] = _SentWindow(
            features,
            labels,
            0,
            missing,
            first_missing=dict(missing),
            first_without_media=_without_media(missing, features),
            first_frames=_frames(features),
            traces=dict(track.pending_traces.pop(window, {})),
            models=dict(track.pending_models.pop(window, {})),
            intent=self._intent_of(track.performer_id, window),
        )
        # What a stream that is missing had of the window: its late frames join these.
        if "prosody" in missing:
            sent.partial_hops = hops
        if "face" in missing:
            sent.partial_sights = sights
        self._count(track, "windows_emitted")
        if track.first_emitted is None:
            track.first_emitted = window
        if "late" in missing.values():
            track.revisable.add(window)  # its late stream may still catch up
        if missing:
            self._count(track, "windows_incomplete")
            if len(missing) == len(FEATURE_STREAMS) and not hops and not sights:
                self._count(track, "windows_without_media")
        return self._record(track, window, sent, correction=False)

    def _revise(self, track: _PerformerTrack, now_us: int, out: list[LabelWindow]) -> None:
        """Complete windows that went out without a stream: once the stream is past the
        window (or silent again), a revision carries its late frames, and no longer says
        the stream is late once it is past."""
        config = self._config
        _, given_up = self._stream_states(track, now_us)
        for window in sorted(track.revisable):
            sent = track.sent.get(window)
            if sent is None:  # out of the grace before the stream got past it
                for buffers in (track.hops, track.sights):
                    self._count(track, "late_features_lost", len(buffers.pop(window, {})))
                track.revisable.discard(window)
                continue
            end = (window + 1) * config.window_us
            update: dict[str, object] = {}
            changed = False
            for stream in FEATURE_STREAMS:
                if stream not in sent.missing:
                    continue
                past = track.newest.get(stream, -1) >= end
                buffers = track.hops if stream == "prosody" else track.sights
                if window in buffers and (past or stream in given_up):
                    late = buffers.pop(window)
                    self._count(track, "late_features_revised", len(late))
                    if stream == "prosody":
                        sent.partial_hops.update(cast(dict[int, _Hop], late))
                        update.update(_prosody_summary(sent.partial_hops))
                    else:
                        sent.partial_sights.update(cast(dict[int, _Sight | None], late))
                        update.update(_face_summary(sent.partial_sights, config))
                    changed = True
                    if past:
                        del sent.missing[stream]
                elif past and sent.missing[stream] == "late":
                    # The stream caught up with nothing more for this window: it had all
                    # there was, which may be nothing (an outage of that stream only).
                    had = sent.partial_hops if stream == "prosody" else sent.partial_sights
                    if had:
                        del sent.missing[stream]
                    else:
                        sent.missing[stream] = "no_media"
                    changed = True
            waiting = window in track.hops or window in track.sights
            if not waiting and "late" not in sent.missing.values():
                track.revisable.discard(window)
            if not changed:
                continue
            sent.features = sent.features.model_copy(update=update)
            sent.revision += 1
            self._count(track, "feature_revisions")
            out.append(self._record(track, window, sent, correction=True))

    def _prune_sent(self, track: _PerformerTrack, now_us: int) -> None:
        oldest = self._oldest_correctable(now_us)
        sent = track.sent
        while sent:
            window = next(iter(sent))
            if window >= oldest:
                break
            self._settle_window(track, window, sent.pop(window))

    def _settle_window(self, track: _PerformerTrack, window: int, sent: _SentWindow) -> None:
        """A window left the grace: its counts are final."""
        if window >= track.settled_through:
            _add_counts(track.settled, _tally(sent))
            track.settled_through = window + 1

    def _record(
        self, track: _PerformerTrack, window: int, sent: _SentWindow, *, correction: bool
    ) -> LabelWindow:
        raters = []
        for rater_id, group in itertools.groupby(sent.labels, key=lambda active: active[0]):
            actives = list(group)
            # Where the rater's correction changed between the placing of two of these
            # tags, each label says its own (records.RaterLabels.lag).
            placed = [self._tag_lags.get(a[2]) for a in actives]
            uniform = all(lag == placed[0] for lag in placed)
            labels = [
                ActiveLabel(label=a[4], intensity=a[5], tag_id=a[2], lag=None if uniform else lag)
                for a, lag in zip(actives, placed, strict=True)
            ]
            raters.append(
                RaterLabels(
                    rater_id=rater_id,
                    rater_role=actives[0][3],
                    labels=labels,
                    lag=placed[0] if uniform else None,
                )
            )
        consensus, agreement = _consensus(sent.labels)
        start = window * self._config.window_us
        ratings = [
            _rater_trace(key, trace, start, self._config.window_us)
            for key, trace in sorted(sent.traces.items(), key=lambda item: _trace_order(item[0]))
        ]
        return LabelWindow(
            ts_us=window * self._config.window_us,
            session_id=self.session_id,
            performer_id=track.performer_id,
            window_us=self._config.window_us,
            features=sent.features,
            raters=raters,
            consensus=consensus,
            consensus_agreement=agreement,
            correction=correction,
            revision=sent.revision,
            final_after_us=(window + 1) * self._config.window_us + self._config.grace_us,
            missing=dict(sent.missing),
            ratings=[trace for trace in ratings if trace is not None],
            models=[_shown(sent.models[model]) for model in sorted(sent.models)],
            intent=sent.intent,
        )


def _key_of(trace: RaterTrace) -> TraceKey:
    return trace.rater_id, trace.mode, trace.label


def _trace_order(key: TraceKey) -> tuple[str, str, str]:
    rater_id, mode, label = key
    return rater_id, mode, label or ""


def _rater_trace(
    key: TraceKey, trace: WindowTrace | RaterTrace, start_us: int, window_us: int
) -> RaterTrace | None:
    """What a window shows of one rater's trace (None: no sample of it is left)."""
    if isinstance(trace, RaterTrace):
        return trace
    summary = summarise(trace.samples.values(), key[1], start_us, window_us)
    if not summary.samples:
        return None
    return RaterTrace(
        rater_id=key[0],
        rater_role=trace.rater_role,
        mode=key[1],
        label=key[2],
        mean=summary.mean,
        last=summary.last,
        coverage=summary.coverage,
        samples=summary.samples,
        lag=trace.lag,
    )


def _changed_span(
    before: tuple[int, int, bool] | None, after: tuple[int, int, bool] | None
) -> tuple[int, int]:
    """The instants a mark covers before or after a change, but not both (and where one
    ends, the other begins): the windows whose labels may have changed."""
    if before is None or after is None:
        start, end, _ = before or after or (0, 0, False)
        return start, end
    (old_start, old_end, _), (new_start, new_end, _) = before, after
    if old_start == new_start:
        return min(old_end, new_end), max(old_end, new_end)
    if old_end == new_end:
        return min(old_start, new_start), max(old_start, new_start)
    return min(old_start, new_start), max(old_end, new_end)


def _visible(labels: tuple[_Active, ...]) -> set[tuple[str, str, str, str, str]]:
    """What a label window shows of its labels: the spans behind them aside."""
    return {(a[0], a[2], a[3], a[4], a[5]) for a in labels}


def _consensus(labels: tuple[_Active, ...]) -> tuple[str | None, float | None]:
    """The label most raters hold (a rater counts once per label); None on a tie."""
    holders: dict[str, set[str]] = {}
    for active in labels:
        holders.setdefault(active[4], set()).add(active[0])
    if not holders:
        return None, None
    most = max(len(raters) for raters in holders.values())
    leaders = [label for label, raters in holders.items() if len(raters) == most]
    if len(leaders) != 1:
        return None, None
    raters_with_labels = len({active[0] for active in labels})
    return leaders[0], round(most / raters_with_labels, 4)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _prosody_summary(hops: dict[int, _Hop]) -> dict[str, object]:
    """The window's prosody fields from its hops."""
    if not hops:
        return {"f0_mean_hz": None, "loudness_mean_db": None, "voiced_fraction": None}
    voiced_f0 = [f0 for f0, voiced, _ in hops.values() if voiced and f0 is not None]
    voiced = sum(1 for _, is_voiced, _ in hops.values() if is_voiced)
    return {
        "f0_mean_hz": round(_mean(voiced_f0), 3) if voiced_f0 else None,
        "loudness_mean_db": round(_mean([loudness for _, _, loudness in hops.values()]), 3),
        "voiced_fraction": round(voiced / len(hops), 4),
        "prosody_hops": len(hops),
    }


def _face_summary(sights: dict[int, _Sight | None], config: AlignerConfig) -> dict[str, object]:
    """The window's face fields from its frames (None: a frame skipped on purpose)."""
    analysed = [sight for sight in sights.values() if sight is not None]
    summary: dict[str, object] = {
        "face_present_fraction": None,
        "top_blendshapes": {},
        "head_pose": None,
        "face_frames": len(analysed),
        "face_frames_skipped": len(sights) - len(analysed),
    }
    if not analysed:
        return summary
    present = [sight for sight in analysed if sight.present]
    summary["face_present_fraction"] = round(len(present) / len(analysed), 4)
    if present:
        # A blendshape missing from a frame counts as 0 in that frame's share.
        totals: dict[str, float] = {}
        for sight in present:
            for name, value in sight.blendshapes.items():
                totals[name] = totals.get(name, 0.0) + value
        means = sorted(
            ((name, total / len(present)) for name, total in totals.items()),
            key=lambda item: (-item[1], item[0]),
        )
        summary["top_blendshapes"] = {
            name: min(1.0, max(0.0, round(v, 4))) for name, v in means[: config.top_blendshapes]
        }
    poses = [sight.pose for sight in present if sight.pose is not None]
    if poses:
        summary["head_pose"] = HeadPose(
            yaw_deg=round(_mean([p[0] for p in poses]), 3),
            pitch_deg=round(_mean([p[1] for p in poses]), 3),
            roll_deg=round(_mean([p[2] for p in poses]), 3),
        )
    return summary


def _frames(features: WindowFeatures) -> int:
    """The feature frames a window summarises (skipped face frames included)."""
    return features.prosody_hops + features.face_frames + features.face_frames_skipped


def _without_media(missing: dict[FeatureStream, StreamGap], features: WindowFeatures) -> bool:
    return len(missing) == len(FEATURE_STREAMS) and _frames(features) == 0


def _tally(sent: _SentWindow) -> dict[str, int]:
    """What one emitted window adds to its performer's counters."""
    features = sent.features
    counts = {
        "windows_emitted": 1,
        "windows_incomplete": int(bool(sent.first_missing)),
        "windows_without_media": int(sent.first_without_media),
        "window_revisions": sent.revision,
        "late_features_revised": max(0, _frames(features) - sent.first_frames),
        "prosody_hops": features.prosody_hops,
        "face_frames": features.face_frames,
        "face_frames_skipped": features.face_frames_skipped,
        "rating_samples": sum(
            trace.samples if isinstance(trace, RaterTrace) else len(trace.samples)
            for trace in sent.traces.values()
        ),
        "model_windows": int(bool(sent.models)),
    }
    # Per stream and reason (e.g. face_no_media_windows: a video outage, in windows).
    for stream, gap in sent.first_missing.items():
        counts[f"{stream}_{gap}_windows"] = 1
    return counts


def _add_counts(into: dict[str, int], counts: dict[str, int]) -> None:
    for name, value in counts.items():
        into[name] = into.get(name, 0) + value
