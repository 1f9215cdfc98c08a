"""The session processors end to end: media records in, feature records out, real broker."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from typing import Any

import av
import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from capture.fork import JpegEncoder
from infra.worker import ProcessorWorker
from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session
from streams.settings import Settings
from taggers.vocabulary import load_vocabulary
from tests import media as test_media

pytestmark = pytest.mark.integration


def speech_chunks(media: test_media.MediaSet, session_id: str, t0: int) -> list[records.AudioChunk]:
    pcm = test_media.speech_pcm_16k(media.speech_low_wav)
    chunks = []
    for n in range(len(pcm) // 640):
        header = records.AudioChunkHeader(
            ts_us=t0 + n * 20_000,
            session_id=session_id,
            performer_id="alice",
            seq=n,
            timing="sender_report",
            sample_count=320,
        )
        chunks.append(records.AudioChunk(header, pcm[n * 640 : (n + 1) * 640]))
    return chunks


def face_frames(media: test_media.MediaSet, session_id: str, t0: int) -> list[records.VideoFrame]:
    container = av.open(str(media.single_face_mp4))
    encoder = JpegEncoder(quality=80)
    frames: list[records.VideoFrame] = []
    for index, frame in enumerate(container.decode(video=0)):
        if index % 2:
            continue  # 15 fps, as the capture server forks
        header = records.VideoFrameHeader(
            ts_us=t0 + len(frames) * 66_667,
            session_id=session_id,
            performer_id="alice",
            seq=len(frames),
            timing="sender_report",
            width=640,
            height=360,
        )
        frames.append(records.VideoFrame(header, encoder.encode(frame, 640, 360)))
    container.close()
    return frames


async def shut_down(
    settings: Settings,
    session: records.SessionRecord,
    stop: asyncio.Event,
    worker: asyncio.Task[None],
    *kafka_clients: Any,
) -> None:
    """Stop the worker, then the test's Kafka clients, and drop the session's topics."""
    stop.set()
    await worker
    await asyncio.gather(*(client.stop() for client in kafka_clients))
    async with clients.admin_client(settings) as admin:
        await topics.delete_session_topics(admin, session.session_id)


async def send(producer: AIOKafkaProducer, topic: str, record: records.AnyRecord) -> None:
    message = records.encode(record)
    await producer.send(topic, message.value, key=message.key, headers=message.headers)


async def test_media_records_become_feature_records(settings: Settings) -> None:
    # Every frame analysed, however late: the frames are all sent before the processors
    # have joined their group (a few seconds), which would make them late.
    settings = settings.model_copy(update={"face_max_lag_ms": 0})
    media = test_media.prepare(test_media.default_dir())
    session = await create_session(
        settings,
        prompt="processors",
        performer_names=["alice", "bob"],
        vocabulary=load_vocabulary(None),
    )
    t0 = time.time_ns() // 1000
    audio = speech_chunks(media, session.session_id, t0)
    video = face_frames(media, session.session_id, t0)
    stop = asyncio.Event()
    worker = asyncio.create_task(
        ProcessorWorker(settings, only_sessions={session.session_id}).run(stop)
    )
    producer = clients.make_producer(settings)
    consumer = clients.make_consumer(
        settings, session.topics.prosody, session.topics.face, topics.DEADLETTER
    )
    found: dict[str, list[Any]] = defaultdict(list)
    dead: list[records.DeadLetter] = []
    await asyncio.gather(producer.start(), consumer.start())
    try:
        for chunk in audio:
            await send(producer, session.topics.audio, chunk)
        for frame in video:
            await send(producer, session.topics.video, frame)
        # Records that are not a video frame or an audio chunk at all, and a frame whose
        # JPEG does not decode (it fails in a face worker): dead-lettered, the rest flows.
        await producer.send(session.topics.video, b"\xff\xfe not a frame", key=b"x/alice")
        await producer.send(session.topics.audio, b"\xff\xfe not a chunk", key=b"x/alice")
        broken = video[0].header.model_copy(update={"performer_id": "bob", "seq": 0})
        await send(producer, session.topics.video, records.VideoFrame(broken, b"\xff\xd8 cut"))
        await producer.flush()
        wanted_prosody = len(audio) * 2 - 10  # 10 ms hops; the tail waits for more audio
        async with asyncio.timeout(120):
            while (
                len(found["prosody"]) < wanted_prosody
                or len(found["face"]) < len(video)
                or len(dead) < 3
            ):
                batches = await consumer.getmany(timeout_ms=300)
                for batch in batches.values():
                    for message in batch:
                        record_type = topics.record_type_of(message.topic)
                        record = records.decode(record_type, message.value, message.headers)
                        if isinstance(record, records.DeadLetter):
                            if record.source_topic in (
                                session.topics.video,
                                session.topics.audio,
                            ):
                                dead.append(record)
                        elif isinstance(record, records.ProsodyHops):
                            found["prosody"].extend(record.frames())
                        else:
                            found["face"].append(record)
    finally:
        await shut_down(settings, session, stop, worker, producer, consumer)

    prosody = [r for r in found["prosody"] if isinstance(r, records.ProsodyFrame)]
    faces = [r for r in found["face"] if isinstance(r, records.FaceFrame)]
    # Identity = key + ts_us: hops on the 10 ms grid of the audio's own capture times.
    stamps = sorted({r.ts_us for r in prosody})
    assert stamps[0] == t0
    assert all((s - t0) % 10_000 == 0 for s in stamps)
    assert {r.performer_id for r in prosody} == {"alice"}
    voiced = [r.f0_hz for r in prosody if r.f0_hz is not None]
    assert len(voiced) > 50
    assert 60 < float(np.median(voiced)) < 300
    # Every video frame gave one face record, on the frame's own capture time, in capture
    # order (frames are analysed several at a time; their records go out in order).
    assert [r.ts_us for r in faces] == [f.header.ts_us for f in video]
    assert sum(bool(r.face_present) for r in faces) >= 0.95 * len(video)
    reasons = {(d.source_topic, d.source_key): d.reason for d in dead}
    assert reasons[(session.topics.video, "x/alice")].startswith("video_frame:")
    assert reasons[(session.topics.audio, "x/alice")].startswith("audio_chunk:")
    bob = records.performer_key(session.session_id, "bob").decode()
    assert "JPEG does not decode" in reasons[(session.topics.video, bob)]


async def test_a_backlog_the_processors_read_late_is_skipped_in_order(settings: Settings) -> None:
    media = test_media.prepare(test_media.default_dir())
    session = await create_session(
        settings,
        prompt="processors behind",
        performer_names=["alice"],
        vocabulary=load_vocabulary(None),
    )
    # A backlog that waits in Kafka while the processors start (~8 s): far past the lag
    # budget by the time they read it.
    late = face_frames(media, session.session_id, time.time_ns() // 1000 - 60_000_000)
    stop = asyncio.Event()
    worker = asyncio.create_task(
        ProcessorWorker(settings, only_sessions={session.session_id}).run(stop)
    )
    producer = clients.make_producer(settings)
    consumer = clients.make_consumer(settings, session.topics.face)
    faces: list[records.FaceFrame] = []
    await asyncio.gather(producer.start(), consumer.start())
    try:
        for frame in late:
            await send(producer, session.topics.video, frame)
        await producer.flush()
        async with asyncio.timeout(120):
            while len(faces) < len(late):
                batches = await consumer.getmany(timeout_ms=300)
                for batch in batches.values():
                    faces += [records.decode(records.FaceFrame, m.value, m.headers) for m in batch]
    finally:
        await shut_down(settings, session, stop, worker, producer, consumer)
    # One record per frame, in capture order, each saying it was knowingly skipped.
    assert [(f.ts_us, f.video_seq) for f in faces] == [(v.header.ts_us, v.header.seq) for v in late]
    assert {(f.skipped, f.face_present, f.landmarks) for f in faces} == {("late", None, None)}
