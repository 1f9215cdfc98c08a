"""Sessions: creating one (its topics and its record) and following them all.

Join links (signed tokens) are made in taggers.tokens."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CorruptRecordException, KafkaError

from streams import records
from streams.errors import RefusedError
from streams.kafka import clients, topics
from streams.runtime import background
from streams.session_clock import now_us
from streams.settings import Settings

log = logging.getLogger(__name__)


#: The states of a session that is over: nothing more is recorded in it.
OVER_STATES = ("ended", "archived")
#: A session's states in the only order it goes through them.
STATE_ORDER = {"created": 0, "live": 1, "ended": 2, "archived": 3}
#: Dead letters of session records on their way to the broker at most: a flood of bad
#: records while the broker is slow or away costs a bounded number of tasks and messages.
DEAD_LETTERS_IN_FLIGHT = 100


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
    producer = clients.make_producer(settings)
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
    async with clients.admin_client(settings) as admin:
        await topics.ensure_shared_topics(admin, settings)
        await topics.create_session_topics(admin, settings, record.session_id)
    await publish(producer, record)


async def publish(producer: AIOKafkaProducer, record: records.SessionRecord) -> None:
    message = records.encode(record)
    await producer.send_and_wait(
        topics.SESSIONS, message.value, key=message.key, headers=message.headers
    )


class SessionActionError(RefusedError, ValueError):
    """A director's action that the session's state refuses; ``code`` says which rule."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


def apply_action(
    current: records.SessionRecord, action: str, *, stamp_us: int, max_takes: int
) -> records.SessionRecord:
    """The session's next version after ``action``, stamped ``stamp_us`` (at least one
    microsecond after ``current``, so the directory orders it after what it replaces).
    Ending a session ends its running take at the same instant. The one rule for every
    writer of a session's takes and end: the dashboard server and the command line."""
    stamp = max(stamp_us, current.ts_us + 1)
    takes = list(current.takes)
    open_take = takes[-1] if takes and takes[-1].end_ts_us is None else None
    update: dict[str, Any] = {"ts_us": stamp}
    if current.state in OVER_STATES:
        raise SessionActionError("session_ended", f"the session is {current.state}")
    if action == "take_start":
        if open_take is not None:
            raise SessionActionError("take_open", f"take {open_take.take_id} is still running")
        if len(takes) >= max_takes:
            # Every take stays in the session record, which every service reads whole.
            raise SessionActionError(
                "too_many_takes",
                f"this session already has {len(takes)} takes, the most it may have "
                "(max_takes_per_session): end it and start a new session",
            )
        takes.append(records.Take(take_id=len(takes) + 1, start_ts_us=stamp))
        update["takes"] = takes
        update["state"] = "live"
    elif action == "take_end":
        if open_take is None:
            raise SessionActionError("no_take", "no take is running")
        takes[-1] = open_take.model_copy(update={"end_ts_us": stamp})
        update["takes"] = takes
    elif action == "end_session":
        if open_take is not None:
            takes[-1] = open_take.model_copy(update={"end_ts_us": stamp})
            update["takes"] = takes
        update["state"] = "ended"
    else:
        raise SessionActionError("malformed", f"unknown action {action!r}")
    record = current.model_copy(update=update)
    records.SessionRecord.model_validate(record.model_dump())  # what is published is valid
    return record


def with_presence(
    current: records.SessionRecord,
    *,
    participant_id: str,
    role: records.Role,
    connected: bool,
    stamp_us: int,
    newest_state: records.SessionState,
) -> records.SessionRecord | None:
    """The session's next version with one participant joined or gone, stamped at least
    one microsecond after ``current``; None when their presence is already that. The one
    rule for presence, written by the capture server on every join and leave.

    ``newest_state`` is the furthest state the writer has seen of the session, which may
    be ahead of ``current`` (the copy it builds on): a state only moves forward, so an
    "ended" not yet in that copy is kept, and a join moves a created session to live."""
    presence = {p.participant_id: p for p in current.presence}
    known = presence.get(participant_id)
    if known is not None and known.connected == connected:
        return None
    stamp = max(stamp_us, current.ts_us + 1)
    presence[participant_id] = records.Presence(
        participant_id=participant_id, role=role, connected=connected, since_ts_us=stamp
    )
    state = max(newest_state, current.state, key=STATE_ORDER.__getitem__)
    if state == "created" and connected:
        state = "live"
    return current.model_copy(
        update={"ts_us": stamp, "presence": list(presence.values()), "state": state}
    )


def archived(current: records.SessionRecord, *, stamp_us: int) -> records.SessionRecord:
    """The session's last version: archived, once the recorder has built its archive."""
    return current.model_copy(
        update={"state": "archived", "ts_us": max(stamp_us, current.ts_us + 1)}
    )


def is_over(session: records.SessionRecord) -> bool:
    """Whether nothing more is recorded in the session (ended or archived)."""
    return session.state in OVER_STATES


async def newest_record(settings: Settings, session_id: str) -> records.SessionRecord | None:
    """The newest version of one session on livetag.sessions as it is now (read to the
    end, not waited for), or None; ValueError for an id that cannot be a session's."""
    topics.check_session_id(session_id)
    directory = SessionDirectory(settings)
    await directory.start()  # read to the end of livetag.sessions
    try:
        return directory.get(session_id)
    finally:
        await directory.stop()


async def act_on_session(settings: Settings, session_id: str, action: str) -> records.SessionRecord:
    """``action`` on the newest version of the session on livetag.sessions, published as
    its next version; :class:`SessionActionError` when the session is unknown or its
    state refuses it."""
    current = await newest_record(settings, session_id)
    if current is None:
        raise SessionActionError(
            "unknown_session", f"no session {session_id!r} on livetag.sessions"
        )
    record = apply_action(
        current, action, stamp_us=now_us(), max_takes=settings.max_takes_per_session
    )
    producer = clients.make_producer(settings)
    try:
        await producer.start()
        await publish(producer, record)
    finally:
        await producer.stop()
    return record


async def read_session(
    settings: Settings, session_id: str, *, timeout_s: float = 30.0
) -> records.SessionRecord | None:
    """The newest record of one session on livetag.sessions, waiting up to ``timeout_s``
    for one that was just published; None if there is none. How a process started for a
    session (``python -m streams.features.processors SID``) learns what the session is."""
    directory = SessionDirectory(settings)
    await directory.start()
    try:
        return await directory.wait_for(session_id, timeout_s=timeout_s)
    except TimeoutError:
        return None
    finally:
        await directory.stop()


class SessionDirectory:
    """The latest record of every session, followed live from livetag.sessions.

    Every service learns from it what sessions there are, so nothing a record holds may
    stop it: a record that does not decode is skipped, counted (``undecodable``), logged,
    and, when the owner gives a producer, dead-lettered under the owner's ``service``
    name (only records that arrive while it follows: the ones read again at start were
    there for the previous run to reject; at most DEAD_LETTERS_IN_FLIGHT on their way at
    once, the rest counted in ``dead_letters_dropped``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        dead_letters: AIOKafkaProducer | None = None,
        service: str = "sessions",
    ) -> None:
        self._settings = settings
        self._sessions: dict[str, records.SessionRecord] = {}
        self._ended_us: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._changed = asyncio.Condition()
        self._consumer = clients.make_consumer(settings)
        self._dead_letters = dead_letters
        self._service = service
        self._letters: set[asyncio.Task[None]] = set()
        #: Records on livetag.sessions that did not decode, since start.
        self.undecodable = 0
        #: Dead letters that could not be produced (the broker refused or was away).
        self.dead_letters_failed = 0
        #: Dead letters never sent, as DEAD_LETTERS_IN_FLIGHT were already on their way
        #: (their records are still skipped and counted in ``undecodable``).
        self.dead_letters_dropped = 0
        #: Times reading the topic failed (the directory retried each time).
        self.read_errors = 0

    def get(self, session_id: str) -> records.SessionRecord | None:
        return self._sessions.get(session_id)

    def counters(self) -> dict[str, int]:
        """What this directory skipped or could not do since it started, for a service's
        metrics: bad records, their dead letters not sent, failed reads."""
        return {
            "undecodable": self.undecodable,
            "dead_letters_failed": self.dead_letters_failed,
            "dead_letters_dropped": self.dead_letters_dropped,
            "read_errors": self.read_errors,
        }

    def ended_at_us(self, session_id: str) -> int | None:
        """When the session ended (``ts_us`` of its first version that is ended or
        archived), or None while it is not over. On a compacted livetag.sessions the first
        such version may be gone: the oldest left is later, never earlier, than the end."""
        return self._ended_us.get(session_id)

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
        partition = TopicPartition(topics.SESSIONS, 0)
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
            self._follow(partition, first, end), name="session-directory"
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
            raise RuntimeError("the session directory stopped following livetag.sessions")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await background.cancel(task)
            if self._letters:
                # A moment for the dead letters on their way; the owner's producer stops next.
                await asyncio.wait(self._letters, timeout=2.0)
                for letter in self._letters:
                    letter.cancel()
        # Also a directory never started: its consumer was made with it.
        await self._consumer.stop()

    async def wait_for(self, session_id: str, timeout_s: float) -> records.SessionRecord | None:
        """The session's record, waiting a little for one that was just created."""
        async with asyncio.timeout(timeout_s), self._changed:
            await self._changed.wait_for(lambda: session_id in self._sessions)
        return self._sessions.get(session_id)

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
                        log.error("reading livetag.sessions failed, retrying: %r", exc)
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
                    reason = f"session: the Kafka client cannot read it: {exc!r}"
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
                    "reading livetag.sessions again after %.0f s",
                    time.monotonic() - failing_since,
                )
                failing_since = None
            messages = batches.get(partition, [])
            careful = careful and bool(messages)
            for message in messages:
                self._take(message, live=message.offset >= caught_up_at)
                next_offset = message.offset + 1
            async with self._changed:
                self._changed.notify_all()

    def _take(self, message: ConsumerRecord[bytes, bytes], *, live: bool) -> None:
        """Take in one message of livetag.sessions, or reject it (never raises)."""
        try:
            record = records.decode(records.SessionRecord, message.value, message.headers)
        except Exception as exc:
            if not isinstance(exc, records.RecordError):
                # A decoder bug: it costs this record, never the directory all depend on.
                log.exception("session record at offset %s broke the decoder", message.offset)
            reason = str(exc) if isinstance(exc, records.RecordError) else f"session: {exc!r}"
            self._reject(
                reason, offset=message.offset, key=message.key, value=message.value, live=live
            )
            return
        current = self._sessions.get(record.session_id)
        if current is None or current.ts_us <= record.ts_us:
            if current is not None and STATE_ORDER[current.state] > STATE_ORDER[record.state]:
                # A join or leave written by a service that had not yet read the end: its
                # presence is news, its state is not (a session never comes back).
                record = record.model_copy(update={"state": current.state})
            self._sessions[record.session_id] = record
        elif STATE_ORDER[record.state] > STATE_ORDER[current.state]:
            # An end stamped before a presence update already taken still ends it.
            self._sessions[record.session_id] = current.model_copy(update={"state": record.state})
        if record.state in OVER_STATES:
            # The oldest version that is over says when the session ended (later versions,
            # leaves and the archive mark, are stamped later).
            ended = self._ended_us.get(record.session_id, record.ts_us)
            self._ended_us[record.session_id] = min(ended, record.ts_us)

    def _reject(
        self, reason: str, *, offset: int, key: bytes | None, value: bytes | None, live: bool
    ) -> None:
        self.undecodable += 1
        log.warning("skipping undecodable session record at offset %s: %s", offset, reason)
        producer = self._dead_letters
        if producer is None or not live:
            return
        if len(self._letters) >= DEAD_LETTERS_IN_FLIGHT:
            self.dead_letters_dropped += 1
            if self.dead_letters_dropped % 100 == 1:
                log.warning(
                    "%d dead letters of session records are still on their way to %s: "
                    "the one for offset %s is not sent (%d not sent so far)",
                    len(self._letters),
                    topics.DEADLETTER,
                    offset,
                    self.dead_letters_dropped,
                )
            return
        letter = records.DeadLetter.of(
            ts_us=now_us(),
            source_topic=topics.SESSIONS,
            service=self._service,
            reason=reason,
            payload=value or b"",
            key=key,
            partition=0,
            offset=offset,
        )
        # Sent aside: waiting for the broker here would hold up every session change.
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
                "could not dead-letter the session record at offset %s: %s",
                letter.source_offset,
                exc,
            )
