"""The capture server: serves the call page, signals WebRTC, runs each scene's call.

HTTP routes
  GET /join?token=T      the performer page      GET /direct?token=T  the director's view
  GET /ws/call?token=T   the signaling websocket GET /metrics         fork counters (JSON)
  GET /api/token?token=T whether a link is valid, and if not why
  GET /ws/tag            the tag websocket (taggers.service)  GET /tagger/...  the widget
  GET /metrics/clients?session=SID   every page's clock offset and rtt (call and tags)
  GET /metrics/refusals  what was refused (bad tokens, exceeded limits, bad messages), by code
  GET /metrics/loop      the event loop's lag (?since=UNIX_MS: only newer samples)
  GET /metrics/cues      the director's cues here: read, pushed, superseded, shown, lost
  GET /lobby, /ws/lobby  a casting day's lobby, where performers wait (capture.lobby)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

from capture import signaling
from capture.call import CallError, SceneCall
from capture.cues import CueFollower, CueQueue, CueShownError
from capture.fork import ForkStats, make_fork_audio_producer
from capture.ice import restrict_host_addresses
from capture.lobby import LobbyService
from capture.loop_lag import LoopLagMonitor
from capture.timing import Stamp
from streams import records
from streams.errors import UnavailableError
from streams.kafka import clients, health, topics
from streams.kafka.revocations import RevocationList
from streams.kafka.sessions import (
    STATE_ORDER,
    SessionDirectory,
    is_over,
    publish,
    with_presence,
)
from streams.runtime import background
from streams.runtime.connection_gate import (
    ConnectionGate,
    failure_code,
    keep_swept,
    send_json,
    watch_websocket,
    websocket_response,
)
from streams.runtime.metrics_access import MetricsGuard
from streams.runtime.redaction import AccessLogger, access_log
from streams.scenarios import performer_view
from streams.session_clock import now_us
from streams.settings import (
    PlaintextNetworkError,
    Settings,
    TLSSettingsError,
    check_listen_address,
    server_ssl_context,
)
from taggers import credentials, tokens
from taggers.clock import ClockReply, ClockSync
from taggers.service import TagService, clock_summary

log = logging.getLogger(__name__)
#: What an operator follows on livetag up's terminal (streams.runtime.service_logs.MILESTONES).
milestones = logging.getLogger("livetag.session")

COUNTERS_INTERVAL_S = 2.0  # fork counters go to livetag.health at most this often
#: Cue acknowledgements a page may send before its clock is synced (held until it is).
MAX_UNSYNCED_CUES_SHOWN = 16

PAGES = Path(str(resources.files("capture") / "static"))
TAGGER_FILES = Path(str(resources.files("taggers") / "static"))
_WS_HARD_LIMIT = 4 * 1024 * 1024  # above our own limit, so we can answer instead of drop


_PRESENCE_QUEUE = 10_000


# The call page's and the tagging widget's files (/static, /tagger). The director
# dashboard, served from another origin, imports these ES modules, and a cross-origin
# module import needs CORS: they are public static files, the same for everyone, fetched
# without cookies, so any origin may read them.
_PUBLIC_STATIC_PREFIXES = ("/static/", "/tagger/")


async def _allow_any_origin_on_static_files(
    request: web.Request, response: web.StreamResponse
) -> None:
    if not request.path.startswith(_PUBLIC_STATIC_PREFIXES):
        return
    response.headers["Access-Control-Allow-Origin"] = "*"
    if response.status in (200, 206) and request.path.endswith(".js"):
        # The static route takes Python's table, application/javascript before 3.12;
        # browsers run modules of either type, text/javascript is the standard one.
        response.headers["Content-Type"] = "text/javascript; charset=utf-8"


def _at_services_priority(niceness: int) -> None:
    # Decoding and JPEG work is bulk work: it must not run at the call's priority, which
    # threads inherit from the event loop's thread (Linux niceness is per thread).
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, 0, max(niceness, os.getpriority(os.PRIO_PROCESS, 0)))


class CaptureServerError(UnavailableError, RuntimeError):
    """The capture server cannot start; the message says what to change."""


class CaptureServer:
    """Idempotent ``start``/``stop``; ``url`` is where pages are served."""

    def __init__(self, settings: Settings, *, secret: bytes) -> None:
        self.settings = settings
        self._secret = secret
        # Before any Kafka client exists: a bad certificate leaves nothing to close.
        try:
            self._ssl_context = server_ssl_context(settings)
            check_listen_address(
                settings,
                "the capture server",
                settings.capture_host,
                tls=self._ssl_context is not None,
            )
        except (TLSSettingsError, PlaintextNetworkError) as exc:
            raise CaptureServerError(str(exc)) from None
        self._producer = clients.make_producer(settings)
        # Audio on its own producer, made for the forks' spools.
        self._audio_producer = make_fork_audio_producer(settings)
        self._directory = SessionDirectory(
            settings, dead_letters=self._producer, service="livetag-capture"
        )
        self._jpeg_pool = ThreadPoolExecutor(
            max_workers=2,
            thread_name_prefix="jpeg",
            initializer=_at_services_priority,
            initargs=(settings.services_nice,),
        )
        self.calls: dict[str, SceneCall] = {}
        self._connections: dict[str, set[CallConnection]] = {}
        self._presence_lock = asyncio.Lock()
        # Joins and leaves are written to Kafka by one task, in order: a page's join never
        # waits for a produce (a broker hiccup once held a join ~15 s).
        self._presence_updates: asyncio.Queue[tuple[str, tokens.JoinToken, bool]] = asyncio.Queue(
            maxsize=_PRESENCE_QUEUE
        )
        self._presence_writer: asyncio.Task[None] | None = None
        # Joins and leaves that never reached livetag.sessions, by why; never reset.
        self.presence_updates_lost: Counter[str] = Counter()
        self._open_pages: dict[str, dict[str, int]] = {}
        # Every refusal by its error code: exceeded limits and bad input are visible to the
        # operator, not only to the client that got the error.
        self.refusals: Counter[str] = Counter()
        self._metrics_guard = MetricsGuard(settings, self.refusals)
        self.loop_lag = LoopLagMonitor()
        self._published_sessions: dict[str, records.SessionRecord] = {}
        self._runner: web.AppRunner | None = None
        self._ender: asyncio.Task[None] | None = None
        self._counter_publisher: asyncio.Task[None] | None = None
        # Each session's fork counters per performer, for as long as this process runs.
        self._fork_totals: dict[str, dict[str, ForkStats]] = {}
        self.port = settings.capture_port
        # One gate for the call pages' and the tagging websockets: they share the caps.
        self.gate = ConnectionGate.from_settings(settings)
        self._gate_sweeper: asyncio.Task[None] | None = None
        # One list of withdrawn links for the call pages and the tag service.
        self._revocations = RevocationList(settings)
        self.access = credentials.Access(settings, secret, self._revocations)
        self._revocation_watcher: asyncio.Task[None] | None = None
        # The director's cues, followed from livetag.cues and shown on performers' pages.
        self.cues = CueFollower(
            settings,
            producer=self._producer,
            deliver=self.deliver_cue,
            open_sessions=self._directory.sessions,
        )
        # The casting days' lobby: performers wait there between scenes.
        self.lobby = LobbyService(
            settings,
            access=self.access,
            producer=self._producer,
            sessions=self._directory,
            session_record=self._session,
            gate=self.gate,
            refusals=self.refusals,
            metrics_guard=self._metrics_guard,
            thread_setup=lambda: _at_services_priority(settings.services_nice),
        )
        self.tags = TagService(
            settings,
            secret=secret,
            access=self.access,
            sessions=self._session,
            frame_lookup=self.frame_capture_us,
            gate=self.gate,
            ended_at=self._directory.ended_at_us,
        )

    @property
    def url(self) -> str:
        return f"{self.settings.web_scheme}://{self.settings.capture_host}:{self.port}"

    async def start(self) -> None:
        if self._runner is not None:
            return
        restrict_host_addresses(self.settings.ice_addresses)
        # The directory follows livetag.sessions from the start: it must exist first.
        async with clients.admin_client(self.settings) as admin:
            await topics.ensure_shared_topics(admin, self.settings)
        try:
            await self._producer.start()
            await self._audio_producer.start()
            await self._directory.start()
            # Read whole before anyone is admitted: a revoked link never gets in.
            await self._revocations.start()
            # The cues that stand, before a page is admitted that should show one.
            await self.cues.start()
            await self.tags.start()
            await self.lobby.start()
        except BaseException:
            await self._stop_clients()
            raise
        app = web.Application()
        app.add_routes(
            [
                web.get("/", self._index),
                web.get("/join", self._page),
                web.get("/direct", self._page),
                web.get("/ws/call", self._websocket),
                web.get("/api/token", self._token),
                web.post("/api/token", self._token),
                web.post("/api/credential", self._credential),
                # Loopback (or metrics_token) only; a failure answers 500, never more.
                web.get("/metrics", self._metrics_guard.wrap(self._metrics)),
                web.get("/metrics/clients", self._metrics_guard.wrap(self._client_metrics)),
                web.get("/metrics/refusals", self._metrics_guard.wrap(self._refusal_metrics)),
                web.get("/metrics/loop", self._metrics_guard.wrap(self._loop_metrics)),
                web.get("/metrics/cues", self._metrics_guard.wrap(self._cue_metrics)),
                web.static("/static", PAGES),
                web.static("/tagger", TAGGER_FILES),
            ]
        )
        app.on_response_prepare.append(_allow_any_origin_on_static_files)
        self.tags.add_routes(app)
        self.lobby.add_routes(app)
        self._ender = background.start(self._end_calls_of_ended_sessions, "capture-ender")
        self._counter_publisher = background.start(self._publish_counters, "capture-counters")
        self._gate_sweeper = background.start(lambda: keep_swept(self.gate), "capture-gate")
        self._revocation_watcher = background.start(
            lambda: self.access.close_revoked(self._open_connections), "capture-revocations"
        )
        self.loop_lag.start()
        self._presence_writer = background.start(self._write_presence, "capture-presence")
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=access_log(), access_log_class=AccessLogger
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.settings.capture_host,
            self.settings.capture_port,
            ssl_context=self._ssl_context,
        )
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            self._runner = None
            await self._stop_ender()
            await self._stop_clients()
            raise CaptureServerError(
                f"the capture server cannot listen on {self.settings.capture_host}:"
                f"{self.settings.capture_port}: {exc.strerror}. Free the port or set "
                "LIVETAG_CAPTURE_PORT."
            ) from None
        # With port 0 the OS chose the port: read it back for the URL and the join links.
        self.port = int(self._runner.addresses[0][1])
        log.info("capture server on %s", self.url)

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is None:
            return
        await self._stop_ender()
        await self.loop_lag.stop()
        for connections in list(self._connections.values()):
            for connection in list(connections):
                await connection.close()
        await self._stop_presence_writer()
        for call in list(self.calls.values()):
            await call.close()
        self.calls.clear()
        await self.tags.stop()
        await runner.cleanup()
        await self._stop_clients()
        self._jpeg_pool.shutdown(wait=False, cancel_futures=True)

    async def _stop_ender(self) -> None:
        await background.cancel(
            self._ender, self._counter_publisher, self._gate_sweeper, self._revocation_watcher
        )
        self._ender = self._counter_publisher = self._gate_sweeper = None
        self._revocation_watcher = None

    async def _publish_counters(self) -> None:
        """Each performer's fork counters to livetag.health when they change.

        A performer's counters met for the first time in this process (after a restart)
        start from what the health record already says, so they stay cumulative for the
        session."""
        published: dict[tuple[str, str], dict[str, int]] = {}
        seeded: set[tuple[str, str]] = set()
        while True:
            await asyncio.sleep(COUNTERS_INTERVAL_S)
            try:
                for session_id, by_performer in list(self._fork_totals.items()):
                    unseeded = [p for p in by_performer if (session_id, p) not in seeded]
                    if unseeded:
                        # One read of the session's records for every performer new here.
                        earlier = await health.read_counters(self.settings, session_id)
                        for performer_id in unseeded:
                            record = earlier.get((session_id, performer_id, "capture"))
                            if record is not None:
                                by_performer[performer_id].add_counts(record.counters)
                            seeded.add((session_id, performer_id))  # once, even if unpublished
                    for performer_id, totals in list(by_performer.items()):
                        identity = (session_id, performer_id)
                        counts = totals.counters()
                        if published.get(identity) == counts:
                            continue
                        message = records.encode(
                            records.PipelineCounters(
                                ts_us=now_us(),
                                session_id=session_id,
                                performer_id=performer_id,
                                source="capture",
                                counters=counts,
                            )
                        )
                        await self._producer.send_and_wait(
                            topics.HEALTH, message.value, key=message.key, headers=message.headers
                        )
                        published[identity] = counts
                    session = self._directory.get(session_id)
                    if (
                        session is not None
                        and session.state == "archived"
                        and session_id not in self.calls
                        and all(published.get((session_id, p)) for p in by_performer)
                    ):
                        # Its counts are on the health record: nothing more will come.
                        del self._fork_totals[session_id]
            except Exception as exc:  # the broker away: the next round publishes
                log.warning("capture counters not published: %s", exc)

    async def _stop_presence_writer(self) -> None:
        """Write the leaves still queued (the pages just closed), then stop."""
        writer, self._presence_writer = self._presence_writer, None
        if writer is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await self._presence_updates.join()  # written, not only taken
        await background.cancel(writer)
        if unwritten := self._presence_updates.qsize():
            self.presence_updates_lost["stopped"] += unwritten
            log.warning("%d joins or leaves not recorded: the server stopped first", unwritten)

    async def _stop_clients(self) -> None:
        """Stop the Kafka clients, each even if another fails (each is safe to stop when
        it never started, or twice)."""
        for stop in (
            self.lobby.stop,
            self.tags.stop,
            self.cues.stop,
            self._revocations.stop,
            self._directory.stop,
            self._producer.stop,
            self._audio_producer.stop,
        ):
            try:
                await stop()
            except Exception:
                log.exception("stopping the capture server's Kafka clients")

    # ------------------------------------------------------------------ HTTP

    async def _index(self, request: web.Request) -> web.Response:
        return web.json_response({"service": "livetag capture", "join": "/join?token=..."})

    async def _page(self, request: web.Request) -> web.FileResponse:
        # The page's address holds the link's token until the page takes it out: no
        # Referer may carry it to the scripts' and styles' servers, no cache may keep it.
        return web.FileResponse(PAGES / "call.html", headers=credentials.PAGE_HEADERS)

    async def _metrics(self, request: web.Request) -> web.Response:
        """Fork counters per session and performer; ``?samples=1`` adds raw latencies."""
        samples = request.query.get("samples") == "1"
        return web.json_response(
            {session_id: call.stats(samples=samples) for session_id, call in self.calls.items()}
        )

    async def _client_metrics(self, request: web.Request) -> web.Response:
        session_id = request.query.get("session", "")
        clocks = [
            clock_summary(connection.claims, "call", connection.clock)
            for connection in self._connections.get(session_id, ())
        ]
        return web.json_response(clocks + self.tags.client_clocks(session_id))

    async def _loop_metrics(self, request: web.Request) -> web.Response:
        try:
            since = int(request.query["since"]) if "since" in request.query else None
        except ValueError:
            return self._refuse(400, "malformed", "since must be Unix milliseconds", counted=True)
        snapshot = self.loop_lag.snapshot(since_unix_ms=since)
        return web.json_response(
            {
                **snapshot,
                "background_restarts": dict(background.RESTARTS),
                "presence_updates_lost": dict(self.presence_updates_lost),
                "session_directory": self._directory.counters(),
            }
        )

    async def _cue_metrics(self, request: web.Request) -> web.Response:
        return web.json_response(self.cues.metrics())

    async def _refusal_metrics(self, request: web.Request) -> web.Response:
        return web.json_response({"call": dict(self.refusals), "tag": dict(self.tags.refusals)})

    def _refuse(self, status: int, code: str, message: str, *, counted: bool) -> web.Response:
        if counted:
            self.refusals[code] += 1
        return web.json_response(signaling.error(code, message), status=status)

    async def _admit(
        self,
        request: web.Request,
        *,
        counted: bool = True,
        token: str | None = None,
        kind: credentials.Kind = "session",
    ) -> tuple[tokens.JoinToken, records.SessionRecord] | web.Response:
        """The caller's claims and session, or the refusal to send them (``counted``:
        the refusals of a page asking why it was refused are counted once, not twice).
        ``token``: the one to check (default: the credential the request carries);
        ``kind``: what it must be (a credential, except for the exchange of a link)."""
        claims = credentials.verified_token(
            self.access, request, self._refuse, counted=counted, token=token, kind=kind
        )
        if isinstance(claims, web.Response):
            return claims
        session = await self._session(claims.session_id)
        if session is None:
            message = f"no session {claims.session_id!r}"
            return self._refuse(404, "unknown_session", message, counted=counted)
        roster = {performer.performer_id for performer in session.roster}
        if claims.role == "performer" and claims.participant_id not in roster:
            message = "this performer is not in the session"
            return self._refuse(403, "not_in_roster", message, counted=counted)
        if is_over(session):
            message = f"this session is {session.state}"
            return self._refuse(409, "session_ended", message, counted=counted)
        return claims, session

    async def _token(self, request: web.Request) -> web.Response:
        return await credentials.probe_endpoint(
            request, self._admit, self._refuse, self.gate, "call"
        )

    async def _credential(self, request: web.Request) -> web.Response:
        return await credentials.exchange_endpoint(request, self.access, self._admit, self._refuse)

    def _open_connections(self) -> list[CallConnection]:
        return [c for connections in self._connections.values() for c in connections]

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        async with credentials.admitted_websocket(
            request, self.gate, self._admit, self._refuse, "call"
        ) as admitted:
            if isinstance(admitted, web.Response):
                return admitted
            ticket, claims, session = admitted
            ws = websocket_response(self.settings, max_msg_size=_WS_HARD_LIMIT)
            call = self._call_for(session)
            connection = CallConnection(self, call, ws, claims)
            self._connections.setdefault(session.session_id, set()).add(connection)
            try:
                await ws.prepare(request)
                watch_websocket(ticket, request, ws)
                await connection.run()
            finally:
                self._connections[session.session_id].discard(connection)
                await connection.close()
                await self.forget_if_idle(session.session_id)
            return ws

    async def _end_calls_of_ended_sessions(self) -> None:
        """When the director ends a session, its call ends: nothing more is forked (the
        recorder waits for its topics to go quiet), and pages are closed with 4409 and
        stop rejoining. Its tagging connections are closed once it takes no more tags."""
        while True:
            await self._directory.changed(timeout_s=2.0)
            for session_id in list(self._connections):
                session = self._directory.get(session_id)
                if session is None or not is_over(session):
                    continue
                milestones.info("session %s is %s: closing its call", session_id, session.state)
                message = f"this session is {session.state}"
                for connection in list(self._connections.get(session_id, ())):
                    # Told and closed first (the page stops), then its media let go.
                    await connection.end_access("session_ended", message)
                    await connection.close()
            self.cues.board.forget_sessions(
                session.session_id for session in self._directory.sessions() if is_over(session)
            )
            await self.tags.close_ended_sessions()

    # ------------------------------------------------------------------ tagging

    async def _session(self, session_id: str) -> records.SessionRecord | None:
        session = self._directory.get(session_id)
        if session is None:
            with contextlib.suppress(TimeoutError):
                session = await self._directory.wait_for(session_id, timeout_s=2.0)
        return session

    def frame_capture_us(
        self, session_id: str, rater_id: str, performer_id: str, rtp_timestamp: int
    ) -> int | None:
        """Capture instant of the frame a rater's call page showed with this RTP timestamp."""
        for connection in self._connections.get(session_id, ()):
            if connection.claims.participant_id != rater_id:
                continue
            stamp = connection.frame_on_screen(performer_id, rtp_timestamp)
            if stamp is not None:
                return stamp.ts_us
        return None

    # ------------------------------------------------------------------ scene state

    def _call_for(self, session: records.SessionRecord) -> SceneCall:
        call = self.calls.get(session.session_id)
        if call is None:
            session_id = session.session_id

            async def on_live_change() -> None:
                await self.broadcast_live(session_id)

            call = SceneCall(
                settings=self.settings,
                session=session,
                producer=self._producer,
                audio_producer=self._audio_producer,
                jpeg_pool=self._jpeg_pool,
                on_live_change=on_live_change,
                fork_totals=self._fork_totals.setdefault(session_id, {}),
            )
            self.calls[session_id] = call
        return call

    def deliver_cue(self, cue: records.Cue) -> None:
        """Hand a new cue to its performer's page(s) in its session (a performer may have
        a page open on two devices); each page's own task sends it, so a page slow to
        take it holds up no other page and no later cue."""
        for connection in list(self._connections.get(cue.session_id, ())):
            if connection.shows_cues_of(cue.performer_id):
                connection.cue_queue.offer(cue)

    async def broadcast_live(self, session_id: str) -> None:
        call = self.calls.get(session_id)
        if call is None:
            return
        message = {"type": "performers", "live": call.live_performers()}
        for connection in list(self._connections.get(session_id, ())):
            await connection.send(message)

    def note_presence(self, session_id: str, claims: tokens.JoinToken, connected: bool) -> None:
        """Queue a join or leave for the presence writer; never waits."""
        try:
            self._presence_updates.put_nowait((session_id, claims, connected))
        except asyncio.QueueFull:
            self.presence_updates_lost["writer_behind"] += 1
            log.warning("presence of %s not recorded: the writer is behind", claims.participant_id)

    async def _write_presence(self) -> None:
        while True:
            session_id, claims, connected = await self._presence_updates.get()
            try:
                await self.record_presence(session_id, claims, connected)
            except Exception:  # bookkeeping: the next update must still be written
                self.presence_updates_lost["failed"] += 1
                log.exception("recording the presence of %s failed", claims.participant_id)
            finally:
                self._presence_updates.task_done()

    async def record_presence(
        self, session_id: str, claims: tokens.JoinToken, connected: bool
    ) -> None:
        """Joins and leaves go on livetag.sessions as a new version of the session.

        A participant counts as connected while any of their pages is (a reconnect opens
        the new websocket before the old one is noticed closed). Updates are serialized
        and built on the newest record this server knows, so two joins a few ms apart do
        not overwrite each other.
        """
        async with self._presence_lock:
            counts = self._open_pages.setdefault(session_id, {})
            pages = counts.get(claims.participant_id, 0) + (1 if connected else -1)
            counts[claims.participant_id] = max(pages, 0)
            current = self._directory.get(session_id)
            ours = self._published_sessions.get(session_id)
            if ours is not None and (current is None or ours.ts_us >= current.ts_us):
                current = ours
            if current is None:  # admitted, so known: a session record not read back yet
                self.presence_updates_lost["unknown_session"] += 1
                log.warning(
                    "presence of %s not recorded: no session %s", claims.participant_id, session_id
                )
                return
            # The directory may have seen an "ended" that the copy built on has not.
            states = [r.state for r in (self._directory.get(session_id), ours) if r is not None]
            updated = with_presence(
                current,
                participant_id=claims.participant_id,
                role=claims.role,
                connected=pages > 0,
                stamp_us=now_us(),
                newest_state=max(states, key=STATE_ORDER.__getitem__),
            )
            if updated is None:
                return
            try:
                await publish(self._producer, updated)
            except Exception as exc:  # presence is bookkeeping: never break the call for it
                self.presence_updates_lost["publish_failed"] += 1
                log.warning("could not record presence of %s: %s", claims.participant_id, exc)
                return
            self._published_sessions[session_id] = updated

    async def forget_if_idle(self, session_id: str) -> None:
        """Drop a scene's call state once nobody is connected to it."""
        if self._connections.get(session_id):
            return
        self._connections.pop(session_id, None)
        call = self.calls.pop(session_id, None)
        if call is not None:
            await call.close()


class CallConnection:
    """One page's signaling websocket: its subscriptions and its clock sync."""

    def __init__(
        self,
        server: CaptureServer,
        call: SceneCall,
        ws: web.WebSocketResponse,
        claims: tokens.JoinToken,
    ) -> None:
        self.server = server
        self.call = call
        self.ws = ws
        self.claims = claims
        self.clock = ClockSync()
        self._subscriptions: dict[str, Any] = {}
        self._published_generation: int | None = None
        self._joined = False
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        # A performer page's "cue shown" that came before its first clock reply: put on
        # the session clock once there is an estimate (with when it was received).
        self._unsynced_shown: list[tuple[signaling.CueShown, int]] = []
        # The cues this performer page has yet to get, in order (sent by its own task).
        self.cue_queue = CueQueue(self._send_if_open, server.cues)

    def shows_cues_of(self, performer_id: str) -> bool:
        """Whether this page is ``performer_id``'s own (cues are for their eyes only)."""
        return (
            not self._closed
            and self.claims.role == "performer"
            and self.claims.participant_id == performer_id
        )

    def frame_on_screen(self, performer_id: str, rtp_timestamp: int) -> Stamp | None:
        """Capture stamp of the frame of ``performer_id`` this page showed with this RTP
        timestamp (requestVideoFrameCallback's rtpTimestamp); None if unknown or too old."""
        pc = self._subscriptions.get(performer_id)
        return None if pc is None else self.call.relayed_frame_stamp(pc, rtp_timestamp)

    def sender_offset_us(self) -> int | None:
        estimate = self.clock.estimate
        # Extrapolated to now with the estimated drift, like tag times are.
        return None if estimate is None else estimate.offset_at(now_us())

    async def send(self, message: dict[str, Any]) -> None:
        await send_json(self.ws, message)

    async def _send_if_open(self, message: dict[str, Any]) -> bool:
        """Send; whether it went out (not to a connection closed before or during it)."""
        if self.ws.closed:
            return False
        await send_json(self.ws, message)
        return not self.ws.closed

    async def run(self) -> None:
        session = self.call.session
        settings = self.server.settings
        # What this page shows of the scenario: the prompt (none to an observer the
        # scenario shows nothing), and a performer's own part (never the others' briefs).
        view = performer_view(session, self.claims.participant_id, self.claims.role)
        await self.send(
            {
                "type": "welcome",
                "session_id": session.session_id,
                "prompt": view["prompt"],
                "roster": [p.model_dump() for p in session.roster],
                "vocabulary": [v.model_dump() for v in session.vocabulary],
                "you": {"participant_id": self.claims.participant_id, "role": self.claims.role},
                # What a performer page asks its camera for (the size is scaled to the
                # analysis size on the server).
                "capture": {"width": 640, "height": 360, "fps": settings.effective_capture_fps},
                "live": self.call.live_performers(),
                # The casting day the scene is part of (the page leads back to its lobby).
                "day_id": session.day_id,
                "scenario_view": view,
            }
        )
        if self.claims.role == "performer":
            # The cue in force, if any: a page that joins or rejoins shows it at once
            # (unless a newer one came since this connection was listed: that one waits).
            standing = self.server.cues.board.current(
                session.session_id, self.claims.participant_id
            )
            if standing is not None and not len(self.cue_queue):
                self.cue_queue.offer(standing)
            self._tasks.append(asyncio.create_task(self.cue_queue.run(), name="cue-sender"))
        self._tasks.append(asyncio.create_task(self._probe_clock(), name="clock-probes"))
        self._tasks.append(
            asyncio.create_task(
                self.server.access.keep_renewed(self.claims, self.send, self.end_access),
                name="credential-renewal",
            )
        )
        self.server.note_presence(session.session_id, self.claims, connected=True)
        self._joined = True
        async for message in self.ws:
            if message.type == WSMsgType.TEXT:
                await self._handle(message.data)
            elif message.type == WSMsgType.BINARY:
                self.server.refusals["malformed"] += 1
                await self.send(signaling.error("malformed", "binary messages are not accepted"))
            elif message.type == WSMsgType.ERROR:
                self.server.refusals[failure_code(self.ws)] += 1
                break

    async def _handle(self, raw: str) -> None:
        try:
            message = signaling.parse_page_message(
                raw, max_bytes=self.server.settings.max_message_bytes
            )
        except signaling.SignalingError as exc:
            self.server.refusals[exc.code] += 1
            await self.send(signaling.error(exc.code, exc.message))
            return
        try:
            if isinstance(message, ClockReply):
                estimate = self.clock.on_reply(message, received_us=now_us())
                if estimate is not None and self._unsynced_shown:
                    held, self._unsynced_shown = self._unsynced_shown, []
                    for shown, received_us in held:
                        await self._cue_shown(shown, received_us)
            elif isinstance(message, signaling.CueShown):
                if self.claims.role != "performer":
                    raise CallError("forbidden", "only a performer's page shows cues")
                await self._cue_shown(message, now_us())
            elif isinstance(message, signaling.Publish):
                if self.claims.role != "performer":
                    raise CallError("forbidden", "only performers publish media")
                answer, self._published_generation = await self.call.publish(
                    self.claims.participant_id,
                    message.sdp,
                    self.sender_offset_us,
                    on_lost=self._publication_lost,
                    page_id=message.page_id,
                )
                if self._closed:
                    # The page left (or was closed) while its media was being set up:
                    # nothing of a performer who left is forked.
                    await self.call.leave(self.claims.participant_id, self._published_generation)
                    return
                await self.send({"type": "publish_answer", "sdp": answer})
            else:
                if message.performer_id == self.claims.participant_id:
                    raise CallError("forbidden", "you cannot subscribe to yourself")
                old = self._subscriptions.pop(message.performer_id, None)
                if old is not None:
                    await self.call.unsubscribe(old)
                answer, pc = await self.call.subscribe(message.performer_id, message.sdp)
                self._subscriptions[message.performer_id] = pc
                await self.send(
                    {
                        "type": "subscribe_answer",
                        "performer_id": message.performer_id,
                        "sdp": answer,
                        "request_id": message.request_id,
                    }
                )
        except CallError as exc:
            self.server.refusals[exc.code] += 1
            await self.send(signaling.error(exc.code, exc.message))

    async def _cue_shown(self, message: signaling.CueShown, received_us: int) -> None:
        """The page showed a cue: its shown record, on the session clock (once per cue)."""
        estimate = self.clock.estimate
        if estimate is None:
            if len(self._unsynced_shown) < MAX_UNSYNCED_CUES_SHOWN:
                self._unsynced_shown.append((message, received_us))
                return
            code, reason = "not_synced", "answer a clock probe first: this cue_shown is lost"
        else:
            try:
                self.server.cues.shown(
                    session_id=self.call.session.session_id,
                    performer_id=self.claims.participant_id,
                    cue_id=message.cue_id,
                    client_shown_us=message.client_shown_ts_us,
                    estimate=estimate,
                    received_us=received_us,
                )
                return
            except CueShownError as exc:
                code, reason = exc.code, exc.message
        self.server.refusals[code] += 1
        await self.send(signaling.error(code, reason))

    async def end_access(self, code: str, message: str) -> None:
        """The link was revoked or ran out, or the session is over: say why, then close
        (the page stops rejoining on these close codes)."""
        self.server.refusals[code] += 1
        await credentials.end_connection(
            self.ws,
            self.send(signaling.error(code, message)),
            code,
            message,
            self.server.settings.ws_close_timeout_s,
        )

    async def _publication_lost(self) -> None:
        self._published_generation = None
        await self.send({"type": "publish_lost"})

    async def _probe_clock(self) -> None:
        while not self.ws.closed:
            probe = self.clock.next_probe(now_us())
            await self.send(probe.model_dump())
            await asyncio.sleep(self.clock.probe_interval_s)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        # A task that failed must not stop the close before the performer leaves the
        # call: nothing of a performer who left is recorded.
        outcomes = await asyncio.gather(*self._tasks, return_exceptions=True)
        for task, outcome in zip(self._tasks, outcomes, strict=True):
            if isinstance(outcome, Exception):
                log.error("a page's %s failed: %r", task.get_name(), outcome)
        for pc in list(self._subscriptions.values()):
            await self.call.unsubscribe(pc)
        self._subscriptions.clear()
        if self._published_generation is not None:
            await self.call.leave(self.claims.participant_id, self._published_generation)
        if self._joined:  # a page that never counted as joined must not count as leaving
            self.server.note_presence(self.call.session.session_id, self.claims, False)
        with contextlib.suppress(Exception):
            await self.ws.close()


async def serve(settings: Settings, stop: asyncio.Event) -> None:
    """Run the capture server until ``stop`` is set."""
    server = CaptureServer(settings, secret=tokens.load_secret(settings))
    await server.start()
    try:
        await stop.wait()
    finally:
        await server.stop()
