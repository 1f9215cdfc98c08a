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
from tests import tag_cases

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
