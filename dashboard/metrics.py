"""The pipeline's counters in the Prometheus text format, from the session health records.

:class:`CounterBoard` follows ``livetag.health`` (every session's counters, each service's
newest record per performer) and is a prometheus-client collector: each counter becomes
``livetag_<source>_<counter>_total{session="…", performer="…"}``. The numbers are the ones
on Kafka, so a scrape says the same as any other reader of the health records, and a
service restart does not move them back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from aiokafka import TopicPartition
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from streams import records
from streams.kafka import clients, topics
from streams.kafka.health import decode_counters, newest_counters
from streams.runtime import background
from streams.settings import Settings

log = logging.getLogger(__name__)


class CounterBoard(Collector):
    """The newest counters of every (session, performer, source), followed live."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._newest: dict[tuple[str, str, str], records.PipelineCounters] = {}
        self._task: asyncio.Task[None] | None = None
        self.undecodable = 0

    def of_session(self, session_id: str) -> dict[str, dict[str, dict[str, int]]]:
        """performer -> source -> counters, for one session (the dashboard's health)."""
        found: dict[str, dict[str, dict[str, int]]] = {}
        for (session, performer, source), record in self._newest.items():
            if session == session_id:
                found.setdefault(performer, {})[source] = dict(record.counters)
        return found

    def collect(self) -> Iterator[CounterMetricFamily]:
        families: dict[str, CounterMetricFamily] = {}
        for (session, performer, source), record in sorted(self._newest.items()):
            for name, value in sorted(record.counters.items()):
                metric = f"livetag_{source}_{name}"
                family = families.get(metric)
                if family is None:
                    family = families[metric] = CounterMetricFamily(
                        metric,
                        f"{source}: {name.replace('_', ' ')}, per performer, for the session",
                        labels=("session", "performer"),
                    )
                family.add_metric((session, performer), value)
        yield from families.values()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="counter-board")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await background.cancel(task)

    async def _follow(self) -> None:
        while True:
            consumer = clients.make_consumer(self._settings)
            try:
                await consumer.start()
                partition = TopicPartition(topics.HEALTH, 0)
                consumer.assign([partition])
                await consumer.seek_to_beginning(partition)
                while True:
                    batches = await consumer.getmany(partition, timeout_ms=1000)
                    found, undecodable = decode_counters(batches.get(partition, []))
                    self.undecodable += undecodable
                    if found:
                        self._newest.update(newest_counters([*self._newest.values(), *found]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away: follow again from the start
                log.warning("counters unavailable (%s); retrying", exc)
                await asyncio.sleep(2.0)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.stop()
