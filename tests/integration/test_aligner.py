"""The aligner through the real broker: known features and tags in, expected windows out."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from infra.worker import ProcessorWorker
from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session
from streams.settings import Settings
from taggers.vocabulary import load_vocabulary
from tests.tag_client import serve_tags

pytestmark = pytest.mark.integration

W = 100_000


async def send(producer: AIOKafkaProducer, topic: str, record: records.AnyRecord) -> None:
    message = records.encode(record)
    await producer.send(topic, message.value, key=message.key, headers=message.headers)


def prosody_hops(session_id: str, t0: int, count: int) -> list[records.ProsodyFrame]:
    # Voiced at 200 Hz for the first 500 ms, unvoiced after; loudness -20 dB throughout.
    return [
        records.ProsodyFrame(
            ts_us=t0 + n * 10_000,
            session_id=session_id,
            performer_id="alice",
            f0_hz=200.0 if n < 50 else None,
            voicing_probability=0.9 if n < 50 else 0.1,
            voiced=n < 50,
            loudness_db=-20.0,
        )
        for n in range(count)
    ]


def face_frames(session_id: str, t0: int, count: int) -> list[records.FaceFrame]:
    landmarks = records.Landmarks.from_xyz(np.zeros((478, 3), dtype=np.float32))
    return [
        records.FaceFrame(
            ts_us=t0 + n * 50_000,
            session_id=session_id,
            performer_id="alice",
            video_seq=n,
            face_present=True,
            landmarks=landmarks,
            blendshapes={"mouthSmileLeft": 0.8, "jawOpen": 0.3, "eyeBlinkLeft": 0.05},
            head_pose=records.HeadPose(yaw_deg=10.0, pitch_deg=-2.0, roll_deg=1.0),
        )
        for n in range(count)
    ]


def tag(
    session_id: str, tag_id: str, rater: str, ts_us: int, action: str, **fields: Any
) -> records.TagEvent:
    return records.TagEvent(
        ts_us=ts_us,
        session_id=session_id,
        performer_id="alice",
        tag_id=tag_id,
        rater_id=rater,
        rater_role="observer",
        action=action,
        timing=records.TagTiming(
            client_press_ts_us=ts_us, clock_offset_us=0, rtt_us=500, clock_uncertainty_us=251
        ),
        received_ts_us=ts_us,
        **fields,
    )


async def test_features_and_tags_become_label_windows_and_a_late_tag_corrects(
    settings: Settings,
) -> None:
    session = await create_session(
        settings, prompt="aligner", performer_names=["alice"], vocabulary=load_vocabulary(None)
    )
    sid = session.session_id
    # Windows on the 100 ms grid, starting 20 s from now: the processors start (faust,
    # group join, landmarkers: ~8 s) and read everything before the first window is due,
    # so which windows go out when is the aligner's doing, not the start-up's.
    t0 = (time.time_ns() // 1000 // W) * W + 20_000_000
    stop = asyncio.Event()
    worker = asyncio.create_task(ProcessorWorker(settings, only_sessions={sid}).run(stop))
    producer = clients.make_producer(settings)
    consumer = clients.make_consumer(settings, topics.LABELS, auto_offset_reset="earliest")
    labels: list[records.LabelWindow] = []
    await asyncio.gather(producer.start(), consumer.start())

    async def collect(condition: Any, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():
                batches = await consumer.getmany(timeout_ms=200)
                for batch in batches.values():
                    for message in batch:
                        if (message.key or b"").startswith(f"{sid}/".encode()):
                            labels.append(
                                records.decode(records.LabelWindow, message.value, message.headers)
                            )

    try:
        await send(
            producer,
            topics.TAGS,
            tag(
                sid,
                "point-laugh-1",
                "dir",
                t0 + 250_000,
                "point",
                label="laughter",
                span_us=200_000,
            ),
        )
        await send(
            producer,
            topics.TAGS,
            tag(sid, "hold-surprise-1", "obs", t0 + 600_000, "onset", label="surprise"),
        )
        await send(
            producer,
            topics.TAGS,
            tag(
                sid,
                "hold-surprise-2",
                "obs",
                t0 + 800_000,
                "offset",
                label="surprise",
                onset_tag_id="hold-surprise-1",
            ),
        )
        # A re-delivered copy: stored once.
        await send(
            producer,
            topics.TAGS,
            tag(
                sid,
                "point-laugh-1",
                "dir",
                t0 + 250_000,
                "point",
                label="laughter",
                span_us=200_000,
            ),
        )
        await producer.flush()
        hops = prosody_hops(sid, t0, 101)
        for start in range(0, len(hops), 10):  # as the processors send them
            await send(
                producer, session.topics.prosody, records.ProsodyHops.of(hops[start : start + 10])
            )
        for frame in face_frames(sid, t0, 21):
            await send(producer, session.topics.face, frame)
        await producer.flush()
        await collect(lambda: {w.ts_us for w in labels} >= {t0 + k * W for k in range(10)}, 90)
        # Pressed long ago, arriving now: the window it lands in goes out again, corrected.
        late = tag(
            sid, "late-anger-1", "obs", t0 + 150_000, "point", label="anger", span_us=100_000
        )
        await send(producer, topics.TAGS, late)
        await producer.flush()
        await collect(lambda: any(w.correction for w in labels), 30)
    finally:
        stop.set()
        await worker
        await asyncio.gather(producer.stop(), consumer.stop())
        async with clients.admin_client(settings) as admin:
            await topics.delete_session_topics(admin, sid)

    first = {w.ts_us: w for w in labels if w.revision == 0}
    assert sorted(first)[:10] == [t0 + k * W for k in range(10)]
    for k in range(10):
        window = first[t0 + k * W]
        assert window.window_us == W
        features = window.features
        assert features.loudness_mean_db == -20.0
        assert features.voiced_fraction == (1.0 if k < 5 else 0.0)
        assert features.f0_mean_hz == (200.0 if k < 5 else None)
        assert features.face_present_fraction == 1.0
        assert list(features.top_blendshapes)[:2] == ["mouthSmileLeft", "jawOpen"]
        assert features.head_pose is not None
        assert features.head_pose.yaw_deg == 10.0
        active = {(r.rater_id, a.label, a.tag_id) for r in window.raters for a in r.labels}
        expected = set()
        if k in (1, 2, 3):  # [150, 350) ms overlaps windows 1, 2, 3
            expected.add(("dir", "laughter", "point-laugh-1"))
        if k in (6, 7):  # held from 600 to 800 ms
            expected.add(("obs", "surprise", "hold-surprise-1"))
        assert active == expected, k
        assert window.consensus == (None if not expected else next(iter(expected))[1])
    corrections = [w for w in labels if w.correction]
    assert [w.ts_us for w in corrections] == [t0 + W]
    [corrected] = corrections
    assert corrected.revision == 1
    assert {(r.rater_id, a.label) for r in corrected.raters for a in r.labels} == {
        ("dir", "laughter"),
        ("obs", "anger"),
    }
    assert corrected.consensus is None  # one rater each: a tie
    assert corrected.features == first[t0 + W].features


async def test_200_tags_through_a_dropped_connection_are_each_in_the_labels_once(
    settings: Settings, tmp_path: Path
) -> None:
    session = await create_session(
        settings, prompt="zero loss", performer_names=["alice"], vocabulary=load_vocabulary(None)
    )
    sid = session.session_id
    stop = asyncio.Event()
    worker = asyncio.create_task(ProcessorWorker(settings, only_sessions={sid}).run(stop))
    tag_settings = settings.model_copy(update={"state_dir": tmp_path / "state"})
    try:
        async with serve_tags(tag_settings, session) as served:
            client = served.client(participant="obs", role="observer")
            await client.connect()
            try:
                # The connection dies with 100 tags stored but their acks lost, and 100
                # more just sent into it. A 1 µs span puts each tag in exactly one window.
                client.deaf = True
                sent = []
                for n in range(200):
                    sent.append(await client.tag("alice", "confusion", span_us=1))
                    await asyncio.sleep(0.005)
                    if n == 99:
                        await client.sent_all()
                        await asyncio.sleep(0.5)
                await client.sent_all()
                await client.drop()
                assert set(client.unacked) == set(sent)
                client.deaf = False
                await client.connect()
                await client.wait_acked(sent, timeout_s=20)
            finally:
                await client.close()
        latest: dict[int, records.LabelWindow] = {}
        consumer = clients.make_consumer(settings, topics.LABELS, auto_offset_reset="earliest")
        await consumer.start()

        def labelled() -> Counter[str]:
            return Counter(
                active.tag_id
                for window in latest.values()
                for rater in window.raters
                for active in rater.labels
            )

        try:
            async with asyncio.timeout(90):
                while set(labelled()) != set(sent):
                    batches = await consumer.getmany(timeout_ms=200)
                    for batch in batches.values():
                        for message in batch:
                            if not (message.key or b"").startswith(f"{sid}/".encode()):
                                continue
                            window = records.decode(
                                records.LabelWindow, message.value, message.headers
                            )
                            known = latest.get(window.ts_us)
                            if known is None or window.revision >= known.revision:
                                latest[window.ts_us] = window
        finally:
            await consumer.stop()
    finally:
        stop.set()
        await worker
        async with clients.admin_client(settings) as admin:
            await topics.delete_session_topics(admin, sid)
    # The consumer's view (newest revision of each window): every tag, in one window, once.
    assert labelled() == Counter(dict.fromkeys(sent, 1))
