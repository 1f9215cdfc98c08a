"""The director's dashboard server: the page, and a websocket fed from the session's topics.

HTTP routes
  GET /dashboard?token=T            the page (director tokens only)
  GET /ws/dashboard?token=T         live updates; take start/end and end-session actions
  GET /api/dashboard-token?token=T  whether a link is accepted, and if not why
  GET /metrics                      the pipeline's counters per session and performer, in
                                    the Prometheus text format (from livetag.health)
  GET /metrics/clients              connected clients and what the server keeps per client
  GET /casting?token=T              a casting day's casting page (dashboard.casting)

One :class:`SessionFeed` per session with a dashboard open consumes the session's prosody
and face topics, ``livetag.tags``, ``livetag.labels``, ``livetag.ratings`` (continuous
ratings), ``livetag.raters`` (each rater's reaction lag), ``livetag.cues`` (the director's
cues, sent and shown) and ``livetag.coverage`` (each performer's ledger) into a
:class:`SessionView`, polls
pipeline health, and ticks ``dashboard_update_hz`` times a second. On each tick every
client of the session that has finished its previous send gets what is new since its own
cursor; clients at the same cursor share one encoded message. The cursor carries the
client's role: the director is sent everything, an observer nothing of what was intended
(no cues, no intent lane, no coverage; :mod:`dashboard.view`), so a tick encodes at most
one update per role and cursor. A client that reads slowly
skips ticks and gets coalesced updates; one that reads nothing for
``dashboard_send_timeout_s`` is disconnected. Nothing is queued per client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dashboard.metrics import CounterBoard
from dashboard.view import CHART_WINDOW_US, ClientCursor, SessionView
from streams import records, strict_json
from streams.errors import RefusedError
from streams.kafka import clients, topics
from streams.kafka.sessions import SessionActionError, SessionDirectory, apply_action, publish
from streams.runtime import background
from streams.runtime.connection_gate import (
    ConnectionGate,
    failure_code,
    keep_swept,
    watch_websocket,
    websocket_response,
)
from streams.runtime.metrics_access import MetricsGuard, metrics_headers
from streams.runtime.redaction import AccessLogger, access_log
from streams.session_clock import now_us
from streams.settings import (
    Settings,
    check_listen_address,
    client_ssl_context,
    server_ssl_context,
)
from taggers import credentials, tokens

log = logging.getLogger(__name__)

PAGES = Path(str(resources.files("dashboard") / "static"))
CREDENTIALS_SCRIPT = Path(str(resources.files("taggers") / "static" / "credentials.js"))
# Who may open a dashboard: the director (with the session's controls) and observers
# (read-only: they watch and tag).
_DASHBOARD_ROLES = ("director", "observer")
HEALTH_INTERVAL_S = 1.0
AGREEMENT_INTERVAL_S = 1.0
FEED_LINGER_S = 30.0
CLIENT_SEND_BUFFER_BYTES = (
    256 * 1024
)  # keep a session's feed this long after its last dashboard closes


def mesh_edges() -> list[list[int]]:
    """The face mesh's triangle edges by landmark index, from mediapipe itself."""
    from mediapipe.tasks.python.vision import FaceLandmarksConnections

    return [[edge.start, edge.end] for edge in FaceLandmarksConnections.FACE_LANDMARKS_TESSELATION]


class SessionFeed:
    """A session's topics -> its :class:`SessionView`, plus health polling and the tick."""

    def __init__(
        self,
        settings: Settings,
        session: records.SessionRecord,
        http: aiohttp.ClientSession,
        counters: CounterBoard | None = None,
    ) -> None:
        self.settings = settings
        self.view = SessionView(
            session,
            max_hold_us=settings.tag_max_hold_ms * 1000,
            label_grace_us=round(settings.label_grace_s * 1_000_000),
        )
        self._http = http
        self._counter_board = counters
        self._consumer = clients.make_consumer(
            settings, fetch_max_wait_ms=settings.dashboard_fetch_wait_ms
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.tick = 0
        self._ticked = asyncio.Condition()
        self.clients = 0
        self.idle_since: float | None = None
        self.undecodable = 0
        # This tick's encoded updates by cursor (cleared each tick): clients share them.
        self.update_cache: dict[tuple[Any, ...], tuple[str | None, ClientCursor]] = {}
        self.cache_tick = -1
        self._counters: dict[str, tuple[float, dict[str, Any]]] = {}
        self._told_metrics_refused = False  # warned once that the capture server refuses
        self._offsets: AIOKafkaConsumer | None = None
        self._broker_reachable = True
        self._tag_arrived = asyncio.Event()

    @property
    def session_id(self) -> str:
        return self.view.session.session_id

    async def start(self) -> None:
        session = self.view.session
        await self._consumer.start()
        partitions: dict[str, list[TopicPartition]] = {}
        followed = (
            session.topics.prosody,
            session.topics.face,
            topics.TAGS,
            topics.LABELS,
            topics.RATINGS,
            topics.RATERS,
            topics.CUES,
            topics.COVERAGE,
        )
        for topic in followed:
            numbers = self._consumer.partitions_for_topic(topic)
            if not numbers:
                numbers = await _partitions(self._consumer, topic)
            partitions[topic] = [TopicPartition(topic, n) for n in sorted(numbers)]
        self._consumer.assign([tp for tps in partitions.values() for tp in tps])
        # Features: from now (the charts show the last 30 s). Continuous ratings: the
        # last 30 s their lane shows. Tags, labels, rater lags, cues and coverage: the whole
        # session, so the timeline, the agreement, the model gap, the lag table, each
        # performer's cue in force and the coverage start complete.
        await self._consumer.seek_to_end(
            *partitions[session.topics.prosody], *partitions[session.topics.face]
        )
        await self._seek_to_time(partitions[topics.RATINGS], now_us() - CHART_WINDOW_US)
        whole_session = (topics.TAGS, topics.LABELS, topics.RATERS, topics.CUES, topics.COVERAGE)
        await self._seek_to_time(
            [tp for topic in whole_session for tp in partitions[topic]],
            self.view.session.created_ts_us,
        )
        self._tasks = [
            asyncio.create_task(self._consume(), name=f"dashboard-feed-{self.session_id}"),
            asyncio.create_task(self._poll_health(), name=f"dashboard-health-{self.session_id}"),
            asyncio.create_task(self._tick(), name=f"dashboard-tick-{self.session_id}"),
        ]

    async def _seek_to_time(self, partitions: list[TopicPartition], start_us: int) -> None:
        start_ms = start_us // 1000
        try:
            found = await self._consumer.offsets_for_times(dict.fromkeys(partitions, start_ms))
        except Exception as exc:  # a broker without time index: read the topics whole
            log.info("no offsets by time (%s): reading %s from the start", exc, partitions)
            found = {}
        for partition in partitions:
            offset = found.get(partition)
            if offset is None:
                await self._consumer.seek_to_beginning(partition)
            else:
                self._consumer.seek(partition, offset.offset)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._consumer.stop()
        if self._offsets is not None:
            await self._offsets.stop()

    async def next_tick(self, seen: int) -> int:
        async with self._ticked:
            await self._ticked.wait_for(lambda: self.tick > seen)
            return self.tick

    async def _tick(self) -> None:
        interval = 1.0 / self.settings.dashboard_update_hz
        last_agreement = 0.0
        while True:
            # A tag ends the wait early: a director sees a press at once, not on the
            # next regular tick (tags are rare; features keep the regular pace).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._tag_arrived.wait(), interval)
            self._tag_arrived.clear()
            now = time.monotonic()
            if now - last_agreement >= AGREEMENT_INTERVAL_S:
                self.view.compute_agreement(now_us())
                self.view.compute_gap()
                self.view.compute_coverage()
                last_agreement = now
            async with self._ticked:
                self.tick += 1
                self._ticked.notify_all()

    async def _consume(self) -> None:
        session = self.view.session
        prefix = f"{self.session_id}/".encode()
        kinds: dict[str, type[records.AnyRecord]] = {
            session.topics.prosody: records.ProsodyHops,
            session.topics.face: records.FaceFrame,
            topics.TAGS: records.TagEvent,
            topics.LABELS: records.LabelWindow,
            topics.RATINGS: records.RatingBatch,
            topics.RATERS: records.RaterLag,
            topics.CUES: records.Cue,
            topics.COVERAGE: records.Coverage,
        }
        while True:
            batches = await self._consumer.getmany(timeout_ms=100)
            received = now_us()
            for partition, messages in batches.items():
                kind = kinds[partition.topic]
                for message in messages:
                    if not (message.key or b"").startswith(prefix):
                        continue  # another session's tag or label
                    try:
                        record = records.decode(kind, message.value, message.headers)
                    except records.RecordError as exc:
                        # The producers dead-letter what they reject; a reader only skips.
                        self.undecodable += 1
                        log.warning("dashboard skips a record on %s: %s", partition.topic, exc)
                        continue
                    self._add(record, received)

    def _add(self, record: records.AnyRecord, received_us: int) -> None:
        if isinstance(record, records.ProsodyHops):
            for frame in record.frames():
                self.view.add_prosody(frame, received_us)
        elif isinstance(record, records.FaceFrame):
            self.view.add_face(record, received_us)
        elif isinstance(record, records.TagEvent):
            self.view.add_tag(record)
            self._tag_arrived.set()
        elif isinstance(record, records.LabelWindow):
            self.view.add_label(record)
        elif isinstance(record, records.RatingBatch):
            self.view.add_rating(record)
        elif isinstance(record, records.RaterLag):
            self.view.add_rater_lag(record)
        elif isinstance(record, records.Cue):
            # Like a tag, a cue's state is shown at once: the director watches it land.
            if self.view.add_cue(record):
                self._tag_arrived.set()
        elif isinstance(record, records.Coverage):
            self.view.add_coverage(record)

    async def _poll_health(self) -> None:
        while True:
            health: dict[str, Any] = {}
            health["broker"], health["consumer_lag"] = await self._consumer_lag()
            health["performers"], health["clients"] = await self._capture_health()
            if self._counter_board is not None:
                # The session's cumulative counters, as /metrics exports them.
                health["counters"] = self._counter_board.of_session(self.session_id)
            self.view.set_health(health)
            await asyncio.sleep(HEALTH_INTERVAL_S)

    async def _consumer_lag(self) -> tuple[bool, dict[str, int]]:
        """Records each topic's processors still have to read (their committed offsets)."""
        session = self.view.session
        if session.state == "archived":  # its topics are gone: nothing left to lag on
            return self._broker_reachable, {}
        source_topics = [
            session.topics.audio,
            session.topics.video,
            session.topics.prosody,
            session.topics.face,
            topics.TAGS,
        ]
        partitions = [
            TopicPartition(topic, n)
            for topic in source_topics
            for n in range(self.settings.partitions)
        ]
        try:
            async with asyncio.timeout(2.0):
                if self._offsets is None:
                    # Reads the processors' group offsets; it never joins the group.
                    self._offsets = clients.make_consumer(
                        self.settings, group_id=topics.processors_group(self.session_id)
                    )
                    await self._offsets.start()
                ends = await self._consumer.end_offsets(partitions)
                committed = {tp: await self._offsets.committed(tp) for tp in partitions}
        except Exception as exc:
            log.debug("broker unreachable for the health view: %s", exc)
            self._broker_reachable = False
            return False, {}
        self._broker_reachable = True
        lag: dict[str, int] = {}
        for partition, end in ends.items():
            position = committed.get(partition) or 0
            lag[partition.topic] = lag.get(partition.topic, 0) + max(0, end - position)
        return True, lag

    async def _capture_health(self) -> tuple[dict[str, Any], list[Any]]:
        base = self.settings.capture_base_url
        # The capture server serves its metrics to loopback, or to holders of the token.
        headers = metrics_headers(self.settings)
        try:
            async with asyncio.timeout(2.0):
                async with self._http.get(f"{base}/metrics", headers=headers) as response:
                    response.raise_for_status()
                    metrics = await response.json()
                async with self._http.get(
                    f"{base}/metrics/clients", params={"session": self.session_id}, headers=headers
                ) as response:
                    response.raise_for_status()
                    client_clocks = await response.json()
        except aiohttp.ClientResponseError as exc:
            if exc.status in (401, 403) and not self._told_metrics_refused:
                # A misconfiguration, not an outage: the health panel would just stay empty.
                self._told_metrics_refused = True
                log.warning(
                    "the capture server refuses this dashboard its metrics (%s): set the same "
                    "metrics_token on both, or run them on one machine",
                    exc.status,
                )
            else:
                log.debug("capture server metrics unavailable: %s", exc)
            return {}, []
        except Exception as exc:
            log.debug("capture server metrics unavailable: %s", exc)
            return {}, []
        performers: dict[str, Any] = {}
        now = time.monotonic()
        for performer_id, stats in (metrics.get(self.session_id) or {}).items():
            previous = self._counters.get(performer_id)
            entry = {
                "frames_dropped": stats.get("video_frames_dropped", 0),
                "audio_dropped": stats.get("audio_chunks_dropped", 0),
                "video_fps_in": None,
                "video_fps_out": None,
            }
            if previous is not None:
                elapsed = max(now - previous[0], 1e-3)
                for name, key in (
                    ("video_fps_in", "video_frames_in"),
                    ("video_fps_out", "video_frames_out"),
                ):
                    delta = stats.get(key, 0) - previous[1].get(key, 0)
                    entry[name] = round(max(delta, 0) / elapsed, 1)
            self._counters[performer_id] = (now, stats)
            performers[performer_id] = entry
        return performers, list(client_clocks)


async def _partitions(consumer: Any, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()
    return set(consumer.partitions_for_topic(topic) or ())


class DashboardServer:
    """Idempotent ``start``/``stop``; ``url`` is where the dashboard is served."""

    def __init__(self, settings: Settings, *, secret: bytes) -> None:
        self.settings = settings
        self._secret = secret
        # Before any Kafka client exists: a bad certificate leaves nothing to close.
        self._ssl_context = server_ssl_context(settings)
        check_listen_address(
            settings, "the dashboard", settings.dashboard_host, tls=self._ssl_context is not None
        )
        # The capture server's /metrics may be served with the deployment's own
        # (self-signed) certificate: trust it next to the system's CAs.
        self._capture_trust = client_ssl_context(settings)
        # A director waits on each of the dashboard's few records (a cue above all): none
        # lingers for a batch.
        self._producer = clients.make_producer(settings, linger_ms=0)
        self._directory = SessionDirectory(
            settings, dead_letters=self._producer, service="livetag-dashboard"
        )
        self._feeds: dict[str, SessionFeed] = {}
        self._feed_lock = asyncio.Lock()
        self._http: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._mesh_edges: list[list[int]] | None = None
        self.clients: set[DashboardClient] = set()
        self.refusals: Counter[str] = Counter()
        self._metrics_guard = MetricsGuard(settings, self.refusals)
        # Open dashboards in total, per address and per session.
        self.gate = ConnectionGate.from_settings(settings)
        self._gate_sweeper: asyncio.Task[None] | None = None
        # Credentials and the withdrawn links (livetag.revocations, followed).
        self.access = credentials.Access(settings, secret)
        self._revocation_watcher: asyncio.Task[None] | None = None
        self._act_lock = asyncio.Lock()
        self._published: dict[str, records.SessionRecord] = {}
        # The director's actions beyond takes, end and links, by message type: each module
        # (cues, scenarios) registers its own handler; a reply is sent back to the page.
        self.director_actions: dict[str, DirectorAction] = {}
        # The byte cap of an action's messages where it is larger than the usual one
        # (the scenario editor sends whole scenarios).
        self.message_limits: dict[str, int] = {}
        # Imported here: dashboard.cues builds on this module.
        from dashboard import cues

        self.cues = cues.register(self)
        from dashboard import scenarios

        self.scenarios = scenarios.register(self)
        from dashboard import casting

        # The casting page of a casting day (/casting): who waits, matching, scenes.
        self.casting = casting.register(self)
        self.port = settings.dashboard_port
        self.counters = CounterBoard(settings)
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self.counters)

    @property
    def url(self) -> str:
        return f"{self.settings.web_scheme}://{self.settings.dashboard_host}:{self.port}"

    @property
    def producer(self) -> AIOKafkaProducer:
        """The dashboard's one producer (started with the server)."""
        return self._producer

    def session(self, session_id: str) -> records.SessionRecord | None:
        """The newest record of a session this server knows (followed or published)."""
        known = [self._directory.get(session_id), self._published.get(session_id)]
        newest = [record for record in known if record is not None]
        return max(newest, key=lambda record: record.ts_us) if newest else None

    def ended_at_us(self, session_id: str) -> int | None:
        """When a session ended, by the followed livetag.sessions (None: not over, or its
        end not read back yet)."""
        return self._directory.ended_at_us(session_id)

    async def start(self) -> None:
        if self._runner is not None:
            return
        async with clients.admin_client(self.settings) as admin:
            await topics.ensure_shared_topics(admin, self.settings)
        await self._producer.start()
        await self._directory.start()
        await self.scenarios.start()
        await self.casting.start()
        # Read whole before anyone is admitted: a revoked link never gets in.
        await self.access.start()
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._capture_trust))
        self._mesh_edges = await asyncio.to_thread(mesh_edges)
        app = web.Application()
        app.add_routes(
            [
                web.get("/dashboard", self._page),
                web.get("/ws/dashboard", self._websocket),
                web.get("/api/dashboard-token", self._token),
                web.post("/api/dashboard-token", self._token),
                web.post("/api/credential", self._credential),
                web.get("/dashboard/credentials.js", self._credentials_script),
                # Loopback (or metrics_token) only; a failure answers 500, never more.
                web.get("/metrics", self._metrics_guard.wrap(self._prometheus_metrics)),
                web.get("/metrics/clients", self._metrics_guard.wrap(self._metrics)),
                web.static("/dashboard/static", PAGES),
            ]
        )
        self.casting.add_routes(app)
        self._runner = web.AppRunner(
            app, handle_signals=False, access_log=access_log(), access_log_class=AccessLogger
        )
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.settings.dashboard_host,
            self.settings.dashboard_port,
            ssl_context=self._ssl_context,
        )
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise RuntimeError(
                f"the dashboard cannot listen on {self.settings.dashboard_host}:"
                f"{self.settings.dashboard_port}: {exc.strerror}. Free the port or set "
                "LIVETAG_DASHBOARD_PORT."
            ) from None
        self.port = int(self._runner.addresses[0][1])
        self._reaper = background.start(self._reap_idle_feeds, "dashboard-reaper")
        self._watcher = background.start(self._follow_sessions, "dashboard-sessions")
        self._gate_sweeper = background.start(lambda: keep_swept(self.gate), "dashboard-gate")
        self._revocation_watcher = background.start(
            lambda: self.access.close_revoked(lambda: list(self.clients)),
            "dashboard-revocations",
        )
        self.counters.start()
        log.info("dashboard on %s", self.url)

    async def stop(self) -> None:
        await background.cancel(
            self._reaper, self._watcher, self._gate_sweeper, self._revocation_watcher
        )
        self._reaper = self._watcher = self._gate_sweeper = self._revocation_watcher = None
        await self.counters.stop()
        for client in list(self.clients):
            await client.close()
        for feed in list(self._feeds.values()):
            await feed.stop()
        self._feeds.clear()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self.access.stop()
        await self.casting.stop()
        await self.scenarios.stop()
        await self._directory.stop()
        await self._producer.stop()

    # ---------------------------------------------------------------- HTTP

    async def _admit(
        self,
        request: web.Request,
        *,
        counted: bool = True,
        token: str | None = None,
        kind: credentials.Kind = "session",
    ) -> tuple[tokens.JoinToken, records.SessionRecord] | web.Response:
        """The caller's claims and session, or the refusal (``counted`` for the websocket;
        the page and the "why was I refused" probe would count the same refusal again).
        ``token``: the one to check (default: the credential the request carries);
        ``kind``: what it must be (a credential, except for the exchange of a link)."""
        try:
            if token is None and kind == "session":
                token = credentials.presented_token(request)
            claims = tokens.verify(self._secret, token)
        except tokens.TokenError as exc:
            return credentials.token_refusal(self._refuse, exc, counted=counted)
        # The role first: a performer's link is told where it belongs, whatever its kind.
        if claims.role not in _DASHBOARD_ROLES:
            message = "the dashboard opens with a director's or an observer's link"
            return self._refuse(403, "not_director", message, counted=counted)
        try:
            claims = self.access.verified(token, kind)
        except tokens.TokenError as exc:
            return credentials.token_refusal(self._refuse, exc, counted=counted)
        session = self._directory.get(claims.session_id)
        if session is None:
            with contextlib.suppress(TimeoutError):
                session = await self._directory.wait_for(claims.session_id, timeout_s=2.0)
        if session is None:
            message = f"no session {claims.session_id!r}"
            return self._refuse(404, "unknown_session", message, counted=counted)
        return claims, session

    def _refuse(self, status: int, code: str, message: str, *, counted: bool) -> web.Response:
        if counted:
            self.refusals[code] += 1
        # Readable from the capture origin too: the call page asks before it opens.
        return web.json_response(
            {"type": "error", "code": code, "message": message},
            status=status,
            headers={"Access-Control-Allow-Origin": "*"},
        )

    async def _page(self, request: web.Request) -> web.StreamResponse:
        # Served whatever the link: the page's exchange (a POST) says what is wrong with
        # it. An error status here would make the browser print the page's address, the
        # link's token in it, in its console; and after a reload the address has no token
        # (the page keeps it in the tab's sessionStorage). No Referer may carry the token
        # to the scripts' servers, no cache keep the page.
        return web.FileResponse(PAGES / "dashboard.html", headers=credentials.PAGE_HEADERS)

    async def _credentials_script(self, request: web.Request) -> web.FileResponse:
        # The call page's link handling, served here too: the dashboard needs it before it
        # knows the capture server's address.
        return web.FileResponse(CREDENTIALS_SCRIPT)

    async def _credential(self, request: web.Request) -> web.Response:
        return await credentials.exchange_endpoint(request, self.access, self._admit, self._refuse)

    async def _token(self, request: web.Request) -> web.Response:
        return await credentials.probe_endpoint(
            request, self._admit, self._refuse, self.gate, "dashboard"
        )

    async def _prometheus_metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "clients": [client.stats() for client in self.clients],
                "refusals": dict(self.refusals),
                "background_restarts": dict(background.RESTARTS),
                "session_directory": self._directory.counters(),
                "cues": self.cues.metrics(),
                # The casting page's scenes and refusals, and what its followers skipped.
                "casting": {
                    "counters": dict(self.casting.counters),
                    "days": self.casting.days.counters(),
                    "lobby": self.casting.lobby.counters(),
                    "coverage": self.casting.coverage.counters(),
                },
                "scenarios": {
                    "saved": self.scenarios.saved,
                    "deleted": self.scenarios.deleted,
                    "library": self.scenarios.library.counters(),
                },
                "feeds": {
                    session_id: {
                        "clients": feed.clients,
                        "undecodable": feed.undecodable,
                        "rating_batches_repeated": feed.view.rating_batches_repeated,
                    }
                    for session_id, feed in self._feeds.items()
                },
            }
        )

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        async with credentials.admitted_websocket(
            request, self.gate, self._admit, self._refuse, "dashboard"
        ) as admitted:
            if isinstance(admitted, web.Response):
                return admitted
            ticket, claims, session = admitted
            ws = websocket_response(self.settings, max_msg_size=64 * 1024)
            await ws.prepare(request)
            watch_websocket(ticket, request, ws)
            _limit_send_buffer(request)
            feed = await self._feed_for(session)
            client = DashboardClient(self, feed, ws, claims, request.transport)
            self.clients.add(client)
            try:
                await client.run(self._hello(feed, claims))
            finally:
                feed.clients -= 1
                if feed.clients == 0:
                    feed.idle_since = time.monotonic()
                self.clients.discard(client)
                await client.close()
        return ws

    def _hello(self, feed: SessionFeed, claims: tokens.JoinToken) -> dict[str, Any]:
        # No links are made here: a director asks for one when they need it ("invite"),
        # so every link has a token id someone chose to issue.
        director = claims.role == "director"
        return {
            **feed.view.hello(claims.role, claims.participant_id),
            "capture_url": self.settings.capture_base_url,
            "window_s": 30,
            "mesh_edges": self._mesh_edges or [],
            "you": {
                "rater_id": claims.participant_id,
                "role": claims.role,
                # Takes, the session's end and new links are the director's; an observer
                # watches and tags.
                "controls": director,
            },
        }

    def invite(
        self, session_id: str, role: str, name: str | None, page: str | None
    ) -> dict[str, Any]:
        """A new join link, asked for from a director's dashboard."""
        session = self.session(session_id)
        if session is None:
            raise ActionError("unknown_session", "the session record is not known yet")
        if role not in ("performer", "observer") or page not in (None, "call", "dashboard"):
            raise ActionError("malformed", "invite a performer or an observer")
        try:
            link = tokens.invite(
                self.settings,
                session,
                self._secret,
                role="performer" if role == "performer" else "observer",
                name=name,
                page="call" if page == "call" else ("dashboard" if page else None),
            )
        except tokens.InviteError as exc:
            raise ActionError("bad_invite", str(exc)) from None
        log.info(
            "link %s issued from the dashboard for %s %s of %s",
            link.token_id,
            link.role,
            link.participant_id,
            session_id,
        )
        return {
            "type": "invite",
            "role": link.role,
            "participant_id": link.participant_id,
            "page": link.page,
            "url": link.url,
            "token_id": link.token_id,
            "expires_at_s": link.expires_at_s,
        }

    # ---------------------------------------------------------------- feeds

    async def _feed_for(self, session: records.SessionRecord) -> SessionFeed:
        async with self._feed_lock:
            feed = self._feeds.get(session.session_id)
            if feed is None:
                assert self._http is not None
                feed = SessionFeed(self.settings, session, self._http, self.counters)
                await feed.start()
                self._feeds[session.session_id] = feed
            feed.clients += 1
            feed.idle_since = None
            return feed

    async def _reap_idle_feeds(self) -> None:
        while True:
            await asyncio.sleep(5.0)
            async with self._feed_lock:
                for session_id, feed in list(self._feeds.items()):
                    idle = feed.idle_since
                    if feed.clients == 0 and idle and time.monotonic() - idle > FEED_LINGER_S:
                        del self._feeds[session_id]
                        await feed.stop()

    async def _follow_sessions(self) -> None:
        while True:
            await self._directory.changed(timeout_s=5.0)
            for feed in list(self._feeds.values()):
                latest = self._directory.get(feed.session_id)
                if latest is not None:
                    feed.view.add_session(latest)

    async def act(self, session_id: str, action: str) -> None:
        """Take start / take end / end session: a new version of the session record."""
        async with self._act_lock:
            await self._act(session_id, action)

    async def _act(self, session_id: str, action: str) -> None:
        # Built on the newest copy known: the directory may not have seen what this server
        # published a moment ago (a take end right after a take start).
        current = self.session(session_id)
        if current is None:
            raise ActionError("unknown_session", "the session record is not known yet")
        try:
            record = apply_action(
                current,
                action,
                stamp_us=now_us(),
                max_takes=self.settings.max_takes_per_session,
            )
        except SessionActionError as exc:
            if exc.code == "too_many_takes":
                self.refusals["too_many_takes"] += 1
            raise ActionError(exc.code, exc.message) from None
        await publish(self._producer, record)
        self._published[session_id] = record
        feed = self._feeds.get(session_id)
        if feed is not None:
            feed.view.add_session(record)


#: A director's action: the client that sent it and its message; the reply to send, if any.
#: Raise :class:`ActionError` to refuse it with a code.
DirectorAction = Callable[["DashboardClient", dict[str, Any]], Awaitable[dict[str, Any] | None]]


class ActionError(RefusedError, ValueError):
    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


#: A dashboard's message is a type and little else: anything larger is not one of its.
MAX_DASHBOARD_MESSAGE_BYTES = 4096


def parse_dashboard_message(
    raw: str | bytes, limits: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """A dashboard's message: a JSON object with a string ``type``, at most
    MAX_DASHBOARD_MESSAGE_BYTES, or for a type in ``limits`` at most that many bytes;
    otherwise :class:`ActionError` ``malformed`` with the reason."""
    largest = max([MAX_DASHBOARD_MESSAGE_BYTES, *(limits or {}).values()])
    try:
        message = strict_json.loads_object(raw, max_bytes=largest)
    except strict_json.JsonInputError as exc:
        raise ActionError("malformed", exc.reason) from None
    if not isinstance(message.get("type"), str):
        raise ActionError("malformed", "a message needs a type")
    limit = (limits or {}).get(message["type"], MAX_DASHBOARD_MESSAGE_BYTES)
    size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    if size > limit:
        raise ActionError("malformed", f"{size} bytes, more than the {limit} accepted")
    return message


#: A page's own id for a request (a number or a short string), echoed in its answer.
MAX_REQUEST_ID_CHARS = 64


def echoed_request_id(message: dict[str, Any]) -> int | str | None:
    """The request's ``request_id`` to echo with its answer or refusal (None: it has
    none, or none that can be echoed: a page's id is a number or a short string)."""
    request_id = message.get("request_id")
    if isinstance(request_id, bool) or not isinstance(request_id, int | str):
        return None
    if isinstance(request_id, str) and len(request_id) > MAX_REQUEST_ID_CHARS:
        return None
    return request_id


class DashboardClient:
    """One open dashboard: its cursor and its sender; no queue."""

    def __init__(
        self,
        server: DashboardServer,
        feed: SessionFeed,
        ws: web.WebSocketResponse,
        claims: tokens.JoinToken,
        transport: asyncio.Transport | None,
    ) -> None:
        self.server = server
        self.feed = feed
        self.ws = ws
        self.transport = transport
        self.claims = claims
        # The role rides in the cursor: an observer is never sent what was intended.
        self.cursor = ClientCursor(role=claims.role)
        self.sent_updates = 0
        self.sent_bytes = 0
        self.skipped_ticks = 0
        self.largest_update = 0
        self._sender: asyncio.Task[None] | None = None
        self._renewal: asyncio.Task[None] | None = None
        self._closed = False

    def stats(self) -> dict[str, Any]:
        return {
            "session_id": self.feed.session_id,
            "sent_updates": self.sent_updates,
            "sent_bytes": self.sent_bytes,
            "skipped_ticks": self.skipped_ticks,
            "largest_update_bytes": self.largest_update,
            "pending_bytes": 0
            if self.transport is None
            else int(self.transport.get_write_buffer_size()),
        }

    async def run(self, hello: dict[str, Any]) -> None:
        await self._send(json.dumps(hello))
        self._sender = asyncio.create_task(self._send_updates(), name="dashboard-sender")
        self._renewal = asyncio.create_task(
            self.server.access.keep_renewed(self.claims, self._send_message, self.end_access),
            name="dashboard-credential-renewal",
        )
        async for message in self.ws:
            if message.type == WSMsgType.TEXT:
                await self._handle(message.data)
            elif message.type == WSMsgType.ERROR:
                # aiohttp closes a websocket whose frame is over its limit (1009) or breaks
                # the protocol: counted like any other refused input.
                self.server.refusals[failure_code(self.ws)] += 1
                break

    async def _handle(self, raw: str) -> None:
        request_id: int | str | None = None
        try:
            message = parse_dashboard_message(raw, self.server.message_limits)
            request_id = echoed_request_id(message)
            action = message["type"]
            extra = self.server.director_actions.get(action)
            if action not in ("take_start", "take_end", "end_session", "invite") and not extra:
                known = ", ".join(
                    [
                        "take_start",
                        "take_end",
                        "end_session",
                        "invite",
                        *self.server.director_actions,
                    ]
                )
                raise ActionError("malformed", f"expected one of {known}")
            if self.claims.role != "director":
                # An observer's dashboard is read-only, whatever its page sends.
                self.server.refusals["forbidden"] += 1
                raise ActionError(
                    "forbidden",
                    "an observer watches and tags: takes, the session's end and new links "
                    "are the director's",
                )
            if extra is not None:
                reply = await extra(self, message)
                if reply is not None:
                    await self._send_message(reply)
                return
            if action == "invite":
                name, page = message.get("name"), message.get("page")
                await self._send_message(
                    self.server.invite(
                        self.feed.session_id,
                        str(message.get("role")),
                        name if isinstance(name, str) else None,
                        page if isinstance(page, str) else None,
                    )
                )
                return
            await self.server.act(self.feed.session_id, action)
        except ActionError as exc:
            if exc.code == "malformed":
                self.server.refusals["malformed"] += 1
            await self._send_error(exc.code, exc.message, request_id)
        except Exception as exc:  # the broker refused: say so, keep the dashboard
            log.warning("dashboard action failed: %s", exc)
            await self._send_error("unavailable", f"could not record it: {exc}", request_id)

    async def _send_error(
        self, code: str, message: str, request_id: int | str | None = None
    ) -> None:
        error: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if request_id is not None:
            error["request_id"] = request_id  # the page knows which of its requests failed
        await self._send(json.dumps(error))

    async def _send_message(self, message: dict[str, Any]) -> None:
        await self._send(json.dumps(message))

    async def end_access(self, code: str, message: str) -> None:
        """The link was revoked or ran out: say why, then close (the page stops
        reconnecting on these close codes)."""
        self.server.refusals[code] += 1
        await credentials.end_connection(
            self.ws,
            self._send_error(code, message),
            code,
            message,
            self.server.settings.ws_close_timeout_s,
        )

    async def _send_updates(self) -> None:
        seen = self.feed.tick
        timeout = self.server.settings.dashboard_send_timeout_s
        while not self.ws.closed:
            tick = await self.feed.next_tick(seen)
            self.skipped_ticks += tick - seen - 1
            seen = tick
            text = self.feed_update()
            if text is None:
                continue
            try:
                async with asyncio.timeout(timeout):
                    await self._send(text)
            except TimeoutError:
                # A polite close would wait on the same full socket: cut the connection.
                log.info("a dashboard took no update for %.0f s: disconnecting it", timeout)
                transport = self.transport
                if transport is not None:
                    transport.abort()
                return

    def feed_update(self) -> str | None:
        """This tick's update for this client; clients at the same cursor share one text."""
        return _shared_update(self.feed, self.cursor)

    async def _send(self, text: str) -> None:
        if self.ws.closed:
            return
        # ConnectionError: a connection lost (or cut) while the send waited to drain.
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_str(text)
            self.sent_updates += 1
            self.sent_bytes += len(text)
            self.largest_update = max(self.largest_update, len(text))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [task for task in (self._renewal, self._sender) if task is not None]
        for task in tasks:
            task.cancel()
        # A task that failed must not stop the close half-way.
        for task, outcome in zip(
            tasks, await asyncio.gather(*tasks, return_exceptions=True), strict=True
        ):
            if isinstance(outcome, Exception):
                log.error("a dashboard's %s failed: %r", task.get_name(), outcome)
        with contextlib.suppress(Exception):
            await self.ws.close()


def _shared_update(feed: SessionFeed, cursor: ClientCursor) -> str | None:
    # Per tick of this feed: the first client at a cursor builds and encodes the update,
    # the others at that cursor reuse the text and jump to the same new cursor.
    if feed.cache_tick != feed.tick:
        feed.update_cache.clear()
        feed.cache_tick = feed.tick
    cache = feed.update_cache
    key = cursor.key()
    hit = cache.get(key)
    if hit is None:
        update = feed.view.update_for(cursor, now_us())
        text = None if update is None else json.dumps(update, separators=(",", ":"))
        cache[key] = (text, cursor.copy())
        return text
    text, after = hit
    cursor.take(after)
    return text


def _limit_send_buffer(request: web.Request) -> None:
    # A client that stops reading can hold at most this much in the kernel, and is seen
    # as stalled (and later dropped) after seconds, not after megabytes.
    transport = request.transport
    raw = None if transport is None else transport.get_extra_info("socket")
    if raw is not None:
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CLIENT_SEND_BUFFER_BYTES)
