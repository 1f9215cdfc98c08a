"""The recorder through the real broker: complete archives, also across a SIGKILL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import av
import pytest

from infra.worker import ProcessorWorker
from streams import records
from streams.archive import store
from streams.archive.recorder import RecorderWorker
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session, publish
from streams.settings import Settings, to_environment
from taggers.vocabulary import load_vocabulary
from tests import archive_samples
from tests import media as test_media
from tests.archive_samples import jpeg
from tests.integration.test_processors import face_frames, speech_chunks
from tests.tag_client import wall_us

pytestmark = pytest.mark.integration


def recorder_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "data_dir": tmp_path / "archive",
            "archive_flush_s": 0.5,
            "archive_quiet_s": 2.0,
            "archive_release_s": 0.5,
            "label_grace_s": 1.0,
            # Below the grace: the last windows go out before the archive is built.
            "label_feature_wait_ms": 500,
        }
    )


async def end_session(settings: Settings, session: records.SessionRecord) -> None:
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        await publish(producer, session.model_copy(update={"state": "ended", "ts_us": wall_us()}))
    finally:
        await producer.stop()


async def wait_for_manifest(folder: Path, timeout_s: float) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while not (folder / store.MANIFEST).is_file():  # noqa: ASYNC110 (a file appears)
            await asyncio.sleep(0.2)
    manifest: dict[str, Any] = json.loads((folder / store.MANIFEST).read_text())
    return manifest


async def test_a_recorder_killed_mid_session_loses_and_doubles_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    own = recorder_settings(settings, tmp_path)
    session = await create_session(
        own, prompt="recorder crash", performer_names=["ana"], vocabulary=load_vocabulary(None)
    )
    sid = session.session_id
    environment = {**os.environ, **to_environment(own)}
    command = [sys.executable, "-m", "infra", "recorder", "--session", sid]
    recorder = await asyncio.create_subprocess_exec(*command, env=environment)
    producer = clients.make_producer(own)
    await producer.start()
    sent: list[tuple[str, int]] = []
    try:
        for k in range(150):  # 6 s of 25 frames/s with 20 ms audio in between
            now = wall_us()
            common = {"session_id": sid, "performer_id": "ana", "seq": k}
            frame = records.VideoFrame(
                records.VideoFrameHeader(
                    ts_us=now, timing="sender_report", width=160, height=90, **common
                ),
                jpeg(k % 200),
            )
            chunk = records.AudioChunk(
                records.AudioChunkHeader(
                    ts_us=now, timing="sender_report", sample_count=320, **common
                ),
                bytes(640),
            )
            for topic, item in ((session.topics.video, frame), (session.topics.audio, chunk)):
                message = records.encode(item)
                await producer.send(topic, message.value, key=message.key, headers=message.headers)
                sent.append((item.record_type, now))
            if k == 60:
                recorder.send_signal(signal.SIGKILL)  # between flushes: some read, not committed
                await recorder.wait()
                recorder = await asyncio.create_subprocess_exec(*command, env=environment)
            await asyncio.sleep(0.04)
        await producer.flush()
    finally:
        await producer.stop()
    await end_session(own, session)
    try:
        manifest = await wait_for_manifest(store.session_dir(own, sid), timeout_s=60)
    finally:
        recorder.terminate()
        await recorder.wait()
    folder = store.session_dir(own, sid)
    back = store.read_media(folder, "ana")
    got = sorted((item.record_type, item.header.ts_us) for item in back)
    assert got == sorted(sent)  # every frame and chunk once: none lost, none doubled
    assert manifest["counts"]["video"] == manifest["counts"]["audio"] == 150
    assert not (folder / "parts").exists()


async def test_a_session_through_the_pipeline_is_archived_exactly_once(
    settings: Settings, tmp_path: Path
) -> None:
    own = recorder_settings(settings, tmp_path)
    media = test_media.prepare(test_media.default_dir())
    session = await create_session(
        own, prompt="archive", performer_names=["alice"], vocabulary=load_vocabulary(None)
    )
    sid = session.session_id
    stop = asyncio.Event()
    worker = asyncio.create_task(ProcessorWorker(own, only_sessions={sid}).run(stop))
    # The scene starts once the processors are up (faust, landmarkers: ~8 s), and its
    # media arrives in real time, as from a call.
    t0 = wall_us() + 10_000_000
    audio = speech_chunks(media, sid, t0)
    video = face_frames(media, sid, t0)
    recording = asyncio.create_task(RecorderWorker(own, only_sessions={sid}).run(stop))
    # Everything the session's topics carry, read independently of the recorder.
    assert session.topics.model is not None
    kind_of = {
        session.topics.prosody: "prosody",
        session.topics.face: "face",
        topics.TAGS: "tags",
        topics.LABELS: "labels",
        topics.RATINGS: "ratings",
        topics.RATERS: "rater_lags",
        session.topics.model: "model",
        topics.CUES: "cues",
    }
    assert sorted(kind_of.values()) == sorted(store.KINDS)
    consumer = clients.make_consumer(own, *kind_of, auto_offset_reset="earliest")
    on_topics: dict[str, dict[tuple[Any, ...], Any]] = {k: {} for k in store.KINDS}

    async def watch() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for partition, messages in batches.items():
                kind = kind_of[partition.topic]
                for message in messages:
                    if not (message.key or b"").startswith(f"{sid}/".encode()):
                        continue
                    for record in store.decode_rows(kind, message.value, message.headers):
                        known = on_topics[kind].get(store.identity(record))
                        if kind in store.NEWEST_ONLY:
                            if known is None or record.ts_us >= known.ts_us:
                                on_topics[kind][store.identity(record)] = record
                        else:
                            on_topics[kind].setdefault(store.identity(record), record)

    await consumer.start()
    watching = asyncio.create_task(watch())
    producer = clients.make_producer(own)
    await producer.start()
    try:
        media_records: list[records.AudioChunk | records.VideoFrame] = [*audio, *video]
        media_records.sort(key=lambda item: item.header.ts_us)
        for item in media_records:
            await asyncio.sleep(max(0.0, (item.header.ts_us - wall_us()) / 1e6))
            message = records.encode(item)
            topic = (
                session.topics.audio
                if isinstance(item, records.AudioChunk)
                else session.topics.video
            )
            await producer.send(topic, message.value, key=message.key, headers=message.headers)
        tag = records.TagEvent(
            ts_us=t0 + 1_000_000,
            session_id=sid,
            performer_id="alice",
            tag_id="archive-tag-0001",
            rater_id="director",
            rater_role="director",
            action="point",
            label="laughter",
            span_us=500_000,
            timing=records.TagTiming(
                client_press_ts_us=t0, clock_offset_us=0, rtt_us=500, clock_uncertainty_us=251
            ),
            received_ts_us=t0 + 1_050_000,
        )
        message = records.encode(tag)
        await producer.send(topics.TAGS, message.value, key=message.key, headers=message.headers)
        await producer.flush()
        await asyncio.sleep(2)  # the last features and label windows
        await end_session(own, session)
        manifest = await wait_for_manifest(store.session_dir(own, sid), timeout_s=120)
    finally:
        stop.set()
        await asyncio.gather(worker, recording, return_exceptions=True)
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
        await consumer.stop()
        await producer.stop()
    folder = store.session_dir(own, sid)
    for kind in store.KINDS:
        stored = store.read_records(folder, kind)
        assert len(stored) == len({store.identity(r) for r in stored}), kind  # no doubles
        assert {store.identity(r): r for r in stored} == on_topics[kind], kind
    assert manifest["counts"]["prosody"] > 300  # ~4 s of speech
    assert manifest["counts"]["face"] == len(video)
    assert manifest["counts"]["tags"] == 1
    assert manifest["counts"]["labels"] > 30
    # The media plays, as long as the session's media lasted (within 100 ms).
    with av.open(str(folder / "media" / "alice.mkv")) as container:
        frames = list(container.decode(video=0))
    span_s = (video[-1].header.ts_us - video[0].header.ts_us) / 1e6
    assert len(frames) == len(video)
    assert abs((frames[-1].time - frames[0].time) - span_s) <= 0.1
    with av.open(str(folder / "media" / "alice.mkv")) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
    assert abs(samples / 16_000 - len(audio) * 0.02) <= 0.1
    # The session is marked archived and its topics are gone (embedded broker).
    async with clients.admin_client(own) as admin:
        names = set(await admin.list_topics())
    assert session.topics.audio not in names


async def test_ratings_lags_and_model_readings_are_archived_as_the_session_had_them(
    settings: Settings, tmp_path: Path
) -> None:
    own = recorder_settings(settings, tmp_path)
    session = await create_session(
        own, prompt="perception", performer_names=["ana"], vocabulary=load_vocabulary(None)
    )
    sid = session.session_id
    assert session.topics.model is not None
    t0 = wall_us()
    rows = [
        row.model_copy(update={"session_id": sid})
        for row in archive_samples.rating_rows("ana", 2.0)
    ]
    batches = archive_samples.carried("ratings", rows)
    other_batch = batches[0].model_copy(
        update={"session_id": "s-other", "batch_id": "batch-of-another-session"}
    )
    lags = [
        records.RaterLag(
            ts_us=t0 + n,
            session_id=session_id,
            rater_id="r1",
            rater_role="observer",
            applied=records.LagCorrection(method="consensus", lag_us=lag_us, confidence=0.5),
        )
        for n, (session_id, lag_us) in enumerate(
            [(sid, 300_000), (sid, 410_000), ("s-other", 999_000)]
        )
    ]
    readings = [
        archive_samples.model_reading("ana", t0 + k * 100_000, k).model_copy(
            update={"session_id": sid}
        )
        for k in range(20)
    ]
    stop = asyncio.Event()
    recording = asyncio.create_task(RecorderWorker(own, only_sessions={sid}).run(stop))
    producer = clients.make_producer(own)
    await producer.start()
    try:
        sends: list[tuple[str, Any]] = [
            *((topics.RATINGS, batch) for batch in [*batches, batches[1], other_batch]),
            *((topics.RATERS, lag) for lag in lags),
            *((session.topics.model, reading) for reading in readings),
        ]
        for topic, item in sends:
            message = records.encode(item)
            await producer.send(topic, message.value, key=message.key, headers=message.headers)
        # Not records: counted by the archive, never fatal.
        for topic in (topics.RATINGS, session.topics.model):
            await producer.send(topic, b"{not a record", key=f"{sid}/ana".encode())
        await producer.flush()
        await end_session(own, session)
        manifest = await wait_for_manifest(store.session_dir(own, sid), timeout_s=60)
    finally:
        stop.set()
        await asyncio.gather(recording, return_exceptions=True)
        await producer.stop()
    folder = store.session_dir(own, sid)
    archived = store.read_records(folder, "ratings")
    assert sorted(row.model_dump_json() for row in archived) == sorted(
        row.model_dump_json() for row in rows
    )
    assert manifest["counts"]["rating_batches"] == len(batches)
    (newest,) = store.read_records(folder, "rater_lags")
    assert (newest.rater_id, newest.applied.lag_us) == ("r1", 410_000)
    assert store.read_records(folder, "model") == readings
    assert manifest["counts"]["undecodable"] == 2
    raters = {rater["rater_id"]: rater for rater in manifest["raters"]}
    assert raters["r1"]["lag_applied"]["lag_us"] == 410_000
