"""Sessions: creating one (its topics and its record) and following them all.

Join links (signed tokens) are made in taggers.tokens."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer, TopicPartition

from infra.settings import Settings
from streams import kafka, records, topics

log = logging.getLogger(__name__)


def now_us() -> int:
    """The session clock: this server's wall clock, integer microseconds."""
    return time.time_ns() // 1000


def new_session_id() -> str:
    return f"{time.strftime('%Y%m%d', time.gmtime())}-{secrets.token_hex(3)}"


def performer_from_name(name: str) -> records.Performer:
    display = name.strip()
    slug = re.sub(r"[^a-z0-9_-]+", "-", display.lower()).strip("-_")[:32]
    if not slug:
        raise ValueError(f"performer name {name!r} has no letters or digits")
    return records.Performer(performer_id=slug, display_name=display)


async def create_session(
    settings: Settings,
    *,
    prompt: str,
    performer_names: Sequence[str],
    vocabulary: Sequence[records.VocabularyEntry],
    session_id: str | None = None,
) -> records.SessionRecord:
    """Create the session's topic set, then publish its record on livetag.sessions."""
    created = now_us()
    session_id = topics.check_session_id(session_id or new_session_id())
    record = records.SessionRecord(
        ts_us=created,
        session_id=session_id,
        created_ts_us=created,
        prompt=prompt,
        roster=[performer_from_name(name) for name in performer_names],
        vocabulary=list(vocabulary),
        state="created",
        topics=topics.session_topic_names(session_id),
    )
    producer = kafka.make_producer(settings)
    await producer.start()
    try:
        await open_session(settings, record, producer)
    finally:
        await producer.stop()
    return record


async def open_session(
    settings: Settings, record: records.SessionRecord, producer: AIOKafkaProducer
) -> None:
    """Create a new session's topic set, then publish its record on livetag.sessions
    (so workers and recorders take it up)."""
    async with kafka.admin_client(settings) as admin:
        await topics.ensure_shared_topics(admin, settings)
        await topics.create_session_topics(admin, settings, record.session_id)
    await publish(producer, record)


async def publish(producer: AIOKafkaProducer, record: records.SessionRecord) -> None:
    message = records.encode(record)
    await producer.send_and_wait(
        topics.SESSIONS, message.value, key=message.key, headers=message.headers
    )


class SessionDirectory:
    """The latest record of every session, followed live from livetag.sessions."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._sessions: dict[str, records.SessionRecord] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._changed = asyncio.Condition()
        self._consumer = kafka.make_consumer(settings)

    def get(self, session_id: str) -> records.SessionRecord | None:
        return self._sessions.get(session_id)

    def sessions(self) -> list[records.SessionRecord]:
        return list(self._sessions.values())

    async def changed(self, timeout_s: float) -> None:
        """Return when a session record arrives, or after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait()
        except TimeoutError:
            return

    async def changed_or_stopped(self, stop: asyncio.Event, timeout_s: float) -> None:
        """Return when a session record arrives, ``stop`` is set, or after ``timeout_s``."""
        stopped = asyncio.ensure_future(stop.wait())
        changed = asyncio.ensure_future(self.changed(timeout_s))
        await asyncio.wait([stopped, changed], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        changed.cancel()

    async def start(self) -> None:
        if self._task is not None:
            return
        await self._consumer.start()
        partition = TopicPartition(topics.SESSIONS, 0)
        self._consumer.assign([partition])
        await self._consumer.seek_to_beginning(partition)
        end = (await self._consumer.end_offsets([partition]))[partition]
        self._task = asyncio.create_task(self._follow(partition, end), name="session-directory")
        await self._ready.wait()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await self._consumer.stop()

    async def wait_for(self, session_id: str, timeout_s: float) -> records.SessionRecord | None:
        """The session's record, waiting a little for one that was just created."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: session_id in self._sessions)
        return self._sessions.get(session_id)

    async def _follow(self, partition: TopicPartition, caught_up_at: int) -> None:
        if caught_up_at == 0:
            self._ready.set()
        while True:
            batches = await self._consumer.getmany(partition, timeout_ms=500)
            for message in batches.get(partition, []):
                try:
                    record = records.decode(records.SessionRecord, message.value, message.headers)
                except records.RecordError as exc:
                    # Someone else's bad record: skip it here, the producer dead-letters.
                    log.warning(
                        "skipping undecodable session record at %s: %s", message.offset, exc
                    )
                else:
                    current = self._sessions.get(record.session_id)
                    if current is None or current.ts_us <= record.ts_us:
                        self._sessions[record.session_id] = record
                if message.offset + 1 >= caught_up_at:
                    self._ready.set()
            async with self._changed:
                self._changed.notify_all()
