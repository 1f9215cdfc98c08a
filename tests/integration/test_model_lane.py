"""The model lane end to end: a performer's video in, the built-in FER2013 rater's readings
per label window out on the session's model topic (real broker, real processors, real
models)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from infra.worker import ProcessorWorker
from streams import records
from streams.features import expression_model, face_model
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


async def test_without_the_expression_model_face_features_and_labels_still_flow(
    settings: Settings, tmp_path: Path
) -> None:
    # An install upgraded without `livetag models fetch`: the face model is there, the
    # expression model is not. The processors run without the model lane, not at all.
    settings = settings.model_copy(
        update={
            "cache_dir": tmp_path,
            "face_model_path": face_model.resolve(settings),
            "face_max_lag_ms": 0,
        }
    )
    with pytest.raises(expression_model.ExpressionModelError):
        expression_model.resolve(settings)
    media = test_media.prepare(test_media.default_dir())
    session = await create_session(
        settings,
        prompt="no model file",
        performer_names=["alice"],
        vocabulary=load_vocabulary(None),
    )
    assert session.topics.model is not None
    stop = asyncio.Event()
    processors = ProcessorWorker(settings, only_sessions={session.session_id})
    worker = asyncio.create_task(processors.run(stop))
    producer = clients.make_producer(settings)
    consumer = clients.make_consumer(
        settings, session.topics.face, session.topics.model, topics.LABELS
    )
    await asyncio.gather(producer.start(), consumer.start())
    faces: list[records.FaceFrame] = []
    readings: list[records.ModelReading] = []
    windows: list[records.LabelWindow] = []
    try:
        frames = face_frames(media, session.session_id, time.time_ns() // 1000)
        for frame in frames:
            await send(producer, session.topics.video, frame)
        await producer.flush()
        async with asyncio.timeout(180):
            while len(faces) < len(frames) or not any(w.features.face_frames for w in windows):
                for batch in (await consumer.getmany(timeout_ms=300)).values():
                    for message in batch:
                        try:
                            record = records.decode(
                                topics.record_type_of(message.topic),
                                message.value,
                                message.headers,
                            )
                        except records.RecordError:
                            continue  # livetag.labels is shared: other tests' junk is on it
                        if isinstance(record, records.FaceFrame):
                            faces.append(record)
                        elif isinstance(record, records.ModelReading):
                            readings.append(record)
                        elif (
                            isinstance(record, records.LabelWindow)
                            and record.session_id == session.session_id
                        ):
                            windows.append(record)
        # The processor that made them is still running: the missing file stopped nothing.
        assert processors.children[session.session_id].process.returncode is None
    finally:
        await shut_down(settings, session, stop, worker, producer, consumer)

    assert [f.ts_us for f in faces] == [f.header.ts_us for f in frames]
    assert sum(bool(f.face_present) for f in faces) >= 0.9 * len(frames)
    assert readings == []
    assert all(window.models == [] for window in windows)
