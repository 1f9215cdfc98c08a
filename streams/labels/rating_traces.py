"""A continuous rating's samples in one label window, summarised as the window shows them.

A rater moving a valence/arousal pad or an intensity slider is sampled at ``rate_hz``
(10-30 Hz in the continuous-annotation tradition: DARMA, CARMA, PAGAN). A label window
holds the samples whose (lag-corrected) instant falls in it, and shows per rater and
dimension their mean and the last value, how many there were, and ``coverage``: the share
of the window's sample slots (``ceil(window * rate_hz)`` of them, each ``1 / rate_hz``
long, from the window's start) that hold at least one sample. A rater who paused their
gamepad, or whose page dropped samples, shows up as coverage below 1, not as a mean made
of fewer samples without a word.

Pure bookkeeping, no clock: streams.labels.aligner_core keeps the samples and calls this
when a window goes out or is revised.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from streams.records import (
    RATING_DIMENSIONS,
    LagCorrection,
    RatingBatch,
    RatingDimension,
    RatingMode,
    Role,
)

__all__ = ["RatedSample", "TraceKey", "TraceSummary", "WindowTrace", "samples_of", "summarise"]

#: One rater's trace of one performer: (rater_id, mode, label of an intensity rating).
TraceKey = tuple[str, RatingMode, str | None]


@dataclass(frozen=True, slots=True)
class RatedSample:
    """One sample where it was placed: ``ts_us`` lag-corrected, ``values`` in the order of
    ``RATING_DIMENSIONS[mode]``."""

    ts_us: int
    raw_ts_us: int
    rate_hz: int
    values: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class TraceSummary:
    mean: dict[RatingDimension, float]
    last: dict[RatingDimension, float]
    coverage: float
    samples: int


@dataclass(slots=True)
class WindowTrace:
    """What a window holds of one rater's trace: the samples, and the correction the
    newest of them was placed with."""

    rater_role: Role
    samples: dict[int, RatedSample]  # by raw ts_us: a sample delivered twice counts once
    lag: LagCorrection | None = None


def samples_of(batch: RatingBatch, lag_us: int) -> list[RatedSample]:
    """The batch's samples, each moved ``lag_us`` earlier (never before the clock's 0)."""
    dimensions = RATING_DIMENSIONS[batch.mode]
    out = []
    for sample in batch.samples:
        values = tuple(float(getattr(sample, name)) for name in dimensions)
        out.append(RatedSample(max(0, sample.ts_us - lag_us), sample.ts_us, batch.rate_hz, values))
    return out


def _bounded(value: float, low: float) -> float:
    return min(1.0, max(low, round(value, 4)))


def summarise(
    samples: Iterable[RatedSample], mode: RatingMode, start_us: int, window_us: int
) -> TraceSummary:
    """Mean, last, coverage and count of the samples of one window ``[start, start + W)``.

    Coverage counts slots at the highest rate among the samples (a rater whose page
    changed its rate mid-window is not shown as half missing)."""
    ordered = sorted(samples, key=lambda sample: (sample.ts_us, sample.raw_ts_us))
    dimensions = RATING_DIMENSIONS[mode]
    if not ordered:
        return TraceSummary({}, {}, 0.0, 0)
    # Intensity is unipolar (0-1), valence and arousal bipolar (-1-1).
    lows = [0.0 if name == "intensity" else -1.0 for name in dimensions]
    count = len(ordered)
    mean = {
        name: _bounded(sum(sample.values[index] for sample in ordered) / count, lows[index])
        for index, name in enumerate(dimensions)
    }
    newest = ordered[-1]
    last = {
        name: _bounded(newest.values[index], lows[index]) for index, name in enumerate(dimensions)
    }
    rate = max(sample.rate_hz for sample in ordered)
    slots = max(1, -(-window_us * rate // 1_000_000))
    hit = {
        min(slots - 1, max(0, (sample.ts_us - start_us) * rate // 1_000_000)) for sample in ordered
    }
    return TraceSummary(mean, last, round(len(hit) / slots, 4), count)
