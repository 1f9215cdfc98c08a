"""A scene's call: who publishes media, who watches whom, and the fork of each performer.

Topology (an SFU in one process): each performer page sends its camera and microphone on
one "publish" peer connection; every other page receives a performer on its own
"subscribe" peer connection. The publisher's encoded frames are forwarded to every watcher
as they are (capture.forwarding): no watcher costs an encoder. The fork decodes each
performer once, for Kafka (capture.fork). Everything on the call's path runs on the event
loop without waiting for Kafka or for CPU work.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiortc import (
    RTCPeerConnection,
    RTCRtpCodecCapability,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamTrack

from capture import rtp_hooks
from capture.fork import ForkStats, PerformerFork
from capture.forwarding import PacketFanout, is_vp8_keyframe, make_packet
from capture.ice import rtc_configuration
from capture.media_clock import RTP_TIMESTAMP_MODULUS
from capture.timing import CaptureTimer, OffsetProvider, Stamp
from streams import records
from streams.errors import RefusedError
from streams.runtime import background
from streams.session_clock import now_us
from streams.settings import Settings

log = logging.getLogger(__name__)

AUDIO_CLOCK_RATE = 48_000  # Opus
VIDEO_CLOCK_RATE = 90_000
RECENT_FRAMES = 300  # ten seconds of video at 30 fps
# The one codec per kind that is published and forwarded: every browser sends and plays
# VP8 and Opus, and aiortc packetizes VP8 without an encoder. Forcing it on both legs
# means a watcher can always play what the publisher sent.
FORWARDED_CODECS = {"audio": "audio/opus", "video": "video/vp8"}
_generations = itertools.count(1)

Notify = Callable[[], Awaitable[None]]


class CallError(RefusedError, ValueError):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


def _forwarded_codec_preferences(kind: str) -> list[RTCRtpCodecCapability]:
    capabilities = RTCRtpSender.getCapabilities(kind)
    wanted = FORWARDED_CODECS[kind]
    return [
        codec
        for codec in capabilities.codecs
        # RTX (retransmission) is kept for video: aiortc pairs it with VP8 by payload type.
        if codec.mimeType.lower() in (wanted, f"{kind}/rtx")
    ]


def _prefer_forwarded_codec(transceiver: RTCRtpTransceiver) -> None:
    transceiver.setCodecPreferences(_forwarded_codec_preferences(transceiver.kind))


@dataclass
class PublishedMedia:
    """One performer's live publish connection and what hangs off it."""

    performer_id: str
    pc: RTCPeerConnection
    fork: PerformerFork
    # The page that publishes it (its own random id, kept across its reconnects): only
    # that page may replace it while it is connected.
    page_id: str | None = None
    generation: int = field(default_factory=lambda: next(_generations))
    fanouts: dict[str, PacketFanout] = field(default_factory=dict)
    receivers: dict[str, RTCRtpReceiver] = field(default_factory=dict)
    timers: dict[str, CaptureTimer] = field(default_factory=dict)
    # The forwarded video's pts (what a watcher's RTP timestamp maps back to) -> capture
    # stamp, for placing an observer's tag on the frame they saw.
    recent: OrderedDict[int, Stamp] = field(default_factory=OrderedDict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    frames_failed: int = 0  # received frames whose handling raised (a bug: logged)
    # Set when the publication ends (the performer left, or was replaced): from then on
    # nothing it receives is forked or forwarded, while the fork flushes what came before.
    closing: bool = False

    @property
    def live(self) -> bool:
        return (
            "video" in self.receivers
            and "audio" in self.receivers
            and self.pc.connectionState in ("new", "connecting", "connected")
        )

    def request_keyframe(self) -> None:
        """Ask the publisher for a keyframe (a new watcher, a watcher's PLI, the fork)."""
        receiver = self.receivers.get("video")
        if receiver is None:
            return
        task = asyncio.create_task(self._send_keyframe_request(receiver))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _send_keyframe_request(self, receiver: RTCRtpReceiver) -> None:
        try:
            await rtp_hooks.request_keyframe(receiver)
        except Exception as exc:  # a closing transport: the next request will do
            log.debug("%s: keyframe request not sent: %s", self.performer_id, exc)

    def on_encoded(self, kind: str, encoded: rtp_hooks.EncodedFrame) -> None:
        """One frame from the publisher, on the event loop: stamp it, hand it to the fork
        and to every watcher. Nothing here blocks or waits."""
        if self.closing:
            return  # the performer has left: consent ends with the publication
        arrival_us = now_us()
        timer = self.timers[kind]
        stamp = timer.stamp(encoded.pts)
        rate = AUDIO_CLOCK_RATE if kind == "audio" else VIDEO_CLOCK_RATE
        packet = make_packet(encoded.data, encoded.pts, rate)
        if kind == "audio":
            if stamp is not None:
                self.fork.offer_audio(packet, stamp)
            self.fanouts["audio"].offer(packet, keyframe=True)
            return
        keyframe = encoded.codec != "video/vp8" or is_vp8_keyframe(encoded.data)
        if stamp is not None:
            self.recent[encoded.pts % RTP_TIMESTAMP_MODULUS] = stamp
            while len(self.recent) > RECENT_FRAMES:
                self.recent.popitem(last=False)
        self.fork.offer_video(
            encoded.codec, packet, keyframe=keyframe, stamp=stamp, arrival_us=arrival_us
        )
        self.fanouts["video"].offer(packet, keyframe=keyframe)

    def stamp_of_forwarded(self, pts: int) -> Stamp | None:
        """The capture stamp of the forwarded video frame with this pts."""
        return self.recent.get(pts % RTP_TIMESTAMP_MODULUS)

    def stats(self) -> dict[str, Any]:
        return {
            "watchers": self.fanouts["video"].watchers if "video" in self.fanouts else 0,
            "frames_failed": self.frames_failed,
            **{
                f"forwarded_{kind}": fanout.stats.snapshot()
                for kind, fanout in self.fanouts.items()
            },
        }

    async def close(self) -> None:
        self.closing = True  # before any await: no frame after this is taken in
        try:
            for fanout in self.fanouts.values():
                fanout.close()
            await background.cancel(*self.tasks)
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
        fork_totals: dict[str, ForkStats] | None = None,
    ) -> None:
        self.settings = settings
        self.session = session
        self._producer = producer
        self._audio_producer = audio_producer
        self._jpeg_pool = jpeg_pool
        self._on_live_change = on_live_change
        self.published: dict[str, PublishedMedia] = {}
        # Fork counters per performer for the whole session, across reconnects: the
        # server's, so a call made again for the session (everyone had left) goes on too.
        self._fork_totals: dict[str, ForkStats] = {} if fork_totals is None else fork_totals
        self._subscriptions: set[RTCPeerConnection] = set()
        # Publications refused per performer: another page held their media.
        self.takeovers_refused: Counter[str] = Counter()
        self._relayed: dict[
            RTCPeerConnection,
            tuple[PublishedMedia, rtp_hooks.SentTimeline, list[MediaStreamTrack]],
        ] = {}

    def live_performers(self) -> list[dict[str, Any]]:
        return [
            {"performer_id": media.performer_id, "generation": media.generation}
            for media in self.published.values()
            if media.live
        ]

    async def publish(
        self,
        performer_id: str,
        offer_sdp: str,
        sender_offset: OffsetProvider,
        on_lost: Notify | None = None,
        page_id: str | None = None,
    ) -> tuple[str, int]:
        """Accept a performer's camera + microphone; returns the SDP answer and the
        generation that identifies this publication.

        While the performer's media comes from a page that is still connected, only that
        page (``page_id``) may replace it: a rejoin after a network cut opens its new
        connection before the server notices the old one closed. Another page with the
        same link is refused (``performer_taken``) until the first is gone."""
        previous = self.published.get(performer_id)
        if previous is not None and _held_by_another_page(previous, page_id):
            self.takeovers_refused[performer_id] += 1
            log.warning(
                "%s: a second page tried to publish while the first is connected: refused",
                performer_id,
            )
            raise CallError(
                "performer_taken",
                f"{performer_id} is already sending from another page (another tab, device "
                "or person with this link): close that page first; this one tries again",
            )
        self.published.pop(performer_id, None)
        pc = RTCPeerConnection(rtc_configuration(self.settings.ice_servers))
        media: PublishedMedia

        def request_keyframe() -> None:
            # Through the video fan-out: requests from the fork and from watchers share
            # one rate limit towards the publisher.
            media.fanouts["video"].request_keyframe()

        totals = self._fork_totals.setdefault(performer_id, ForkStats())
        totals.publications += 1
        fork = PerformerFork(
            settings=self.settings,
            producer=self._producer,
            audio_producer=self._audio_producer,
            session=self.session,
            performer_id=performer_id,
            jpeg_pool=self._jpeg_pool,
            request_keyframe=request_keyframe,
            stats=totals,
        )
        media = PublishedMedia(performer_id=performer_id, pc=pc, fork=fork, page_id=page_id)
        for kind in ("audio", "video"):
            media.fanouts[kind] = PacketFanout(kind, request_keyframe=media.request_keyframe)
            # Made before the offer is applied, so the answer accepts only the codec that
            # is forwarded to watchers.
            _prefer_forwarded_codec(pc.addTransceiver(kind, direction="recvonly"))
        self.published[performer_id] = media
        if previous is not None:
            # The same page rejoining: its old publication goes. Closed only now, so a
            # publish arriving meanwhile finds this one in place, not an empty seat.
            await previous.close()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            receiver = _receiver_of(pc, track)
            rate = AUDIO_CLOCK_RATE if track.kind == "audio" else VIDEO_CLOCK_RATE
            media.timers[track.kind] = CaptureTimer(
                receiver, clock_rate=rate, sender_offset_us=sender_offset
            )
            kind = track.kind

            def deliver(encoded: rtp_hooks.EncodedFrame) -> None:
                # Called inside aiortc's receive loop: an error must not end the call.
                try:
                    media.on_encoded(kind, encoded)
                except Exception:
                    media.frames_failed += 1
                    log.exception("%s: a received %s frame failed", performer_id, kind)

            rtp_hooks.forward_encoded_frames(receiver, deliver)
            media.receivers[kind] = receiver

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.info("%s publish connection %s", performer_id, pc.connectionState)
            if pc.connectionState in ("failed", "closed") and (
                self.published.get(performer_id) is media
            ):
                # Lost, not replaced or left (those pop it first): tell the page now,
                # which otherwise notices only when its own ICE checks go unanswered.
                self.published.pop(performer_id, None)
                await media.close()
                if on_lost is not None:
                    await on_lost()
            await self._on_live_change()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            if set(media.receivers) != {"audio", "video"}:
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
        """Forward a performer's audio and video to a page; returns the SDP answer."""
        media = self.published.get(performer_id)
        if media is None or not media.live:
            raise CallError("not_live", f"performer {performer_id!r} is not sending media")
        pc = RTCPeerConnection(rtc_configuration(self.settings.ice_servers))
        self._subscriptions.add(pc)
        tracks = {kind: media.fanouts[kind].add_watcher() for kind in ("audio", "video")}
        try:
            senders = {}
            for kind, track in tracks.items():
                transceiver = pc.addTransceiver(track, direction="sendonly")
                _prefer_forwarded_codec(transceiver)
                senders[kind] = transceiver.sender
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            answer = await pc.createAnswer()
            await pc.setLocalDescription(answer)
            timeline = rtp_hooks.watch_sender(senders["video"])
            # A forwarding sender has no encoder to obey a watcher's keyframe request.
            rtp_hooks.on_keyframe_request(senders["video"], media.fanouts["video"].request_keyframe)
        except Exception as exc:
            for track in tracks.values():
                track.stop()
            self._subscriptions.discard(pc)
            await pc.close()
            raise CallError("bad_sdp", f"cannot use this offer: {exc}") from None

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.unsubscribe(pc)

        self._relayed[pc] = (media, timeline, list(tracks.values()))
        return pc.localDescription.sdp, pc

    def relayed_frame_stamp(self, pc: RTCPeerConnection, rtp_timestamp: int) -> Stamp | None:
        """When the frame a watcher saw (its RTP timestamp on this subscription, e.g. from
        requestVideoFrameCallback) was captured: the observer-side time map."""
        relayed = self._relayed.get(pc)
        if relayed is None:
            return None
        media, timeline, _ = relayed
        # A forwarded packet keeps its pts, so the sender's timestamp maps back to it.
        forwarded_pts = timeline.encoder_timestamp(rtp_timestamp)
        if forwarded_pts is None:
            return None
        return media.stamp_of_forwarded(forwarded_pts)

    async def unsubscribe(self, pc: RTCPeerConnection) -> None:
        self._subscriptions.discard(pc)
        relayed = self._relayed.pop(pc, None)
        if relayed is not None:
            for track in relayed[2]:
                track.stop()
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

    def fork_totals(self) -> dict[str, ForkStats]:
        """Each performer's fork counters for the session (the objects themselves)."""
        return dict(self._fork_totals)

    def stats(self, *, samples: bool = False) -> dict[str, Any]:
        """Every performer who published in this call, the ones who left included; fork
        counters cover the whole session, the rest the current connection."""
        out: dict[str, Any] = {}
        for performer_id, totals in self._fork_totals.items():
            media = self.published.get(performer_id)
            out[performer_id] = totals.snapshot(samples=samples)
            out[performer_id]["takeovers_refused"] = self.takeovers_refused[performer_id]
            if media is None:
                out[performer_id]["connection"] = "left"
                continue
            out[performer_id].update(
                media.stats(),
                unstamped_frames=sum(t.unstamped for t in media.timers.values()),
                connection=media.pc.connectionState,
            )
        return out


def _held_by_another_page(media: PublishedMedia, page_id: str | None) -> bool:
    """Whether ``media`` is live and published by a page other than ``page_id`` (a page
    that does not say which it is counts as another)."""
    if media.pc.connectionState in ("failed", "closed"):
        return False  # lost: whoever comes next may take the seat
    return page_id is None or media.page_id != page_id


def _receiver_of(pc: RTCPeerConnection, track: MediaStreamTrack) -> RTCRtpReceiver:
    for transceiver in pc.getTransceivers():
        if transceiver.receiver.track is track:
            receiver: RTCRtpReceiver = transceiver.receiver
            return receiver
    raise CallError("internal", f"no receiver for the {track.kind} track")
