"""Replay planning and retargeting, on a small archive (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from streams import records
from streams.archive import replay, store
from tests import archive_samples as samples


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("archive") / samples.SID
    folder.mkdir()
    samples.write_sample_archive(folder)
    return folder


@pytest.fixture(scope="module")
def media(archived: Path) -> list[replay.MediaRecord]:
    session, items = replay.load_media(archived)
    assert session.session_id == samples.SID
    return items


def test_load_media_merges_every_performer_in_ts_order(
    archived: Path, media: list[replay.MediaRecord]
) -> None:
    made = samples.sample_records()
    assert len(media) == len(made["audio"]) + len(made["video"])
    assert {m.header.performer_id for m in media} == set(samples.PERFORMERS)
    stamps = [m.header.ts_us for m in media]
    assert stamps == sorted(stamps)
    per_performer = [m for m in media if m.header.performer_id == "ana"]
    assert per_performer == store.read_media(archived, "ana")


@pytest.mark.parametrize("speed", [1.0, 2.0])
def test_plan_keeps_order_and_spacing(media: list[replay.MediaRecord], speed: float) -> None:
    shuffled = media[::-1]
    plan = replay.replay_plan(shuffled, speed)
    assert len(plan) == len(media)
    stamps = [item.header.ts_us for _, item in plan]
    assert stamps == sorted(stamps)
    delays = [delay for delay, _ in plan]
    assert delays[0] == 0.0
    assert delays == sorted(delays)
    t0 = stamps[0]
    for delay, item in plan:
        assert delay == pytest.approx((item.header.ts_us - t0) / 1e6 / speed, abs=1e-9)
    # The whole sample lasts ~2 s of capture time: 2 s at real time, 1 s at double speed.
    assert delays[-1] == pytest.approx((stamps[-1] - t0) / 1e6 / speed)
    assert 1.9 / speed < delays[-1] < 2.0 / speed


def test_plan_as_fast_as_possible_never_waits(media: list[replay.MediaRecord]) -> None:
    plan = replay.replay_plan(media[::-1], None)
    assert [delay for delay, _ in plan] == [0.0] * len(media)
    stamps = [item.header.ts_us for _, item in plan]
    assert stamps == sorted(stamps)


def test_plan_of_nothing_and_bad_speeds() -> None:
    assert replay.replay_plan([], 1.0) == []
    for speed in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="speed"):
            replay.replay_plan([], speed)


def test_retargeted_headers_are_replayed_with_the_original_clock(
    media: list[replay.MediaRecord],
) -> None:
    made = samples.sample_records()
    originals = {
        (item.header.performer_id, type(item).__name__, item.header.ts_us): item
        for item in (*made["audio"], *made["video"])
    }
    for item in media:
        out = replay.retarget(item, "s-archive-r1")
        assert out.header.replayed is True
        assert out.header.session_id == "s-archive-r1"
        assert out.key == b"s-archive-r1/" + item.header.performer_id.encode()
        source = originals[(item.header.performer_id, type(item).__name__, item.header.ts_us)]
        assert source.header.replayed is False
        assert out.header.ts_us == source.header.ts_us
        assert out.header.seq == source.header.seq
        assert out.header.timing == source.header.timing
        assert out.header.rtp_timestamp == source.header.rtp_timestamp
        if isinstance(out, records.AudioChunk):
            assert isinstance(source, records.AudioChunk)
            assert out.pcm == source.pcm
            assert out.header.sample_count == source.header.sample_count
        else:
            assert isinstance(source, records.VideoFrame)
            assert out.jpeg == source.jpeg
            assert (out.header.width, out.header.height) == (160, 90)
        # And it survives the wire: the header that goes out says replayed.
        message = records.encode(out)
        back = records.decode(type(out), message.value, message.headers)
        assert back == out


def test_retarget_refuses_an_invalid_session_id(media: list[replay.MediaRecord]) -> None:
    with pytest.raises(ValueError, match="invalid session id"):
        replay.retarget(media[0], "Not Valid")


def test_replay_session_ids() -> None:
    assert replay.replay_session_id("abc", set()) == "abc-r1"
    assert replay.replay_session_id("abc", {"abc-r1", "abc-r2"}) == "abc-r3"
    # A replay of a replay is a sibling, not abc-r1-r1.
    assert replay.replay_session_id("abc-r1", {"abc-r1"}) == "abc-r2"
    long = "a" * 48
    made = replay.replay_session_id(long, set())
    assert len(made) == 48
    assert made.endswith("-r1")
