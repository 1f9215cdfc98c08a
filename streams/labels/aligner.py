"""The aligner's faust agents: tags + prosody + face of one session -> ``livetag.labels``.

They live in the session's processor app (streams.features.processors), next to the agents that
make the features: one consumer group per session, so the worker that owns partition P of
the session's feature topics also owns partition P of ``livetag.tags``: every topic is
keyed by ``session/performer`` with one partition count, and faust assigns co-partitioned
topics together. The join itself is streams.labels.aligner_core; this module feeds it records,
ticks it on a timer (a window goes out once its features and tags had time to arrive) and
produces what it returns.

``livetag.tags`` is shared by all sessions: each session's app reads it and skips other
sessions' keys before decoding; so is ``livetag.ratings`` (continuous ratings, in batches,
co-partitioned like the tags). The session's model topic (the model lane's readings, one per
label window and model) is the session's own. The session's record is followed for its
performers' presence: a performer who left has streams that ended, and their windows say so
instead of waiting for them.

Every ``rater_lag_interval_s`` each rater's reaction lag is estimated again from what was
aligned (streams.labels.rater_lags, off the event loop); the correction kept in force
(rater_lags.AppliedLags: a round that would merely toggle it does not) applies to the
rater's tags and samples that arrive from then on, and goes to ``livetag.raters`` when it
changed materially, or as a heartbeat. After a restart the corrections published there are
taken up again: tags and samples read again land under the newest published correction,
which is where they landed before only if the correction had not changed since they were
first placed (each label window records the correction that placed what it shows).

The join's state is in memory; a worker killed mid-scene loses none of it, in two parts:
- what it took in is acknowledged to faust (and its offset committed) only once every
  label window it contributes to has gone out: a tag when the windows of its span have
  passed (an onset, offset or undo: a hold's longest span), a feature frame when its window
  has. Whoever gets the partitions next re-reads all of that;
- when partitions are assigned, the windows emitted for them in the last ``label_grace_s``
  + ``tag_max_hold_ms`` are read back from ``livetag.labels`` (SessionAligner.restore):
  they are not emitted anew, and a late tag corrects them with the next revision, keeping
  every tag they showed.

Undecodable records, tags and rating batches too late to correct anything, and model
readings that are not one label window's go to ``livetag.deadletter`` with the reason (a late
tag also stays on ``livetag.tags``). Model readings too late for their window are counted
(``late_model_readings``), not dead-lettered: a model that fell behind is not bad input.

The ledger (streams.labels.ledger): ``livetag.cues`` (shared, co-partitioned like the
tags) gives each window its ``intent`` with the session record's scenario and takes, never
holding a window back; a cue that comes after its windows went out revises them within the
grace. Every window produced goes into each performer's coverage, published on
``livetag.coverage`` every ``coverage_interval_s`` when it changed, and rebuilt from
``livetag.labels`` when partitions are assigned (CoveragePublisher).

Each agent is a small class that writes through one :class:`AlignerStep` (the aligner, its
lock and the acks it allows): SharedTopicAgent (as TagAgent, RatingAgent and CueAgent),
FeatureAgent (prosody, face), ModelAgent, PresenceFollower (presence and the scene's plan),
CounterPublisher, CoveragePublisher, RaterLagPublisher, and RestoreOnAssignment for the
above; add_aligner only wires them to the app.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar, cast

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams import records
from streams.kafka import clients, health, topics
from streams.kafka.batches import BatchLane
from streams.kafka.clients import decoded_events, event_headers, raw_topic
from streams.kafka.sessions import SessionDirectory, is_over
from streams.labels.aligner_core import (
    AlignerConfig,
    LateCue,
    LateRatings,
    LateTag,
    RefusedReading,
    SessionAligner,
    Unplaced,
)
from streams.labels.ledger import CoverageBook
from streams.labels.rater_lags import (
    AppliedLags,
    ConsensusCache,
    LagEvidence,
    estimate_lags,
    worth_publishing,
)
from streams.session_clock import now_us
from streams.settings import Settings

Feature = TypeVar("Feature", records.ProsodyFrame, records.FaceFrame)
Carrier = TypeVar("Carrier", records.ProsodyHops, records.FaceFrame)
Shared = TypeVar("Shared", records.TagEvent, records.RatingBatch, records.Cue)

log = logging.getLogger(__name__)

#: Most feature records aligned in one step (25 s of one performer's prosody records).
FEATURE_BATCH = 256
TICK_S = 0.02  # how often ready windows are looked for: small against the 100 ms windows
RESTORE_MARGIN_S = 10.0  # read back a little more than can still be corrected
RESTORE_TIMEOUT_S = 5.0  # half the processors' group session timeout
# The raters' lags are read beside the windows on a clock of their own: a slow read of
# livetag.raters must neither fail the windows' restore nor outlast it.
LAGS_RESTORE_TIMEOUT_S = 4.0
COUNTERS_INTERVAL_S = 2.0  # the performers' counters go to livetag.health at most this often
PRESENCE_POLL_S = 5.0  # the session record is looked at on each change and at least this often
COVERAGE_RETRY_S = 5.0  # a rebuild of the coverage that failed is tried again after this
# A rebuilt coverage goes into the live one this many windows at a time, the event loop
# free between them (an hour of two performers' windows is 70k).
COVERAGE_MERGE_CHUNK = 2_000

#: Most model readings aligned in one step (a few seconds of 4 performers' windows).
MODEL_BATCH = 256

DeadLetterSink = Callable[[Any, str, str], Awaitable[None]]
Emit = Callable[[Any, records.AnyRecord], Awaitable[None]]
#: Events to hold until their performer's windows up to an instant are out.
Held = Sequence[tuple[str, int, Any]]


def config_of(settings: Settings) -> AlignerConfig:
    return AlignerConfig(
        window_us=settings.label_window_ms * 1000,
        tag_wait_us=settings.label_tag_wait_ms * 1000,
        feature_wait_us=settings.label_feature_wait_ms * 1000,
        grace_us=round(settings.label_grace_s * 1e6),
        max_hold_us=settings.tag_max_hold_ms * 1000,
        rating_wait_us=settings.label_rating_wait_ms * 1000,
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


async def label_records(
    settings: Settings, session_id: str, partitions: Iterable[int], since_ms: int
) -> AsyncIterator[list[Any]]:
    """The session's records on these partitions of livetag.labels from ``since_ms`` until
    the partitions' ends as they were when asked, a fetched batch at a time (undecoded)."""
    wanted = [TopicPartition(topics.LABELS, number) for number in sorted(set(partitions))]
    if not wanted:
        return
    consumer = clients.make_consumer(settings)
    await consumer.start()
    prefix = f"{session_id}/".encode()
    try:
        consumer.assign(wanted)
        ends = await consumer.end_offsets(wanted)
        for partition in wanted:
            consumer.seek(partition, await offset_at_time(consumer, partition, since_ms))
        while [p for p in wanted if await consumer.position(p) < ends[p]]:
            batches = await consumer.getmany(timeout_ms=1000)
            mine = [
                message
                for batch in batches.values()
                for message in batch
                if (message.key or b"").startswith(prefix)
            ]
            if mine:
                yield mine
    finally:
        await consumer.stop()


async def read_label_windows(
    settings: Settings, session_id: str, partitions: Iterable[int], since_ms: int
) -> list[records.LabelWindow]:
    """The session's label windows on these partitions of livetag.labels since then."""
    windows: list[records.LabelWindow] = []
    async for batch in label_records(settings, session_id, partitions, since_ms):
        for message in batch:
            try:
                windows.append(records.decode(records.LabelWindow, message.value, message.headers))
            except records.RecordError as exc:
                log.warning("skipping an undecodable label record: %s", exc)
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


class AlignerStep:
    """The session's aligner, stepped one call at a time: an aligner call, the produce of
    the windows it returned, then the acks it allows; an ack must never count windows not
    yet handed to the producer (faust flushes the producer before it commits what the acks
    allow)."""

    def __init__(self, aligner: SessionAligner, emit: Emit, labels_topic: Any) -> None:
        self.aligner = aligner
        self.held = HeldEvents(aligner)
        self._emit = emit
        self._labels_topic = labels_topic
        self._lock = asyncio.Lock()
        # Cleared while emitted windows are read back (see RestoreOnAssignment): nothing is
        # aligned then.
        self.restored = asyncio.Event()
        self.restored.set()
        # Told of every window (revision) produced: the performers' coverage is kept so.
        self.on_window: Callable[[records.LabelWindow], None] | None = None

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the step: no aligner call runs meanwhile, nor while windows are read back."""
        async with self._lock:
            # Inside the lock: a step queued on it must not run while windows are read back.
            await self.restored.wait()
            yield

    async def run(
        self, call: Callable[[int], Sequence[Any]], held_until: Held | Callable[[], Held] = ()
    ) -> list[Unplaced]:
        """``call(now_us)`` on the aligner, its windows produced, then the acks: the events
        of ``held_until`` (performer, instant whose windows must be out, event) are held
        until then; given as a function, it is asked after the call (where an input lands
        can depend on the aligner's state then: a rater's lag correction). Returns what the
        call could not use (late tags and ratings, refused readings)."""
        async with self.exclusive():
            out = call(now_us())
            held = held_until() if callable(held_until) else held_until
            for performer_id, until_us, event in held:
                self.held.hold(performer_id, until_us, event)
            for item in out:
                if isinstance(item, records.LabelWindow):
                    await self._emit(self._labels_topic, item)
                    if self.on_window is not None:
                        self.on_window(item)
            self.held.release()
        return [item for item in out if not isinstance(item, records.LabelWindow)]

    async def tick(self) -> None:
        """The windows that are ready by now, out (a window goes out once its features
        and tags had time to arrive)."""
        await self.run(self.aligner.tick)


class SharedTopicAgent(Generic[Shared]):
    """A shared topic keyed ``session/performer`` (``livetag.tags``, ``livetag.ratings``)
    into the aligner: this session's records, each acked once the windows it can still
    change have gone out (``settles_at``: the last instant it can change, asked after the
    aligner took it, since a rater's correction in force then places it); one the aligner
    found too late for anything (``late``) is counted as ``late_counter`` and dead-lettered."""

    def __init__(
        self,
        session_id: str,
        topic_name: str,
        record_class: type[Shared],
        *,
        add: Callable[[Shared, int], Sequence[Any]],
        settles_at: Callable[[Shared], int],
        late: type[Unplaced],
        late_counter: str,
        step: AlignerStep,
        dead_letter: DeadLetterSink,
    ) -> None:
        self._key_prefix = f"{session_id}/".encode()
        self.topic_name = topic_name
        self._record_class: type[Shared] = record_class
        self._add: Callable[[Shared, int], Sequence[Any]] = add
        self._settles_at: Callable[[Shared], int] = settles_at
        self._late = late
        self._late_counter = late_counter
        self._step = step
        self._dead_letter = dead_letter

    async def run(self, stream: faust.StreamT) -> None:
        async for event in cast(Any, stream).noack().events():
            await self.take(event)

    async def take(self, event: Any) -> None:
        if not (event.key or b"").startswith(self._key_prefix):
            event.ack()  # another session's
            return
        try:
            record = records.decode(self._record_class, event.value, event_headers(event.headers))
        except records.RecordError as exc:
            await self._dead_letter(event, self.topic_name, str(exc))
            event.ack()
            return
        unplaced = await self._step.run(
            functools.partial(self._add, record),
            lambda: [(record.performer_id, self._settles_at(record), event)],
        )
        for out in unplaced:
            if isinstance(out, self._late):
                self._step.aligner.count_for(record.performer_id, self._late_counter)
                await self._dead_letter(event, self.topic_name, out.reason)


class TagAgent(SharedTopicAgent[records.TagEvent]):
    """``livetag.tags`` into the aligner: each tag acked once the windows of its span have
    gone out."""

    def __init__(self, session_id: str, step: AlignerStep, dead_letter: DeadLetterSink) -> None:
        aligner = step.aligner
        super().__init__(
            session_id,
            topics.TAGS,
            records.TagEvent,
            add=aligner.add_tag,
            settles_at=aligner.settles_at_us,
            late=LateTag,
            late_counter="late_tags",
            step=step,
            dead_letter=dead_letter,
        )


class RatingAgent(SharedTopicAgent[records.RatingBatch]):
    """``livetag.ratings`` into the aligner: each continuous rating batch acked once the
    windows of its samples have gone out."""

    def __init__(self, session_id: str, step: AlignerStep, dead_letter: DeadLetterSink) -> None:
        aligner = step.aligner
        super().__init__(
            session_id,
            topics.RATINGS,
            records.RatingBatch,
            add=aligner.add_ratings,
            settles_at=aligner.rating_settles_at_us,
            late=LateRatings,
            late_counter="late_ratings",
            step=step,
            dead_letter=dead_letter,
        )


class CueAgent(SharedTopicAgent[records.Cue]):
    """``livetag.cues`` into the aligner: the intent of the performer's windows. Each cue
    record is acked once a window under it has gone out (the cue in force is known again
    from the windows after a restart); one that could only change windows past the grace
    is counted (late_cues) and dead-lettered."""

    def __init__(self, session_id: str, step: AlignerStep, dead_letter: DeadLetterSink) -> None:
        aligner = step.aligner
        super().__init__(
            session_id,
            topics.CUES,
            records.Cue,
            add=aligner.add_cue,
            settles_at=aligner.cue_settles_at_us,
            late=LateCue,
            late_counter="late_cues",
            step=step,
            dead_letter=dead_letter,
        )


class FeatureAgent(Generic[Carrier, Feature]):
    """One of the session's feature topics into the aligner.

    Feature records come tens a second per performer: each batch that gathered while the
    previous one was aligned goes through one aligner step.
    """

    def __init__(
        self,
        kind: str,
        topic_name: str,
        record_class: type[Carrier],
        frames_of: Callable[[Carrier], Sequence[Feature]],
        add: Callable[[Feature, int], Sequence[records.LabelWindow]],
        step: AlignerStep,
        dead_letter: DeadLetterSink,
        on_failure: Callable[[BaseException], None] | None,
    ) -> None:
        self.kind = kind
        self.topic_name = topic_name
        self._record_class: type[Carrier] = record_class
        self._frames_of: Callable[[Carrier], Sequence[Feature]] = frames_of
        self._add: Callable[[Feature, int], Sequence[records.LabelWindow]] = add
        self._step = step
        self._dead_letter = dead_letter
        self._on_failure = on_failure

    async def run(self, stream: faust.StreamT) -> None:
        lane: BatchLane[tuple[Any, Sequence[Feature]]] = BatchLane(
            f"align-{self.kind}", self.align_batch, limit=FEATURE_BATCH, on_failure=self._on_failure
        )
        try:
            async for event, record in decoded_events(
                stream, self._record_class, self.topic_name, self._dead_letter
            ):
                await lane.put((event, self._frames_of(record)))
        finally:
            await lane.close()

    async def align_batch(self, batch: list[tuple[Any, Sequence[Feature]]]) -> None:
        def call(now_us: int) -> list[Any]:
            out: list[Any] = []
            for _, frames in batch:
                for frame in frames:
                    out.extend(self._add(frame, now_us))
            return out

        # A record's event is acked once the windows of its last frame are out.
        await self._step.run(
            call, [(frames[-1].performer_id, frames[-1].ts_us, event) for event, frames in batch]
        )


class ModelAgent:
    """The session's model topic into the aligner: each model reading folded into its label
    window (which never waits for it: a reading after the window went out revises it).

    Readings come one per window and model (10 a second per performer and model): each
    batch that gathered while the previous one was aligned goes through one aligner step,
    so a window that took several readings at once is revised once."""

    def __init__(
        self,
        topic_name: str,
        step: AlignerStep,
        dead_letter: DeadLetterSink,
        on_failure: Callable[[BaseException], None] | None,
    ) -> None:
        self.topic_name = topic_name
        self._step = step
        self._dead_letter = dead_letter
        self._on_failure = on_failure

    async def run(self, stream: faust.StreamT) -> None:
        lane: BatchLane[tuple[Any, records.ModelReading]] = BatchLane(
            "align-model", self.align_batch, limit=MODEL_BATCH, on_failure=self._on_failure
        )
        try:
            async for event, reading in decoded_events(
                stream, records.ModelReading, self.topic_name, self._dead_letter
            ):
                await lane.put((event, reading))
        finally:
            await lane.close()

    async def align_batch(self, batch: list[tuple[Any, records.ModelReading]]) -> None:
        aligner = self._step.aligner
        refused: dict[int, RefusedReading] = {}

        def call(now_us: int) -> list[Any]:
            out = aligner.add_model_readings([reading for _, reading in batch], now_us)
            refused.update(
                (id(item.reading), item) for item in out if isinstance(item, RefusedReading)
            )
            return out

        def held() -> Held:
            # Until its window is out (it was revised at once if it had gone out); a
            # refused one is not held: it may name any instant at all.
            return [
                (reading.performer_id, reading.ts_us, event)
                for event, reading in batch
                if id(reading) not in refused
            ]

        await self._step.run(call, held)
        for event, reading in batch:
            out = refused.get(id(reading))
            if out is not None:
                await self._dead_letter(event, self.topic_name, out.reason)
                event.ack()


class PresenceFollower:
    """The session's record followed for its performers' presence, and for the scene's
    plan (takes, scenario) when ``on_session`` is given.

    Joins and leaves are on the session's record: a performer who left has streams that
    ended, so their windows are not held waiting for them.
    """

    def __init__(
        self,
        settings: Settings,
        session_id: str,
        aligner: SessionAligner,
        on_session: Callable[[records.SessionRecord], Awaitable[None]] | None = None,
    ) -> None:
        self._settings = settings
        self._session_id = session_id
        self._aligner = aligner
        self._on_session = on_session
        self._known: dict[str, tuple[bool, int]] = {}

    def note(self, session: records.SessionRecord) -> None:
        """Tell the aligner whose presence changed since the record seen last."""
        for performer_id, state in presence_of(session).items():
            if self._known.get(performer_id) != state:
                self._known[performer_id] = state
                self._aligner.set_presence(performer_id, *state, now_us())

    async def run(self) -> None:
        while True:
            directory = SessionDirectory(self._settings)
            try:
                await directory.start()
                while True:
                    current = directory.get(self._session_id)
                    if current is not None:
                        self.note(current)
                        if self._on_session is not None:
                            await self._on_session(current)
                    await directory.changed(PRESENCE_POLL_S)
            except asyncio.CancelledError:
                raise
            except Exception:  # meanwhile windows wait the full silence for leavers
                log.exception("aligner: could not follow the session's presence; retrying")
                await asyncio.sleep(PRESENCE_POLL_S)
            finally:
                await directory.stop()


class CounterPublisher:
    """The performers' counters on ``livetag.health``: those that changed, at most every
    COUNTERS_INTERVAL_S, carrying on from what earlier instances published."""

    def __init__(
        self,
        settings: Settings,
        session_id: str,
        step: AlignerStep,
        emit: Emit,
        health_topic: Any,
    ) -> None:
        self._settings = settings
        self._session_id = session_id
        self._step = step
        self._emit = emit
        self._health_topic = health_topic
        self._published: dict[str, dict[str, int]] = {}
        # Set once the counters of the assigned partitions were read back (or none was due).
        self.seeded = asyncio.Event()
        self.seeded.set()
        # Events counted beside the aligner (the coverage's rebuild), per performer: taken
        # into its counters once a read-back is over, so the seeding never refuses them.
        self._pending: dict[str, Counter[str]] = {}

    def count(self, performer_id: str, name: str, n: int = 1) -> None:
        """Count an event about the performer, published with the aligner's counters."""
        if n:
            self._pending.setdefault(performer_id, Counter())[name] += n

    async def seed(self, partitions: set[int]) -> int:
        """Carry on from the counts earlier instances published for the performers on
        these partitions (their windows within the grace are then read back and counted)."""
        seeded = 0
        found = await health.read_counters(self._settings, self._session_id)
        for (_, performer_id, source), record in found.items():
            partition = health.performer_partition(self._settings, self._session_id, performer_id)
            if source == "aligner" and partition in partitions:
                seeded += self._step.aligner.seed_counters(
                    performer_id, record.carried, record.carried_through_us, now_us()
                )
        return seeded

    async def publish(self) -> None:
        # Under the step lock, so the counts go out with the windows they count.
        if not self.seeded.is_set():
            return
        async with self._step.exclusive():
            if self._step.restored.is_set():
                for performer_id, pending in self._pending.items():
                    for name, n in pending.items():
                        self._step.aligner.count_for(performer_id, name, n)
                self._pending.clear()
            performers = self._step.aligner.performer_counters()
            for performer_id, (counts, carried, through_us) in performers.items():
                if self._published.get(performer_id) == counts:
                    continue
                record = records.PipelineCounters(
                    ts_us=now_us(),
                    session_id=self._session_id,
                    performer_id=performer_id,
                    source="aligner",
                    counters=counts,
                    carried=carried,
                    carried_through_us=through_us,
                )
                await self._emit(self._health_topic, record)
                self._published[performer_id] = counts


class CoveragePublisher:
    """Each performer's ledger (records.Coverage) on ``livetag.coverage``: kept in a
    CoverageBook from every window revision the aligner produces, and published for the
    performers whose coverage changed, every ``coverage_interval_s``.

    After a restart, or when partitions move here, it is rebuilt rather than read back
    (a published Coverage cannot tell which windows it counted in which revision): the
    windows of the partitions newly assigned are read again from ``livetag.labels`` since
    the session's start, in the background (decoded and counted off the event loop), and
    merged under what this instance counted meanwhile (its revisions are the newer ones).
    Until a partition is rebuilt its performers' coverage is not published, so a restart
    never publishes a ledger that starts again from nothing, and no window's contribution
    is forgotten (settled) while a rebuild could still bring an older revision of it.

    The rebuild's counts go out with the aligner's counters (``counters``), per performer:
    ``coverage_rebuilt_windows``, ``coverage_undecodable_windows`` and
    ``coverage_rebuild_failures`` (each failed attempt, for every performer of the roster
    on the partitions)."""

    def __init__(
        self,
        settings: Settings,
        session: records.SessionRecord,
        step: AlignerStep,
        emit: Emit,
        coverage_topic: Any,
        counters: CounterPublisher | None = None,
    ) -> None:
        self._settings = settings
        self._session_id = session.session_id
        self._roster = [performer.performer_id for performer in session.roster]
        self._counters = counters
        # With a margin: the windows are stamped by the clock of the worker producing them.
        self._since_ms = session.created_ts_us // 1000 - round(RESTORE_MARGIN_S * 1000)
        self._vocabulary = [entry.label for entry in session.vocabulary]
        self.book = CoverageBook(session.session_id, self._vocabulary)
        self._step = step
        self._emit = emit
        self._topic = coverage_topic
        step.on_window = self._note
        self._assigned: set[int] | None = None  # None: no assignment yet, nothing to rebuild
        self._complete: set[int] = set()  # partitions whose whole history the book holds
        self._rebuild: asyncio.Task[None] | None = None
        self.rebuilt_windows = 0
        self.rebuild_failures = 0
        self.undecodable = 0

    def _note(self, window: records.LabelWindow) -> None:
        self.book.add(window)

    def _partition(self, performer_id: str) -> int:
        return health.performer_partition(self._settings, self._session_id, performer_id)

    def _ready(self, performer_id: str) -> bool:
        return self._assigned is None or self._partition(performer_id) in self._complete

    @property
    def rebuilding(self) -> bool:
        return self._assigned is not None and not self._assigned <= self._complete

    def assign(self, partitions: set[int]) -> None:
        """The session's partitions now assigned here: the performers of the others are
        forgotten, the new ones' coverage rebuilt."""
        for performer_id in self.book.performers():
            if self._partition(performer_id) not in partitions:
                self.book.forget(performer_id)
        self._complete &= partitions
        self._assigned = set(partitions)
        if self._rebuild is not None:
            self._rebuild.cancel()
            self._rebuild = None
        missing = partitions - self._complete
        if missing:
            self._rebuild = asyncio.create_task(self.rebuild(missing))

    async def rebuild(self, partitions: set[int]) -> None:
        """Count the windows of these partitions from the session's start (tried again
        until it succeeds)."""
        while True:
            older = CoverageBook(self._session_id, self._vocabulary)
            counted: Counter[str] = Counter()
            undecodable: Counter[str] = Counter()
            try:
                async for batch in label_records(
                    self._settings, self._session_id, partitions, self._since_ms
                ):
                    added, lost = await asyncio.to_thread(self._count, older, batch)
                    counted += added
                    undecodable += lost
            except asyncio.CancelledError:
                raise
            except Exception:
                self.rebuild_failures += 1
                for performer_id in self._roster:
                    if self._partition(performer_id) in partitions:
                        self._note_count(performer_id, "coverage_rebuild_failures")
                log.exception("aligner: could not rebuild the coverage; trying again")
                await asyncio.sleep(COVERAGE_RETRY_S)
                continue
            await self._merge(older, partitions)
            total = sum(counted.values())
            self.rebuilt_windows += total
            for performer_id, n in counted.items():
                self._note_count(performer_id, "coverage_rebuilt_windows", n)
            for performer_id, n in undecodable.items():
                self._note_count(performer_id, "coverage_undecodable_windows", n)
            log.info(
                "aligner: coverage of partitions %s rebuilt from %d label windows",
                sorted(partitions),
                total,
            )
            return

    async def _merge(self, older: CoverageBook, partitions: set[int]) -> None:
        """Take the rebuilt book in under the live one, the event loop free between steps.
        Cancelled midway (the partitions moved again), the next rebuild merges again: the
        windows taken in already are skipped, and the settled part goes in with the
        partitions' completion, in one step."""
        settled = await asyncio.to_thread(older.settled_ledgers)
        entries = older.open_entries()
        for start in range(0, len(entries), COVERAGE_MERGE_CHUNK):
            async with self._step.exclusive():
                self.book.merge_open(entries[start : start + COVERAGE_MERGE_CHUNK])
            await asyncio.sleep(0)
        async with self._step.exclusive():
            self.book.absorb_settled(settled)
            self._complete |= partitions

    def _note_count(self, performer_id: str, name: str, n: int = 1) -> None:
        if self._counters is not None:
            self._counters.count(performer_id, name, n)

    def _count(self, book: CoverageBook, batch: Sequence[Any]) -> tuple[Counter[str], Counter[str]]:
        """Count a batch into ``book`` (off the event loop): per performer, the windows
        counted and those that could not be decoded (by their key)."""
        counted: Counter[str] = Counter()
        undecodable: Counter[str] = Counter()
        prefix = f"{self._session_id}/"
        for message in batch:
            try:
                window = records.decode(records.LabelWindow, message.value, message.headers)
            except records.RecordError as exc:
                self.undecodable += 1
                key = (message.key or b"").decode("utf-8", "replace")
                log.warning("aligner: an undecodable label window (key %r): %s", key, exc)
                performer_id = key.removeprefix(prefix)
                if key.startswith(prefix) and performer_id and "/" not in performer_id:
                    undecodable[performer_id] += 1
                continue
            book.add(window)
            counted[window.performer_id] += 1
        return counted, undecodable

    async def publish(self) -> None:
        async with self._step.exclusive():
            for performer_id in sorted(self.book.changed()):
                if not self._ready(performer_id):
                    self.book.mark_changed(performer_id)
                    continue
                await self._emit(self._topic, self.book.coverage(performer_id))
            if not self.rebuilding:
                self.book.settle(now_us())

    async def stop(self, sender: Any = None, **_: Any) -> None:
        """Cancel a rebuild under way (connected to the app's shutdown)."""
        if self._rebuild is not None:
            self._rebuild.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rebuild


async def read_rater_lags(
    settings: Settings, session_id: str, since_ms: int
) -> dict[str, records.RaterLag]:
    """The newest ``rater_lag`` record of each of the session's raters on livetag.raters,
    read from ``since_ms`` (the session's creation: nothing of it is older)."""
    consumer = clients.make_consumer(settings)
    await consumer.start()
    partition = TopicPartition(topics.RATERS, 0)
    prefix = f"{session_id}/".encode()
    newest: dict[str, records.RaterLag] = {}
    try:
        consumer.assign([partition])
        consumer.seek(partition, await offset_at_time(consumer, partition, since_ms))
        end = (await consumer.end_offsets([partition]))[partition]
        while await consumer.position(partition) < end:
            batches = await consumer.getmany(partition, timeout_ms=1000)
            if not batches:
                break
            for message in batches.get(partition, []):
                if not (message.key or b"").startswith(prefix):
                    continue
                try:
                    record = records.decode(records.RaterLag, message.value, message.headers)
                except records.RecordError as exc:
                    log.warning("skipping an undecodable rater lag record: %s", exc)
                    continue
                if record.session_id == session_id:
                    newest[record.rater_id] = record  # compacted: the newest per key counts
    finally:
        await consumer.stop()
    return newest


class RaterLagPublisher:
    """Each rater's reaction lag, estimated again every ``rater_lag_interval_s``: the
    correction kept in force (rater_lags.AppliedLags) applies to the rater's tags and
    samples from then on (what was placed before stays where it is), and goes to
    ``livetag.raters`` when it changed materially, or as a heartbeat (worth_publishing)."""

    def __init__(
        self,
        settings: Settings,
        session_id: str,
        step: AlignerStep,
        evidence: LagEvidence,
        emit: Emit,
        raters_topic: Any,
    ) -> None:
        self._settings = settings
        self._session_id = session_id
        self._step = step
        self._evidence = evidence
        self._emit = emit
        self._raters_topic = raters_topic
        # The last record that went out per rater (or was read back).
        self._published: dict[str, records.RaterLag] = {}
        self._applied = AppliedLags()
        self._cache: ConsensusCache = {}
        self.failures = 0  # rounds that could not estimate
        self.read_failures = 0  # read-backs of livetag.raters that failed or timed out

    def seed(self, found: dict[str, records.RaterLag]) -> int:
        """Take up the corrections published before (a restart): re-read tags and samples
        land under them. A rater this instance corrects already keeps its own."""
        aligner = self._step.aligner
        taken = 0
        for rater_id, record in found.items():
            if rater_id in self._applied:
                continue
            self._published[rater_id] = record
            self._applied.seed(rater_id, record.applied)
            aligner.set_lag(rater_id, record.applied)
            taken += 1
        return taken

    async def estimate(self) -> None:
        settings = self._settings
        async with self._step.exclusive():
            evidence = self._evidence.snapshot()
        started = now_us()
        try:
            # Cross-correlations over minutes of traces: about 0.07 s of one core per
            # performer's rated dimension that changed.
            found = await asyncio.to_thread(
                estimate_lags,
                evidence,
                self._session_id,
                started,
                auto=settings.rater_lag_auto,
                min_confidence=settings.rater_lag_min_confidence,
                cache=self._cache,
            )
        except Exception:  # the corrections in force stay; the next round tries again
            self.failures += 1
            log.exception("aligner: could not estimate the raters' reaction lags")
            return
        async with self._step.exclusive():
            for found_for in found:
                rater_id = found_for.rater_id
                applied = self._applied.update(rater_id, found_for.applied)
                self._step.aligner.set_lag(rater_id, applied)
                record = found_for.model_copy(update={"applied": applied})
                if not worth_publishing(self._published.get(rater_id), record):
                    continue
                await self._emit(self._raters_topic, record)
                self._published[rater_id] = record


class RestoreOnAssignment:
    """When partitions are assigned: what this instance must carry on from, read back (the
    windows emitted for them, the counters published), what it must no longer align,
    dropped."""

    def __init__(
        self,
        settings: Settings,
        session: records.SessionRecord,
        step: AlignerStep,
        counters: CounterPublisher,
        lags: RaterLagPublisher | None = None,
        coverage: CoveragePublisher | None = None,
    ) -> None:
        self._settings = settings
        self._session_id = session.session_id
        self._created_ts_us = session.created_ts_us
        self._session_topics = {
            session.topics.prosody,
            session.topics.face,
            topics.TAGS,
            topics.RATINGS,
            topics.CUES,
        }
        if session.topics.model is not None:
            self._session_topics.add(session.topics.model)
        self._step = step
        self._counters = counters
        self._lags = lags
        self._coverage = coverage

    async def restore(self, sender: Any, assigned: set[Any], **_: Any) -> None:
        # faust may resume fetching before this returns: the agents wait on `restored`, so
        # the aligner knows what was emitted before it sees a re-read record.
        partitions = {tp.partition for tp in assigned if tp.topic in self._session_topics}
        if not partitions:
            return
        self._step.restored.clear()
        self._forget_moved(partitions)
        if self._coverage is not None:
            self._coverage.assign(partitions)
        started = time.monotonic()
        lags_read = asyncio.create_task(self._read_lags())
        try:
            restored = await self._restore_windows(partitions)
            lags = await lags_read
            if self._lags is not None:
                self._lags.seed(lags)
        finally:
            lags_read.cancel()  # done by now, unless this handler itself was cancelled
            self._step.restored.set()
        if restored is not None:
            count, seeded = restored
            log.info(
                "aligner: %d label windows, %d performers' counters and %d raters' lags of "
                "partitions %s read back in %.2f s",
                count,
                seeded,
                len(lags),
                sorted(partitions),
                time.monotonic() - started,
            )

    async def _restore_windows(self, partitions: set[int]) -> tuple[int, int] | None:
        """The windows emitted and the counters published for the partitions, taken up:
        how many of each (None: they could not be read)."""
        try:
            # The group's heartbeats wait for this handler: bounded well inside its session.
            async with asyncio.timeout(RESTORE_TIMEOUT_S):
                windows = await read_label_windows(
                    self._settings, self._session_id, partitions, since_ms=self._since_ms()
                )
                seeded = await self._counters.seed(partitions)
            count = self._step.aligner.restore(windows, now_us())
        except Exception:  # without it the aligner still runs, as before a restart
            # ...but its counters would start again from 0: not published until a
            # later assignment reads them back.
            self._counters.seeded.clear()
            log.exception("could not read back the emitted label windows")
            return None
        self._counters.seeded.set()
        return count, seeded

    async def _read_lags(self) -> dict[str, records.RaterLag]:
        """The corrections published for the session's raters (none without estimates).
        Never raises: the raters then start from their calibration again, as at start."""
        if self._lags is None:
            return {}
        # With a margin: the records are stamped by the clock of the worker that produced
        # them, the session's creation by the capture server's.
        since_ms = self._created_ts_us // 1000 - round(RESTORE_MARGIN_S * 1000)
        try:
            async with asyncio.timeout(LAGS_RESTORE_TIMEOUT_S):
                return await read_rater_lags(self._settings, self._session_id, since_ms)
        except Exception:  # its own timeout too (TimeoutError, not a cancellation)
            self._lags.read_failures += 1
            log.exception("could not read back the raters' lag corrections")
            return {}

    def _forget_moved(self, partitions: set[int]) -> None:
        # Performers whose partitions went to another worker: it carries on from what this
        # one emitted and published; kept here, they would be aligned (and counted) twice.
        aligner = self._step.aligner
        for performer_id in aligner.held_performers():
            partition = health.performer_partition(self._settings, self._session_id, performer_id)
            if partition not in partitions:
                aligner.forget_performer(performer_id)
                self._step.held.forget(performer_id)

    def _since_ms(self) -> int:
        """Where reading back starts: the windows emitted since still take corrections."""
        settings = self._settings
        horizon_s = settings.label_grace_s + settings.tag_max_hold_ms / 1000 + RESTORE_MARGIN_S
        return round((time.time() - horizon_s) * 1000)


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
    session_id = session.session_id
    estimating = settings.rater_lag_interval_s > 0
    evidence = LagEvidence(round(settings.rater_lag_history_s * 1e6)) if estimating else None
    aligner = SessionAligner(session_id, config_of(settings), evidence)
    aligner.set_session(session, now_us())  # the scene's plan, before any window
    step = AlignerStep(aligner, emit, raw_topic(app, topics.LABELS))
    tags = TagAgent(session_id, step, dead_letter)
    ratings = RatingAgent(session_id, step, dead_letter)
    cues = CueAgent(session_id, step, dead_letter)
    prosody = FeatureAgent(
        "prosody",
        session.topics.prosody,
        records.ProsodyHops,
        frames_of=records.ProsodyHops.frames,
        add=aligner.add_prosody,
        step=step,
        dead_letter=dead_letter,
        on_failure=on_failure,
    )
    face = FeatureAgent(
        "face",
        session.topics.face,
        records.FaceFrame,
        frames_of=lambda frame: (frame,),
        add=aligner.add_face,
        step=step,
        dead_letter=dead_letter,
        on_failure=on_failure,
    )

    async def plan(current: records.SessionRecord) -> None:
        await step.run(functools.partial(aligner.set_session, current))

    presence = PresenceFollower(settings, session_id, aligner, on_session=plan)
    counters = CounterPublisher(settings, session_id, step, emit, raw_topic(app, topics.HEALTH))
    coverage_topic = raw_topic(app, topics.COVERAGE)
    coverage = CoveragePublisher(settings, session, step, emit, coverage_topic, counters)
    lags = None
    if evidence is not None:
        raters_topic = raw_topic(app, topics.RATERS)
        lags = RaterLagPublisher(settings, session_id, step, evidence, emit, raters_topic)
    restore = RestoreOnAssignment(settings, session, step, counters, lags, coverage)

    # Bound methods: faust would name them all by their method's name, so each gets a name.
    app.agent(raw_topic(app, topics.TAGS), name=f"align-tags-{session_id}")(tags.run)
    app.agent(raw_topic(app, topics.RATINGS), name=f"align-ratings-{session_id}")(ratings.run)
    app.agent(raw_topic(app, topics.CUES), name=f"align-cues-{session_id}")(cues.run)
    if session.topics.model is not None:  # sessions from before the model lane have none
        model = ModelAgent(session.topics.model, step, dead_letter, on_failure)
        app.agent(raw_topic(app, model.topic_name), name=f"align-model-{session_id}")(model.run)
    app.agent(raw_topic(app, prosody.topic_name), name=f"align-prosody-{session_id}")(prosody.run)
    app.agent(raw_topic(app, face.topic_name), name=f"align-face-{session_id}")(face.run)
    app.on_partitions_assigned.connect(restore.restore)
    app.on_before_shutdown.connect(coverage.stop)
    app.task(presence.run)
    app.timer(interval=TICK_S, name=f"align-tick-{session_id}")(step.tick)
    app.timer(interval=COUNTERS_INTERVAL_S, name=f"align-counters-{session_id}")(counters.publish)
    app.timer(interval=settings.coverage_interval_s, name=f"align-coverage-{session_id}")(
        coverage.publish
    )
    if lags is not None:
        interval = settings.rater_lag_interval_s
        app.timer(interval=interval, name=f"align-lags-{session_id}")(lags.estimate)
    return aligner
