"""Two processor workers share a live session; one is killed; the other takes over."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time

import numpy as np
import pytest

from infra.settings import Settings, to_environment
from streams import kafka, records
from streams.sessions import create_session
from taggers.vocabulary import load_vocabulary

pytestmark = pytest.mark.integration

PERFORMERS = ["p1", "p2", "p3", "p4"]


def tone_chunk(session_id: str, performer_id: str, seq: int, ts_us: int) -> records.AudioChunk:
    t = (np.arange(320) + seq * 320) / 16_000
    pcm = (np.sin(2 * np.pi * 150 * t) * 8000).astype("<i2").tobytes()
    header = records.AudioChunkHeader(
        ts_us=ts_us,
        session_id=session_id,
        performer_id=performer_id,
        seq=seq,
        timing="sender_report",
        sample_count=320,
    )
    return records.AudioChunk(header, pcm)


async def test_a_killed_worker_s_partitions_are_taken_over_without_loss(
    settings: Settings,
) -> None:
    session = await create_session(
        settings, prompt="takeover", performer_names=PERFORMERS, vocabulary=load_vocabulary(None)
    )
    env = {**os.environ, **to_environment(settings)}
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "streams.processors",
            session.model_dump_json(),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    producer = kafka.make_producer(settings)
    consumer = kafka.make_consumer(settings, session.topics.prosody)
    await asyncio.gather(producer.start(), consumer.start())
    sent: dict[str, list[int]] = {performer: [] for performer in PERFORMERS}
    hops: dict[str, set[int]] = {performer: set() for performer in PERFORMERS}

    async def read() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                for message in batch:
                    frame = records.decode(records.ProsodyFrame, message.value, message.headers)
                    hops[frame.performer_id].add(frame.ts_us)

    reader = asyncio.create_task(read())
    t0 = time.time_ns() // 1000
    try:
        # 24 s of audio for 4 performers at real time; kill one worker after 8 s.
        started = time.monotonic()
        for seq in range(1200):
            delay = started + seq * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if seq == 400:
                workers[0].send_signal(signal.SIGKILL)
            for performer in PERFORMERS:
                ts_us = t0 + seq * 20_000
                chunk = tone_chunk(session.session_id, performer, seq, ts_us)
                message = records.encode(chunk)
                await producer.send(
                    session.topics.audio, message.value, key=message.key, headers=message.headers
                )
                sent[performer].append(ts_us)
        await producer.flush()
        last_needed = t0 + 1190 * 20_000  # the newest hops wait for audio that never comes
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                while any(  # noqa: ASYNC110 - the reader task fills `hops`
                    not {ts for ts in sent[p] if ts <= last_needed} <= hops[p] for p in PERFORMERS
                ):
                    await asyncio.sleep(0.5)
        survivor_alive = workers[1].returncode is None
    finally:
        reader.cancel()
        for worker in workers:
            if worker.returncode is None:
                worker.terminate()
                await worker.wait()
        await asyncio.gather(producer.stop(), consumer.stop(), return_exceptions=True)
    assert survivor_alive, "the surviving worker crashed"
    for performer in PERFORMERS:
        missing = [ts for ts in sent[performer] if ts <= last_needed and ts not in hops[performer]]
        assert not missing, f"{performer}: {len(missing)} chunks without a prosody hop"
