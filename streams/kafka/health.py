"""The session's health record: each service's cumulative counters per performer.

Counters live on ``livetag.health`` (keyed ``session/performer/source``, compacted: the
newest record per key is the count), so they outlast the process that counts: a restarted
service reads its last counts back and goes on from them, and any reader (the dashboard's
``/metrics``, a benchmark, an auditor) sees the same numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from aiokafka import TopicPartition
from aiokafka.partitioner import DefaultPartitioner

from streams import records
from streams.kafka import clients, topics
from streams.settings import Settings

log = logging.getLogger(__name__)

_partitioner = DefaultPartitioner()


def performer_partition(settings: Settings, session_id: str, performer_id: str) -> int:
    """The partition of a performer's records on every performer-keyed topic."""
    partitions = list(range(settings.partitions))
    return int(
        _partitioner(records.performer_key(session_id, performer_id), partitions, partitions)
    )


def newest_counters(
    found: Iterable[records.PipelineCounters],
) -> dict[tuple[str, str, str], records.PipelineCounters]:
    """The newest record per (session, performer, source)."""
    newest: dict[tuple[str, str, str], records.PipelineCounters] = {}
    for record in found:
        identity = (record.session_id, record.performer_id, record.source)
        known = newest.get(identity)
        if known is None or record.ts_us >= known.ts_us:
            newest[identity] = record
    return newest


def decode_counters(messages: Iterable[Any]) -> tuple[list[records.PipelineCounters], int]:
    """The counters records among these Kafka messages, and how many were undecodable
    (skipped with a warning: their producer dead-letters what it rejects)."""
    found: list[records.PipelineCounters] = []
    undecodable = 0
    for message in messages:
        try:
            found.append(records.decode(records.PipelineCounters, message.value, message.headers))
        except records.RecordError as exc:
            undecodable += 1
            log.warning("skipping an undecodable counters record: %s", exc)
    return found, undecodable


async def read_counters(
    settings: Settings, session_id: str | None = None, *, timeout_ms: int = 2000
) -> dict[tuple[str, str, str], records.PipelineCounters]:
    """The newest counters on ``livetag.health`` (of one session, or of all)."""
    consumer = clients.make_consumer(settings)
    await consumer.start()
    partition = TopicPartition(topics.HEALTH, 0)
    prefix = None if session_id is None else f"{session_id}/".encode()
    found: list[records.PipelineCounters] = []
    try:
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        while await consumer.position(partition) < end:
            batches = await consumer.getmany(partition, timeout_ms=timeout_ms)
            if not batches:
                break
            messages = batches.get(partition, [])
            if prefix is not None:
                messages = [m for m in messages if (m.key or b"").startswith(prefix)]
            found.extend(decode_counters(messages)[0])
    finally:
        await consumer.stop()
    return newest_counters(found)
