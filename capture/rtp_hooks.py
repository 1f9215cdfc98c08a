"""Hooks into aiortc's RTP receiver: the ONLY module that touches aiortc private internals.

aiortc parses RTCP sender reports but keeps only their NTP time, and hands decoded frames
out with ``pts = rtp - first_rtp`` instead of the RTP timestamp (FACTS.md, "Time"). The
capture-time mapping needs both, so this module wraps one receiver instance's packet
handlers and reads its timestamp mapper. It was written against aiortc==1.16.0 (pinned in
pyproject.toml); when an internal it needs is gone it raises :class:`AiortcChangedError`
instead of degrading to arrival or processing time.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from aiortc import RTCRtpReceiver
from aiortc.rtp import AnyRtcpPacket, RtcpSenderInfo, RtcpSrPacket, RtpPacket

from capture.media_clock import RTP_TIMESTAMP_MODULUS, StreamClock
from streams.errors import InternalError
from streams.session_clock import now_us

logger = logging.getLogger(__name__)

PINNED_AIORTC = "1.16.0"
# Private names used below (aiortc/rtcrtpreceiver.py in aiortc 1.16.0).
_RTCP_HANDLER = "_handle_rtcp_packet"  # async (packet) -> None, called by the DTLS transport
_RTP_HANDLER = "_handle_rtp_packet"  # async (packet, arrival_time_ms) -> None, same
_TIMESTAMP_MAPPER = "_RTCRtpReceiver__timestamp_mapper"  # TimestampMapper: pts = rtp - _origin
_MAPPER_ORIGIN = "_origin"
_RTX_SSRCS = "_RTCRtpReceiver__rtx_ssrc"  # {rtx ssrc: media ssrc}
_ATTACHED = "_livetag_stream_clock"  # our own marker: one clock per receiver
_SOURCE_FILTER = "_livetag_source_filter"  # our own: the media SSRC the clock follows

RtcpHandler = Callable[[AnyRtcpPacket], Awaitable[None]]
RtpHandler = Callable[..., Awaitable[None]]


class AiortcChangedError(InternalError, RuntimeError):
    """aiortc no longer has a private attribute these hooks rely on."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"aiortc changed: {what}. livetag's RTP hooks (capture/rtp_hooks.py) were written "
            f"for aiortc=={PINNED_AIORTC}; update them before changing the pin."
        )


def _private(obj: object, name: str, what: str) -> Any:
    try:
        return getattr(obj, name)
    except AttributeError:
        raise AiortcChangedError(f"{type(obj).__name__} has no {what} ({name!r})") from None


def _check_handler(receiver: RTCRtpReceiver, name: str, params: tuple[str, ...]) -> Any:
    handler = _private(receiver, name, "packet handler")
    if not inspect.iscoroutinefunction(handler):
        raise AiortcChangedError(f"RTCRtpReceiver.{name} is no longer a coroutine function")
    found = tuple(inspect.signature(handler).parameters)
    if found != params:
        raise AiortcChangedError(
            f"RTCRtpReceiver.{name} takes {found}, expected {params} (the DTLS transport "
            "calls it with these names)"
        )
    return handler


def _timestamp_mapper(receiver: RTCRtpReceiver) -> object:
    mapper = _private(receiver, _TIMESTAMP_MAPPER, "timestamp mapper")
    if not hasattr(mapper, _MAPPER_ORIGIN):
        raise AiortcChangedError(f"the receiver's TimestampMapper has no {_MAPPER_ORIGIN!r}")
    return cast(object, mapper)


def _rtx_ssrcs(receiver: RTCRtpReceiver) -> Mapping[int, int]:
    rtx = _private(receiver, _RTX_SSRCS, "RTX SSRC map")
    if not isinstance(rtx, dict):
        raise AiortcChangedError(f"RTCRtpReceiver.{_RTX_SSRCS} is no longer a dict")
    return cast(Mapping[int, int], rtx)


class _SourceFilter:
    """Feeds the clock from one media SSRC only.

    Retransmissions (RTX) reuse old RTP timestamps and arrive late, and padding-only packets
    carry no media: neither says when anything was captured. A second media SSRC would be
    another RTP timeline that this clock cannot mix in, so it is ignored with a warning.
    """

    def __init__(self, receiver: RTCRtpReceiver) -> None:
        self._rtx = _rtx_ssrcs(receiver)  # filled in place by receiver.receive()
        self._ssrc: int | None = None
        self._warned: set[int] = set()

    @property
    def media_ssrc(self) -> int | None:
        return self._ssrc

    def accepts(self, ssrc: int) -> bool:
        if ssrc in self._rtx:
            return False
        if self._ssrc is None:
            self._ssrc = ssrc
        if ssrc == self._ssrc:
            return True
        if ssrc not in self._warned:
            self._warned.add(ssrc)
            logger.warning(
                "RTP receiver got SSRC %d after %d; its timestamps are not mapped", ssrc, self._ssrc
            )
        return False


def attach(receiver: RTCRtpReceiver, clock: StreamClock) -> None:
    """Feed this receiver's sender reports and packet arrivals into ``clock``.

    Wraps the handlers of this receiver instance only (not the class); call it before media
    flows, e.g. right after setRemoteDescription. Raises AiortcChangedError when aiortc's
    internals differ from the pinned version, ValueError when already attached.
    """
    if getattr(receiver, _ATTACHED, None) is not None:
        raise ValueError("a StreamClock is already attached to this receiver")
    original_rtcp: RtcpHandler = _check_handler(receiver, _RTCP_HANDLER, ("packet",))
    original_rtp: RtpHandler = _check_handler(receiver, _RTP_HANDLER, ("packet", "arrival_time_ms"))
    _timestamp_mapper(receiver)  # fail now, not on the first frame
    sender_info_fields = {field.name for field in dataclasses.fields(RtcpSenderInfo)}
    if not {"ntp_timestamp", "rtp_timestamp"} <= sender_info_fields:
        raise AiortcChangedError(f"RtcpSenderInfo fields are {sorted(sender_info_fields)}")
    source = _SourceFilter(receiver)

    async def handle_rtcp_packet(packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpSrPacket) and source.accepts(packet.ssrc):
            info = packet.sender_info
            clock.on_sender_report(info.rtp_timestamp, info.ntp_timestamp)
        await original_rtcp(packet)

    async def handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        # aiortc's arrival_time_ms has only millisecond resolution: stamp our own µs.
        arrival_us = now_us()
        if packet.payload and source.accepts(packet.ssrc):
            clock.on_packet_arrival(packet.timestamp, arrival_us)
        await original_rtp(packet, arrival_time_ms=arrival_time_ms)

    setattr(receiver, _RTCP_HANDLER, handle_rtcp_packet)
    setattr(receiver, _RTP_HANDLER, handle_rtp_packet)
    setattr(receiver, _ATTACHED, clock)
    setattr(receiver, _SOURCE_FILTER, source)


def rtp_timestamp_of_frame(receiver: RTCRtpReceiver, frame_pts: int) -> int:
    """The RTP timestamp of a frame this receiver decoded, from the frame's ``pts``.

    aiortc sets ``pts = rtp - origin`` (unwrapped); the origin only ever moves by whole
    multiples of 2**32, so adding the current origin back modulo 2**32 is exact.
    """
    origin = getattr(_timestamp_mapper(receiver), _MAPPER_ORIGIN)
    if origin is None:
        raise ValueError("this receiver has not decoded any frame yet")
    if not isinstance(origin, int):
        raise AiortcChangedError(f"TimestampMapper.{_MAPPER_ORIGIN} is {type(origin).__name__}")
    return (frame_pts + origin) % RTP_TIMESTAMP_MODULUS


# ---------------------------------------------------------------- sender side
# A relayed frame is re-encoded by an RTCRtpSender whose RTP timestamps are
# ``random origin + encoder timestamp`` (aiortc/rtcrtpsender.py, ``_run_rtp``). The origin
# is a local variable there, so it is learned from the first packet the sender puts on
# the wire after an encoded frame: both happen in one coroutine, in that order.
_NEXT_ENCODED_FRAME = "_next_encoded_frame"  # async (codec) -> RTCEncodedFrame | None
_SEND_RTP = "_send_rtp"  # RTCDtlsTransport: async (data: bytes) -> None
_SENDER_SSRC = "_ssrc"
_WATCHED = "_livetag_sent_timeline"


@dataclasses.dataclass
class SentTimeline:
    """Maps the RTP timestamps one sender puts on the wire back to encoder timestamps."""

    origin: int | None = None
    last_encoded: int | None = None

    def encoder_timestamp(self, rtp_timestamp: int) -> int | None:
        """The encoder timestamp (90 kHz for video) of a sent RTP timestamp, mod 2**32."""
        if self.origin is None:
            return None
        return (rtp_timestamp - self.origin) % RTP_TIMESTAMP_MODULUS


def watch_sender(sender: Any) -> SentTimeline:
    """Learn the RTP timestamp origin of one RTCRtpSender (call after setLocalDescription,
    before media flows). Raises AiortcChangedError if the internals differ."""
    existing = getattr(sender, _WATCHED, None)
    if isinstance(existing, SentTimeline):
        return existing
    timeline = SentTimeline()
    next_encoded = _private(sender, _NEXT_ENCODED_FRAME, "encoded-frame source")
    ssrc = _private(sender, _SENDER_SSRC, "SSRC")
    transport = _private(sender, "transport", "DTLS transport")
    send_rtp = _private(transport, _SEND_RTP, "RTP send method")
    if not inspect.iscoroutinefunction(next_encoded) or not inspect.iscoroutinefunction(send_rtp):
        raise AiortcChangedError("RTCRtpSender/RTCDtlsTransport methods are no longer coroutines")

    async def next_encoded_frame(codec: Any) -> Any:
        encoded = await next_encoded(codec)
        if encoded is not None:
            timeline.last_encoded = int(encoded.timestamp)
        return encoded

    async def send(data: bytes) -> None:
        # RTP header: byte 1 low 7 bits = payload type (RTCP uses 200-207 there), then
        # sequence (2-3), timestamp (4-7), SSRC (8-11).
        if (
            timeline.origin is None
            and timeline.last_encoded is not None
            and len(data) >= 12
            and not 72 <= (data[1] & 0x7F) <= 79
            and int.from_bytes(data[8:12], "big") == ssrc
        ):
            rtp_timestamp = int.from_bytes(data[4:8], "big")
            timeline.origin = (rtp_timestamp - timeline.last_encoded) % RTP_TIMESTAMP_MODULUS
        await send_rtp(data)

    setattr(sender, _NEXT_ENCODED_FRAME, next_encoded_frame)
    # The transport is shared by the connection's senders: wrap it once, chain the rest.
    setattr(transport, _SEND_RTP, send)
    setattr(sender, _WATCHED, timeline)
    return timeline


# ---------------------------------------------------------------- forwarding (SFU)
# The call forwards each performer's encoded frames to watchers instead of decoding and
# re-encoding them per watcher (FACTS.md, "aiortc 1.16 forwarding"). aiortc has no public
# way to hand out received encoded frames: its receiver puts every reassembled frame on a
# queue read by a decoder thread. Replacing that queue on one receiver instance hands the
# frames to us on the event loop (where the receiver runs) and leaves the thread idle; the
# stop sentinel still reaches the thread, which then ends the receiver's track as before.
_DECODER_QUEUE = "_RTCRtpReceiver__decoder_queue"  # queue.Queue of (codec, JitterFrame) | None
_SEND_RTCP_PLI = "_send_rtcp_pli"  # RTCRtpReceiver: async (media_ssrc) -> None
_SEND_KEYFRAME = "_send_keyframe"  # RTCRtpSender: () -> None, called on a watcher's PLI/FIR
_FORWARDING = "_livetag_forwarding"


@dataclasses.dataclass(frozen=True)
class EncodedFrame:
    """One reassembled frame as the publisher encoded it.

    ``pts`` is aiortc's ``rtp - first_rtp`` (unwrapped, in ``1/clock_rate``), as the
    decoded frames would have had; ``codec`` is the negotiated MIME type, lower case.
    """

    codec: str
    data: bytes
    pts: int


class _ForwardingQueue:
    """Stands in for the receiver's decoder queue: frames go to ``deliver``.

    The decoder thread starts later (when the connection is up) with this object as its
    queue: it reads from the real queue, which only ever receives the stop sentinel.
    """

    def __init__(self, thread_queue: Any, deliver: Callable[[EncodedFrame], None]) -> None:
        self._thread_queue = thread_queue
        self._deliver = deliver

    def get(self) -> Any:
        return self._thread_queue.get()

    def put(self, item: Any) -> None:
        if item is None:  # the receiver stops: let its idle decoder thread end the track
            self._thread_queue.put(None)
            return
        codec, jitter_frame = item
        self._deliver(
            EncodedFrame(
                codec=str(codec.mimeType).lower(),
                data=bytes(jitter_frame.data),
                pts=int(jitter_frame.timestamp),
            )
        )


def forward_encoded_frames(
    receiver: RTCRtpReceiver, deliver: Callable[[EncodedFrame], None]
) -> None:
    """Hand every encoded frame this receiver reassembles to ``deliver`` (called on the
    event loop, must not block) instead of its decoder. Call before media flows."""
    if getattr(receiver, _FORWARDING, False):
        raise ValueError("this receiver already forwards its frames")
    thread_queue = _private(receiver, _DECODER_QUEUE, "decoder queue")
    if not (
        callable(getattr(thread_queue, "put", None))
        and callable(getattr(thread_queue, "get", None))
    ):
        raise AiortcChangedError(f"RTCRtpReceiver.{_DECODER_QUEUE} is no longer a queue")
    _check_handler(receiver, _SEND_RTCP_PLI, ("media_ssrc",))
    setattr(receiver, _DECODER_QUEUE, _ForwardingQueue(thread_queue, deliver))
    setattr(receiver, _FORWARDING, True)


async def request_keyframe(receiver: RTCRtpReceiver) -> bool:
    """Ask the publisher for a keyframe (RTCP PLI on its media SSRC); False when no media
    has been seen yet, so the SSRC is unknown."""
    clock_filter = getattr(receiver, _SOURCE_FILTER, None)
    ssrc = None if clock_filter is None else clock_filter.media_ssrc
    if ssrc is None:
        return False
    send_pli = _check_handler(receiver, _SEND_RTCP_PLI, ("media_ssrc",))
    await send_pli(ssrc)
    return True


def on_keyframe_request(sender: Any, callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever the watcher behind ``sender`` asks for a keyframe (PLI or
    FIR). A sender of forwarded packets has no encoder to obey the request, so the call
    passes it on to the publisher."""
    original = _private(sender, _SEND_KEYFRAME, "keyframe request handler")
    if not callable(original) or inspect.iscoroutinefunction(original):
        raise AiortcChangedError(f"RTCRtpSender.{_SEND_KEYFRAME} is no longer a plain method")

    def send_keyframe() -> None:
        original()
        callback()

    setattr(sender, _SEND_KEYFRAME, send_keyframe)
