"""The fork: one performer's received audio and video, timestamped and produced to Kafka.

The call forwards the publisher's encoded packets to watchers without decoding them
(capture.forwarding); the fork is the one place a performer's media is decoded.

- Audio: Opus decoded, resampled to 16 kHz mono s16le and cut into 20 ms chunks in the
  thread pool, never on the event loop; not dropped (the fork waits for Kafka behind a
  queue of a minute of audio; the call never waits).
- Video: every VP8 packet is decoded (inter frames need their predecessors) in a thread
  pool, never on the event loop; frames due at the analysis rate are scaled and
  JPEG-encoded (MJPEG) in the same call. When Kafka or the pool falls behind, analysis
  frames are dropped from a bounded queue and counted; if even the decoder falls 2 s
  behind, packets are dropped up to the next keyframe (asked of the publisher at once).

``ts_us`` of every record is the capture instant on the session clock (capture.timing).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import fractions
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal

import av
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from av.video.reformatter import VideoReformatter

from capture.loop_lag import percentile
from capture.timing import Stamp
from infra.settings import Settings
from streams import records

log = logging.getLogger(__name__)

AUDIO_RATE = 16_000
AUDIO_CHUNK_SAMPLES = 320  # 20 ms
_REANCHOR_US = 15_000  # a jump larger than this (loss, sender restart) re-anchors audio time
# Decoded Opus lags its RTP timestamps by the encoder's lookahead: 312 samples at 48 kHz
# for libopus in the VoIP mode browsers use (measured through aiortc: 313 samples).
OPUS_DECODER_DELAY_US = 6_500
AUDIO_QUEUE_FRAMES = 3000  # 60 s of 20 ms frames: only a long Kafka outage fills it
AUDIO_BATCH_FRAMES = 50  # Opus frames decoded in one trip to the thread pool (at most)
# Encoded video packets waiting for the decoder: 2 s at 30 fps. Only a starved thread pool
# fills it; the analysis frames among them are bounded by settings.video_queue_frames.
VIDEO_DECODE_QUEUE_PACKETS = 60
_VIDEO_DECODERS = {"video/vp8": "libvpx", "video/h264": "h264"}


def _now_us() -> int:
    return time.time_ns() // 1000


MediaKind = Literal["audio", "video"]


def _latency_samples() -> collections.deque[float]:
    return collections.deque(maxlen=4096)


@dataclass
class ForkStats:
    """Counters for one performer's fork, read by metrics, logs and benchmarks: one object
    per performer for the whole session, carried over every reconnect (a counter that
    starts again from 0 with a new connection would hide what the old one lost)."""

    publications: int = 0  # connections that published the performer's media: 1 + reconnects
    video_frames_in: int = 0
    video_frames_out: int = 0
    video_frames_dropped: int = 0
    video_frames_skipped: int = 0  # thinned to the analysis rate, not a drop
    audio_chunks_out: int = 0
    audio_chunks_dropped: int = 0
    produce_errors: int = 0
    video_packets_decoded: int = 0
    video_decode_errors: int = 0
    # packets dropped because the decoder was 2 s behind, or skipped while waiting for the
    # keyframe that resynchronises it (the analysis frames among them are also counted in
    # video_frames_dropped)
    video_packets_dropped: int = 0
    # a video frame's arrival at the server, or an audio chunk cut from arriving frames (its
    # queue is empty unless Kafka stalls) -> record acknowledged by the broker: every
    # record, and per stream (audio includes its producer's batching: audio_linger_ms)
    fork_latency_ms: collections.deque[float] = field(default_factory=_latency_samples)
    video_fork_latency_ms: collections.deque[float] = field(default_factory=_latency_samples)
    audio_fork_latency_ms: collections.deque[float] = field(default_factory=_latency_samples)

    def counters(self) -> dict[str, int]:
        """The counts (latency samples aside), for the session's health record."""
        counts = {
            name: value
            for name, value in vars(self).items()
            if isinstance(value, int) and not isinstance(value, bool)
        }
        counts["reconnects"] = max(0, self.publications - 1)
        return counts

    def add_counts(self, counters: dict[str, int]) -> None:
        """Add what an earlier process (or call) counted for this performer."""
        for name, value in counters.items():
            if isinstance(getattr(self, name, None), int):
                setattr(self, name, getattr(self, name) + value)

    def add_latency(self, kind: MediaKind, latency_ms: float) -> None:
        self.fork_latency_ms.append(latency_ms)
        by_kind = self.video_fork_latency_ms if kind == "video" else self.audio_fork_latency_ms
        by_kind.append(latency_ms)

    def snapshot(self, *, samples: bool = False) -> dict[str, Any]:
        latencies = sorted(self.fork_latency_ms)
        snapshot: dict[str, Any] = {
            "publications": self.publications,
            "reconnects": max(0, self.publications - 1),
            "video_frames_in": self.video_frames_in,
            "video_frames_out": self.video_frames_out,
            "video_frames_skipped": self.video_frames_skipped,
            "video_frames_dropped": self.video_frames_dropped,
            "audio_chunks_out": self.audio_chunks_out,
            "audio_chunks_dropped": self.audio_chunks_dropped,
            "produce_errors": self.produce_errors,
            "video_packets_decoded": self.video_packets_decoded,
            "video_packets_dropped": self.video_packets_dropped,
            "video_decode_errors": self.video_decode_errors,
            "fork_latency_ms_p50": percentile(latencies, 0.50),
            "fork_latency_ms_p99": percentile(latencies, 0.99),
            "video_fork_latency_ms_p99": percentile(sorted(self.video_fork_latency_ms), 0.99),
            "audio_fork_latency_ms_p99": percentile(sorted(self.audio_fork_latency_ms), 0.99),
        }
        if samples:
            for name in ("fork_latency_ms", "video_fork_latency_ms", "audio_fork_latency_ms"):
                snapshot[name] = [round(value, 3) for value in getattr(self, name)]
        return snapshot


def analysis_size(width: int, height: int, box_width: int, box_height: int) -> tuple[int, int]:
    """The largest even size that fits the box and keeps the camera's aspect ratio.

    Smaller frames (a browser lowering its resolution under load) are scaled up, so the
    analysis size stays what consumers were told, without distorting faces."""
    scale = min(box_width / width, box_height / height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


class JpegEncoder:
    """FFmpeg's MJPEG encoder fed straight from YUV, with a reused scaler.

    Measured on a 640x360 face video: 0.8 ms per frame against 3.8 ms for scale-to-RGB +
    PIL at similar quality (PSNR 41 dB, ~24 KB), and no per-frame scaler set-up (each
    ``to_image`` created and joined two swscale threads). One encoder per performer, used
    by one task at a time (calls run in the thread pool, never concurrently).
    """

    def __init__(self, quality: int) -> None:
        # JPEG quality 10-95 to FFmpeg's quantizer scale (lower is better): 80 -> 3.
        self._qscale = min(31, max(2, round((100 - quality) / 6)))
        self._scaler = VideoReformatter()
        self._codec: av.VideoCodecContext | None = None
        self._frames = 0

    def encode(self, frame: av.VideoFrame, width: int, height: int) -> bytes:
        codec = self._codec
        if codec is None or (codec.width, codec.height) != (width, height):
            codec = av.CodecContext.create("mjpeg", "w")
            assert isinstance(codec, av.VideoCodecContext)
            codec.width, codec.height = width, height
            codec.pix_fmt = "yuvj420p"
            codec.time_base = fractions.Fraction(1, 90_000)
            codec.qmin = codec.qmax = self._qscale
            codec.open()
            self._codec = codec
        scaled = self._scaler.reformat(frame, width=width, height=height, format="yuvj420p")
        # The encoder wants strictly increasing pts in its own time base, whatever time
        # base the decoded frame carries.
        scaled.time_base = codec.time_base
        scaled.pts = self._frames
        self._frames += 1
        return b"".join(bytes(packet) for packet in codec.encode(scaled))


class AudioCutter:
    """One performer's Opus frames decoded, resampled to 16 kHz mono s16le and cut into
    20 ms chunks, each with the capture instant of its first sample.

    Called from the thread pool, one call at a time per performer (the fork awaits each
    call), so the codec and resampler state is never shared between threads at once.
    """

    def __init__(self) -> None:
        self._decoder = opus_decoder()
        self._resampler = _mono_resampler()
        self._pending = bytearray()
        # Output sample n of the current run was captured at anchor.ts_us + n / 16 kHz.
        self._anchor: Stamp | None = None
        self._samples_in = 0  # input samples since the anchor
        self._input_rate = 0
        self._samples_out = 0  # output samples since the anchor that left in chunks

    def cut(
        self, frames: list[tuple[av.Packet, Stamp]]
    ) -> tuple[list[tuple[bytes, int, Stamp]], int]:
        """The chunks completed by these Opus frames (pcm, ts_us, anchor), in order, and
        how many frames failed to decode."""
        chunks: list[tuple[bytes, int, Stamp]] = []
        failed = 0
        chunk_bytes = AUDIO_CHUNK_SAMPLES * 2
        for packet, stamp in frames:
            try:
                decoded_frames = self._decoder.decode(packet)
            except av.error.FFmpegError:
                failed += 1
                continue
            if not decoded_frames:
                continue
            first = decoded_frames[0]
            assert isinstance(first, av.AudioFrame)
            anchor = self._anchor
            if anchor is not None and self._input_rate == first.sample_rate:
                expected = anchor.ts_us + self._samples_in * 1_000_000 // self._input_rate
                if abs(stamp.ts_us - expected) > _REANCHOR_US or stamp.timing != anchor.timing:
                    anchor = None
            if anchor is None:
                # New timeline (first frame, a gap, or sender reports took over): start
                # clean rather than smear one timeline into the other.
                anchor = self._anchor = stamp
                self._samples_in = self._samples_out = 0
                self._input_rate = first.sample_rate
                self._pending.clear()
                self._resampler = _mono_resampler()
            for decoded in decoded_frames:
                assert isinstance(decoded, av.AudioFrame)
                self._samples_in += decoded.samples
                for resampled in self._resampler.resample(decoded):
                    self._pending += resampled.to_ndarray().tobytes()
            while len(self._pending) >= chunk_bytes:
                pcm = bytes(self._pending[:chunk_bytes])
                del self._pending[:chunk_bytes]
                ts_us = anchor.ts_us + self._samples_out * 1_000_000 // AUDIO_RATE
                self._samples_out += AUDIO_CHUNK_SAMPLES
                chunks.append((pcm, ts_us, anchor))
        return chunks, failed


def _mono_resampler() -> av.AudioResampler:
    return av.AudioResampler(format="s16", layout="mono", rate=AUDIO_RATE)


def opus_decoder() -> av.AudioCodecContext:
    """libopus as browsers' audio is decoded for playback: 48 kHz stereo s16."""
    codec = av.CodecContext.create("libopus", "r")
    assert isinstance(codec, av.AudioCodecContext)
    codec.format = "s16"
    codec.layout = "stereo"
    codec.sample_rate = 48_000
    return codec


class VideoDecoder:
    """Decodes one performer's encoded video and JPEG-encodes the frames to analyse.

    Called from the thread pool, one call at a time per performer (the fork awaits each
    call), so the codec state is never shared between threads at once.
    """

    def __init__(self, jpeg: JpegEncoder) -> None:
        self._jpeg = jpeg
        self._codec: av.VideoCodecContext | None = None
        self._codec_name: str | None = None

    def decode(
        self, codec_mime: str, packet: av.Packet, analyse_box: tuple[int, int] | None
    ) -> tuple[bytes, int, int] | None:
        """Decode ``packet``; when ``analyse_box`` is given, the JPEG of the decoded frame
        at the analysis size that fits the box, and that size."""
        name = _VIDEO_DECODERS.get(codec_mime)
        if name is None:
            raise ValueError(f"no decoder for {codec_mime}")
        if self._codec is None or self._codec_name != name:
            codec = av.CodecContext.create(name, "r")
            assert isinstance(codec, av.VideoCodecContext)
            self._codec, self._codec_name = codec, name
        frames = self._codec.decode(packet)
        if analyse_box is None or not frames:
            return None
        frame = frames[-1]
        assert isinstance(frame, av.VideoFrame)
        width, height = analysis_size(frame.width, frame.height, *analyse_box)
        return self._jpeg.encode(frame, width, height), width, height


@dataclass
class _VideoPacket:
    codec: str
    packet: av.Packet
    stamp: Stamp | None
    arrival_us: int
    analyse: bool


def _queued(queue: asyncio.Queue[_VideoPacket]) -> list[_VideoPacket]:
    items = []
    while not queue.empty():
        items.append(queue.get_nowait())
    return items


class PerformerFork:
    """Produces one performer's media records; ``run_audio``/``run_video`` consume tracks."""

    def __init__(
        self,
        *,
        settings: Settings,
        producer: AIOKafkaProducer,
        audio_producer: AIOKafkaProducer,
        session: records.SessionRecord,
        performer_id: str,
        jpeg_pool: Executor,
        request_keyframe: Callable[[], None] = lambda: None,
        stats: ForkStats | None = None,
    ) -> None:
        self._settings = settings
        self._producer = producer  # video
        self._audio_producer = audio_producer
        self._session_id = session.session_id
        self._performer_id = performer_id
        self._audio_topic = session.topics.audio
        self._video_topic = session.topics.video
        self._pool = jpeg_pool
        self.stats = ForkStats() if stats is None else stats
        self._audio_seq = 0
        self._video_seq = 0
        self._video_queue: asyncio.Queue[_VideoPacket] = asyncio.Queue(
            maxsize=VIDEO_DECODE_QUEUE_PACKETS
        )
        # Analysed frames (JPEG, header) waiting for Kafka: a stalled broker drops analysis
        # frames here and never holds up the decoder.
        self._analysed: asyncio.Queue[tuple[records.VideoFrame, int]] = asyncio.Queue(
            maxsize=settings.video_queue_frames
        )
        self._video_resync = False  # skipping packets until a keyframe
        self._request_keyframe = request_keyframe
        # One queue per stream: a video ack must not wait behind audio's longer batching.
        self._acks: dict[MediaKind, asyncio.Queue[tuple[asyncio.Future[Any], int]]] = {
            kind: asyncio.Queue(maxsize=256) for kind in ("audio", "video")
        }
        self._audio_queue: asyncio.Queue[tuple[av.Packet, Stamp]] = asyncio.Queue(
            maxsize=AUDIO_QUEUE_FRAMES
        )
        self._video_period_us = round(1_000_000 / settings.video_fps)
        self._next_video_due_us: int | None = None
        self._last_video_timing: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._audio_in_flight = 0
        self._video_decoder = VideoDecoder(JpegEncoder(settings.jpeg_quality))

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._decode_video(), name=f"decode-{self._performer_id}"),
                asyncio.create_task(self._produce_video(), name=f"video-{self._performer_id}"),
                asyncio.create_task(self._cut_audio(), name=f"audio-{self._performer_id}"),
                *(
                    asyncio.create_task(
                        self._await_acks(kind), name=f"{kind}-acks-{self._performer_id}"
                    )
                    for kind in self._acks
                ),
            ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # a fork that failed must not stop the call's cleanup
                log.exception("%s/%s: fork task failed", self._session_id, self._performer_id)
        # Whatever was still queued when the performer left is lost: count it.
        self.stats.video_frames_dropped += self._analysed.qsize() + sum(
            1 for item in _queued(self._video_queue) if item.analyse
        )
        self.stats.audio_chunks_dropped += self._audio_queue.qsize() + self._audio_in_flight

    # ------------------------------------------------------------------ intake
    # Called by the call for every received encoded frame, on the event loop. Never blocks.

    def offer_audio(self, packet: av.Packet, stamp: Stamp) -> None:
        # The first decoded sample was captured a codec lookahead before its RTP time.
        stamp = dataclasses.replace(stamp, ts_us=stamp.ts_us - OPUS_DECODER_DELAY_US)
        try:
            self._audio_queue.put_nowait((packet, stamp))
        except asyncio.QueueFull:
            # Only when Kafka has been unreachable for a minute: counted and shouted about.
            self.stats.audio_chunks_dropped += 1  # one 20 ms Opus frame = one chunk
            log.error("%s/%s: audio fork full, audio lost", self._session_id, self._performer_id)

    def offer_video(
        self,
        codec: str,
        packet: av.Packet,
        *,
        keyframe: bool,
        stamp: Stamp | None,
        arrival_us: int,
    ) -> None:
        """Every packet is offered (the decoder needs them all); ``stamp`` is None when its
        capture time is unknown, and such a frame is decoded but never analysed."""
        self.stats.video_frames_in += 1
        analyse = stamp is not None and self._due_for_analysis(stamp)
        if self._video_resync:
            if not keyframe:
                self._drop_video_packet(analyse)
                return
            self._video_resync = False
        try:
            self._video_queue.put_nowait(_VideoPacket(codec, packet, stamp, arrival_us, analyse))
        except asyncio.QueueFull:
            # The decoder itself is 2 s behind: what follows cannot be decoded without
            # this packet, so skip to a keyframe and ask for one now.
            self._video_resync = True
            self._drop_video_packet(analyse)
            self._request_keyframe()

    def _due_for_analysis(self, stamp: Stamp) -> bool:
        due = self._next_video_due_us
        if due is not None and (
            stamp.ts_us < due - 2 * self._video_period_us - 1_000_000
            or stamp.timing != self._last_video_timing
        ):
            # Time went backwards (a new timeline, or sender reports took over): restart
            # the thinning instead of skipping video for the length of the jump.
            self._next_video_due_us = None
        self._last_video_timing = stamp.timing
        # Thin to the analysis rate on capture time, so network jitter does not change it.
        if self._next_video_due_us is not None and (
            stamp.ts_us < self._next_video_due_us - self._video_period_us // 4
        ):
            self.stats.video_frames_skipped += 1
            return False
        self._next_video_due_us = max(
            (self._next_video_due_us or stamp.ts_us) + self._video_period_us, stamp.ts_us
        )
        return True

    def _drop_video_packet(self, analyse: bool) -> None:
        self.stats.video_packets_dropped += 1
        if analyse:
            self._count_video_drop()

    def _count_video_drop(self) -> None:
        self.stats.video_frames_dropped += 1
        if self.stats.video_frames_dropped % 50 == 1:
            log.warning(
                "%s/%s: video fork behind, %d frames dropped so far",
                self._session_id,
                self._performer_id,
                self.stats.video_frames_dropped,
            )

    # ------------------------------------------------------------------ audio

    async def _cut_audio(self) -> None:
        # Decoding and resampling run in the thread pool, a batch per trip: on the event
        # loop they took ~12% of the capture server's loop with two performers.
        loop = asyncio.get_running_loop()
        cutter = AudioCutter()
        while True:
            batch = [await self._audio_queue.get()]
            while len(batch) < AUDIO_BATCH_FRAMES and not self._audio_queue.empty():
                batch.append(self._audio_queue.get_nowait())
            # Frames taken from the queue but not yet produced: stop() counts them as lost.
            self._audio_in_flight = len(batch)
            try:
                chunks, failed = await loop.run_in_executor(self._pool, cutter.cut, batch)
            except RuntimeError:  # the pool is shut down: the server is stopping
                return
            if failed:
                self.stats.audio_chunks_dropped += failed
                log.warning(
                    "%s/%s: %d audio frames could not be decoded",
                    self._session_id,
                    self._performer_id,
                    failed,
                )
            for pcm, ts_us, anchor in chunks:
                await self._produce_audio(pcm, ts_us, anchor)
            self._audio_in_flight = 0

    async def _produce_audio(self, pcm: bytes, ts_us: int, anchor: Stamp) -> None:
        chunk = records.AudioChunk(
            records.AudioChunkHeader(
                ts_us=ts_us,
                session_id=self._session_id,
                performer_id=self._performer_id,
                seq=self._audio_seq,
                timing=anchor.timing,
                sample_count=AUDIO_CHUNK_SAMPLES,
            ),
            pcm,
        )
        self._audio_seq += 1
        message = records.encode(chunk)
        created = _now_us()
        # Awaiting here is the backpressure: audio waits for Kafka (retrying while the
        # broker is away), it is not dropped.
        delay_s = 0.1
        while True:
            try:
                future = await self._audio_producer.send(
                    self._audio_topic, message.value, key=message.key, headers=message.headers
                )
                break
            except KafkaError as exc:
                self.stats.produce_errors += 1
                log.warning("audio record not accepted by Kafka (%s); retrying", exc)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
        self.stats.audio_chunks_out += 1
        await self._acks["audio"].put((future, created))

    # ------------------------------------------------------------------ video

    async def _decode_video(self) -> None:
        loop = asyncio.get_running_loop()
        box = (self._settings.video_width, self._settings.video_height)
        while True:
            item = await self._video_queue.get()
            analyse = item.analyse
            if analyse and self._analysed.full():
                # Kafka is behind: decode the frame (the next ones need it), skip its JPEG.
                analyse = False
                self._count_video_drop()
            try:
                encoded = await loop.run_in_executor(
                    self._pool,
                    self._video_decoder.decode,
                    item.codec,
                    item.packet,
                    box if analyse else None,
                )
            except (ValueError, av.error.FFmpegError) as exc:
                # A corrupt or undecodable packet: what follows needs a fresh keyframe.
                self.stats.video_decode_errors += 1
                if analyse:
                    self._count_video_drop()
                log.warning("cannot decode a video frame: %s", exc)
                self._request_keyframe()
                continue
            self.stats.video_packets_decoded += 1
            if not analyse or item.stamp is None:
                continue
            if encoded is None:  # the decoder gave no picture for a frame due
                self._count_video_drop()
                continue
            jpeg, width, height = encoded
            stamp = item.stamp
            record = records.VideoFrame(
                records.VideoFrameHeader(
                    ts_us=stamp.ts_us,
                    session_id=self._session_id,
                    performer_id=self._performer_id,
                    seq=self._video_seq,
                    timing=stamp.timing,
                    rtp_timestamp=stamp.rtp_timestamp,
                    width=width,
                    height=height,
                ),
                jpeg,
            )
            self._video_seq += 1
            self._analysed.put_nowait((record, item.arrival_us))  # checked not full above

    async def _produce_video(self) -> None:
        while True:
            record, arrival_us = await self._analysed.get()
            message = records.encode(record)
            try:
                future = await self._producer.send(
                    self._video_topic, message.value, key=message.key, headers=message.headers
                )
            except KafkaError as exc:
                # Video is the stream that may drop: count it and go on with the next one.
                self.stats.produce_errors += 1
                self.stats.video_frames_dropped += 1
                log.warning("video record not accepted by Kafka: %s", exc)
                continue
            self.stats.video_frames_out += 1
            await self._acks["video"].put((future, arrival_us))

    async def _await_acks(self, kind: MediaKind) -> None:
        while True:
            future, arrival = await self._acks[kind].get()
            try:
                await future
            except Exception as exc:  # any Kafka error: counted and logged, never fatal
                self.stats.produce_errors += 1
                log.warning("a media record was not acknowledged: %s", exc)
                continue
            self.stats.add_latency(kind, (_now_us() - arrival) / 1000)
