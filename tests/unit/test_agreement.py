"""Traces, slot means, lag correction and the agreement measures of continuous ratings,
against hand-computed and published examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streams.labels.agreement import (
    Trace,
    alpha_interval,
    corrected,
    icc,
    rating_matrix,
    slot_means,
)
from streams.records import LagCorrection, RatingSample

NAN = math.nan


def test_alpha_interval_by_hand() -> None:
    # Two raters, three units, all pairable (n = 6 values).
    # D_o = (1/n) sum_u sum_{i != j} (v_i - v_j)^2 / (m_u - 1) = (2*1 + 0 + 2*1) / 6 = 2/3.
    # D_e = sum_{all ordered pairs} (v_i - v_j)^2 / (n (n - 1)) = 2 n SS / 30, with SS the
    # sum of squares around the mean 14/6: 38 - 196/6 = 16/3, so D_e = 64/30.
    # alpha = 1 - (2/3) / (64/30) = 1 - 0.3125 = 0.6875.
    matrix = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 4.0]])
    assert alpha_interval(matrix) == pytest.approx(0.6875)


def test_alpha_interval_of_krippendorffs_worked_example() -> None:
    # Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: four
    # observers, twelve units, missing values; interval alpha = 0.849.
    matrix = np.array(
        [
            [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
            [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
            [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
            [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
        ]
    )
    assert alpha_interval(matrix, resolution=1.0) == pytest.approx(0.849, abs=5e-4)


def test_alpha_ignores_slots_one_rater_rated() -> None:
    paired = np.array([[0.1, 0.5, 0.9], [0.2, 0.4, 0.8]])
    with_lonely = np.array([[0.1, 0.5, 0.9, 0.3], [0.2, 0.4, 0.8, NAN]])
    assert alpha_interval(with_lonely) == pytest.approx(alpha_interval(paired))


def test_alpha_rounds_to_the_resolution_without_changing_much() -> None:
    rng = np.random.default_rng(3)
    truth = rng.uniform(0, 1, 100)
    matrix = truth + rng.normal(0, 0.1, (3, 100))
    fine = alpha_interval(matrix, resolution=1e-6)  # every value distinct: 300
    coarse = alpha_interval(matrix)
    assert fine is not None
    assert coarse is not None
    assert coarse == pytest.approx(fine, abs=0.002)


def test_alpha_undefined_cases() -> None:
    assert alpha_interval(np.array([[0.1, 0.2, 0.3]])) is None  # one rater
    assert alpha_interval(np.array([[0.5, 0.5], [0.5, 0.5]])) is None  # no variation
    assert alpha_interval(np.array([[0.5, NAN], [NAN, 0.2]])) is None  # nothing pairable
    with pytest.raises(ValueError, match="2-D"):
        alpha_interval(np.array([0.1, 0.2]))


SHROUT_FLEISS = np.array(
    # Shrout & Fleiss (1979), Table 2: six targets (rows here: columns) by four judges.
    [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]],
    dtype=np.float64,
).T


def test_icc_of_shrout_and_fleiss_example() -> None:
    # Their Table 4: ICC(2,1) = .29 (= ICC(A,1)), ICC(3,1) = .71 (= ICC(C,1)).
    assert icc(SHROUT_FLEISS, "agreement") == pytest.approx(0.290, abs=5e-4)
    assert icc(SHROUT_FLEISS, "consistency") == pytest.approx(0.715, abs=5e-4)


def test_icc_leaves_incomplete_slots_out() -> None:
    extra = np.array([[1.0], [NAN], [3.0], [4.0]])
    assert icc(np.hstack([SHROUT_FLEISS, extra])) == pytest.approx(icc(SHROUT_FLEISS))


def test_a_raters_offset_lowers_agreement_not_consistency() -> None:
    rng = np.random.default_rng(1)
    truth = rng.uniform(0, 1, 200)
    matrix = np.vstack([truth + rng.normal(0, 0.05, 200) for _ in range(3)])
    shifted = matrix.copy()
    shifted[0] += 0.3
    agreement, consistency = icc(matrix), icc(matrix, "consistency")
    assert agreement is not None
    assert consistency is not None
    assert icc(shifted, "consistency") == pytest.approx(consistency)
    assert icc(shifted, "agreement") < agreement - 0.1  # type: ignore[operator]


def test_icc_undefined_and_bad_form() -> None:
    assert icc(np.array([[0.1, 0.2, 0.3]])) is None
    assert icc(np.array([[0.1, NAN], [0.2, NAN]])) is None  # one complete slot
    assert icc(np.ones((2, 5))) is None
    with pytest.raises(ValueError, match="form"):
        icc(SHROUT_FLEISS, "absolute")  # type: ignore[arg-type]


def test_trace_sorts_and_averages_samples_of_one_instant() -> None:
    trace = Trace.of([300, 100, 200, 100], [0.3, 0.1, 0.2, 0.5])
    assert trace.ts_us.tolist() == [100, 200, 300]
    assert trace.values.tolist() == pytest.approx([0.3, 0.2, 0.3])
    assert len(trace) == 3


def test_trace_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="as many"):
        Trace.of([1, 2], [0.1])
    with pytest.raises(ValueError, match="finite"):
        Trace.of([1, 2], [0.1, math.nan])
    with pytest.raises(ValueError, match="integer"):
        Trace(np.array([1.5, 2.5]), np.array([0.1, 0.2]))


def test_trace_from_rating_samples() -> None:
    samples = [
        RatingSample(ts_us=2_000, client_ts_us=1, valence=0.5, arousal=-0.25),
        RatingSample(ts_us=1_000, client_ts_us=0, valence=-0.5, arousal=0.75),
    ]
    arousal = Trace.from_samples(samples, "arousal")
    assert arousal.ts_us.tolist() == [1_000, 2_000]
    assert arousal.values.tolist() == [0.75, -0.25]
    assert len(Trace.from_samples(samples, "intensity")) == 0


def test_slot_means() -> None:
    trace = Trace.of([0, 40, 100, 250, 999], [0.2, 0.4, 1.0, 0.5, 9.0])
    means = slot_means(trace, 0, 100, 3)
    assert means[0] == pytest.approx(0.3)
    assert means[1] == pytest.approx(1.0)
    assert means[2] == pytest.approx(0.5)
    assert np.isnan(slot_means(trace, 0, 100, 5)[3])
    with pytest.raises(ValueError, match="positive"):
        slot_means(trace, 0, 0, 3)


def test_rating_matrix_rows_follow_the_raters() -> None:
    traces = {"a": Trace.of([0, 100], [0.1, 0.2]), "b": Trace.of([100], [0.7])}
    matrix = rating_matrix(traces, 0, 100, 2)
    assert matrix.shape == (2, 2)
    assert matrix[0].tolist() == pytest.approx([0.1, 0.2])
    assert np.isnan(matrix[1, 0])
    assert matrix[1, 1] == pytest.approx(0.7)


def test_correction_moves_samples_earlier_by_the_lag() -> None:
    trace = Trace.of([1_000_000, 1_050_000], [0.1, 0.2])
    lag = LagCorrection(method="consensus", lag_us=400_000, confidence=0.9)
    assert corrected(trace, lag).ts_us.tolist() == [600_000, 650_000]
    assert corrected(trace, lag).values.tolist() == [0.1, 0.2]
    assert corrected(trace, None) is trace
    assert corrected(trace, LagCorrection(method="none", lag_us=0)) is trace


def test_correcting_a_lagged_rater_raises_agreement() -> None:
    rng = np.random.default_rng(7)
    ts = np.arange(0, 30_000_000, 50_000)
    signal = np.convolve(rng.standard_normal(ts.size + 40), np.ones(40) / 40, "valid")[: ts.size]
    early = Trace.of(ts, signal)
    late = Trace.of(ts + 600_000, signal + rng.normal(0, 0.01, ts.size))
    before = alpha_interval(rating_matrix([early, late], 1_000_000, 100_000, 250))
    fixed = corrected(late, LagCorrection(method="calibration", lag_us=600_000))
    after = alpha_interval(rating_matrix([early, fixed], 1_000_000, 100_000, 250))
    assert before is not None
    assert after is not None
    assert after > 0.95 > before
