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


def rating_batch(
    session_id: str, batch_id: str, rater: str, times: list[int], valence: float
) -> records.RatingBatch:
    return records.RatingBatch.model_validate(
        {
            "ts_us": times[0],
            "session_id": session_id,
            "performer_id": "alice",
            "batch_id": batch_id,
            "rater_id": rater,
            "rater_role": "observer",
            "mode": "valence_arousal",
            "rate_hz": 20,
            "samples": [
                {"ts_us": ts, "client_ts_us": ts, "valence": valence, "arousal": -valence}
                for ts in times
            ],
            "clock_offset_us": 0,
            "clock_uncertainty_us": 500,
            "received_ts_us": times[-1],
        }
    )


def model_reading(session_id: str, ts_us: int, model: str) -> records.ModelReading:
    return records.ModelReading(
        ts_us=ts_us,
        session_id=session_id,
        performer_id="alice",
        window_us=W,
        model=model,
        frames_read=2,
        class_probabilities={"happy": 0.6, "neutral": 0.4},
        probabilities={"amusement": 0.6},
        top_label="amusement",
        valence=0.4,
        arousal=0.1,
    )


async def test_ratings_and_model_readings_reach_the_label_windows_and_lags_are_published(
    settings: Settings,
) -> None:
    own = settings.model_copy(update={"rater_lag_interval_s": 1.0})
    async with clients.admin_client(own) as admin:
        await topics.ensure_shared_topics(admin, own)
    session = await create_session(
        own, prompt="perception", performer_names=["alice"], vocabulary=load_vocabulary(None)
    )
    sid = session.session_id
    assert session.topics.model is not None
    t0 = (time.time_ns() // 1000 // W) * W + 20_000_000  # as in the test above
    stop = asyncio.Event()
    worker = asyncio.create_task(ProcessorWorker(own, only_sessions={sid}).run(stop))
    producer = clients.make_producer(own)
    labels_consumer = clients.make_consumer(own, topics.LABELS, auto_offset_reset="earliest")
    raters_consumer = clients.make_consumer(own, topics.RATERS, auto_offset_reset="earliest")
    latest: dict[int, records.LabelWindow] = {}
    lags: list[records.RaterLag] = []
    await asyncio.gather(producer.start(), labels_consumer.start(), raters_consumer.start())

    async def collect(condition: Any, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():
                for consumer in (labels_consumer, raters_consumer):
                    batches = await consumer.getmany(timeout_ms=100)
                    for batch in batches.values():
                        for message in batch:
                            if not (message.key or b"").startswith(f"{sid}/".encode()):
                                continue
                            if consumer is raters_consumer:
                                lags.append(
                                    records.decode(records.RaterLag, message.value, message.headers)
                                )
                                continue
                            window = records.decode(
                                records.LabelWindow, message.value, message.headers
                            )
                            known = latest.get(window.ts_us)
                            if known is None or window.revision > known.revision:
                                latest[window.ts_us] = window

    try:
        # olga rates valence 0.5 over the first half second, 0.25 over the second, at 20 Hz.
        first_half = [t0 + k * 50_000 for k in range(10)]
        second_half = [t0 + 500_000 + k * 50_000 for k in range(10)]
        await send(
            producer, topics.RATINGS, rating_batch(sid, "batch-olga-1", "olga", first_half, 0.5)
        )
        await send(
            producer, topics.RATINGS, rating_batch(sid, "batch-olga-2", "olga", second_half, 0.25)
        )
        # A tagger who calibrated 200 ms: the aligner publishes the lag it applies to them.
        calibrated = tag(
            sid, "point-amuse-1", "obs", t0 + 250_000, "point", label="amusement", span_us=100_000
        )
        calibrated = calibrated.model_copy(
            update={"timing": calibrated.timing.model_copy(update={"reaction_lag_us": 200_000})}
        )
        await send(producer, topics.TAGS, calibrated)
        for k in range(10):
            await send(producer, session.topics.model, model_reading(sid, t0 + k * W, "fer"))
        hops = prosody_hops(sid, t0, 101)
        for start in range(0, len(hops), 10):
            await send(
                producer, session.topics.prosody, records.ProsodyHops.of(hops[start : start + 10])
            )
        for frame in face_frames(sid, t0, 21):
            await send(producer, session.topics.face, frame)
        await producer.flush()
        await collect(lambda: {t0 + k * W for k in range(10)} <= set(latest), 90)
        await collect(lambda: any(lag.rater_id == "obs" for lag in lags), 30)
        # After the windows went out: another rater's samples of window 3 and another
        # model's reading of window 6 revise them.
        late = rating_batch(sid, "batch-pete-1", "pete", [t0 + 320_000, t0 + 370_000], -0.5)
        await send(producer, topics.RATINGS, late)
        await send(producer, session.topics.model, model_reading(sid, t0 + 6 * W, "other"))
        await producer.flush()
        await collect(
            lambda: len(latest[t0 + 3 * W].ratings) == 2 and len(latest[t0 + 6 * W].models) == 2,
            30,
        )
    finally:
        stop.set()
        await worker
        await asyncio.gather(producer.stop(), labels_consumer.stop(), raters_consumer.stop())
        async with clients.admin_client(own) as admin:
            await topics.delete_session_topics(admin, sid)

    for k in range(10):
        window = latest[t0 + k * W]
        olga = next(trace for trace in window.ratings if trace.rater_id == "olga")
        expected = 0.5 if k < 5 else 0.25
        assert olga.mean == {"valence": expected, "arousal": -expected}, k
        assert (olga.samples, olga.coverage, olga.lag) == (2, 1.0, None), k
        assert window.models[0].model == "fer"
        assert window.models[0].probabilities == {"amusement": 0.6}
    revised = latest[t0 + 3 * W]
    assert revised.correction
    assert revised.revision >= 1
    pete = next(trace for trace in revised.ratings if trace.rater_id == "pete")
    assert pete.mean == {"valence": -0.5, "arousal": 0.5}
    assert [m.model for m in latest[t0 + 6 * W].models] == ["fer", "other"]
    # The tag stands where the tag service put it (the estimate came after it) and the
    # published lag is the calibration the aligner applies from then on.
    assert {a.tag_id for r in latest[t0 + 2 * W].raters for a in r.labels} == {"point-amuse-1"}
    obs = next(lag for lag in lags if lag.rater_id == "obs")
    assert obs.applied == records.LagCorrection(method="calibration", lag_us=200_000)
    assert obs.session_id == sid
