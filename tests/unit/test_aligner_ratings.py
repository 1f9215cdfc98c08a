"""The sans-I/O aligner beyond tags: continuous ratings as traces in the windows, model
readings as estimates, and reaction-lag corrections placing tags and samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import pytest

from streams import records
from streams.labels.aligner_core import (
    AlignerConfig,
    LateRatings,
    RefusedReading,
    SessionAligner,
)
from streams.labels.rating_traces import RatedSample, summarise
from tests.tag_cases import tag

SID = "s-1"
W = 100_000
T0 = 1_700_000_000_000_000  # a multiple of W: window k starts at T0 + k*W
# A performer with a microphone only, whose stream is waited for as long as in production.
PROSODY_ONLY = AlignerConfig(awaited_streams=("prosody",), feature_wait_us=10_000_000)
TAG_WAIT = PROSODY_ONLY.tag_wait_us
RATING_WAIT = PROSODY_ONLY.rating_wait_us


def hop(ts_us: int, performer: str = "alice") -> records.ProsodyFrame:
    return records.ProsodyFrame(
        ts_us=ts_us,
        session_id=SID,
        performer_id=performer,
        f0_hz=200.0,
        voicing_probability=0.9,
        voiced=True,
        loudness_db=-20.0,
    )


def feed(
    aligner: SessionAligner, start_us: int, end_us: int, now_us: int
) -> list[records.LabelWindow]:
    out: list[records.LabelWindow] = []
    for ts in range(start_us, end_us, 10_000):
        out += aligner.add_prosody(hop(ts), now_us)
    return out


def batch(
    batch_id: str,
    times: Sequence[int],
    values: Sequence[tuple[float, float]] | Sequence[float],
    *,
    rater: str = "olga",
    performer: str = "alice",
    rate_hz: int = 20,
    label: str | None = None,
    reaction_lag_us: int = 0,
) -> records.RatingBatch:
    """Samples at ``times``; (valence, arousal) pairs, or intensities with ``label``."""
    samples = []
    for ts, value in zip(times, values, strict=True):
        sample: dict[str, object] = {"ts_us": ts, "client_ts_us": ts}
        if label is None:
            assert isinstance(value, tuple)
            sample["valence"], sample["arousal"] = value
        else:
            sample["intensity"] = value
        samples.append(sample)
    return records.RatingBatch.model_validate(
        {
            "ts_us": times[0],
            "session_id": SID,
            "performer_id": performer,
            "batch_id": batch_id,
            "rater_id": rater,
            "rater_role": "observer",
            "mode": "intensity" if label is not None else "valence_arousal",
            "label": label,
            "rate_hz": rate_hz,
            "samples": samples,
            "clock_offset_us": 0,
            "clock_uncertainty_us": 500,
            "reaction_lag_us": reaction_lag_us,
            "received_ts_us": times[-1],
        }
    )


def reading(
    ts_us: int,
    *,
    model: str = "fer",
    top: str = "amusement",
    probability: float = 0.8,
    performer: str = "alice",
    window_us: int = W,
) -> records.ModelReading:
    return records.ModelReading(
        ts_us=ts_us,
        session_id=SID,
        performer_id=performer,
        window_us=window_us,
        model=model,
        frames_read=2,
        class_probabilities={"happy": probability},
        probabilities={top: probability},
        top_label=top,
        valence=0.5,
        arousal=0.25,
    )


def windows_of(out: Sequence[object]) -> dict[int, records.LabelWindow]:
    return {(item.ts_us - T0) // W: item for item in out if isinstance(item, records.LabelWindow)}


def only_trace(window: records.LabelWindow) -> records.RaterTrace:
    [trace] = window.ratings
    return trace


# ---------------------------------------------------------------- the summary


def test_a_window_shows_mean_last_and_coverage_of_its_samples() -> None:
    samples = [
        RatedSample(ts, ts, 20, values)
        for ts, values in [(T0 + 60_000, (0.5, -0.2)), (T0 + 10_000, (0.1, 0.4))]
    ]
    summary = summarise(samples, "valence_arousal", T0, W)
    assert summary.mean == {"valence": 0.3, "arousal": 0.1}
    assert summary.last == {"valence": 0.5, "arousal": -0.2}  # the latest instant, not arrival
    assert summary.coverage == 1.0  # both 50 ms slots hold a sample
    assert summary.samples == 2
    # Two samples in one slot, none in the other: half covered.
    crowded = [RatedSample(T0 + ts, T0 + ts, 20, (0.2,)) for ts in (0, 30_000)]
    assert summarise(crowded, "intensity", T0, W).coverage == 0.5
    assert summarise(crowded, "intensity", T0, W).mean == {"intensity": 0.2}
    # At 30 Hz a 100 ms window has three slots.
    sparse = [RatedSample(T0 + 50_000, T0 + 50_000, 30, (0.2,))]
    assert summarise(sparse, "intensity", T0, W).coverage == pytest.approx(0.3333)


def test_continuous_samples_land_in_the_windows_their_instants_fall_in() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    feed(aligner, T0, T0 + 3 * W, T0)
    # 20 Hz from 0 to 200 ms: windows 0 and 1 get two samples each, window 2 one.
    times = [T0 + k * 50_000 for k in range(5)]
    values = [(0.1 * k, -0.1 * k) for k in range(5)]
    assert aligner.add_ratings(batch("batch-0001", times, values), T0) == []
    feed(aligner, T0 + 3 * W, T0 + 4 * W, T0)
    # Window 2 waits for the rater to rate past it, at most rating_wait.
    out = windows_of(aligner.tick(T0 + 3 * W + TAG_WAIT))
    assert sorted(out) == [0, 1]
    out.update(windows_of(aligner.tick(T0 + 3 * W + RATING_WAIT)))
    assert sorted(out) == [0, 1, 2]
    first = only_trace(out[0])
    assert (first.rater_id, first.rater_role, first.mode, first.label) == (
        "olga",
        "observer",
        "valence_arousal",
        None,
    )
    assert first.mean == {"valence": 0.05, "arousal": -0.05}
    assert first.last == {"valence": 0.1, "arousal": -0.1}
    assert (first.samples, first.coverage) == (2, 1.0)
    assert first.lag is None, "no correction: the samples stand where they were rated"
    assert only_trace(out[1]).mean == {"valence": 0.25, "arousal": -0.25}
    assert only_trace(out[2]).samples == 1
    assert only_trace(out[2]).coverage == 0.5
    assert out[0].raters == [], "ratings are not tags"
    assert out[0].consensus is None
    assert aligner.stats["rating_samples"] == 5


def test_an_intensity_rating_names_its_label_and_traces_are_per_rater() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    feed(aligner, T0, T0 + 2 * W, T0)
    aligner.add_ratings(
        batch("batch-0001", [T0 + 20_000], [0.75], label="amusement", rater="pete"), T0
    )
    aligner.add_ratings(batch("batch-0002", [T0 + 30_000], [(0.5, 0.5)], rater="olga"), T0)
    [window] = [w for w in aligner.tick(T0 + 2 * W + RATING_WAIT) if w.ts_us == T0]
    assert [(t.rater_id, t.mode, t.label) for t in window.ratings] == [
        ("olga", "valence_arousal", None),
        ("pete", "intensity", "amusement"),
    ]
    assert window.ratings[1].mean == {"intensity": 0.75}


def test_a_window_waits_briefly_for_a_rater_who_is_rating() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    feed(aligner, T0, T0 + 5 * W, T0)
    aligner.add_ratings(batch("batch-0001", [T0, T0 + 50_000], [(0.0, 0.0)] * 2), T0)
    # Prosody is far ahead, the rater only at 50 ms: window 0 waits for them...
    assert aligner.tick(T0 + W + TAG_WAIT) == []
    # ...until their samples pass its end...
    later = [T0 + 100_000, T0 + 150_000]
    out = windows_of(
        aligner.add_ratings(batch("batch-0002", later, [(0.2, 0.2)] * 2), T0 + W + TAG_WAIT + 1)
    )
    assert sorted(out) == [0]
    assert only_trace(out[0]).samples == 2
    # ...or for at most rating_wait: window 1 goes out without their next batch.
    assert aligner.tick(T0 + 2 * W + RATING_WAIT - 1) == []
    assert sorted(windows_of(aligner.tick(T0 + 2 * W + RATING_WAIT))) == [1]
    # A rater who sent nothing for rating_wait is not waited for at all.
    quiet = T0 + W + TAG_WAIT + 1 + RATING_WAIT
    assert sorted(windows_of(aligner.tick(quiet))) == [2, 3]


def test_samples_of_a_window_already_sent_revise_it() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    feed(aligner, T0, T0 + 3 * W, T0)
    first = windows_of(aligner.tick(T0 + 3 * W + TAG_WAIT))
    assert first[1].ratings == []
    out = aligner.add_ratings(
        batch("batch-0001", [T0 + 110_000, T0 + 160_000], [(0.4, 0.0), (0.6, 0.2)]),
        T0 + 5_000_000,
    )
    [revised] = out
    assert isinstance(revised, records.LabelWindow)
    assert revised.ts_us == T0 + W
    assert revised.correction
    assert revised.revision == 1
    assert only_trace(revised).mean == {"valence": 0.5, "arousal": 0.1}
    assert revised.features == first[1].features
    # The same batch again (a client re-sending what was not acknowledged): nothing new.
    again = batch("batch-0001", [T0 + 110_000, T0 + 160_000], [(0.4, 0.0), (0.6, 0.2)])
    assert aligner.add_ratings(again, T0 + 5_000_000) == []
    assert aligner.stats["duplicate_rating_batches"] == 1
    counts, _, _ = aligner.performer_counters()["alice"]
    assert counts["rating_samples"] == 2
    assert counts["window_revisions"] == 1


def test_ratings_too_late_for_any_window_are_given_back_and_counted() -> None:
    aligner = SessionAligner(SID, replace(PROSODY_ONLY, grace_us=1_000_000))
    feed(aligner, T0, T0 + 5 * W, T0)
    aligner.tick(T0 + 10 * W)
    late = batch("batch-0001", [T0 + 10_000, T0 + 60_000], [(0.1, 0.1)] * 2)
    [result] = aligner.add_ratings(late, T0 + 5_000_000)
    assert isinstance(result, LateRatings)
    assert result.batch == late
    assert "before now" in result.reason
    counts, _, _ = aligner.performer_counters()["alice"]
    assert counts["late_rating_samples"] == 2


def test_ratings_carry_windows_on_past_the_last_captured_instant() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    feed(aligner, T0, T0 + W, T0)
    aligner.add_ratings(batch("batch-0001", [T0 + 250_000], [(0.3, 0.3)]), T0)
    aligner.set_presence("alice", False, T0 + W, T0)  # she left; the observer rates on
    out = windows_of(aligner.tick(T0 + PROSODY_ONLY.ended_wait_us))
    assert sorted(out) == [0, 1, 2]
    assert out[2].missing == {"prosody": "ended", "face": "ended"}
    assert out[1].ratings == []
    assert only_trace(out[2]).samples == 1
    assert aligner.passed("alice", T0 + 250_000)


def test_a_batchs_calibrated_lag_moves_its_samples_earlier_and_says_so() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    feed(aligner, T0, T0 + 4 * W, T0)
    # Rated at 320 ms by someone 300 ms slow: it is about 20 ms (window 0).
    rated = batch("batch-0001", [T0 + 320_000], [(0.9, 0.1)], reaction_lag_us=300_000)
    assert aligner.rating_settles_at_us(rated) == T0 + 20_000
    aligner.add_ratings(rated, T0)
    out = windows_of(aligner.tick(T0 + 4 * W + RATING_WAIT))
    trace = only_trace(out[0])
    assert trace.lag == records.LagCorrection(method="calibration", lag_us=300_000)
    assert [w for w, window in out.items() if window.ratings] == [0]


# ---------------------------------------------------------------- model readings


def test_a_model_reading_is_in_its_window_and_never_in_the_consensus() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    feed(aligner, T0, T0 + 2 * W, T0)
    assert aligner.add_model_readings([reading(T0)], T0) == []
    [window] = [w for w in aligner.tick(T0 + 2 * W + TAG_WAIT) if w.ts_us == T0]
    assert window.models == [
        records.ModelEstimate(
            model="fer",
            probabilities={"amusement": 0.8},
            top_label="amusement",
            valence=0.5,
            arousal=0.25,
            frames_read=2,
        )
    ]
    assert window.consensus is None
    assert window.revision == 0


def test_readings_after_the_window_went_out_revise_it_once_per_step() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    feed(aligner, T0, T0 + 4 * W, T0)
    first = windows_of(aligner.tick(T0 + 3 * W + TAG_WAIT))
    assert sorted(first) == [0, 1, 2]
    out = aligner.add_model_readings(
        [reading(T0 + W), reading(T0 + W, model="other"), reading(T0 + 2 * W)], T0 + 4 * W
    )
    revised = windows_of(out)
    assert sorted(revised) == [1, 2]
    assert [m.model for m in revised[1].models] == ["fer", "other"]
    assert revised[1].revision == 1
    assert revised[1].correction
    assert revised[1].features == first[1].features
    # Delivered again: no revision.
    assert aligner.add_model_readings([reading(T0 + W)], T0 + 4 * W) == []
    assert aligner.stats["duplicate_model_readings"] == 1
    counts, _, _ = aligner.performer_counters()["alice"]
    assert counts["model_windows"] == 2


def test_a_second_reading_of_a_window_by_one_model_is_merged_with_the_first() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    feed(aligner, T0, T0 + 4 * W, T0)
    first = reading(T0)  # 2 frames, amusement 0.8
    second = first.model_copy(
        update={
            "frames_read": 6,
            "probabilities": {"amusement": 0.6},
            "class_probabilities": {"happy": 0.6},
            "valence": 0.1,
        }
    )
    assert aligner.add_model_readings([first, second, first], T0) == []
    assert aligner.stats["duplicate_model_readings"] == 1, "the first, delivered again"
    sent = windows_of(aligner.tick(T0 + 3 * W + TAG_WAIT))
    [estimate] = sent[0].models
    merged = records.merge_model_readings(first, second)
    assert (estimate.frames_read, estimate.probabilities, estimate.valence) == (
        8,
        {"amusement": 0.65},  # (0.8 x 2 + 0.6 x 6) / 8
        0.2,
    )
    assert estimate.top_label == merged.top_label == "amusement"
    # A window already sent: its second reading revises it with the two merged.
    later = reading(T0 + W)
    assert sorted(windows_of(aligner.add_model_readings([later], T0 + 4 * W))) == [1]
    [revised] = windows_of(
        aligner.add_model_readings([later.model_copy(update={"frames_read": 6})], T0 + 4 * W)
    ).values()
    assert revised.revision == 2
    assert [m.frames_read for m in revised.models] == [8]
    assert aligner.add_model_readings([later], T0 + 4 * W) == []
    assert aligner.stats["duplicate_model_readings"] == 2


def test_a_reading_too_late_is_counted_and_one_off_the_grid_refused() -> None:
    aligner = SessionAligner(SID, replace(PROSODY_ONLY, grace_us=1_000_000))
    feed(aligner, T0, T0 + 5 * W, T0)
    aligner.tick(T0 + 10 * W)
    assert aligner.add_model_readings([reading(T0)], T0 + 5_000_000) == []
    counts, _, _ = aligner.performer_counters()["alice"]
    assert counts["late_model_readings"] == 1
    off = reading(T0 + 4 * W + 5)
    [refused] = aligner.add_model_readings([off, reading(T0 + 4 * W, window_us=2 * W)], T0)[:1]
    assert isinstance(refused, RefusedReading)
    assert refused.reading == off
    assert aligner.stats["refused_model_readings"] == 2


def test_a_reading_before_the_performers_first_window_is_counted_late() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    aligner.add_model_readings([reading(T0)], T0)
    assert not aligner.passed("alice", T0), "kept until its window goes out"
    feed(aligner, T0 + 5 * W, T0 + 7 * W, T0)
    aligner.tick(T0 + 7 * W + TAG_WAIT)
    counts, _, _ = aligner.performer_counters()["alice"]
    assert counts["late_model_readings"] == 1
    assert aligner.stats["pending_model_windows"] == 0


# ---------------------------------------------------------------- lag corrections


def test_a_raters_lag_correction_moves_their_tags_from_then_on() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    feed(aligner, T0, T0 + 10 * W, T0)
    pressed = tag("tag-0001", "point", T0 + 750_000, span_us=1, rater="olga")
    # The tag service took 100 ms off already: the press was at 850 ms.
    pressed = pressed.model_copy(
        update={"timing": pressed.timing.model_copy(update={"reaction_lag_us": 100_000})}
    )
    consensus = records.LagCorrection(method="consensus", lag_us=500_000, confidence=0.8)
    aligner.set_lag("olga", consensus)
    assert aligner.settles_at_us(pressed) == T0 + 350_001  # a 1 µs span
    aligner.add_tag(pressed, T0)
    out = windows_of(aligner.tick(T0 + 10 * W + TAG_WAIT))
    labelled = [w for w, window in out.items() if window.raters]
    assert labelled == [3], "850 ms raw - 500 ms = 350 ms"
    [rater] = out[3].raters
    assert rater.lag == consensus
    # Back to no correction: the next tag stands where the tag service put it.
    aligner.set_lag("olga", records.LagCorrection(method="none", lag_us=0))
    assert aligner.lag_of("olga") is None
    feed(aligner, T0 + 10 * W, T0 + 20 * W, T0 + 10 * W)
    aligner.add_tag(tag("tag-0002", "point", T0 + 1_550_000, span_us=1, rater="olga"), T0 + 10 * W)
    later = windows_of(aligner.tick(T0 + 20 * W + TAG_WAIT))
    [plain] = [window for window in later.values() if window.raters]
    assert plain.ts_us == T0 + 15 * W
    assert plain.raters[0].lag is None


def test_a_raters_labels_placed_under_different_corrections_each_say_their_own() -> None:
    consensus = records.LagCorrection(method="consensus", lag_us=500_000, confidence=0.8)
    onsets = records.LagCorrection(method="onsets", lag_us=300_000, confidence=0.7)
    aligner = SessionAligner(SID, PROSODY_ONLY)
    emitted = feed(aligner, T0, T0 + 20 * W, T0)
    aligner.set_lag("olga", consensus)
    # Raw presses of three labels, each point centred on where it is placed: 100-700 ms
    # (windows 1-6), 600-800 ms (6-7), 750-850 ms (7-8).
    aligner.add_tag(
        tag("tag-0001", "point", T0 + 900_000, span_us=600_000, rater="olga", label="joy"), T0
    )
    aligner.set_lag("olga", onsets)
    aligner.add_tag(
        tag("tag-0002", "point", T0 + 1_000_000, span_us=200_000, rater="olga", label="laughter"),
        T0,
    )
    aligner.set_lag("olga", None)
    aligner.add_tag(
        tag("tag-0003", "point", T0 + 800_000, span_us=100_000, rater="olga", label="amusement"), T0
    )
    emitted += aligner.tick(T0 + 20 * W + TAG_WAIT)
    out = windows_of(emitted)

    def shown(window: records.LabelWindow) -> tuple[object, list[tuple[str, object]]]:
        [rater] = window.raters
        return rater.lag, [(label.tag_id, label.lag) for label in rater.labels]

    assert shown(out[3]) == (consensus, [("tag-0001", None)])
    assert shown(out[6]) == (None, [("tag-0001", consensus), ("tag-0002", onsets)])
    assert shown(out[7]) == (None, [("tag-0002", onsets), ("tag-0003", None)])
    assert shown(out[8]) == (None, [("tag-0003", None)])
    # Read back after a restart, each tag keeps its own correction: a window revised for
    # another rater's late tag shows olga's as before.
    second = SessionAligner(SID, PROSODY_ONLY)
    second.restore(emitted, T0 + 21 * W)
    late = tag("tag-0004", "point", T0 + 600_000, span_us=600_000, rater="pete")
    revised = windows_of(second.add_tag(late, T0 + 21 * W))
    assert sorted(revised) == [3, 4, 5, 6, 7, 8]
    for window, revision in revised.items():
        [olga] = [rater for rater in revision.raters if rater.rater_id == "olga"]
        assert olga == out[window].raters[0], window


def test_a_raters_correction_replaces_their_calibration_on_samples() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    feed(aligner, T0, T0 + 10 * W, T0)
    applied = records.LagCorrection(method="onsets", lag_us=600_000, confidence=0.9)
    aligner.set_lag("olga", applied)
    rated = batch("batch-0001", [T0 + 650_000], [(0.1, 0.1)], reaction_lag_us=200_000)
    aligner.add_ratings(rated, T0)
    out = windows_of(aligner.tick(T0 + 10 * W + RATING_WAIT))
    assert [w for w, window in out.items() if window.ratings] == [0]
    assert only_trace(out[0]).lag == applied
    # Another rater keeps their own default.
    assert aligner.lag_of("pete") is None


# ---------------------------------------------------------------- restart


def test_a_restarted_aligner_keeps_the_traces_and_readings_it_sent() -> None:
    first = SessionAligner(SID, PROSODY_ONLY)
    emitted = feed(first, T0, T0 + 3 * W, T0)
    rated = batch("batch-0001", [T0 + 10_000, T0 + 60_000], [(0.2, 0.4)] * 2)
    first.add_ratings(rated, T0)
    first.add_model_readings([reading(T0)], T0)
    emitted += first.tick(T0 + 3 * W + RATING_WAIT)
    sent = windows_of(emitted)
    assert only_trace(sent[0]).samples == 2
    assert sent[0].models
    second = SessionAligner(SID, PROSODY_ONLY)
    second.restore(emitted, T0 + 4 * W)
    # Re-read after the restart: the batch and the reading change nothing.
    assert second.add_ratings(rated, T0 + 4 * W) == []
    assert second.add_model_readings([reading(T0)], T0 + 4 * W) == []
    assert second.stats["duplicate_rating_samples"] == 2
    # Another model's reading revises the window and keeps what it showed.
    [revised] = second.add_model_readings([reading(T0, model="other")], T0 + 4 * W)
    assert isinstance(revised, records.LabelWindow)
    assert revised.revision == 1
    assert revised.ratings == sent[0].ratings
    assert [m.model for m in revised.models] == ["fer", "other"]
    counts, _, _ = second.performer_counters()["alice"]
    assert counts["rating_samples"] == 2
    assert counts["model_windows"] == 1


def test_state_for_ratings_stays_bounded_over_a_long_run() -> None:
    config = replace(PROSODY_ONLY, grace_us=2_000_000)
    aligner = SessionAligner(SID, config)
    seconds = 60
    for ms in range(0, seconds * 1000, 10):
        now = T0 + ms * 1000
        aligner.add_prosody(hop(now), now)
        if ms % 250 == 0:  # four batches a second of five 20 Hz samples, 200 ms behind
            times = [now - 200_000 + k * 50_000 for k in range(5)]
            aligner.add_ratings(batch(f"batch-{ms:06d}", times, [(0.1, 0.1)] * 5), now)
        if ms % 100 == 0:
            aligner.add_model_readings([reading(now - 300_000 - (now - 300_000) % W)], now)
        aligner.tick(now)
    stats = aligner.stats
    assert stats["late_rating_samples"] == 0
    # Batch ids are kept for about the grace: four a second.
    assert stats["remembered_batches"] <= 4 * 4
    assert stats["pending_rating_windows"] <= RATING_WAIT // W + 5
    assert stats["pending_model_windows"] <= 5
    assert stats["kept_windows"] <= (config.grace_us + RATING_WAIT) // W + 5
