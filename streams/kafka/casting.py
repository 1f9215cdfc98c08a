"""Casting days on Kafka: ``livetag.casting`` (the day: roster, vocabulary, scenes played)
and ``livetag.lobby`` (who of a day waits in the lobby, with their device check).

Both topics are compacted and small; every service that needs them follows them
(:class:`CastingDays`, :class:`LobbyBoard`, both :class:`~streams.kafka.follower.
CompactedFollower`), so a restart of the capture server or the dashboard loses nothing:
the day and its scenes come back from ``livetag.casting``, who waits (and since when)
from ``livetag.lobby``. Writers: ``livetag day create`` and the director's casting page
(the day), the capture server's lobby (presence). A scene is an ordinary session whose
record carries the day's id (``SessionRecord.day_id``); the day's :class:`records.SceneRef`
names it, and gets its ``ended_ts_us`` once the session is over.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from streams import records
from streams.errors import RefusedError
from streams.kafka import clients, topics
from streams.kafka.follower import CompactedFollower
from streams.kafka.sessions import performer_from_name
from streams.session_clock import now_us
from streams.settings import Settings


class CastingError(RefusedError, ValueError):
    """A change to a casting day that its state refuses; ``code`` says which rule."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


def new_day_id() -> str:
    """``day-YYYYMMDD-xxxxxx``: never one of new_session_id's (``YYYYMMDD-xxxxxx``), so a
    revocation naming a day cannot withdraw a session's links, or the reverse."""
    return f"day-{time.strftime('%Y%m%d', time.gmtime())}-{secrets.token_hex(3)}"


def new_day(
    *,
    title: str,
    performer_names: Sequence[str],
    vocabulary: Sequence[records.VocabularyEntry],
    day_id: str | None = None,
    stamp_us: int | None = None,
) -> records.CastingDay:
    """A new day's record (pydantic's ValidationError, or ValueError for a name without
    letters or digits, on bad input; duplicate performers are refused)."""
    created = now_us() if stamp_us is None else stamp_us
    return records.CastingDay(
        ts_us=created,
        day_id=topics.check_session_id(day_id or new_day_id()),
        created_ts_us=created,
        title=title,
        roster=[performer_from_name(name) for name in performer_names],
        vocabulary=list(vocabulary),
    )


async def publish_day(producer: AIOKafkaProducer, day: records.CastingDay) -> None:
    message = records.encode(day)
    await producer.send_and_wait(
        topics.CASTING, message.value, key=message.key, headers=message.headers
    )


async def publish_presence(producer: AIOKafkaProducer, presence: records.LobbyPresence) -> None:
    message = records.encode(presence)
    await producer.send_and_wait(
        topics.LOBBY, message.value, key=message.key, headers=message.headers
    )


async def create_day(
    settings: Settings,
    *,
    title: str,
    performer_names: Sequence[str],
    vocabulary: Sequence[records.VocabularyEntry],
    day_id: str | None = None,
) -> records.CastingDay:
    """Publish a new casting day on livetag.casting (creating the shared topics if need
    be); :class:`CastingError` ``day_exists`` for an id already taken."""
    day = new_day(
        title=title, performer_names=performer_names, vocabulary=vocabulary, day_id=day_id
    )
    async with clients.admin_client(settings) as admin:
        await topics.ensure_shared_topics(admin, settings)
    if day_id is not None and await read_day(settings, day.day_id) is not None:
        raise CastingError("day_exists", f"casting day {day.day_id} exists already")
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        await publish_day(producer, day)
    finally:
        await producer.stop()
    return day


async def read_day(settings: Settings, day_id: str) -> records.CastingDay | None:
    """The newest record of one casting day as livetag.casting holds it now, or None."""
    topics.check_session_id(day_id)
    days = CastingDays(settings)
    await days.start()  # read to the end of livetag.casting
    try:
        return days.get(day_id)
    finally:
        await days.stop()


async def update_day(settings: Settings, day: records.CastingDay) -> None:
    """Publish a new version of a day (a command's change: closing it)."""
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        await publish_day(producer, day)
    finally:
        await producer.stop()


# ---------------------------------------------------------------- a day's changes (pure)


def running_scenes(day: records.CastingDay) -> list[records.SceneRef]:
    """The day's scenes not ended yet."""
    return [scene for scene in day.scenes if scene.ended_ts_us is None]


def scene_of(day: records.CastingDay, performer_id: str) -> records.SceneRef | None:
    """The running scene ``performer_id`` plays in, if any (the newest)."""
    for scene in reversed(day.scenes):
        if scene.ended_ts_us is None and performer_id in scene.performers:
            return scene
    return None


def with_scene(
    day: records.CastingDay, scene: records.SceneRef, *, stamp_us: int
) -> records.CastingDay:
    """The day's next version with ``scene`` started (stamped at least one microsecond
    after ``day``, so the newest version is always the latest). :class:`CastingError`
    when the day is closed or a performer is in a running scene already."""
    if day.state == "closed":
        raise CastingError("day_closed", f"casting day {day.day_id} is closed")
    roster = {performer.performer_id for performer in day.roster}
    strangers = [p for p in scene.performers if p not in roster]
    if strangers:
        raise CastingError(
            "unknown_performer",
            f"{', '.join(strangers)}: not on the roster of casting day {day.day_id}",
        )
    busy = [p for p in scene.performers if scene_of(day, p) is not None]
    if busy:
        raise CastingError("not_waiting", f"{', '.join(busy)}: in a running scene already")
    record = day.model_copy(
        update={"ts_us": max(stamp_us, day.ts_us + 1), "scenes": [*day.scenes, scene]}
    )
    return records.CastingDay.model_validate(record.model_dump())  # what is published is valid


def with_scenes_ended(
    day: records.CastingDay, ended_us: dict[str, int], *, stamp_us: int
) -> records.CastingDay | None:
    """The day's next version with each running scene of ``ended_us`` (session id -> when
    it ended) ended; None when none of them is running."""
    changed = False
    scenes = []
    for scene in day.scenes:
        ended = ended_us.get(scene.session_id)
        if scene.ended_ts_us is None and ended is not None:
            scene = scene.model_copy(update={"ended_ts_us": max(ended, scene.started_ts_us)})
            changed = True
        scenes.append(scene)
    if not changed:
        return None
    return day.model_copy(update={"ts_us": max(stamp_us, day.ts_us + 1), "scenes": scenes})


def closed(day: records.CastingDay, *, stamp_us: int) -> records.CastingDay:
    """The day's last version: closed (its links are refused, no scene starts)."""
    return day.model_copy(update={"state": "closed", "ts_us": max(stamp_us, day.ts_us + 1)})


def partner_counts(scenes: Sequence[records.SceneRef]) -> dict[frozenset[str], int]:
    """How often each pair of performers played a scene together."""
    counts: dict[frozenset[str], int] = {}
    for scene in scenes:
        people = sorted(set(scene.performers))
        for i, first in enumerate(people):
            for second in people[i + 1 :]:
                pair = frozenset((first, second))
                counts[pair] = counts.get(pair, 0) + 1
    return counts


# ---------------------------------------------------------------- following


class CastingDays(CompactedFollower[records.CastingDay]):
    """Every casting day, newest version each, followed live from livetag.casting."""

    def __init__(
        self,
        settings: Settings,
        *,
        dead_letters: AIOKafkaProducer | None = None,
        service: str = "casting",
    ) -> None:
        super().__init__(
            settings,
            topics.CASTING,
            records.CastingDay,
            dead_letters=dead_letters,
            service=service,
        )

    def merge(
        self, current: records.CastingDay | None, record: records.CastingDay
    ) -> records.CastingDay | None:
        if current is not None and current.state == "closed" and record.state != "closed":
            # A scene's end written by a service that had not read the close yet: the
            # scene is news, the day stays closed.
            if record.ts_us < current.ts_us:
                return None
            return record.model_copy(update={"state": "closed"})
        return super().merge(current, record)


class LobbyBoard(CompactedFollower[records.LobbyPresence]):
    """Who of each casting day waits in the lobby, followed live from livetag.lobby."""

    def __init__(
        self,
        settings: Settings,
        *,
        dead_letters: AIOKafkaProducer | None = None,
        service: str = "lobby",
    ) -> None:
        super().__init__(
            settings,
            topics.LOBBY,
            records.LobbyPresence,
            dead_letters=dead_letters,
            service=service,
        )

    def presence(self, day_id: str, performer_id: str) -> records.LobbyPresence | None:
        return self.get(f"{day_id}/{performer_id}")

    def of_day(self, day_id: str) -> list[records.LobbyPresence]:
        return [p for p in self.values() if p.day_id == day_id]


class CoverageBoard(CompactedFollower[records.Coverage]):
    """Each performer's newest ledger per session, followed live from livetag.coverage."""

    def __init__(
        self,
        settings: Settings,
        *,
        dead_letters: AIOKafkaProducer | None = None,
        service: str = "coverage",
    ) -> None:
        super().__init__(
            settings,
            topics.COVERAGE,
            records.Coverage,
            dead_letters=dead_letters,
            service=service,
        )

    def of_sessions(self, session_ids: set[str]) -> list[records.Coverage]:
        return [c for c in self.values() if c.session_id in session_ids]
