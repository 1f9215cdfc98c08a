"""The model lane's thinning and per-window readings, sans I/O
(streams.features.model_windows)."""

from __future__ import annotations

import pytest

from streams import records
from streams.features.model_rater import FrameReading, Unread
from streams.features.model_windows import (
    MODEL_BUSY_FRAMES,
    ModelThinning,
    ModelWindows,
    model_due,
)

T0 = 1_764_115_200_000_000  # a multiple of 100 ms: window 0 starts here
WINDOW_US = 100_000
FRAME_US = 66_667


def reading(happy: float, model: str = "fer") -> FrameReading:
    return FrameReading(
        model,
        {"happy": happy, "neutral": 1 - happy},
        {"amusement": happy},
        valence=0.8 * happy,
        arousal=0.4 * happy,
    )


def test_the_model_reads_one_frame_per_slot_whatever_the_frame_rate() -> None:
    thinning = ModelThinning(10.0)
    assert thinning.period_us == 100_000
    stamps = [T0 + n * FRAME_US + (n % 3) * 4_000 for n in range(45)]  # 3 s at 15 fps, jitter
    due = [ts for ts in stamps if thinning.due("alice", ts, analysing=0)]
    assert len({ts // 100_000 for ts in due}) == len(due), "at most one per slot"
    assert len({ts // 100_000 for ts in stamps}) == len(due), "every slot with a frame"
    # Five a second reads every other slot.
    slower = ModelThinning(5.0)
    assert sum(slower.due("bob", ts, 0) for ts in stamps) == 15


def test_a_busy_face_worker_thins_the_model_without_taking_the_slot() -> None:
    thinning = ModelThinning(10.0)
    assert not thinning.due("alice", T0, analysing=MODEL_BUSY_FRAMES)
    assert thinning.due("alice", T0 + 10_000, analysing=MODEL_BUSY_FRAMES - 1), "slot still free"
    assert not thinning.due("alice", T0 + 20_000, analysing=0), "slot taken"
    assert thinning.due("bob", T0 + 20_000, analysing=0), "each performer has their own"
    assert not model_due(T0, T0 // 100_000, 100_000, 0)


def test_a_window_goes_out_when_a_frame_of_the_next_one_comes() -> None:
    windows: ModelWindows[str] = ModelWindows("s-1", WINDOW_US, "expected-name")
    assert windows.add("alice", T0 + 1_000, reading(0.9), "e0") == ([], [])
    assert windows.add("alice", T0 + 60_000, Unread("thinned", "fer"), "e1") == ([], [])
    assert windows.add("alice", T0 + 80_000, reading(0.5), "e2") == ([], [])
    assert windows.is_open("alice")
    out, done = windows.add("alice", T0 + 120_000, Unread("no_face", "fer"), "e3")
    assert done == ["e0", "e1", "e2"]
    [first] = out
    assert (first.ts_us, first.window_us, first.performer_id) == (T0, WINDOW_US, "alice")
    assert first.model == "fer", "the name the workers' readings carry"
    assert (first.frames_read, first.frames_thinned, first.frames_failed) == (2, 1, 0)
    assert first.class_probabilities == {"happy": 0.7, "neutral": 0.3}
    assert first.probabilities == {"amusement": 0.7}
    assert first.top_label == "amusement"
    assert (first.valence, first.arousal) == (pytest.approx(0.56), pytest.approx(0.28))
    assert first.unread is None
    # The next window had only a frame without a face: it says so when it goes out.
    out, done = windows.flush("alice")
    assert done == ["e3"]
    assert (out[0].ts_us, out[0].frames_read, out[0].unread) == (T0 + WINDOW_US, 0, "no_face")
    assert not windows.is_open("alice")
    assert windows.flush("alice") == ([], [])


@pytest.mark.parametrize(
    ("outcomes", "unread", "counts"),
    [
        ([Unread("thinned"), Unread("no_face")], "thinned", (0, 1, 0)),
        ([Unread("failed", "fer", "timeout"), Unread("thinned")], "failed", (0, 1, 1)),
        ([Unread("no_face"), Unread("no_face")], "no_face", (0, 0, 0)),
    ],
)
def test_a_window_with_frames_but_no_reading_says_why(
    outcomes: list[Unread], unread: str, counts: tuple[int, int, int]
) -> None:
    windows: ModelWindows[int] = ModelWindows("s-1", WINDOW_US, "fer")
    for n, outcome in enumerate(outcomes):
        windows.add("alice", T0 + n * 10_000, outcome, n)
    [window], done = windows.flush("alice")
    assert done == list(range(len(outcomes)))
    assert window.unread == unread
    assert (window.frames_read, window.frames_thinned, window.frames_failed) == counts
    assert window.class_probabilities == {}
    assert window.top_label is None
    records.ModelReading.model_validate(window.model_dump())  # a valid record


def test_frames_without_an_outcome_hold_their_events_but_make_no_reading() -> None:
    windows: ModelWindows[str] = ModelWindows("s-1", WINDOW_US, "fer")
    windows.add("alice", T0, None, "dead-lettered")
    out, done = windows.add("alice", T0 + WINDOW_US, reading(1.0), "e1")
    assert (out, done) == ([], ["dead-lettered"])


def test_performers_have_windows_of_their_own() -> None:
    windows: ModelWindows[str] = ModelWindows("s-1", WINDOW_US, "fer")
    windows.add("alice", T0, reading(1.0), "a0")
    assert windows.add("bob", T0 + WINDOW_US, reading(0.0), "b0") == ([], [])
    out, done = windows.add("alice", T0 + WINDOW_US, reading(0.0), "a1")
    assert (done, [r.performer_id for r in out]) == (["a0"], ["alice"])


def test_a_clock_stepped_back_closes_the_window_and_reopens_the_earlier_one() -> None:
    windows: ModelWindows[str] = ModelWindows("s-1", WINDOW_US, "fer")
    windows.add("alice", T0 + WINDOW_US, reading(1.0), "e0")
    out, done = windows.add("alice", T0 + 50_000, reading(0.0), "e1")
    assert [r.ts_us for r in out] == [T0 + WINDOW_US]
    assert done == ["e0"]
    out, _ = windows.flush("alice")
    assert [r.ts_us for r in out] == [T0]


def test_the_top_label_is_none_when_the_unmapped_classes_weigh_more() -> None:
    # 0.35 unmapped:
    assert records.model_top_label({"amusement": 0.45, "sadness": 0.2}) == "amusement"
    # A neutral face, 0.6 unmapped:
    assert records.model_top_label({"amusement": 0.3, "sadness": 0.1}) is None
    assert records.model_top_label({}) is None


def test_two_readings_of_one_window_merge_weighted_by_the_frames_read() -> None:
    common = {"session_id": "s-1", "performer_id": "alice", "window_us": 100_000}
    first = records.ModelReading(
        ts_us=T0,
        model="fer",
        frames_read=3,
        probabilities={"amusement": 0.8},
        class_probabilities={"happy": 0.8, "neutral": 0.2},
        top_label="amusement",
        valence=0.6,
        **common,
    )
    second = records.ModelReading(
        ts_us=T0,
        model="fer",
        frames_read=1,
        frames_thinned=2,
        probabilities={"sadness": 0.4},
        class_probabilities={"sad": 0.4, "neutral": 0.6},
        valence=-0.2,
        **common,
    )
    merged = records.merge_model_readings(first, second)
    assert merged.frames_read == 4
    assert merged.frames_thinned == 2
    assert merged.probabilities == {"amusement": 0.6, "sadness": 0.1}
    assert merged.class_probabilities == {"happy": 0.6, "neutral": 0.3, "sad": 0.1}
    assert merged.top_label == "amusement"
    assert merged.valence == pytest.approx(0.4)
    with pytest.raises(ValueError, match="one window"):
        records.merge_model_readings(first, first.model_copy(update={"ts_us": T0 + 100_000}))
