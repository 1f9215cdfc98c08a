"""The reaction-lag estimators on synthetic traces of known lags: consensus (relative and
anchored), onsets, calibration, and the choice among them."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streams.labels import reaction_lag as rl
from streams.labels.agreement import Trace
from streams.records import FaceFrame, ProsodyFrame, RaterLag, TagEvent, TagTiming

SECONDS = 60
RATE_US = 50_000  # 20 Hz raters


def smooth_signal(rng: np.random.Generator, seconds: float, corr_s: float = 1.0) -> Trace:
    """A smooth random intensity in 0..1 at 100 Hz (Gaussian-filtered white noise)."""
    count = round(seconds * 100)
    width = corr_s * 50
    taps = np.arange(-int(4 * width), int(4 * width) + 1)
    kernel = np.exp(-0.5 * (taps / width) ** 2)
    smooth = np.convolve(rng.standard_normal(count + taps.size), kernel, "same")
    smooth = smooth[taps.size // 2 :][:count]
    values = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return Trace.of(np.arange(count, dtype=np.int64) * 10_000, values)


def rater(rng: np.random.Generator, truth: Trace, lag_us: int, noise: float = 0.03) -> Trace:
    """A 20 Hz rater who shows the truth lag_us late, with a random phase and noise."""
    end = int(truth.ts_us[-1])
    ts = np.arange(int(rng.integers(0, RATE_US)), end, RATE_US, dtype=np.int64)
    ts = ts[ts >= lag_us]
    seen = np.interp((ts - lag_us).astype(np.float64), truth.ts_us.astype(np.float64), truth.values)
    return Trace(ts, seen + rng.normal(0.0, noise, ts.size))


LAGS = {"ann": 250_000, "bob": 480_000, "cy": 700_000, "di": 860_000, "ed": 390_000}


@pytest.fixture(scope="module")
def scene() -> tuple[Trace, dict[str, Trace]]:
    rng = np.random.default_rng(11)
    truth = smooth_signal(rng, SECONDS)
    return truth, {name: rater(rng, truth, lag) for name, lag in LAGS.items()}


# ---------------------------------------------------------------- the grid and correlation


def test_on_grid_interpolates_and_leaves_gaps_and_outside_empty() -> None:
    trace = Trace.of([0, 100_000, 200_000, 800_000], [0.0, 1.0, 0.0, 1.0])
    grid = rl.Grid(-50_000, 50_000, 20)  # -50 ms .. 900 ms
    values = rl.on_grid(trace, grid)
    assert np.isnan(values[0])  # before the first sample
    assert values[1] == 0.0
    assert values[2] == pytest.approx(0.5)
    assert values[3] == pytest.approx(1.0)
    assert values[4] == pytest.approx(0.5)
    assert np.all(np.isnan(values[6:17]))  # 200 -> 800 ms is a gap of 600 ms
    assert values[17] == 1.0  # the last sample, exactly on the grid
    assert np.all(np.isnan(values[18:]))


def test_grid_spans_every_trace() -> None:
    grid = rl.Grid.spanning([Trace.of([30_000, 90_000], [0, 1]), Trace.of([10_000], [0])])
    assert (grid.start_us, grid.count) == (10_000, 9)
    assert grid.times()[-1] == 90_000


def test_masked_correlation_matches_pearson_over_the_shared_instants() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal(300)
    y = rng.standard_normal(280) + 5.0
    x[rng.integers(0, 300, 40)] = np.nan
    y[rng.integers(0, 280, 30)] = np.nan
    lags = np.array([-7, 0, 3, 25], dtype=np.int64)
    found = rl.masked_correlation(x, y, lags)
    for lag, r in zip(lags, found, strict=True):
        pairs = [
            (x[i], y[i - lag])
            for i in range(300)
            if 0 <= i - lag < 280 and not (np.isnan(x[i]) or np.isnan(y[i - lag]))
        ]
        a, b = np.array(pairs).T
        assert r == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-9)


def test_masked_correlation_of_a_constant_is_undefined() -> None:
    r = rl.masked_correlation(np.ones(50), np.arange(50.0), np.array([0, 1], dtype=np.int64))
    assert np.all(np.isnan(r))


def test_peak_is_refined_below_the_grid() -> None:
    lags = np.arange(-10, 11, dtype=np.float64) * 10_000
    r = 0.9 - ((lags - 23_000) / 100_000) ** 2  # a parabola peaking at 23 ms
    peak = rl.find_peak(r, lags)
    assert peak is not None
    assert peak.lag_us == pytest.approx(23_000, abs=1)
    assert peak.height == pytest.approx(0.9, abs=1e-6)
    assert peak.runner_up is None
    assert peak.confidence == pytest.approx(0.9, abs=1e-6)


def test_a_peak_at_the_edge_or_matched_by_another_gives_no_confidence() -> None:
    lags = np.arange(0, 21, dtype=np.float64) * 50_000
    rising = rl.find_peak(np.linspace(0, 0.8, 21), lags)
    assert rising is not None
    assert rising.at_edge
    assert rising.confidence == 0.0
    twin = np.full(21, 0.1)
    twin[4], twin[15] = 0.8, 0.79
    peak = rl.find_peak(twin, lags)
    assert peak is not None
    assert peak.runner_up == pytest.approx(0.79)
    assert peak.confidence < 0.05
    assert rl.find_peak(np.full(5, np.nan), lags[:5]) is None


def test_effective_pairs_shrink_with_autocorrelation() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal(2000), rng.standard_normal(2000)
    box = np.ones(50) / 50
    assert rl.effective_pairs(x, y, 500) > 1500
    assert rl.effective_pairs(np.convolve(x, box, "same"), np.convolve(y, box, "same"), 500) < 200


# ---------------------------------------------------------------- consensus


def test_consensus_without_anchor_is_relative_to_the_fastest(
    scene: tuple[Trace, dict[str, Trace]],
) -> None:
    _, traces = scene
    result = rl.consensus_lags(traces)
    assert result.anchor is None
    fastest = min(LAGS.values())
    mean = sum(LAGS.values()) / len(LAGS)
    for name, lag in LAGS.items():
        estimate = result.estimates[name]
        assert estimate.method == "consensus"
        assert estimate.relative
        assert estimate.lag_us == pytest.approx(lag - fastest, abs=25_000)
        assert result.fits[name].offset_us == pytest.approx(lag - mean, abs=25_000)
        assert estimate.confidence > 0.8
        assert estimate.evidence == len(traces[name])
    assert result.estimates["ann"].lag_us == 0


def test_consensus_anchored_on_calibrated_raters_is_absolute(
    scene: tuple[Trace, dict[str, Trace]],
) -> None:
    _, traces = scene
    result = rl.consensus_lags(traces, calibrated={"bob": LAGS["bob"], "di": LAGS["di"]})
    assert result.anchor is not None
    assert result.anchor.kind == "calibration"
    assert result.anchor.raters == ("bob", "di")
    for name, lag in LAGS.items():
        assert not result.estimates[name].relative
        assert result.estimates[name].lag_us == pytest.approx(lag, abs=25_000)


def test_consensus_anchored_on_a_feature_is_absolute(
    scene: tuple[Trace, dict[str, Trace]],
) -> None:
    truth, traces = scene
    # The feature anchor wins over a (wrong) calibration when it is confident.
    result = rl.consensus_lags(traces, feature=truth, calibrated={"bob": 2_000_000})
    assert result.anchor is not None
    assert result.anchor.kind == "feature"
    assert result.anchor.group_lag_us == pytest.approx(sum(LAGS.values()) / len(LAGS), abs=20_000)
    for name, lag in LAGS.items():
        assert result.estimates[name].lag_us == pytest.approx(lag, abs=25_000)
        assert result.estimates[name].confidence > 0.8


def test_an_unrelated_feature_does_not_anchor(scene: tuple[Trace, dict[str, Trace]]) -> None:
    _, traces = scene
    unrelated = smooth_signal(np.random.default_rng(99), SECONDS)
    result = rl.consensus_lags(traces, feature=unrelated, calibrated={"cy": LAGS["cy"]})
    assert result.feature_anchor is not None
    assert result.feature_anchor.confidence < rl.MIN_CONFIDENCE
    assert result.anchor is not None
    assert result.anchor.kind == "calibration"
    assert result.estimates["ann"].lag_us == pytest.approx(LAGS["ann"], abs=25_000)
    alone = rl.consensus_lags(traces, feature=unrelated)
    assert alone.anchor is None
    assert all(e.relative for e in alone.estimates.values())


def test_windowed_spread_follows_a_raters_jitter() -> None:
    rng = np.random.default_rng(5)
    truth = smooth_signal(rng, 120, corr_s=0.7)
    steady = {f"s{n}": rater(rng, truth, 300_000 + 100_000 * n) for n in range(4)}
    # One rater's lag jumps by +-200 ms every 10 s.
    end = int(truth.ts_us[-1])
    ts = np.arange(0, end, RATE_US, dtype=np.int64)
    wobble = np.where((ts // 10_000_000) % 2 == 0, 300_000, 700_000)
    seen = np.interp((ts - wobble).astype(np.float64), truth.ts_us.astype(np.float64), truth.values)
    keep = ts >= 700_000
    traces = {**steady, "jumpy": Trace(ts[keep], seen[keep] + rng.normal(0, 0.03, keep.sum()))}
    fits = rl.consensus_lags(traces).fits
    assert fits["jumpy"].windows >= 10
    # The steady raters' spread holds the consensus's own wobble: a quarter of the jumpy
    # rater's +-200 ms (the module doc: an upper estimate).
    steadiest = max(fits[name].spread_us for name in steady)
    assert steadiest < 80_000
    assert fits["jumpy"].spread_us > 3 * steadiest


def test_confidence_is_low_on_noise() -> None:
    rng = np.random.default_rng(8)
    noise = {f"n{n}": rater(rng, smooth_signal(rng, SECONDS), 0, noise=0.05) for n in range(6)}
    result = rl.consensus_lags(noise)
    assert result.fits
    assert all(e.confidence < rl.MIN_CONFIDENCE for e in result.estimates.values())
    for estimate in result.estimates.values():
        assert rl.choose([estimate]).method == "none"


def test_consensus_needs_two_raters_with_samples(scene: tuple[Trace, dict[str, Trace]]) -> None:
    _, traces = scene
    assert rl.consensus_lags({"ann": traces["ann"]}).estimates == {}
    lonely = rl.consensus_lags({**traces, "zed": Trace.of([5], [0.5])})
    assert lonely.unfit == ("zed",)
    assert set(lonely.estimates) == set(LAGS)


# ---------------------------------------------------------------- onsets


def test_rising_onsets_are_interpolated_and_rearmed_below_the_release() -> None:
    trace = Trace.of(
        [0, 100_000, 200_000, 300_000, 400_000, 2_000_000, 2_100_000, 2_200_000, 3_600_000],
        [0.0, 0.4, 0.8, 0.45, 0.7, 0.1, 0.9, 0.1, 0.6],
    )
    # 0.4 -> 0.8 crosses 0.5 a quarter of the way; the dip to 0.45 is not a release;
    # the rise at 2 s is; the one after 2.2 s spans a 1.4 s gap and is skipped.
    assert rl.smile_onsets(trace) == [125_000, 2_050_000]
    assert rl.rising_onsets(trace, 0.5, max_gap_us=2_000_000) == [125_000, 2_050_000, 3_320_000]
    with pytest.raises(ValueError, match="release"):
        rl.rising_onsets(trace, 0.5, release=0.6)


def test_onsets_closer_than_the_minimum_gap_are_one() -> None:
    trace = Trace.of([0, 100_000, 200_000, 300_000], [0.0, 1.0, 0.0, 1.0])
    assert rl.rising_onsets(trace, 0.5) == [50_000]
    assert rl.rising_onsets(trace, 0.5, min_gap_us=100_000) == [50_000, 250_000]


def test_loudness_onsets_find_bursts_above_the_speaking_level() -> None:
    ts = np.arange(0, 6_000_000, 10_000, dtype=np.int64)
    loudness = np.full(ts.size, -35.0)
    loudness[:50] = -100.0  # digital silence: not part of the speaking level
    loudness[(ts >= 2_000_000) & (ts < 2_400_000)] = -15.0
    loudness[(ts >= 4_500_000) & (ts < 4_800_000)] = -12.0
    onsets = rl.loudness_onsets(Trace(ts, loudness))
    assert onsets == [pytest.approx(1_992_500, abs=10_000), pytest.approx(4_492_500, abs=10_000)]
    assert rl.loudness_onsets(Trace.of([0, 10_000], [-100.0, -100.0])) == []


def test_smile_and_loudness_traces_from_records() -> None:
    common = {"session_id": "s1", "performer_id": "alice", "video_seq": 0}
    frames = [
        FaceFrame(
            ts_us=1_000,
            face_present=True,
            blendshapes={"mouthSmileLeft": 0.2, "mouthSmileRight": 0.4},
            **common,
        ),
        FaceFrame(ts_us=2_000, face_present=False, **common),
    ]
    smile = rl.smile_trace(frames)
    assert smile.ts_us.tolist() == [1_000]
    assert smile.values.tolist() == pytest.approx([0.3])
    hop = ProsodyFrame(
        ts_us=10_000,
        session_id="s1",
        performer_id="alice",
        f0_hz=None,
        voicing_probability=0.0,
        voiced=False,
        loudness_db=-40.5,
    )
    assert rl.loudness_trace([hop]).values.tolist() == [-40.5]


def tag(tag_id: str, action: str, ts_us: int, lag_us: int = 0, **extra: object) -> TagEvent:
    return TagEvent.model_validate(
        {
            "ts_us": ts_us,
            "session_id": "s1",
            "performer_id": "alice",
            "tag_id": tag_id,
            "rater_id": extra.pop("rater_id", "ann"),
            "rater_role": "observer",
            "action": action,
            "timing": TagTiming(
                client_press_ts_us=ts_us,
                clock_offset_us=0,
                rtt_us=0,
                clock_uncertainty_us=0,
                reaction_lag_us=lag_us,
            ),
            "received_ts_us": ts_us + lag_us + 1,
            **extra,
        }
    )


def test_presses_are_raw_instants_of_points_and_onsets_not_undone() -> None:
    tags = [
        tag("tag-point-1", "point", 1_000_000, lag_us=300_000, label="amusement", span_us=1),
        tag("tag-onset-1", "onset", 2_000_000, label="laughter"),
        tag("tag-offset1", "offset", 2_500_000, label="laughter", onset_tag_id="tag-onset-1"),
        tag("tag-point-2", "point", 3_000_000, label="amusement", span_us=1),
        tag("tag-undo-01", "undo", 3_100_000, undoes_tag_id="tag-point-2"),
        tag("tag-other-1", "point", 4_000_000, label="amusement", span_us=1, rater_id="bob"),
    ]
    assert rl.presses_of(tags, "ann") == [(1_300_000, "amusement"), (2_000_000, "laughter")]


def test_onset_lag_recovers_a_known_lag() -> None:
    rng = np.random.default_rng(6)
    onsets = [int(t) for t in np.cumsum(rng.uniform(2_500_000, 5_000_000, 20))]
    presses = [(t + 420_000 + int(rng.normal(0, 60_000)), "amusement") for t in onsets]
    presses.append((onsets[3] + 50_000, "surprise"))  # a label without onsets: not counted
    presses.append((1_000, "amusement"))  # before any onset: unmatched
    estimate = rl.onset_lag(presses, {"amusement": onsets})
    assert estimate is not None
    assert estimate.method == "onsets"
    assert estimate.lag_us == pytest.approx(420_000, abs=40_000)
    assert estimate.spread_us == pytest.approx(60_000, abs=30_000)
    assert estimate.evidence == 20
    assert estimate.confidence > 0.8


def test_random_presses_give_little_confidence_and_few_give_none() -> None:
    rng = np.random.default_rng(7)
    onsets = [int(t) for t in np.arange(1_000_000, 60_000_000, 1_500_000)]
    presses = [(int(t), "amusement") for t in rng.uniform(0, 60_000_000, 40)]
    estimate = rl.onset_lag(presses, {"amusement": onsets})
    assert estimate is not None
    assert estimate.confidence < rl.MIN_CONFIDENCE
    few = [(t + 300_000, "amusement") for t in onsets[:4]]
    assert rl.onset_lag(few, {"amusement": onsets}) is None


# ---------------------------------------------------------------- calibration and choice


def test_calibration_estimate() -> None:
    trials = [400_000, 420_000, 380_000, 410_000, 390_000, 405_000, 395_000, 415_000]
    estimate = rl.calibration_estimate(402_500, trials)
    assert (estimate.method, estimate.lag_us, estimate.evidence) == ("calibration", 402_500, 8)
    assert 5_000 < estimate.spread_us < 30_000
    assert estimate.confidence > 0.95
    given = rl.calibration_estimate(300_000)
    assert (given.confidence, given.spread_us) == (0.0, 0)
    with pytest.raises(ValueError, match=">= 0"):
        rl.calibration_estimate(-1)


ONSETS = rl.LagEstimate("onsets", 500_000, 80_000, 0.7, evidence=12)
ANCHORED = rl.LagEstimate("consensus", 520_000, 60_000, 0.9, evidence=900)
RELATIVE = rl.LagEstimate("consensus", 120_000, 60_000, 0.9, relative=True, evidence=900)
CALIBRATION = rl.LagEstimate("calibration", 350_000)


@pytest.mark.parametrize(
    ("estimates", "expected"),
    [
        ([ONSETS, ANCHORED, CALIBRATION, RELATIVE], ANCHORED),  # the most confident absolute
        ([ONSETS, CALIBRATION], ONSETS),
        ([rl.LagEstimate("onsets", 1, 1, 0.2), CALIBRATION, RELATIVE], CALIBRATION),
        ([RELATIVE, rl.LagEstimate("onsets", 1, 1, 0.2)], RELATIVE),
        ([rl.LagEstimate("consensus", 1, 1, 0.2, relative=True)], rl.NO_CORRECTION),
        ([], rl.NO_CORRECTION),
    ],
)
def test_choose_order(estimates: list[rl.LagEstimate], expected: rl.LagEstimate) -> None:
    assert rl.choose(estimates) == expected


def test_a_tie_goes_to_onsets() -> None:
    tied = rl.LagEstimate("consensus", 520_000, 60_000, 0.7)
    assert rl.choose([tied, ONSETS]) == ONSETS


def test_rater_lag_record() -> None:
    record = rl.rater_lag("s1", "ann", "observer", [ONSETS, CALIBRATION], ts_us=9_000_000)
    assert isinstance(record, RaterLag)
    assert record.applied.method == "onsets"
    assert record.applied.lag_us == 500_000
    assert record.applied.confidence == pytest.approx(0.7)
    assert [e.method for e in record.estimates] == ["onsets", "calibration"]
    assert record.evidence == {"onsets": 12, "calibration": 0}
    assert record.key == b"s1/ann"
    none = rl.rater_lag("s1", "bob", "director", [], ts_us=1)
    assert none.applied.method == "none"
    assert none.applied.lag_us == 0


def test_relative_correction_says_so() -> None:
    correction = RELATIVE.correction()
    assert correction.relative
    assert correction.method == "consensus"
    assert math.isclose(correction.confidence, 0.9)
