"""The SFU's fan-out rules: keyframe gating, keyframe requests, slow watchers."""

from __future__ import annotations

import asyncio
import contextlib

import av
import pytest
from aiortc.mediastreams import MediaStreamError

from capture.forwarding import (
    AUDIO_QUEUE_FRAMES,
    KEYFRAME_REQUEST_INTERVAL_S,
    VIDEO_QUEUE_FRAMES,
    ForwardedTrack,
    PacketFanout,
    is_vp8_keyframe,
    make_packet,
)

KEY = bytes([0x10, 0x02, 0x00])  # bit 0 of the first byte clear: a VP8 keyframe
INTER = bytes([0x11, 0x02, 0x00])


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def fanout(kind: str = "video") -> tuple[PacketFanout, list[float], Clock]:
    clock = Clock()
    requests: list[float] = []
    return (
        PacketFanout(kind, request_keyframe=lambda: requests.append(clock.now_s), monotonic=clock),
        requests,
        clock,
    )


def packet(data: bytes, pts: int) -> av.Packet:
    return make_packet(data, pts, 90_000)


async def start_reading(watcher: ForwardedTrack) -> None:
    """What the watcher's sender does once its connection is up: ask for a frame."""
    first = asyncio.create_task(watcher.recv())
    await asyncio.sleep(0)
    first.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await first


def test_vp8_keyframe_bit() -> None:
    assert is_vp8_keyframe(KEY)
    assert not is_vp8_keyframe(INTER)
    assert not is_vp8_keyframe(b"")


async def test_a_new_watcher_starts_on_a_keyframe_which_is_asked_for_at_once() -> None:
    video, requests, clock = fanout()
    watcher = video.add_watcher()
    # Nothing is queued (or asked for) before the watcher's connection is up...
    video.offer(packet(KEY, 0), keyframe=True)
    assert requests == []
    # ...then a keyframe is asked for at once.
    await start_reading(watcher)
    assert requests == [100.0]
    video.offer(packet(INTER, 0), keyframe=False)
    video.offer(packet(INTER, 3000), keyframe=False)
    assert video.stats.frames_skipped_until_keyframe == 2
    # Asked again while the watcher waits, but not more often than the interval.
    assert requests == [100.0]
    clock.now_s += KEYFRAME_REQUEST_INTERVAL_S
    video.offer(packet(INTER, 6000), keyframe=False)
    assert requests == [100.0, 100.0 + KEYFRAME_REQUEST_INTERVAL_S]
    video.offer(packet(KEY, 9000), keyframe=True)
    video.offer(packet(INTER, 12000), keyframe=False)
    received = [await watcher.recv(), await watcher.recv()]
    assert [p.pts for p in received] == [9000, 12000]
    assert video.stats.frames_forwarded == 2
    assert video.stats.keyframe_requests == 2


async def test_watcher_keyframe_requests_are_coalesced_per_performer() -> None:
    video, requests, clock = fanout()
    await start_reading(video.add_watcher())
    await start_reading(video.add_watcher())  # a second watcher within the interval
    assert len(requests) == 1
    assert video.stats.keyframe_requests_coalesced == 1
    clock.now_s += 1.0
    video.request_keyframe()  # a watcher's PLI after the interval goes through
    assert len(requests) == 2


async def test_a_stalled_watcher_drops_to_the_next_keyframe_and_others_are_untouched() -> None:
    video, requests, clock = fanout()
    stalled, watching = video.add_watcher(), video.add_watcher()
    await start_reading(stalled)  # its connection came up, then its sender stopped reading
    await start_reading(watching)
    video.offer(packet(KEY, 0), keyframe=True)
    received = [await watching.recv()]
    for index in range(1, VIDEO_QUEUE_FRAMES + 1):
        video.offer(packet(INTER, index * 3000), keyframe=False)
        received.append(await watching.recv())
    # The stalled watcher's queue overflowed: its queue is emptied (all counted) and it
    # waits for a keyframe, which is asked for once the interval allows.
    assert video.stats.frames_dropped_watcher_behind == VIDEO_QUEUE_FRAMES + 1
    assert stalled.waiting_for_keyframe
    clock.now_s += 1.0
    video.offer(packet(INTER, 999_000), keyframe=False)
    assert len(requests) == 2
    video.offer(packet(KEY, 1_002_000), keyframe=True)
    assert (await stalled.recv()).pts == 1_002_000
    assert len(received) == VIDEO_QUEUE_FRAMES + 1  # the other watcher got every frame


async def test_audio_forwards_at_once_and_a_stalled_watcher_loses_its_oldest_frames() -> None:
    audio, requests, _ = fanout("audio")
    watcher = audio.add_watcher()
    await start_reading(watcher)
    for index in range(AUDIO_QUEUE_FRAMES + 3):
        audio.offer(make_packet(b"\x01", index * 960, 48_000), keyframe=True)
    assert requests == []  # audio has no keyframes to ask for
    assert audio.stats.frames_dropped_watcher_behind == 3
    assert (await watcher.recv()).pts == 3 * 960


async def test_a_stopped_watcher_leaves_the_fanout_and_its_sender_wakes_up() -> None:
    video, _, _ = fanout()
    watcher = video.add_watcher()
    await start_reading(watcher)
    video.offer(packet(KEY, 0), keyframe=True)
    assert video.watchers == 1
    watcher.stop()
    assert video.stats.frames_left_queued == 1  # not counted as the watcher falling behind
    assert video.stats.frames_dropped_watcher_behind == 0
    assert video.watchers == 0
    with pytest.raises(MediaStreamError):
        await watcher.recv()
    video.offer(packet(KEY, 0), keyframe=True)  # no one left to copy to
    assert video.stats.frames_forwarded == 0


async def test_a_keyframe_that_overflows_a_queue_restarts_it_instead_of_being_lost() -> None:
    video, _, _ = fanout()
    watcher = video.add_watcher()
    await start_reading(watcher)
    for index in range(VIDEO_QUEUE_FRAMES):
        video.offer(packet(KEY if index == 0 else INTER, index * 3000), keyframe=index == 0)
    video.offer(packet(KEY, 999_000), keyframe=True)  # the queue is full: start afresh
    assert not watcher.waiting_for_keyframe
    assert (await watcher.recv()).pts == 999_000
    assert video.stats.frames_dropped_watcher_behind == VIDEO_QUEUE_FRAMES
    assert video.stats.frames_forwarded == 1  # counted when the sender takes it
