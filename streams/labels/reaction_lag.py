"""Each rater's reaction lag, measured from the data, and which measurement to apply.

Pure numpy: no clock, no socket; the caller runs it off the event loop (a session's traces
take tens of milliseconds per rater). Times are integer µs on the session clock. A lag is
how much later than the thing rated a rater's press or rating lands; correcting moves the
rater's times earlier by it (:func:`streams.labels.agreement.corrected`).

Three methods, the ``LagMethod`` values of :class:`streams.records.LagCorrection`:

- ``consensus`` (:func:`consensus_lags`), for continuous traces. Every rater's trace is
  linearly interpolated onto a common grid (10 ms) and cross-correlated (Pearson r at
  each lag, over the instants both have) with the *leave-one-out consensus*: the mean of
  the other raters' traces. The lag is the correlation's peak, refined below the grid by a
  parabola through the peak and its two neighbours. The consensus is itself late by the
  others' mean lag, so what this finds is relative; it is iterated: each rater's trace is
  moved by its estimate, the consensus of the moved traces is taken again and the raw
  trace correlated with it, so that every estimate ends up relative to the same reference,
  the mean lag of the whole group. The group's absolute lag is then anchored, in this
  order:

  1. on a **feature trace** that the dimension follows (a smile blendshape for amusement's
     intensity, the loudness envelope for arousal): the group consensus, corrected to the
     group's mean, is cross-correlated with the feature over lags 0..2 s, and the peak is
     the group's mean lag (Mariooryad & Busso 2015 find each evaluator's lag as the shift
     that best relates the annotation to audiovisual features, by mutual information).
     The feature must rise when the rating does (negate it first otherwise), and it is
     assumed to show the thing rated with no lag of its own;
  2. on raters whose absolute lag is known (``calibrated``: the page's calibration trials):
     the group's mean lag is the median over them of (calibrated lag - relative lag). This
     assumes a rater's lag in rating equals their lag in the calibration's simple
     reaction, which underestimates it when rating takes more judgement;
  3. with neither, the result stays **relative** (``LagCorrection.relative``): each lag is
     how much later the rater is than the group's fastest confidently placed rater, whose
     own lag is unknown. Applying it aligns the raters with each other, never moves a
     rating before the event, and leaves the whole group late by that fastest lag.

  Confidence, the product of three factors in 0..1:

  - the height: the correlation at the peak (Pearson r, clipped to 0..1);
  - the distinctness: ``2 * (1 - runner_up / peak)`` clipped to 0..1, the runner-up being
    the highest other local maximum at least 300 ms away: 1 when it is half the peak or
    lower (or there is none), 0 when it is as high; 0 too when the best lag is at the
    search's edge, where the true one may lie outside it;
  - the significance: the peak's Fisher z, atanh(r) * sqrt(n_eff - 3), over the
    effective number of independent pairs n_eff (:func:`effective_pairs`, Bartlett's
    correction for autocorrelated series), mapped linearly from 0 at z = 3 to 1 at z = 6.
    Ratings move slowly, so two unrelated traces often correlate at 0.3 over a minute;
    over 360 pairs of independent smooth noise traces z stayed under 3.4 in 99%.

  Anchored lags take the lower of the rater's and the anchor's confidence. Spread: the
  rater's jitter, 1.4826 x the median absolute deviation (MAD, a standard deviation for
  normal errors) of lags estimated the same way over 10 s windows (hop 5 s, searched
  within 0.5 s of the whole trace's lag; a window whose best lag is at that edge counts
  there); it includes the consensus's own jitter, so it is an upper estimate, and 0 when
  the trace is too short for three windows.

- ``onsets`` (:func:`onset_lag`), for hotkey tags. Onsets are found in a feature trace
  (:func:`rising_onsets`: a smile, mediapipe's mouthSmileLeft/Right mean, rising through
  0.5; a laugh, the prosody loudness rising 10 dB above the trace's median). Each press of
  a label that has onsets is matched to the latest onset of that label 0..2 s before it;
  the lag is the median of press - onset, the spread 1.4826 x their MAD, the confidence
  the share of presses matched times 1 / (1 + (spread / 200 ms)^2) (random presses match
  onsets at scattered distances, hence a large spread). At least 5 matched presses.
  Presses are the raw press instants: a tag's ``ts_us`` plus the lag the tag service
  already took off (``timing.reaction_lag_us``).

- ``calibration`` (:func:`calibration_estimate`): the value the tag service measured (the
  median simple reaction time to a flashing square, ``taggers.protocol``) or was given,
  taken as it is; with its trials, the spread is their MAD-based deviation and the
  confidence the share of 8 trials there are times the same spread factor as onsets.

Which one is applied (:func:`choose`), per rater, one lag for their tags and ratings:

1. an absolute measurement from the data (``onsets``, or an anchored ``consensus``) with
   confidence >= ``MIN_CONFIDENCE`` (0.4; of 360 independent smooth noise traces
   rated against each other, the most confident reached 0.31): the most confident;
2. else the rater's ``calibration``, whatever its confidence (the rater asked for it);
3. else a relative ``consensus`` with confidence >= ``MIN_CONFIDENCE``;
4. else none (lag 0).

References: Mariooryad, S., & Busso, C. (2015). Correcting time-continuous emotional
labels by modeling the reaction lag of evaluators. *IEEE Transactions on Affective
Computing*, 6(2), 97-108. Bartlett, M. S. (1935). Some aspects of the time-correlation
problem in regard to tests of significance. *Journal of the Royal Statistical Society*,
98(3), 536-543. Pyper, B. J., & Peterman, R. M. (1998). Comparison of methods to account
for autocorrelation in correlation analyses of fish data. *Canadian Journal of Fisheries
and Aquatic Sciences*, 55(9), 2127-2140.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from streams.labels.agreement import Trace
from streams.records import (
    FaceFrame,
    LagCorrection,
    LagMethod,
    ProsodyFrame,
    RaterLag,
    Role,
    TagEvent,
)

__all__ = [
    "CALIBRATION_TRIALS",
    "GRID_STEP_US",
    "MAX_LAG_US",
    "MIN_CONFIDENCE",
    "Anchor",
    "ConsensusResult",
    "Grid",
    "LagEstimate",
    "Peak",
    "RaterFit",
    "calibration_estimate",
    "choose",
    "consensus_lags",
    "find_peak",
    "loudness_onsets",
    "loudness_trace",
    "masked_correlation",
    "on_grid",
    "onset_lag",
    "presses_of",
    "rater_lag",
    "rising_onsets",
    "smile_onsets",
    "smile_trace",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

GRID_STEP_US: Final = 10_000
#: The longest lag searched (the issue's range): hotkey reactions fall well within it.
#: Mariooryad & Busso (2015) report 1-6 s for dimensional traces in SEMAINE, depending on
#: the annotator and dimension: pass a larger ``max_lag_us`` for such tasks.
MAX_LAG_US: Final = 2_000_000
#: Samples further apart than this are not interpolated across: the rater stopped.
MAX_GAP_US: Final = 250_000
#: A lag is only scored over at least this much shared time.
MIN_OVERLAP_US: Final = 5_000_000
#: A runner-up peak must be at least this far from the best one (closer is the same lobe).
PEAK_SEPARATION_US: Final = 300_000
WINDOW_US: Final = 10_000_000
WINDOW_HOP_US: Final = 5_000_000
#: Windows search only this far from the whole trace's lag: a 10 s window is too short
#: to search the whole range without picking a chance peak now and then.
WINDOW_SEARCH_US: Final = 500_000
ITERATIONS: Final = 4
#: Autocorrelations are summed this far for the effective number of pairs.
MAX_AUTOCORRELATION_US: Final = 10_000_000
#: A peak's Fisher z at or below Z_FLOOR gives no confidence, from Z_FULL on it does not
#: lower it: independent smooth noise traces reach z ~3.4 at their 99th percentile.
Z_FLOOR: Final = 3.0
Z_FULL: Final = 6.0
MIN_CONFIDENCE: Final = 0.4
MIN_ONSET_MATCHES: Final = 5
#: Where the spread factor of onsets and calibration halves the confidence.
SPREAD_SCALE_US: Final = 200_000
#: The trials of the page's calibration (taggers/static/calibration.js).
CALIBRATION_TRIALS: Final = 8
SMILE_THRESHOLD: Final = 0.5
SMILE_RELEASE: Final = 0.3
LAUGH_RISE_DB: Final = 10.0
LAUGH_RELEASE_DB: Final = 4.0
#: Onsets closer than this to the one before are the same event going on (a laugh's
#: pulses, a smile's flicker around the threshold).
MIN_ONSET_GAP_US: Final = 1_000_000
_MAD_TO_SD: Final = 1.4826


@dataclass(frozen=True)
class LagEstimate:
    """One method's estimate of one rater's lag, and how many samples, presses or
    trials it used (``evidence``)."""

    method: LagMethod
    lag_us: int
    spread_us: int = 0
    confidence: float = 0.0
    relative: bool = False
    evidence: int = 0

    def correction(self) -> LagCorrection:
        return LagCorrection(
            method=self.method,
            lag_us=self.lag_us,
            spread_us=self.spread_us,
            confidence=round(min(1.0, max(0.0, self.confidence)), 4),
            relative=self.relative,
        )


NO_CORRECTION: Final = LagEstimate(method="none", lag_us=0)


# ---------------------------------------------------------------- the common grid


@dataclass(frozen=True)
class Grid:
    """Instants ``start_us + k * step_us`` for k in 0..count-1."""

    start_us: int
    step_us: int
    count: int

    @classmethod
    def spanning(cls, traces: Iterable[Trace], step_us: int = GRID_STEP_US) -> Grid:
        spans = [(int(t.ts_us[0]), int(t.ts_us[-1])) for t in traces if len(t)]
        if not spans:
            return cls(0, step_us, 0)
        start = min(first for first, _ in spans)
        end = max(last for _, last in spans)
        return cls(start, step_us, (end - start) // step_us + 1)

    def times(self) -> IntArray:
        return self.start_us + np.arange(self.count, dtype=np.int64) * self.step_us


def on_grid(trace: Trace, grid: Grid, max_gap_us: int = MAX_GAP_US) -> FloatArray:
    """The trace linearly interpolated at the grid's instants; NaN outside its span and
    inside gaps longer than ``max_gap_us``."""
    out = np.full(grid.count, np.nan)
    if len(trace) == 0 or grid.count == 0:
        return out
    ts = trace.ts_us - np.int64(grid.start_us)
    t = grid.times() - np.int64(grid.start_us)
    # Interval i holds the grid instants in [ts[i], ts[i+1]); the last sample stands alone.
    interval = np.searchsorted(ts, t, side="right") - 1
    last = len(ts) - 1
    inside = (interval >= 0) & (interval < last)
    nxt = np.minimum(interval + 1, last)
    cur = np.clip(interval, 0, last)
    usable = inside & (ts[nxt] - ts[cur] <= max_gap_us)
    usable |= t == ts[last]
    out[usable] = np.interp(t[usable].astype(np.float64), ts.astype(np.float64), trace.values)
    return out


# ---------------------------------------------------------------- correlation and peaks


def masked_correlation(
    x: FloatArray, y: FloatArray, lags: IntArray, min_pairs: int = 2
) -> FloatArray:
    """Pearson r of ``x[i]`` with ``y[i - lag]`` for each lag (in grid steps), over the i
    where both are present (not NaN); NaN where fewer than ``min_pairs`` pairs or either
    side is constant. ``x`` and ``y`` share their grid.

    Every sum the correlation needs (pair count, sums, sums of squares and products over
    the shared instants) is a cross-correlation of the masked series, all taken with FFTs.
    """
    mx = ~np.isnan(x)
    my = ~np.isnan(y)
    if not mx.any() or not my.any():
        return np.full(len(lags), np.nan)
    # Centred first: the variances below are differences of sums, exact only when the
    # sums are not dominated by the mean.
    x0 = np.where(mx, x - np.nanmean(x), 0.0)
    y0 = np.where(my, y - np.nanmean(y), 0.0)
    # Long enough that no lag asked for wraps around: max(len) + the largest |lag|.
    index = np.asarray(lags, dtype=np.int64)
    reach = int(np.max(np.abs(index))) if index.size else 0
    size = 1 << int(max(len(x), len(y)) + reach).bit_length()
    spectra = {
        name: np.fft.rfft(series, size)
        for name, series in {
            "mx": mx.astype(np.float64),
            "x": x0,
            "xx": x0 * x0,
            "my": my.astype(np.float64),
            "y": y0,
            "yy": y0 * y0,
        }.items()
    }
    index = index % size

    def correlate(a: str, b: str) -> FloatArray:
        full = np.fft.irfft(spectra[a] * np.conj(spectra[b]), size)
        return np.asarray(full[index], dtype=np.float64)

    pairs = np.round(correlate("mx", "my"))
    sx = correlate("x", "my")
    sy = correlate("mx", "y")
    with np.errstate(divide="ignore", invalid="ignore"):
        vx = correlate("xx", "my") - sx * sx / pairs
        vy = correlate("mx", "yy") - sy * sy / pairs
        cov = correlate("x", "y") - sx * sy / pairs
        r = cov / np.sqrt(vx * vy)
    # FFT rounding leaves a constant stretch a variance of ~1e-12 instead of 0.
    scale_x = max(float(np.max(x0 * x0)), 1e-300)
    scale_y = max(float(np.max(y0 * y0)), 1e-300)
    bad = (pairs < min_pairs) | (vx <= 1e-9 * scale_x * pairs) | (vy <= 1e-9 * scale_y * pairs)
    r[bad] = np.nan
    return np.asarray(np.clip(r, -1.0, 1.0), dtype=np.float64)


def effective_pairs(x: FloatArray, y: FloatArray, max_lag_steps: int) -> float:
    """How many independent pairs two autocorrelated series on one grid are worth:
    n / (1 + 2 * sum over k >= 1 of rho_x(k) * rho_y(k)), Bartlett's approximation for
    the variance of a cross-correlation (Bartlett 1935; Pyper & Peterman 1998), each
    autocorrelation cut at its first zero crossing (beyond it the sample autocorrelation
    is mostly noise), over lags up to ``max_lag_steps``."""
    both = ~np.isnan(x) & ~np.isnan(y)
    n = float(np.sum(both))
    if n < 4:
        return n
    lags = np.arange(1, max(2, min(max_lag_steps, int(n) // 4)), dtype=np.int64)

    def autocorrelation(series: FloatArray) -> FloatArray:
        rho = np.nan_to_num(masked_correlation(series, series, lags))
        crossing = np.flatnonzero(rho <= 0)
        if crossing.size:
            rho[crossing[0] :] = 0.0
        return rho

    return n / (1.0 + 2.0 * float(np.sum(autocorrelation(x) * autocorrelation(y))))


def significance(r: float, pairs: float) -> float:
    """The Fisher z score of a correlation over ``pairs`` independent pairs."""
    if pairs <= 3:
        return 0.0
    return float(np.arctanh(min(max(r, -0.999999), 0.999999)) * math.sqrt(pairs - 3))


@dataclass(frozen=True)
class Peak:
    """The best lag of a correlation curve, and how clearly it stands out."""

    lag_us: float
    height: float
    runner_up: float | None
    at_edge: bool

    @property
    def distinctness(self) -> float:
        if self.at_edge or self.height <= 0:
            return 0.0
        if self.runner_up is None:
            return 1.0
        return min(1.0, max(0.0, 2.0 * (1.0 - self.runner_up / self.height)))

    @property
    def confidence(self) -> float:
        return min(1.0, max(0.0, self.height)) * self.distinctness


def find_peak(
    r: FloatArray, lags_us: FloatArray, separation_us: float = PEAK_SEPARATION_US
) -> Peak | None:
    """The highest point of ``r`` over ``lags_us`` (evenly spaced), refined by a parabola
    through it and its neighbours; None when ``r`` is all NaN."""
    if r.size == 0 or np.all(np.isnan(r)):
        return None
    filled = np.where(np.isnan(r), -np.inf, r)
    k = int(np.argmax(filled))
    at_edge = (
        k == 0 or k == r.size - 1 or not (np.isfinite(filled[k - 1]) and np.isfinite(filled[k + 1]))
    )
    lag = float(lags_us[k])
    height = float(r[k])
    if not at_edge:
        before, after = float(r[k - 1]), float(r[k + 1])
        curvature = before - 2 * height + after
        if curvature < 0:
            delta = min(0.5, max(-0.5, 0.5 * (before - after) / curvature))
            step = float(lags_us[1] - lags_us[0])
            lag += delta * step
            height -= 0.25 * (before - after) * delta
    left = np.concatenate(([-np.inf], filled[:-1]))
    right = np.concatenate((filled[1:], [-np.inf]))
    maxima = (filled >= left) & (filled >= right) & np.isfinite(filled)
    far = np.abs(lags_us - lags_us[k]) >= separation_us
    others = filled[maxima & far]
    runner_up = float(others.max()) if others.size else None
    return Peak(lag_us=lag, height=height, runner_up=runner_up, at_edge=at_edge)


def _best_lag(
    x: FloatArray,
    y: FloatArray,
    lo_us: float,
    hi_us: float,
    step_us: int,
    min_pairs: int,
) -> Peak | None:
    """The peak of corr(x[t], y[t - lag]) for lags in [lo, hi] (µs, on the grid)."""
    lags = np.arange(math.ceil(lo_us / step_us), math.floor(hi_us / step_us) + 1, dtype=np.int64)
    if lags.size == 0:
        return None
    r = masked_correlation(x, y, lags, min_pairs)
    return find_peak(r, lags.astype(np.float64) * step_us)


# ---------------------------------------------------------------- consensus


@dataclass(frozen=True)
class RaterFit:
    """One rater's trace against the leave-one-out consensus of the others.

    ``offset_us``: how much later than the group's mean lag the rater is (signed).
    """

    offset_us: float
    peak: float
    runner_up: float | None
    #: The peak's Fisher z over the effective number of independent pairs.
    z: float
    confidence: float
    spread_us: float
    windows: int
    samples: int


@dataclass(frozen=True)
class Anchor:
    """The group's absolute mean lag, and what fixed it."""

    kind: Literal["feature", "calibration"]
    group_lag_us: float
    confidence: float
    raters: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConsensusResult:
    """Every rater's fit, the anchor (None: the lags are relative) and the estimates."""

    fits: dict[str, RaterFit]
    anchor: Anchor | None
    estimates: dict[str, LagEstimate]
    #: The feature anchor found but not used (not confident enough), for the record.
    feature_anchor: Anchor | None = None
    iterations: int = 0
    unfit: tuple[str, ...] = field(default=())


def _mean_where_present(rows: Sequence[FloatArray]) -> FloatArray:
    stack = np.array(rows)
    present = ~np.isnan(stack)
    count = present.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.where(present, stack, 0.0).sum(axis=0) / count
    return np.where(count > 0, mean, np.nan)


def _significance_factor(z: float) -> float:
    return min(1.0, max(0.0, (z - Z_FLOOR) / (Z_FULL - Z_FLOOR)))


def _leave_one_out(aligned: dict[str, FloatArray]) -> dict[str, FloatArray]:
    stack = np.array(list(aligned.values()))
    present = ~np.isnan(stack)
    total = np.where(present, stack, 0.0).sum(axis=0)
    count = present.sum(axis=0)
    out: dict[str, FloatArray] = {}
    for row, name in enumerate(aligned):
        others = count - present[row]
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = (total - np.where(present[row], stack[row], 0.0)) / others
        out[name] = np.where(others > 0, mean, np.nan)
    return out


def _windowed_spread(
    x: FloatArray, consensus: FloatArray, offset_us: float, step_us: int
) -> tuple[float, int]:
    """1.4826 x MAD of the lags found over windows, and how many windows gave one."""
    width = WINDOW_US // step_us
    hop = WINDOW_HOP_US // step_us
    margin = (WINDOW_SEARCH_US + abs(int(offset_us))) // step_us + 2
    lags: list[float] = []
    for start in range(0, max(0, x.size - width) + 1, hop):
        lo, hi = max(0, start - margin), min(x.size, start + width + margin)
        xs = np.full(hi - lo, np.nan)
        xs[start - lo : start - lo + width] = x[start : start + width]
        if np.sum(~np.isnan(xs)) < width // 2:
            continue
        peak = _best_lag(
            xs,
            consensus[lo:hi],
            offset_us - WINDOW_SEARCH_US,
            offset_us + WINDOW_SEARCH_US,
            step_us,
            width // 2,
        )
        if peak is not None:
            # A window whose best lag is at the search's edge counts there: a rater who
            # follows nobody scatters to the edges, and that is the spread to report.
            lags.append(peak.lag_us)
    if len(lags) < 3:
        return 0.0, len(lags)
    centre = statistics.median(lags)
    return _MAD_TO_SD * statistics.median(abs(lag - centre) for lag in lags), len(lags)


def consensus_lags(
    traces: Mapping[str, Trace],
    *,
    calibrated: Mapping[str, int] | None = None,
    feature: Trace | None = None,
    step_us: int = GRID_STEP_US,
    max_lag_us: int = MAX_LAG_US,
    min_confidence: float = MIN_CONFIDENCE,
    iterations: int = ITERATIONS,
) -> ConsensusResult:
    """Each rater's lag from continuous traces of one performer and one dimension (module
    doc): relative to the group, anchored on ``feature`` when it gives a confident
    anchor, else on the ``calibrated`` raters' known lags (µs), else left relative.

    Raters with fewer than two samples, or whose trace never overlaps the others' for
    ``MIN_OVERLAP_US``, are listed in ``unfit`` and get no estimate. Fewer than two raters
    give no estimates at all.
    """
    usable = {name: trace for name, trace in traces.items() if len(trace) >= 2}
    grid = Grid.spanning(usable.values(), step_us)
    raw = {name: on_grid(trace, grid) for name, trace in usable.items()}
    min_pairs = max(2, MIN_OVERLAP_US // step_us)
    offsets = dict.fromkeys(raw, 0.0)
    peaks: dict[str, Peak] = {}
    consensus: dict[str, FloatArray] = {}
    done = 0
    while len(raw) >= 2 and done < iterations:
        aligned = {
            name: raw[name]
            if offsets[name] == 0
            else on_grid(usable[name].shifted(-round(offsets[name])), grid)
            for name in raw
        }
        consensus = _leave_one_out(aligned)
        peaks = {}
        for name in raw:
            peak = _best_lag(
                raw[name], consensus[name], -max_lag_us, max_lag_us, step_us, min_pairs
            )
            if peak is not None:
                peaks[name] = peak
        if not peaks:
            break
        found = {name: peak.lag_us for name, peak in peaks.items()}
        if done == 0:
            # Against the raw others, a rater's peak is at d_r - mean(others' d); over n
            # raters that is n / (n - 1) times its distance from the group's mean.
            n = len(raw)
            new = {name: lag * (n - 1) / n for name, lag in found.items()}
        else:
            centre = statistics.fmean(found.values())
            new = {name: lag - centre for name, lag in found.items()}
        moved = max(abs(new[name] - offsets[name]) for name in new)
        offsets = {name: new.get(name, 0.0) for name in raw}
        done += 1
        if moved < step_us / 10:
            break

    fits: dict[str, RaterFit] = {}
    for name, peak in peaks.items():
        spread, windows = _windowed_spread(raw[name], consensus[name], offsets[name], step_us)
        z = significance(
            peak.height,
            effective_pairs(raw[name], consensus[name], MAX_AUTOCORRELATION_US // step_us),
        )
        fits[name] = RaterFit(
            offset_us=offsets[name],
            peak=peak.height,
            runner_up=peak.runner_up,
            z=z,
            confidence=peak.confidence * _significance_factor(z),
            spread_us=spread,
            windows=windows,
            samples=len(usable[name]),
        )
    unfit = tuple(sorted(set(traces) - set(fits)))

    feature_anchor = None
    if feature is not None and len(feature) >= 2 and fits:
        group = _mean_where_present(
            [
                on_grid(usable[name].shifted(-round(fit.offset_us)), grid)
                for name, fit in fits.items()
            ]
        )
        peak = _best_lag(group, on_grid(feature, grid), 0, max_lag_us, step_us, min_pairs)
        if peak is not None:
            feature_anchor = Anchor("feature", peak.lag_us, peak.confidence)
    anchor = None
    if feature_anchor is not None and feature_anchor.confidence >= min_confidence:
        anchor = feature_anchor
    else:
        known = sorted(name for name in (calibrated or {}) if name in fits)
        if known:
            assert calibrated is not None
            anchor = Anchor(
                "calibration",
                statistics.median(calibrated[name] - fits[name].offset_us for name in known),
                statistics.median(fits[name].confidence for name in known),
                tuple(known),
            )

    estimates: dict[str, LagEstimate] = {}
    if anchor is not None:
        for name, fit in fits.items():
            lag = fit.offset_us + anchor.group_lag_us
            plausible = 0 <= lag <= max_lag_us
            estimates[name] = LagEstimate(
                method="consensus",
                lag_us=round(min(max_lag_us, max(0.0, lag))),
                spread_us=round(fit.spread_us),
                confidence=min(fit.confidence, anchor.confidence) if plausible else 0.0,
                evidence=fit.samples,
            )
    elif fits:
        placed = [fit.offset_us for fit in fits.values() if fit.confidence >= min_confidence]
        fastest = min(placed or [fit.offset_us for fit in fits.values()])
        for name, fit in fits.items():
            estimates[name] = LagEstimate(
                method="consensus",
                lag_us=round(min(max_lag_us, max(0.0, fit.offset_us - fastest))),
                spread_us=round(fit.spread_us),
                confidence=fit.confidence,
                relative=True,
                evidence=fit.samples,
            )
    return ConsensusResult(
        fits=fits,
        anchor=anchor,
        estimates=estimates,
        feature_anchor=feature_anchor,
        iterations=done,
        unfit=unfit,
    )


# ---------------------------------------------------------------- onsets


def rising_onsets(
    trace: Trace,
    threshold: float,
    *,
    release: float | None = None,
    min_gap_us: int = MIN_ONSET_GAP_US,
    max_gap_us: int = MAX_GAP_US,
) -> list[int]:
    """Instants the trace rises through ``threshold`` (linearly interpolated between the
    samples either side), re-armed only once it has fallen below ``release`` (default:
    the threshold) and at least ``min_gap_us`` after the previous onset. A rise across a
    gap longer than ``max_gap_us`` (the face was lost, the stream paused) has no instant
    to give and is skipped."""
    release = threshold if release is None else release
    if release > threshold:
        raise ValueError(f"release {release} is above the threshold {threshold}")
    onsets: list[int] = []
    armed = False
    ts, values = trace.ts_us, trace.values
    for i in range(len(ts)):
        value = float(values[i])
        if not armed:
            armed = value < release
            continue
        if value < threshold or i == 0:
            continue
        armed = False
        before, t0, t1 = float(values[i - 1]), int(ts[i - 1]), int(ts[i])
        if t1 - t0 > max_gap_us or before >= threshold:
            continue
        at = t0 + round((threshold - before) / (value - before) * (t1 - t0))
        if onsets and at - onsets[-1] < min_gap_us:
            continue
        onsets.append(at)
    return onsets


def smile_of(frame: FaceFrame) -> float | None:
    """The mean of mediapipe's mouthSmileLeft and mouthSmileRight; None without a face."""
    shapes = frame.blendshapes
    if not frame.face_present or "mouthSmileLeft" not in shapes or "mouthSmileRight" not in shapes:
        return None
    return float((shapes["mouthSmileLeft"] + shapes["mouthSmileRight"]) / 2)


def smile_trace(frames: Iterable[FaceFrame]) -> Trace:
    """The smile (:func:`smile_of`) over the frames with a face."""
    pairs = [(frame.ts_us, smile) for frame in frames if (smile := smile_of(frame)) is not None]
    return Trace.of([ts for ts, _ in pairs], [value for _, value in pairs])


def loudness_trace(frames: Iterable[ProsodyFrame]) -> Trace:
    """Prosody loudness (dBFS) per hop."""
    pairs = [(frame.ts_us, float(frame.loudness_db)) for frame in frames]
    return Trace.of([ts for ts, _ in pairs], [value for _, value in pairs])


def smile_onsets(
    trace: Trace, threshold: float = SMILE_THRESHOLD, release: float = SMILE_RELEASE
) -> list[int]:
    """Smiles: the smile trace rising through 0.5 after having been under 0.3."""
    return rising_onsets(trace, threshold, release=release)


def loudness_onsets(
    trace: Trace,
    rise_db: float = LAUGH_RISE_DB,
    release_db: float = LAUGH_RELEASE_DB,
    floor_db: float = -90.0,
) -> list[int]:
    """Bursts (a laugh): loudness rising ``rise_db`` above the median loudness of the
    trace's sounding hops (above ``floor_db``: digital silence would drag the median
    down), re-armed below median + ``release_db``. Pulses of one laugh closer than
    ``MIN_ONSET_GAP_US`` are one onset."""
    sounding = trace.values[trace.values > floor_db]
    if sounding.size == 0:
        return []
    base = float(np.median(sounding))
    return rising_onsets(trace, base + rise_db, release=base + release_db)


def presses_of(tags: Iterable[TagEvent], rater_id: str) -> list[tuple[int, str]]:
    """A rater's raw press instants and labels: points and hold onsets not undone, at the
    instant pressed (the tag's ts_us plus the lag the tag service took off)."""
    own = [tag for tag in tags if tag.rater_id == rater_id]
    undone = {tag.undoes_tag_id for tag in own if tag.action == "undo"}
    return sorted(
        (tag.ts_us + tag.timing.reaction_lag_us, tag.label)
        for tag in own
        if tag.action in ("point", "onset") and tag.label is not None and tag.tag_id not in undone
    )


def _spread_factor(spread_us: float) -> float:
    return 1.0 / (1.0 + (spread_us / SPREAD_SCALE_US) ** 2)


def _mad_sd(values: Sequence[float]) -> float:
    centre = statistics.median(values)
    return _MAD_TO_SD * statistics.median(abs(value - centre) for value in values)


def onset_lag(
    presses: Iterable[tuple[int, str]],
    onsets: Mapping[str, Sequence[int]],
    *,
    max_lag_us: int = MAX_LAG_US,
    min_matched: int = MIN_ONSET_MATCHES,
) -> LagEstimate | None:
    """A rater's lag from presses (instant, label) against feature onsets per label
    (module doc). Presses of labels with no onset source do not count; None with fewer
    than ``min_matched`` matched presses."""
    sorted_onsets = {
        label: np.sort(np.asarray(times, dtype=np.int64)) for label, times in onsets.items()
    }
    considered = 0
    differences: list[int] = []
    for instant, label in presses:
        times = sorted_onsets.get(label)
        if times is None:
            continue
        considered += 1
        before = int(np.searchsorted(times, instant, side="right")) - 1
        if before >= 0 and instant - int(times[before]) <= max_lag_us:
            differences.append(instant - int(times[before]))
    if len(differences) < max(1, min_matched):
        return None
    spread = _mad_sd(differences)
    share = len(differences) / considered
    return LagEstimate(
        method="onsets",
        lag_us=round(statistics.median(differences)),
        spread_us=round(spread),
        confidence=share * _spread_factor(spread),
        evidence=len(differences),
    )


# ---------------------------------------------------------------- calibration


def calibration_estimate(lag_us: int, trials_us: Collection[int] = ()) -> LagEstimate:
    """The tag service's calibrated (or given) lag as an estimate; with the trials it was
    the median of, their spread and a confidence (module doc), else confidence 0."""
    if lag_us < 0:
        raise ValueError(f"a calibrated lag is >= 0, got {lag_us}")
    if not trials_us:
        return LagEstimate(method="calibration", lag_us=lag_us)
    spread = _mad_sd([float(t) for t in trials_us])
    return LagEstimate(
        method="calibration",
        lag_us=lag_us,
        spread_us=round(spread),
        confidence=min(1.0, len(trials_us) / CALIBRATION_TRIALS) * _spread_factor(spread),
        evidence=len(trials_us),
    )


# ---------------------------------------------------------------- which one applies


def choose(
    estimates: Iterable[LagEstimate], *, min_confidence: float = MIN_CONFIDENCE
) -> LagEstimate:
    """The estimate to apply to a rater (module doc: confident absolute data first, then
    calibration, then a confident relative consensus, else none)."""
    found = list(estimates)
    absolute = [
        e
        for e in found
        if e.method in ("onsets", "consensus") and not e.relative and e.confidence >= min_confidence
    ]
    if absolute:
        # Ties go to onsets: a hotkey rater's lag is measured on their own presses.
        return max(absolute, key=lambda e: (e.confidence, e.method == "onsets"))
    calibration = [e for e in found if e.method == "calibration"]
    if calibration:
        return max(calibration, key=lambda e: e.confidence)
    relative = [
        e
        for e in found
        if e.method == "consensus" and e.relative and e.confidence >= min_confidence
    ]
    if relative:
        return max(relative, key=lambda e: e.confidence)
    return NO_CORRECTION


def rater_lag(
    session_id: str,
    rater_id: str,
    rater_role: Role,
    estimates: Iterable[LagEstimate],
    ts_us: int,
    *,
    min_confidence: float = MIN_CONFIDENCE,
) -> RaterLag:
    """The ``rater_lag`` record: the chosen correction, every estimate and its evidence."""
    found = list(estimates)
    return RaterLag(
        ts_us=ts_us,
        session_id=session_id,
        rater_id=rater_id,
        rater_role=rater_role,
        applied=choose(found, min_confidence=min_confidence).correction(),
        estimates=[e.correction() for e in found],
        evidence={e.method: e.evidence for e in found},
    )
