"""Broker benchmark: produce -> consume latency on the embedded broker.

500 records/s of 1 KB for 20 s, read back by a plain aiokafka consumer (source topic)
and, after one faust agent hop (tests.bench.faust_forwarder), from the sink topic.
Last line: {"aiokafka_ms_p50", "aiokafka_ms_p99", "faust_hop_ms_p50", "faust_hop_ms_p99",
"records_lost"}. Options: --rate, --seconds, --size.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from aiokafka.admin import NewTopic

from streams.kafka import clients
from streams.settings import Settings, load_settings
from tests.bench.common import bench_broker, cpu_seconds, percentile_or_nan

HEADER = struct.Struct(">qq")  # sequence number, send time (ns since the epoch)
WARMUP_SEQ = -1


async def read_latencies(
    consumer: AIOKafkaConsumer,
    latencies: dict[int, float],
    warm: asyncio.Event,
    expected: int,
    complete: asyncio.Event,
) -> None:
    while len(latencies) < expected:
        batches = await consumer.getmany(timeout_ms=200)
        now_ns = time.time_ns()
        for batch in batches.values():
            for message in batch:
                seq, sent_ns = HEADER.unpack_from(message.value)
                if seq == WARMUP_SEQ:
                    warm.set()
                else:
                    latencies.setdefault(seq, (now_ns - sent_ns) / 1e6)
    complete.set()


async def run(
    settings: Settings, *, rate: int, seconds: float, size: int, broker_pid: int | None
) -> dict[str, object]:
    run_id = uuid.uuid4().hex[:8]
    source, sink = f"bench.source.{run_id}", f"bench.sink.{run_id}"
    async with clients.admin_client(settings) as admin:
        await admin.create_topics(
            [NewTopic(source, settings.partitions, 1), NewTopic(sink, settings.partitions, 1)]
        )
    env = {**os.environ, "LIVETAG_BROKER_PORT": str(settings.broker_port)}
    if settings.kafka_bootstrap:
        env["LIVETAG_KAFKA_BOOTSTRAP"] = settings.kafka_bootstrap
    forwarder = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "tests.bench.faust_forwarder", source, sink, f"bench-{run_id}"],
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
    )
    producer = clients.make_producer(settings)
    direct = clients.make_consumer(settings, source, group_id=f"bench-direct-{run_id}")
    hop = clients.make_consumer(settings, sink, group_id=f"bench-hop-{run_id}")
    direct_ms: dict[int, float] = {}
    hop_ms: dict[int, float] = {}
    direct_warm, hop_warm = asyncio.Event(), asyncio.Event()
    direct_done, hop_done = asyncio.Event(), asyncio.Event()
    total = int(rate * seconds)
    await asyncio.gather(producer.start(), direct.start(), hop.start())
    readers = [
        asyncio.create_task(read_latencies(direct, direct_ms, direct_warm, total, direct_done)),
        asyncio.create_task(read_latencies(hop, hop_ms, hop_warm, total, hop_done)),
    ]
    padding = b"\0" * (size - HEADER.size)
    keys = [f"bench/performer-{n}".encode() for n in range(8)]
    try:
        # Warm up until the faust worker has joined its group and forwards records.
        started = time.monotonic()
        while not (direct_warm.is_set() and hop_warm.is_set()):
            if time.monotonic() - started > 90:
                raise RuntimeError("the faust forwarder did not start within 90 s")
            for key in keys:
                await producer.send(source, HEADER.pack(WARMUP_SEQ, time.time_ns()), key=key)
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        pending = []
        watched = {"broker": broker_pid, "faust_worker": forwarder.pid, "bench": os.getpid()}
        cpu_before = {name: cpu_seconds(pid) for name, pid in watched.items() if pid}
        t0 = time.monotonic()
        for seq in range(total):
            delay = t0 + seq / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            value = HEADER.pack(seq, time.time_ns()) + padding
            pending.append(await producer.send(source, value, key=keys[seq % len(keys)]))
        await asyncio.gather(*pending)
        elapsed = time.monotonic() - t0
        cpu_cores = {
            f"{name}_cpu_cores": round((cpu_seconds(watched[name]) - used) / elapsed, 2)  # type: ignore[arg-type]
            for name, used in cpu_before.items()
        }
        # Whatever has not arrived 15 s after the last send counts as lost.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(15):
                await asyncio.gather(direct_done.wait(), hop_done.wait())
    finally:
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.gather(producer.stop(), direct.stop(), hop.stop())
        forwarder.terminate()
        try:
            async with asyncio.timeout(15):
                await forwarder.wait()
        except TimeoutError:
            forwarder.kill()
        async with clients.admin_client(settings) as admin:
            await admin.delete_topics([source, sink])
    lost = (total - len(direct_ms)) + (total - len(hop_ms))
    return {
        "records_sent": total,
        "rate_per_s": rate,
        "record_bytes": size,
        "aiokafka_ms_p50": percentile_or_nan(list(direct_ms.values()), 0.50),
        "aiokafka_ms_p99": percentile_or_nan(list(direct_ms.values()), 0.99),
        "faust_hop_ms_p50": percentile_or_nan(list(hop_ms.values()), 0.50),
        "faust_hop_ms_p99": percentile_or_nan(list(hop_ms.values()), 0.99),
        "records_lost": lost,
        **cpu_cores,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    settings = load_settings()
    with (
        tempfile.TemporaryDirectory(prefix="livetag-bench-") as state,
        bench_broker(settings, Path(state)) as broker,
    ):
        result = asyncio.run(
            run(
                broker.settings,
                rate=args.rate,
                seconds=args.seconds,
                size=args.size,
                broker_pid=broker.pid,
            )
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
