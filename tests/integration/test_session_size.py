"""A session record that grows (takes) is bounded, and never travels on a command line:
the worker starts a session's processors by its id, and they read the record from
livetag.sessions."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from dashboard.server import ActionError, DashboardServer
from infra.worker import ProcessorWorker, processor_command
from streams import records
from streams.kafka import clients
from streams.kafka.sessions import SessionDirectory, create_session, publish
from streams.settings import Settings
from taggers.tokens import load_secret
from taggers.vocabulary import load_vocabulary
from tests.integration.test_processor_takeover import tone_chunk

pytestmark = pytest.mark.integration

# Linux refuses a single command-line argument longer than 32 pages (MAX_ARG_STRLEN).
MAX_ARGUMENT_BYTES = 32 * 4096


async def test_takes_beyond_the_limit_are_refused_and_counted(
    settings: Settings, tmp_path: Path
) -> None:
    limited = settings.model_copy(
        update={"dashboard_port": 0, "state_dir": tmp_path / "state", "max_takes_per_session": 2}
    )
    session = await create_session(
        limited, prompt="takes", performer_names=["ana"], vocabulary=load_vocabulary(None)
    )
    dashboard = DashboardServer(limited, secret=load_secret(limited))
    await dashboard.start()
    try:
        sid = session.session_id
        async with asyncio.timeout(10):
            while dashboard._directory.get(sid) is None:
                await dashboard._directory.changed(timeout_s=1.0)
        for action in ("take_start", "take_end", "take_start", "take_end"):
            await dashboard.act(sid, action)
        with pytest.raises(ActionError) as refused:
            await dashboard.act(sid, "take_start")
        assert refused.value.code == "too_many_takes"
        assert "max_takes_per_session" in refused.value.message
        assert dashboard.refusals["too_many_takes"] == 1
        # Ending the session still works, and the record holds the two takes.
        await dashboard.act(sid, "end_session")
    finally:
        await dashboard.stop()
    directory = SessionDirectory(limited)
    await directory.start()
    try:
        async with asyncio.timeout(10):
            while (record := directory.get(sid)) is None or record.state != "ended":
                await directory.changed(timeout_s=1.0)
    finally:
        await directory.stop()
    assert [take.take_id for take in record.takes] == [1, 2]


async def test_the_worker_starts_processors_of_a_session_too_large_for_a_command_line(
    settings: Settings, tmp_path: Path
) -> None:
    local = settings.model_copy(update={"state_dir": tmp_path / "state", "face_processes": 1})
    session = await create_session(
        local, prompt="a long night", performer_names=["ana"], vocabulary=load_vocabulary(None)
    )
    # A record as a spammed take button leaves it (made before takes were bounded, or by
    # another writer): far more than one command-line argument may hold.
    start = session.created_ts_us
    takes = [
        records.Take(take_id=n, start_ts_us=start + 2 * n, end_ts_us=start + 2 * n + 1)
        for n in range(1, 3001)
    ]
    grown = session.model_copy(update={"takes": takes, "ts_us": session.ts_us + 1})
    assert len(grown.model_dump_json()) > MAX_ARGUMENT_BYTES
    producer = clients.make_producer(local)
    consumer = clients.make_consumer(local, session.topics.prosody)
    await asyncio.gather(producer.start(), consumer.start())
    await publish(producer, grown)  # before the worker starts: it knows only this one
    stop = asyncio.Event()
    worker = ProcessorWorker(local, only_sessions={session.session_id})
    running = asyncio.create_task(worker.run(stop))
    try:
        async with asyncio.timeout(30):
            while session.session_id not in worker.children:
                assert not running.done(), running.exception()
                await asyncio.sleep(0.2)
        child = worker.children[session.session_id]
        cmdline = await asyncio.to_thread(Path(f"/proc/{child.process.pid}/cmdline").read_bytes)
        argv = cmdline.split(b"\0")[:-1]
        assert [part.decode() for part in argv] == processor_command(session.session_id)
        # The processors found the session (its topics) on livetag.sessions: a tone on
        # its audio topic comes out as prosody.
        t0 = time.time_ns() // 1000
        for seq in range(100):
            chunk = tone_chunk(session.session_id, "ana", seq, t0 + seq * 20_000)
            message = records.encode(chunk)
            await producer.send(
                session.topics.audio, message.value, key=message.key, headers=message.headers
            )
        await producer.flush()
        hops = 0
        async with asyncio.timeout(60):
            while hops == 0:
                assert child.process.returncode is None, "the processors exited"
                batches = await consumer.getmany(timeout_ms=500)
                hops += sum(len(batch) for batch in batches.values())
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(running, 30)
        await asyncio.gather(producer.stop(), consumer.stop(), return_exceptions=True)
