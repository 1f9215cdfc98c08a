"""Forwarding one performer's encoded media to every page that watches them (the SFU).

The publisher's encoded frames (capture.rtp_hooks.forward_encoded_frames) go to each
watcher's RTCRtpSender as ``av.Packet``s, which aiortc packetizes without an encoder
(FACTS.md, "aiortc 1.16 forwarding"): a watcher costs a packet copy, not a VP8 encode.

What an encoder would otherwise have done for a watcher is done here:
- a new watcher gets nothing until its sender starts reading (after ICE and DTLS
  connect: queuing before would only overflow), then starts on a keyframe (anything before
  it cannot be decoded), asked of the publisher at once;
- a watcher's keyframe request (PLI/FIR: it lost packets, or its decoder failed) is
  passed on to the publisher, at most once per ``KEYFRAME_REQUEST_INTERVAL_S`` per
  performer, since every watcher of a lossy link would otherwise ask for each loss;
- a watcher that falls behind (its sender not reading: a stalled connection) gets a bounded
  queue: video that overflows is dropped up to the next keyframe (a partial run of inter
  frames would only decode to garbage), audio drops its oldest frame. Every drop is counted.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable
from dataclasses import dataclass

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

# About one second of media per watcher (30 video frames: 1 s at 30 fps, 2 s at 15): a
# watcher further behind than that is not watching live.
VIDEO_QUEUE_FRAMES = 30
AUDIO_QUEUE_FRAMES = 50
KEYFRAME_REQUEST_INTERVAL_S = 0.5


def is_vp8_keyframe(data: bytes) -> bool:
    """A VP8 frame is a keyframe when bit 0 of its first byte is 0 (RFC 6386, 9.1)."""
    return bool(data) and data[0] & 1 == 0


def make_packet(data: bytes, pts: int, clock_rate: int) -> av.Packet:
    packet = av.Packet(data)
    packet.pts = pts
    packet.time_base = fractions.Fraction(1, clock_rate)
    return packet


@dataclass
class ForwardingStats:
    """Per performer and kind; never reset while the publication lives."""

    frames_in: int = 0
    frames_forwarded: int = 0  # handed to a watcher's sender, summed over watchers
    frames_dropped_watcher_behind: int = 0  # a watcher's queue was full
    frames_skipped_until_keyframe: int = 0  # a new or resyncing watcher waits for a keyframe
    frames_left_queued: int = 0  # still queued for a watcher when it left
    keyframe_requests: int = 0  # sent to the publisher
    keyframe_requests_coalesced: int = 0  # within the interval of the previous one

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


class ForwardedTrack(MediaStreamTrack):
    """One watcher's copy of a performer's audio or video, as encoded packets."""

    def __init__(self, fanout: PacketFanout) -> None:
        super().__init__()
        self.kind = fanout.kind
        self._fanout = fanout
        self._queue: asyncio.Queue[av.Packet | None] = asyncio.Queue(
            maxsize=VIDEO_QUEUE_FRAMES if fanout.kind == "video" else AUDIO_QUEUE_FRAMES
        )
        # Video must start (and restart after an overflow) on a keyframe.
        self.waiting_for_keyframe = fanout.kind == "video"
        self.reading = False  # the sender has asked for a frame: the connection is up

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        if not self.reading:
            self.reading = True
            self._fanout.request_keyframe()  # the watcher can show nothing before one
        packet = await self._queue.get()
        if packet is None:
            raise MediaStreamError
        self._fanout.stats.frames_forwarded += 1
        return packet

    def offer(self, packet: av.Packet, keyframe: bool) -> bool:
        """Queue a packet; False when it was dropped because this watcher is behind."""
        if not self.reading:
            return True  # not connected yet: nothing to queue for
        if self.kind == "video":
            if self.waiting_for_keyframe and not keyframe:
                self._fanout.stats.frames_skipped_until_keyframe += 1
                return True
            self.waiting_for_keyframe = False
            if self._queue.full():
                self._fanout.stats.frames_dropped_watcher_behind += self._drain()
                if keyframe:  # a fresh start: nothing queued before it is needed
                    self._queue.put_nowait(packet)
                    return True
                self.waiting_for_keyframe = True
                return False
        elif self._queue.full():
            self._queue.get_nowait()  # audio: the oldest frame goes
            self._queue.put_nowait(packet)
            return False
        self._queue.put_nowait(packet)
        return True

    def _drain(self) -> int:
        drained = 0
        while not self._queue.empty():
            self._queue.get_nowait()
            drained += 1
        return drained

    def stop(self) -> None:
        if self.readyState == "live":
            self._fanout.discard(self)
            self._fanout.stats.frames_left_queued += self._drain()
            self._queue.put_nowait(None)  # wakes a sender waiting in recv()
        super().stop()


class PacketFanout:
    """Copies one performer's encoded audio or video to its watchers' tracks."""

    def __init__(
        self,
        kind: str,
        *,
        request_keyframe: Callable[[], None],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kind = kind
        self.stats = ForwardingStats()
        self._watchers: set[ForwardedTrack] = set()
        self._request_keyframe = request_keyframe
        self._monotonic = monotonic
        self._last_request_s: float | None = None

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    def add_watcher(self) -> ForwardedTrack:
        track = ForwardedTrack(self)
        self._watchers.add(track)
        return track

    def discard(self, track: ForwardedTrack) -> None:
        self._watchers.discard(track)

    def offer(self, packet: av.Packet, *, keyframe: bool) -> None:
        self.stats.frames_in += 1
        waiting = False
        for watcher in self._watchers:
            if not watcher.offer(packet, keyframe):
                self.stats.frames_dropped_watcher_behind += 1
            # Only a watcher that reads can use a keyframe.
            waiting = waiting or (watcher.reading and watcher.waiting_for_keyframe)
        if waiting:
            # Asked again (rate-limited) for as long as someone waits: a request can be
            # lost, and a publisher sends no periodic keyframes to fall back on.
            self.request_keyframe()

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe, unless one was asked for just now."""
        if self.kind != "video":
            return
        now_s = self._monotonic()
        if self._last_request_s is not None and (
            now_s - self._last_request_s < KEYFRAME_REQUEST_INTERVAL_S
        ):
            self.stats.keyframe_requests_coalesced += 1
            return
        self._last_request_s = now_s
        self.stats.keyframe_requests += 1
        self._request_keyframe()

    def close(self) -> None:
        for watcher in list(self._watchers):
            watcher.stop()
