"""The director's casting page: who waits in the lobby, the scenes of the day, matching.

HTTP routes (added to the dashboard server's table)
  GET  /casting                 the casting page (the director's day link: /casting?token=T)
  GET  /ws/casting              its websocket (a day credential, scope "day", director)
  POST /api/casting-credential  a day link exchanged for a day credential
  POST /api/casting-token       why a day link or credential would be refused

The page sees, live: each performer of the day (waiting since when, with their device
check from ``livetag.lobby``; in a scene; away), the scenes played and running (from
``livetag.casting``, their sessions' states from ``livetag.sessions``), the scenario
library and each performer's agreed seconds per emotion across the day
(``livetag.coverage``). The director picks performers and a scenario (and roles) and
starts a scene, or asks for proposals (dashboard.matching) and approves one. A scene is a
session (its record carries the day id, the scenario and the roles) and a new SceneRef of
the day, which the lobby (capture.lobby) follows to send the performers to the call page.
When the scene's session is over, its SceneRef gets ``ended_ts_us`` and the performers,
back in the lobby, wait again. Take 1 of a scene starts by itself once every performer of
the scene has joined its call (the session record's presence), through the dashboard's
own take action (:meth:`DashboardServer.act`), so the scenario's arc runs from it; unless
the director started the scene with ``auto_take`` false, or started a take first.

Messages from the page: ``propose`` {size?, scenario_id?}, ``start_scene`` {performers,
scenario_id?, roles?, prompt?, auto_take? (default true)}, ``scene_link`` {session_id},
``end_scene`` {session_id}.
Refusals are ``{"type": "error", "code", "message"}`` with the codes of :data:`CODES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import WSMsgType, web

from dashboard import matching
from streams import records, strict_json
from streams.errors import RefusedError
from streams.kafka import casting, topics
from streams.kafka.sessions import apply_action, is_over, new_session_id, open_session, publish
from streams.labels.ledger import day_gaps
from streams.runtime import background
from streams.runtime.connection_gate import (
    failure_code,
    send_json,
    watch_websocket,
    websocket_response,
)
from streams.scenarios import RoleAssignmentError, assign_roles
from streams.session_clock import now_us
from taggers import credentials, tokens

if TYPE_CHECKING:
    from dashboard.server import DashboardServer

log = logging.getLogger(__name__)

PAGES = Path(str(resources.files("dashboard") / "static"))
PAGE_KIND = "casting"
#: A casting page's message: a few ids and perhaps a prompt.
MAX_MESSAGE_BYTES = 16 * 1024
#: The page is sent the day's state when it changed, at most this often.
PUSH_INTERVAL_S = 0.25
#: A scene without a scenario gets this prompt unless the director writes one.
DEFAULT_PROMPT = "Improvise a scene together."
MAX_SCENE_PERFORMERS = 16
#: Every refusal code of the casting page's actions.
CODES = (
    "malformed",
    "unknown_performer",
    "not_waiting",
    "unknown_scenario",
    "too_few_roles",
    "bad_roles",
    "unknown_label",
    "day_closed",
    "unknown_scene",
    "unavailable",
)


class CastingActionError(RefusedError, ValueError):
    """A director's casting action refused; ``code`` is one of :data:`CODES`."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


def _ended_us(session: records.SessionRecord, ended_at_us: int | None) -> int:
    """When an over session ended: the first over version's stamp the session directory
    saw (``ended_at_us``; a take that ended long before says nothing of it), else this
    version's (later, never earlier)."""
    return session.ts_us if ended_at_us is None else ended_at_us


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise CastingActionError("malformed", f"{what} must be a list of ids")
    return list(value)


class CastingDesk:
    """The casting page's side of a dashboard server: the days, the lobby, the coverage,
    the scenes started from it."""

    def __init__(self, server: DashboardServer) -> None:
        self.server = server
        settings = server.settings
        self.settings = settings
        producer = server.producer
        self.days = casting.CastingDays(
            settings, dead_letters=producer, service="livetag-dashboard"
        )
        self.lobby = casting.LobbyBoard(
            settings, dead_letters=producer, service="livetag-dashboard"
        )
        self.coverage = casting.CoverageBoard(
            settings, dead_letters=producer, service="livetag-dashboard"
        )
        self.clients: set[CastingClient] = set()
        # The newest version of each day this server published (the follower may not have
        # read it back yet).
        self._published: dict[str, records.CastingDay] = {}
        self._day_lock = asyncio.Lock()
        self._poke = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        # The scenes whose take 1 starts once all their performers have joined: session id
        # -> performers (kept by this server only: after its restart the director starts it).
        self._auto_takes: dict[str, frozenset[str]] = {}
        #: Scenes started and ended from here, takes started, refusals by code: never reset.
        self.counters: Counter[str] = Counter()

    # ---------------------------------------------------------------- life

    async def start(self) -> None:
        await self.days.start()
        await self.lobby.start()
        await self.coverage.start()
        self._tasks = [
            background.start(self._end_scenes, "casting-scene-ends"),
            background.start(self._start_takes, "casting-take-starts"),
            background.start(self._push, "casting-push"),
            background.start(
                lambda: self.server.access.close_revoked(lambda: list(self.clients)),
                "casting-revocations",
            ),
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await background.cancel(*tasks)
        for client in list(self.clients):
            await client.close()
        await self.coverage.stop()
        await self.lobby.stop()
        await self.days.stop()

    def add_routes(self, app: web.Application) -> None:
        app.add_routes(
            [
                web.get("/casting", self._page),
                web.get("/ws/casting", self._websocket),
                web.post("/api/casting-credential", self._credential),
                web.post("/api/casting-token", self._probe),
            ]
        )

    # ---------------------------------------------------------------- state

    def day(self, day_id: str) -> records.CastingDay | None:
        known = [self.days.get(day_id), self._published.get(day_id)]
        newest = [day for day in known if day is not None]
        if not newest:
            return None
        day = max(newest, key=lambda d: d.ts_us)
        if any(d.state == "closed" for d in newest):
            day = day.model_copy(update={"state": "closed"})
        return day

    def _scene_state(self, scene: records.SceneRef) -> str | None:
        session = self.server.session(scene.session_id)
        return None if session is None else session.state

    def _running(self, day: records.CastingDay, performer_id: str) -> records.SceneRef | None:
        scene = casting.scene_of(day, performer_id)
        if scene is None:
            return None
        session = self.server.session(scene.session_id)
        return None if session is not None and is_over(session) else scene

    def waiting(self, day: records.CastingDay) -> list[matching.Waiting]:
        """Who waits in the lobby and is in no running scene, longest first."""
        found = []
        for performer in day.roster:
            presence = self.lobby.presence(day.day_id, performer.performer_id)
            if presence is None or not presence.waiting:
                continue
            if self._running(day, performer.performer_id) is not None:
                continue
            found.append(matching.Waiting(performer.performer_id, presence.since_ts_us))
        return sorted(found, key=lambda w: (w.since_us, w.performer_id))

    def agreed(self, day: records.CastingDay) -> dict[str, dict[str, float]]:
        """Each performer's agreed seconds per emotion over the day's scenes."""
        scenes = {scene.session_id for scene in day.scenes}
        return day_gaps(self.coverage.of_sessions(scenes))

    def scenarios(self, day: records.CastingDay) -> list[records.Scenario]:
        """The library's scenarios this day's vocabulary can play."""
        labels = {entry.label for entry in day.vocabulary}
        return [s for s in self.server.scenarios.library.all() if s.labels() <= labels]

    def snapshot(self, day: records.CastingDay) -> dict[str, Any]:
        """What the casting page shows of the day."""
        partners = casting.partner_counts(day.scenes)
        agreed = self.agreed(day)
        waiting = {w.performer_id for w in self.waiting(day)}
        performers = []
        for performer in day.roster:
            pid = performer.performer_id
            presence = self.lobby.presence(day.day_id, pid)
            running = self._running(day, pid)
            status = "in_scene" if running else "waiting" if pid in waiting else "away"
            performers.append(
                {
                    "performer_id": pid,
                    "display_name": performer.display_name,
                    "status": status,
                    "since_us": None if presence is None else presence.since_ts_us,
                    "check": None
                    if presence is None or presence.check is None
                    else presence.check.model_dump(),
                    "scene": None if running is None else running.session_id,
                    "scenes": sum(1 for scene in day.scenes if pid in scene.performers),
                    "partners": {
                        next(iter(pair - {pid})): count
                        for pair, count in partners.items()
                        if pid in pair
                    },
                    "agreed": agreed.get(pid, {}),
                }
            )
        return {
            "type": "day",
            "day_id": day.day_id,
            "title": day.title,
            "state": day.state,
            "server_now_us": now_us(),
            "performers": performers,
            "scenes": [
                {**scene.model_dump(), "state": self._scene_state(scene)}
                for scene in reversed(day.scenes)
            ],
            "scenarios": [
                {
                    "scenario_id": s.scenario_id,
                    "title": s.title,
                    "prompt": s.prompt,
                    "roles": [role.name for role in s.roles],
                    "targets": sorted(s.labels()),
                    "duration_s": s.duration_s,
                }
                for s in self.scenarios(day)
            ],
            "vocabulary": [entry.label for entry in day.vocabulary],
        }

    async def _push(self) -> None:
        """Each casting page gets the day's state when it changed (coalesced)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PUSH_INTERVAL_S):
                    await self._poke.wait()
            self._poke.clear()
            by_day: dict[str, tuple[str, dict[str, Any]] | None] = {}
            for client in list(self.clients):
                if client.day_id not in by_day:
                    day = self.day(client.day_id)
                    if day is None:
                        by_day[client.day_id] = None
                    else:
                        state = self.snapshot(day)
                        # What changes by itself (the clock) is not news.
                        news = {k: v for k, v in state.items() if k != "server_now_us"}
                        by_day[client.day_id] = (json.dumps(news, sort_keys=True), state)
                found = by_day[client.day_id]
                if found is None or found[0] == client.last_state:
                    continue
                client.last_state = found[0]
                # A page that reads nothing must not hold up the others.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(2.0):
                        await client.send(found[1])

    def poke(self) -> None:
        self._poke.set()

    async def _end_scenes(self) -> None:
        """A scene whose session is over ends on the day (its performers wait again)."""
        while True:
            await asyncio.sleep(0.5)
            for day_id in {d.day_id for d in self.days.values()} | set(self._published):
                day = self.day(day_id)
                if day is None or not casting.running_scenes(day):
                    continue
                ended: dict[str, int] = {}
                for scene in casting.running_scenes(day):
                    session = self.server.session(scene.session_id)
                    if session is not None and is_over(session):
                        ended_at = self.server.ended_at_us(scene.session_id)
                        ended[scene.session_id] = _ended_us(session, ended_at)
                if not ended:
                    continue
                try:
                    async with self._day_lock:
                        current = self.day(day_id)
                        updated = (
                            None
                            if current is None
                            else casting.with_scenes_ended(current, ended, stamp_us=now_us())
                        )
                        if updated is not None:
                            await self._publish(updated)
                            self.counters["scenes_ended"] += len(ended)
                except Exception as exc:  # the broker away: the next round tries again
                    log.warning("casting: ending the scenes of %s failed: %s", day_id, exc)

    async def _start_takes(self) -> None:
        """Take 1 of each scene waiting for it, once all its performers are in the call."""
        while True:
            await asyncio.sleep(0.5)
            for session_id, performers in list(self._auto_takes.items()):
                await self.start_take_when_all_in(session_id, performers)

    async def start_take_when_all_in(self, session_id: str, performers: frozenset[str]) -> None:
        """Start take 1 of the scene if every performer has joined (the dashboard's take
        action); forget the scene once it has a take or is over."""
        from dashboard.server import ActionError

        session = self.server.session(session_id)
        if session is None:
            return  # not read back yet
        if is_over(session) or session.takes:
            self._auto_takes.pop(session_id, None)  # over, or the director was first
            return
        connected = {
            p.participant_id for p in session.presence if p.role == "performer" and p.connected
        }
        if not performers <= connected:
            return
        try:
            await self.server.act(session_id, "take_start")
        except ActionError as exc:
            if exc.code in ("take_open", "session_ended", "too_many_takes"):
                self._auto_takes.pop(session_id, None)
            self.counters[f"auto_take_refused_{exc.code}"] += 1
            log.warning("casting: take 1 of %s not started: %s", session_id, exc.message)
            return
        except Exception as exc:  # the broker away: the next round tries again
            self.counters["auto_take_failures"] += 1
            log.warning("casting: starting take 1 of %s failed: %s", session_id, exc)
            return
        self._auto_takes.pop(session_id, None)
        self.counters["takes_started"] += 1
        log.info("casting: take 1 of %s started, every performer joined", session_id)

    async def _abandon(self, record: records.SessionRecord) -> None:
        """End a scene's session that no SceneRef names (its day could not be published):
        no one would ever end it, and its performers would wait in the lobby meanwhile."""
        self.counters["scenes_abandoned"] += 1
        try:
            ended = apply_action(
                record,
                "end_session",
                stamp_us=now_us(),
                max_takes=self.settings.max_takes_per_session,
            )
            await publish(self.server.producer, ended)
        except Exception:
            self.counters["abandoned_not_ended"] += 1
            log.exception("casting: session %s of no scene could not be ended", record.session_id)

    async def _publish(self, day: records.CastingDay) -> None:
        await casting.publish_day(self.server.producer, day)
        self._published[day.day_id] = day
        self.poke()

    # ---------------------------------------------------------------- actions

    def propose(
        self, day_id: str, *, size: int | None = None, scenario_id: str | None = None
    ) -> list[matching.Proposal]:
        day = self._open_day(day_id)
        scenarios = self.scenarios(day)
        if scenario_id is not None:
            chosen = self._scenario(day, scenario_id)
            scenarios = [chosen]
            size = size or len(chosen.roles)
        if size is not None and not 1 <= size <= MAX_SCENE_PERFORMERS:
            raise CastingActionError(
                "malformed", f"a group is 1 to {MAX_SCENE_PERFORMERS} performers"
            )
        return matching.propose(
            self.waiting(day),
            scenes=day.scenes,
            scenarios=scenarios,
            agreed=self.agreed(day),
            now_us=now_us(),
            group_size=size,
        )

    def _open_day(self, day_id: str) -> records.CastingDay:
        day = self.day(day_id)
        if day is None:
            raise CastingActionError("day_closed", f"no casting day {day_id!r}")
        if day.state == "closed":
            raise CastingActionError("day_closed", f"casting day {day_id} is closed")
        return day

    def _scenario(self, day: records.CastingDay, scenario_id: str) -> records.Scenario:
        scenario = self.server.scenarios.library.get(scenario_id)
        if scenario is None:
            raise CastingActionError(
                "unknown_scenario", f"no scenario {scenario_id!r} in the library"
            )
        unknown = scenario.labels() - {entry.label for entry in day.vocabulary}
        if unknown:
            raise CastingActionError(
                "unknown_label",
                f"scenario {scenario_id!r} names {', '.join(sorted(unknown))}: not in the day's "
                "vocabulary",
            )
        return scenario

    async def start_scene(
        self,
        day_id: str,
        performers: Sequence[str],
        *,
        scenario_id: str | None = None,
        roles: dict[str, str] | None = None,
        prompt: str | None = None,
        auto_take: bool = True,
    ) -> records.SessionRecord:
        """A new scene: its session (topics and record: the day's vocabulary, the
        scenario, the roles, the day id), then its SceneRef on the day; ``auto_take``:
        take 1 starts once every performer has joined."""
        async with self._day_lock:
            day = self._open_day(day_id)
            if not performers or len(performers) > MAX_SCENE_PERFORMERS:
                raise CastingActionError(
                    "malformed", f"a scene has 1 to {MAX_SCENE_PERFORMERS} performers"
                )
            if len(set(performers)) != len(performers):
                raise CastingActionError("malformed", "a performer is named twice")
            roster = {performer.performer_id: performer for performer in day.roster}
            strangers = [p for p in performers if p not in roster]
            if strangers:
                raise CastingActionError(
                    "unknown_performer",
                    f"{', '.join(strangers)}: not on the roster of casting day {day_id}",
                )
            waiting = {w.performer_id for w in self.waiting(day)}
            absent = [p for p in performers if p not in waiting]
            if absent:
                raise CastingActionError(
                    "not_waiting", f"{', '.join(absent)}: not waiting in the lobby"
                )
            scenario = None if scenario_id is None else self._scenario(day, scenario_id)
            parts: dict[str, str] = {}
            if scenario is not None:
                if len(scenario.roles) < len(performers):
                    raise CastingActionError(
                        "too_few_roles",
                        f"scenario {scenario.scenario_id!r} has {len(scenario.roles)} roles "
                        f"for {len(performers)} performers",
                    )
                try:
                    parts = assign_roles(scenario, performers, roles or {})
                except RoleAssignmentError as exc:
                    raise CastingActionError("bad_roles", str(exc)) from None
            elif roles:
                raise CastingActionError("bad_roles", "roles are parts of a scenario: choose one")
            text = (prompt or "").strip() or (scenario.prompt if scenario else DEFAULT_PROMPT)
            created = now_us()
            session_id = new_session_id()
            try:
                record = records.SessionRecord(
                    ts_us=created,
                    session_id=session_id,
                    created_ts_us=created,
                    prompt=text,
                    roster=[roster[p] for p in performers],
                    vocabulary=list(day.vocabulary),
                    state="created",
                    topics=topics.session_topic_names(session_id),
                    scenario=scenario,
                    roles=parts,
                    day_id=day.day_id,
                )
            except ValueError as exc:  # pydantic's: a prompt too long, say
                raise CastingActionError("malformed", f"the scene cannot be made: {exc}") from None
            scene = records.SceneRef(
                session_id=record.session_id,
                performers=list(performers),
                scenario_id=None if scenario is None else scenario.scenario_id,
                roles=parts,
                started_ts_us=created,
            )
            try:
                updated = casting.with_scene(day, scene, stamp_us=now_us())
            except casting.CastingError as exc:
                raise CastingActionError(exc.code, exc.message) from None
            try:
                # The session first: the lobby sends performers to it once the day names it.
                await open_session(self.settings, record, self.server.producer)
            except Exception as exc:
                raise CastingActionError(
                    "unavailable", f"the scene could not be recorded: {exc}"
                ) from None
            try:
                await self._publish(updated)
            except Exception as exc:
                await self._abandon(record)
                raise CastingActionError(
                    "unavailable", f"the scene could not be put on the day: {exc}"
                ) from None
            if auto_take:
                self._auto_takes[record.session_id] = frozenset(performers)
        self.counters["scenes_started"] += 1
        log.info(
            "casting day %s: scene %s started with %s",
            day_id,
            record.session_id,
            ", ".join(performers),
        )
        return record

    def scene_link(
        self, day_id: str, session_id: str, session: records.SessionRecord | None = None
    ) -> str:
        """A new director link to a scene's dashboard (relative: this server serves it);
        ``session``: its record, when it is not read back yet (a scene just started)."""
        day = self.day(day_id)
        if day is None or session_id not in {scene.session_id for scene in day.scenes}:
            raise CastingActionError("unknown_scene", f"no scene {session_id!r} on this day")
        session = self.server.session(session_id) or session
        if session is None:
            raise CastingActionError("unknown_scene", f"session {session_id} is not known yet")
        try:
            link = tokens.invite(self.settings, session, self.server.access.secret, role="director")
        except tokens.InviteError as exc:
            raise CastingActionError("unknown_scene", str(exc)) from None
        return f"/dashboard?{urlsplit(link.url).query}"

    async def end_scene(self, day_id: str, session_id: str) -> None:
        day = self.day(day_id)
        if day is None or session_id not in {scene.session_id for scene in day.scenes}:
            raise CastingActionError("unknown_scene", f"no scene {session_id!r} on this day")
        from dashboard.server import ActionError

        try:
            await self.server.act(session_id, "end_session")
        except ActionError as exc:
            raise CastingActionError(
                "unknown_scene" if exc.code == "unknown_session" else "unavailable", exc.message
            ) from None

    # ---------------------------------------------------------------- HTTP

    async def _page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGES / "casting.html", headers=credentials.PAGE_HEADERS)

    def _refuse(self, status: int, code: str, message: str, *, counted: bool) -> web.Response:
        if counted:
            self.server.refusals[code] += 1
        return web.json_response({"type": "error", "code": code, "message": message}, status=status)

    async def _admit(
        self,
        request: web.Request,
        *,
        counted: bool = True,
        token: str | None = None,
        kind: credentials.Kind = "session",
    ) -> tuple[tokens.JoinToken, records.CastingDay] | web.Response:
        """The director's day token admitted to the casting page, or the refusal."""
        return await credentials.admitted_to_day(
            self.server.access,
            request,
            self._refuse,
            counted=counted,
            token=token,
            kind=kind,
            role="director",
            wrong_role="the casting page is the director's: a performer's day link opens the lobby",
            find_day=self.day,
            wait_for_day=self.days.wait_for,
        )

    async def _credential(self, request: web.Request) -> web.Response:
        return await credentials.exchange_endpoint(
            request, self.server.access, self._admit, self._refuse
        )

    async def _probe(self, request: web.Request) -> web.Response:
        return await credentials.probe_endpoint(
            request, self._admit, self._refuse, self.server.gate, PAGE_KIND
        )

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        async with credentials.admitted_websocket(
            request, self.server.gate, self._admit, self._refuse, PAGE_KIND
        ) as admitted:
            if isinstance(admitted, web.Response):
                return admitted
            ticket, claims, day = admitted
            ws = websocket_response(self.settings, max_msg_size=MAX_MESSAGE_BYTES)
            await ws.prepare(request)
            watch_websocket(ticket, request, ws)
            client = CastingClient(self, ws, claims, day.day_id)
            self.clients.add(client)
            try:
                await client.run()
            finally:
                self.clients.discard(client)
                await client.close()
            return ws


class CastingClient:
    """One casting page's websocket."""

    def __init__(
        self, desk: CastingDesk, ws: web.WebSocketResponse, claims: tokens.JoinToken, day_id: str
    ) -> None:
        self.desk = desk
        self.ws = ws
        self._claims = claims
        self.day_id = day_id
        self.last_state: str | None = None
        self._renewal: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def claims(self) -> tokens.JoinToken | None:
        return self._claims

    async def send(self, message: dict[str, Any]) -> None:
        await send_json(self.ws, message)

    async def run(self) -> None:
        desk = self.desk
        await self.send(
            {
                "type": "welcome",
                "day_id": self.day_id,
                "you": {"participant_id": self._claims.participant_id},
                "codes": list(CODES),
            }
        )
        desk.poke()  # the day's state follows at once
        self._renewal = asyncio.create_task(
            desk.server.access.keep_renewed(self._claims, self.send, self.end_access),
            name="casting-credential-renewal",
        )
        async for message in self.ws:
            if message.type == WSMsgType.TEXT:
                await self._handle(message.data)
            elif message.type == WSMsgType.BINARY:
                desk.server.refusals["malformed"] += 1
                await self._error("malformed", "binary messages are not accepted")
            elif message.type == WSMsgType.ERROR:
                desk.server.refusals[failure_code(self.ws)] += 1
                break

    async def _handle(self, raw: str) -> None:
        desk = self.desk
        request_id = None
        try:
            try:
                message = strict_json.loads_object(raw, max_bytes=MAX_MESSAGE_BYTES)
            except strict_json.JsonInputError as exc:
                raise CastingActionError("malformed", exc.reason) from None
            request_id = message.get("request_id")
            reply = await self._act(message)
        except CastingActionError as exc:
            desk.counters[f"refused_{exc.code}"] += 1
            desk.server.refusals[exc.code] += 1
            await self._error(exc.code, exc.message, request_id)
            return
        except Exception as exc:  # a bug must cost the action, never the page
            log.exception("casting action failed")
            await self._error("unavailable", f"could not do it: {exc}", request_id)
            return
        if isinstance(request_id, str | int):
            reply["request_id"] = request_id
        await self.send(reply)

    async def _act(self, message: dict[str, Any]) -> dict[str, Any]:
        desk = self.desk
        kind = message.get("type")
        if kind == "propose":
            size = message.get("size")
            scenario_id = message.get("scenario_id")
            if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
                raise CastingActionError("malformed", "size must be a whole number")
            if scenario_id is not None and not isinstance(scenario_id, str):
                raise CastingActionError("malformed", "scenario_id must be text")
            proposals = desk.propose(self.day_id, size=size, scenario_id=scenario_id)
            return {"type": "proposals", "proposals": [p.describe() for p in proposals]}
        if kind == "start_scene":
            performers = _strings(message.get("performers"), "performers")
            scenario_id = message.get("scenario_id")
            roles = message.get("roles") or {}
            prompt = message.get("prompt")
            if scenario_id is not None and not isinstance(scenario_id, str):
                raise CastingActionError("malformed", "scenario_id must be text")
            if not isinstance(roles, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in roles.items()
            ):
                raise CastingActionError("malformed", "roles must map performer ids to role names")
            if prompt is not None and not isinstance(prompt, str):
                raise CastingActionError("malformed", "prompt must be text")
            auto_take = message.get("auto_take", True)
            if not isinstance(auto_take, bool):
                raise CastingActionError("malformed", "auto_take must be true or false")
            record = await desk.start_scene(
                self.day_id,
                performers,
                scenario_id=scenario_id,
                roles=roles,
                prompt=prompt,
                auto_take=auto_take,
            )
            return {
                "type": "scene_started",
                "session_id": record.session_id,
                "performers": [p.performer_id for p in record.roster],
                "scenario_id": None if record.scenario is None else record.scenario.scenario_id,
                "roles": record.roles,
                "dashboard_url": desk.scene_link(self.day_id, record.session_id, record),
            }
        if kind == "scene_link":
            session_id = message.get("session_id")
            if not isinstance(session_id, str):
                raise CastingActionError("malformed", "session_id must be text")
            return {
                "type": "scene_link",
                "session_id": session_id,
                "url": desk.scene_link(self.day_id, session_id),
            }
        if kind == "end_scene":
            session_id = message.get("session_id")
            if not isinstance(session_id, str):
                raise CastingActionError("malformed", "session_id must be text")
            await desk.end_scene(self.day_id, session_id)
            return {"type": "scene_ending", "session_id": session_id}
        raise CastingActionError(
            "malformed", "expected one of propose, start_scene, scene_link, end_scene"
        )

    async def _error(self, code: str, message: str, request_id: Any = None) -> None:
        reply: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if isinstance(request_id, str | int):
            reply["request_id"] = request_id
        await self.send(reply)

    async def end_access(self, code: str, message: str) -> None:
        self.desk.server.refusals[code] += 1
        await credentials.end_connection(
            self.ws,
            self._error(code, message),
            code,
            message,
            self.desk.settings.ws_close_timeout_s,
        )

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.gather(self._renewal, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.ws.close()


def register(server: DashboardServer) -> CastingDesk:
    """Give ``server`` the casting page (its routes go in with :meth:`CastingDesk.add_routes`)."""
    return CastingDesk(server)
