"""Replay: publish an archived session's media again, so the processors recompute it.

``replay_session`` reads every performer's media from an archive (``media/*.mkv`` and its
index, :func:`streams.archive.store.read_media`), merges them in ``ts_us`` order and produces
them into the media topics of a NEW session, created with the original's prompt, roster,
vocabulary and takes. A new session keeps the recomputed feature records apart from the
original's (a feature record's identity is its key + ``ts_us``, and ``ts_us`` is kept).

Every replayed header says ``replayed=True`` and keeps the original ``ts_us``, ``seq``,
``timing`` and ``rtp_timestamp``: the session clock is carried unchanged, only the
``session_id`` changes. Pacing: ``speed=None`` produces as fast as the broker takes it
(a bounded number of records in flight); ``speed=1.0`` is real time (record k leaves at
start + (ts_k - ts_0) / speed), 2.0 twice as fast.

When the media is out, replay by default waits until the session's processors (their
consumer group, see :mod:`streams.features.processors`) have committed everything on the session's
topics, then publishes the session as ``ended``, so workers release it and a recorder
can archive it (workers keep an ended session's processors until it is archived; waiting
first keeps the archive's quiet period from starting while they still catch up).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiokafka import AIOKafkaProducer, TopicPartition
from pydantic import TypeAdapter, ValidationError

from streams import records, session_clock
from streams.archive import store
from streams.kafka import clients, sessions, topics
from streams.settings import Settings

__all__ = [
    "MediaRecord",
    "Progress",
    "ReplayResult",
    "load_media",
    "replay_plan",
    "replay_session",
    "replay_session_id",
    "retarget",
]

log = logging.getLogger(__name__)

MediaRecord = records.AudioChunk | records.VideoFrame

#: Told how far a replay is: ``(step, done, total)``, step ``"publishing"`` (records
#: produced) then ``"processing"`` (of those, the ones the processors have committed).
Progress = Callable[[str, int, int], None]
PUBLISHING: Final = "publishing"
PROCESSING: Final = "processing"

#: Records produced and not yet acknowledged, at most, when replaying as fast as possible.
MAX_IN_FLIGHT: Final = 256
#: How long the processors must stay caught up before the session is ended.
SETTLE_S: Final = 2.0
_MAX_SESSION_ID = 48
_REPLAY_SUFFIX = re.compile(r"^(?P<base>.+)-r(?P<n>\d+)$")


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did."""

    session_id: str
    source_session_id: str
    #: Records published per kind: ``{"audio": n, "video": m}``.
    published: dict[str, int]
    wall_s: float
    ended: bool
    #: Whether the processors had committed every record before the session ended; None
    #: when replay did not wait for them.
    processed: bool | None = None
    roster: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- pure helpers


def replay_plan(
    media: Sequence[MediaRecord], speed: float | None
) -> list[tuple[float, MediaRecord]]:
    """Records in ``ts_us`` order, each with when it leaves: seconds after the start.

    ``speed=None``: every delay is 0 (as fast as possible). Otherwise the spacing of the
    capture times divided by ``speed``. Records with equal ``ts_us`` keep their order.
    """
    if speed is not None and not speed > 0:
        raise ValueError(f"speed must be positive (or None for as fast as possible): {speed}")
    ordered = sorted(media, key=lambda item: item.header.ts_us)
    if not ordered:
        return []
    if speed is None:
        return [(0.0, item) for item in ordered]
    first = ordered[0].header.ts_us
    return [((item.header.ts_us - first) / 1e6 / speed, item) for item in ordered]


def retarget(item: MediaRecord, session_id: str) -> MediaRecord:
    """The record for another session, marked replayed; everything else as captured."""
    topics.check_session_id(session_id)
    if isinstance(item, records.AudioChunk):
        audio = item.header.model_copy(update={"session_id": session_id, "replayed": True})
        return records.AudioChunk(audio, item.pcm)
    video = item.header.model_copy(update={"session_id": session_id, "replayed": True})
    return records.VideoFrame(video, item.jpeg)


def replay_session_id(original: str, taken: set[str]) -> str:
    """``ORIGINAL-rN`` with the smallest N not taken (a replay of a replay is a sibling)."""
    match = _REPLAY_SUFFIX.match(original)
    base = match.group("base") if match else original
    n = 1
    while True:
        suffix = f"-r{n}"
        candidate = base[: _MAX_SESSION_ID - len(suffix)] + suffix
        if candidate not in taken:
            return topics.check_session_id(candidate)
        n += 1


_PERFORMER_ID: TypeAdapter[str] = TypeAdapter(records.ParticipantId)


def _is_performer_id(name: str) -> bool:
    try:
        _PERFORMER_ID.validate_python(name)
    except ValidationError:
        return False
    return True


def load_media(folder: Path) -> tuple[records.SessionRecord, list[MediaRecord]]:
    """The archived session record and all its performers' media, merged in ts_us order;
    :class:`streams.archive.store.ArchiveError` if the archive's files are not what it wrote."""
    manifest = store.read_manifest(folder)
    session = store.manifest_session(folder, manifest)
    performers = manifest.get("performers", {})
    # Its keys name the files to open: performer ids only, never a path.
    if not isinstance(performers, dict) or not all(map(_is_performer_id, performers)):
        raise store.ArchiveError(
            f"{folder / store.MANIFEST}: performers is not an object of performer ids"
        )
    media: list[MediaRecord] = []
    for performer_id in sorted(performers):
        media.extend(store.read_media(folder, performer_id))
    media.sort(key=lambda item: item.header.ts_us)  # stable: per performer, capture order
    return session, media


# ---------------------------------------------------------------- the replay


async def replay_session(
    settings: Settings,
    folder: Path,
    *,
    new_session_id: str | None = None,
    speed: float | None = None,
    end: bool = True,
    drain_timeout_s: float | None = 300.0,
    progress: Progress | None = None,
) -> ReplayResult:
    """Publish the archived session in ``folder`` into a new session (see the module doc).

    ``end``: publish the new session as ended afterwards. ``drain_timeout_s``: before
    ending, wait up to this long for its processors to catch up (None: do not wait).
    ``progress``: told how far it is as it goes (from the event loop: it must not block).
    """
    original, media = load_media(folder)
    directory = sessions.SessionDirectory(settings)
    await directory.start()
    try:
        known = {s.session_id for s in directory.sessions()}
    finally:
        await directory.stop()
    if new_session_id is None:
        session_id = replay_session_id(original.session_id, known)
    else:
        session_id = topics.check_session_id(new_session_id)
        if session_id in known:
            raise ValueError(
                f"session {session_id!r} exists already: replay into a new session, so its "
                "feature records are not mixed with the recomputed ones"
            )
    plan = replay_plan(media, speed)

    created = session_clock.now_us()
    session = records.SessionRecord(
        ts_us=created,
        session_id=session_id,
        created_ts_us=created,
        prompt=original.prompt,
        # The original's roster as it was (ids included): the media carry these ids.
        roster=list(original.roster),
        vocabulary=list(original.vocabulary),
        state="created",
        takes=list(original.takes),
        topics=topics.session_topic_names(session_id),
    )
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        await sessions.open_session(settings, session, producer)
        log.info(
            "replaying %s into %s: %d records, speed %s",
            original.session_id,
            session_id,
            len(plan),
            "max" if speed is None else speed,
        )
        started = time.monotonic()
        published, media_ends = await _publish(producer, session, plan, progress)
        wall_s = time.monotonic() - started
        processed: bool | None = None
        if end:
            if drain_timeout_s is not None:
                processed = await wait_processed(
                    settings,
                    session_id,
                    drain_timeout_s,
                    media_ends=media_ends,
                    progress=progress,
                )
                if not processed:
                    log.warning(
                        "processors of %s did not catch up in %.0f s; ending it anyway",
                        session_id,
                        drain_timeout_s,
                    )
            ended = session.model_copy(
                update={"state": "ended", "ts_us": max(session_clock.now_us(), session.ts_us + 1)}
            )
            await sessions.publish(producer, ended)
    finally:
        await producer.stop()
    return ReplayResult(
        session_id=session_id,
        source_session_id=original.session_id,
        published=published,
        wall_s=wall_s,
        ended=end,
        processed=processed,
        roster=[p.performer_id for p in session.roster],
    )


async def _publish(
    producer: AIOKafkaProducer,
    session: records.SessionRecord,
    plan: Sequence[tuple[float, MediaRecord]],
    progress: Progress | None = None,
) -> tuple[dict[str, int], dict[TopicPartition, int]]:
    """Produce the plan; the counts per kind, and the offset after the last record of
    every partition written (from the acknowledgements)."""
    loop = asyncio.get_running_loop()
    counts = {"audio": 0, "video": 0}
    ends: dict[TopicPartition, int] = {}
    pending: list[asyncio.Future[Any]] = []
    start = loop.time()
    for delay_s, item in plan:
        wait = start + delay_s - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        replayed = retarget(item, session.session_id)
        if isinstance(replayed, records.AudioChunk):
            topic, kind = session.topics.audio, "audio"
        else:
            topic, kind = session.topics.video, "video"
        message = records.encode(replayed)
        pending.append(
            await producer.send(topic, message.value, key=message.key, headers=message.headers)
        )
        counts[kind] += 1
        if len(pending) >= MAX_IN_FLIGHT:
            _note_ends(ends, await asyncio.gather(*pending))
            pending.clear()
        if progress is not None:
            progress(PUBLISHING, counts["audio"] + counts["video"], len(plan))
    # Every record acknowledged (raises if one failed).
    _note_ends(ends, await asyncio.gather(*pending))
    if progress is not None:
        progress(PUBLISHING, len(plan), len(plan))
    return counts, ends


def _note_ends(ends: dict[TopicPartition, int], acknowledged: Sequence[Any]) -> None:
    for meta in acknowledged:
        partition = TopicPartition(meta.topic, meta.partition)
        ends[partition] = max(ends.get(partition, 0), meta.offset + 1)


async def wait_processed(
    settings: Settings,
    session_id: str,
    timeout_s: float,
    *,
    media_ends: Mapping[TopicPartition, int] | None = None,
    settle_s: float = SETTLE_S,
    progress: Progress | None = None,
) -> bool:
    """Wait until the session's processors committed every record of its topics.

    ``media_ends``: the offset after the last record produced to each media partition
    (from the producer's acknowledgements). Without it the broker's end offsets are used,
    which the embedded broker (tansu) can report too low: it may then return early.

    Media committed means every feature record was handed to the processors' producer (an
    event is acked only after that); feature topics committed means the aligner has seen
    them. The state has to hold, with no new feature record, for ``settle_s``: a producer
    may hold the last records for a moment after the commit. ``progress``: told, at each
    look, how many media records (of how many) the processors have committed.
    """
    names = topics.session_topic_names(session_id)
    group = topics.processors_group(session_id)
    deadline = time.monotonic() + timeout_s

    def partitions(*wanted: str) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in wanted for p in range(settings.partitions)]

    media = partitions(names.audio, names.video)
    features = partitions(names.prosody, names.face)
    async with clients.admin_client(settings) as admin:
        consumer = clients.make_consumer(settings)
        await consumer.start()
        try:
            settled: tuple[float, dict[TopicPartition, int]] | None = None
            while True:
                committed = {
                    tp: meta.offset
                    for tp, meta in (
                        await admin.list_consumer_group_offsets(group, partitions=media + features)
                    ).items()
                }
                ends: dict[TopicPartition, int] = dict(media_ends or {})
                if media_ends is None:
                    ends.update(await consumer.end_offsets(media))
                ends.update(await consumer.end_offsets(features))
                if progress is not None:
                    # Offsets count records here: a media partition holds only this session's.
                    progress(
                        PROCESSING,
                        sum(min(max(committed.get(tp, 0), 0), ends.get(tp, 0)) for tp in media),
                        sum(ends.get(tp, 0) for tp in media),
                    )
                seen = {tp: max(committed.get(tp, -1), end) for tp, end in ends.items()}
                done = all(end <= 0 or committed.get(tp, -1) >= end for tp, end in ends.items())
                if not done:
                    settled = None
                elif settled is None or settled[1] != seen:
                    settled = (time.monotonic(), seen)
                elif time.monotonic() - settled[0] >= settle_s:
                    return True
                if time.monotonic() >= deadline:
                    return False
                await asyncio.sleep(0.25)
        finally:
            await consumer.stop()
