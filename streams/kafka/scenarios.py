"""The scenario library on ``livetag.scenarios``: one record per scenario id, the newest
being the scenario; a record with ``deleted`` withdraws it.

Written by ``livetag scenarios load`` (and ``livetag up`` from ``scenario_dir``) and by the
director's editor on the dashboard; read by ``livetag session create --scenario`` and the
dashboard (:class:`ScenarioLibrary`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer

from streams import records
from streams.kafka import clients, topics
from streams.kafka.follower import CompactedFollower
from streams.scenarios import load_library
from streams.session_clock import now_us
from streams.settings import Settings

log = logging.getLogger(__name__)

#: ``saved_by`` of the records that came from a scenario file: ``file:NAME``.
FILE_SOURCE_PREFIX = "file:"


def file_source(name: str) -> str:
    """``saved_by`` for a scenario read from the file ``name``."""
    return (FILE_SOURCE_PREFIX + name)[:80]


async def publish_scenario(
    producer: AIOKafkaProducer,
    scenario: records.Scenario,
    saved_by: str,
    *,
    deleted: bool = False,
    stamp_us: int | None = None,
) -> records.ScenarioRecord:
    """Publish a scenario (or, ``deleted``, its withdrawal) as the newest of its id."""
    record = records.ScenarioRecord(
        ts_us=now_us() if stamp_us is None else stamp_us,
        scenario=scenario,
        saved_by=saved_by[:80],
        deleted=deleted,
    )
    message = records.encode(record)
    await producer.send_and_wait(
        topics.SCENARIOS, message.value, key=message.key, headers=message.headers
    )
    return record


async def delete_scenario(
    producer: AIOKafkaProducer, scenario: records.Scenario, saved_by: str
) -> records.ScenarioRecord:
    """Withdraw a scenario from the library: a record of it with ``deleted``."""
    return await publish_scenario(producer, scenario, saved_by, deleted=True)


class _ScenarioFollower(CompactedFollower[records.ScenarioRecord]):
    def key_of(self, record: records.ScenarioRecord) -> str:
        return record.scenario.scenario_id


class ScenarioLibrary:
    """The scenario library, read whole at start, then followed live. Records this
    process published count at once (:meth:`add`), before the topic brings them back."""

    def __init__(
        self,
        settings: Settings,
        *,
        dead_letters: AIOKafkaProducer | None = None,
        service: str = "scenarios",
    ) -> None:
        self._follower = _ScenarioFollower(
            settings,
            topics.SCENARIOS,
            records.ScenarioRecord,
            dead_letters=dead_letters,
            service=service,
        )
        self._added: dict[str, records.ScenarioRecord] = {}

    async def start(self) -> None:
        await self._follower.start()

    async def stop(self) -> None:
        await self._follower.stop()

    def add(self, record: records.ScenarioRecord) -> None:
        """Take in a record this process just published."""
        key = record.scenario.scenario_id
        known = self._added.get(key)
        if known is None or known.ts_us <= record.ts_us:
            self._added[key] = record

    def record(self, scenario_id: str) -> records.ScenarioRecord | None:
        """The newest record of the id, a withdrawal included."""
        known = [self._follower.get(scenario_id), self._added.get(scenario_id)]
        newest = [record for record in known if record is not None]
        return max(newest, key=lambda record: record.ts_us) if newest else None

    def get(self, scenario_id: str) -> records.Scenario | None:
        """The scenario, or None when there is none (or it was deleted)."""
        record = self.record(scenario_id)
        return None if record is None or record.deleted else record.scenario

    def current_records(self) -> list[records.ScenarioRecord]:
        """The newest record of every scenario in the library (not the deleted), by id."""
        ids = {*(r.scenario.scenario_id for r in self._follower.values()), *self._added}
        found = [self.record(scenario_id) for scenario_id in sorted(ids)]
        return [record for record in found if record is not None and not record.deleted]

    def all(self) -> list[records.Scenario]:
        """Every scenario in the library, by id."""
        return [record.scenario for record in self.current_records()]

    def counters(self) -> dict[str, int]:
        """Bad records skipped and the like, for a service's metrics."""
        return self._follower.counters()

    async def changed(self, timeout_s: float) -> None:
        """Return when a record arrives, or after ``timeout_s``."""
        await self._follower.changed(timeout_s)

    async def wait_until(
        self, found: Callable[[], records.ScenarioRecord | None], timeout_s: float
    ) -> records.ScenarioRecord:
        """The first record ``found`` returns, checked on every change."""
        return await self._follower.wait_until(found, timeout_s)


async def read_library(settings: Settings) -> ScenarioLibrary:
    """The library as it is now (read to the end, not followed): stop it when done."""
    library = ScenarioLibrary(settings)
    await library.start()
    return library


@dataclass
class Published:
    """What :func:`publish_all` did with each scenario."""

    published: list[str] = field(default_factory=list)
    #: Left as the library has them: edited (or deleted) there since a file gave them.
    kept: list[str] = field(default_factory=list)
    #: Already in the library exactly so.
    unchanged: list[str] = field(default_factory=list)


async def publish_all(
    settings: Settings,
    scenarios: Iterable[tuple[str, records.Scenario]],
    *,
    keep_edits: bool = False,
) -> Published:
    """Publish scenarios read from files (``(file name, scenario)`` pairs), creating the
    shared topics first if need be. ``keep_edits`` (``livetag up`` at each start): a
    scenario the library has from elsewhere than a file (the director's editor saved or
    deleted it) is kept as it is, and one it already has exactly so is not published
    again; without it (``livetag scenarios load``) every file is published."""
    pairs = list(scenarios)
    done = Published()
    if not pairs:
        return done
    async with clients.admin_client(settings) as admin:
        await topics.ensure_shared_topics(admin, settings)
    library = ScenarioLibrary(settings) if keep_edits else None
    producer = clients.make_producer(settings)
    try:
        if library is not None:
            await library.start()
        await producer.start()
        for name, scenario in pairs:
            known = None if library is None else library.record(scenario.scenario_id)
            if known is not None:
                if not known.saved_by.startswith(FILE_SOURCE_PREFIX):
                    done.kept.append(scenario.scenario_id)
                    continue
                if not known.deleted and known.scenario == scenario:
                    done.unchanged.append(scenario.scenario_id)
                    continue
            await publish_scenario(producer, scenario, file_source(name))
            done.published.append(scenario.scenario_id)
    finally:
        await producer.stop()
        if library is not None:
            await library.stop()
    return done


async def load_folder(
    settings: Settings, folder: Path, *, vocabulary_labels: Collection[str]
) -> str:
    """``livetag up``'s start with ``scenario_dir``: the folder's good scenarios into the
    library (keeping what the editor changed since), each bad file logged as an error
    (``FILE:LINE: reason``) and skipped. Returns a line saying what was done."""
    library = load_library(folder, vocabulary_labels=vocabulary_labels)
    for error in library.errors:
        log.error("scenario skipped: %s", error)
    done = await publish_all(
        settings,
        [(path.name, scenario) for path, scenario in library.scenarios.values()],
        keep_edits=True,
    )
    parts = [f"{len(library.scenarios)} from {folder}"]
    if done.published:
        parts.append(f"published {len(done.published)}")
    if done.kept:
        parts.append(f"{len(done.kept)} kept as edited in the library ({', '.join(done.kept)})")
    if library.errors:
        parts.append(f"{len(library.errors)} file(s) with errors skipped (logged)")
    return ", ".join(parts)
