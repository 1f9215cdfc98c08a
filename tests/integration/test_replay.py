"""Replay of an archived session reproduces the feature records within tolerance.

Real speech and a real face go through the processors twice on the embedded broker: once
live (the original session), once replayed from the archive built of the same media into
a new session. The two sets of feature records must agree.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from infra.worker import ProcessorWorker
from streams import records
from streams.archive import replay, store
from streams.kafka import clients, topics
from streams.kafka.sessions import SessionDirectory, create_session
from streams.settings import Settings
from taggers.vocabulary import load_vocabulary
from tests import media as test_media
from tests.integration.test_processors import face_frames, speech_chunks

pytestmark = pytest.mark.integration


async def read_features(
    settings: Settings, session_id: str
) -> tuple[list[records.ProsodyFrame], list[records.FaceFrame]]:
    """Every feature record of a session (once per identity), once they are all out.

    Read until the topics stay quiet: the embedded broker's end offsets can be too low
    to read up to them."""
    names = topics.session_topic_names(session_id)
    consumer = clients.make_consumer(settings, names.prosody, names.face)
    await consumer.start()
    prosody: dict[tuple[str, int], records.ProsodyFrame] = {}
    faces: dict[tuple[str, int], records.FaceFrame] = {}
    try:
        quiet = 0
        async with asyncio.timeout(30):
            while quiet < 4 or not (prosody and faces):
                batches = await consumer.getmany(timeout_ms=300)
                quiet = 0 if batches else quiet + 1
                for partition, batch in batches.items():
                    for message in batch:
                        if partition.topic == names.prosody:
                            carried = records.decode(
                                records.ProsodyHops, message.value, message.headers
                            )
                            for frame in carried.frames():
                                prosody.setdefault((frame.performer_id, frame.ts_us), frame)
                        else:
                            face = records.decode(records.FaceFrame, message.value, message.headers)
                            faces.setdefault((face.performer_id, face.ts_us), face)
    finally:
        await consumer.stop()
    return (
        [prosody[k] for k in sorted(prosody)],
        [faces[k] for k in sorted(faces)],
    )


def archive_media(folder: Path, session: records.SessionRecord, media: list[Any]) -> None:
    """Archive parts as a recorder writes them, then the archive."""
    for kind, model in (("audio", records.AudioChunk), ("video", records.VideoFrame)):
        messages = []
        for offset, item in enumerate(m for m in media if isinstance(m, model)):
            encoded = records.encode(item)
            messages.append(
                store.RawMessage(0, offset, encoded.key, encoded.value, list(encoded.headers))
            )
        store.write_part(folder, kind, 0, messages)
    store.build_archive(folder, session, software={})


async def test_replay_reproduces_feature_records(settings: Settings, tmp_path: Path) -> None:
    # Every frame analysed, in the original and in the replay (whose frames are seconds old
    # by the time it runs): the comparison is of features, not of what a busy worker skipped.
    settings = settings.model_copy(update={"face_max_lag_ms": 0})
    media = test_media.prepare(test_media.default_dir())
    original_id = f"t-{uuid.uuid4().hex[:12]}"
    replay_id = f"{original_id}-r1"
    session = await create_session(
        settings,
        prompt="replay",
        performer_names=["alice"],
        vocabulary=load_vocabulary(None),
        session_id=original_id,
    )
    t0 = time.time_ns() // 1000
    audio = speech_chunks(media, original_id, t0)
    video = face_frames(media, original_id, t0)
    folder = tmp_path / original_id
    folder.mkdir()
    archive_media(folder, session, [*audio, *video])

    stop = asyncio.Event()
    worker = asyncio.create_task(
        ProcessorWorker(settings, only_sessions={original_id, replay_id}).run(stop)
    )
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        # The original, live: media in capture order, as the capture server sends it.
        sent = []
        live: list[replay.MediaRecord] = [*audio, *video]
        for item in sorted(live, key=lambda m: m.header.ts_us):
            topic = session.topics.audio if isinstance(item, records.AudioChunk) else None
            message = records.encode(item)
            sent.append(
                await producer.send(
                    topic or session.topics.video,
                    message.value,
                    key=message.key,
                    headers=message.headers,
                )
            )
        media_ends: dict[TopicPartition, int] = {}
        for meta in await asyncio.gather(*sent):
            partition = TopicPartition(meta.topic, meta.partition)
            media_ends[partition] = max(media_ends.get(partition, 0), meta.offset + 1)
        # Meanwhile the replay runs on its own session, and waits for its processors,
        # saying how far it is as it goes.
        reported: list[tuple[str, int, int]] = []
        result, original_done = await asyncio.wait_for(
            asyncio.gather(
                replay.replay_session(
                    settings,
                    folder,
                    new_session_id=replay_id,
                    progress=lambda *report: reported.append(report),
                ),
                replay.wait_processed(settings, original_id, 90, media_ends=media_ends),
            ),
            timeout=120,
        )
        assert original_done
        original_prosody, original_faces = await read_features(settings, original_id)
        replayed_prosody, replayed_faces = await read_features(settings, replay_id)
        directory = SessionDirectory(settings)
        await directory.start()
        try:
            replayed_session = directory.get(replay_id)
        finally:
            await directory.stop()
    finally:
        stop.set()
        await worker
        await producer.stop()
        async with clients.admin_client(settings) as admin:
            for sid in (original_id, replay_id):
                await topics.delete_session_topics(admin, sid)

    assert result.session_id == replay_id
    assert result.source_session_id == original_id
    assert result.published == {"audio": len(audio), "video": len(video)}
    assert result.ended
    assert result.processed
    # Progress: every record published, one by one, then the processors' commits up to
    # all of them, never going back.
    count = len(audio) + len(video)
    published = [done for step, done, total in reported if step == "publishing"]
    assert published == [*range(1, count + 1), count]
    assert {total for step, _, total in reported} == {count}
    processed = [done for step, done, _ in reported if step == "processing"]
    steps = [step for step, _, _ in reported]
    assert steps == ["publishing"] * len(published) + ["processing"] * len(processed)
    assert processed == sorted(processed)
    assert processed[-1] == count
    assert replayed_session is not None
    assert replayed_session.state == "ended"
    assert replayed_session.roster == session.roster
    assert replayed_session.vocabulary == session.vocabulary

    # Face: one record per frame on the same capture instants, the same faces found.
    assert len(original_faces) == len(video)
    assert all(f.skipped is None for f in [*original_faces, *replayed_faces])
    assert sum(bool(f.face_present) for f in original_faces) > len(video) // 2
    assert [f.ts_us for f in replayed_faces] == [f.ts_us for f in original_faces]
    assert {f.session_id for f in replayed_faces} == {replay_id}
    blend_diff = 0.0
    for before, after in zip(original_faces, replayed_faces, strict=True):
        assert after.video_seq == before.video_seq
        assert after.face_present == before.face_present
        assert after.blendshapes.keys() == before.blendshapes.keys()
        for name, value in before.blendshapes.items():
            blend_diff = max(blend_diff, abs(after.blendshapes[name] - value))
    assert blend_diff <= 0.05

    # Prosody: the same hops; f0 within 1 % where both are voiced; voicing agrees.
    # 10 ms hops: all but the last ones, whose window would need audio after the end.
    assert len(original_prosody) >= len(audio) * 2 - 4
    assert {p.session_id for p in replayed_prosody} == {replay_id}
    assert [p.ts_us for p in replayed_prosody] == [p.ts_us for p in original_prosody]
    pairs = list(zip(original_prosody, replayed_prosody, strict=True))
    agreement = sum(a.voiced == b.voiced for a, b in pairs) / len(pairs)
    assert agreement >= 0.98
    both = [(a.f0_hz, b.f0_hz) for a, b in pairs if a.f0_hz is not None and b.f0_hz is not None]
    assert len(both) > 50
    f0_diff = max(abs(b - a) / a for a, b in both)
    assert f0_diff <= 0.01
    print(
        f"replay {result.wall_s:.2f} s; faces {len(replayed_faces)} max blendshape diff "
        f"{blend_diff:.4f}; hops {len(pairs)} voicing agreement {agreement:.4f}, "
        f"voiced both {len(both)}, max f0 diff {f0_diff:.4%}"
    )
