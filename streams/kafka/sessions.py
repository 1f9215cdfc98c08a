"""Sessions: creating one (its topics and its record) and following them all.

Join links (signed tokens) are made in taggers.tokens."""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

from streams import records
from streams.errors import RefusedError
from streams.kafka import clients, topics
from streams.kafka.follower import DEAD_LETTERS_IN_FLIGHT, CompactedFollower
from streams.session_clock import now_us
from streams.settings import Settings

log = logging.getLogger(__name__)


#: The states of a session that is over: nothing more is recorded in it.
OVER_STATES = ("ended", "archived")
#: A session's states in the only order it goes through them.
STATE_ORDER = {"created": 0, "live": 1, "ended": 2, "archived": 3}
__all__ = ["DEAD_LETTERS_IN_FLIGHT", "SessionDirectory"]  # the cap lives with the follower


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
    scenario: records.Scenario | None = None,
    roles: Mapping[str, str] | None = None,
    day_id: str | None = None,
) -> records.SessionRecord:
    """Create the session's topic set, then publish its record on livetag.sessions.
    ``scenario`` and ``roles`` (performer id -> the scenario's role name; see
    streams.scenarios.assign_roles) are the scene's; ``day_id`` its casting day."""
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
        scenario=scenario,
        roles=dict(roles or {}),
        day_id=day_id,
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


class SessionDirectory(CompactedFollower[records.SessionRecord]):
    """The latest record of every session, followed live from livetag.sessions.

    Every service learns from it what sessions there are, so nothing a record holds may
    stop it (streams.kafka.follower: undecodable records are skipped, counted and, when
    the owner gives a producer, dead-lettered under the owner's ``service`` name). A
    session's state only moves forward, whatever order its versions are read in."""

    def __init__(
        self,
        settings: Settings,
        *,
        dead_letters: AIOKafkaProducer | None = None,
        service: str = "sessions",
    ) -> None:
        super().__init__(
            settings,
            topics.SESSIONS,
            records.SessionRecord,
            dead_letters=dead_letters,
            service=service,
        )
        self._ended_us: dict[str, int] = {}

    def key_of(self, record: records.SessionRecord) -> str:
        return record.session_id

    def ended_at_us(self, session_id: str) -> int | None:
        """When the session ended (``ts_us`` of its first version that is ended or
        archived), or None while it is not over. On a compacted livetag.sessions the first
        such version may be gone: the oldest left is later, never earlier, than the end."""
        return self._ended_us.get(session_id)

    def sessions(self) -> list[records.SessionRecord]:
        return self.values()

    def merge(
        self, current: records.SessionRecord | None, record: records.SessionRecord
    ) -> records.SessionRecord | None:
        merged = None
        if current is None or current.ts_us <= record.ts_us:
            if current is not None and STATE_ORDER[current.state] > STATE_ORDER[record.state]:
                # A join or leave written by a service that had not yet read the end: its
                # presence is news, its state is not (a session never comes back).
                record = record.model_copy(update={"state": current.state})
            merged = record
        elif STATE_ORDER[record.state] > STATE_ORDER[current.state]:
            # An end stamped before a presence update already taken still ends it.
            merged = current.model_copy(update={"state": record.state})
        if record.state in OVER_STATES:
            # The oldest version that is over says when the session ended (later versions,
            # leaves and the archive mark, are stamped later).
            ended = self._ended_us.get(record.session_id, record.ts_us)
            self._ended_us[record.session_id] = min(ended, record.ts_us)
        return merged
