"""Continuous ratings as traces, and how much raters of one trace agree.

Pure numpy: no clock, no socket. A :class:`Trace` is one rater's samples of one dimension
(valence, arousal or an emotion's intensity) of one performer, on the session clock.

Agreement is measured over a raters x time-slots matrix (:func:`rating_matrix`): each
slot holds the mean of the rater's samples in it (the label window's ``RaterTrace.mean``),
missing where the rater has none. Two measures, the ones the continuous-annotation
literature reports:

- **Krippendorff's alpha, interval metric** (:func:`alpha_interval`): 1 - D_o / D_e, the
  observed over the expected disagreement, with squared differences as the distance
  (Krippendorff, K. (2011). *Computing Krippendorff's Alpha-Reliability*. Annenberg
  School for Communication, University of Pennsylvania). It accepts missing values.
- **The intraclass correlation** (:func:`icc`), two-way, single rater: ICC(A,1), absolute
  agreement (= Shrout & Fleiss's ICC(2,1)), and ICC(C,1), consistency (= ICC(3,1)), from
  the two-way ANOVA mean squares (Shrout, P. E., & Fleiss, J. L. (1979). Intraclass
  correlations: uses in assessing rater reliability. *Psychological Bulletin*, 86(2),
  420-428; McGraw, K. O., & Wong, S. P. (1996). Forming inferences about some intraclass
  correlation coefficients. *Psychological Methods*, 1(1), 30-46). It needs every rater
  in a slot: slots with a missing rating are left out (listwise).

Time slots of one trace are not independent targets (a rating moves slowly), so these are
descriptive point estimates: no confidence interval or significance test is given, since
the textbook ones assume independent targets.

A reaction-lag correction moves a rater's samples earlier by the lag
(:func:`corrected`), as the tag service does with tags.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import krippendorff
import numpy as np
import numpy.typing as npt

from streams.records import LagCorrection, RatingDimension, RatingSample

__all__ = [
    "ALPHA_RESOLUTION",
    "Trace",
    "alpha_interval",
    "corrected",
    "icc",
    "rating_matrix",
    "slot_means",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

#: Values are rounded to this before Krippendorff's alpha: the `krippendorff` package
#: builds a values x values coincidence matrix, which for unrounded continuous slot means
#: (one distinct value per cell) grows with the square of the session's length. A
#: hundredth of the unipolar scale is finer than a mouse-driven slider, and its rounding
#: noise (variance 0.01**2 / 12) is far below any rating's.
ALPHA_RESOLUTION: Final = 0.01


@dataclass(frozen=True)
class Trace:
    """One rater's samples of one dimension, sorted by time, one value per instant.

    ``ts_us`` is on the session clock (it may run below 0 once a lag has been taken off);
    samples stamped with the same instant (two samples that saw the same frame) are
    averaged into one, so the trace is a function of time.
    """

    ts_us: IntArray
    values: FloatArray

    def __post_init__(self) -> None:
        ts = np.asarray(self.ts_us)
        values = np.asarray(self.values, dtype=np.float64)
        if ts.ndim != 1 or values.shape != ts.shape:
            raise ValueError(
                f"a trace needs as many times as values, got {ts.shape} and {values.shape}"
            )
        if ts.size and not np.issubdtype(ts.dtype, np.integer):
            raise ValueError(f"trace times are integer microseconds, got {ts.dtype}")
        if not np.all(np.isfinite(values)):
            raise ValueError("a trace's values must be finite")
        ts = ts.astype(np.int64)
        order = np.argsort(ts, kind="stable")
        ts, values = ts[order], values[order]
        if ts.size > 1 and np.any(ts[1:] == ts[:-1]):
            ts, first = np.unique(ts, return_index=True)
            counts = np.diff(np.append(first, values.size))
            values = np.add.reduceat(values, first) / counts
        object.__setattr__(self, "ts_us", ts)
        object.__setattr__(self, "values", values)

    @classmethod
    def of(cls, ts_us: Sequence[int] | IntArray, values: Sequence[float] | FloatArray) -> Trace:
        return cls(np.asarray(ts_us, dtype=np.int64), np.asarray(values, dtype=np.float64))

    @classmethod
    def from_samples(cls, samples: Iterable[RatingSample], dimension: RatingDimension) -> Trace:
        """The ``dimension`` of a rater's rating samples (those that carry it)."""
        pairs = [
            (sample.ts_us, value)
            for sample in samples
            if (value := getattr(sample, dimension)) is not None
        ]
        return cls.of([ts for ts, _ in pairs], [float(value) for _, value in pairs])

    def __len__(self) -> int:
        return int(self.ts_us.size)

    def shifted(self, delta_us: int) -> Trace:
        """The same samples ``delta_us`` later (earlier when negative)."""
        return Trace(self.ts_us + np.int64(delta_us), self.values)


def corrected(trace: Trace, correction: LagCorrection | None) -> Trace:
    """The trace with a rater's reaction lag taken off: every sample ``lag_us`` earlier,
    where the thing rated happened (as the tag service does with a tag's press)."""
    if correction is None or correction.lag_us == 0:
        return trace
    return trace.shifted(-correction.lag_us)


def slot_means(trace: Trace, start_us: int, slot_us: int, count: int) -> FloatArray:
    """The mean of the trace's samples in each slot ``[start + k*slot, start + (k+1)*slot)``
    for k in 0..count-1; NaN in a slot with no sample."""
    if slot_us <= 0 or count < 0:
        raise ValueError(f"slots need a positive length and a count >= 0, got {slot_us}, {count}")
    index = (trace.ts_us - np.int64(start_us)) // np.int64(slot_us)
    inside = (index >= 0) & (index < count)
    index = index[inside]
    sums = np.bincount(index, weights=trace.values[inside], minlength=count)
    counts = np.bincount(index, minlength=count)
    means = np.full(count, np.nan)
    np.divide(sums, counts, out=means, where=counts > 0)
    return means


def rating_matrix(
    traces: Mapping[str, Trace] | Sequence[Trace], start_us: int, slot_us: int, count: int
) -> FloatArray:
    """Raters x slots: each rater's :func:`slot_means` (rows in the order given)."""
    rows = traces.values() if isinstance(traces, Mapping) else traces
    return np.array(
        [slot_means(trace, start_us, slot_us, count) for trace in rows], dtype=np.float64
    ).reshape(-1, count)


def alpha_interval(matrix: FloatArray, *, resolution: float = ALPHA_RESOLUTION) -> float | None:
    """Krippendorff's alpha with the interval metric over a raters x slots matrix (NaN =
    missing), via the ``krippendorff`` package, values rounded to ``resolution`` first.

    Only slots rated by at least two raters are pairable and count. None when alpha is
    undefined: fewer than two raters, nothing pairable, or no variation at all (every
    pairable value the same: D_e = 0).
    """
    data = np.asarray(matrix, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"a raters x slots matrix is 2-D, got shape {data.shape}")
    if data.shape[0] < 2:
        return None
    data = data[:, np.sum(~np.isnan(data), axis=0) >= 2]
    if data.size == 0:
        return None
    data = np.round(data / resolution) * resolution
    pairable = data[~np.isnan(data)]
    if np.all(pairable == pairable[0]):
        return None
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="interval"))


def icc(
    matrix: FloatArray, form: Literal["agreement", "consistency"] = "agreement"
) -> float | None:
    """The two-way, single-rater intraclass correlation over a raters x slots matrix.

    With the slots as n targets (rows of the ANOVA) and k raters (columns), and the mean
    squares of the two-way ANOVA without replication: MSR (targets), MSC (raters),
    MSE (residual),

    - ``agreement``, ICC(A,1) (McGraw & Wong 1996) = ICC(2,1) (Shrout & Fleiss 1979):
      (MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n). A rater who rates everything
      higher than the others lowers it;
    - ``consistency``, ICC(C,1) = ICC(3,1): (MSR - MSE) / (MSR + (k - 1) MSE). Raters'
      constant offsets do not count.

    Slots with any missing rating are left out. None with fewer than two raters or two
    complete slots, or when the denominator is 0 (no variation at all).
    """
    data = np.asarray(matrix, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"a raters x slots matrix is 2-D, got shape {data.shape}")
    # Targets x raters, complete targets only.
    y = data[:, ~np.any(np.isnan(data), axis=0)].T
    n, k = y.shape
    if n < 2 or k < 2:
        return None
    grand = y.mean()
    ss_rows = k * float(np.sum((y.mean(axis=1) - grand) ** 2))
    ss_cols = n * float(np.sum((y.mean(axis=0) - grand) ** 2))
    ss_error = float(np.sum((y - grand) ** 2)) - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = ss_error / ((n - 1) * (k - 1))
    if form == "agreement":
        denominator = msr + (k - 1) * mse + k * (msc - mse) / n
    elif form == "consistency":
        denominator = msr + (k - 1) * mse
    else:
        raise ValueError(f"form is 'agreement' or 'consistency', got {form!r}")
    if denominator <= 0 or math.isclose(denominator, 0.0, abs_tol=1e-15):
        return None
    return (msr - mse) / denominator
