"""The dashboard's per-session view: cursors, coalescing, agreement."""

from __future__ import annotations

import numpy as np
import pytest

from dashboard.view import ClientCursor, SessionView, agreement_alpha
from streams import records, topics
from taggers.vocabulary import DEFAULT_VOCABULARY

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


def test_tags_are_kept_in_order_and_deduped() -> None:
    view = SessionView(SESSION)
    tag = records.TagEvent(
        ts_us=T0,
        session_id="s-1",
        performer_id="ana",
        tag_id="tag-00001",
        rater_id="dir",
        rater_role="director",
        action="point",
        label="laughter",
        span_us=500_000,
        timing=records.TagTiming(
            client_press_ts_us=T0, clock_offset_us=0, rtt_us=1, clock_uncertainty_us=1
        ),
        received_ts_us=T0,
    )
    view.add_tag(tag)
    view.add_tag(tag)
    cursor = ClientCursor()
    update = view.update_for(cursor, T0)
    assert update is not None
    assert [t["tag_id"] for t in update["tags"]] == ["tag-00001"]
    assert "timing" not in update["tags"][0]


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
