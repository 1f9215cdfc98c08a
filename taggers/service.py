"""The tag service: the ``/ws/tag`` websocket that takes tags and puts them on the session clock.

Per connection: the hello admits the rater (join token), clock probes run for the whole
connection (taggers.clock), and each tag is checked (taggers.protocol), converted, made
safe on ``livetag.tags`` (taggers.outbox) and only then acknowledged. Tags are handled in
their own tasks so a slow produce never delays the reading of the next clock reply (whose
receive time is part of the clock estimate). Re-sent tags are answered from a per-session
ledger, so a client that reconnects and re-sends what was unacknowledged stores nothing
twice.

The service is mounted in the capture server's web app (same origin and tokens as the call
page); observers' frame-on-screen lookups go through the ``frame_lookup`` it is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from infra.settings import Settings
from streams import kafka, records
from taggers import tokens
from taggers.clock import ClockReply, ClockSync
from taggers.outbox import TagOutbox
from taggers.protocol import (
    FrameCapture,
    Hello,
    ProtocolError,
    RateLimiter,
    ReactionLag,
    TagLedger,
    TagLimits,
    TagMessage,
    UndoMessage,
    ack,
    check_tag,
    parse_client_message,
    resolve_reaction_lag,
    tag_event,
    welcome,
)

log = logging.getLogger(__name__)

#: (session_id, rater_id, performer_id, rtp_timestamp) -> capture ts_us of the frame that
#: rater's page showed with that RTP timestamp, or None if unknown.
FrameLookup = Callable[[str, str, str, int], int | None]
SessionLookup = Callable[[str], Awaitable[records.SessionRecord | None]]

_CLOCKS_KEPT = 10_000  # client clocks remembered across reconnects
_MESSAGES_BEFORE_HELLO = 20  # then the connection is closed
_WS_HARD_LIMIT = 1024 * 1024  # above our own limit, so an oversize message gets an answer


def session_now_us() -> int:
    """The session clock: this server's wall clock, integer microseconds."""
    return time.time_ns() // 1000


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
    now = session_now_us()
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
    )


class TagService:
    """Start/stop around a web app that routes ``/ws/tag`` to :meth:`websocket`."""

    def __init__(
        self,
        settings: Settings,
        *,
        secret: bytes,
        sessions: SessionLookup,
        frame_lookup: FrameLookup | None = None,
        clock: Callable[[], int] = session_now_us,
    ) -> None:
        self.settings = settings
        self.limits = limits_of(settings)
        self.secret = secret
        self.sessions = sessions
        self._frame_lookup = frame_lookup
        self.clock = clock
        # Its own producer without linger: a tag is acknowledged only once it is stored,
        # and a person waits for that acknowledgement.
        self._producer = kafka.make_producer(settings, linger_ms=0, request_timeout_ms=5000)
        self.outbox = TagOutbox(
            self._producer,
            settings.state_dir,
            produce_timeout_s=settings.tag_produce_timeout_ms / 1000,
        )
        self._ledgers: dict[str, TagLedger] = {}
        self._in_flight: dict[tuple[str, str], asyncio.Future[records.TagEvent]] = {}
        self._reaction_lags: dict[tuple[str, str], int] = {}
        self._clocks: OrderedDict[tuple[str, str, str], ClockSync] = OrderedDict()
        self._connections: set[TagConnection] = set()
        self.stats = {"tags": 0, "duplicates": 0, "held": 0}
        # Every refusal by its error code (served on the capture server's /metrics/refusals).
        self.refusals: Counter[str] = Counter()

    async def start(self) -> None:
        await self._producer.start()
        await self.outbox.start()

    async def stop(self) -> None:
        for connection in list(self._connections):
            await connection.close()
        await self.outbox.stop()
        await self._producer.stop()

    def add_routes(self, app: web.Application) -> None:
        app.add_routes([web.get("/ws/tag", self.websocket)])

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(heartbeat=10.0, max_msg_size=_WS_HARD_LIMIT)
        await ws.prepare(request)
        connection = TagConnection(self, ws)
        self._connections.add(connection)
        try:
            await connection.run()
        finally:
            self._connections.discard(connection)
            await connection.close()
        return ws

    # ---------------------------------------------------------------- shared state

    def ledger(self, session_id: str) -> TagLedger:
        return self._ledgers.setdefault(session_id, TagLedger())

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

    async def store(self, tag: records.TagEvent) -> tuple[records.TagEvent, bool, bool]:
        """Make a tag safe once: (the stored tag, duplicate, held)."""
        ledger = self.ledger(tag.session_id)
        known = ledger.get(tag.tag_id)
        if known is not None:
            self.stats["duplicates"] += 1
            return known, True, False
        key = (tag.session_id, tag.tag_id)
        pending = self._in_flight.get(key)
        if pending is not None:  # the same tag re-sent while its first copy is in flight
            first = await asyncio.shield(pending)
            if first.rater_id != tag.rater_id:
                raise ProtocolError("forbidden", "that tag_id belongs to another rater", tag.tag_id)
            self.stats["duplicates"] += 1
            return first, True, False
        future: asyncio.Future[records.TagEvent] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = future
        try:
            held = await self.outbox.deliver(tag)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a re-send that was not waiting is no error
            raise
        finally:
            del self._in_flight[key]
        ledger.remember(tag)
        future.set_result(tag)
        self.stats["tags"] += 1
        self.stats["held"] += int(held)
        return tag, False, held


class TagConnection:
    """One tagging client's websocket."""

    def __init__(self, service: TagService, ws: web.WebSocketResponse) -> None:
        self.service = service
        self.ws = ws
        self.clock = new_clock_sync()  # replaced at hello by the client's own clock
        self.limiter = RateLimiter(service.limits.rate_per_s, service.limits.burst)
        self.claims: tokens.JoinToken | None = None
        self.session: records.SessionRecord | None = None
        self.reaction_lag_us = 0
        # As many in flight as the burst a reconnecting client may re-send at once.
        self._slots = asyncio.Semaphore(service.limits.burst)
        self._unadmitted = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def send(self, message: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionResetError, RuntimeError):
            await self.ws.send_str(json.dumps(message))

    async def run(self) -> None:
        async for message in self.ws:
            if message.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                try:
                    await self._receive(message.data, self.service.clock())
                except Exception:  # a bug must cost one message, never the connection
                    log.exception("tag message failed")
                    await self._refuse(ProtocolError("internal", "message not handled"))
            elif message.type == WSMsgType.ERROR:
                break
            if self.claims is None:
                self._unadmitted += 1
                if self._unadmitted > _MESSAGES_BEFORE_HELLO:
                    await self._refuse(ProtocolError("hello_first", "closing: no valid hello"))
                    break

    async def _refuse(self, error: ProtocolError) -> None:
        self.service.refusals[error.code] += 1
        await self.send(error.to_message())

    async def _receive(self, raw: str | bytes, received_us: int) -> None:
        try:
            message = parse_client_message(raw, self.service.limits.max_message_bytes)
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

    async def _admit(self, hello: Hello) -> None:
        try:
            claims = tokens.verify(self.service.secret, hello.token)
        except tokens.TokenError as exc:
            await self._refuse(ProtocolError("bad_token", exc.reason))
            return
        session = await self.service.sessions(claims.session_id)
        if session is None:
            await self._refuse(
                ProtocolError("unknown_session", f"no session {claims.session_id!r}")
            )
            return
        roster = {performer.performer_id for performer in session.roster}
        if claims.role == "performer" and claims.participant_id not in roster:
            await self._refuse(ProtocolError("not_in_roster", "you are not in this session"))
            return
        admitted = self.service.connections_in(session.session_id)
        if admitted >= self.service.settings.max_clients_per_session:
            await self._refuse(
                ProtocolError(
                    "too_many_clients",
                    f"this session already has {admitted} tagging connections: closing",
                )
            )
            await self.ws.close()
            return
        limit = self.service.limits.max_reaction_lag_us
        known = self.service.reaction_lag(session.session_id, claims.participant_id)
        if known is not None:
            self.reaction_lag_us = known
        elif hello.reaction_lag_us is not None:
            self.reaction_lag_us = min(hello.reaction_lag_us, limit)
        self.claims, self.session = claims, session
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

    async def _tag(self, message: TagMessage | UndoMessage, received_us: int) -> None:
        try:
            assert self.claims is not None
            assert self.session is not None
            session_id = self.session.session_id
            rater_id = self.claims.participant_id
            ledger = self.service.ledger(session_id)
            known = ledger.get(message.tag_id)
            if known is not None:  # a re-send: answered from the ledger, stored once
                if known.rater_id != rater_id:
                    raise ProtocolError(
                        "forbidden", "that tag_id belongs to another rater", message.tag_id
                    )
                self.service.stats["duplicates"] += 1
                await self.send(ack(known, duplicate=True, held=False))
                return
            if isinstance(message, UndoMessage):
                target = ledger.get(message.undoes_tag_id)
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
            if task.get_name() == "tag-clock-probes":
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.ws.close()
