"""Two processor workers share a live session; one is killed; the other takes over."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from typing import Any

import numpy as np
import pytest

from infra.worker import processor_command
from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session
from streams.settings import Settings, to_environment
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


async def start_processor(
    settings: Settings, session: records.SessionRecord
) -> asyncio.subprocess.Process:
    """One session processor, as ``livetag worker`` starts it."""
    return await asyncio.create_subprocess_exec(
        *processor_command(session.session_id),
        env={**os.environ, **to_environment(settings)},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def shut_down(
    reader: asyncio.Task[None], processes: list[asyncio.subprocess.Process], *kafka_clients: Any
) -> None:
    """The reader first (its consumer is stopped after it), then processes and clients."""
    reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader
    for process in processes:
        if process.returncode is None:
            process.terminate()
            await process.wait()
    await asyncio.gather(*(client.stop() for client in kafka_clients), return_exceptions=True)


async def test_a_killed_worker_s_partitions_are_taken_over_without_loss(
    settings: Settings,
) -> None:
    session = await create_session(
        settings, prompt="takeover", performer_names=PERFORMERS, vocabulary=load_vocabulary(None)
    )
    workers = [await start_processor(settings, session) for _ in range(2)]
    producer = clients.make_producer(settings)
    consumer = clients.make_consumer(settings, session.topics.prosody)
    await asyncio.gather(producer.start(), consumer.start())
    sent: dict[str, list[int]] = {performer: [] for performer in PERFORMERS}
    hops: dict[str, set[int]] = {performer: set() for performer in PERFORMERS}

    async def read() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                for message in batch:
                    carried = records.decode(records.ProsodyHops, message.value, message.headers)
                    hops[carried.performer_id].update(hop.ts_us for hop in carried.hops)

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
        await shut_down(reader, workers, producer, consumer)
    assert survivor_alive, "the surviving worker crashed"
    for performer in PERFORMERS:
        missing = [ts for ts in sent[performer] if ts <= last_needed and ts not in hops[performer]]
        assert not missing, f"{performer}: {len(missing)} chunks without a prosody hop"


W = 100_000  # label window (settings default)


def tap(session_id: str, performer_id: str, n: int, ts_us: int) -> records.TagEvent:
    return records.TagEvent(
        ts_us=ts_us,
        session_id=session_id,
        performer_id=performer_id,
        tag_id=f"tap-{n:06d}",
        rater_id="obs-1",
        rater_role="observer",
        action="point",
        label="laughter",
        span_us=4_000_000,  # longer than faust's commit interval: always some in memory
        timing=records.TagTiming(
            client_press_ts_us=ts_us, clock_offset_us=0, rtt_us=1_000, clock_uncertainty_us=500
        ),
        received_ts_us=ts_us,
    )


async def test_a_worker_killed_mid_window_loses_no_tag_from_the_labels(
    settings: Settings,
) -> None:
    """The aligner's state is in memory: what it took in must be re-read after a crash."""
    performers = PERFORMERS[:2]
    session = await create_session(
        settings,
        prompt="aligner crash",
        performer_names=performers,
        vocabulary=load_vocabulary(None),
    )
    processors = [await start_processor(settings, session)]
    producer = clients.make_producer(settings)
    consumer = clients.make_consumer(settings, topics.LABELS)
    await asyncio.gather(producer.start(), consumer.start())
    prefix = f"{session.session_id}/".encode()
    first_copies: dict[tuple[str, int, int], records.LabelWindow] = {}

    async def read() -> None:
        while True:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                for message in batch:
                    if (message.key or b"").startswith(prefix):
                        window = records.decode(records.LabelWindow, message.value, message.headers)
                        identity = (window.performer_id, window.ts_us, window.revision)
                        first_copies.setdefault(identity, window)  # the documented dedupe

    def windows_now() -> dict[tuple[str, int], records.LabelWindow]:
        latest: dict[tuple[str, int], records.LabelWindow] = {}
        for window in first_copies.values():
            known = latest.get((window.performer_id, window.ts_us))
            if known is None or window.revision > known.revision:
                latest[(window.performer_id, window.ts_us)] = window
        return latest

    def missing() -> list[str]:
        latest = windows_now()
        lost = []
        for tag in tags:
            # Every window the tap's span touches, not only the one of its instant.
            assert tag.span_us is not None
            start = tag.ts_us - tag.span_us // 2
            for window_start in range(start // W * W, start + tag.span_us, W):
                window = latest.get((tag.performer_id, window_start))
                ids = [] if window is None else [a.tag_id for r in window.raters for a in r.labels]
                if ids.count(tag.tag_id) != 1:
                    lost.append(f"{tag.tag_id}@{window_start}")
        return lost

    reader = asyncio.create_task(read())
    tags: list[records.TagEvent] = []
    t0 = time.time_ns() // 1000
    try:
        started = time.monotonic()
        kill_at: int | None = None  # 8 s after the labels flow: offsets were committed
        last = 100_000
        seq = 0
        while seq < last:
            delay = started + seq * 0.02 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if kill_at is None and first_copies:
                kill_at = seq + 400
                last = kill_at + 400
            if seq == kill_at:
                processors[0].send_signal(signal.SIGKILL)
                await processors[0].wait()
                processors.append(await start_processor(settings, session))
            if seq > 3000:
                raise AssertionError("the processor gave no labels within a minute")
            ts_us = t0 + seq * 20_000
            for performer in performers:
                message = records.encode(tone_chunk(session.session_id, performer, seq, ts_us))
                await producer.send(
                    session.topics.audio, message.value, key=message.key, headers=message.headers
                )
            if seq % 5 == 0 and seq < last - 100:  # 10 taps/s, each reaching 2 s ahead
                tag = tap(session.session_id, performers[seq // 5 % 2], seq, ts_us)
                message = records.encode(tag)
                await producer.send(
                    topics.TAGS, message.value, key=message.key, headers=message.headers
                )
                tags.append(tag)
            seq += 1
        await producer.flush()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                while missing():  # noqa: ASYNC110 - the reader task fills first_copies
                    await asyncio.sleep(0.5)
        survivor_alive = processors[-1].returncode is None
    finally:
        await shut_down(reader, processors, producer, consumer)
    assert survivor_alive, "the restarted processor crashed"
    lost = missing()
    assert not lost, f"{len(lost)} tag windows of {len(tags)} tags lack their tag: {lost[:5]}"
