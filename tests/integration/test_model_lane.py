"""The model lane end to end: a performer's video in, the built-in FER2013 rater's readings
per label window out on the session's model topic (real broker, real processors, real
models)."""

from __future__ import annotations

import asyncio
import time

import pytest

from infra.worker import ProcessorWorker
from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session
from streams.settings import Settings
from taggers.vocabulary import load_vocabulary
from tests import media as test_media
from tests.integration.test_processors import face_frames, send, shut_down

pytestmark = pytest.mark.integration


async def test_a_performers_video_gets_a_model_reading_per_label_window(
    settings: Settings,
) -> None:
    # Frames go one at a time, each once the previous one's face record is out, so the
    # face worker is never behind and the model reads the first frame of every 100 ms slot:
    # what is thinned is then the rate's doing alone, whatever else loads the machine.
    settings = settings.model_copy(update={"face_max_lag_ms": 0})
    media = test_media.prepare(test_media.default_dir())
    vocabulary = load_vocabulary(None)
    session = await create_session(
        settings, prompt="model lane", performer_names=["alice"], vocabulary=vocabulary
    )
    assert session.topics.model is not None
    stop = asyncio.Event()
    worker = asyncio.create_task(
        ProcessorWorker(settings, only_sessions={session.session_id}).run(stop)
    )
    producer = clients.make_producer(settings)
    consumer = clients.make_consumer(settings, session.topics.face, session.topics.model)
    await asyncio.gather(producer.start(), consumer.start())
    readings: list[records.ModelReading] = []
    faces: list[records.FaceFrame] = []

    async def read_some() -> None:
        for batch in (await consumer.getmany(timeout_ms=300)).values():
            for message in batch:
                record = records.decode(
                    topics.record_type_of(message.topic), message.value, message.headers
                )
                if isinstance(record, records.ModelReading):
                    readings.append(record)
                elif isinstance(record, records.FaceFrame):
                    faces.append(record)

    window_us = settings.label_window_ms * 1000
    try:
        frames = face_frames(media, session.session_id, time.time_ns() // 1000)
        async with asyncio.timeout(180):
            for sent, frame in enumerate(frames, start=1):
                await send(producer, session.topics.video, frame)
                await producer.flush()
                while len(faces) < sent:
                    await read_some()
        windows = {frame.header.ts_us // window_us * window_us for frame in frames}
        async with asyncio.timeout(60):
            while {r.ts_us for r in readings} != windows:
                await read_some()
    finally:
        await shut_down(settings, session, stop, worker, producer, consumer)

    # Every window with frames has exactly one reading, of the built-in rater, and every
    # frame is accounted for: read, thinned, or (not counted) without a face.
    assert sorted(r.ts_us for r in readings) == sorted(windows)
    assert {(r.performer_id, r.model, r.window_us) for r in readings} == {
        ("alice", "fer-mini-xception", window_us)
    }
    assert all(r.frames_failed == 0 for r in readings)
    counted = sum(r.frames_read + r.frames_thinned for r in readings)
    assert 0.9 * len(frames) <= counted <= len(frames)
    # At 10 Hz, one frame per 100 ms window is read: each window read a frame, unless it
    # had no face at all.
    read = [r for r in readings if r.frames_read]
    assert all(r.frames_read == 1 or r.unread == "no_face" for r in readings), [
        (r.frames_read, r.frames_thinned, r.unread) for r in readings
    ]
    assert len(read) >= 0.9 * len(readings)
    assert sum(r.frames_thinned for r in readings) == counted - len(read)
    labels = {entry.label for entry in vocabulary}
    for reading in read:
        assert sum(reading.class_probabilities.values()) == pytest.approx(1.0, abs=1e-3)
        assert set(reading.probabilities) <= labels
        assert reading.top_label is None or reading.top_label in labels
        assert reading.valence is not None
        assert reading.arousal is not None
    # A smiling man: more amusement than sadness to the model, over the clip.
    amusement = sum(r.probabilities["amusement"] for r in read) / len(read)
    sadness = sum(r.probabilities["sadness"] for r in read) / len(read)
    assert amusement > sadness
