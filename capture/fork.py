"""The fork: one performer's received audio and video, timestamped and produced to Kafka.

The call forwards the publisher's encoded packets to watchers without decoding them
(capture.forwarding); the fork is the one place a performer's media is decoded.

- Audio: Opus decoded, resampled to 16 kHz mono s16le and cut into 20 ms chunks in the
  thread pool, never on the event loop. Chunks wait in a spool (``audio_spool_s`` of audio,
  in memory) until the broker has acknowledged them: the fork sends the spool's oldest
  chunks as one batch every ``audio_linger_ms``, one batch in flight at a time, and sends
  a batch the broker failed again, in order, with its original ``ts_us``, however long
  the broker is away. Only audio arriving while the spool is full is lost, counted with
  its time span (``audio_lost_ms``, ``audio_lost_spans``). The call never waits.
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
import contextlib
import dataclasses
import fractions
import itertools
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal

import av
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from av.video.reformatter import VideoReformatter

from capture.loop_lag import percentile
from capture.timing import Stamp
from streams import records
from streams.kafka import clients
from streams.session_clock import now_us
from streams.settings import Settings

log = logging.getLogger(__name__)

AUDIO_RATE = 16_000
AUDIO_CHUNK_SAMPLES = 320  # 20 ms
_REANCHOR_US = 15_000  # a jump larger than this (loss, sender restart) re-anchors audio time
# Decoded Opus lags its RTP timestamps by the encoder's lookahead: 312 samples at 48 kHz
# for libopus in the VoIP mode browsers use (measured through aiortc: 313 samples).
OPUS_DECODER_DELAY_US = 6_500
AUDIO_QUEUE_FRAMES = 3000  # 60 s of 20 ms Opus frames waiting to be decoded: only a starved pool
AUDIO_CHUNKS_PER_S = 50
# Chunks sent in one batch at most: 5 s of audio (~240 KB, within the audio producer's
# batch size), so a spool refilled by an outage drains in a few round trips.
AUDIO_SEND_CHUNKS = 250
AUDIO_RETRY_MAX_S = 2.0  # back-off ceiling between attempts while the broker is away
AUDIO_LOST_SPANS_KEPT = 64
AUDIO_MAX_BATCH_BYTES = 512 * 1024
AUDIO_CHUNK_US = AUDIO_CHUNK_SAMPLES * 1_000_000 // AUDIO_RATE
# A performer who leaves has this long to get their spooled audio to the broker.
AUDIO_STOP_FLUSH_S = 5.0
AUDIO_BATCH_FRAMES = 50  # Opus frames decoded in one trip to the thread pool (at most)
# Encoded video packets waiting for the decoder: 2 s at 30 fps. Only a starved thread pool
# fills it; the analysis frames among them are bounded by settings.video_queue_frames.
VIDEO_DECODE_QUEUE_PACKETS = 60
_VIDEO_DECODERS = {"video/vp8": "libvpx", "video/h264": "h264"}


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
    # Audio lost because the spool was full (a broker away for longer than audio_spool_s)
    # or left in it when the performer left with the broker still away, in milliseconds.
    audio_lost_ms: int = 0
    # Attempts the broker refused or timed out; the same chunks are sent again, in order.
    audio_send_retries: int = 0
    produce_errors: int = 0
    video_packets_decoded: int = 0
    video_decode_errors: int = 0
    # packets dropped because the decoder was 2 s behind, or skipped while waiting for the
    # keyframe that resynchronises it (the analysis frames among them are also counted in
    # video_frames_dropped)
    video_packets_dropped: int = 0
    # a video frame's arrival at the server, or an audio chunk cut from arriving frames (its
    # queue is empty unless Kafka stalls) -> record acknowledged by the broker: every
    # record, and per stream (audio includes its gathering in the spool: audio_linger_ms)
    fork_latency_ms: collections.deque[float] = field(default_factory=_latency_samples)
    video_fork_latency_ms: collections.deque[float] = field(default_factory=_latency_samples)
    audio_fork_latency_ms: collections.deque[float] = field(default_factory=_latency_samples)
    # The newest spans of lost audio, (first ts_us, end ts_us) on the session clock.
    audio_lost_spans: collections.deque[tuple[int, int]] = field(
        default_factory=lambda: collections.deque(maxlen=AUDIO_LOST_SPANS_KEPT)
    )

    def count_audio_lost(self, ts_us: int, duration_us: int = AUDIO_CHUNK_US) -> bool:
        """Count lost audio, joined to the newest span when it continues it; True when it
        starts a new span."""
        self.audio_chunks_dropped += 1
        self.audio_lost_ms += duration_us // 1000  # a chunk is 20 ms exactly
        end_us = ts_us + duration_us
        spans = self.audio_lost_spans
        if spans and spans[-1][0] <= ts_us <= spans[-1][1] + duration_us:
            spans[-1] = (spans[-1][0], max(spans[-1][1], end_us))
            return False
        spans.append((ts_us, end_us))
        return True

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
            "audio_lost_ms": self.audio_lost_ms,
            "audio_lost_spans": [list(span) for span in self.audio_lost_spans],
            "audio_send_retries": self.audio_send_retries,
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


def make_fork_audio_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """The capture server's producer for audio. The forks gather a performer's chunks for
    ``audio_linger_ms`` themselves (their spool), so it does not linger; large batches drain
    a spool refilled by a broker outage in a few round trips."""
    options: dict[str, Any] = {"linger_ms": 0, "max_batch_size": AUDIO_MAX_BATCH_BYTES}
    return clients.make_audio_producer(settings, **{**options, **overrides})


@dataclass(frozen=True)
class _SpooledChunk:
    message: records.KafkaMessage
    ts_us: int
    cut_us: int  # wall clock when it was cut: where its fork latency starts


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
        # Video records waiting for their acknowledgement (audio has its spool).
        self._video_acks: asyncio.Queue[tuple[asyncio.Future[Any], int]] = asyncio.Queue(
            maxsize=256
        )
        # Cut audio until the broker acknowledged it; bounded by audio_spool_s of audio.
        self._audio_spool: collections.deque[_SpooledChunk] = collections.deque()
        self._audio_spool_limit = settings.audio_spool_s * AUDIO_CHUNKS_PER_S
        self._audio_spooled = asyncio.Event()
        self._audio_drained = asyncio.Event()
        self._audio_drained.set()
        self._audio_sender: asyncio.Task[None] | None = None
        self._audio_partition: int | None = None
        # Failures of audio sends other than the broker's refusals, by exception type.
        self._audio_send_failures: collections.Counter[str] = collections.Counter()
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
                asyncio.create_task(self._await_video_acks(), name=f"acks-{self._performer_id}"),
            ]
            self._audio_sender = asyncio.create_task(
                self._send_audio(), name=f"audio-send-{self._performer_id}"
            )

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await self._cancel(tasks)
        # What was received is the performer's (nothing new arrives now): the spool gets a
        # few seconds to reach the broker before what is left is counted as lost.
        sender, self._audio_sender = self._audio_sender, None
        if sender is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._audio_drained.wait(), AUDIO_STOP_FLUSH_S)
            await self._cancel([sender])
        # Whatever was still queued when the performer left is lost: count it.
        self.stats.video_frames_dropped += self._analysed.qsize() + sum(
            1 for item in _queued(self._video_queue) if item.analyse
        )
        self.stats.audio_chunks_dropped += self._audio_queue.qsize() + self._audio_in_flight
        if self._audio_spool:
            log.error(
                "%s/%s: %d audio chunks never reached the broker before the performer left",
                self._session_id,
                self._performer_id,
                len(self._audio_spool),
            )
        while self._audio_spool:
            self.stats.count_audio_lost(self._audio_spool.popleft().ts_us)

    async def _cancel(self, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:  # a fork that failed must not stop the call's cleanup
                log.exception("%s/%s: fork task failed", self._session_id, self._performer_id)

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
                self._spool_audio(pcm, ts_us, anchor)
            self._audio_in_flight = 0

    def _spool_audio(self, pcm: bytes, ts_us: int, anchor: Stamp) -> None:
        seq = self._audio_seq
        # A lost chunk keeps its number too: consumers see the loss as a gap in seq.
        self._audio_seq += 1
        if len(self._audio_spool) >= self._audio_spool_limit:
            if self.stats.count_audio_lost(ts_us):
                log.error(
                    "%s/%s: audio spool full (%d s of audio the broker has not taken): "
                    "audio from ts_us %d on is lost and counted",
                    self._session_id,
                    self._performer_id,
                    self._settings.audio_spool_s,
                    ts_us,
                )
            return
        chunk = records.AudioChunk(
            records.AudioChunkHeader(
                ts_us=ts_us,
                session_id=self._session_id,
                performer_id=self._performer_id,
                seq=seq,
                timing=anchor.timing,
                sample_count=AUDIO_CHUNK_SAMPLES,
            ),
            pcm,
        )
        self._audio_spool.append(_SpooledChunk(records.encode(chunk), ts_us, now_us()))
        self._audio_drained.clear()
        self._audio_spooled.set()

    async def _send_audio(self) -> None:
        """Send the spool's oldest chunks, one batch at a time, until the broker has them.

        One batch in flight keeps the topic in ``ts_us`` order even when the broker fails a
        batch: it is sent again before anything newer. Gathering ``audio_linger_ms`` of
        chunks here (the audio producer does not linger) keeps the embedded broker's batch
        count down, as its fetch cost grows with the batches stored.
        """
        linger_us = self._settings.audio_linger_ms * 1000
        retry_s = 0.1
        while True:
            await self._audio_spooled.wait()
            spool = self._audio_spool
            if not spool:
                self._audio_spooled.clear()
                self._audio_drained.set()
                continue
            wait_us = spool[0].cut_us + linger_us - now_us()
            if wait_us > 0 and len(spool) < AUDIO_SEND_CHUNKS:
                await asyncio.sleep(wait_us / 1_000_000)
            group = list(itertools.islice(spool, AUDIO_SEND_CHUNKS))
            try:
                delivered = await self._deliver_audio(group)
            except Exception as exc:
                # Not the broker's refusal (a KafkaError, handled there) but anything else,
                # such as aiokafka asserting the partition is in its metadata: it must not
                # end this task, which would leave the audio to fill the spool and be lost.
                self._audio_partition = None  # chosen again from the current metadata
                self._log_send_failure(exc)
                delivered = 0
            for _ in range(delivered):
                spool.popleft()
            if delivered:
                retry_s = 0.1
                continue
            self.stats.audio_send_retries += 1
            await asyncio.sleep(retry_s)
            retry_s = min(retry_s * 2, AUDIO_RETRY_MAX_S)

    def _log_send_failure(self, exc: Exception) -> None:
        # The first failure of each kind with its traceback, then every 100th: a fault that
        # repeats every retry for an hour must not flood the log.
        kind = type(exc).__name__
        self._audio_send_failures[kind] += 1
        count = self._audio_send_failures[kind]
        if count == 1 or count % 100 == 0:
            log.warning(
                "%s/%s: sending audio failed with %s: %s (%d times so far); sending it again",
                self._session_id,
                self._performer_id,
                kind,
                exc,
                count,
                exc_info=count == 1,
            )

    async def _deliver_audio(self, group: list[_SpooledChunk]) -> int:
        """Send the oldest chunks as one batch and wait for the broker; how many it took.

        One batch of one partition is stored or failed whole, so a failure never leaves a
        hole that later chunks would pass: the topic stays in ``ts_us`` order.
        """
        producer = self._audio_producer
        batch = producer.create_batch()
        taken = 0
        for chunk in group:
            message = chunk.message
            appended = batch.append(
                key=message.key, value=message.value, timestamp=None, headers=message.headers
            )
            if appended is None:  # the batch is full: the rest go in the next one
                break
            taken += 1
        try:
            if self._audio_partition is None:
                # As the producer places a keyed record, so the performer's audio sits on
                # the same partition number as the rest of their records.
                partitions = sorted(await producer.partitions_for(self._audio_topic))
                self._audio_partition = DefaultPartitioner()(group[0].message.key, partitions, [])
            delivery = await producer.send_batch(
                batch, self._audio_topic, partition=self._audio_partition
            )
            await delivery
        except KafkaError as exc:
            log.warning("audio not stored by Kafka (%s); sending it again", exc)
            return 0
        acked_us = now_us()
        self.stats.audio_chunks_out += taken
        for chunk in group[:taken]:
            self.stats.add_latency("audio", (acked_us - chunk.cut_us) / 1000)
        return taken

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
            await self._video_acks.put((future, arrival_us))

    async def _await_video_acks(self) -> None:
        while True:
            future, arrival = await self._video_acks.get()
            try:
                await future
            except Exception as exc:  # any Kafka error: counted and logged, never fatal
                self.stats.produce_errors += 1
                log.warning("a media record was not acknowledged: %s", exc)
                continue
            self.stats.add_latency("video", (now_us() - arrival) / 1000)
