"""The tag service: the ``/ws/tag`` websocket that takes tags and puts them on the session clock.

Per connection: the hello admits the rater (join token), clock probes run for the whole
connection (taggers.clock), and each tag is checked (taggers.protocol), converted, made
safe on ``livetag.tags`` (taggers.outbox) and only then acknowledged. A continuous rater's
``ratings`` batches go the same way to ``livetag.ratings``, with a rate budget of their
own. Tags and batches are handled in their own tasks so a slow produce never delays the
reading of the next clock reply (whose receive time is part of the clock estimate).
Re-sent tags and batches are answered from per-session ledgers, so a client that
reconnects and re-sends what was unacknowledged stores nothing twice; what the service keeps
of a session goes once the session takes no more tags and its clients are gone.

The service is mounted in the capture server's web app (same origin and tokens as the call
page); observers' frame-on-screen lookups go through the ``frame_lookup`` it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

from aiohttp import WSMsgType, web

from streams import records
from streams.kafka import clients
from streams.kafka.sessions import OVER_STATES
from streams.runtime import background
from streams.runtime.connection_gate import (
    ConnectionGate,
    Refusal,
    Ticket,
    failure_code,
    keep_swept,
    refusal_response,
    send_json,
    watch_websocket,
    websocket_response,
)
from streams.session_clock import now_us
from streams.settings import Settings
from taggers import credentials, tokens
from taggers.clock import ClockReply, ClockSync
from taggers.outbox import TagOutbox
from taggers.protocol import (
    RATER_BATCHES_REMEMBERED,
    BatchLedger,
    FrameCapture,
    Hello,
    ProtocolError,
    RateLimiter,
    RatingSampleIn,
    RatingsMessage,
    ReactionLag,
    StoredBatch,
    TagLedger,
    TagLimits,
    TagMessage,
    UndoMessage,
    ack,
    check_ratings,
    check_tag,
    parse_client_message,
    rating_batch,
    ratings_ack,
    resolve_reaction_lag,
    tag_event,
    welcome,
)

log = logging.getLogger(__name__)

#: (session_id, rater_id, performer_id, rtp_timestamp) -> capture ts_us of the frame that
#: rater's page showed with that RTP timestamp, or None if unknown.
FrameLookup = Callable[[str, str, str, int], int | None]
SessionLookup = Callable[[str], Awaitable[records.SessionRecord | None]]
#: session_id -> when the session ended (session clock, µs), None while it is not over.
EndLookup = Callable[[str], int | None]

_CLOCKS_KEPT = 10_000  # client clocks remembered across reconnects
_MESSAGES_BEFORE_HELLO = 20  # then the connection is closed
#: A tagging client of a session that takes no more tags is closed once it has sent no tag
#: for this long (a reconnected widget re-sending its unacknowledged tags gets its answers).
_ENDED_QUIET_US = 3_000_000
_WS_HARD_LIMIT = 1024 * 1024  # above our own limit, so an oversize message gets an answer
_RENEWAL_TASK = "tag-credential-renewal"


def new_clock_sync() -> ClockSync:
    # A tag is only as well placed as the tightest round trip so far, and raters sit on
    # jittery links: probe often, keep the best sample of every 2 s for five minutes
    # (short round trips pin the offset, the long baseline pins the drift).
    return ClockSync(
        fast_samples=40, fast_interval_s=0.1, interval_s=0.25, bucket_s=2.0, window_samples=150
    )


def clock_summary(claims: tokens.JoinToken, kind: str, clock: ClockSync) -> dict[str, Any]:
    """A client's clock estimate in milliseconds, as health views show it."""
    estimate = clock.estimate
    now = now_us()
    return {
        "participant_id": claims.participant_id,
        "role": claims.role,
        "kind": kind,
        "offset_ms": None if estimate is None else round(estimate.offset_at(now) / 1000, 3),
        "rtt_ms": None if estimate is None else round(estimate.rtt_us / 1000, 3),
        "uncertainty_ms": None
        if estimate is None
        else round(estimate.uncertainty_at(now) / 1000, 3),
    }


def limits_of(settings: Settings) -> TagLimits:
    return TagLimits(
        max_message_bytes=settings.tag_max_message_bytes,
        rate_per_s=settings.tag_rate_per_s,
        burst=settings.tag_burst,
        default_span_us=settings.tag_default_span_ms * 1000,
        max_reaction_lag_us=settings.max_reaction_lag_ms * 1000,
        rating_rate_hz=settings.rating_rate_hz,
    )


class _Stored(Protocol):
    """What a ledger keeps of a stored tag or batch: at least whose it is."""

    @property
    def rater_id(self) -> str: ...


StoredT = TypeVar("StoredT", bound=_Stored)


class _Ledger(Protocol[StoredT]):
    def get(self, record_id: str, /) -> StoredT | None: ...

    def remember(self, stored: StoredT, /) -> None: ...


class StoredOnce(Generic[StoredT]):
    """Records of one kind (tags, rating batches) made safe once by their client-made id,
    per session: a ledger answers a re-send of what is stored, and a re-send that comes
    while its first copy is still being stored waits for that one."""

    def __init__(self, new_ledger: Callable[[], _Ledger[StoredT]]) -> None:
        self._new_ledger = new_ledger
        self._ledgers: dict[str, _Ledger[StoredT]] = {}
        self._in_flight: dict[tuple[str, str], asyncio.Future[StoredT]] = {}

    def known(self, session_id: str, record_id: str) -> StoredT | None:
        ledger = self._ledgers.get(session_id)
        return None if ledger is None else ledger.get(record_id)

    async def store(
        self,
        session_id: str,
        record_id: str,
        deliver: Callable[[], Awaitable[tuple[StoredT, bool]]],
    ) -> tuple[StoredT, bool, bool]:
        """(what is kept of the record, duplicate, held): ``deliver`` makes the record safe
        and says what to keep and whether it was held; it runs once per id while the id is
        remembered, however often the record is re-sent."""
        known = self.known(session_id, record_id)
        if known is not None:
            return known, True, False
        key = (session_id, record_id)
        pending = self._in_flight.get(key)
        if pending is not None:
            return await asyncio.shield(pending), True, False
        future: asyncio.Future[StoredT] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            stored, held = await deliver()
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a re-send that was not waiting is no error
            raise
        finally:
            del self._in_flight[key]
        ledger = self._ledgers.get(session_id)
        if ledger is None:
            ledger = self._ledgers[session_id] = self._new_ledger()
        ledger.remember(stored)
        future.set_result(stored)
        return stored, False, held

    def sessions(self) -> set[str]:
        """The sessions with a ledger."""
        return set(self._ledgers)

    def forget(self, session_id: str) -> None:
        self._ledgers.pop(session_id, None)


class TagService:
    """Start/stop around a web app that routes ``/ws/tag`` to :meth:`websocket`."""

    def __init__(
        self,
        settings: Settings,
        *,
        secret: bytes,
        sessions: SessionLookup,
        frame_lookup: FrameLookup | None = None,
        clock: Callable[[], int] = now_us,
        gate: ConnectionGate | None = None,
        ended_at: EndLookup | None = None,
        access: credentials.Access | None = None,
    ) -> None:
        self.settings = settings
        # The capture server's credentials and revocation list, or its own (a service
        # run alone follows livetag.revocations itself).
        self.access = access if access is not None else credentials.Access(settings, secret)
        self._owns_access = access is None
        self._revocation_watcher: asyncio.Task[None] | None = None
        # When a session ended (the session directory's ended_at_us); without it, the
        # session record's own stamp stands in for the end.
        self._ended_at = ended_at
        # The capture server's gate (shared with its call pages), or one of its own.
        self.gate = gate if gate is not None else ConnectionGate.from_settings(settings)
        self._sweeper: asyncio.Task[None] | None = None
        self._owns_gate = gate is None
        self.limits = limits_of(settings)
        self.secret = secret
        self.sessions = sessions
        self._frame_lookup = frame_lookup
        self.clock = clock
        # Its own producer without linger: a tag is acknowledged only once it is stored,
        # and a person waits for that acknowledgement.
        self._producer = clients.make_producer(settings, linger_ms=0, request_timeout_ms=5000)
        self.outbox = TagOutbox(
            self._producer,
            settings.state_dir,
            produce_timeout_s=settings.tag_produce_timeout_ms / 1000,
        )
        self.stored_tags: StoredOnce[records.TagEvent] = StoredOnce(TagLedger)
        # Each rater's newest batches (what a page may re-send), up to as many raters as
        # a session has tagging clients at once; a session's ledgers go once it is over.
        self.stored_batches: StoredOnce[StoredBatch] = StoredOnce(
            lambda: BatchLedger(
                per_rater=RATER_BATCHES_REMEMBERED,
                capacity=RATER_BATCHES_REMEMBERED * settings.max_clients_per_session,
            )
        )
        self._reaction_lags: dict[tuple[str, str], int] = {}
        self._clocks: OrderedDict[tuple[str, str, str], ClockSync] = OrderedDict()
        self._connections: set[TagConnection] = set()
        self.stats = {
            "tags": 0,
            "duplicates": 0,
            "held": 0,
            "rating_batches": 0,
            "rating_samples": 0,
            "rating_duplicates": 0,
            "rating_held": 0,
        }
        # Every refusal by its error code (served on the capture server's /metrics/refusals).
        self.refusals: Counter[str] = Counter()

    async def start(self) -> None:
        if self._owns_access:
            await self.access.start()
        if self._revocation_watcher is None:
            self._revocation_watcher = background.start(
                lambda: self.access.close_revoked(lambda: list(self._connections)),
                "tag-revocations",
            )
        await self._producer.start()
        await self.outbox.start()
        if self._owns_gate and self._sweeper is None:
            self._sweeper = background.start(lambda: keep_swept(self.gate), "tag-gate")

    async def stop(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        watcher, self._revocation_watcher = self._revocation_watcher, None
        await background.cancel(sweeper, watcher)
        if self._owns_access:
            await self.access.stop()
        for connection in list(self._connections):
            await connection.close()
        await self.outbox.stop()
        await self._producer.stop()

    def add_routes(self, app: web.Application) -> None:
        app.add_routes([web.get("/ws/tag", self.websocket)])

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """``/ws/tag``: welcomed at a valid hello within ``ws_hello_timeout_s``, or closed.

        A client may also name its token on the upgrade URL (``?token=``): a bad one is then
        refused before the upgrade, with an HTTP status any client can read."""
        loop = asyncio.get_running_loop()
        # Taken before the first await: concurrent handshakes cannot all pass the caps.
        entered = self.gate.enter(request.remote, loop.time(), hello_deadline=True)
        if isinstance(entered, Refusal):
            return self._refuse_upgrade(entered)
        ticket = entered
        try:
            token = request.query.get("token")
            if token is not None:
                try:
                    _, session = await self.admission(token)
                except ProtocolError as exc:
                    return self._refuse_upgrade(Refusal(exc.code, exc.message))
                # Its place in the session is taken at the hello; a full session is said now.
                full = self.gate.session_refusal("tag", session.session_id)
                if full is not None:
                    return self._refuse_upgrade(full)
            ws = websocket_response(self.settings, max_msg_size=_WS_HARD_LIMIT)
            await ws.prepare(request)
            connection = TagConnection(self, ws, ticket)
            watch_websocket(ticket, request, ws, on_deadline=connection.hello_expired)
            self._connections.add(connection)
            try:
                await connection.run()
            finally:
                self._connections.discard(connection)
                await connection.close()
            return ws
        finally:
            ticket.release()

    def _refuse_upgrade(self, refusal: Refusal) -> web.Response:
        self.refusals[refusal.code] += 1
        return refusal_response(refusal)

    async def admission(self, token: str) -> tuple[tokens.JoinToken, records.SessionRecord]:
        """A tagging client's claims and session; :class:`ProtocolError` when refused."""
        try:
            # A session credential whose link is not revoked (a link's own token is
            # refused: pages exchange it first).
            claims = self.access.admit(token)
        except tokens.TokenError as exc:
            raise ProtocolError(exc.code, exc.reason) from None
        session = await self.sessions(claims.session_id)
        if session is None:
            raise ProtocolError("unknown_session", f"no session {claims.session_id!r}")
        roster = {performer.performer_id for performer in session.roster}
        if claims.role == "performer" and claims.participant_id not in roster:
            raise ProtocolError("not_in_roster", "you are not in this session")
        return claims, session

    # ---------------------------------------------------------------- shared state

    def connections_in(self, session_id: str) -> int:
        """Admitted tagging connections of a session."""
        return sum(
            1
            for connection in self._connections
            if connection.session is not None and connection.session.session_id == session_id
        )

    def client_clocks(self, session_id: str) -> list[dict[str, Any]]:
        """Each connected tagging client's clock estimate, for the health view."""
        clocks = []
        for connection in self._connections:
            if connection.session is None or connection.session.session_id != session_id:
                continue
            assert connection.claims is not None
            clocks.append(clock_summary(connection.claims, "tag", connection.clock))
        return clocks

    def clock_sync(self, session_id: str, rater_id: str, clock_id: str | None) -> ClockSync:
        """The clock sync of a client's clock: kept across its reconnects when named."""
        if clock_id is None:
            return new_clock_sync()
        key = (session_id, rater_id, clock_id)
        clock = self._clocks.get(key)
        if clock is None:
            clock = self._clocks[key] = new_clock_sync()
            while len(self._clocks) > _CLOCKS_KEPT:
                self._clocks.popitem(last=False)
        self._clocks.move_to_end(key)
        return clock

    def reaction_lag(self, session_id: str, rater_id: str) -> int | None:
        return self._reaction_lags.get((session_id, rater_id))

    def set_reaction_lag(self, session_id: str, rater_id: str, lag_us: int) -> None:
        self._reaction_lags[(session_id, rater_id)] = lag_us

    def frame_capture(
        self, session_id: str, rater_id: str, performer_id: str, rtp_timestamp: int
    ) -> FrameCapture:
        capture_ts_us = None
        if self._frame_lookup is not None:
            capture_ts_us = self._frame_lookup(session_id, rater_id, performer_id, rtp_timestamp)
        return FrameCapture(rtp_timestamp=rtp_timestamp, capture_ts_us=capture_ts_us)

    async def check_session_open(self, tag: records.TagEvent, received_us: int) -> None:
        """Refuse (``session_ended``) a tag that a session which is over no longer takes.

        An ended session takes tags for ``label_grace_s`` after its end (a page re-sending
        what a dropped connection left unacknowledged, an offset ending a hold), as long
        as they are about the session: an onset or tap whose instant (the press or the
        frame on screen, less the reaction lag) is after the end is no tag of the scene.
        After the grace, or once the session is archived, it takes none: the labels and
        the archive are final, and tags still arriving would only hold the recorder up."""
        session = await self.sessions(tag.session_id)
        if session is None or session.state not in OVER_STATES:
            return
        if session.state == "archived":
            raise ProtocolError(
                "session_ended", "the session is archived: it takes no more tags", tag.tag_id
            )
        ended_us = self._ended_us(session)
        grace_s = self.settings.label_grace_s
        if received_us > ended_us + round(grace_s * 1_000_000):
            raise ProtocolError(
                "session_ended",
                f"the session ended {(received_us - ended_us) / 1e6:.0f} s ago: tags are "
                f"taken for {grace_s:g} s after the end",
                tag.tag_id,
            )
        if tag.action in ("onset", "point") and (
            tag.ts_us > ended_us + tag.timing.clock_uncertainty_us
        ):
            raise ProtocolError(
                "session_ended",
                f"pressed {(tag.ts_us - ended_us) / 1000:.0f} ms after the session ended",
                tag.tag_id,
            )

    async def check_session_open_for_ratings(
        self, batch: records.RatingBatch, received_us: int
    ) -> None:
        """Refuse (``session_ended``) a rating batch that a session which is over no longer
        takes: as for tags, within ``label_grace_s`` of the end a batch is taken if it
        began before the end (its first sample); the aligner keeps what falls in windows."""
        session = await self.sessions(batch.session_id)
        if session is None or session.state not in OVER_STATES:
            return
        batch_id = batch.batch_id
        if session.state == "archived":
            raise ProtocolError(
                "session_ended",
                "the session is archived: it takes no more ratings",
                batch_id=batch_id,
            )
        ended_us = self._ended_us(session)
        grace_s = self.settings.label_grace_s
        if received_us > ended_us + round(grace_s * 1_000_000):
            raise ProtocolError(
                "session_ended",
                f"the session ended {(received_us - ended_us) / 1e6:.0f} s ago: ratings are "
                f"taken for {grace_s:g} s after the end",
                batch_id=batch_id,
            )
        if batch.ts_us > ended_us + batch.clock_uncertainty_us:
            raise ProtocolError(
                "session_ended",
                f"sampled {(batch.ts_us - ended_us) / 1000:.0f} ms after the session ended",
                batch_id=batch_id,
            )

    def _ended_us(self, session: records.SessionRecord) -> int:
        ended_us = self._ended_at(session.session_id) if self._ended_at is not None else None
        return session.ts_us if ended_us is None else ended_us

    def _takes_no_more(self, session: records.SessionRecord, now_us: int) -> bool:
        """Archived, or ended more than ``label_grace_s`` ago."""
        if session.state not in OVER_STATES:
            return False
        grace_us = round(self.settings.label_grace_s * 1_000_000)
        return session.state == "archived" or now_us > self._ended_us(session) + grace_us

    async def close_ended_sessions(self) -> None:
        """Close (4409 ``session_ended``) the tagging connections of sessions that take no
        more tags: archived, or ended more than ``label_grace_s`` ago. Until then a widget
        stays connected to re-send what it holds; after, it would only be refused. Then
        forget what is kept of such sessions (:meth:`forget_ended_sessions`)."""
        now_us = self.clock()
        closing = []
        for connection in list(self._connections):
            if connection.session is None:
                continue
            session = await self.sessions(connection.session.session_id)
            if session is None or not self._takes_no_more(session, now_us):
                continue
            if now_us - connection.last_tag_us < _ENDED_QUIET_US:
                continue  # re-sending what it holds: answered first, closed once quiet
            closing.append(
                connection.end_access(
                    "session_ended", f"the session is {session.state}: it takes no more tags"
                )
            )
        for failure in await asyncio.gather(*closing, return_exceptions=True):
            if isinstance(failure, Exception):
                log.warning("closing a tagging connection of an ended session failed: %s", failure)
        await self.forget_ended_sessions()

    async def forget_ended_sessions(self) -> None:
        """Drop the ledgers, reaction lags and client clocks of sessions that are archived
        and have no tagging connection left (one still open is re-sending what it holds,
        and is answered from the ledgers until it is closed). Not before the archive: until
        then a page that comes back with a tag or batch whose ack it lost (stored in time)
        is answered from the ledger, never told it failed. A session the service can no
        longer look up is forgotten too: nobody can be admitted to it."""
        kept = (
            self.stored_tags.sessions()
            | self.stored_batches.sessions()
            | {session_id for session_id, _ in self._reaction_lags}
            | {session_id for session_id, _, _ in self._clocks}
        )
        connected = {c.session.session_id for c in self._connections if c.session is not None}
        candidates = sorted(kept - connected)
        found = await asyncio.gather(*(self.sessions(session_id) for session_id in candidates))
        over = {
            session_id
            for session_id, session in zip(candidates, found, strict=True)
            if session is None or session.state == "archived"
        }
        if not over:
            return
        for session_id in over:
            self.stored_tags.forget(session_id)
            self.stored_batches.forget(session_id)
        for key in [key for key in self._reaction_lags if key[0] in over]:
            del self._reaction_lags[key]
        for clock_key in [key for key in self._clocks if key[0] in over]:
            del self._clocks[clock_key]
        log.info("forgot the tag ledgers of ended sessions %s", ", ".join(sorted(over)))

    async def store(self, tag: records.TagEvent) -> tuple[records.TagEvent, bool, bool]:
        """Make a tag safe once: (the stored tag, duplicate, held)."""

        async def deliver() -> tuple[records.TagEvent, bool]:
            return tag, await self.outbox.deliver(tag)

        stored, duplicate, held = await self.stored_tags.store(tag.session_id, tag.tag_id, deliver)
        if duplicate:
            if stored.rater_id != tag.rater_id:
                raise ProtocolError("forbidden", "that tag_id belongs to another rater", tag.tag_id)
            self.stats["duplicates"] += 1
        else:
            self.stats["tags"] += 1
            self.stats["held"] += int(held)
        return stored, duplicate, held

    async def store_ratings(self, batch: records.RatingBatch) -> tuple[StoredBatch, bool, bool]:
        """Make a rating batch safe once: (what is kept of it, duplicate, held)."""

        async def deliver() -> tuple[StoredBatch, bool]:
            return StoredBatch.of(batch), await self.outbox.deliver(batch)

        stored, duplicate, held = await self.stored_batches.store(
            batch.session_id, batch.batch_id, deliver
        )
        if duplicate:
            if stored.rater_id != batch.rater_id:
                raise ProtocolError(
                    "forbidden", "that batch_id belongs to another rater", batch_id=batch.batch_id
                )
            self.stats["rating_duplicates"] += 1
        else:
            self.stats["rating_batches"] += 1
            self.stats["rating_samples"] += stored.samples
            self.stats["rating_held"] += int(held)
        return stored, duplicate, held


class TagConnection:
    """One tagging client's websocket."""

    def __init__(self, service: TagService, ws: web.WebSocketResponse, ticket: Ticket) -> None:
        self.service = service
        self.ws = ws
        self.ticket = ticket
        self.clock = new_clock_sync()  # replaced at hello by the client's own clock
        limits = service.limits
        self.limiter = RateLimiter(limits.rate_per_s, limits.burst)
        # Ratings are budgeted apart from tags, in batches and in samples.
        self.batch_limiter = RateLimiter(limits.rating_batches_per_s, limits.rating_batch_burst)
        self.sample_limiter = RateLimiter(limits.rating_samples_per_s, limits.rating_sample_burst)
        self.claims: tokens.JoinToken | None = None
        self.session: records.SessionRecord | None = None
        self.reaction_lag_us = 0
        # As many in flight as the burst a reconnecting client may re-send at once.
        self._slots = asyncio.Semaphore(service.limits.burst)
        self._rating_slots = asyncio.Semaphore(service.limits.rating_in_flight)
        self._unadmitted = 0
        self._admitting = False  # a hello is being checked (the session lookup waits)
        self._deadline_passed = False
        self._hello_refusal: ProtocolError | None = None  # why the latest hello was refused
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        #: When this client last said hello or sent a tag or ratings (the service's clock).
        self.last_tag_us = service.clock()

    async def send(self, message: dict[str, Any]) -> None:
        await send_json(self.ws, message)

    async def run(self) -> None:
        async for message in self.ws:
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                try:
                    await self._receive(message.data, self.service.clock())
                except Exception:  # a bug must cost one message, never the connection
                    log.exception("tag message failed")
                    await self._refuse(ProtocolError("internal", "message not handled"))
            elif message.type == WSMsgType.ERROR:
                self.service.refusals[failure_code(self.ws)] += 1
                break
            if self.claims is None:
                self._unadmitted += 1
                if self._unadmitted > _MESSAGES_BEFORE_HELLO:
                    await self._shut(ProtocolError("hello_first", "closing: no valid hello"))
                    break

    async def _refuse(self, error: ProtocolError) -> None:
        self.service.refusals[error.code] += 1
        await self.send(error.to_message())

    async def _shut(self, error: ProtocolError, *, told: bool = False) -> None:
        """Count and say why (unless ``told`` already), then close with the refusal's close
        code and reason."""
        if not told:
            self.service.refusals[error.code] += 1
        await credentials.end_connection(
            self.ws,
            None if told else self.send(error.to_message()),
            error.code,
            error.message,
            self.service.settings.ws_close_timeout_s,
        )

    def hello_expired(self) -> None:
        """The gate's hello deadline passed: close unless welcomed (a hello being checked
        right now decides first)."""
        if self.claims is not None or self._closed:
            return
        if self._admitting:
            self._deadline_passed = True
            return
        self._close_unwelcomed()

    def _close_unwelcomed(self) -> None:
        # Closed with the reason of the latest refused hello (counted when it was refused),
        # or as hello_timeout when no hello came.
        error = self._hello_refusal
        told = error is not None
        if error is None:
            seconds = self.service.settings.ws_hello_timeout_s
            error = ProtocolError("hello_timeout", f"no valid hello within {seconds:g} s")
        task = asyncio.create_task(self._shut(error, told=told), name="tag-unwelcomed")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _receive(self, raw: str | bytes, received_us: int) -> None:
        try:
            limits = self.service.limits
            message = parse_client_message(
                raw, limits.max_message_bytes, max_ratings_bytes=limits.max_rating_message_bytes
            )
        except ProtocolError as exc:
            # Bad messages count against the rate too: answering them is work.
            if self.limiter.allow(received_us):
                await self._refuse(exc)
            return
        if isinstance(message, ClockReply):
            if self.claims is not None:
                self.clock.on_reply(message, received_us)
            return
        if self.claims is None or self.session is None:
            if not isinstance(message, Hello):
                await self._refuse(ProtocolError("hello_first", "send hello with your token"))
                return
            await self._admit(message)
            return
        if isinstance(message, RatingsMessage):
            await self._receive_ratings(message, received_us)
            return
        tag_id = getattr(message, "tag_id", None)
        if not self.limiter.allow(received_us):
            await self._refuse(
                ProtocolError("too_frequent", "too many messages: slow down", tag_id)
            )
            return
        try:
            if isinstance(message, Hello):
                raise ProtocolError("unexpected", "already said hello on this connection")
            if isinstance(message, ReactionLag):
                self.reaction_lag_us = resolve_reaction_lag(
                    message, self.service.limits.max_reaction_lag_us
                )
                self.service.set_reaction_lag(
                    self.session.session_id, self.claims.participant_id, self.reaction_lag_us
                )
                await self.send({"type": "reaction_lag", "lag_us": self.reaction_lag_us})
                return
            check_tag(message, self.session, self.claims.participant_id, self.claims.role)
        except ProtocolError as exc:
            await self._refuse(exc)
            return
        if self._slots.locked():
            # The broker is slow and this client has many tags in flight: it re-sends.
            await self._refuse(
                ProtocolError("unavailable", "too many tags in flight: re-send", message.tag_id)
            )
            return
        await self._slots.acquire()
        task = asyncio.create_task(self._tag(message, received_us))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _receive_ratings(self, message: RatingsMessage, received_us: int) -> None:
        assert self.claims is not None
        assert self.session is not None
        batch_id = message.batch_id
        cost = len(message.samples)
        # Both budgets must allow it before either is spent: a batch refused by one is
        # re-sent whole and must not have paid the other.
        if not (
            self.batch_limiter.can_afford(received_us)
            and self.sample_limiter.can_afford(received_us, min(cost, self.sample_limiter.burst))
        ):
            await self._refuse(
                ProtocolError(
                    "too_frequent", "too many rating samples: slow down", batch_id=batch_id
                )
            )
            return
        self.batch_limiter.allow(received_us)
        self.sample_limiter.allow(received_us, min(cost, self.sample_limiter.burst))
        try:
            samples = check_ratings(message, self.session, self.claims.role, self.service.limits)
        except ProtocolError as exc:
            await self._refuse(exc)
            return
        if self._rating_slots.locked():
            await self._refuse(
                ProtocolError(
                    "unavailable", "too many rating batches in flight: re-send", batch_id=batch_id
                )
            )
            return
        await self._rating_slots.acquire()
        task = asyncio.create_task(self._rate(message, samples, received_us))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _admit(self, hello: Hello) -> None:
        self._admitting = True
        try:
            await self._check_hello(hello)
        finally:
            self._admitting = False
            if self._deadline_passed and self.claims is None and not self.ws.closed:
                self._close_unwelcomed()

    async def _check_hello(self, hello: Hello) -> None:
        try:
            claims, session = await self.service.admission(hello.token)
        except ProtocolError as exc:
            # The socket stays until the hello deadline: another hello may still come.
            self._hello_refusal = exc
            await self._refuse(exc)
            return
        full = self.ticket.join("tag", session.session_id)
        if full is not None:
            await self._shut(ProtocolError(full.code, f"{full.message}: closing"))
            return
        limit = self.service.limits.max_reaction_lag_us
        known = self.service.reaction_lag(session.session_id, claims.participant_id)
        if known is not None:
            self.reaction_lag_us = known
        elif hello.reaction_lag_us is not None:
            self.reaction_lag_us = min(hello.reaction_lag_us, limit)
        self.claims, self.session = claims, session
        self.ticket.welcome()
        self.clock = self.service.clock_sync(
            session.session_id, claims.participant_id, hello.clock_id
        )
        await self.send(
            welcome(
                session,
                rater_id=claims.participant_id,
                role=claims.role,
                reaction_lag_us=self.reaction_lag_us,
                limits=self.service.limits,
            )
        )
        task = asyncio.create_task(self._probe_clock(), name="tag-clock-probes")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        renewal = asyncio.create_task(
            self.service.access.keep_renewed(claims, self.send, self.end_access),
            name=_RENEWAL_TASK,
        )
        self._tasks.add(renewal)
        renewal.add_done_callback(self._tasks.discard)

    async def end_access(self, code: str, message: str) -> None:
        """The rater's link was revoked or ran out, or the session is over: say why, then
        close (the widget stops reconnecting on these close codes)."""
        await self._shut(ProtocolError(code, message))

    async def _tag(self, message: TagMessage | UndoMessage, received_us: int) -> None:
        self.last_tag_us = received_us
        try:
            assert self.claims is not None
            assert self.session is not None
            session_id = self.session.session_id
            rater_id = self.claims.participant_id
            stored_tags = self.service.stored_tags
            known = stored_tags.known(session_id, message.tag_id)
            if known is not None:  # a re-send: answered from the ledger, stored once
                if known.rater_id != rater_id:
                    raise ProtocolError(
                        "forbidden", "that tag_id belongs to another rater", message.tag_id
                    )
                self.service.stats["duplicates"] += 1
                await self.send(ack(known, duplicate=True, held=False))
                return
            if isinstance(message, UndoMessage):
                target = stored_tags.known(session_id, message.undoes_tag_id)
                if target is not None and target.rater_id != rater_id:
                    raise ProtocolError(
                        "forbidden", "you can only undo your own tags", message.tag_id
                    )
            frame = None
            if isinstance(message, TagMessage) and message.frame is not None:
                frame = self.service.frame_capture(
                    session_id, rater_id, message.performer_id, message.frame.rtp_timestamp
                )
            event = tag_event(
                message,
                session_id=session_id,
                rater_id=rater_id,
                role=self.claims.role,
                estimate=self.clock.estimate,
                reaction_lag_us=self.reaction_lag_us,
                frame=frame,
                default_span_us=self.service.limits.default_span_us,
                received_us=received_us,
            )
            await self.service.check_session_open(event, received_us)
            stored, duplicate, held = await self.service.store(event)
            await self.send(ack(stored, duplicate=duplicate, held=held))
        except ProtocolError as exc:
            await self._refuse(exc)
        except Exception as exc:  # the spool itself failed: the client keeps and re-sends
            log.exception("could not store tag %s", message.tag_id)
            await self._refuse(
                ProtocolError("unavailable", f"tag not stored ({exc}): re-send", message.tag_id)
            )
        finally:
            self._slots.release()

    async def _rate(
        self, message: RatingsMessage, samples: list[RatingSampleIn], received_us: int
    ) -> None:
        self.last_tag_us = received_us
        batch_id = message.batch_id
        try:
            assert self.claims is not None
            assert self.session is not None
            session_id = self.session.session_id
            rater_id = self.claims.participant_id
            known = self.service.stored_batches.known(session_id, batch_id)
            if known is not None:  # a re-send: answered from the ledger, stored once
                if known.rater_id != rater_id:
                    raise ProtocolError(
                        "forbidden", "that batch_id belongs to another rater", batch_id=batch_id
                    )
                self.service.stats["rating_duplicates"] += 1
                await self.send(ratings_ack(known, duplicate=True, held=False))
                return
            captures = [
                None
                if sample.rtp_timestamp is None
                else self.service.frame_capture(
                    session_id, rater_id, message.performer_id, sample.rtp_timestamp
                ).capture_ts_us
                for sample in samples
            ]
            batch = rating_batch(
                message,
                samples,
                session_id=session_id,
                rater_id=rater_id,
                role=self.claims.role,
                estimate=self.clock.estimate,
                reaction_lag_us=self.reaction_lag_us,
                frame_captures=captures,
                received_us=received_us,
            )
            await self.service.check_session_open_for_ratings(batch, received_us)
            stored, duplicate, held = await self.service.store_ratings(batch)
            await self.send(ratings_ack(stored, duplicate=duplicate, held=held))
        except ProtocolError as exc:
            await self._refuse(exc)
        except Exception as exc:  # the spool itself failed: the client keeps and re-sends
            log.exception("could not store rating batch %s", batch_id)
            await self._refuse(
                ProtocolError(
                    "unavailable", f"ratings not stored ({exc}): re-send", batch_id=batch_id
                )
            )
        finally:
            self._rating_slots.release()

    async def _probe_clock(self) -> None:
        while not self.ws.closed:
            probe = self.clock.next_probe(self.service.clock())
            await self.send(probe.model_dump())
            await asyncio.sleep(self.clock.probe_interval_s)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Tags being stored finish (their rater is owed the ack on a re-send); probes stop.
        for task in list(self._tasks):
            if task.get_name() in ("tag-clock-probes", _RENEWAL_TASK):
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.ws.close()
