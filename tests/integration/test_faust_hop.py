from __future__ import annotations

import asyncio
import os
import sys
import uuid

import pytest
from aiokafka.admin import NewTopic

from streams.kafka import clients
from streams.settings import Settings

pytestmark = pytest.mark.integration


async def test_a_faust_agent_forwards_every_record_on_the_embedded_broker(
    settings: Settings,
) -> None:
    run = uuid.uuid4().hex[:8]
    source, sink = f"test.source.{run}", f"test.sink.{run}"
    async with clients.admin_client(settings) as admin:
        await admin.create_topics([NewTopic(source, 4, 1), NewTopic(sink, 4, 1)])
    worker = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.bench.faust_forwarder",
        source,
        sink,
        f"test-forwarder-{run}",
        env={**os.environ, "LIVETAG_BROKER_PORT": str(settings.broker_port)},
        stdout=asyncio.subprocess.DEVNULL,
    )
    producer = clients.make_producer(settings)
    consumer = clients.make_consumer(settings, sink, group_id=f"test-sink-{run}")
    sent = {f"record-{n}".encode(): f"performer-{n % 5}".encode() for n in range(200)}
    received: dict[bytes, bytes] = {}
    await asyncio.gather(producer.start(), consumer.start())
    try:
        for value, key in sent.items():
            await producer.send(source, value, key=key, headers=[("livetag-record", b"x/1")])
        await producer.flush()
        async with asyncio.timeout(90):
            while len(received) < len(sent):
                assert worker.returncode is None, "the faust worker died"
                batches = await consumer.getmany(timeout_ms=200)
                for batch in batches.values():
                    for message in batch:
                        assert message.value is not None
                        assert message.headers == (("livetag-record", b"x/1"),)
                        received[message.value] = message.key or b""
    finally:
        await asyncio.gather(producer.stop(), consumer.stop())
        if worker.returncode is None:
            worker.terminate()
            await worker.wait()
        async with clients.admin_client(settings) as admin:
            await admin.delete_topics([source, sink])
    # Every record arrived once, under its own key (so on its performer's partition).
    assert received == sent
