"""Following a shared compacted topic of one partition: read whole at start, then live.

The shared state topics (``livetag.sessions``, ``livetag.casting``, ``livetag.lobby``,
``livetag.scenarios``, ``livetag.coverage``) each hold small records keyed by what they
describe, the newest per key being its state. Every service that needs one follows it with
a :class:`CompactedFollower`: it is ready once it has read to the end the topic had at
start, then takes each new record as it comes and wakes whoever waits for a change.

Nothing a record holds may stop a follower: a record that does not decode is skipped,
counted (``undecodable``), logged, and, when the owner gives a producer, dead-lettered
under the owner's ``service`` name (only records that arrive while it follows: the ones
read again at start were there for the previous run to reject; at most
DEAD_LETTERS_IN_FLIGHT on their way at once, the rest counted in
``dead_letters_dropped``). A broker that goes away is retried; a record the Kafka client
itself cannot parse is read again alone, then skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CorruptRecordException, KafkaError

from streams import records
from streams.kafka import clients, topics
from streams.runtime import background
from streams.session_clock import now_us
from streams.settings import Settings

log = logging.getLogger(__name__)

#: Dead letters of a followed topic's records on their way to the broker at most: a flood
#: of bad records while the broker is slow or away costs a bounded number of tasks.
DEAD_LETTERS_IN_FLIGHT = 100

R = TypeVar("R", bound=records.JsonRecord)


class CompactedFollower(Generic[R]):
    """The newest record per key of ``topic`` (partition 0), followed live.

    Subclasses may override :meth:`merge` (how a record meets the one already known for
    its key) and :meth:`key_of`."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        record_type: type[R],
        *,
        dead_letters: AIOKafkaProducer | None = None,
        service: str = "follower",
    ) -> None:
        self._settings = settings
        self.topic = topic
        self._record_type = record_type
        self._records: dict[str, R] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._changed = asyncio.Condition()
        self._consumer = clients.make_consumer(settings)
        self._dead_letters = dead_letters
        self._service = service
        self._letters: set[asyncio.Task[None]] = set()
        #: Moves on every record taken in (a waiter compares it with what it saw).
        self.version = 0
        #: Records that did not decode, since start.
        self.undecodable = 0
        #: Dead letters that could not be produced (the broker refused or was away).
        self.dead_letters_failed = 0
        #: Dead letters never sent, as DEAD_LETTERS_IN_FLIGHT were already on their way
        #: (their records are still skipped and counted in ``undecodable``).
        self.dead_letters_dropped = 0
        #: Times reading the topic failed (the follower retried each time).
        self.read_errors = 0

    # ---------------------------------------------------------------- reading

    def key_of(self, record: R) -> str:
        return record.key.decode()

    def merge(self, current: R | None, record: R) -> R | None:
        """What the key's state becomes when ``record`` arrives (None: unchanged). By
        default the newest by ``ts_us`` wins; a tie goes to the later record."""
        if current is None or current.ts_us <= record.ts_us:
            return record
        return None

    def get(self, key: str) -> R | None:
        return self._records.get(key)

    def values(self) -> list[R]:
        return list(self._records.values())

    def counters(self) -> dict[str, int]:
        """What this follower skipped or could not do since it started, for a service's
        metrics: bad records, their dead letters not sent, failed reads."""
        return {
            "undecodable": self.undecodable,
            "dead_letters_failed": self.dead_letters_failed,
            "dead_letters_dropped": self.dead_letters_dropped,
            "read_errors": self.read_errors,
        }

    # ---------------------------------------------------------------- waiting

    async def changed(self, timeout_s: float) -> None:
        """Return when a record arrives, or after ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait()
        except TimeoutError:
            return

    async def changed_or_stopped(self, stop: asyncio.Event, timeout_s: float) -> None:
        """Return when a record arrives, ``stop`` is set, or after ``timeout_s``."""
        stopped = asyncio.ensure_future(stop.wait())
        changed = asyncio.ensure_future(self.changed(timeout_s))
        await asyncio.wait([stopped, changed], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        changed.cancel()

    async def wait_for(self, key: str, timeout_s: float) -> R | None:
        """The key's record, waiting a little for one that was just published
        (TimeoutError when none comes)."""
        return await self.wait_until(lambda: self._records.get(key), timeout_s)

    async def wait_until(self, found: Callable[[], R | None], timeout_s: float) -> R:
        """The first record ``found`` returns, checked on every change (TimeoutError after
        ``timeout_s``)."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: found() is not None)
        record = found()
        assert record is not None
        return record

    # ---------------------------------------------------------------- life

    async def start(self) -> None:
        """Read the topic to its end, then follow it (idempotent)."""
        if self._task is not None:
            return
        partition = TopicPartition(self.topic, 0)
        try:
            await self._consumer.start()
            self._consumer.assign([partition])
            await self._consumer.seek_to_beginning(partition)
            first = await self._consumer.position(partition)
            end = (await self._consumer.end_offsets([partition]))[partition]
        except BaseException:
            # No broker, or none that answers: the caller hears why, and no client is left
            # open behind it.
            await self._consumer.stop()
            raise
        self._task = asyncio.create_task(
            self._follow(partition, first, end), name=f"follow-{self.topic}"
        )
        ready = asyncio.ensure_future(self._ready.wait())
        try:
            # Should following ever end, say so here rather than wait for ever.
            await asyncio.wait([ready, self._task], return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if self._task.done():
            task, self._task = self._task, None
            await self._consumer.stop()
            task.result()
            raise RuntimeError(f"stopped following {self.topic}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await background.cancel(task)
            if self._letters:
                # A moment for the dead letters on their way; the owner's producer stops next.
                await asyncio.wait(self._letters, timeout=2.0)
                for letter in self._letters:
                    letter.cancel()
        # Also a follower never started: its consumer was made with it.
        await self._consumer.stop()

    @property
    def following(self) -> asyncio.Task[None] | None:
        """The task that follows the topic while started."""
        return self._task

    async def _follow(self, partition: TopicPartition, first: int, caught_up_at: int) -> None:
        next_offset = first  # after the last record taken (or skipped)
        # One record per read, from a read that failed on until the end of the topic.
        careful = False
        failing_since: float | None = None
        while True:
            if next_offset >= caught_up_at:
                self._ready.set()
            try:
                batches = await self._consumer.getmany(
                    partition, timeout_ms=500, max_records=1 if careful else None
                )
            except Exception as exc:
                self.read_errors += 1
                if isinstance(exc, KafkaError) and not isinstance(exc, CorruptRecordException):
                    # The broker's trouble, not the data's: log the first failure of a run
                    # of them, and keep trying (an outage passes).
                    if failing_since is None:
                        failing_since = time.monotonic()
                        log.error("reading %s failed, retrying: %r", self.topic, exc)
                    await asyncio.sleep(1.0)
                elif not careful:
                    # A record the client cannot parse (aiokafka raises on a header name
                    # that is not UTF-8, and drops what it read before it in the same
                    # fetch): read again from the last record taken, one at a time.
                    careful = True
                    self._consumer.seek(partition, next_offset)
                else:
                    # Even alone it cannot be read: skip it (at worst the rest of its
                    # batch too, which came from the same producer request).
                    reason = (
                        f"{self._record_type.record_type}: the Kafka client cannot read it: {exc!r}"
                    )
                    self._reject(
                        reason,
                        offset=next_offset,
                        key=None,
                        value=b"",
                        live=next_offset >= caught_up_at,
                    )
                    next_offset += 1
                    self._consumer.seek(partition, next_offset)
                continue
            if failing_since is not None:
                log.info(
                    "reading %s again after %.0f s", self.topic, time.monotonic() - failing_since
                )
                failing_since = None
            messages = batches.get(partition, [])
            careful = careful and bool(messages)
            for message in messages:
                self._take(message, live=message.offset >= caught_up_at)
                next_offset = message.offset + 1
            if messages:
                self.version += 1
            async with self._changed:
                self._changed.notify_all()

    def _take(self, message: ConsumerRecord[bytes, bytes], *, live: bool) -> None:
        """Take in one message, or reject it (never raises)."""
        try:
            record = records.decode(self._record_type, message.value, message.headers)
        except Exception as exc:
            if not isinstance(exc, records.RecordError):
                # A decoder bug: it costs this record, never the follower all depend on.
                log.exception(
                    "%s record at offset %s broke the decoder", self.topic, message.offset
                )
            reason = (
                str(exc)
                if isinstance(exc, records.RecordError)
                else f"{self._record_type.record_type}: {exc!r}"
            )
            self._reject(
                reason, offset=message.offset, key=message.key, value=message.value, live=live
            )
            return
        key = self.key_of(record)
        merged = self.merge(self._records.get(key), record)
        if merged is not None:
            self._records[key] = merged

    def _reject(
        self, reason: str, *, offset: int, key: bytes | None, value: bytes | None, live: bool
    ) -> None:
        self.undecodable += 1
        log.warning(
            "skipping an undecodable record of %s at offset %s: %s", self.topic, offset, reason
        )
        producer = self._dead_letters
        if producer is None or not live:
            return
        if len(self._letters) >= DEAD_LETTERS_IN_FLIGHT:
            self.dead_letters_dropped += 1
            if self.dead_letters_dropped % 100 == 1:
                log.warning(
                    "%d dead letters of %s are still on their way to %s: the one for offset "
                    "%s is not sent (%d not sent so far)",
                    len(self._letters),
                    self.topic,
                    topics.DEADLETTER,
                    offset,
                    self.dead_letters_dropped,
                )
            return
        letter = records.DeadLetter.of(
            ts_us=now_us(),
            source_topic=self.topic,
            service=self._service,
            reason=reason,
            payload=value or b"",
            key=key,
            partition=0,
            offset=offset,
        )
        # Sent aside: waiting for the broker here would hold up every change.
        sending = asyncio.create_task(self._send_dead_letter(producer, letter))
        self._letters.add(sending)
        sending.add_done_callback(self._letters.discard)

    async def _send_dead_letter(
        self, producer: AIOKafkaProducer, letter: records.DeadLetter
    ) -> None:
        message = records.encode(letter)
        try:
            await producer.send_and_wait(
                topics.DEADLETTER, message.value, key=message.key, headers=message.headers
            )
        except Exception as exc:
            self.dead_letters_failed += 1
            log.warning(
                "could not dead-letter the %s record at offset %s: %s",
                self.topic,
                letter.source_offset,
                exc,
            )
