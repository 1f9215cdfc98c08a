"""The fork's backpressure rules, with a fake producer (the e2e tests use the real one)."""

from __future__ import annotations

import asyncio
import fractions
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from unittest import mock

import av
import numpy as np
import pytest
from aiokafka.errors import KafkaTimeoutError
from aiortc.codecs.opus import OpusEncoder

from capture.fork import AUDIO_CHUNK_SAMPLES, OPUS_DECODER_DELAY_US, AudioCutter, PerformerFork
from capture.forwarding import is_vp8_keyframe, make_packet
from capture.timing import Stamp
from streams import records
from streams.settings import Settings
from tests.samples import all_records

SESSION = next(r for r in all_records("s-1") if isinstance(r, records.SessionRecord))
T0 = 1_800_000_000_000_000


class FakeBatch:
    """What the fork appends audio to: aiokafka's BatchBuilder, without a size limit."""

    def __init__(self) -> None:
        self.messages: list[tuple[bytes, list[tuple[str, bytes]]]] = []

    def append(self, *, key: bytes, value: bytes, timestamp: None, headers: Any) -> object:
        self.messages.append((value, headers))
        return object()


class BatchingProducer:
    """The producer calls the audio fork makes besides ``send``."""

    def create_batch(self) -> FakeBatch:
        return FakeBatch()

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2, 3}


class SlowProducer(BatchingProducer):
    """Acknowledges each record only when the test releases it, like a stalled broker."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, list[tuple[str, bytes]]]] = []
        self.release = asyncio.Event()

    async def send(self, topic: str, value: bytes, *, key: bytes, headers: Any) -> Any:
        await self.release.wait()
        self.sent.append((topic, value, headers))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        await self.release.wait()
        self.sent += [(topic, value, headers) for value, headers in batch.messages]
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


def _tone_frame(index: int) -> av.AudioFrame:
    samples = (np.sin(np.arange(960) / 10.0) * 8000).astype(np.int16).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(
        np.repeat(samples, 2, axis=0).reshape(1, -1), format="s16", layout="stereo"
    )
    frame.sample_rate = 48_000
    frame.pts = index * 960
    frame.time_base = fractions.Fraction(1, 48_000)
    return frame


def opus_packets(count: int) -> list[av.Packet]:
    """What a browser publishes: 20 ms Opus frames (pts in 1/48000, as aiortc hands out)."""
    encoder = OpusEncoder()
    packets = []
    for index in range(count + 5):
        payloads, timestamp = encoder.encode(_tone_frame(index))
        packets += [make_packet(payload, timestamp, 48_000) for payload in payloads]
    return packets[:count]


def vp8_packets(count: int, *, keyframe_every: int = 1000) -> list[av.Packet]:
    """A 30 fps VP8 stream of a moving picture, one packet per frame (pts in 1/90000)."""
    codec = av.CodecContext.create("libvpx", "w")
    assert isinstance(codec, av.VideoCodecContext)
    codec.width, codec.height, codec.pix_fmt = 640, 360, "yuv420p"
    codec.time_base = fractions.Fraction(1, 90_000)
    codec.options = {"deadline": "realtime", "cpu-used": "8"}
    codec.gop_size = keyframe_every
    packets = []
    for index in range(count):
        picture = np.full((360, 640, 3), index * 3 % 256, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
        frame.pts = index * 3000
        frame.time_base = codec.time_base
        packets += [make_packet(bytes(p), index * 3000, 90_000) for p in codec.encode(frame)]
    packets += [make_packet(bytes(p), p.pts or 0, 90_000) for p in codec.encode(None)]
    return packets[:count]


def video_frame() -> av.VideoFrame:
    return av.VideoFrame.from_ndarray(np.zeros((360, 640, 3), dtype=np.uint8), format="rgb24")


def offer_video(fork: PerformerFork, packet: av.Packet, stamp: Stamp) -> None:
    fork.offer_video(
        "video/vp8",
        packet,
        keyframe=is_vp8_keyframe(bytes(packet)),
        stamp=stamp,
        arrival_us=stamp.ts_us,
    )


@pytest.fixture
def fork_and_producer() -> tuple[PerformerFork, SlowProducer]:
    producer = SlowProducer()
    fork = PerformerFork(
        settings=Settings(video_fps=15.0, video_queue_frames=4),
        producer=producer,
        audio_producer=producer,
        session=SESSION,
        performer_id="alice",
        jpeg_pool=ThreadPoolExecutor(max_workers=1),
    )
    return fork, producer


async def test_stalled_kafka_drops_video_counted_and_keeps_all_audio(
    fork_and_producer: tuple[PerformerFork, SlowProducer],
) -> None:
    fork, producer = fork_and_producer
    fork.start()
    try:
        # Two seconds of a 30 fps camera and 50 audio frames/s while Kafka is stalled.
        for index, packet in enumerate(vp8_packets(60)):
            ts = T0 + index * 33_333
            offer_video(fork, packet, Stamp(ts, "sender_report", index * 3000))
        for index, packet in enumerate(opus_packets(100)):
            ts = T0 + index * 20_000
            fork.offer_audio(packet, Stamp(ts, "sender_report", index * 960))
        await asyncio.sleep(0.2)
        stats = fork.stats
        assert stats.video_frames_in == 60
        assert stats.video_frames_skipped == 30  # thinned to 15 fps, not a drop
        # The queue holds 4 (+1 being encoded): everything else is dropped and counted.
        assert 20 <= stats.video_frames_dropped <= 26
        assert stats.audio_chunks_dropped == 0
        # The stalled broker holds up analysis frames only: every packet is still decoded,
        # so the video that follows stays decodable.
        await until(lambda: stats.video_packets_decoded == 60)
        assert stats.video_packets_dropped == 0
        producer.release.set()
        await asyncio.sleep(0.5)
    finally:
        await fork.stop()
    audio = [
        records.decode(records.AudioChunk, value, headers)
        for topic, value, headers in producer.sent
        if topic == SESSION.topics.audio
    ]
    # 2 s of 48 kHz stereo -> 16 kHz mono, all of it, in 20 ms chunks with exact times.
    assert len(audio) >= 99
    assert all(chunk.header.sample_count == AUDIO_CHUNK_SAMPLES for chunk in audio)
    assert [chunk.header.seq for chunk in audio] == list(range(len(audio)))
    # Exact times, moved back by the Opus decoder's lookahead.
    start = T0 - OPUS_DECODER_DELAY_US
    assert [chunk.header.ts_us for chunk in audio] == [
        start + n * 20_000 for n in range(len(audio))
    ]


async def test_audio_time_reanchors_after_a_gap(
    fork_and_producer: tuple[PerformerFork, SlowProducer],
) -> None:
    fork, producer = fork_and_producer
    producer.release.set()
    fork.start()
    try:
        packets = opus_packets(20)
        for index in range(10):
            fork.offer_audio(packets[index], Stamp(T0 + index * 20_000, "arrival_fit", 0))
        # Half a second of lost packets, then sender reports take over.
        for index in range(10, 20):
            ts = T0 + 500_000 + index * 20_000
            fork.offer_audio(packets[index], Stamp(ts, "sender_report", 0))
        await asyncio.sleep(0.3)
    finally:
        await fork.stop()
    chunks = [records.decode(records.AudioChunk, v, h) for _, v, h in producer.sent]
    later = [c for c in chunks if c.header.timing == "sender_report"]
    assert later, "no chunk after the gap"
    assert later[0].header.ts_us == T0 + 500_000 + 10 * 20_000 - OPUS_DECODER_DELAY_US
    assert all(c.header.ts_us < T0 + 200_000 for c in chunks if c.header.timing == "arrival_fit")


def test_audio_cutter_counts_an_undecodable_frame_and_keeps_time_across_batches() -> None:
    cutter = AudioCutter()
    packets = opus_packets(30)
    stamps = [Stamp(T0 + index * 20_000, "sender_report", 0) for index in range(30)]
    first, failed_first = cutter.cut(list(zip(packets[:10], stamps[:10], strict=True)))
    garbage = make_packet(b"\xff" * 3, 0, 48_000)
    second, failed_second = cutter.cut(
        [(garbage, stamps[10]), *zip(packets[10:30], stamps[10:30], strict=True)]
    )
    assert (failed_first, failed_second) == (0, 1)
    chunks = first + second
    # 30 frames of 20 ms at 48 kHz = 600 ms = 30 chunks of 320 samples, less the
    # resampler's own delay; every chunk is 20 ms after the one before, on one anchor.
    assert 27 <= len(chunks) <= 30
    assert all(len(pcm) == AUDIO_CHUNK_SAMPLES * 2 for pcm, _, _ in chunks)
    assert [ts for _, ts, _ in chunks] == [T0 + index * 20_000 for index in range(len(chunks))]


async def test_audio_and_video_go_through_their_own_producers() -> None:
    # The capture server batches audio longer than video, on a producer of its own.
    video_producer, audio_producer = SlowProducer(), SlowProducer()
    video_producer.release.set()
    audio_producer.release.set()
    fork = PerformerFork(
        settings=Settings(video_fps=15.0),
        producer=video_producer,
        audio_producer=audio_producer,
        session=SESSION,
        performer_id="alice",
        jpeg_pool=ThreadPoolExecutor(max_workers=1),
    )
    fork.start()
    try:
        for index, packet in enumerate(vp8_packets(10)):
            ts = T0 + index * 33_333
            offer_video(fork, packet, Stamp(ts, "sender_report", index * 3000))
        for index, packet in enumerate(opus_packets(5)):
            fork.offer_audio(packet, Stamp(T0 + index * 20_000, "sender_report", 0))
        stats = fork.stats

        def settled() -> bool:
            video_done = stats.video_frames_out + stats.video_frames_dropped
            acked = len(audio_producer.sent) + len(video_producer.sent)
            return (
                len(audio_producer.sent) >= 4
                and video_done + stats.video_frames_skipped == stats.video_frames_in
                and len(stats.fork_latency_ms) == acked
            )

        await until(settled)
    finally:
        await fork.stop()
    assert {topic for topic, _, _ in audio_producer.sent} == {SESSION.topics.audio}
    assert {topic for topic, _, _ in video_producer.sent} == {SESSION.topics.video}
    assert len(audio_producer.sent) >= 4
    assert fork.stats.video_frames_out == len(video_producer.sent) >= 1
    # Fork latency is kept per stream too: audio's includes its producer's batching delay.
    assert len(fork.stats.audio_fork_latency_ms) == len(audio_producer.sent)
    assert len(fork.stats.video_fork_latency_ms) == len(video_producer.sent)
    assert len(fork.stats.fork_latency_ms) == len(audio_producer.sent) + len(video_producer.sent)


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Wait for ``condition`` (a thread pool encodes the JPEGs: no fixed sleep is safe)."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - the fork's tasks change the state
            await asyncio.sleep(0.01)


class LingeringProducer(BatchingProducer):
    """Takes batches at once and acknowledges them only when the test says so, like a
    broker slow to answer."""

    def __init__(self) -> None:
        self.pending: list[tuple[asyncio.Future[None], int]] = []

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append((future, len(batch.messages)))
        return future

    def records(self) -> int:
        return sum(count for _, count in self.pending)


async def test_video_acks_are_not_held_behind_audio_still_batching() -> None:
    video_producer, audio_producer = SlowProducer(), LingeringProducer()
    video_producer.release.set()
    fork = PerformerFork(
        settings=Settings(video_fps=15.0),
        producer=video_producer,
        audio_producer=audio_producer,
        session=SESSION,
        performer_id="alice",
        jpeg_pool=ThreadPoolExecutor(max_workers=1),
    )
    fork.start()
    try:
        for index, packet in enumerate(opus_packets(5)):
            fork.offer_audio(packet, Stamp(T0 + index * 20_000, "sender_report", 0))
        await until(lambda: len(audio_producer.pending) >= 1)
        ts = T0 + 100_000
        offer_video(fork, vp8_packets(1)[0], Stamp(ts, "sender_report", 9000))
        # The video ack is counted while every audio record is still unacknowledged.
        await until(lambda: len(fork.stats.video_fork_latency_ms) == 1)
        assert not fork.stats.audio_fork_latency_ms
        for future, _ in audio_producer.pending:
            future.set_result(None)
        await until(lambda: len(fork.stats.audio_fork_latency_ms) == audio_producer.records())
    finally:
        await fork.stop()


def test_jpeg_encoder_keeps_aspect_and_ignores_rebased_frame_times() -> None:
    import io

    from PIL import Image

    from capture.fork import JpegEncoder, analysis_size

    assert analysis_size(640, 480, 640, 360) == (480, 360)  # 4:3 camera: not stretched
    assert analysis_size(320, 180, 640, 360) == (640, 360)  # a browser's lowered size
    encoder = JpegEncoder(quality=80)
    for index in range(5):
        frame = video_frame()
        # As a relay's encoder leaves a shared frame: pts rebased to microseconds.
        frame.time_base = fractions.Fraction(1, 1_000_000)
        frame.pts = index * 33
        jpeg = encoder.encode(frame, 640, 360)
        assert Image.open(io.BytesIO(jpeg)).size == (640, 360)


async def test_a_decoder_two_seconds_behind_skips_to_a_keyframe_and_asks_for_one() -> None:
    producer = SlowProducer()
    producer.release.set()
    pool_blocked = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1)
    pool.submit(pool_blocked.wait)  # a starved pool: the decoder cannot run
    requests: list[int] = []
    fork = PerformerFork(
        settings=Settings(video_fps=15.0),
        producer=producer,
        audio_producer=producer,
        session=SESSION,
        performer_id="alice",
        jpeg_pool=pool,
        request_keyframe=lambda: requests.append(1),
    )
    fork.start()
    packets = vp8_packets(100, keyframe_every=80)
    assert [i for i, p in enumerate(packets) if is_vp8_keyframe(bytes(p))] == [0, 80]
    try:

        def offer(first: int, end: int) -> None:
            for index in range(first, end):
                stamp = Stamp(T0 + index * 33_333, "sender_report", index * 3000)
                offer_video(fork, packets[index], stamp)

        offer(0, 1)
        await asyncio.sleep(0)  # the decode task takes the first packet and waits
        offer(1, 80)
        stats = fork.stats
        # 1 taken + 60 queued; from the 62nd packet on, nothing is decodable until the
        # next keyframe: dropped, counted, and a keyframe asked for at once.
        assert stats.video_packets_dropped == 80 - 61
        assert requests == [1]
        pool_blocked.set()
        await until(lambda: stats.video_packets_decoded == 61)
        offer(80, 100)  # the keyframe resynchronises the decoder
        await until(lambda: stats.video_packets_decoded == 81)
        assert stats.video_packets_dropped == 80 - 61
        assert stats.video_decode_errors == 0
        assert stats.video_frames_dropped >= 1  # analysis frames among the dropped packets
    finally:
        pool_blocked.set()
        await fork.stop()
        pool.shutdown()


class FlakyBroker(BatchingProducer):
    """A producer whose broker is away for the first ``outage_attempts`` batches: each
    fails, like a batch that expired in aiokafka's accumulator."""

    def __init__(self, outage_attempts: int) -> None:
        self.outage_attempts = outage_attempts
        self.attempts = 0
        self.stored: list[records.AudioChunk] = []
        self.available = asyncio.Event()
        self.available.set()

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        await self.available.wait()
        self.attempts += 1
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.attempts <= self.outage_attempts:
            future.set_exception(KafkaTimeoutError())
        else:
            for value, headers in batch.messages:
                self.stored.append(records.decode(records.AudioChunk, value, headers))
            future.set_result(None)
        return future


def audio_fork(broker: Any, **settings: Any) -> PerformerFork:
    return PerformerFork(
        settings=Settings(embedded_audio_linger_ms=20, **settings),
        producer=SlowProducer(),
        audio_producer=broker,
        session=SESSION,
        performer_id="alice",
        jpeg_pool=ThreadPoolExecutor(max_workers=1),
    )


async def test_audio_the_broker_failed_is_sent_again_in_order_with_its_capture_times() -> None:
    broker = FlakyBroker(outage_attempts=5)
    fork = audio_fork(broker)
    fork.start()
    try:
        for index, packet in enumerate(opus_packets(150)):
            fork.offer_audio(packet, Stamp(T0 + index * 20_000, "sender_report", index * 960))
        await until(lambda: fork.stats.audio_chunks_out >= 145)
    finally:
        await fork.stop()
    assert fork.stats.audio_send_retries >= 1
    assert fork.stats.audio_chunks_dropped == 0
    assert fork.stats.audio_lost_ms == 0
    seqs = [chunk.header.seq for chunk in broker.stored]
    assert seqs == list(range(len(seqs))), "every chunk once, in order"
    start = broker.stored[0].header.ts_us
    assert [chunk.header.ts_us for chunk in broker.stored] == [
        start + n * 20_000 for n in range(len(seqs))
    ]
    assert fork.stats.audio_chunks_out == len(seqs)


async def test_audio_beyond_the_spool_is_lost_and_counted_with_its_time_span() -> None:
    broker = FlakyBroker(outage_attempts=0)
    broker.available.clear()  # the broker is away: nothing is taken
    fork = audio_fork(broker, audio_spool_s=1)
    fork.start()
    try:
        for index, packet in enumerate(opus_packets(80)):
            fork.offer_audio(packet, Stamp(T0 + index * 20_000, "sender_report", index * 960))
        await until(lambda: fork.stats.audio_chunks_dropped >= 29)
        broker.available.set()  # back: the spool (the first second) is delivered
        await until(lambda: fork.stats.audio_chunks_out >= 50)
    finally:
        await fork.stop()
    stored = [chunk.header for chunk in broker.stored]
    assert len(stored) == 50
    assert [h.seq for h in stored] == list(range(50))
    lost = fork.stats.audio_chunks_dropped
    assert fork.stats.audio_lost_ms == lost * 20
    # One span, from the first chunk that found the spool full to the end of the last.
    assert list(fork.stats.audio_lost_spans) == [
        (stored[-1].ts_us + 20_000, stored[-1].ts_us + 20_000 * (lost + 1))
    ]
    assert fork.stats.counters()["audio_lost_ms"] == lost * 20


async def test_audio_left_in_the_spool_when_the_performer_leaves_is_counted() -> None:
    broker = FlakyBroker(outage_attempts=10**9)  # the broker never takes anything
    fork = audio_fork(broker)
    fork.start()
    for index, packet in enumerate(opus_packets(20)):
        fork.offer_audio(packet, Stamp(T0 + index * 20_000, "sender_report", index * 960))
    await until(lambda: fork.stats.audio_send_retries >= 1)
    with mock.patch("capture.fork.AUDIO_STOP_FLUSH_S", 0.2):
        await fork.stop()
    assert fork.stats.audio_chunks_out == 0
    # 20 Opus frames cut into 19-20 chunks (the decoder's lookahead), all of them lost.
    assert fork.stats.audio_chunks_dropped >= 19
    assert fork.stats.audio_lost_ms == fork.stats.audio_chunks_dropped * 20
    assert len(fork.stats.audio_lost_spans) == 1


class PartitionAssertingProducer(FlakyBroker):
    """Stores every batch, except that its first ``send_batch`` fails as aiokafka's does when
    the partition is missing from its metadata: an AssertionError, not a KafkaError."""

    def __init__(self) -> None:
        super().__init__(outage_attempts=0)
        self.lookups = 0
        self.asserted = False

    async def partitions_for(self, topic: str) -> set[int]:
        self.lookups += 1
        return await super().partitions_for(topic)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> Any:
        if not self.asserted:
            self.asserted = True
            raise AssertionError(f"Unrecognized partition {partition}")
        return await super().send_batch(batch, topic, partition=partition)


async def test_audio_survives_a_send_that_fails_with_no_kafka_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = PartitionAssertingProducer()
    fork = audio_fork(broker)
    fork.start()
    try:
        for index, packet in enumerate(opus_packets(50)):
            fork.offer_audio(packet, Stamp(T0 + index * 20_000, "sender_report", index * 960))
        # Without the fix the sender task ended at the AssertionError: nothing arrived.
        await until(lambda: fork.stats.audio_chunks_out >= 45, timeout_s=5.0)
    finally:
        await fork.stop()
    assert broker.asserted
    assert fork.stats.audio_send_retries == 1
    assert fork.stats.audio_chunks_dropped == fork.stats.audio_lost_ms == 0
    seqs = [chunk.header.seq for chunk in broker.stored]
    assert seqs == list(range(len(seqs))), "every chunk once, in order"
    assert fork.stats.audio_chunks_out == len(seqs)
    # The partition was chosen again from the producer's metadata before the retry.
    assert broker.lookups == 2
    failures = [r for r in caplog.records if "sending audio failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].levelname == "WARNING"
    assert "AssertionError: Unrecognized partition" in failures[0].getMessage()
