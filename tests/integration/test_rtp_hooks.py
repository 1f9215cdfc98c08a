"""The RTP hooks against real aiortc peer connections over loopback.

The sender's video frames carry their own index as black/white luma stripes, and the
sender records each one's capture instant, so the receiver can check the mapped capture
time of every decoded frame against the true one.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
from dataclasses import dataclass, field

import aioice.ice
import aiortc
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCRtpCodecParameters, RTCRtpReceiver, RTCRtpSender
from aiortc.jitterbuffer import JitterFrame
from aiortc.mediastreams import AudioStreamTrack, MediaStreamTrack, VideoStreamTrack
from aiortc.rtp import RtpPacket
from av import AudioFrame, VideoFrame

from capture.ice import restrict_host_addresses, rtc_configuration
from capture.media_clock import StreamClock, TimeSource, ntp_to_unix_us
from capture.rtp_hooks import (
    PINNED_AIORTC,
    AiortcChangedError,
    EncodedFrame,
    attach,
    forward_encoded_frames,
    on_keyframe_request,
    request_keyframe,
    rtp_timestamp_of_frame,
)
from streams.session_clock import now_us

pytestmark = pytest.mark.integration

WIDTH, HEIGHT = 320, 240
INDEX_BITS = 16
STRIPE = WIDTH // INDEX_BITS
CLOCK_RATES = {"video": 90_000, "audio": 48_000}  # VP8 and Opus, aiortc's first choices
DEADLINE_S = 10.0
SENDER_REPORTS_WANTED = 2  # the switch to sender reports, then a fit over two reports
FRAMES_AFTER_SR_WANTED = 15
# How long aiortc's jitter buffer holds a frame before decoding: video waits for the next
# frame's first packet (one 33 ms interval), audio prefetches four 20 ms packets.
BUFFER_HOLD_MS = {"video": 34, "audio": 80}
RECEIVE_SLACK_MS = 50  # typical encode + transport + decode + scheduling, on top of that hold
# Loose per-frame bound: a loaded 2-core machine stalls single frames by tens of ms, but a
# wrong clock, origin or epoch would be off by far more.
STALL_MS = 200
# aiortc stamps a sender report when it sends it, a few ms after the packet it pairs
# with (more on a busy event loop): the fit through the reports is that far off.
SENDER_REPORT_NOISE_MS = 10


class IndexedVideoTrack(VideoStreamTrack):
    """320x240 frames showing their index in binary; remembers when each was captured."""

    def __init__(self) -> None:
        super().__init__()
        # frame index -> capture instant (µs): the track's start plus the frame's pts, i.e.
        # the instant its RTP timestamp stands for (a late wake-up does not move it).
        self.captured_us: dict[int, int] = {}
        self.pts: dict[int, int] = {}  # frame index -> pts (90 kHz, = RTP - sender origin)

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        # aiortc's VP8 encoder rebases pts to microseconds and truncates it back to 90 kHz,
        # so the RTP timestamp can be one tick below the pts; a multiple of 9 ticks (100 µs)
        # survives that exactly, which makes "RTP = origin + pts" a sharp check.
        pts -= pts % 9
        index = len(self.captured_us) % (1 << INDEX_BITS)
        image = np.full((HEIGHT * 3 // 2, WIDTH), 128, dtype=np.uint8)  # yuv420p: Y, then U, V
        for bit in range(INDEX_BITS):
            luma = 235 if index >> bit & 1 else 16
            image[:HEIGHT, bit * STRIPE : (bit + 1) * STRIPE] = luma
        frame = VideoFrame.from_ndarray(image, format="yuv420p")
        frame.pts = pts
        frame.time_base = time_base
        self.captured_us[index] = round(self._start * 1_000_000 + pts * 1_000_000 / 90_000)
        self.pts[index] = pts
        return frame


def frame_index(frame: VideoFrame) -> int:
    luma = frame.to_ndarray(format="yuv420p")[:HEIGHT]
    centres = luma[HEIGHT // 2, STRIPE // 2 :: STRIPE]
    return sum(1 << bit for bit, value in enumerate(centres) if value > 128)


@dataclass
class Received:
    """One decoded frame as the receiver saw it."""

    received_us: int
    rtp: int
    capture_us: int
    source: TimeSource
    index: int | None  # video only


@dataclass
class Stream:
    kind: str
    receiver: RTCRtpReceiver
    clock: StreamClock
    packet_timestamps: set[int] = field(default_factory=set)
    frames: list[Received] = field(default_factory=list)

    def done(self) -> bool:
        after_sr = sum(frame.source == "sender_report" for frame in self.frames)
        return (
            self.clock.sender_report_count >= SENDER_REPORTS_WANTED
            and after_sr >= FRAMES_AFTER_SR_WANTED
        )


def record_packets(stream: Stream, monkeypatch: pytest.MonkeyPatch) -> None:
    """Remember every RTP timestamp the receiver got (on top of the attached hook)."""
    hooked = stream.receiver._handle_rtp_packet

    async def recording(packet: RtpPacket, arrival_time_ms: int) -> None:
        stream.packet_timestamps.add(packet.timestamp)
        await hooked(packet, arrival_time_ms=arrival_time_ms)

    monkeypatch.setattr(stream.receiver, "_handle_rtp_packet", recording)


async def consume(stream: Stream, track: MediaStreamTrack) -> None:
    while not stream.done():
        frame = await track.recv()
        received = now_us()
        assert isinstance(frame, VideoFrame | AudioFrame)
        assert frame.pts is not None
        rtp = rtp_timestamp_of_frame(stream.receiver, frame.pts)
        capture_us, source = stream.clock.capture_time_us(rtp)
        index = frame_index(frame) if isinstance(frame, VideoFrame) else None
        stream.frames.append(Received(received, rtp, capture_us, source, index))


async def test_received_frames_map_to_their_capture_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # monkeypatch restores aioice's interface lookup that restrict_host_addresses replaces.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    restrict_host_addresses(["127.0.0.1"])
    started_us = now_us()
    sending = RTCPeerConnection(configuration=rtc_configuration())
    receiving = RTCPeerConnection(configuration=rtc_configuration())
    video = IndexedVideoTrack()
    consumers: list[asyncio.Task[None]] = []
    try:
        sending.addTrack(video)
        sending.addTrack(AudioStreamTrack())
        await sending.setLocalDescription(await sending.createOffer())
        await receiving.setRemoteDescription(sending.localDescription)

        streams: dict[str, Stream] = {}
        for rtp_receiver in receiving.getReceivers():
            kind = rtp_receiver.track.kind
            stream = Stream(kind, rtp_receiver, StreamClock(CLOCK_RATES[kind]))
            attach(rtp_receiver, stream.clock)
            record_packets(stream, monkeypatch)
            streams[kind] = stream
            consumers.append(asyncio.create_task(consume(stream, rtp_receiver.track)))
        assert set(streams) == {"video", "audio"}

        await receiving.setLocalDescription(await receiving.createAnswer())
        await sending.setRemoteDescription(receiving.localDescription)
        await asyncio.wait_for(asyncio.gather(*consumers), DEADLINE_S)
    finally:
        for task in consumers:
            task.cancel()
        await sending.close()
        await receiving.close()

    for stream in streams.values():
        check_stream(stream, started_us, now_us())
    check_video_against_sender(streams["video"], video)


def check_stream(stream: Stream, started_us: int, ended_us: int) -> None:
    kind, frames = stream.kind, stream.frames
    # Sender reports were captured: NTP times of this machine's wall clock during the test,
    # paired (aiortc) with the RTP timestamp of the last packet sent.
    reports = stream.clock.sender_reports
    assert stream.clock.sender_report_count >= SENDER_REPORTS_WANTED, kind
    assert reports, kind  # (a report that a stalled sender stamped late is set aside)
    assert all(started_us <= ntp_to_unix_us(ntp) <= ended_us for _, ntp in reports), kind
    assert {rtp for rtp, _ in reports} <= stream.packet_timestamps, kind
    # Every frame's recovered RTP timestamp is one the sender put on the wire, once.
    recovered = [frame.rtp for frame in frames]
    assert set(recovered) <= stream.packet_timestamps, (
        kind,
        set(recovered) - stream.packet_timestamps,
    )
    assert len(set(recovered)) == len(recovered), kind
    # Arrival fit until the first sender report, sender reports from then on, never back.
    sources = [frame.source for frame in frames]
    first_sr = sources.index("sender_report")
    assert first_sr > 0, kind  # the first SR comes 0.5-1.5 s after media starts
    assert set(sources[:first_sr]) == {"arrival_fit"}, kind
    assert set(sources[first_sr:]) == {"sender_report"}, kind
    # Capture times increase frame by frame on each reference (one machine: the sender's
    # clock is the session clock), and lie shortly before each frame was received. At the
    # switch they step back by the arrival fit's bias (the fastest packet's delay, encoding
    # included, which on a busy machine can exceed a frame interval): the sender reports
    # map every frame, the early ones too, in increasing order, a little before the fit.
    captures = [frame.capture_us for frame in frames]
    for segment in (captures[:first_sr], captures[first_sr:]):
        assert all(b > a for a, b in itertools.pairwise(segment)), kind
    by_reports = [stream.clock.capture_time_us(frame.rtp)[0] for frame in frames]
    assert all(b > a for a, b in itertools.pairwise(by_reports)), kind
    typical_ms = BUFFER_HOLD_MS[kind] + RECEIVE_SLACK_MS
    fit_bias_ms = (captures[first_sr - 1] - by_reports[first_sr - 1]) / 1000
    assert -SENDER_REPORT_NOISE_MS <= fit_bias_ms <= typical_ms + STALL_MS, (kind, fit_bias_ms)
    latencies_ms = [(frame.received_us - frame.capture_us) / 1000 for frame in frames]
    assert 0 < statistics.median(latencies_ms) <= typical_ms, (kind, latencies_ms)
    assert all(0 < latency <= typical_ms + STALL_MS for latency in latencies_ms), kind
    intervals_s = [(b - a) / 2**32 for (_, a), (_, b) in itertools.pairwise(reports)]
    print(
        f"{kind}: {len(frames)} frames, SR intervals s {[round(i, 2) for i in intervals_s]}, "
        f"receive - capture ms: min {min(latencies_ms):.1f} "
        f"median {statistics.median(latencies_ms):.1f} max {max(latencies_ms):.1f}, "
        f"arrival fit bias ms {fit_bias_ms:.1f}"
    )


def check_video_against_sender(stream: Stream, track: IndexedVideoTrack) -> None:
    indexed = [
        (frame, frame.index)
        for frame in stream.frames
        if frame.index is not None and frame.index in track.captured_us
    ]
    assert len(indexed) >= 0.9 * len(stream.frames)
    # The recovered RTP timestamps are the sender's: its pts plus one constant origin.
    origins = {(frame.rtp - track.pts[index]) % 2**32 for frame, index in indexed}
    assert len(origins) == 1, origins
    # Mapped through sender reports, each frame lands on the instant the sender captured
    # it: aiortc's SRs carry the time a packet was *sent*, so about the encode time late
    # (~1 ms idle), far from the ~34 ms of stamping at receive.
    errors_ms = {
        source: [
            (frame.capture_us - track.captured_us[index]) / 1000
            for frame, index in indexed
            if frame.source == source
        ]
        for source in ("arrival_fit", "sender_report")
    }
    sr_errors = errors_ms["sender_report"]
    assert -1 <= statistics.median(sr_errors) <= 10, sr_errors
    assert all(-STALL_MS <= error <= STALL_MS for error in sr_errors), sr_errors
    for source, errors in errors_ms.items():
        print(
            f"video {source} error vs sender ms: min {min(errors):.2f} "
            f"median {statistics.median(errors):.2f} max {max(errors):.2f}"
        )


async def test_hooks_fail_loudly_when_aiortc_internals_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert aiortc.__version__ == PINNED_AIORTC  # the hooks were checked against this version
    pc = RTCPeerConnection(configuration=rtc_configuration())
    try:
        receiver = pc.addTransceiver("video").receiver
        with pytest.raises(ValueError, match="not decoded any frame"):
            rtp_timestamp_of_frame(receiver, 0)
        with monkeypatch.context() as patched:
            patched.delattr(receiver, "_RTCRtpReceiver__timestamp_mapper")
            with pytest.raises(AiortcChangedError, match="__timestamp_mapper"):
                attach(receiver, StreamClock(90_000))
            with pytest.raises(RuntimeError, match="aiortc changed"):
                rtp_timestamp_of_frame(receiver, 0)
        with monkeypatch.context() as patched:
            patched.delattr(RTCRtpReceiver, "_handle_rtcp_packet")
            with pytest.raises(AiortcChangedError, match="_handle_rtcp_packet"):
                attach(receiver, StreamClock(90_000))
        with monkeypatch.context() as patched:

            async def renamed(self: RTCRtpReceiver, packet: RtpPacket, arrival_ms: int) -> None:
                """A handler whose keyword the DTLS transport no longer matches."""

            patched.setattr(RTCRtpReceiver, "_handle_rtp_packet", renamed)
            with pytest.raises(AiortcChangedError, match="arrival_time_ms"):
                attach(receiver, StreamClock(90_000))
        attach(receiver, StreamClock(90_000))
        with pytest.raises(ValueError, match="already attached"):
            attach(receiver, StreamClock(90_000))
    finally:
        await pc.close()


async def test_forwarding_hooks_fail_loudly_when_aiortc_internals_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pc = RTCPeerConnection(configuration=rtc_configuration())
    try:
        transceiver = pc.addTransceiver("video")
        receiver, sender = transceiver.receiver, transceiver.sender
        with monkeypatch.context() as patched:
            patched.delattr(receiver, "_RTCRtpReceiver__decoder_queue")
            with pytest.raises(AiortcChangedError, match="decoder queue"):
                forward_encoded_frames(receiver, lambda frame: None)
        with monkeypatch.context() as patched:
            patched.delattr(RTCRtpSender, "_send_keyframe")
            with pytest.raises(AiortcChangedError, match="_send_keyframe"):
                on_keyframe_request(sender, lambda: None)
        delivered: list[EncodedFrame] = []
        forward_encoded_frames(receiver, delivered.append)
        with pytest.raises(ValueError, match="already forwards"):
            forward_encoded_frames(receiver, delivered.append)
        # What the receiver hands its decoder queue now comes out as an encoded frame.
        codec = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90_000, payloadType=96)
        receiver._RTCRtpReceiver__decoder_queue.put((codec, JitterFrame(b"\x10\x02", 3000)))  # type: ignore[attr-defined]
        assert delivered == [EncodedFrame(codec="video/vp8", data=b"\x10\x02", pts=3000)]
        # No media SSRC seen yet: a keyframe request says it could not be sent.
        assert await request_keyframe(receiver) is False
        requests: list[int] = []
        on_keyframe_request(sender, lambda: requests.append(1))
        sender._send_keyframe()
        assert requests == [1]
    finally:
        await pc.close()
