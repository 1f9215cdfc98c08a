"""Fork audio across a broker outage longer than the producer's request timeout."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from capture.fork import PerformerFork, make_fork_audio_producer
from capture.timing import Stamp
from infra.broker import EmbeddedBroker
from streams import records
from streams.kafka import clients, topics
from streams.settings import Settings
from tests.samples import all_records
from tests.unit.test_fork import SlowProducer, opus_packets

pytestmark = pytest.mark.integration

T0 = 1_800_000_000_000_000
REQUEST_TIMEOUT_MS = 2_000  # the outage below is three times as long


async def read_audio(settings: Settings, topic: str, wanted: int) -> list[records.AudioChunk]:
    consumer = clients.make_consumer(settings, topic, group_id=None)
    chunks: list[records.AudioChunk] = []
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while len(chunks) < wanted:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    chunks += [
                        records.decode(records.AudioChunk, m.value, m.headers) for m in batch
                    ]
    finally:
        await consumer.stop()
    return chunks


async def test_no_audio_is_lost_while_the_broker_is_away_longer_than_the_request_timeout(
    tmp_path: Path,
) -> None:
    # A broker of its own: this one is frozen (SIGSTOP) as a broker restarting on its log
    # looks to clients, and the shared one must not be.
    broker = EmbeddedBroker(port=0, log_path=tmp_path / "broker.log")
    broker.start()
    session_id = f"t-{uuid.uuid4().hex[:12]}"
    settings = Settings(broker_port=broker.port, state_dir=tmp_path)
    session = next(r for r in all_records(session_id) if isinstance(r, records.SessionRecord))
    producer = make_fork_audio_producer(settings, request_timeout_ms=REQUEST_TIMEOUT_MS)
    try:
        async with clients.admin_client(settings) as admin:
            await topics.create_session_topics(admin, settings, session_id)
        await producer.start()
        fork = PerformerFork(
            settings=settings,
            producer=SlowProducer(),
            audio_producer=producer,
            session=session,
            performer_id=session.roster[0].performer_id,
            jpeg_pool=ThreadPoolExecutor(max_workers=1),
        )
        packets = opus_packets(500)  # 10 s of a performer's audio, fed at its real pace
        fork.start()

        async def feed(first: int, last: int) -> None:
            for index in range(first, last):
                stamp = Stamp(T0 + index * 20_000, "sender_report", index * 960)
                fork.offer_audio(packets[index], stamp)
                await asyncio.sleep(0.02)

        await feed(0, 100)
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            await feed(100, 400)  # 6 s away: batches in flight expire in the producer
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        await feed(400, 500)
        async with asyncio.timeout(30):
            while fork.stats.audio_chunks_out < 490:  # noqa: ASYNC110 - the fork's task counts
                await asyncio.sleep(0.1)
        await fork.stop()
        stats = fork.stats
        assert stats.audio_send_retries >= 1, "the outage must have failed a batch"
        assert stats.audio_lost_ms == 0
        assert stats.audio_chunks_dropped == 0

        stored = await read_audio(settings, session.topics.audio, stats.audio_chunks_out)
    finally:
        await producer.stop()
        broker.stop()
    seqs = [chunk.header.seq for chunk in stored]
    # Every chunk is there; a batch whose answer the outage lost may be there twice (the
    # prosody tracker skips the copy), but nothing newer ever comes before something older.
    assert sorted(set(seqs)) == list(range(stats.audio_chunks_out))
    first_seen = list(dict.fromkeys(seqs))
    assert first_seen == sorted(first_seen)
    times = {chunk.header.seq: chunk.header.ts_us for chunk in stored}
    assert [times[seq] for seq in first_seen] == sorted(times.values())
