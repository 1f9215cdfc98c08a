"""The model lane beside the processors: how many label windows get a model reading, and
how late (the model part of ``tests.bench.perception``).

The server side as ``livetag worker`` runs it for one session: a fresh embedded broker, the
session's processor process (``python -m streams.features.processors``: prosody, face
workers with the model rater, the aligner) and this process standing in for the capture
server with the media of ``tests.bench.processors`` (15 fps 640x360 JPEG of the face test
videos, 20 ms chunks of speech) for ``performers`` performers at the real rate, with the
default settings (the default model rater and its rate).

- ``model_window_coverage``: of the label windows of the measured span (the newest
  revision of each, read from livetag.labels after the feed stops and the aligner's grace
  for late readings has passed), the share whose ``models`` carries a reading;
- ``model_latency_ms_p99`` (and p50): per model reading of the span, its Kafka timestamp
  (set by the processors' producer) minus the end of its window on the session clock (the
  feeder stamps media with the wall clock, so the two are one time base): how long after
  the last instant it could see the reading was out.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session
from streams.settings import Settings
from taggers.vocabulary import load_vocabulary
from tests import media as test_media
from tests.bench.common import percentile, tree_cpu_seconds
from tests.bench.processors import (
    Feeder,
    Run,
    load_audio,
    load_video,
    start_processor,
    stop_processor,
)

# After the feed stops: the aligner closes the last windows when the features of their
# successors are in, and a late model reading revises a window it finds sent.
SETTLE_S = 15.0
WARMUP_LIMIT_S = 120.0


async def _read_labels_and_readings(
    consumer: Any,
    session: records.SessionRecord,
    windows: dict[tuple[str, int], records.LabelWindow],
    readings: list[tuple[records.ModelReading, int]],
) -> None:
    while True:
        batches = await consumer.getmany(timeout_ms=200)
        for tp, batch in batches.items():
            for message in batch:
                if tp.topic == topics.LABELS:
                    window = records.decode(records.LabelWindow, message.value, message.headers)
                    if window.session_id != session.session_id:
                        continue
                    key = (window.performer_id, window.ts_us)
                    held = windows.get(key)
                    if held is None or held.revision <= window.revision:
                        windows[key] = window
                else:
                    reading = records.decode(records.ModelReading, message.value, message.headers)
                    readings.append((reading, message.timestamp))


async def measure_model_lane(
    settings: Settings, *, performers: int, seconds: float, log_path: Path
) -> dict[str, Any]:
    """Run the processors with the model lane on ``performers`` fed performers."""
    media = test_media.prepare(test_media.default_dir())
    video = load_video(media, seconds=3.0)
    audio = load_audio(media)
    names = [f"p{n}" for n in range(1, performers + 1)]
    session = await create_session(
        settings,
        prompt="model lane bench",
        performer_names=names,
        vocabulary=load_vocabulary(None),
    )
    assert session.topics.model is not None
    run = Run(performers=names, t0_us=time.time_ns() // 1000)
    processor = await start_processor(settings, session.session_id, log_path)
    producer = clients.make_producer(settings)
    audio_producer = clients.make_audio_producer(settings)
    consumer = clients.make_consumer(
        settings, topics.LABELS, session.topics.model, auto_offset_reset="earliest"
    )
    await asyncio.gather(producer.start(), audio_producer.start(), consumer.start())
    windows: dict[tuple[str, int], records.LabelWindow] = {}
    readings: list[tuple[records.ModelReading, int]] = []
    feeder = Feeder(producer, session, run, video, audio, audio_producer=audio_producer)
    feeding = asyncio.create_task(feeder.feed())
    reading = asyncio.create_task(_read_labels_and_readings(consumer, session, windows, readings))
    try:
        started = time.monotonic()
        # Warm up at the feeder's low rate until every performer has a model reading.
        while {r.performer_id for r, _ in readings} != set(names):
            if time.monotonic() - started > WARMUP_LIMIT_S:
                raise RuntimeError(f"no model reading of every performer; see {log_path}")
            if processor.returncode is not None or feeding.done():
                raise RuntimeError(f"processor or feeder stopped; see {log_path}")
            await asyncio.sleep(0.2)
        feeder.full_rate = True
        await asyncio.sleep(2.0)
        span_start_us = time.time_ns() // 1000
        cpu_before = tree_cpu_seconds(processor.pid)
        measured_from = time.monotonic()
        await asyncio.sleep(seconds)
        cpu_cores = (tree_cpu_seconds(processor.pid) - cpu_before) / (
            time.monotonic() - measured_from
        )
        span_end_us = time.time_ns() // 1000
        await asyncio.sleep(1.0)
        feeder.stop = True
        await feeding
        await producer.flush()
        await asyncio.sleep(SETTLE_S)
    finally:
        feeder.stop = True
        for task in (feeding, reading):
            task.cancel()
        await asyncio.gather(feeding, reading, return_exceptions=True)
        await asyncio.gather(producer.stop(), audio_producer.stop(), consumer.stop())
        await stop_processor(processor)
        async with clients.admin_client(settings) as admin:
            await topics.delete_session_topics(admin, session.session_id)

    def in_span(ts_us: int, window_us: int) -> bool:
        return span_start_us <= ts_us and ts_us + window_us <= span_end_us

    span_windows = [w for w in windows.values() if in_span(w.ts_us, w.window_us)]
    # A reading with no frame read (all thinned, or no face) says why, and reads nothing.
    with_model = [w for w in span_windows if any(m.frames_read > 0 for m in w.models)]
    latencies_ms = [
        kafka_ms - (r.ts_us + r.window_us) / 1000
        for r, kafka_ms in readings
        if in_span(r.ts_us, r.window_us)
    ]
    span_readings = [r for r, _ in readings if in_span(r.ts_us, r.window_us)]
    coverage = len(with_model) / len(span_windows) if span_windows else None
    p50 = percentile(latencies_ms, 0.5)
    p99 = percentile(latencies_ms, 0.99)
    return {
        "model_window_coverage": None if coverage is None else round(coverage, 3),
        "model_latency_ms_p99": None if p99 is None else round(p99, 1),
        "model_latency_ms_p50": None if p50 is None else round(p50, 1),
        "model_performers": performers,
        "model_seconds": seconds,
        "model_label_windows": len(span_windows),
        "model_readings": len(span_readings),
        "model_frames_read": sum(r.frames_read for r in span_readings),
        "model_frames_thinned": sum(r.frames_thinned for r in span_readings),
        "model_windows_unread": {
            reason: sum(1 for r in span_readings if r.unread == reason)
            for reason in ("no_face", "thinned", "failed")
        },
        "model_names": sorted({r.model for r in span_readings}),
        "processor_cpu_cores": round(cpu_cores, 2),
    }
