"""Each rater's reaction lag, estimated again and again from what the aligner took in.

The aligner tells :class:`LagEvidence` of every record it aligns; it keeps, per performer,
the last ``history_us`` of event time (bounded: a few minutes):

- the prosody loudness of each hop and the smile (mediapipe's mouthSmileLeft/Right mean,
  :func:`streams.labels.reaction_lag.smile_of`) of each face frame: the feature traces
  that define onsets (a laugh's loudness burst, a smile rising) and anchor continuous
  traces (loudness for arousal and for laughter's intensity, the smile for valence and
  for amusement's intensity: both rise when the rating does);
- every rater's tags as the tag service made them (presses are their raw instants) and
  every continuous sample as it was rated (not lag-corrected);
- per rater, the lag they calibrated on their page (the newest their tags or batches
  carry).

:func:`estimate_lags` runs over a :meth:`LagEvidence.snapshot`, off the event loop: for each
rater the estimators of :mod:`streams.labels.reaction_lag` (``calibration``, ``onsets`` over
every performer they tagged, ``consensus`` per performer and dimension they rated with at
least one other rater, the most telling of those kept), the choice among them
(:func:`~streams.labels.reaction_lag.choose`), and the ``rater_lag`` record. With automatic
correction off, the record still carries every estimate, but what it applies is the
calibration (or none).

What a round chooses is not applied as it is: :class:`AppliedLags` keeps each rater's
correction in force until the data say otherwise (an estimate as good moved by more than
``MIN_SHIFT_US``, a better one came, or ``DROP_AFTER_ROUNDS`` rounds in a row found nothing
as good), so a confidence that hovers around the bar does not move the rater's tags and
samples back and forth from one round to the next. :func:`worth_publishing` says which
records go to ``livetag.raters``: a material change, or a heartbeat.

No clock and no socket here: the aligner's wiring (streams.labels.aligner) runs it on a
timer and applies the corrections kept (SessionAligner.set_lag).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, TypeVar

import numpy as np

from streams.labels.agreement import Trace
from streams.labels.reaction_lag import (
    MIN_CONFIDENCE,
    LagEstimate,
    calibration_estimate,
    choose,
    consensus_lags,
    loudness_onsets,
    onset_lag,
    presses_of,
    rater_lag,
    smile_of,
    smile_onsets,
)
from streams.records import (
    RATING_DIMENSIONS,
    FaceFrame,
    LagCorrection,
    ProsodyFrame,
    RaterLag,
    RatingBatch,
    RatingDimension,
    RatingMode,
    Role,
    TagEvent,
)

__all__ = [
    "DROP_AFTER_ROUNDS",
    "HEARTBEAT_US",
    "LAUGH_LABELS",
    "MIN_SHIFT_US",
    "PUBLISH_SHIFT_US",
    "SMILE_LABELS",
    "AppliedLags",
    "ConsensusCache",
    "Evidence",
    "LagEvidence",
    "estimate_lags",
    "worth_publishing",
]

#: Labels whose presses are matched to smile onsets, and whose intensity the smile anchors.
SMILE_LABELS: Final = frozenset({"amusement", "joy", "happiness", "smile"})
#: Labels whose presses are matched to loudness bursts, and whose intensity loudness anchors.
LAUGH_LABELS: Final = frozenset({"laughter", "laugh"})

# One performer's rating dimension of one mode: (mode, label of an intensity rating).
_Rated = tuple[RatingMode, str | None]
# A consensus estimate's inputs, told apart cheaply: each rater's sample count and newest
# instant. performer, mode, label -> (that, the estimates per rater per dimension).
ConsensusCache = dict[
    tuple[str, RatingMode, str | None],
    tuple[tuple[tuple[str, int, int], ...], dict[str, list[LagEstimate]]],
]


_Entry = TypeVar("_Entry")


def _prune(entries: deque[tuple[int, _Entry]], horizon: int) -> None:
    while entries and entries[0][0] < horizon:
        entries.popleft()


@dataclass(frozen=True)
class Evidence:
    """What the lags are estimated from, as it was at one instant (copies: the aligner
    goes on meanwhile)."""

    loudness: dict[str, list[tuple[int, float]]]
    smiles: dict[str, list[tuple[int, float]]]
    tags: dict[str, list[TagEvent]]
    # performer -> (mode, label) -> rater -> [(raw ts_us, values in RATING_DIMENSIONS order)]
    ratings: dict[str, dict[_Rated, dict[str, list[tuple[int, tuple[float, ...]]]]]]
    calibrated: dict[str, int]
    roles: dict[str, Role]


class _Performer:
    def __init__(self) -> None:
        self.newest_us = 0
        self.loudness: deque[tuple[int, float]] = deque()
        self.smiles: deque[tuple[int, float]] = deque()
        self.tags: deque[tuple[int, TagEvent]] = deque()
        self.ratings: dict[_Rated, dict[str, deque[tuple[int, tuple[float, ...]]]]] = {}


class LagEvidence:
    """The last ``history_us`` of each performer's features, tags and ratings (module doc)."""

    def __init__(self, history_us: int) -> None:
        if history_us <= 0:
            raise ValueError("the lag evidence needs a positive history")
        self._history_us = history_us
        self._performers: dict[str, _Performer] = {}
        # rater -> (ts_us of the record that said it, lag calibrated)
        self._calibrated: dict[str, tuple[int, int]] = {}
        self._roles: dict[str, Role] = {}

    def _performer(self, performer_id: str, ts_us: int) -> _Performer:
        performer = self._performers.get(performer_id)
        if performer is None:
            performer = self._performers[performer_id] = _Performer()
        performer.newest_us = max(performer.newest_us, ts_us)
        return performer

    def _horizon(self, performer: _Performer) -> int:
        return performer.newest_us - self._history_us

    def note_hop(self, frame: ProsodyFrame) -> None:
        performer = self._performer(frame.performer_id, frame.ts_us)
        # In order only: a hop delivered again (or late) adds nothing to an envelope.
        if performer.loudness and frame.ts_us <= performer.loudness[-1][0]:
            return
        performer.loudness.append((frame.ts_us, float(frame.loudness_db)))
        _prune(performer.loudness, self._horizon(performer))

    def note_face(self, frame: FaceFrame) -> None:
        smile = smile_of(frame)
        if smile is None:
            return
        performer = self._performer(frame.performer_id, frame.ts_us)
        if performer.smiles and frame.ts_us <= performer.smiles[-1][0]:
            return
        performer.smiles.append((frame.ts_us, smile))
        _prune(performer.smiles, self._horizon(performer))

    def note_tag(self, tag: TagEvent) -> None:
        self._roles[tag.rater_id] = tag.rater_role
        self._calibration(tag.rater_id, tag.ts_us, tag.timing.reaction_lag_us)
        performer = self._performer(tag.performer_id, tag.ts_us)
        performer.tags.append((tag.ts_us, tag))
        _prune(performer.tags, self._horizon(performer))

    def note_ratings(self, batch: RatingBatch) -> None:
        self._roles[batch.rater_id] = batch.rater_role
        self._calibration(batch.rater_id, batch.ts_us, batch.reaction_lag_us)
        dimensions = RATING_DIMENSIONS[batch.mode]
        newest = max(sample.ts_us for sample in batch.samples)
        performer = self._performer(batch.performer_id, newest)
        rated = performer.ratings.setdefault((batch.mode, batch.label), {})
        samples = rated.setdefault(batch.rater_id, deque())
        for sample in batch.samples:
            if samples and sample.ts_us <= samples[-1][0]:
                continue  # a batch sent again, or out of order: the trace is a function of time
            values = tuple(float(getattr(sample, name)) for name in dimensions)
            samples.append((sample.ts_us, values))
        _prune(samples, self._horizon(performer))

    def _calibration(self, rater_id: str, ts_us: int, lag_us: int) -> None:
        known = self._calibrated.get(rater_id)
        if known is None or ts_us >= known[0]:
            self._calibrated[rater_id] = (ts_us, lag_us)

    def forget_performer(self, performer_id: str) -> None:
        self._performers.pop(performer_id, None)

    def snapshot(self) -> Evidence:
        """Copies of what is kept (and what fell out of the history, dropped)."""
        loudness: dict[str, list[tuple[int, float]]] = {}
        smiles: dict[str, list[tuple[int, float]]] = {}
        tags: dict[str, list[TagEvent]] = {}
        ratings: dict[str, dict[_Rated, dict[str, list[tuple[int, tuple[float, ...]]]]]] = {}
        for performer_id, performer in self._performers.items():
            horizon = self._horizon(performer)
            _prune(performer.tags, horizon)
            loudness[performer_id] = list(performer.loudness)
            smiles[performer_id] = list(performer.smiles)
            tags[performer_id] = [tag for _, tag in performer.tags]
            kept: dict[_Rated, dict[str, list[tuple[int, tuple[float, ...]]]]] = {}
            for rated, raters in list(performer.ratings.items()):
                for rater_id, samples in list(raters.items()):
                    _prune(samples, horizon)
                    if not samples:
                        del raters[rater_id]  # stopped rating this long ago
                if not raters:
                    del performer.ratings[rated]
                    continue
                kept[rated] = {rater_id: list(samples) for rater_id, samples in raters.items()}
            ratings[performer_id] = kept
        return Evidence(
            loudness=loudness,
            smiles=smiles,
            tags=tags,
            ratings=ratings,
            calibrated={rater: lag for rater, (_, lag) in self._calibrated.items()},
            roles=dict(self._roles),
        )


def _trace(pairs: Iterable[tuple[int, float]]) -> Trace:
    listed = list(pairs)
    return Trace.of([ts for ts, _ in listed], [value for _, value in listed])


def _anchor(
    dimension: RatingDimension, label: str | None, loudness: Trace, smile: Trace
) -> Trace | None:
    """The feature trace that rises when the rated dimension does, if there is one."""
    if dimension == "arousal" or (dimension == "intensity" and label in LAUGH_LABELS):
        return loudness if len(loudness) >= 2 else None
    if dimension == "valence" or (dimension == "intensity" and label in SMILE_LABELS):
        return smile if len(smile) >= 2 else None
    return None


def _most_telling(found: list[LagEstimate], min_confidence: float) -> LagEstimate:
    """Of one rater's consensus estimates (per performer and dimension), the one to weigh:
    a confident absolute one before a relative one, then the most confident."""
    return max(
        found,
        key=lambda e: (not e.relative and e.confidence >= min_confidence, e.confidence),
    )


def estimate_lags(
    evidence: Evidence,
    session_id: str,
    now_us: int,
    *,
    auto: bool = True,
    min_confidence: float = MIN_CONFIDENCE,
    cache: ConsensusCache | None = None,
) -> list[RaterLag]:
    """Every rater's ``rater_lag`` record from the evidence (module doc), by rater id.

    The consensus of a performer's dimension costs about 0.07 s of one core in FFTs per
    two minutes of three raters' traces (measured on a 2-core machine); with a ``cache``
    (kept by the caller from one round to the next) a dimension whose samples did not
    change since is not estimated again."""
    estimates: dict[str, list[LagEstimate]] = {rater: [] for rater in evidence.roles}
    for rater_id, lag_us in evidence.calibrated.items():
        if lag_us > 0 and rater_id in estimates:
            estimates[rater_id].append(calibration_estimate(lag_us))

    loudness = {p: _trace(pairs) for p, pairs in evidence.loudness.items()}
    smiles = {p: _trace(pairs) for p, pairs in evidence.smiles.items()}
    empty = Trace.of([], [])

    # Onsets: a press on a performer matches that performer's onsets, so presses and
    # onsets are keyed performer/label.
    onsets: dict[str, list[int]] = {}
    presses: dict[str, list[tuple[int, str]]] = {}
    for performer_id, tags in evidence.tags.items():
        if not tags:
            continue
        labels = {tag.label for tag in tags if tag.label is not None}
        smile_times = smile_onsets(smiles.get(performer_id, empty)) if labels & SMILE_LABELS else []
        laugh_times = (
            loudness_onsets(loudness.get(performer_id, empty)) if labels & LAUGH_LABELS else []
        )
        for smiled in labels & SMILE_LABELS:
            onsets[f"{performer_id}/{smiled}"] = smile_times
        for laughed in labels & LAUGH_LABELS:
            onsets[f"{performer_id}/{laughed}"] = laugh_times
        for rater_id in {tag.rater_id for tag in tags}:
            own = presses_of(tags, rater_id)
            keyed = [(instant, f"{performer_id}/{pressed}") for instant, pressed in own]
            presses.setdefault(rater_id, []).extend(keyed)
    for rater_id, pressed in presses.items():
        measured = onset_lag(sorted(pressed), onsets)
        if measured is not None:
            estimates.setdefault(rater_id, []).append(measured)

    consensus: dict[str, list[LagEstimate]] = {}
    kept: ConsensusCache = {}
    for performer_id, dimensions in evidence.ratings.items():
        for (mode, label), raters in dimensions.items():
            if len(raters) < 2:
                continue
            inputs = tuple(
                sorted((rater, len(samples), samples[-1][0]) for rater, samples in raters.items())
            )
            known = None if cache is None else cache.get((performer_id, mode, label))
            if known is not None and known[0] == inputs:
                kept[(performer_id, mode, label)] = known
                for rater_id, found_here in known[1].items():
                    consensus.setdefault(rater_id, []).extend(found_here)
                continue
            estimated: dict[str, list[LagEstimate]] = {}
            calibrated = {
                rater: evidence.calibrated[rater]
                for rater in raters
                if evidence.calibrated.get(rater, 0) > 0
            }
            for index, dimension in enumerate(RATING_DIMENSIONS[mode]):
                traces = {
                    rater: Trace.of(
                        np.array([ts for ts, _ in samples], dtype=np.int64),
                        np.array([values[index] for _, values in samples], dtype=np.float64),
                    )
                    for rater, samples in raters.items()
                }
                feature = _anchor(
                    dimension,
                    label,
                    loudness.get(performer_id, empty),
                    smiles.get(performer_id, empty),
                )
                result = consensus_lags(
                    traces, calibrated=calibrated, feature=feature, min_confidence=min_confidence
                )
                for rater_id, estimate in result.estimates.items():
                    estimated.setdefault(rater_id, []).append(estimate)
            kept[(performer_id, mode, label)] = (inputs, estimated)
            for rater_id, found_here in estimated.items():
                consensus.setdefault(rater_id, []).extend(found_here)
    if cache is not None:
        cache.clear()
        cache.update(kept)
    for rater_id, found_for in consensus.items():
        estimates.setdefault(rater_id, []).append(_most_telling(found_for, min_confidence))

    out = []
    for rater_id in sorted(estimates):
        found = estimates[rater_id]
        record = rater_lag(
            session_id,
            rater_id,
            evidence.roles.get(rater_id, "observer"),
            found,
            now_us,
            min_confidence=min_confidence,
        )
        if not auto:
            # Estimated and shown, never applied: the rater's calibration stays (or none).
            calibration = [e for e in found if e.method == "calibration"]
            record = record.model_copy(
                update={"applied": choose(calibration, min_confidence=min_confidence).correction()}
            )
        out.append(record)
    return out


# ---------------------------------------------------------------- what is applied, and told

#: A correction in force gives way to an estimate of the same standing only when that one
#: lies further than this from it. Not the estimate's spread: that is the rater's jitter
#: from one 10 s window to the next (100-300 ms), not the uncertainty of their median lag,
#: and holding a correction that far from a confident estimate would misplace the rater by
#: more than the 60 ms the estimates are good to. Rounds move a settled estimate by a few
#: milliseconds; 50 ms is half a label window.
MIN_SHIFT_US: Final = 50_000
#: Rounds in a row with nothing as good as the correction in force before it is dropped
#: for what they found (60 s at the default rater_lag_interval_s).
DROP_AFTER_ROUNDS: Final = 3
#: A rater_lag record goes out when its applied correction moved by more than this...
PUBLISH_SHIFT_US: Final = 20_000
#: ...or changed method, or this long after the last one went out (the estimates it
#: carries, for the dashboard, and a sign the aligner still estimates).
HEARTBEAT_US: Final = 60_000_000


def _standing(correction: LagCorrection) -> int:
    """Where the correction stands in :func:`~streams.labels.reaction_lag.choose`'s order:
    a confident absolute measurement from the data, the calibration, a confident relative
    consensus, none (choose hands out data estimates only when they are confident)."""
    if correction.method in ("onsets", "consensus") and not correction.relative:
        return 3
    if correction.method == "calibration":
        return 2
    if correction.method == "consensus":
        return 1
    return 0


@dataclass
class _Kept:
    correction: LagCorrection
    misses: int = 0  # rounds in a row that found nothing as good


class AppliedLags:
    """Each rater's correction in force, kept against rounds that would toggle it.

    A round's choice (a ``rater_lag`` record's ``applied``) replaces the correction in
    force when it stands higher in choose's order, or stands as high and lies more than
    ``min_shift_us`` from it; a choice that stands lower (the data estimate fell below the
    confidence bar this round) replaces it only after ``drop_after`` such rounds in a row.
    """

    def __init__(
        self, *, min_shift_us: int = MIN_SHIFT_US, drop_after: int = DROP_AFTER_ROUNDS
    ) -> None:
        if min_shift_us < 0 or drop_after < 1:
            raise ValueError("min_shift_us must be >= 0 and drop_after >= 1")
        self._min_shift_us = min_shift_us
        self._drop_after = drop_after
        self._kept: dict[str, _Kept] = {}

    def __contains__(self, rater_id: object) -> bool:
        return rater_id in self._kept

    def get(self, rater_id: str) -> LagCorrection | None:
        kept = self._kept.get(rater_id)
        return None if kept is None else kept.correction

    def seed(self, rater_id: str, correction: LagCorrection) -> None:
        """The correction in force for a rater (published by an earlier instance)."""
        self._kept[rater_id] = _Kept(correction)

    def update(self, rater_id: str, chosen: LagCorrection) -> LagCorrection:
        """The correction to apply after a round that chose ``chosen`` (class doc)."""
        kept = self._kept.get(rater_id)
        if kept is None:
            self._kept[rater_id] = _Kept(chosen)
            return chosen
        current = kept.correction
        if _standing(chosen) >= _standing(current):
            kept.misses = 0
            if (
                _standing(chosen) > _standing(current)
                or abs(chosen.lag_us - current.lag_us) > self._min_shift_us
            ):
                kept.correction = chosen
            return kept.correction
        kept.misses += 1
        if kept.misses >= self._drop_after:
            self._kept[rater_id] = _Kept(chosen)
        return self._kept[rater_id].correction


def worth_publishing(
    previous: RaterLag | None,
    record: RaterLag,
    *,
    shift_us: int = PUBLISH_SHIFT_US,
    heartbeat_us: int = HEARTBEAT_US,
) -> bool:
    """Whether ``record`` goes to livetag.raters after ``previous`` (the rater's last one
    there): its applied correction changed method or moved by more than ``shift_us``, or
    ``heartbeat_us`` passed since (a confidence moving in its 4th decimal is no news)."""
    if previous is None:
        return True
    before, now = previous.applied, record.applied
    return (
        (before.method, before.relative) != (now.method, now.relative)
        or abs(before.lag_us - now.lag_us) > shift_us
        or record.ts_us - previous.ts_us >= heartbeat_us
    )
