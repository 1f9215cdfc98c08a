"""The aligner's faust agents: tags + prosody + face of one session -> ``livetag.labels``.

They live in the session's processor app (streams.features.processors), next to the agents that
make the features: one consumer group per session, so the worker that owns partition P of
the session's feature topics also owns partition P of ``livetag.tags``: every topic is
keyed by ``session/performer`` with one partition count, and faust assigns co-partitioned
topics together. The join itself is streams.labels.aligner_core; this module feeds it records,
ticks it on a timer (a window goes out once its features and tags had time to arrive) and
produces what it returns.

``livetag.tags`` is shared by all sessions: each session's app reads it and skips other
sessions' keys before decoding. The session's record is followed for its performers'
presence: a performer who left has streams that ended, and their windows say so instead of
waiting for them.

The join's state is in memory; a worker killed mid-scene loses none of it, in two parts:
- what it took in is acknowledged to faust (and its offset committed) only once every
  label window it contributes to has gone out: a tag when the windows of its span have
  passed (an onset, offset or undo: a hold's longest span), a feature frame when its window
  has. Whoever gets the partitions next re-reads all of that;
- when partitions are assigned, the windows emitted for them in the last ``label_grace_s``
  + ``tag_max_hold_ms`` are read back from ``livetag.labels`` (SessionAligner.restore):
  they are not emitted anew, and a late tag corrects them with the next revision, keeping
  every tag they showed.

Undecodable records and tags too late to correct anything go to ``livetag.deadletter``
with the reason (a late tag also stays on ``livetag.tags``).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar, cast

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import records
from streams.kafka import clients, health, topics
from streams.kafka.batches import BatchLane
from streams.kafka.clients import decoded_events, event_headers
from streams.kafka.sessions import SessionDirectory, is_over
from streams.labels.aligner_core import AlignerConfig, LateTag, SessionAligner
from streams.session_clock import now_us
from streams.settings import Settings

Feature = TypeVar("Feature", records.ProsodyFrame, records.FaceFrame)
Carrier = TypeVar("Carrier", records.ProsodyHops, records.FaceFrame)

log = logging.getLogger(__name__)

#: Most feature records aligned in one step (25 s of one performer's prosody records).
FEATURE_BATCH = 256
TICK_S = 0.02  # how often ready windows are looked for: small against the 100 ms windows
RESTORE_MARGIN_S = 10.0  # read back a little more than can still be corrected
RESTORE_TIMEOUT_S = 5.0  # half the processors' group session timeout
COUNTERS_INTERVAL_S = 2.0  # the performers' counters go to livetag.health at most this often
PRESENCE_POLL_S = 5.0  # the session record is looked at on each change and at least this often

DeadLetterSink = Callable[[Any, str, str], Awaitable[None]]
Emit = Callable[[Any, records.AnyRecord], Awaitable[None]]


def config_of(settings: Settings) -> AlignerConfig:
    return AlignerConfig(
        window_us=settings.label_window_ms * 1000,
        tag_wait_us=settings.label_tag_wait_ms * 1000,
        feature_wait_us=settings.label_feature_wait_ms * 1000,
        grace_us=round(settings.label_grace_s * 1e6),
        max_hold_us=settings.tag_max_hold_ms * 1000,
    )


class HeldEvents:
    """Events taken into the aligner whose windows have not all gone out yet.

    Kept per performer in arrival order and released from the front: one event that
    waits holds back the later ones of its performer, which only delays their ack.
    """

    def __init__(self, aligner: SessionAligner) -> None:
        self._aligner = aligner
        self._by_performer: dict[str, deque[tuple[int, Any]]] = {}

    def hold(self, performer_id: str, until_us: int, event: Any) -> None:
        self._by_performer.setdefault(performer_id, deque()).append((until_us, event))

    def release(self) -> int:
        """Ack every held event whose windows have passed; how many were acked."""
        released = 0
        for performer_id, held in self._by_performer.items():
            while held and self._aligner.passed(performer_id, held[0][0]):
                held.popleft()[1].ack()
                released += 1
        return released

    def forget(self, performer_id: str) -> None:
        """Drop a performer's held events unacked (their partition went elsewhere)."""
        self._by_performer.pop(performer_id, None)

    def __len__(self) -> int:
        return sum(len(held) for held in self._by_performer.values())


async def offset_at_time(consumer: AIOKafkaConsumer, partition: TopicPartition, ts_ms: int) -> int:
    """The first offset of ``partition`` with a timestamp at or after ``ts_ms``."""
    end = (await consumer.end_offsets([partition]))[partition]
    found = (await consumer.offsets_for_times({partition: ts_ms}))[partition]
    if found is None:
        return int(end)
    if found.timestamp >= 0:
        return int(found.offset)
    # The embedded broker has no time index (it answers offset 0, timestamp -1): search
    # by reading one record at a time (timestamps grow with offsets on a partition).
    low = int((await consumer.beginning_offsets([partition]))[partition])
    high = int(end)
    while low < high:
        middle = (low + high) // 2
        consumer.seek(partition, middle)
        batch = await consumer.getmany(partition, timeout_ms=2000, max_records=1)
        messages = batch.get(partition, [])
        if not messages:
            break
        if messages[0].timestamp < ts_ms:
            low = messages[0].offset + 1
        else:
            high = middle
    return low


async def read_label_windows(
    settings: Settings, session_id: str, partitions: Iterable[int], since_ms: int
) -> list[records.LabelWindow]:
    """The session's label windows on these partitions of livetag.labels since then."""
    wanted = [TopicPartition(topics.LABELS, number) for number in sorted(set(partitions))]
    if not wanted:
        return []
    consumer = clients.make_consumer(settings)
    await consumer.start()
    windows: list[records.LabelWindow] = []
    prefix = f"{session_id}/".encode()
    try:
        consumer.assign(wanted)
        ends = await consumer.end_offsets(wanted)
        for partition in wanted:
            consumer.seek(partition, await offset_at_time(consumer, partition, since_ms))
        while [p for p in wanted if await consumer.position(p) < ends[p]]:
            batches = await consumer.getmany(timeout_ms=1000)
            for batch in batches.values():
                for message in batch:
                    if not (message.key or b"").startswith(prefix):
                        continue
                    try:
                        windows.append(
                            records.decode(records.LabelWindow, message.value, message.headers)
                        )
                    except records.RecordError as exc:
                        log.warning("skipping an undecodable label record: %s", exc)
    finally:
        await consumer.stop()
    return windows


def presence_of(session: records.SessionRecord) -> dict[str, tuple[bool, int]]:
    """Each performer's (connected, since_ts_us) by the session record; an ended session
    has every performer out of the call from its end on."""
    state = {
        presence.participant_id: (presence.connected, presence.since_ts_us)
        for presence in session.presence
        if presence.role == "performer"
    }
    if is_over(session):
        for performer in session.roster:
            connected, since = state.get(performer.performer_id, (True, session.ts_us))
            state[performer.performer_id] = (False, session.ts_us if connected else since)
    return state


def add_aligner(
    app: Any,
    settings: Settings,
    session: records.SessionRecord,
    *,
    emit: Emit,
    dead_letter: DeadLetterSink,
    on_failure: Callable[[BaseException], None] | None = None,
) -> SessionAligner:
    """Define the aligner agents of ``session`` on its processor ``app``."""
    aligner = SessionAligner(session.session_id, config_of(settings))
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "value_serializer": "raw"}
    tags_topic = app.topic(topics.TAGS, **raw)
    labels_topic = app.topic(topics.LABELS, **raw)
    key_prefix = f"{session.session_id}/".encode()
    held = HeldEvents(aligner)
    # One step at a time: an aligner call, the produce of the windows it returned, then
    # the acks it allows; an ack must never count windows not yet handed to the producer
    # (faust flushes the producer before it commits what the acks allow).
    step = asyncio.Lock()
    # Cleared while emitted windows are read back (see restore): nothing is aligned then.
    restored = asyncio.Event()
    restored.set()

    async def align(
        call: Callable[[int], Sequence[Any]], held_until: Sequence[tuple[str, int, Any]] = ()
    ) -> list[LateTag]:
        """``call(now_us)`` on the aligner, its windows produced, then the acks."""
        async with step:
            # Inside the lock: a step queued on it must not run while windows are read back.
            await restored.wait()
            out = call(now_us())
            for performer_id, until_us, event in held_until:
                held.hold(performer_id, until_us, event)
            for item in out:
                if isinstance(item, records.LabelWindow):
                    await emit(labels_topic, item)
            held.release()
        return [item for item in out if isinstance(item, LateTag)]

    @app.agent(tags_topic, name=f"align-tags-{session.session_id}")
    async def align_tags(stream: faust.StreamT) -> None:
        async for event in cast(Any, stream).noack().events():
            if not (event.key or b"").startswith(key_prefix):
                event.ack()  # another session's tag
                continue
            try:
                tag = records.decode(records.TagEvent, event.value, event_headers(event.headers))
            except records.RecordError as exc:
                await dead_letter(event, topics.TAGS, str(exc))
                event.ack()
                continue
            late = await align(
                functools.partial(aligner.add_tag, tag),
                [(tag.performer_id, aligner.settles_at_us(tag), event)],
            )
            for out in late:
                aligner.count_for(tag.performer_id, "late_tags")
                await dead_letter(event, topics.TAGS, out.reason)

    def feature_agent(
        topic_name: str,
        kind: str,
        record_class: type[Carrier],
        frames_of: Callable[[Carrier], Sequence[Feature]],
        add: Callable[[Feature, int], Sequence[records.LabelWindow]],
    ) -> None:
        # Feature records come tens a second per performer: each batch that gathered
        # while the previous one was aligned goes through one aligner step.
        async def align_batch(batch: list[tuple[Any, Sequence[Feature]]]) -> None:
            def call(now_us: int) -> list[Any]:
                out: list[Any] = []
                for _, frames in batch:
                    for frame in frames:
                        out.extend(add(frame, now_us))
                return out

            # A record's event is acked once the windows of its last frame are out.
            await align(
                call,
                [(frames[-1].performer_id, frames[-1].ts_us, event) for event, frames in batch],
            )

        @app.agent(app.topic(topic_name, **raw), name=f"align-{kind}-{session.session_id}")
        async def align_features(stream: faust.StreamT) -> None:
            lane: BatchLane[tuple[Any, Sequence[Feature]]] = BatchLane(
                f"align-{kind}", align_batch, limit=FEATURE_BATCH, on_failure=on_failure
            )
            try:
                async for event, record in decoded_events(
                    stream, record_class, topic_name, dead_letter
                ):
                    await lane.put((event, frames_of(record)))
            finally:
                await lane.close()

    feature_agent(
        session.topics.prosody,
        "prosody",
        records.ProsodyHops,
        records.ProsodyHops.frames,
        aligner.add_prosody,
    )
    feature_agent(
        session.topics.face, "face", records.FaceFrame, lambda frame: (frame,), aligner.add_face
    )

    session_topics = {session.topics.prosody, session.topics.face, topics.TAGS}
    health_topic = app.topic(topics.HEALTH, **raw)
    published_counters: dict[str, dict[str, int]] = {}
    # Set once the counters of the assigned partitions were read back (or none was due).
    counters_seeded = asyncio.Event()
    counters_seeded.set()

    async def seed_counters(partitions: set[int]) -> int:
        """Carry on from the counts earlier instances published for the performers on
        these partitions (their windows within the grace are then read back and counted)."""
        seeded = 0
        found = await health.read_counters(settings, session.session_id)
        for (_, performer_id, source), record in found.items():
            partition = health.performer_partition(settings, session.session_id, performer_id)
            if source == "aligner" and partition in partitions:
                seeded += aligner.seed_counters(
                    performer_id, record.carried, record.carried_through_us, now_us()
                )
        return seeded

    @app.on_partitions_assigned.connect
    async def restore(sender: Any, assigned: set[Any], **_: Any) -> None:
        # faust may resume fetching before this returns: the agents wait on `restored`, so
        # the aligner knows what was emitted before it sees a re-read record.
        partitions = {tp.partition for tp in assigned if tp.topic in session_topics}
        if not partitions:
            return
        restored.clear()
        # Performers whose partitions went to another worker: it carries on from what this
        # one emitted and published; kept here, they would be aligned (and counted) twice.
        for performer_id in aligner.held_performers():
            if health.performer_partition(settings, session.session_id, performer_id) not in (
                partitions
            ):
                aligner.forget_performer(performer_id)
                held.forget(performer_id)
        horizon_s = settings.label_grace_s + settings.tag_max_hold_ms / 1000 + RESTORE_MARGIN_S
        started = time.monotonic()
        try:
            # The group's heartbeats wait for this handler: bounded well inside its session.
            async with asyncio.timeout(RESTORE_TIMEOUT_S):
                windows = await read_label_windows(
                    settings,
                    session.session_id,
                    partitions,
                    since_ms=round((time.time() - horizon_s) * 1000),
                )
                seeded = await seed_counters(partitions)
            count = aligner.restore(windows, now_us())
        except Exception:  # without it the aligner still runs, as before a restart
            # ...but its counters would start again from 0: not published until a
            # later assignment reads them back.
            counters_seeded.clear()
            log.exception("could not read back the emitted label windows")
            return
        else:
            counters_seeded.set()
        finally:
            restored.set()
        log.info(
            "aligner: %d label windows and %d performers' counters of partitions %s read "
            "back in %.2f s",
            count,
            seeded,
            sorted(partitions),
            time.monotonic() - started,
        )

    @app.task
    async def follow_presence() -> None:
        # Joins and leaves are on the session's record: a performer who left has streams
        # that ended, so their windows are not held waiting for them.
        known: dict[str, tuple[bool, int]] = {}
        while True:
            directory = SessionDirectory(settings)
            try:
                await directory.start()
                while True:
                    current = directory.get(session.session_id)
                    if current is not None:
                        for performer_id, state in presence_of(current).items():
                            if known.get(performer_id) != state:
                                known[performer_id] = state
                                aligner.set_presence(performer_id, *state, now_us())
                    await directory.changed(PRESENCE_POLL_S)
            except asyncio.CancelledError:
                raise
            except Exception:  # meanwhile windows wait the full silence for leavers
                log.exception("aligner: could not follow the session's presence; retrying")
                await asyncio.sleep(PRESENCE_POLL_S)
            finally:
                await directory.stop()

    @app.timer(interval=TICK_S, name=f"align-tick-{session.session_id}")
    async def align_tick() -> None:
        await align(aligner.tick)

    @app.timer(interval=COUNTERS_INTERVAL_S, name=f"align-counters-{session.session_id}")
    async def publish_counters() -> None:
        # Under the step lock, so the counts go out with the windows they count.
        if not counters_seeded.is_set():
            return
        async with step:
            await restored.wait()
            for performer_id, (counts, carried, through_us) in aligner.performer_counters().items():
                if published_counters.get(performer_id) == counts:
                    continue
                record = records.PipelineCounters(
                    ts_us=now_us(),
                    session_id=session.session_id,
                    performer_id=performer_id,
                    source="aligner",
                    counters=counts,
                    carried=carried,
                    carried_through_us=through_us,
                )
                await emit(health_topic, record)
                published_counters[performer_id] = counts

    return aligner
