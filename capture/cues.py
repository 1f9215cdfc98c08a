"""The director's cues on the performers' pages: ``livetag.cues`` followed by the capture
server, each new cue pushed to its performer's call page(s), and the page's "shown"
published back as the same cue with ``shown_ts_us``.

- :class:`CueBoard` (no I/O) holds the newest cue of every performer (a page that joins or
  rejoins gets it; a ``clear`` stands too, so a page that missed it drops its stale cue)
  and every recent cue by id, to turn a page's ``cue_shown`` into the shown record: the
  page's own clock converted with the connection's clock estimate, once per ``cue_id``.
- :class:`CueFollower` reads the topic (from the creation of the oldest session still
  open, read whole before pages are admitted, then followed with the short fetch wait),
  dead-letters what does not decode, hands each new cue to ``deliver`` (which never
  waits) and publishes the shown records from one writer task (a bounded queue: a page
  never waits on the broker; a failed send is retried a few times, then the cue may be
  shown again).
- :class:`CueQueue` is one performer page's cues not sent yet, sent in order by the
  page's own task: a page slow to take them holds up no other page; every cue is sent
  (so every cue has its shown record), unless a stuck page lets PAGE_QUEUE of them pile
  up (the oldest is then dropped, counted ``superseded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeAlias

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from capture.loop_lag import percentile
from streams import records
from streams.errors import BadInputError
from streams.kafka import clients, topics
from streams.kafka.sessions import is_over
from streams.labels.aligner import offset_at_time
from streams.runtime import background
from streams.session_clock import now_us
from streams.settings import Settings
from taggers.clock import ClockEstimate

log = logging.getLogger(__name__)

SERVICE = "livetag-capture"
#: Cues kept by id for their "shown" (a page acknowledges a cue within moments of
#: getting it; an older one is forgotten first).
MAX_CUES_KEPT = 50_000
#: How far a page's "shown" may lie outside [sent, received] (beyond its clock's own
#: uncertainty) and still be taken, pulled inside: a clock sync error. Beyond: refused.
SHOWN_SLACK_US = 50_000
#: Cues sent before a session still open was created are no cue of it; and no open session
#: makes the follower read back further than this.
MAX_LOOKBACK_US = 12 * 3600 * 1_000_000
READ_WHOLE_TIMEOUT_S = 30.0
RETRY_S = 2.0
WRITER_QUEUE = 1_000
#: A record the broker did not take is sent again this many times in all, waiting
#: PUBLISH_BACKOFF_S, then twice that...: a broker blip costs no shown record.
PUBLISH_ATTEMPTS = 3
PUBLISH_BACKOFF_S = 0.5
DELAYS_KEPT = 1_000

Message: TypeAlias = ConsumerRecord[bytes, bytes]


class CueShownError(BadInputError, ValueError):
    """A page's ``cue_shown`` that makes no shown record; ``code`` is what it is told."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


def page_cue(cue: records.Cue) -> dict[str, Any]:
    """What a performer's page gets of a cue (``{"type": "cue", "cue": ...}``)."""
    return {
        "type": "cue",
        "cue": {
            "cue_id": cue.cue_id,
            "kind": cue.kind,
            "label": cue.label,
            "intensity": cue.intensity,
            "text": cue.text,
            "ts_us": cue.ts_us,
        },
    }


class CueBoard:
    """The cues of every session as read from the topic: no I/O, no clock."""

    def __init__(self, max_cues: int = MAX_CUES_KEPT) -> None:
        self._newest: dict[tuple[str, str], records.Cue] = {}
        # cue_id -> (the sent record, whether a shown record exists or is on its way),
        # oldest first.
        self._cues: OrderedDict[str, tuple[records.Cue, bool]] = OrderedDict()
        self._max_cues = max_cues
        #: Sent records read again (the topic is at-least-once), shown records of cues
        #: forgotten or never seen: taken, changing nothing.
        self.repeats = 0

    def take(self, cue: records.Cue) -> records.Cue | None:
        """Take one record of ``livetag.cues``; the cue to show now, if it is news."""
        known = self._cues.get(cue.cue_id)
        if cue.shown_ts_us is not None:
            if known is None:
                self.repeats += 1
            else:
                self._cues[cue.cue_id] = (known[0], True)
            return None
        if known is not None:
            self.repeats += 1
            return None
        self._cues[cue.cue_id] = (cue, False)
        while len(self._cues) > self._max_cues:
            self._cues.popitem(last=False)
        key = (cue.session_id, cue.performer_id)
        current = self._newest.get(key)
        if current is not None and current.ts_us > cue.ts_us:
            return None  # an older cue read late: the newer one stands
        self._newest[key] = cue
        return cue

    def current(self, session_id: str, performer_id: str) -> records.Cue | None:
        """The performer's newest cue (a ``clear`` when it was withdrawn), if any."""
        return self._newest.get((session_id, performer_id))

    def forget_sessions(self, session_ids: Iterable[str]) -> None:
        """Drop the newest cues of sessions that are over (nobody joins them again)."""
        gone = set(session_ids)
        for key in [key for key in self._newest if key[0] in gone]:
            del self._newest[key]

    def shown(
        self,
        *,
        session_id: str,
        performer_id: str,
        cue_id: str,
        client_shown_us: int,
        estimate: ClockEstimate,
        received_us: int,
    ) -> records.Cue | None:
        """The shown record of a page's ``cue_shown`` (received at ``received_us``), or
        None when the cue already has one. Raises :class:`CueShownError`."""
        known = self._cues.get(cue_id)
        if known is None or (known[0].session_id, known[0].performer_id) != (
            session_id,
            performer_id,
        ):
            raise CueShownError("unknown_cue", f"no cue {cue_id!r} was sent to this page")
        sent, already = known
        if already:
            return None
        shown_us = estimate.to_session_us(client_shown_us)
        slack_us = estimate.uncertainty_at(received_us) + SHOWN_SLACK_US
        if shown_us > received_us + slack_us:
            late = (shown_us - received_us) / 1000
            raise CueShownError("bad_time", f"shown {late:.0f} ms after the server heard of it")
        if shown_us < sent.ts_us - slack_us:
            early = (sent.ts_us - shown_us) / 1000
            raise CueShownError("bad_time", f"shown {early:.0f} ms before it was sent")
        # Within the clock's error: the cue was shown after it was sent and before the page
        # said so, whatever the conversion says.
        shown_us = min(max(shown_us, sent.ts_us), received_us)
        self._cues[cue_id] = (sent, True)
        return records.Cue.model_validate(
            {
                **sent.model_dump(),
                "shown_ts_us": shown_us,
                "shown": records.CueShown(
                    client_shown_ts_us=client_shown_us,
                    clock_offset_us=estimate.offset_at(shown_us),
                    rtt_us=estimate.rtt_us,
                ),
            }
        )

    def unmark_shown(self, cue_id: str) -> None:
        """The shown record of ``cue_id`` did not reach the broker: the page's next
        ``cue_shown`` (at its next paint of it, after a rejoin) makes it again."""
        known = self._cues.get(cue_id)
        if known is not None:
            self._cues[cue_id] = (known[0], False)

    def __len__(self) -> int:
        return len(self._cues)


#: Hands a new cue to the pages that show it; never waits (each page has its CueQueue).
Deliver = Callable[[records.Cue], None]
#: Sends one message to a page: whether it went out (False: the connection is closed).
PageSend = Callable[[dict[str, Any]], Awaitable[bool]]


#: Cues a page may have waiting to be sent; past it the page is stuck, and the oldest
#: waiting cue is dropped (counted ``superseded``: a newer one stands).
PAGE_QUEUE = 32


class CueQueue:
    """One performer page's cues not sent yet, in the order they came, and the task that
    sends them. Every cue is sent, even one a newer cue follows at once: the page paints
    them in order (cues it gets in one frame are shown at one instant, the newest on
    screen) and says so of each, so every cue the director sent has its shown record.
    A page slow to take them holds up no other page."""

    def __init__(self, send: PageSend, follower: CueFollower) -> None:
        self._send = send
        self._follower = follower
        self._waiting: deque[records.Cue] = deque()
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._waiting)

    def offer(self, cue: records.Cue) -> None:
        """Queue ``cue`` for the page (never waits; a cue already waiting is not queued
        twice)."""
        if any(waiting.cue_id == cue.cue_id for waiting in self._waiting):
            return
        if len(self._waiting) >= PAGE_QUEUE:
            self._waiting.popleft()
            self._follower.counts["superseded"] += 1
        self._waiting.append(cue)
        self._ready.set()

    async def run(self) -> None:
        """Send the queued cues in order, until cancelled or the page is gone."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._waiting:
                cue = self._waiting.popleft()
                if not await self._send(page_cue(cue)):
                    # The page is gone: it gets the cue in force when it rejoins.
                    self._follower.counts["push_to_closed_page"] += 1
                    return
                self._follower.pushed(cue)


class CueFollower:
    """``livetag.cues`` in the capture server: the board, kept current, and its writer."""

    def __init__(
        self,
        settings: Settings,
        *,
        producer: AIOKafkaProducer,
        deliver: Deliver,
        open_sessions: Callable[[], Iterable[records.SessionRecord]],
    ) -> None:
        self._settings = settings
        self._producer = producer
        self._deliver = deliver
        self._open_sessions = open_sessions
        self.board = CueBoard()
        self._consumer: AIOKafkaConsumer | None = None
        self._follower: asyncio.Task[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._outbox: asyncio.Queue[records.Cue | records.DeadLetter] = asyncio.Queue(
            maxsize=WRITER_QUEUE
        )
        #: What happened to cues here, never reset: read, pushed to pages, shown records
        #: published, and everything lost or refused with its reason.
        self.counts: Counter[str] = Counter()
        # How long after it was sent each recent new cue was read here, and on its way
        # to its pages (µs): where the time of sent -> shown goes.
        self._read_delays: deque[int] = deque(maxlen=DELAYS_KEPT)
        self._pushed_delays: deque[int] = deque(maxlen=DELAYS_KEPT)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Read the cues of the sessions still open, then follow the topic."""
        if self._follower is not None:
            return
        consumer = clients.make_consumer(self._settings)
        await consumer.start()
        try:
            partitions = await _partitions(consumer, topics.CUES)
            consumer.assign(partitions)
            since_ms = self.start_us(now_us()) // 1000
            for partition in partitions:
                consumer.seek(partition, await offset_at_time(consumer, partition, since_ms))
            ends = await consumer.end_offsets(partitions)
            try:
                async with asyncio.timeout(READ_WHOLE_TIMEOUT_S):
                    while await _behind(consumer, ends):
                        await self._take(await consumer.getmany(timeout_ms=500), deliver=False)
            except TimeoutError:
                # Cues are no admission rule: a page may miss a cue sent before, not its call.
                self.counts["start_read_incomplete"] += 1
                log.warning(
                    "%s not read whole within %.0f s: following it from here",
                    topics.CUES,
                    READ_WHOLE_TIMEOUT_S,
                )
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        self._writer = background.start(self._write, "capture-cue-writer")
        self._follower = asyncio.create_task(self._follow(consumer), name="capture-cues")

    async def stop(self) -> None:
        follower, self._follower = self._follower, None
        await background.cancel(follower)
        writer, self._writer = self._writer, None
        if writer is not None:
            # A moment for the shown records on their way; the producer stops next.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await self._outbox.join()
            await background.cancel(writer)
            if unwritten := self._outbox.qsize():
                self.counts["shown_lost_stopped"] += unwritten
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            with contextlib.suppress(Exception):
                await consumer.stop()

    def metrics(self) -> dict[str, Any]:
        """The counts, and how long recent new cues took from sent to read here and to
        pushed to their pages (ms percentiles)."""
        delays = {
            f"{stage}_ms_{name}": percentile(sorted(d / 1000 for d in kept), fraction)
            for stage, kept in (("read", self._read_delays), ("pushed", self._pushed_delays))
            for name, fraction in (("p50", 0.5), ("p95", 0.95))
        }
        return {**self.counts, **delays}

    def start_us(self, now: int) -> int:
        """Where reading starts: the creation of the oldest session still open (its cues
        may still stand), at most MAX_LOOKBACK_US ago; now if none is open."""
        created = [s.created_ts_us for s in self._open_sessions() if not is_over(s)]
        return max(min(created, default=now), now - MAX_LOOKBACK_US)

    # ------------------------------------------------------------ reading

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=500)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away: what is known stays on the pages
                self.counts["read_errors"] += 1
                log.warning("%s not followed (%r); retrying", topics.CUES, exc)
                await asyncio.sleep(RETRY_S)
                continue
            await self._take(batches, deliver=True)

    async def _take(self, batches: dict[TopicPartition, list[Message]], *, deliver: bool) -> None:
        for partition, messages in batches.items():
            for message in messages:
                try:
                    cue = records.decode(records.Cue, message.value, message.headers)
                except records.RecordError as exc:
                    self._dead_letter(partition, message, str(exc))
                    continue
                self.counts["read"] += 1
                news = self.board.take(cue)
                if news is None or not deliver:
                    continue
                self._read_delays.append(now_us() - news.ts_us)
                try:
                    self._deliver(news)
                except Exception:  # one page's trouble must not stop the cues of all
                    self.counts["deliver_failed"] += 1
                    log.exception("cue %s not delivered", news.cue_id)

    def pushed(self, cue: records.Cue) -> None:
        """``cue`` went out to one of its pages."""
        self.counts["pushed"] += 1
        self._pushed_delays.append(now_us() - cue.ts_us)

    def _dead_letter(self, partition: TopicPartition, message: Message, reason: str) -> None:
        self.counts["undecodable"] += 1
        log.warning("skipping an undecodable cue at %s:%s: %s", partition, message.offset, reason)
        letter = records.DeadLetter.of(
            ts_us=now_us(),
            source_topic=partition.topic,
            service=SERVICE,
            reason=reason,
            payload=message.value or b"",
            key=message.key,
            partition=partition.partition,
            offset=message.offset,
        )
        self._queue(letter, lost="dead_letters_lost")

    # ------------------------------------------------------------ shown

    def shown(
        self,
        *,
        session_id: str,
        performer_id: str,
        cue_id: str,
        client_shown_us: int,
        estimate: ClockEstimate,
        received_us: int,
    ) -> records.Cue | None:
        """Take a page's "shown": the shown record, queued for the broker (None when the
        cue had one already). Raises :class:`CueShownError`."""
        try:
            record = self.board.shown(
                session_id=session_id,
                performer_id=performer_id,
                cue_id=cue_id,
                client_shown_us=client_shown_us,
                estimate=estimate,
                received_us=received_us,
            )
        except CueShownError as exc:
            self.counts[f"shown_refused_{exc.code}"] += 1
            raise
        if record is None:
            self.counts["shown_repeated"] += 1
            return None
        if not self._queue(record, lost="shown_lost_queue_full"):
            self.board.unmark_shown(record.cue_id)
        return record

    def _queue(self, record: records.Cue | records.DeadLetter, *, lost: str) -> bool:
        try:
            self._outbox.put_nowait(record)
        except asyncio.QueueFull:
            self.counts[lost] += 1
            log.warning("%s not published: the cue writer is behind", record.record_type)
            return False
        return True

    async def _write(self) -> None:
        while True:
            record = await self._outbox.get()
            try:
                await self._send(record)
            finally:
                self._outbox.task_done()

    async def _send(self, record: records.Cue | records.DeadLetter) -> None:
        topic = topics.DEADLETTER if isinstance(record, records.DeadLetter) else topics.CUES
        kind = "dead_letters" if topic == topics.DEADLETTER else "shown"
        wire = records.encode(record)
        for attempt in range(PUBLISH_ATTEMPTS):
            if attempt:
                self.counts[f"{kind}_publish_retries"] += 1
                await asyncio.sleep(PUBLISH_BACKOFF_S * 2 ** (attempt - 1))
            try:
                await self._producer.send_and_wait(
                    topic, wire.value, key=wire.key, headers=wire.headers
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not publish a %s record: %r", record.record_type, exc)
                continue
            if isinstance(record, records.Cue):
                self.counts["shown_published"] += 1
            return
        self.counts[f"{kind}_publish_failed"] += 1
        if isinstance(record, records.Cue):
            # Not on the broker: a later cue_shown of it (the page shows the cue in
            # force again when it rejoins) makes it again, not "shown_repeated".
            self.board.unmark_shown(record.cue_id)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    numbers = consumer.partitions_for_topic(topic)
    if not numbers:
        await consumer.topics()  # loads the metadata partitions_for_topic reads
        numbers = consumer.partitions_for_topic(topic)
    if not numbers:
        raise RuntimeError(f"{topic} has no partitions: was it created?")
    return [TopicPartition(topic, number) for number in sorted(numbers)]


async def _behind(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """Whether some partition is not read up to its end offset yet."""
    for partition, end in ends.items():
        if await consumer.position(partition) < end:
            return True
    return False
