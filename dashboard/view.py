"""What a session's dashboards show, kept once per session and read by every client: sans I/O.

Records go in as they arrive from the topics; each browser client holds only a cursor
(:class:`ClientCursor`), and :meth:`SessionView.update_for` builds the next update for it
from whatever is new since its cursor. A client that reads slowly simply gets a bigger,
coalesced update later (the latest face frame, the prosody points still in the 30 s
window, what each point tag or hold covers now): nothing queues per client, so a slow or
dead dashboard costs nothing.

Continuous ratings (``livetag.ratings``) go out as 50 ms points per rater, mode and rated
emotion, as rated (the reaction lag is not taken off: the rater lag table beside them says
what it is), while tags go out where the tag service placed them (the rater's calibrated
lag already taken off): two time bases, which the page says beside the traces. Each model
rater's answer per window (its top label, or ``(none)`` where it read the face and found
no label of the vocabulary) goes out beside the consensus, flagged where the humans
agreed and the model did not (:mod:`dashboard.model_gap`, which also keeps the
per-emotion gap panel); each rater's newest lag estimate (``livetag.raters``) goes out as
a row of the lag table.

The director's side (:mod:`dashboard.directing`): each performer's cues (``livetag.cues``)
with their state (sent, or shown and after how many ms) and the cue in force; per label
window the ledger lanes: what was intended (the window's ``intent``) and what the
observers perceived (agreed or disputed); and from each performer's newest
``livetag.coverage`` record the coverage matrix, hit rate and confusion, and the next cue.

What a client is sent depends on its role (:attr:`ClientCursor.role`): the director gets
everything; an observer gets nothing that says what was intended, since knowing it
biases what they perceive, which is what the ledger measures: no cues, no intent lane
(their ledger rows carry the perceived cell only, sent when it changes), no coverage
(its intended seconds, hit rate and next cue give the intent away), and a hello whose
session shows the scenario only as far as its ``observers_see`` allows
(:func:`observer_session`). The role is part of the cursor's key, so a tick's update is
built and encoded once per role and cursor, not once per client.

Tags go out as what they cover (:mod:`streams.labels.tag_rules`, the rule the label windows and
the export follow), one entry per point or hold, sent again whenever that changes (an
offset ends a hold, an undo removes it: ``removed: true``). The page only draws them.
"""

from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import krippendorff
import numpy as np

from dashboard import directing, model_gap
from streams import records
from streams.archive import model_gap as archived_gap
from streams.labels import tag_rules
from streams.scenarios import performer_view

__all__ = [
    "DIRECTOR",
    "ClientCursor",
    "SessionView",
    "agreement_alpha",
    "lag_row",
    "observer_session",
]

#: The one role whose dashboard is told what was intended (cues, intent, coverage).
DIRECTOR = "director"

PROSODY_STEP_US = 50_000  # one chart point per 50 ms: 20 per second per performer
CHART_WINDOW_US = 35_000_000  # a little over the 30 s the charts show
CONSENSUS_KEEP_US = 120_000_000
TOP_BLENDSHAPES = 8
NO_LABEL = "(none)"
RATING_STEP_US = 50_000  # one trace point per rater per 50 ms: the page draws at 20 Hz
RATING_BATCHES_REMEMBERED = 4096  # batch ids kept to drop a re-delivered batch

_Seq = TypeVar("_Seq", bound=tuple[Any, ...])  # an entry of a deque kept in seq order


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


@dataclass(slots=True)
class _ProsodyBin:
    start_us: int
    f0_sum: float = 0.0
    voiced: int = 0
    loudness_sum: float = 0.0
    hops: int = 0

    def point(self) -> list[Any]:
        f0 = self.f0_sum / self.voiced if self.voiced else None
        return [self.start_us, _round(f0, 1), _round(self.loudness_sum / self.hops, 1)]


@dataclass(slots=True)
class _Performer:
    points: deque[tuple[int, list[Any]]] = field(default_factory=deque)  # (seq, point)
    open_bin: _ProsodyBin | None = None
    face: dict[str, Any] | None = None
    face_seq: int = 0
    prosody_latency_us: deque[int] = field(default_factory=lambda: deque(maxlen=100))
    face_latency_us: deque[int] = field(default_factory=lambda: deque(maxlen=30))
    # Capture instants of the recent face records, analysed or skipped: the rate actually
    # analysed, next to the frames the processors chose to skip (never reset).
    face_analysed_us: deque[int] = field(default_factory=lambda: deque(maxlen=300))
    face_skipped_us: deque[int] = field(default_factory=lambda: deque(maxlen=300))
    face_frames_skipped: int = 0
    # Label windows for agreement: window start -> ((rater, label or NO_LABEL), ...)
    windows: dict[int, dict[str, str]] = field(default_factory=dict)
    windows_version: int = 0  # bumped by every label window that changes ``windows``
    # (windows_version, newest recent window start) the agreement was last computed for
    agreement_basis: tuple[int, int] | None = None
    # Continuous rating points: (seq, (rater_id, rater_role, mode, label), point) with
    # point [ts_us, valence, arousal] or [ts_us, intensity]
    ratings: deque[tuple[int, tuple[str, str, str, str | None], list[Any]]] = field(
        default_factory=deque
    )
    ratings_newest_us: int = 0
    # Recent windows' model lanes shown: window start -> the models read there, so a
    # revision without a model's reading takes that reading off the page.
    models_shown: dict[int, tuple[str, ...]] = field(default_factory=dict)
    # Recent windows' ledger lanes shown: window start -> (intent, perceived) as sent, so
    # a revision is sent only when it changes them (and one that empties them, too).
    ledger_shown: dict[int, tuple[Any, Any]] = field(default_factory=dict)


@dataclass(slots=True)
class ClientCursor:
    """How far one dashboard client has been sent each stream, and who it is: a
    ``role`` other than the director's is sent nothing of what was intended."""

    role: str = DIRECTOR
    prosody: dict[str, int] = field(default_factory=dict)
    face: dict[str, int] = field(default_factory=dict)
    ratings: dict[str, int] = field(default_factory=dict)
    tags: int = 0  # the seq of the newest change to a point or hold it was sent
    ledger: int = 0
    cues: int = 0  # the seq of the newest change to a cue it was sent
    cues_current: int = 0
    coverage: int = 0
    models: int = 0
    agreement: int = 0
    gap: int = 0
    raters: int = 0
    health: int = 0
    session: int = 0

    def copy(self) -> ClientCursor:
        return dataclasses.replace(
            self, prosody=dict(self.prosody), face=dict(self.face), ratings=dict(self.ratings)
        )

    def take(self, other: ClientCursor) -> None:
        """Move to where ``other`` is (a copy of it: the two stay independent)."""
        copied = other.copy()
        for name in (f.name for f in dataclasses.fields(self)):
            setattr(self, name, getattr(copied, name))

    def key(self) -> tuple[Any, ...]:
        """Equal for two cursors exactly when they would be sent the same update."""
        values = (getattr(self, f.name) for f in dataclasses.fields(self))
        return tuple(
            tuple(sorted(value.items())) if isinstance(value, dict) else value for value in values
        )


class SessionView:
    """The live state of one session for its dashboards."""

    def __init__(
        self,
        session: records.SessionRecord,
        *,
        max_hold_us: int = tag_rules.DEFAULT_MAX_HOLD_US,
        label_grace_us: int = model_gap.DEFAULT_GRACE_US,
    ) -> None:
        self.session = session
        self.session_version = 1
        self.performers: dict[str, _Performer] = {
            p.performer_id: _Performer() for p in session.roster
        }
        self._seq = 0
        # What the session's tags cover, by the rule the label windows follow: the page
        # draws these and decides nothing itself.
        self._tag_set = tag_rules.TagSet(max_hold_us)
        # Per point or hold (by its tag_id): the seq of its last change and what the page
        # is told of it. Kept in the order of those changes, so what is new for a client
        # is the tail of the dict, each mark once however often it changed.
        self.marks: dict[str, tuple[int, dict[str, Any]]] = {}
        # The ledger lanes per window: [performer_id, window ts_us, window_us, intent,
        # perceived] (dashboard.directing.ledger_row), a revision's row replacing its own.
        self.ledger: deque[tuple[int, list[Any]]] = deque()
        # The observers' rows of it: the perceived cell alone (the intent cell None), sent
        # when what was perceived changed, so not even a row's timing tells of an intent.
        self.perceived: deque[tuple[int, list[Any]]] = deque()
        self.cues = directing.CueBoard(session.session_id, self._next, CHART_WINDOW_US)
        self.coverages: dict[str, records.Coverage] = {}
        # Breaks a tie between perceived labels, as the aligner's coverage does.
        self._vocabulary_rank = _rank(session)
        self.coverage: dict[str, Any] = {}
        self.coverage_version = 0  # of coverage, as sent
        self._coverage_changed = False
        # Model lanes: [performer_id, window ts_us, window_us, model, answer (top label,
        # "(none)": read, no label) or None (not read), its probability or None, missed:
        # the humans agreed and the model answered otherwise]
        self.models: deque[tuple[int, list[Any]]] = deque()
        self.gap = model_gap.ModelGap(
            (entry.label for entry in session.vocabulary), grace_us=label_grace_us
        )
        self.gap_summary: dict[str, Any] = {}
        self.gap_version = 0  # of gap_summary, as sent
        self._gap_counted = -1  # the ModelGap version gap_summary was made from
        self.rater_lags: dict[str, records.RaterLag] = {}
        self.raters_version = 0
        self._rating_batches: OrderedDict[str, None] = OrderedDict()
        self.rating_batches_repeated = 0
        self.agreement: dict[str, Any] = {}
        self.agreement_version = 0
        self.health: dict[str, Any] = {}
        self.health_version = 0

    def _next(self) -> int:
        self._seq += 1
        return self._seq

    def _performer(self, performer_id: str) -> _Performer:
        performer = self.performers.get(performer_id)
        if performer is None:
            performer = self.performers[performer_id] = _Performer()
        return performer

    # ---------------------------------------------------------------- records in

    def add_session(self, record: records.SessionRecord) -> None:
        if record.session_id != self.session.session_id or record.ts_us < self.session.ts_us:
            return
        laid_out_before = directing.coverage_basis(self.session)
        self.session = record
        self.session_version += 1
        self._vocabulary_rank = _rank(record)
        if directing.coverage_basis(record) != laid_out_before:
            self._coverage_changed = True  # e.g. the next cue follows the scene's targets

    def add_prosody(self, frame: records.ProsodyFrame, received_us: int) -> None:
        performer = self._performer(frame.performer_id)
        performer.prosody_latency_us.append(received_us - frame.ts_us)
        start = frame.ts_us // PROSODY_STEP_US * PROSODY_STEP_US
        current = performer.open_bin
        if current is not None and start < current.start_us:
            return  # a re-delivered or late hop: its point has gone out
        if current is None or start > current.start_us:
            if current is not None:
                performer.points.append((self._next(), current.point()))
            current = performer.open_bin = _ProsodyBin(start)
        current.hops += 1
        current.loudness_sum += frame.loudness_db
        if frame.voiced and frame.f0_hz is not None:
            current.voiced += 1
            current.f0_sum += frame.f0_hz
        horizon = frame.ts_us - CHART_WINDOW_US
        while performer.points and performer.points[0][1][0] < horizon:
            performer.points.popleft()

    def add_face(self, frame: records.FaceFrame, received_us: int) -> None:
        performer = self._performer(frame.performer_id)
        if frame.face_present is None:  # skipped by the processors: nothing to draw
            performer.face_frames_skipped += 1
            performer.face_skipped_us.append(frame.ts_us)
            return
        performer.face_analysed_us.append(frame.ts_us)
        performer.face_latency_us.append(received_us - frame.ts_us)
        if performer.face is not None and frame.ts_us <= performer.face["ts_us"]:
            return
        top = sorted(frame.blendshapes.items(), key=lambda item: -item[1])[:TOP_BLENDSHAPES]
        performer.face = {
            "ts_us": frame.ts_us,
            "face_present": frame.face_present,
            "landmarks": None if frame.landmarks is None else frame.landmarks.data,
            "blendshapes": {name: round(value, 3) for name, value in top},
            "head_pose": None if frame.head_pose is None else frame.head_pose.model_dump(),
        }
        performer.face_seq = self._next()

    def add_tag(self, tag: records.TagEvent) -> None:
        # A re-delivered tag, or one that bears on no known point or hold (an undo or an
        # offset ahead of its tag): nothing to show yet.
        mark_id = self._tag_set.add(tag)
        if mark_id is None:
            return
        interval = self._tag_set.interval(mark_id)
        known = self.marks.get(mark_id)
        if interval is None:
            if known is None:
                return  # withdrawn before it was ever shown
            mark = self._tag_set.get(mark_id)
            performer_id = tag.performer_id if mark is None else mark.performer_id
            shown = {"tag_id": mark_id, "performer_id": performer_id, "removed": True}
        else:
            shown = dataclasses.asdict(interval)
            # The newest key press behind it (the press, key-down or key-up): when the
            # rater last acted on it, for the page's note of the newest tag.
            pressed = (self._tag_set.get(mark_id), self._tag_set.get(interval.offset_tag_id or ""))
            shown["ts_us"] = max(t.ts_us for t in pressed if t is not None)
        if known is not None and known[1] == shown:
            return
        self.marks.pop(mark_id, None)  # re-inserted last: the newest change
        self.marks[mark_id] = (self._next(), shown)

    def add_label(self, window: records.LabelWindow) -> None:
        performer = self._performer(window.performer_id)
        labels: dict[str, str] = {}
        for rater in window.raters:
            if rater.labels:
                labels[rater.rater_id] = rater.labels[0].label
        if labels or window.ts_us in performer.windows:
            performer.windows[window.ts_us] = labels
            performer.windows_version += 1
        self._add_ledger(window, performer)
        self._add_models(window, performer)
        self.gap.add(window)

    def _add_ledger(self, window: records.LabelWindow, performer: _Performer) -> None:
        """The window's intent and perceived lanes, sent when they show something or a
        revision changed what they showed."""
        cells = directing.ledger_row(window, self._vocabulary_rank)
        before = performer.ledger_shown.get(window.ts_us) or (None, None)
        if cells != before:
            row = [window.performer_id, window.ts_us, window.window_us, *cells]
            seq = self._next()
            self.ledger.append((seq, row))
            if cells[1] != before[1]:
                self.perceived.append((seq, [*row[:3], None, cells[1]]))
            if cells == (None, None):
                performer.ledger_shown.pop(window.ts_us, None)
            else:
                performer.ledger_shown[window.ts_us] = cells
        horizon = window.ts_us - CONSENSUS_KEEP_US
        for rows in (self.ledger, self.perceived):
            while rows and rows[0][1][1] < horizon:
                rows.popleft()
        # Kept in the order windows first came, which is their order in time.
        while performer.ledger_shown:
            oldest = next(iter(performer.ledger_shown))
            if oldest >= horizon:
                break
            del performer.ledger_shown[oldest]

    def _add_models(self, window: records.LabelWindow, performer: _Performer) -> None:
        agreed = model_gap.humans_agreed(window)
        read = tuple(sorted(estimate.model for estimate in window.models))
        before = performer.models_shown.get(window.ts_us, ())
        for estimate in window.models:
            row = [
                window.performer_id,
                window.ts_us,
                window.window_us,
                estimate.model,
                archived_gap.model_answer(estimate),
                _round(archived_gap.model_answer_probability(estimate), 3),
                model_gap.model_missed(agreed, estimate),
            ]
            self.models.append((self._next(), row))
        for model in set(before) - set(read):  # a revision without that reading
            row = [window.performer_id, window.ts_us, window.window_us, model, None, None, False]
            self.models.append((self._next(), row))
        if read:
            performer.models_shown[window.ts_us] = read
        else:
            performer.models_shown.pop(window.ts_us, None)
        horizon = window.ts_us - CONSENSUS_KEEP_US
        while self.models and self.models[0][1][1] < horizon:
            self.models.popleft()
        # Kept in the order windows first came, which is their order in time.
        while performer.models_shown:
            oldest = next(iter(performer.models_shown))
            if oldest >= horizon:
                break
            del performer.models_shown[oldest]

    def add_rating(self, batch: records.RatingBatch) -> None:
        """A batch of one rater's continuous samples: its 50 ms means, once per batch_id."""
        if batch.session_id != self.session.session_id:
            return
        if batch.batch_id in self._rating_batches:
            self.rating_batches_repeated += 1
            return
        self._rating_batches[batch.batch_id] = None
        if len(self._rating_batches) > RATING_BATCHES_REMEMBERED:
            self._rating_batches.popitem(last=False)
        dimensions = records.RATING_DIMENSIONS[batch.mode]
        bins: dict[int, list[float]] = {}  # bin start -> [samples, sum per dimension...]
        for sample in batch.samples:
            start = sample.ts_us // RATING_STEP_US * RATING_STEP_US
            sums = bins.setdefault(start, [0.0] * (len(dimensions) + 1))
            sums[0] += 1
            for index, name in enumerate(dimensions, 1):
                sums[index] += float(getattr(sample, name))
        performer = self._performer(batch.performer_id)
        rater = (batch.rater_id, batch.rater_role, batch.mode, batch.label)
        for start in sorted(bins):
            count, *sums = bins[start]
            point = [start, *(round(total / count, 3) for total in sums)]
            performer.ratings.append((self._next(), rater, point))
        performer.ratings_newest_us = max(performer.ratings_newest_us, max(bins))
        horizon = performer.ratings_newest_us - CHART_WINDOW_US
        while performer.ratings and performer.ratings[0][2][0] < horizon:
            performer.ratings.popleft()

    def add_rater_lag(self, lag: records.RaterLag) -> None:
        """A rater's lag estimate: the newest (by ts_us) per rater counts."""
        if lag.session_id != self.session.session_id:
            return
        known = self.rater_lags.get(lag.rater_id)
        if known is not None and (known.ts_us > lag.ts_us or known == lag):
            return
        self.rater_lags[lag.rater_id] = lag
        self.raters_version += 1

    def add_cue(self, cue: records.Cue) -> bool:
        """A cue sent, or shown on the performer's page; whether the page is told anew."""
        if cue.session_id != self.session.session_id:
            return False
        self._performer(cue.performer_id)
        return self.cues.add(cue)

    def add_coverage(self, coverage: records.Coverage) -> None:
        """A performer's ledger so far: the newest (by ts_us) per performer counts."""
        if coverage.session_id != self.session.session_id:
            return
        known = self.coverages.get(coverage.performer_id)
        if known is not None and (known.ts_us > coverage.ts_us or known == coverage):
            return
        self.coverages[coverage.performer_id] = coverage
        self._coverage_changed = True

    def compute_coverage(self) -> None:
        """The coverage panel, hit rate, confusion and next cue, remade when a performer's
        ledger changed (or the session's scenario, which sets the targets)."""
        if not self._coverage_changed:
            return
        self._coverage_changed = False
        summary = directing.coverage_summary(self.coverages, self.session)
        if summary != self.coverage:
            self.coverage = summary
            self.coverage_version += 1

    def rater_table(self) -> list[dict[str, Any]]:
        """The rater lag table, one row per rater by id."""
        return [lag_row(self.rater_lags[rater]) for rater in sorted(self.rater_lags)]

    def compute_gap(self) -> None:
        """The gap panel's summary, remade when a window changed what it counts."""
        if self.gap.version == self._gap_counted:
            return
        self._gap_counted = self.gap.version
        summary = self.gap.summary()
        if summary != self.gap_summary:
            self.gap_summary = summary
            self.gap_version += 1

    def set_health(self, health: dict[str, Any]) -> None:
        latency = {}
        for performer_id, performer in self.performers.items():
            latency[performer_id] = {
                "prosody_latency_ms": _median_ms(performer.prosody_latency_us),
                "face_latency_ms": _median_ms(performer.face_latency_us),
                "face_fps_analysed": _recent_rate(
                    performer.face_analysed_us, performer.face_skipped_us
                ),
                "face_frames_skipped": performer.face_frames_skipped,
            }
        merged = dict(health)
        per_performer = {**merged.get("performers", {})}
        for performer_id, values in latency.items():
            per_performer[performer_id] = {**per_performer.get(performer_id, {}), **values}
        merged["performers"] = per_performer
        self.health = merged
        self.health_version += 1

    def compute_agreement(self, now_us: int, recent_us: int = 60_000_000) -> None:
        """Krippendorff's alpha (nominal) per performer: the session so far and recently."""
        result = dict(self.agreement)
        for performer_id, performer in self.performers.items():
            # Recomputed only when its windows changed or one left the recent span: the
            # whole-session alpha runs over every labelled window of the session.
            oldest_recent = min(
                (ts for ts in performer.windows if ts >= now_us - recent_us), default=-1
            )
            basis = (performer.windows_version, oldest_recent)
            if basis == performer.agreement_basis and performer_id in result:
                continue
            performer.agreement_basis = basis
            recent = {ts: v for ts, v in performer.windows.items() if ts >= now_us - recent_us}
            raters = sorted({rater for labels in performer.windows.values() for rater in labels})
            result[performer_id] = {
                "session": agreement_alpha(performer.windows.values(), raters),
                "last_60s": agreement_alpha(recent.values(), raters),
                "raters": len(raters),
                "units": sum(1 for labels in performer.windows.values() if labels),
            }
        if result != self.agreement:
            self.agreement = result
            self.agreement_version += 1

    # ---------------------------------------------------------------- updates out

    def hello(self, role: str = DIRECTOR, participant_id: str = "") -> dict[str, Any]:
        """The session as a client of this role is first told of it: the whole record for
        the director, :func:`observer_session` for anyone else."""
        if role == DIRECTOR:
            return {"type": "hello", "session": self.session.model_dump(mode="json")}
        return {"type": "hello", "session": observer_session(self.session, participant_id)}

    def update_for(self, cursor: ClientCursor, now_us: int) -> dict[str, Any] | None:
        """What is new for this client since its cursor (and advance it); None if nothing.
        Only the director's cursor is sent cues, the intent lane and coverage."""
        director = cursor.role == DIRECTOR
        update: dict[str, Any] = {}
        performers: dict[str, Any] = {}
        for performer_id, performer in self.performers.items():
            entry: dict[str, Any] = {}
            since = cursor.prosody.get(performer_id, 0)
            points = [point for seq, point in performer.points if seq > since]
            if points:
                entry["prosody"] = points
                cursor.prosody[performer_id] = performer.points[-1][0]
            if performer.face is not None and performer.face_seq > cursor.face.get(performer_id, 0):
                entry["face"] = performer.face
                cursor.face[performer_id] = performer.face_seq
            since = cursor.ratings.get(performer_id, 0)
            if performer.ratings and performer.ratings[-1][0] > since:
                entry["ratings"] = _rating_groups(performer.ratings, since)
                cursor.ratings[performer_id] = performer.ratings[-1][0]
            if entry:
                performers[performer_id] = entry
        if performers:
            update["performers"] = performers
        newest_mark = next(reversed(self.marks.values()))[0] if self.marks else 0
        if newest_mark > cursor.tags:
            marks = self._marks_since(cursor.tags)
            if marks:
                update["tags"] = marks
            cursor.tags = newest_mark
        rows = self.ledger if director else self.perceived
        ledger = [row for _, row in _since(rows, cursor.ledger)]
        if ledger:
            update["ledger"] = ledger
            cursor.ledger = rows[-1][0]
        if director:
            newest_cue = self.cues.newest_seq
            if newest_cue > cursor.cues:
                update["cues"] = self.cues.since(cursor.cues)
                cursor.cues = newest_cue
            if cursor.cues_current < self.cues.current_version:
                update["cues_current"] = self.cues.current()
                cursor.cues_current = self.cues.current_version
            if cursor.coverage < self.coverage_version:
                update["coverage"] = self.coverage
                cursor.coverage = self.coverage_version
        models = [row for _, row in _since(self.models, cursor.models)]
        if models:
            update["models"] = models
            cursor.models = self.models[-1][0]
        if cursor.agreement < self.agreement_version:
            update["agreement"] = self.agreement
            cursor.agreement = self.agreement_version
        if cursor.gap < self.gap_version:
            update["gap"] = self.gap_summary
            cursor.gap = self.gap_version
        if cursor.raters < self.raters_version:
            update["raters"] = self.rater_table()
            cursor.raters = self.raters_version
        if cursor.health < self.health_version:
            update["health"] = self.health
            cursor.health = self.health_version
        if cursor.session < self.session_version:
            update["session"] = {
                "state": self.session.state,
                "takes": [take.model_dump() for take in self.session.takes],
                "presence": [p.model_dump() for p in self.session.presence],
            }
            cursor.session = self.session_version
        if not update:
            return None
        return {"type": "update", "now_us": now_us, **update}

    def _marks_since(self, seq: int) -> list[dict[str, Any]]:
        """What changed about points and holds after ``seq``, oldest change first."""
        news = []
        for mark_seq, shown in reversed(self.marks.values()):
            if mark_seq <= seq:
                break
            if seq == 0 and shown.get("removed"):
                continue  # a client that was shown nothing yet need not hear of it
            news.append(shown)
        news.reverse()
        return news


def observer_session(session: records.SessionRecord, participant_id: str) -> dict[str, Any]:
    """The session record as an observer's dashboard is told of it: the prompt and the
    scenario as :func:`streams.scenarios.performer_view` shows an observer (the prompt;
    every part's brief too when ``observers_see`` is ``prompt_and_roles``; nothing, not
    even the prompt, when it is ``nothing``), with no part's targets, no arc and no
    scenario targets; who plays which part only where the parts are shown."""
    shown = session.model_dump(mode="json")
    view = performer_view(session, participant_id, "observer")
    scenario = view["scenario"]
    for part in [] if scenario is None else scenario.get("roles", []):
        part.pop("targets", None)  # a part's targets are what it is meant to show
    shown["prompt"] = view["prompt"]
    shown["scenario"] = scenario
    if scenario is None or "roles" not in scenario:
        shown["roles"] = {}
    return shown


def _rank(session: records.SessionRecord) -> dict[str, int]:
    return {entry.label: k for k, entry in enumerate(session.vocabulary)}


def _since(entries: deque[_Seq], seq: int) -> list[_Seq]:
    """The entries after ``seq`` of a deque kept in seq order, read from its new end."""
    news = []
    for entry in reversed(entries):
        if entry[0] <= seq:
            break
        news.append(entry)
    news.reverse()
    return news


def _rating_groups(
    ratings: deque[tuple[int, tuple[str, str, str, str | None], list[Any]]], since: int
) -> list[dict[str, Any]]:
    """The rating points after ``since``, one group per rater (and mode and label)."""
    groups: dict[tuple[str, str, str, str | None], list[list[Any]]] = {}
    for _, rater, point in _since(ratings, since):
        groups.setdefault(rater, []).append(point)
    return [
        {"rater_id": rater, "rater_role": role, "mode": mode, "label": label, "points": points}
        for (rater, role, mode, label), points in groups.items()
    ]


def _correction(correction: records.LagCorrection, evidence: int | None) -> dict[str, Any]:
    return {
        "method": correction.method,
        "lag_ms": round(correction.lag_us / 1000),
        "spread_ms": round(correction.spread_us / 1000),
        "confidence": round(correction.confidence, 2),
        "relative": correction.relative,
        "evidence": evidence,
    }


def lag_row(lag: records.RaterLag) -> dict[str, Any]:
    """A rater's row of the lag table: the applied correction, and every method's estimate
    (the applied one among them), in milliseconds, each with how much evidence it used."""
    return {
        "rater_id": lag.rater_id,
        "rater_role": lag.rater_role,
        "ts_us": lag.ts_us,
        "applied": _correction(lag.applied, lag.evidence.get(lag.applied.method)),
        "estimates": [
            _correction(estimate, lag.evidence.get(estimate.method)) for estimate in lag.estimates
        ],
    }


RATE_SPAN_US = 5_000_000


def _recent_rate(analysed_us: deque[int], skipped_us: deque[int]) -> float | None:
    """Frames per second actually analysed over the last 5 s of the performer's face
    stream: the stream's own frame rate (by capture time, so a stream arriving late
    still shows its rate) times the share of frames that were analysed."""
    newest = max(analysed_us[-1] if analysed_us else 0, skipped_us[-1] if skipped_us else 0)
    since = newest - RATE_SPAN_US
    analysed = [ts for ts in analysed_us if ts > since]
    skipped = [ts for ts in skipped_us if ts > since]
    total = len(analysed) + len(skipped)
    if total < 2:
        return None
    span_us = newest - min(analysed[:1] + skipped[:1])
    if span_us <= 0:
        return None
    frames_per_s = (total - 1) * 1_000_000 / span_us
    return round(len(analysed) / total * frames_per_s, 1)


def _median_ms(values: Iterable[int]) -> float | None:
    ordered = sorted(values)
    if not ordered:
        return None
    return round(ordered[len(ordered) // 2] / 1000, 1)


def agreement_alpha(windows: Iterable[dict[str, str]], raters: list[str]) -> float | None:
    """Krippendorff's alpha (nominal) over label windows.

    Units are the windows in which any rater has a label; each rater's value is the label
    they hold there, or "no label" (a rater who tagged nothing there disagrees with one who
    did). None when it is undefined: fewer than two raters, or no variation at all.
    """
    units = [labels for labels in windows if labels]
    if len(raters) < 2 or not units:
        return None
    categories: dict[str, int] = {NO_LABEL: 0}
    data = np.empty((len(raters), len(units)), dtype=np.float64)
    for column, labels in enumerate(units):
        for row, rater in enumerate(raters):
            label = labels.get(rater, NO_LABEL)
            data[row, column] = categories.setdefault(label, len(categories))
    if np.all(data == data[0, 0]):
        return 1.0  # everyone always held the same label: formally 0/0, in fact agreement
    try:
        alpha = float(
            krippendorff.alpha(
                reliability_data=data,
                level_of_measurement="nominal",
                value_domain=list(range(len(categories))),
            )
        )
    except (ValueError, ZeroDivisionError):
        return None
    return None if math.isnan(alpha) else round(alpha, 3)
