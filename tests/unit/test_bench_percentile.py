"""The benchmarks' percentile (tests.bench.common): which sample it reports, its rounding,
and what "nothing measured" comes out as, so every benchmark's p50/p95/p99 mean the same."""

from __future__ import annotations

import math

import pytest

from tests.bench.common import percentile, percentile_or_nan


def test_no_samples_is_none_or_nan() -> None:
    assert percentile([], 0.99) is None
    assert math.isnan(percentile_or_nan([], 0.5))


def test_a_reported_percentile_is_a_measured_sample_never_an_interpolation() -> None:
    # Two samples, the median: the lower one (index round(0.5) = 0), not 15.
    assert percentile([20.0, 10.0], 0.5) == 10.0
    # Four: index round(1.5) = 2, ties to even: the third of the sorted values, not 25.
    assert percentile([40.0, 10.0, 30.0, 20.0], 0.5) == 30.0
    # Six: index round(2.5) = 2 again (ties to even), the third.
    assert percentile([6.0, 5.0, 4.0, 3.0, 2.0, 1.0], 0.5) == 3.0


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.0, 1.0), (0.5, 51.0), (0.95, 95.0), (0.99, 99.0), (1.0, 100.0)],
)
def test_index_is_fraction_of_the_way_through_the_sorted_samples(
    fraction: float, expected: float
) -> None:
    samples = [float(v) for v in range(100, 0, -1)]  # 1..100 ms, given in reverse
    # index round(fraction * 99): 0, 50 (49.5 to even), 94 (94.05), 98 (98.01), 99
    assert percentile(samples, fraction) == expected
    assert percentile_or_nan(samples, fraction) == expected


def test_rounded_to_hundredths_of_the_unit() -> None:
    assert percentile([1.23456], 0.99) == 1.23
    assert percentile([1.23456, 7.891011], 1.0) == 7.89


def test_a_lost_sample_counted_as_infinite_latency_stays_infinite() -> None:
    # The processors benchmark counts a frame that never came out as inf: the p99 of a run
    # that lost one in ten must say so, the median must not.
    samples = [10.0] * 9 + [math.inf]
    assert percentile_or_nan(samples, 0.99) == math.inf
    assert percentile_or_nan(samples, 0.5) == 10.0
