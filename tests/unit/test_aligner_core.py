"""The sans-I/O aligner: feature summaries, emission timing, tags, corrections, pruning."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import records
from streams.labels.aligner_core import AlignerConfig, LateTag, SessionAligner
from streams.labels.tag_rules import tag_intervals
from tests import tag_cases
from tests.tag_cases import tag

SID = "s-1"
W = 100_000
T0 = 1_700_000_000_000_000  # a multiple of W: window k starts at T0 + k*W
CONFIG = AlignerConfig()
# A performer with a microphone only: windows need not wait for a face stream to appear.
PROSODY_ONLY = AlignerConfig(awaited_streams=("prosody",))


def hop(
    ts_us: int,
    *,
    f0: float | None = 200.0,
    loudness: float = -20.0,
    performer: str = "alice",
    session: str = SID,
) -> records.ProsodyFrame:
    return records.ProsodyFrame(
        ts_us=ts_us,
        session_id=session,
        performer_id=performer,
        f0_hz=f0,
        voicing_probability=0.9 if f0 is not None else 0.1,
        voiced=f0 is not None,
        loudness_db=loudness,
    )


def face(
    ts_us: int,
    *,
    present: bool = True,
    blendshapes: dict[str, float] | None = None,
    pose: tuple[float, float, float] | None = None,
    performer: str = "alice",
) -> records.FaceFrame:
    return records.FaceFrame(
        ts_us=ts_us,
        session_id=SID,
        performer_id=performer,
        video_seq=ts_us // 33_333,
        face_present=present,
        blendshapes=blendshapes or {},
        head_pose=None
        if pose is None
        else records.HeadPose(yaw_deg=pose[0], pitch_deg=pose[1], roll_deg=pose[2]),
    )


def point(tag_id: str, ts_us: int, span_us: int = W, **kwargs: str) -> records.TagEvent:
    return tag(tag_id, "point", ts_us, span_us=span_us, **kwargs)


def feed_prosody(
    aligner: SessionAligner, start_us: int, end_us: int, now_us: int
) -> list[records.LabelWindow]:
    """One voiced hop every 10 ms in [start_us, end_us)."""
    out: list[records.LabelWindow] = []
    for ts in range(start_us, end_us, 10_000):
        out += aligner.add_prosody(hop(ts), now_us)
    return out


def windows_only(out: list[records.LabelWindow | LateTag]) -> list[records.LabelWindow]:
    windows = [item for item in out if isinstance(item, records.LabelWindow)]
    assert len(windows) == len(out)
    return windows


def by_start(windows: list[records.LabelWindow]) -> dict[int, records.LabelWindow]:
    return {(w.ts_us - T0) // W: w for w in windows}


def tag_ids(window: records.LabelWindow) -> list[str]:
    return [label.tag_id for rater in window.raters for label in rater.labels]


def test_window_summary_of_known_hops_and_frames() -> None:
    aligner = SessionAligner(SID, replace(CONFIG, top_blendshapes=2))
    aligner.add_prosody(hop(T0, f0=200.0, loudness=-20.0), T0)
    aligner.add_prosody(hop(T0 + 10_000, f0=220.0, loudness=-22.0), T0)
    aligner.add_prosody(hop(T0 + 20_000, f0=None, loudness=-41.0), T0)
    aligner.add_face(
        face(T0, blendshapes={"jawOpen": 0.5, "eyeBlinkLeft": 0.1, "smile": 0.9}, pose=(10, 0, -2)),
        T0,
    )
    aligner.add_face(
        face(T0 + 33_333, blendshapes={"jawOpen": 0.7, "eyeBlinkLeft": 0.3}, pose=(20, 2, 0)),
        T0,
    )
    aligner.add_face(face(T0 + 66_666, present=False), T0)
    # Both streams move past the window; it goes out once tag_wait has passed too.
    aligner.add_prosody(hop(T0 + W), T0)
    aligner.add_face(face(T0 + W), T0)
    [window] = aligner.tick(T0 + W + CONFIG.tag_wait_us)

    assert window.ts_us == T0
    assert window.window_us == W
    assert window.performer_id == "alice"
    features = window.features
    assert features.f0_mean_hz == 210.0
    assert features.loudness_mean_db == -27.667
    assert features.voiced_fraction == 0.6667
    assert features.face_present_fraction == 0.6667
    # Means over the two frames with a face: jawOpen 0.6, smile 0.45, eyeBlinkLeft 0.2.
    assert features.top_blendshapes == {"jawOpen": 0.6, "smile": 0.45}
    assert features.head_pose == records.HeadPose(yaw_deg=15.0, pitch_deg=1.0, roll_deg=-1.0)
    assert window.raters == []
    assert window.consensus is None
    assert window.consensus_agreement is None
    assert not window.correction
    assert window.revision == 0


def test_summary_of_silence_and_absent_face() -> None:
    aligner = SessionAligner(SID, CONFIG)
    aligner.add_prosody(hop(T0, f0=None, loudness=-60.0), T0)
    aligner.add_face(face(T0, present=False), T0)
    [window] = aligner.tick(T0 + W + CONFIG.feature_wait_us)
    assert window.features == records.WindowFeatures(
        f0_mean_hz=None,
        loudness_mean_db=-60.0,
        voiced_fraction=0.0,
        face_present_fraction=0.0,
        top_blendshapes={},
        head_pose=None,
        prosody_hops=1,
        face_frames=1,
    )


def test_skipped_face_frames_move_the_stream_on_without_counting_as_seen() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 2 * W, T0)
    aligner.add_face(face(T0), T0)
    skipped = face(T0 + 66_667).model_copy(update={"face_present": None, "skipped": "late"})
    assert aligner.add_face(skipped, T0) == []
    # Window 0 still waits for the face stream to pass its end...
    assert aligner.tick(T0 + W + CONFIG.tag_wait_us) == []
    # ...which a skipped frame does as well as an analysed one.
    later_skip = face(T0 + 133_333).model_copy(update={"face_present": None, "skipped": "late"})
    [window0] = aligner.add_face(later_skip, T0 + W + CONFIG.tag_wait_us)
    assert window0.ts_us == T0
    assert window0.features.face_present_fraction == 1.0  # only the analysed frame counts
    assert window0.features.face_frames_skipped == 1
    assert aligner.stats["face_frames_skipped"] == 2


def test_a_window_whose_video_was_all_skipped_still_exists_and_says_so() -> None:
    aligner = SessionAligner(SID, CONFIG)
    aligner.add_face(face(T0), T0)
    # Window 1 had one frame, skipped; no audio reached it (a hole in the stream).
    skipped = face(T0 + W + 10_000).model_copy(update={"face_present": None, "skipped": "late"})
    aligner.add_face(skipped, T0)
    aligner.add_face(face(T0 + 2 * W + 10_000), T0)
    feed_prosody(aligner, T0, T0 + W, T0)
    feed_prosody(aligner, T0 + 2 * W, T0 + 3 * W, T0)
    windows = by_start(aligner.tick(T0 + 3 * W + CONFIG.tag_wait_us))
    assert sorted(windows) == [0, 1]  # window 2 waits for prosody past its end
    assert windows[1].features == records.WindowFeatures(face_frames_skipped=1)


def test_emission_waits_for_both_streams_while_they_deliver_then_gives_up_on_a_stalled_one() -> (
    None
):
    aligner = SessionAligner(SID, CONFIG)
    end0 = T0 + W
    feed_prosody(aligner, T0, T0 + 3 * W, T0)
    aligner.add_face(face(T0 + 50_000), T0)
    # Prosody is past window 0 but face is not: the window waits for face...
    assert aligner.tick(end0 + CONFIG.tag_wait_us) == []
    # ...also far behind (a processor catching up), as long as face keeps delivering...
    later = T0 + 10_000_000
    assert aligner.add_face(face(T0 + 60_000), later) == []
    # ...until a face frame at or after the window end arrives.
    [window0] = aligner.add_face(face(T0 + 120_000), later + 1)
    assert window0.ts_us == T0
    assert window0.features.face_present_fraction == 1.0
    # Window 1: face stops delivering at 0.12 s; feature_wait after its last delivery the
    # window goes out without it.
    assert aligner.tick(later + 1 + CONFIG.feature_wait_us - 1) == []
    window1, window2 = aligner.tick(later + 1 + CONFIG.feature_wait_us)
    assert (window1.ts_us, window2.ts_us) == (T0 + W, T0 + 2 * W)
    assert window1.features.voiced_fraction == 1.0
    assert window1.features.face_present_fraction == 1.0  # the frame at 0.12 s
    assert window2.features.face_present_fraction is None
    assert aligner.stats["windows_emitted"] == 3


def test_window_waits_tag_wait_even_when_features_are_complete() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    feed_prosody(aligner, T0, T0 + 2 * W, T0)
    assert aligner.tick(T0 + W + CONFIG.tag_wait_us - 1) == []
    # A tag that arrives during the wait is in revision 0, not a correction.
    assert aligner.add_tag(point("tag-p001", T0 + 50_000), T0 + W + 50_000) == []
    [window] = aligner.tick(T0 + W + CONFIG.tag_wait_us)
    assert tag_ids(window) == ["tag-p001"]
    assert not window.correction


def test_every_window_between_captured_instants_goes_out_and_says_what_it_lacks() -> None:
    aligner = SessionAligner(SID, CONFIG)
    aligner.add_prosody(hop(T0), T0)
    aligner.add_prosody(hop(T0 + 5 * W), T0)
    windows = aligner.tick(T0 + 20 * W)
    # Windows 1-4 had no audio (an outage): they exist, empty, and say so; the performer
    # never had a face stream; the stream stopped inside window 5, so it went out late.
    assert [w.ts_us for w in windows] == [T0 + k * W for k in range(6)]
    assert windows[0].missing == {"face": "absent"}
    assert windows[0].features.prosody_hops == 1
    # No revision of it can come after its end + the grace: then what one holds is final.
    assert windows[0].final_after_us == T0 + W + CONFIG.grace_us
    for window in windows[1:5]:
        assert window.missing == {"prosody": "no_media", "face": "absent"}
        assert window.features == records.WindowFeatures()
    assert windows[5].missing == {"prosody": "late", "face": "absent"}
    assert aligner.stats["windows_without_media"] == 4
    assert aligner.stats["windows_incomplete"] == 6


def test_windows_stop_at_the_last_captured_instant() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    feed_prosody(aligner, T0, T0 + 3 * W, T0)
    windows = aligner.tick(T0 + 3_600_000_000)
    windows += aligner.tick(T0 + 7_200_000_000)
    assert [w.ts_us for w in windows] == [T0, T0 + W, T0 + 2 * W]


def test_a_long_gap_goes_out_in_bounded_steps() -> None:
    config = replace(PROSODY_ONLY, max_windows_per_step=500)
    aligner = SessionAligner(SID, config)
    aligner.add_prosody(hop(T0), T0)
    minutes = 3 * 60_000_000  # 1800 windows
    steps = [aligner.add_prosody(hop(T0 + minutes), T0 + minutes)]
    now = T0 + minutes + 10 * W
    while steps[-1]:
        steps.append(aligner.tick(now))
        now += 20_000
    assert max(len(step) for step in steps) <= 500
    windows = [w for step in steps for w in step]
    assert [w.ts_us for w in windows] == [T0 + k * W for k in range(minutes // W + 1)]
    assert all(w.missing == {"prosody": "no_media", "face": "absent"} for w in windows[1:-1])


def test_a_stream_silent_past_the_wait_leaves_windows_late_and_its_features_revise_them() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 10 * W, T0)
    for k in range(3):
        aligner.add_face(face(T0 + k * W), T0)
    now = T0 + CONFIG.feature_wait_us + 10 * W
    sent = by_start(aligner.tick(now))
    # Face stopped in window 2: windows 2-9 went out without it, waiting no longer (and
    # the audio stopped in window 9, long enough ago to be given up on as well).
    assert sorted(sent) == list(range(10))
    assert sent[1].missing == {}
    assert all(sent[k].missing == {"face": "late"} for k in range(2, 9))
    assert sent[9].missing == {"prosody": "late", "face": "late"}
    assert sent[5].features.face_present_fraction is None
    # The late frames come: each window they complete goes out again, once the stream
    # is past it, with the face fields and nothing missing.
    late = [face(T0 + k * W + 50_000) for k in range(3, 6)]
    revised: list[records.LabelWindow] = []
    for frame in late:
        revised += aligner.add_face(frame, now + W)
        assert not aligner.passed("alice", frame.ts_us)
    revised += aligner.tick(now + W)
    assert [(w.ts_us - T0) // W for w in revised] == [2, 3, 4]
    # Window 2 had all its frames: the stream caught up, so it is no longer late.
    assert revised[0].features.face_frames == 1
    revised = revised[1:]
    assert all(w.missing == {} and w.revision == 1 and w.correction for w in revised)
    assert revised[0].features.face_present_fraction == 1.0
    assert revised[0].features.face_frames == 1
    assert revised[0].features.f0_mean_hz == sent[3].features.f0_mean_hz
    # The stream is silent again: window 5 goes out with what came, still late.
    [last] = aligner.tick(now + W + CONFIG.feature_wait_us)
    assert (last.ts_us - T0) // W == 5
    assert last.missing == {"face": "late"}
    assert last.features.face_frames == 1
    assert aligner.passed("alice", late[-1].ts_us)
    stats = aligner.stats
    assert stats["late_features"] == 3
    assert stats["late_features_revised"] == 3
    assert stats["late_features_lost"] == 0
    assert stats["feature_revisions"] == 4


def test_late_features_past_the_grace_are_counted_lost() -> None:
    config = replace(CONFIG, grace_us=1_000_000)
    aligner = SessionAligner(SID, config)
    feed_prosody(aligner, T0, T0 + 10 * W, T0)
    aligner.add_face(face(T0), T0)
    aligner.tick(T0 + 10 * W + CONFIG.feature_wait_us)
    assert aligner.add_face(face(T0 + 3 * W), T0 + 5_000_000) == []
    assert aligner.stats["late_features_lost"] == 1
    assert aligner.passed("alice", T0 + 3 * W)


def test_a_stream_complete_in_a_window_takes_no_stragglers() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    feed_prosody(aligner, T0, T0 + 5 * W, T0)
    aligner.tick(T0 + 4 * W + CONFIG.tag_wait_us)
    assert aligner.add_prosody(hop(T0 + 15_000), T0 + 5 * W) == []
    assert aligner.stats["late_features_lost"] == 1


def test_a_performer_who_left_is_waited_for_briefly_and_their_windows_say_ended() -> None:
    config = replace(CONFIG, feature_wait_us=10_000_000)
    aligner = SessionAligner(SID, config)
    feed_prosody(aligner, T0, T0 + 5 * W + 50_000, T0)
    for k in range(6):
        aligner.add_face(face(T0 + k * W), T0)
    left = T0 + 5 * W + 60_000
    aligner.set_presence("alice", False, left, T0 + 6 * W)
    # Without the leave the windows would wait 10 s of silence for the streams.
    early = aligner.tick(T0 + config.ended_wait_us - W)
    assert [(w.ts_us - T0) // W for w in early] == [0, 1, 2, 3, 4]
    [last] = aligner.tick(T0 + config.ended_wait_us + W)
    assert (last.ts_us - T0) // W == 5
    # The window holds the leave: the streams ended in it, so it has all there was.
    assert last.missing == {}
    # A tag after the leave still goes out, in windows that say the streams had ended.
    tagged = point("tag-p001", T0 + 8 * W + 50_000, span_us=10_000)
    after = windows_only(aligner.add_tag(tagged, T0 + 30 * W))
    after += aligner.tick(T0 + config.ended_wait_us + 40 * W)
    assert [(w.ts_us - T0) // W for w in after] == [6, 7, 8]
    assert all(w.missing == {"prosody": "ended", "face": "ended"} for w in after)
    assert after[-1].consensus == "laughter"
    # Back in the call: the streams are waited for again.
    aligner.set_presence("alice", True, T0 + 50 * W, T0 + 50 * W)
    feed_prosody(aligner, T0 + 50 * W, T0 + 52 * W, T0 + 50 * W)
    assert aligner.tick(T0 + 50 * W + CONFIG.tag_wait_us) == []


def test_windows_with_features_but_no_labels_are_emitted() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 5 * W, T0)
    windows = aligner.tick(T0 + 10 * W)
    assert [w.ts_us for w in windows] == [T0 + k * W for k in range(5)]
    assert all(w.raters == [] and w.consensus is None for w in windows)


def test_point_tag_lands_in_the_windows_it_overlaps() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 6 * W, T0)
    # Span 200 ms around 0.25 s: [0.15, 0.35) overlaps windows 1, 2 and 3.
    aligner.add_tag(point("tag-p001", T0 + 250_000, span_us=200_000, label="laughter"), T0)
    windows = by_start(aligner.tick(T0 + 10 * W))
    labelled = {k for k, w in windows.items() if w.raters}
    assert labelled == {1, 2, 3}
    window = windows[2]
    assert window.raters == [
        records.RaterLabels(
            rater_id="dora",
            rater_role="director",
            labels=[records.ActiveLabel(label="laughter", intensity="normal", tag_id="tag-p001")],
        )
    ]
    assert window.consensus == "laughter"
    assert window.consensus_agreement == 1.0


def test_tag_alone_starts_the_performer_and_labelled_windows_go_out_without_features() -> None:
    aligner = SessionAligner(SID, CONFIG)
    aligner.add_tag(point("tag-p001", T0 + 150_000, span_us=200_000), T0)
    windows = aligner.tick(T0 + 10 * W)
    # [0.05 s, 0.25 s) overlaps windows 0, 1 and 2.
    assert [w.ts_us for w in windows] == [T0, T0 + W, T0 + 2 * W]
    assert all(w.features == records.WindowFeatures() for w in windows)


def test_hold_is_active_from_onset_until_offset_and_corrects_windows_sent_meanwhile() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 10 * W, T0)
    aligner.add_tag(tag("tag-h001", "onset", T0 + 150_000), T0)
    # The key is still down: windows 1..5 go out with the open hold.
    sent = by_start(aligner.tick(T0 + 6 * W + CONFIG.tag_wait_us))
    assert sorted(sent) == [0, 1, 2, 3, 4, 5]
    assert [k for k, w in sent.items() if tag_ids(w) == ["tag-h001"]] == [1, 2, 3, 4, 5]
    # Key-up at 0.35 s arrives now: windows 4 and 5 no longer hold the label.
    out = windows_only(
        aligner.add_tag(tag("tag-h002", "offset", T0 + 350_000, onset="tag-h001"), T0 + 7 * W)
    )
    corrected = by_start([w for w in out if w.correction])
    assert sorted(corrected) == [4, 5]
    assert all(w.revision == 1 and w.raters == [] for w in corrected.values())
    assert by_start(aligner.tick(T0 + 20 * W))[6].raters == []
    assert aligner.stats["corrections"] == 2


def test_open_hold_ends_at_max_hold() -> None:
    aligner = SessionAligner(SID, replace(CONFIG, max_hold_us=3 * W))
    feed_prosody(aligner, T0, T0 + 6 * W, T0)
    aligner.add_tag(tag("tag-h001", "onset", T0), T0)
    windows = by_start(aligner.tick(T0 + 10 * W))
    assert [k for k, w in windows.items() if w.raters] == [0, 1, 2]


def test_offset_before_its_onset_is_paired_when_the_onset_arrives() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 6 * W, T0)
    assert aligner.add_tag(tag("tag-h002", "offset", T0 + 250_000, onset="tag-h001"), T0) == []
    aligner.add_tag(tag("tag-h001", "onset", T0 + 50_000), T0)
    windows = by_start(aligner.tick(T0 + 10 * W))
    assert [k for k, w in windows.items() if w.raters] == [0, 1, 2]


def test_offset_of_another_rater_is_ignored() -> None:
    aligner = SessionAligner(SID, replace(CONFIG, max_hold_us=4 * W))
    feed_prosody(aligner, T0, T0 + 6 * W, T0)
    aligner.add_tag(tag("tag-h001", "onset", T0), T0)
    aligner.add_tag(tag("tag-h002", "offset", T0 + W, onset="tag-h001", rater="olga"), T0)
    windows = by_start(aligner.tick(T0 + 10 * W))
    assert [k for k, w in windows.items() if w.raters] == [0, 1, 2, 3]
    assert aligner.stats["ignored_offsets"] == 1


def test_undo_removes_a_sent_point_as_a_correction() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 4 * W, T0)
    aligner.add_tag(point("tag-p001", T0 + 150_000), T0)
    [labelled] = [w for w in aligner.tick(T0 + 10 * W) if w.raters]
    # Someone else cannot undo dora's tag.
    foreign = tag("tag-u001", "undo", T0 + 300_000, undoes="tag-p001", rater="olga")
    assert aligner.add_tag(foreign, T0 + 10 * W) == []
    assert aligner.stats["ignored_undos"] == 1
    out = aligner.add_tag(tag("tag-u002", "undo", T0 + 300_000, undoes="tag-p001"), T0 + 10 * W)
    [corrected] = windows_only(out)
    assert corrected.ts_us == labelled.ts_us
    assert corrected.correction
    assert corrected.revision == 1
    assert corrected.raters == []
    assert corrected.consensus is None
    assert corrected.features == labelled.features


def test_undo_of_either_end_removes_the_whole_hold() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 5 * W, T0)
    aligner.add_tag(tag("tag-h001", "onset", T0 + W), T0)
    aligner.add_tag(tag("tag-h002", "offset", T0 + 3 * W, onset="tag-h001"), T0)
    aligner.add_tag(tag("tag-u001", "undo", T0 + 3 * W, undoes="tag-h002"), T0)
    assert all(w.raters == [] for w in aligner.tick(T0 + 10 * W))
    assert aligner.stats["undos"] == 1
    assert aligner.stats["marks"] == 0


def test_an_undo_that_overtakes_its_tag_withdraws_it_in_advance() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 5 * W, T0)
    assert aligner.add_tag(tag("tag-u001", "undo", T0 + W, undoes="tag-p001"), T0) == []
    aligner.add_tag(tag("tag-p001", "point", T0 + W, span_us=W), T0)
    windows = aligner.tick(T0 + 10 * W)
    assert windows
    assert all(w.raters == [] for w in windows)
    assert aligner.stats["undos"] == 1
    assert aligner.stats["marks"] == 0


def test_a_foreign_undo_ahead_of_the_owners_does_not_shadow_it() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 5 * W, T0)
    # Both undos overtake the tap; olga's is not hers to make, dora's is.
    aligner.add_tag(tag("tag-u009", "undo", T0 + 2 * W, undoes="tag-p001", rater="olga"), T0)
    aligner.add_tag(tag("tag-u001", "undo", T0 + 2 * W, undoes="tag-p001"), T0)
    aligner.add_tag(point("tag-p001", T0 + W + 50_000), T0)
    windows = aligner.tick(T0 + 10 * W)
    assert windows
    assert all(w.raters == [] for w in windows)
    assert aligner.stats["marks"] == 0


def test_an_undo_that_overtakes_its_offset_retracts_the_whole_hold() -> None:
    aligner = SessionAligner(SID, replace(CONFIG, max_hold_us=4 * W))
    feed_prosody(aligner, T0, T0 + 6 * W, T0)
    aligner.add_tag(tag("tag-h001", "onset", T0), T0)
    sent = by_start(aligner.tick(T0 + 10 * W))
    assert [k for k, w in sent.items() if w.raters] == [0, 1, 2, 3], "open: the whole limit"
    assert aligner.add_tag(tag("tag-u001", "undo", T0 + 3 * W, undoes="tag-h002"), T0) == []
    # The key-up it undoes arrives last: the hold is gone, not reopened until the limit.
    out = windows_only(
        aligner.add_tag(tag("tag-h002", "offset", T0 + 2 * W, onset="tag-h001"), T0 + 10 * W)
    )
    assert sorted(by_start(out)) == [0, 1, 2, 3]
    assert all(w.raters == [] and w.correction for w in out)
    assert aligner.stats["marks"] == 0


def test_of_two_offsets_the_earlier_ends_the_hold_whichever_came_first() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 6 * W, T0)
    aligner.add_tag(tag("tag-h001", "onset", T0), T0)
    aligner.add_tag(tag("tag-h002", "offset", T0 + 4 * W, onset="tag-h001"), T0)
    sent = by_start(aligner.tick(T0 + 10 * W))
    assert [k for k, w in sent.items() if w.raters] == [0, 1, 2, 3]
    # A second key-up of the same hold, stamped earlier (a re-sent release): it counts.
    late_up = tag("tag-h003", "offset", T0 + 2 * W, onset="tag-h001")
    out = windows_only(aligner.add_tag(late_up, T0 + 10 * W))
    assert sorted(by_start(out)) == [2, 3]
    assert all(w.raters == [] and w.correction for w in out)
    # A later one changes nothing.
    later_up = tag("tag-h004", "offset", T0 + 5 * W, onset="tag-h001")
    assert aligner.add_tag(later_up, T0 + 10 * W) == []


# ---------------------------------------------------------------- one rule, in any order

# Windows go out as the tags come in (grace covers everything): a tag that comes after
# its windows went out corrects them.
ORDER_CONFIG = replace(
    CONFIG,
    tag_wait_us=0,
    feature_wait_us=0,
    awaited_streams=(),
    grace_us=10**12,
    max_hold_us=tag_cases.MAX_HOLD_US,
)


def labels_as_they_come(
    tags: Iterable[records.TagEvent], config: AlignerConfig, step_us: int
) -> dict[tuple[str, int], set[str]]:
    """The tag_ids in the newest revision of every window, tags fed in the given order
    while the clock moves on step_us after each."""
    aligner = SessionAligner(SID, config)
    newest: dict[tuple[str, int], records.LabelWindow] = {}

    def keep(out: Iterable[records.LabelWindow | LateTag]) -> None:
        for window in out:
            assert isinstance(window, records.LabelWindow), window
            identity = (window.performer_id, window.ts_us)
            if identity not in newest or window.revision > newest[identity].revision:
                newest[identity] = window

    now = 0
    for one in tags:
        keep(aligner.add_tag(one, now))
        now += step_us
        keep(aligner.tick(now))
    keep(aligner.tick(now + 10**10))
    return {identity: set(tag_ids(window)) for identity, window in newest.items()}


def labels_by_the_rule(
    tags: Iterable[records.TagEvent], config: AlignerConfig
) -> dict[tuple[str, int], set[str]]:
    """The windows each point or hold overlaps, by streams.labels.tag_rules."""
    width = config.window_us
    expected: dict[tuple[str, int], set[str]] = {}
    for interval in tag_intervals(tags, max_hold_us=config.max_hold_us):
        for index in range(interval.start_us // width, (interval.end_us - 1) // width + 1):
            expected.setdefault((interval.performer_id, index * width), set()).add(interval.tag_id)
    return expected


def assert_same_labels(
    found: dict[tuple[str, int], set[str]], expected: dict[tuple[str, int], set[str]]
) -> None:
    for identity in sorted(set(found) | set(expected)):
        assert found.get(identity, set()) == expected.get(identity, set()), identity
    assert set(expected) <= set(found), "every labelled window went out"


@pytest.mark.parametrize("case", tag_cases.CASES, ids=lambda case: case.name)
def test_the_windows_of_each_tag_case_follow_the_rule_in_every_order(case: tag_cases.Case) -> None:
    expected = labels_by_the_rule(case.tags, ORDER_CONFIG)
    for order in itertools.permutations(case.tags):
        assert_same_labels(labels_as_they_come(order, ORDER_CONFIG, 1_000_000), expected)


@settings(max_examples=150, deadline=None)
@given(
    tags=tag_cases.tag_sets(horizon_us=4_000_000, max_span_us=7_000_000),
    data=st.data(),
)
def test_the_windows_follow_the_rule_whatever_order_tags_come_in(
    tags: list[records.TagEvent], data: st.DataObject
) -> None:
    config = replace(ORDER_CONFIG, max_hold_us=3_000_000)
    order = data.draw(st.permutations(tags))
    step_us = data.draw(st.sampled_from([0, 50_000, 300_000]))
    found = labels_as_they_come(order, config, step_us)
    assert_same_labels(found, labels_by_the_rule(tags, config))


def test_late_tag_within_grace_corrects_the_window() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 5 * W, T0)
    first = by_start(aligner.tick(T0 + 10 * W))
    assert all(w.raters == [] for w in first.values())
    out = aligner.add_tag(point("tag-p001", T0 + 250_000, span_us=50_000), T0 + 20_000_000)
    [corrected] = windows_only(out)
    assert corrected.ts_us == T0 + 2 * W
    assert corrected.correction
    assert corrected.revision == 1
    assert tag_ids(corrected) == ["tag-p001"]
    assert corrected.features == first[2].features
    # A second late tag on the same window is revision 2.
    out = aligner.add_tag(point("tag-p002", T0 + 250_000, rater="olga"), T0 + 20_000_000)
    [again] = windows_only(out)
    assert again.revision == 2
    assert tag_ids(again) == ["tag-p001", "tag-p002"]


def test_late_tag_on_a_window_without_media_revises_it() -> None:
    aligner = SessionAligner(SID, CONFIG)
    aligner.add_prosody(hop(T0), T0)
    aligner.add_prosody(hop(T0 + 5 * W), T0)
    aligner.tick(T0 + 10 * W)
    [window] = windows_only(aligner.add_tag(point("tag-p001", T0 + 250_000), T0 + 10 * W))
    assert window.ts_us == T0 + 2 * W
    assert window.correction
    assert window.revision == 1
    assert window.features == records.WindowFeatures()
    assert window.missing == {"prosody": "no_media", "face": "absent"}


def test_tag_beyond_grace_is_a_late_tag_and_still_deduplicated() -> None:
    aligner = SessionAligner(SID, replace(CONFIG, grace_us=1_000_000))
    feed_prosody(aligner, T0, T0 + 5 * W, T0)
    aligner.tick(T0 + 10 * W)
    late = point("tag-p001", T0 + 50_000)
    [result] = aligner.add_tag(late, T0 + 5_000_000)
    assert isinstance(result, LateTag)
    assert result.tag == late
    assert "before now" in result.reason
    assert aligner.stats["late_tags"] == 1
    assert aligner.add_tag(late, T0 + 5_000_000) == []
    assert aligner.stats["duplicate_tags"] == 1


def test_tag_partly_beyond_grace_corrects_only_the_windows_within_grace() -> None:
    aligner = SessionAligner(SID, replace(CONFIG, grace_us=1_000_000))
    feed_prosody(aligner, T0, T0 + 30 * W, T0)
    aligner.tick(T0 + 40 * W)
    # Span [0, 2 s): windows ending at or after now - grace = 1.0 s are windows 9..19.
    out = aligner.add_tag(point("tag-p001", T0 + 1_000_000, span_us=2_000_000), T0 + 2 * W * 10)
    corrected = windows_only(out)
    assert [(w.ts_us - T0) // W for w in corrected] == list(range(9, 20))


def test_duplicate_tag_id_is_stored_once() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 3 * W, T0)
    aligner.add_tag(point("tag-p001", T0 + 150_000), T0)
    assert aligner.add_tag(point("tag-p001", T0 + 150_000), T0) == []
    windows = by_start(aligner.tick(T0 + 10 * W))
    assert tag_ids(windows[1]) == ["tag-p001"]
    assert aligner.stats["duplicate_tags"] == 1
    assert aligner.stats["tags"] == 1


def test_consensus_counts_each_rater_once_per_label() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 3 * W, T0)
    at = T0 + 150_000
    aligner.add_tag(point("tag-d001", at, rater="dora"), T0)
    aligner.add_tag(point("tag-d002", at, rater="dora"), T0)
    aligner.add_tag(point("tag-d003", at, rater="dora", label="hesitation"), T0)
    aligner.add_tag(point("tag-d004", at, rater="dora", label="hesitation"), T0)
    aligner.add_tag(point("tag-d005", at, rater="dora", label="hesitation"), T0)
    aligner.add_tag(point("tag-o001", at, rater="olga"), T0)
    aligner.add_tag(point("tag-p001", at, rater="pete", label="anger"), T0)
    window = by_start(aligner.tick(T0 + 10 * W))[1]
    # laughter: dora + olga; hesitation: dora only (three tags); anger: pete.
    assert window.consensus == "laughter"
    assert window.consensus_agreement == 0.6667
    assert [r.rater_id for r in window.raters] == ["dora", "olga", "pete"]
    assert window.raters[1].rater_role == "observer"


def test_consensus_tie_is_none() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 3 * W, T0)
    aligner.add_tag(point("tag-d001", T0 + 150_000, rater="dora"), T0)
    aligner.add_tag(point("tag-o001", T0 + 150_000, rater="olga", label="hesitation"), T0)
    window = by_start(aligner.tick(T0 + 10 * W))[1]
    assert len(window.raters) == 2
    assert window.consensus is None
    assert window.consensus_agreement is None


def test_every_tag_id_appears_once_in_every_window_it_overlaps() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 10 * W, T0)
    spans = {
        "tag-a001": (T0 + 50_000, 300_000),
        "tag-a002": (T0 + 120_000, 100_000),  # same rater, same label, overlapping
        "tag-a003": (T0 + 400_000, 10_000),
        "tag-a004": (T0 + 700_000, 0),  # a bare tap still marks its window
    }
    for tag_id, (ts, span) in spans.items():
        aligner.add_tag(point(tag_id, ts, span_us=span), T0)
    aligner.add_tag(tag("tag-h001", "onset", T0 + 250_000), T0)
    aligner.add_tag(tag("tag-h002", "offset", T0 + 550_000, onset="tag-h001"), T0)
    windows = by_start(aligner.tick(T0 + 20 * W))
    # tag-a001 reaches back before the first hop: the performer starts a window earlier.
    assert min(windows) == -1
    expected: dict[int, list[str]] = {k: [] for k in range(-1, 10)}
    intervals = {
        tag_id: (ts - span // 2, ts - span // 2 + max(span, 1))
        for tag_id, (ts, span) in spans.items()
    }
    intervals["tag-h001"] = (T0 + 250_000, T0 + 550_000)
    for tag_id, (start, end) in intervals.items():
        for k in range(-1, 10):
            if start < T0 + (k + 1) * W and end > T0 + k * W:
                expected[k].append(tag_id)
    for k, window in windows.items():
        assert sorted(tag_ids(window)) == sorted(expected[k]), k
    assert sum(len(ids) for ids in expected.values()) == sum(
        len(tag_ids(w)) for w in windows.values()
    )


def test_performers_are_aligned_independently() -> None:
    aligner = SessionAligner(SID, CONFIG)
    aligner.add_prosody(hop(T0, performer="alice"), T0)
    aligner.add_prosody(hop(T0 + 3 * W, performer="bob"), T0)
    aligner.add_tag(point("tag-p001", T0 + 3 * W + 50_000, performer="bob"), T0)
    windows = aligner.tick(T0 + 10 * W)
    assert [(w.performer_id, w.ts_us) for w in windows] == [("alice", T0), ("bob", T0 + 3 * W)]
    assert tag_ids(windows[1]) == ["tag-p001"]
    aligner.forget_performer("bob")
    assert aligner.stats["performers"] == 1


def test_late_and_duplicate_features_are_dropped() -> None:
    aligner = SessionAligner(SID, CONFIG)
    aligner.add_prosody(hop(T0, loudness=-10.0), T0)
    aligner.add_prosody(hop(T0, loudness=-10.0), T0)
    aligner.add_prosody(hop(T0 + 10_000, loudness=-30.0), T0)
    [window] = aligner.tick(T0 + 10 * W)
    assert window.features.loudness_mean_db == -20.0
    assert aligner.add_prosody(hop(T0 + 20_000), T0 + 10 * W) == []
    assert aligner.stats["duplicate_features"] == 1
    assert aligner.stats["late_features"] == 1


def test_records_of_other_sessions_are_ignored() -> None:
    aligner = SessionAligner(SID, CONFIG)
    assert aligner.add_prosody(hop(T0, session="s-2"), T0) == []
    assert aligner.add_face(face(T0).model_copy(update={"session_id": "s-2"}), T0) == []
    assert aligner.add_tag(point("tag-p001", T0, session="s-2"), T0) == []
    assert aligner.tick(T0 + 10 * W) == []
    assert aligner.stats["foreign_records"] == 3
    assert aligner.stats["performers"] == 0


def test_state_stays_bounded_over_a_long_run() -> None:
    config = replace(CONFIG, grace_us=2_000_000, max_hold_us=1_000_000)
    aligner = SessionAligner(SID, config)
    seconds = 120
    emitted = 0
    for ms in range(0, seconds * 1000, 10):
        now = T0 + ms * 1000
        emitted += len(aligner.add_prosody(hop(now), now))
        if ms % 40 == 0:
            emitted += len(aligner.add_face(face(now, blendshapes={"jawOpen": 0.5}), now))
        if ms % 1000 == 0:
            aligner.add_tag(point(f"tag-p{ms:06d}", now), now)
            aligner.add_tag(tag(f"tag-h{ms:06d}", "onset", now, rater="olga"), now)
        emitted += len(aligner.tick(now))
    stats = aligner.stats
    assert emitted == stats["windows_emitted"] >= seconds * 10 - 10
    window_budget = (config.grace_us + config.feature_wait_us) // W + 5
    assert stats["kept_windows"] <= window_budget
    assert stats["buffered_windows"] <= 2 * (config.feature_wait_us // W + 2)
    # Tags live for about ts + max_hold + grace: about 3 s of two tags a second.
    assert stats["remembered_tags"] <= 2 * 4
    assert stats["marks"] <= 2 * 4
    assert stats["indexed_windows"] <= window_budget + config.max_hold_us // W


# ---------------------------------------------------------------- when input may be acked


def test_an_instant_has_passed_once_its_window_went_out() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    assert aligner.passed("alice", T0), "nothing kept for a performer: nothing to lose"
    aligner.add_prosody(hop(T0 + 10_000), T0)
    assert not aligner.passed("alice", T0 + 10_000)
    feed_prosody(aligner, T0 + 20_000, T0 + 3 * W, T0 + 3 * W)
    aligner.tick(T0 + 3 * W + CONFIG.tag_wait_us + 1)
    assert aligner.passed("alice", T0 + 10_000)
    assert aligner.passed("alice", T0 + W + 99_999)
    assert not aligner.passed("alice", T0 + 2 * W + CONFIG.tag_wait_us)


class FakeEvent:
    def __init__(self) -> None:
        self.acked = False

    def ack(self) -> bool:
        self.acked = True
        return True


def test_held_events_are_acked_only_when_their_windows_are_out() -> None:
    from streams.labels.aligner import HeldEvents

    aligner = SessionAligner(SID, CONFIG)
    held = HeldEvents(aligner)
    tapped = point("tap-0001", T0 + W + 50_000, span_us=2 * W)
    aligner.add_tag(tapped, T0)
    tap_event, hop_event = FakeEvent(), FakeEvent()
    held.hold("alice", aligner.settles_at_us(tapped), tap_event)
    aligner.add_prosody(hop(T0 + 10_000), T0)
    held.hold("alice", T0 + 10_000, hop_event)
    assert held.release() == 0
    assert len(held) == 2
    # Windows 0 and 1 out: the hop's window passed, the tap still reaches into window 2-3.
    feed_prosody(aligner, T0 + 20_000, T0 + 2 * W + 10_000, T0)
    aligner.tick(T0 + 2 * W + CONFIG.tag_wait_us)
    assert held.release() == 0, "the tap holds back its performer's later events"
    assert not hop_event.acked
    feed_prosody(aligner, T0 + 2 * W + 10_000, T0 + 6 * W, T0)
    aligner.tick(T0 + 6 * W + CONFIG.tag_wait_us)
    assert held.release() == 2
    assert tap_event.acked
    assert hop_event.acked


def test_holds_and_undos_settle_no_sooner_than_the_longest_hold() -> None:
    onset = tag("hold-0001", "onset", T0)
    undo = tag("undo-0001", "undo", T0 + W, undoes="hold-0001")
    offset = tag("hold-0002", "offset", T0 + 3 * W, onset="hold-0001")
    aligner = SessionAligner(SID, CONFIG)
    assert aligner.settles_at_us(onset) == T0 + CONFIG.max_hold_us
    assert aligner.settles_at_us(undo) == T0 + W + CONFIG.max_hold_us
    assert aligner.settles_at_us(offset) == T0 + 3 * W + CONFIG.max_hold_us
    # A tap reaches half its span ahead; a huge span is capped like a hold.
    assert aligner.settles_at_us(point("tap-0002", T0, span_us=4 * W)) == T0 + 2 * W
    huge = point("tap-0003", T0, span_us=10 * CONFIG.max_hold_us)
    assert aligner.settles_at_us(huge) == T0 - CONFIG.max_hold_us // 2 + CONFIG.max_hold_us


def test_a_restarted_aligner_takes_back_what_was_emitted_and_keeps_every_tag() -> None:
    first = SessionAligner(SID, PROSODY_ONLY)
    early = point("tap-early", T0 + W + 50_000, span_us=W)  # window 1 only
    long = point("tap-long", T0 + 3 * W, span_us=4 * W)  # windows 1-4
    emitted: list[records.LabelWindow] = []
    emitted += windows_only(first.add_tag(early, T0))
    emitted += windows_only(first.add_tag(long, T0))
    emitted += feed_prosody(first, T0, T0 + 3 * W + 10_000, T0)
    emitted += first.tick(T0 + 3 * W + CONFIG.tag_wait_us)
    assert {(w.ts_us - T0) // W for w in emitted} == {0, 1, 2}
    # The first instance dies. Its successor reads its windows back, then gets what was
    # not committed: the long tap (windows 3-4 not out) and the hops of windows 2-5.
    second = SessionAligner(SID, PROSODY_ONLY)
    assert second.restore(emitted, T0 + 4 * W) == 3
    assert second.add_tag(long, T0 + 4 * W) == [], "the same labels: nothing re-emitted"
    again = feed_prosody(second, T0 + 2 * W, T0 + 6 * W + 10_000, T0 + 4 * W)
    again += second.tick(T0 + 6 * W + CONFIG.tag_wait_us)
    by_window = by_start(again)
    assert sorted(by_window) == [3, 4, 5], "passed windows are not emitted anew"
    assert [a.tag_id for r in by_window[3].raters for a in r.labels] == ["tap-long"]
    assert not second.passed("alice", T0 + 6 * W)
    # A late tag on window 1 corrects it with the next revision and keeps both taps there.
    late = point("tap-late0", T0 + W + 50_000, span_us=W, rater="obs-2")
    corrected = windows_only(second.add_tag(late, T0 + 7 * W))
    assert [(w.ts_us - T0) // W for w in corrected] == [1]
    assert corrected[0].revision == 1
    shown = {a.tag_id for r in corrected[0].raters for a in r.labels}
    assert shown == {"tap-early", "tap-long", "tap-late0"}
    # An undo of a tag known only from the windows still withdraws it.
    undo = tag("undo-early", "undo", T0 + 8 * W, undoes="tap-early")
    withdrawn = windows_only(second.add_tag(undo, T0 + 8 * W))
    assert [(w.ts_us - T0) // W for w in withdrawn] == [1]
    assert {a.tag_id for r in withdrawn[0].raters for a in r.labels} == {"tap-long", "tap-late0"}


def test_after_a_restart_the_restored_streams_are_waited_for_before_windows_go_out() -> None:
    first = SessionAligner(SID, PROSODY_ONLY)
    emitted = feed_prosody(first, T0, T0 + 2 * W + 10_000, T0)
    emitted += first.tick(T0 + 2 * W + CONFIG.tag_wait_us)
    assert [(w.ts_us - T0) // W for w in emitted] == [0, 1]
    # The successor starts 20 s later (a busy machine, a group rebalance): a tag of
    # window 3 arrives before the re-read hops of windows 2-3 do.
    now = T0 + 20_000_000
    second = SessionAligner(SID, PROSODY_ONLY)
    second.restore(emitted, now)
    tapped = point("tap-after", T0 + 3 * W + 50_000, span_us=W)
    assert windows_only(second.add_tag(tapped, now)) == []
    assert second.tick(now + CONFIG.restart_wait_us - 1) == [], "windows wait for their hops"
    out = feed_prosody(second, T0 + 2 * W, T0 + 4 * W + 10_000, now + 1_000_000)
    out += second.tick(now + 1_000_000 + CONFIG.tag_wait_us)
    by_window = by_start(out)
    assert sorted(by_window) == [2, 3]
    assert by_window[3].features.voiced_fraction == 1.0
    assert [a.tag_id for r in by_window[3].raters for a in r.labels] == ["tap-after"]
    assert second.stats["late_tags"] == 0


def test_a_stream_not_seen_yet_is_waited_for_then_given_up() -> None:
    aligner = SessionAligner(SID, CONFIG)
    # Prosody flows; the performer's face records are seconds behind (a busy machine).
    out = feed_prosody(aligner, T0, T0 + 3 * W, T0)
    out += aligner.tick(T0 + 3 * W + CONFIG.tag_wait_us)
    assert out == [], "windows wait for the face stream that has not come yet"
    out = aligner.add_face(face(T0 + 10_000), T0 + 300_000)
    out += aligner.add_face(face(T0 + 3 * W), T0 + 300_000)
    out += aligner.tick(T0 + 300_000 + CONFIG.tag_wait_us)
    # Window 2 still waits for prosody past its end (the newest hop starts at 290 ms).
    assert [(w.ts_us - T0) // W for w in out] == [0, 1]
    assert out[0].features.face_present_fraction == 1.0
    assert aligner.stats["late_features"] == 0
    # A performer without a camera: after feature_wait their windows go out without it.
    aligner.add_prosody(hop(T0, performer="bob"), T0)
    early = aligner.tick(T0 + CONFIG.feature_wait_us - 1)
    assert [w for w in early if w.performer_id == "bob"] == []
    [bob] = [w for w in aligner.tick(T0 + CONFIG.feature_wait_us) if w.performer_id == "bob"]
    assert bob.features.face_present_fraction is None


def test_counters_are_made_of_the_windows_and_carry_over_a_restart() -> None:
    config = replace(CONFIG, grace_us=1_000_000)
    first = SessionAligner(SID, config)
    emitted: list[records.LabelWindow] = []
    emitted += feed_prosody(first, T0, T0 + 20 * W, T0)
    for k in range(0, 20, 2):  # a face frame every other window
        emitted += first.add_face(face(T0 + k * W), T0)
    emitted += first.tick(T0 + 20 * W + CONFIG.tag_wait_us)
    # A late face frame for an emitted window that had the stream: lost, and counted.
    emitted += first.add_face(face(T0 + 3 * W + 50_000), T0 + 20 * W + CONFIG.tag_wait_us)
    # Published now; the windows that went out since are counted again by a successor.
    now = T0 + 30 * W
    emitted += first.tick(now)
    totals, carried, through_us = first.performer_counters()["alice"]
    emitted += feed_prosody(first, T0 + 20 * W, T0 + 40 * W, now)
    emitted += first.tick(T0 + 40 * W + CONFIG.feature_wait_us)
    final, _, _ = first.performer_counters()["alice"]
    assert totals["windows_emitted"] == 20
    assert final["windows_emitted"] == 40
    # Complete: the even windows before 18 (odd ones had no face frame: no_media; the
    # face stream stopped in window 18, late from there on).
    assert final["windows_incomplete"] == 40 - 9
    assert final["prosody_hops"] == 400
    assert final["face_frames"] == 10
    assert final["late_features_lost"] == 1
    assert final["face_no_media_windows"] == 9  # the odd windows before 18
    assert through_us > T0  # older windows left the grace: carried, not counted again
    # The successor carries on from the published part and counts the windows still
    # open to revision from what it reads back: the same numbers.
    later = T0 + 40 * W + CONFIG.feature_wait_us
    second = SessionAligner(SID, config)
    assert second.seed_counters("alice", carried, through_us, later)
    second.restore(emitted, later)
    assert second.performer_counters()["alice"][0] == final
    # Its frames read again are redeliveries, not late features lost.
    second.add_prosody(hop(T0 + 39 * W), later)
    again, _, _ = second.performer_counters()["alice"]
    assert again["late_features_lost"] == final["late_features_lost"]
    assert again["duplicate_features"] == 1
    # An instance that counted a performer itself keeps its own counts.
    assert not second.seed_counters("alice", {}, 0, later)


def test_a_stream_that_catches_up_with_nothing_for_a_window_leaves_it_without_media() -> None:
    aligner = SessionAligner(SID, CONFIG)
    feed_prosody(aligner, T0, T0 + 20 * W, T0)
    aligner.add_face(face(T0), T0)
    sent = by_start(aligner.tick(T0 + 20 * W + CONFIG.feature_wait_us))
    assert sent[5].missing == {"face": "late"}
    # Face comes back at window 15: the outage's windows had no video after all.
    aligner.add_face(face(T0 + 15 * W), T0 + 21 * W + CONFIG.feature_wait_us)
    revised = by_start(aligner.tick(T0 + 21 * W + CONFIG.feature_wait_us))
    assert revised[5].missing == {"face": "no_media"}
    assert revised[5].revision == 1
    assert revised[0].missing == {}  # its one frame was all there was


def test_a_tag_before_the_first_window_brings_out_every_window_up_to_it() -> None:
    config = replace(CONFIG, grace_us=2_000_000)
    aligner = SessionAligner(SID, config)
    feed_prosody(aligner, T0 + 10 * W, T0 + 20 * W, T0 + 10 * W)
    aligner.tick(T0 + 20 * W + CONFIG.tag_wait_us)
    out = windows_only(aligner.add_tag(point("tag-p001", T0 + 7 * W + 50_000), T0 + 21 * W))
    assert [(w.ts_us - T0) // W for w in out] == [7, 8, 9]
    assert tag_ids(out[0]) == ["tag-p001"]
    assert all(w.missing == {"prosody": "no_media", "face": "no_media"} for w in out)
    # They leave the grace in window order: the counts stay whole.
    feed_prosody(aligner, T0 + 20 * W, T0 + 60 * W, T0 + 60 * W)
    aligner.tick(T0 + 60 * W + config.grace_us)
    totals, _, _ = aligner.performer_counters()["alice"]
    assert totals["windows_emitted"] == aligner.stats["windows_emitted"]


def test_one_step_emits_at_most_max_windows_per_step() -> None:
    config = replace(PROSODY_ONLY, max_windows_per_step=100)
    aligner = SessionAligner(SID, config)
    aligner.add_prosody(hop(T0), T0)
    hour = 3_600_000_000
    now = T0 + hour
    step: list[records.LabelWindow] = []
    for k in range(30):  # a batch of hops, one aligner step (one now_us)
        step += aligner.add_prosody(hop(T0 + hour + k * 10_000), now)
    assert len(step) == 100
    assert len(aligner.tick(now + 20_000)) == 100


def test_presence_gives_no_track_to_a_performer_aligned_elsewhere() -> None:
    aligner = SessionAligner(SID, CONFIG)
    aligner.set_presence("bob", False, T0, T0)
    assert aligner.performer_counters() == {}
    assert aligner.seed_counters("bob", {"windows_emitted": 5}, T0, T0)


def test_a_rebalance_back_to_the_same_instance_keeps_its_own_state() -> None:
    aligner = SessionAligner(SID, CONFIG)
    emitted = feed_prosody(aligner, T0, T0 + 10 * W, T0)
    for k in range(3):
        emitted += aligner.add_face(face(T0 + k * W), T0)
    emitted += aligner.tick(T0 + 10 * W + CONFIG.feature_wait_us)
    before = aligner.performer_counters()
    aligner.restore(emitted, T0 + 11 * W + CONFIG.feature_wait_us)
    assert aligner.performer_counters() == before
    # A late face frame still revises the windows (not taken for a re-read): those it
    # went past at once, its own once the stream is silent again.
    late_at = T0 + 12 * W + CONFIG.feature_wait_us
    aligner.add_face(face(T0 + 5 * W), late_at)
    assert [(w.ts_us - T0) // W for w in aligner.tick(late_at)] == [2, 3, 4]
    [own] = aligner.tick(late_at + CONFIG.feature_wait_us)
    assert (own.ts_us - T0) // W == 5
    assert own.features.face_frames == 1
