"""The dashboard's per-session view: cursors, coalescing, agreement."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from dashboard.view import ClientCursor, SessionView, agreement_alpha
from streams import records
from streams.kafka import topics
from taggers.vocabulary import DEFAULT_VOCABULARY
from tests import gap_windows, tag_cases

T0 = 1_790_000_000_000_000
SESSION = records.SessionRecord(
    ts_us=T0,
    session_id="s-1",
    created_ts_us=T0,
    prompt="p",
    roster=[records.Performer(performer_id="ana", display_name="Ana")],
    vocabulary=list(DEFAULT_VOCABULARY),
    state="live",
    topics=topics.session_topic_names("s-1"),
)


def hop(ts_us: int, f0: float | None = 200.0) -> records.ProsodyFrame:
    return records.ProsodyFrame(
        ts_us=ts_us,
        session_id="s-1",
        performer_id="ana",
        f0_hz=f0,
        voicing_probability=0.9 if f0 else 0.1,
        voiced=f0 is not None,
        loudness_db=-20.0,
    )


def face(ts_us: int) -> records.FaceFrame:
    return records.FaceFrame(
        ts_us=ts_us,
        session_id="s-1",
        performer_id="ana",
        video_seq=0,
        face_present=True,
        landmarks=records.Landmarks.from_xyz(np.zeros((478, 3), dtype=np.float32)),
        blendshapes={f"s{k}": k / 100 for k in range(20)},
        head_pose=records.HeadPose(yaw_deg=0.0, pitch_deg=0.0, roll_deg=0.0),
    )


def test_prosody_goes_out_in_50_ms_points_once_per_client() -> None:
    view = SessionView(SESSION)
    for n in range(20):  # 200 ms of 10 ms hops
        view.add_prosody(hop(T0 + n * 10_000, f0=200.0 if n < 10 else None), T0 + n * 10_000)
    first, second = ClientCursor(), ClientCursor()
    update = view.update_for(first, T0)
    assert update is not None
    points = update["performers"]["ana"]["prosody"]
    # Bins 0-150 ms are closed (the 150 ms bin waits for its end): voiced then unvoiced.
    assert points == [
        [T0, 200.0, -20.0],
        [T0 + 50_000, 200.0, -20.0],
        [T0 + 100_000, None, -20.0],
    ]
    assert view.update_for(first, T0) is None  # nothing new for this client
    assert view.update_for(second, T0)["performers"]["ana"]["prosody"] == points  # type: ignore[index]


def test_a_slow_client_gets_the_latest_face_once_not_every_frame() -> None:
    view = SessionView(SESSION)
    slow = ClientCursor()
    for n in range(30):
        view.add_face(face(T0 + n * 66_667), T0 + n * 66_667 + 20_000)
    update = view.update_for(slow, T0)
    assert update is not None
    sent = update["performers"]["ana"]["face"]
    assert sent["ts_us"] == T0 + 29 * 66_667
    assert list(sent["blendshapes"]) == [f"s{k}" for k in range(19, 11, -1)]  # top 8
    # A re-delivered older frame changes nothing.
    view.add_face(face(T0), T0)
    assert view.update_for(slow, T0) is None


def test_a_tag_goes_out_as_what_it_covers_once() -> None:
    view = SessionView(SESSION)
    tap = tag_cases.point("tag-00001", T0, span_us=500_000, performer="ana", rater="dir")
    view.add_tag(tap)
    view.add_tag(tap)  # re-delivered
    cursor = ClientCursor()
    update = view.update_for(cursor, T0)
    assert update is not None
    assert update["tags"] == [
        {
            "tag_id": "tag-00001",
            "performer_id": "ana",
            "rater_id": "dir",
            "rater_role": "observer",
            "label": "laughter",
            "intensity": "normal",
            "kind": "point",
            "start_us": T0 - 250_000,
            "end_us": T0 + 250_000,
            "open": False,
            "offset_tag_id": None,
            "ts_us": T0,
        }
    ]
    assert view.update_for(cursor, T0) is None


def test_a_hold_is_sent_again_as_it_changes_and_a_slow_client_gets_its_latest_state() -> None:
    view = SessionView(SESSION, max_hold_us=30_000_000)
    on_time, slow = ClientCursor(), ClientCursor()
    view.add_tag(tag_cases.onset("hold-on1", T0, performer="ana"))
    [opened] = view.update_for(on_time, T0)["tags"]  # type: ignore[index]
    assert (opened["start_us"], opened["end_us"], opened["open"]) == (T0, T0 + 30_000_000, True)
    # Another rater's key-up names the hold by mistake: nothing changes, nothing is sent.
    view.add_tag(tag_cases.offset("hold-off9", T0 + 1, "hold-on1", performer="ana", rater="x"))
    assert view.update_for(on_time, T0) is None
    view.add_tag(tag_cases.offset("hold-off1", T0 + 2_000_000, "hold-on1", performer="ana"))
    [closed] = view.update_for(on_time, T0)["tags"]  # type: ignore[index]
    assert (closed["end_us"], closed["open"]) == (T0 + 2_000_000, False)
    assert (closed["offset_tag_id"], closed["ts_us"]) == ("hold-off1", T0 + 2_000_000)
    assert view.update_for(slow, T0)["tags"] == [closed]  # type: ignore[index]
    # Undoing the key-up retracts the whole hold.
    view.add_tag(tag_cases.undo("undo-001", T0 + 3_000_000, "hold-off1", performer="ana"))
    removed = {"tag_id": "hold-on1", "performer_id": "ana", "removed": True}
    assert view.update_for(on_time, T0)["tags"] == [removed]  # type: ignore[index]
    # A client that was never shown the hold is not told it went.
    assert "tags" not in view.update_for(ClientCursor(), T0)  # type: ignore[operator]


@pytest.mark.parametrize("case", tag_cases.CASES, ids=lambda case: case.name)
def test_the_timeline_of_each_tag_case_follows_the_rule_in_every_order(
    case: tag_cases.Case,
) -> None:
    for order in itertools.permutations(case.tags):
        view = SessionView(SESSION, max_hold_us=tag_cases.MAX_HOLD_US)
        cursor = ClientCursor()
        shown: dict[str, dict[str, Any]] = {}
        for one in order:
            view.add_tag(one)
            update = view.update_for(cursor, T0) or {}
            for mark in update.get("tags", []):
                if mark.get("removed"):
                    del shown[mark["tag_id"]]
                else:
                    shown[mark["tag_id"]] = mark
        drawn = tuple(
            sorted((m["tag_id"], m["start_us"], m["end_us"], m["open"]) for m in shown.values())
        )
        assert drawn == case.covers, order


@pytest.mark.parametrize(
    ("windows", "expected"),
    [
        # Identical raters: perfect agreement.
        ([{"a": "joy", "b": "joy"}] * 5 + [{"a": "fear", "b": "fear"}] * 5, 1.0),
        # One always labels where the other does not: no agreement at all.
        ([{"a": "joy"}] * 5 + [{"b": "joy"}] * 5, None),
        # One rater only: undefined.
        ([{"a": "joy"}] * 5, None),
        ([], None),
    ],
)
def test_agreement_alpha(windows: list[dict[str, str]], expected: float | None) -> None:
    raters = sorted({r for w in windows for r in w})
    alpha = agreement_alpha(windows, raters)
    if expected is None and len(raters) >= 2:
        assert alpha is not None
        assert alpha < 0.2
    else:
        assert alpha == expected


def test_agreement_in_between() -> None:
    windows = (
        [{"a": "joy", "b": "joy"}] * 4
        + [{"a": "fear", "b": "fear"}] * 4
        + [{"a": "joy", "b": "fear"}] * 2
    )
    alpha = agreement_alpha(windows, ["a", "b"])
    assert alpha is not None
    assert 0.0 < alpha < 1.0


def test_agreement_per_performer_over_the_session_and_the_last_minute() -> None:
    view = SessionView(SESSION)
    for k in range(20):
        old = k < 10
        raters = [
            records.RaterLabels(
                rater_id=rater,
                rater_role="observer",
                labels=[
                    records.ActiveLabel(
                        label="laughter" if old or rater == "a" else "anger",
                        intensity="normal",
                        tag_id=f"tag-{rater}-{k:04d}",
                    )
                ],
            )
            for rater in ("a", "b")
        ]
        ts = T0 + (0 if old else 120_000_000) + k * 100_000
        view.add_label(
            records.LabelWindow(
                ts_us=ts,
                session_id="s-1",
                performer_id="ana",
                window_us=100_000,
                features=records.WindowFeatures(),
                raters=raters,
                consensus=None,
            )
        )
    view.compute_agreement(now_us=T0 + 125_000_000)
    ana = view.agreement["ana"]
    assert ana["raters"] == 2
    assert ana["units"] == 20
    assert ana["last_60s"] is not None
    assert ana["last_60s"] < 0.2  # disagreeing lately
    assert ana["session"] is not None
    assert ana["last_60s"] < ana["session"] < 1.0
    # Nothing new: nothing recomputed, nothing re-sent.
    version = view.agreement_version
    view.compute_agreement(now_us=T0 + 126_000_000)
    assert view.agreement_version == version
    # The recent windows age out of the last minute: recomputed.
    view.compute_agreement(now_us=T0 + 300_000_000)
    assert view.agreement["ana"]["last_60s"] is None
    assert view.agreement["ana"]["session"] == ana["session"]


def test_skipped_face_frames_are_counted_and_the_analysed_rate_shown() -> None:
    view = SessionView(SESSION)
    for n in range(30):  # 2 s at 15 fps, every third frame skipped by the processors
        frame = face(T0 + n * 66_667)
        if n % 3 == 2:
            frame = frame.model_copy(
                update={
                    "face_present": None,
                    "skipped": "late",
                    "landmarks": None,
                    "blendshapes": {},
                    "head_pose": None,
                }
            )
        view.add_face(frame, T0 + n * 66_667 + 40_000)
    view.set_health({})
    health = view.health["performers"]["ana"]
    assert health["face_frames_skipped"] == 10
    # Two of every three frames of a 15 fps stream: 10 analysed per second.
    assert health["face_fps_analysed"] == 10.0
    update = view.update_for(ClientCursor(), T0 + 3_000_000)
    assert update is not None
    assert update["performers"]["ana"]["face"]["ts_us"] == T0 + 28 * 66_667  # analysed one


# ---------------------------------------------------------------- ratings, lags, model lane


def rating_batch(
    batch_id: str, rater: str, start_us: int, valences: list[float]
) -> records.RatingBatch:
    """A valence/arousal batch of one rater, its samples 10 ms apart."""
    return records.RatingBatch(
        ts_us=start_us,
        session_id="s-1",
        performer_id="ana",
        batch_id=batch_id,
        rater_id=rater,
        rater_role="observer",
        mode="valence_arousal",
        rate_hz=60,
        samples=[
            records.RatingSample(
                ts_us=start_us + n * 10_000, client_ts_us=n * 10_000, valence=v, arousal=-0.5
            )
            for n, v in enumerate(valences)
        ],
        clock_offset_us=0,
        clock_uncertainty_us=500,
        received_ts_us=start_us + 200_000,
    )


def test_ratings_go_out_as_50_ms_means_per_rater_once_per_batch() -> None:
    view = SessionView(SESSION)
    view.add_rating(rating_batch("batch-0001", "r1", T0, [0.1] * 5 + [0.5] * 5))
    view.add_rating(rating_batch("batch-0001", "r1", T0, [0.1] * 10))  # re-delivered
    view.add_rating(rating_batch("batch-0002", "r2", T0, [-0.2, -0.4]))
    first, late = ClientCursor(), ClientCursor()
    update = view.update_for(first, T0)
    assert update is not None
    assert update["performers"]["ana"]["ratings"] == [
        {
            "rater_id": "r1",
            "rater_role": "observer",
            "mode": "valence_arousal",
            "label": None,
            "points": [[T0, 0.1, -0.5], [T0 + 50_000, 0.5, -0.5]],
        },
        {
            "rater_id": "r2",
            "rater_role": "observer",
            "mode": "valence_arousal",
            "label": None,
            "points": [[T0, -0.3, -0.5]],
        },
    ]
    assert view.rating_batches_repeated == 1
    assert view.update_for(first, T0) is None
    view.add_rating(rating_batch("batch-0003", "r1", T0 + 100_000, [0.9]))
    [news] = view.update_for(first, T0)["performers"]["ana"]["ratings"]  # type: ignore[index]
    assert (news["rater_id"], news["points"]) == ("r1", [[T0 + 100_000, 0.9, -0.5]])
    # A client that comes later gets everything still in the chart's span.
    every = view.update_for(late, T0)["performers"]["ana"]["ratings"]  # type: ignore[index]
    assert sum(len(group["points"]) for group in every) == 4
    # Points older than the chart's span go.
    view.add_rating(rating_batch("batch-0004", "r1", T0 + 60_000_000, [0.0]))
    fresh = view.update_for(ClientCursor(), T0)["performers"]["ana"]["ratings"]  # type: ignore[index]
    assert [group["points"] for group in fresh] == [[[T0 + 60_000_000, 0.0, -0.5]]]


def lag(rater: str, ts_us: int, lag_us: int, **applied: Any) -> records.RaterLag:
    correction = records.LagCorrection(
        method="consensus", lag_us=lag_us, spread_us=82_400, confidence=0.814, **applied
    )
    return records.RaterLag(
        ts_us=ts_us,
        session_id="s-1",
        rater_id=rater,
        rater_role="observer",
        applied=correction,
        estimates=[
            correction,
            records.LagCorrection(method="calibration", lag_us=310_600, confidence=0.5),
        ],
        evidence={"consensus": 2400, "calibration": 8},
    )


def test_the_lag_table_keeps_each_raters_newest_estimate() -> None:
    view = SessionView(SESSION)
    cursor = ClientCursor()
    view.add_rater_lag(lag("r2", T0, 500_000))
    view.add_rater_lag(lag("r1", T0, 420_400, relative=True))
    view.add_rater_lag(lag("r1", T0 + 5_000_000, 450_000))
    view.add_rater_lag(lag("r1", T0, 420_400, relative=True))  # an older one re-delivered
    view.add_rater_lag(lag("r1", T0, 1).model_copy(update={"session_id": "s-2"}))
    update = view.update_for(cursor, T0)
    assert update is not None
    table = update["raters"]
    assert [row["rater_id"] for row in table] == ["r1", "r2"]
    assert table[0] == {
        "rater_id": "r1",
        "rater_role": "observer",
        "ts_us": T0 + 5_000_000,
        "applied": {
            "method": "consensus",
            "lag_ms": 450,
            "spread_ms": 82,
            "confidence": 0.81,
            "relative": False,
            "evidence": 2400,
        },
        "estimates": [
            {
                "method": "consensus",
                "lag_ms": 450,
                "spread_ms": 82,
                "confidence": 0.81,
                "relative": False,
                "evidence": 2400,
            },
            {
                "method": "calibration",
                "lag_ms": 311,
                "spread_ms": 0,
                "confidence": 0.5,
                "relative": False,
                "evidence": 8,
            },
        ],
    }
    assert view.update_for(cursor, T0) is None  # sent once
    view.add_rater_lag(lag("r2", T0 + 1, 480_000, relative=True))
    table = view.update_for(cursor, T0)["raters"]  # type: ignore[index]
    assert (table[1]["applied"]["lag_ms"], table[1]["applied"]["relative"]) == (480, True)


def test_the_model_lane_flags_where_the_humans_agreed_and_the_model_did_not() -> None:
    view = SessionView(SESSION)
    cursor = ClientCursor()
    both = {"a": "laughter", "b": "laughter"}
    view.add_label(gap_windows.window("s-1", "ana", T0, both, "laughter"))
    view.add_label(gap_windows.window("s-1", "ana", T0 + 100_000, both, "anger"))
    view.add_label(gap_windows.window("s-1", "ana", T0 + 200_000, {"a": "anger"}, "anger"))
    view.add_label(gap_windows.window("s-1", "ana", T0 + 300_000, {}, with_model=False))
    # A neutral face where the humans agreed: read, no label of the vocabulary, a miss.
    view.add_label(gap_windows.window("s-1", "ana", T0 + 400_000, both, "(none)"))
    # No frame read: on the lane as nothing.
    view.add_label(gap_windows.window("s-1", "ana", T0 + 500_000, both, None))
    update = view.update_for(cursor, T0)
    assert update is not None
    model = gap_windows.MODEL
    assert update["models"] == [
        ["ana", T0, 100_000, model, "laughter", 0.62, False],
        ["ana", T0 + 100_000, 100_000, model, "anger", 0.62, True],
        ["ana", T0 + 200_000, 100_000, model, "anger", 0.62, False],  # one rater: no agreement
        ["ana", T0 + 400_000, 100_000, model, "(none)", 0.7, True],  # 1 - laughter's 0.3
        ["ana", T0 + 500_000, 100_000, model, None, None, False],
    ]
    # A revision without the model's reading takes it off the lane.
    view.add_label(gap_windows.window("s-1", "ana", T0, both, with_model=False, revision=1))
    assert view.update_for(cursor, T0)["models"] == [  # type: ignore[index]
        ["ana", T0, 100_000, model, None, None, False]
    ]


def test_the_gap_summary_goes_out_when_it_changes() -> None:
    view = SessionView(SESSION)
    cursor = ClientCursor()
    both = {"a": "laughter", "b": "laughter"}
    view.add_label(gap_windows.window("s-1", "ana", T0, both, "anger"))
    view.compute_gap()
    gap = view.update_for(cursor, T0)["gap"]  # type: ignore[index]
    assert list(gap["agreed"]) == [entry.label for entry in DEFAULT_VOCABULARY]
    assert gap["agreed"]["laughter"] == 1
    assert gap["models"][gap_windows.MODEL]["labels"]["laughter"]["missed"] == 1
    view.compute_gap()
    assert view.update_for(cursor, T0) is None  # nothing changed: nothing sent
    # A window that changes no count (nobody agreed) is no new gap.
    view.add_label(gap_windows.window("s-1", "ana", T0 + 100_000, {"a": "anger"}, "anger"))
    view.compute_gap()
    assert "gap" not in (view.update_for(cursor, T0) or {})


def test_cursors_at_the_same_place_have_the_same_key_and_move_independently() -> None:
    view = SessionView(SESSION)
    view.add_rating(rating_batch("batch-0001", "r1", T0, [0.1]))
    first, second = ClientCursor(), ClientCursor()
    assert view.update_for(first, T0) is not None
    assert first.key() != second.key()
    second.take(first)
    assert second.key() == first.key()
    view.add_rating(rating_batch("batch-0002", "r1", T0 + 100_000, [0.2]))
    assert view.update_for(second, T0) is not None
    assert first.ratings != second.ratings  # the copy did not share its dicts
