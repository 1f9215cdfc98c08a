"""A scene's call: who publishes media, who watches whom, and the fork of each performer.

Topology (an SFU in one process): each performer page sends its camera and microphone on
one "publish" peer connection; every other page receives a performer on its own
"subscribe" peer connection, fed from that performer's MediaRelay. The fork reads its
own relay copy, so producing to Kafka never stalls what the other pages see.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import av
from aiokafka import AIOKafkaProducer
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.frame import Frame
from av.packet import Packet

from capture import rtp_hooks
from capture.fork import PerformerFork
from capture.ice import rtc_configuration
from capture.media_clock import RTP_TIMESTAMP_MODULUS
from capture.timing import CaptureTimer, OffsetProvider, Stamp
from infra.settings import Settings
from streams import records

log = logging.getLogger(__name__)

AUDIO_CLOCK_RATE = 48_000  # Opus
VIDEO_CLOCK_RATE = 90_000
RECENT_FRAMES = 300
_generations = itertools.count(1)

Notify = Callable[[], Awaitable[None]]


class CallError(ValueError):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


@dataclass
class PublishedMedia:
    """One performer's live publish connection and what hangs off it."""

    performer_id: str
    pc: RTCPeerConnection
    fork: PerformerFork
    generation: int = field(default_factory=lambda: next(_generations))
    relay: MediaRelay = field(default_factory=MediaRelay)
    tracks: dict[str, TimestampingTrack] = field(default_factory=dict)
    timers: dict[str, CaptureTimer] = field(default_factory=dict)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return (
            "video" in self.tracks
            and "audio" in self.tracks
            and self.pc.connectionState
            in (
                "new",
                "connecting",
                "connected",
            )
        )

    async def close(self) -> None:
        try:
            for task in self.tasks:
                task.cancel()
            for task in self.tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self.fork.stop()
        finally:
            await self.pc.close()


class SceneCall:
    """The live call of one session."""

    def __init__(
        self,
        *,
        settings: Settings,
        session: records.SessionRecord,
        producer: AIOKafkaProducer,
        audio_producer: AIOKafkaProducer,
        jpeg_pool: Executor,
        on_live_change: Notify,
    ) -> None:
        self.settings = settings
        self.session = session
        self._producer = producer
        self._audio_producer = audio_producer
        self._jpeg_pool = jpeg_pool
        self._on_live_change = on_live_change
        self.published: dict[str, PublishedMedia] = {}
        self._subscriptions: set[RTCPeerConnection] = set()
        self._relayed: dict[RTCPeerConnection, tuple[PublishedMedia, rtp_hooks.SentTimeline]] = {}

    def live_performers(self) -> list[dict[str, Any]]:
        return [
            {"performer_id": media.performer_id, "generation": media.generation}
            for media in self.published.values()
            if media.live
        ]

    async def publish(
        self, performer_id: str, offer_sdp: str, sender_offset: OffsetProvider
    ) -> tuple[str, int]:
        """Accept a performer's camera + microphone; returns the SDP answer and the
        generation that identifies this publication."""
        previous = self.published.pop(performer_id, None)
        if previous is not None:
            # A rejoin (reload, network blip, new server connection) replaces the old one.
            await previous.close()
        pc = RTCPeerConnection(rtc_configuration(self.settings.ice_servers))
        fork = PerformerFork(
            settings=self.settings,
            producer=self._producer,
            audio_producer=self._audio_producer,
            session=self.session,
            performer_id=performer_id,
            jpeg_pool=self._jpeg_pool,
        )
        media = PublishedMedia(performer_id=performer_id, pc=pc, fork=fork)
        self.published[performer_id] = media

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            receiver = _receiver_of(pc, track)
            rate = AUDIO_CLOCK_RATE if track.kind == "audio" else VIDEO_CLOCK_RATE
            timer = CaptureTimer(receiver, clock_rate=rate, sender_offset_us=sender_offset)
            stamped = TimestampingTrack(track, timer, fork)
            media.tracks[track.kind] = stamped
            media.timers[track.kind] = timer
            # Something must always pull the source, watched or not (aiortc #680): a
            # drain subscription keeps the stamping (and so the fork) running.
            drain = media.relay.subscribe(stamped, buffered=False)
            media.tasks.append(
                asyncio.create_task(_drain(drain), name=f"drain-{track.kind}-{performer_id}")
            )

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.info("%s publish connection %s", performer_id, pc.connectionState)
            if pc.connectionState in ("failed", "closed") and (
                self.published.get(performer_id) is media
            ):
                self.published.pop(performer_id, None)
                await media.close()
            await self._on_live_change()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            if set(media.tracks) != {"audio", "video"}:
                raise CallError("bad_offer", "a performer publishes one audio and one video track")
            fork.start()
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
        except Exception as exc:  # aiortc raises many types on a bad SDP
            # Remove only this publication: a newer one may have replaced it meanwhile.
            if self.published.get(performer_id) is media:
                del self.published[performer_id]
            await media.close()
            if isinstance(exc, CallError):
                raise
            raise CallError("bad_sdp", f"cannot use this offer: {exc}") from None
        await self._on_live_change()
        return pc.localDescription.sdp, media.generation

    async def subscribe(self, performer_id: str, offer_sdp: str) -> tuple[str, RTCPeerConnection]:
        """Send a performer's relayed audio and video to a page; returns the SDP answer."""
        media = self.published.get(performer_id)
        if media is None or not media.live:
            raise CallError("not_live", f"performer {performer_id!r} is not sending media")
        pc = RTCPeerConnection(rtc_configuration(self.settings.ice_servers))
        self._subscriptions.add(pc)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            pc.addTrack(media.relay.subscribe(media.tracks["audio"], buffered=True))
            # Video keeps only the latest frame per watcher: a slow page skips frames
            # instead of growing a queue.
            video_sender = pc.addTrack(media.relay.subscribe(media.tracks["video"], buffered=False))
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            timeline = rtp_hooks.watch_sender(video_sender)
        except Exception as exc:
            self._subscriptions.discard(pc)
            await pc.close()
            raise CallError("bad_sdp", f"cannot use this offer: {exc}") from None

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.unsubscribe(pc)

        self._relayed[pc] = (media, timeline)
        return pc.localDescription.sdp, pc

    def relayed_frame_stamp(self, pc: RTCPeerConnection, rtp_timestamp: int) -> Stamp | None:
        """When the frame a watcher saw (its RTP timestamp on this subscription, e.g. from
        requestVideoFrameCallback) was captured: the observer-side time map."""
        relayed = self._relayed.get(pc)
        if relayed is None:
            return None
        media, timeline = relayed
        encoder_timestamp = timeline.encoder_timestamp(rtp_timestamp)
        if encoder_timestamp is None:
            return None
        return media.tracks["video"].stamp_of_encoder_timestamp(encoder_timestamp)

    async def unsubscribe(self, pc: RTCPeerConnection) -> None:
        self._subscriptions.discard(pc)
        self._relayed.pop(pc, None)
        await pc.close()

    async def leave(self, performer_id: str, generation: int) -> None:
        """End a publication, unless the performer has already rejoined on a newer one."""
        media = self.published.get(performer_id)
        if media is not None and media.generation == generation:
            del self.published[performer_id]
            await media.close()
            await self._on_live_change()

    async def close(self) -> None:
        for media in list(self.published.values()):
            await media.close()
        self.published.clear()
        for pc in list(self._subscriptions):
            await pc.close()
        self._subscriptions.clear()

    def stats(self, *, samples: bool = False) -> dict[str, Any]:
        return {
            performer_id: {
                **media.fork.stats.snapshot(samples=samples),
                "unstamped_frames": sum(t.unstamped for t in media.timers.values()),
                "connection": media.pc.connectionState,
            }
            for performer_id, media in self.published.items()
        }


class TimestampingTrack(MediaStreamTrack):
    """The received track as the relay sees it: every frame is stamped and offered to the
    fork here, before the relay shares it with the call's encoders, which rebase ``pts``
    in place (PyAV encodes in the codec's time base)."""

    def __init__(self, source: MediaStreamTrack, timer: CaptureTimer, fork: PerformerFork) -> None:
        super().__init__()
        self.kind = source.kind
        self._source = source
        self._timer = timer
        self._fork = fork
        # pts (the encoder timestamp relays will send) -> capture stamp, for mapping what
        # a watcher saw back to when it was captured. Ten seconds of video.
        self.recent: collections.OrderedDict[int, Stamp] = collections.OrderedDict()

    async def recv(self) -> Frame | Packet:
        frame = await self._source.recv()
        arrival_us = time.time_ns() // 1000
        stamp = self._timer.stamp(frame.pts)
        if stamp is not None:
            if isinstance(frame, av.VideoFrame) and frame.pts is not None:
                self.recent[frame.pts % RTP_TIMESTAMP_MODULUS] = stamp
                while len(self.recent) > RECENT_FRAMES:
                    self.recent.popitem(last=False)
            if isinstance(frame, av.AudioFrame):
                self._fork.offer_audio(frame, stamp)
            elif isinstance(frame, av.VideoFrame):
                self._fork.offer_video(frame, stamp, arrival_us)
        return frame

    def stop(self) -> None:
        super().stop()
        self._source.stop()

    def stamp_of_encoder_timestamp(self, encoder_timestamp: int) -> Stamp | None:
        """The capture stamp of the frame a relay encoded with this 90 kHz timestamp
        (aiortc's VP8 encoder may truncate it by a tick)."""
        for candidate in (encoder_timestamp, encoder_timestamp + 1, encoder_timestamp - 1):
            stamp = self.recent.get(candidate % RTP_TIMESTAMP_MODULUS)
            if stamp is not None:
                return stamp
        return None


async def _drain(track: MediaStreamTrack) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()


def _receiver_of(pc: RTCPeerConnection, track: MediaStreamTrack) -> RTCRtpReceiver:
    for transceiver in pc.getTransceivers():
        if transceiver.receiver.track is track:
            receiver: RTCRtpReceiver = transceiver.receiver
            return receiver
    raise CallError("internal", f"no receiver for the {track.kind} track")
