"""A casting day on the real broker: `livetag day` on the command line, the lobby's presence
on livetag.lobby, a scene started from the casting page (its session record and its
SceneRef, its take 1 started once every performer joined, its windows aligned and
archived by a real worker and recorder), its end, bad input, a scene the day could not
name, and a restart of both servers that loses nothing."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from capture.lobby import LEAVE_GRACE_S
from capture.server import CaptureServer
from dashboard.server import DashboardServer
from infra.worker import ProcessorWorker
from streams import records
from streams.archive import store
from streams.archive.recorder import RecorderWorker
from streams.kafka import casting, clients, revocations, topics
from streams.kafka.scenarios import publish_scenario
from streams.kafka.sessions import SessionDirectory, is_over
from streams.settings import Settings, to_environment
from taggers import tokens
from taggers.vocabulary import load_vocabulary
from tests import media as test_media
from tests.bench.face import jpeg_frames
from tests.integration.test_access import as_browser, token_in
from tests.integration.test_aligner import W, face_frames, prosody_hops, send
from tests.integration.test_recorder import recorder_settings, wait_for_manifest
from tests.samples import SCENARIO, jpeg_frame

pytestmark = pytest.mark.integration

SECRET = "a-casting-day-secret-long-enough-for-hs256-signatures"


# ---------------------------------------------------------------- the command line


def _livetag(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **to_environment(settings)},
        check=False,
    )


async def test_day_create_prints_lobby_links_and_day_link_issues_a_fresh_one(
    settings: Settings, tmp_path: Path
) -> None:
    configured = settings.model_copy(
        update={"state_dir": tmp_path / "state", "token_secret": SecretStr(SECRET)}
    )
    day_id = f"day-{uuid.uuid4().hex[:8]}"
    done = await asyncio.to_thread(
        _livetag,
        configured,
        "day",
        "create",
        "--title",
        "Improv casting",
        "--performer",
        "Ana Ruiz",
        "--performer",
        "ben",
        "--id",
        day_id,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == f"day {day_id}"
    rows = [line.split("\t") for line in lines[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("performer", "ana-ruiz", "lobby"),
        ("performer", "ben", "lobby"),
        ("director", "director", "casting"),
    ]
    assert rows[0][4].startswith(f"{configured.capture_base_url}/lobby?token=")
    assert rows[2][4].startswith(f"{configured.dashboard_base_url}/casting?token=")
    claims = tokens.verify(SECRET.encode(), token_in(rows[0][4]))
    assert (claims.scope, claims.session_id, claims.participant_id) == ("day", day_id, "ana-ruiz")

    day = await casting.read_day(configured, day_id)
    assert day is not None
    assert day.title == "Improv casting"
    assert [p.display_name for p in day.roster] == ["Ana Ruiz", "ben"]
    assert [v.label for v in day.vocabulary] == [v.label for v in load_vocabulary(None)]

    again = await asyncio.to_thread(
        _livetag, configured, "day", "link", day_id, "--performer", "Ana Ruiz"
    )
    assert again.returncode == 0, again.stderr
    role, performer, page, token_id, url = again.stdout.strip().split("\t")
    assert (role, performer, page) == ("performer", "ana-ruiz", "lobby")
    assert token_id not in {row[3] for row in rows}
    assert tokens.verify(SECRET.encode(), token_in(url)).token_id == token_id

    # Bad input: each a clear line and the exit status of its kind.
    taken = await asyncio.to_thread(
        _livetag, configured, "day", "create", "--title", "t", "--performer", "x", "--id", day_id
    )
    assert taken.returncode == 3
    assert f"casting day {day_id} exists already" in taken.stderr
    stranger = await asyncio.to_thread(
        _livetag, configured, "day", "link", day_id, "--performer", "zoe"
    )
    assert stranger.returncode == 2
    assert "'zoe' is not a performer of casting day" in stranger.stderr
    unknown = await asyncio.to_thread(_livetag, configured, "day", "link", "day-nope", "--director")
    assert unknown.returncode == 2
    assert "no casting day 'day-nope'" in unknown.stderr
    duplicate = await asyncio.to_thread(
        _livetag,
        configured,
        "day",
        "create",
        "--title",
        "t",
        "--performer",
        "Ben",
        "--performer",
        "ben",
    )
    assert duplicate.returncode == 2
    assert "roster performer_id" in duplicate.stderr

    # Revoking a day's links: the same command rule as a session's (infra.cli._revoke).
    revoked = await asyncio.to_thread(
        _livetag, configured, "day", "revoke", day_id, "--performer", "Ana Ruiz"
    )
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == f"revoked\t{day_id}\tparticipant ana-ruiz"
    nowhere = await asyncio.to_thread(
        _livetag, configured, "day", "revoke", "day-nope", "--performer", "ben"
    )
    assert nowhere.returncode == 2
    assert "no casting day 'day-nope'" in nowhere.stderr

    closed = await asyncio.to_thread(_livetag, configured, "day", "close", day_id)
    assert closed.returncode == 0, closed.stderr
    after = await asyncio.to_thread(
        _livetag, configured, "day", "link", day_id, "--performer", "ben"
    )
    assert after.returncode == 2
    assert "is closed" in after.stderr


# ---------------------------------------------------------------- the servers


@dataclass
class Day:
    settings: Settings
    capture: CaptureServer
    dashboard: DashboardServer
    day: records.CastingDay

    @property
    def secret(self) -> bytes:
        return SECRET.encode()

    def ws(self, server: CaptureServer | DashboardServer, path: str) -> str:
        return server.url.replace("http://", "ws://") + path

    def link(self, role: str, name: str | None = None) -> str:
        link = tokens.day_invite(
            self.settings,
            self.day,
            self.secret,
            role="director" if role == "director" else "performer",
            name=name,
        )
        return token_in(link.url)


async def _start_servers(configured: Settings) -> tuple[CaptureServer, DashboardServer, Settings]:
    capture = CaptureServer(configured, secret=SECRET.encode())
    await capture.start()
    linked = configured.model_copy(update={"capture_port": capture.port})
    dashboard = DashboardServer(linked, secret=SECRET.encode())
    try:
        await dashboard.start()
    except BaseException:
        await capture.stop()
        raise
    return capture, dashboard, linked.model_copy(update={"dashboard_port": dashboard.port})


@pytest.fixture
async def casting_day(settings: Settings, tmp_path: Path) -> AsyncIterator[Day]:
    configured = settings.model_copy(
        update={
            "capture_port": 0,
            "dashboard_port": 0,
            "state_dir": tmp_path / "state",
            "token_secret": SecretStr(SECRET),
        }
    )
    # The library has the two-part scenario of the samples, and a one-part one.
    producer = clients.make_producer(configured)
    await producer.start()
    try:
        async with clients.admin_client(configured) as admin:
            await topics.ensure_shared_topics(admin, configured)
        await publish_scenario(producer, SCENARIO, "test")
        solo = SCENARIO.model_copy(
            update={"scenario_id": "monologue", "roles": SCENARIO.roles[:1], "arc": []}
        )
        await publish_scenario(producer, solo, "test")
    finally:
        await producer.stop()
    capture, dashboard, both = await _start_servers(configured)
    servers: list[Day] = []
    try:
        day = await casting.create_day(
            both,
            title="Monday",
            performer_names=["ana", "ben", "cleo"],
            vocabulary=load_vocabulary(None),
            day_id=f"day-{uuid.uuid4().hex[:10]}",
        )
        servers.append(Day(both, capture, dashboard, day))
        yield servers[0]
    finally:
        # The servers the test left running (a restart replaces them).
        running = servers[0] if servers else Day(both, capture, dashboard, None)  # type: ignore[arg-type]
        await running.dashboard.stop()
        await running.capture.stop()
        await dashboard.stop()
        await capture.stop()


async def _credential(
    http: aiohttp.ClientSession, server: CaptureServer | DashboardServer, path: str, link: str
) -> tuple[int, dict[str, Any]]:
    async with http.post(f"{server.url}{path}", data=json.dumps({"token": link})) as response:
        return response.status, await response.json()


async def _lobby_credential(http: aiohttp.ClientSession, day: Day, name: str) -> str:
    status, body = await _credential(
        http, day.capture, "/api/lobby-credential", day.link("performer", name)
    )
    assert status == 200, body
    return str(body["credential"])


async def _casting_credential(http: aiohttp.ClientSession, day: Day) -> str:
    status, body = await _credential(
        http, day.dashboard, "/api/casting-credential", day.link("director")
    )
    assert status == 200, body
    return str(body["credential"])


async def _lobby_page(
    http: aiohttp.ClientSession, day: Day, name: str
) -> aiohttp.ClientWebSocketResponse:
    """A performer's lobby page: their day link exchanged, the lobby's websocket open."""
    return await http.ws_connect(
        day.ws(day.capture, "/ws/lobby"),
        protocols=as_browser(await _lobby_credential(http, day, name)),
    )


async def _casting_page(http: aiohttp.ClientSession, day: Day) -> aiohttp.ClientWebSocketResponse:
    """The director's casting page: the day link exchanged, the casting websocket open."""
    return await http.ws_connect(
        day.ws(day.dashboard, "/ws/casting"),
        protocols=as_browser(await _casting_credential(http, day)),
    )


async def _next(
    ws: aiohttp.ClientWebSocketResponse, kind: str, timeout_s: float = 20
) -> dict[str, Any]:
    """The next message of ``kind`` (others are skipped)."""
    async with asyncio.timeout(timeout_s):
        while True:
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.TEXT, message
            data: dict[str, Any] = json.loads(message.data)
            if data["type"] == kind:
                return data


async def _presence(
    settings: Settings,
    day_id: str,
    performer_id: str,
    matches: Callable[[records.LobbyPresence], bool],
    timeout_s: float = 20,
) -> records.LobbyPresence:
    board = casting.LobbyBoard(settings)
    await board.start()
    try:

        def found() -> records.LobbyPresence | None:
            presence = board.presence(day_id, performer_id)
            return presence if presence is not None and matches(presence) else None

        return await board.wait_until(found, timeout_s)
    finally:
        await board.stop()


def _face_jpeg() -> bytes:
    media = test_media.prepare(test_media.default_dir())
    return next(iter(jpeg_frames(media.single_face_mp4, every=10)))


async def test_the_lobby_publishes_who_waits_with_the_device_check_and_finds_the_face(
    casting_day: Day,
) -> None:
    day = casting_day
    async with aiohttp.ClientSession() as http:
        credential = await _lobby_credential(http, day, "ana")
        async with http.ws_connect(
            day.ws(day.capture, "/ws/lobby"), protocols=as_browser(credential)
        ) as ws:
            welcome = await _next(ws, "welcome")
            assert welcome["you"] == {"performer_id": "ana", "display_name": "ana"}
            assert welcome["face_check_interval_ms"] == day.settings.lobby_face_check_interval_ms
            waiting = await _presence(day.settings, day.day.day_id, "ana", lambda p: p.waiting)
            assert waiting.since_ts_us == welcome["waiting_since_us"]

            await ws.send_str(
                json.dumps(
                    {"type": "check", "camera": True, "microphone": True, "audio_level_db": -31.5}
                )
            )
            await ws.send_bytes(_face_jpeg())
            answer = await _next(ws, "face")
            assert answer["face_found"] is True
            checked = await _presence(
                day.settings,
                day.day.day_id,
                "ana",
                lambda p: p.check is not None and p.check.face_found,
            )
            assert checked.check is not None
            assert (checked.check.camera, checked.check.microphone) == (True, True)
            assert checked.check.audio_level_db == -31.5
            assert checked.since_ts_us == waiting.since_ts_us  # still the same wait

            await ws.send_bytes(jpeg_frame(320, 180))  # no face in it
            assert (await _next(ws, "face"))["face_found"] is False
            # Bad input: a clear error each, and the page stays connected.
            await ws.send_bytes(b"not a jpeg")
            bad = await _next(ws, "error")
            assert bad["code"] == "bad_snapshot"
            await ws.send_str(json.dumps({"type": "check", "camera": "yes", "microphone": True}))
            assert (await _next(ws, "error"))["code"] == "malformed"
            await ws.send_str("{")
            assert (await _next(ws, "error"))["code"] == "malformed"
            assert day.capture.lobby.counters["face_checks"] == 2
            assert day.capture.lobby.counters["bad_snapshots"] == 1
        # Gone once the page has been closed for the grace.
        gone = await _presence(day.settings, day.day.day_id, "ana", lambda p: not p.waiting)
        assert gone.ts_us - waiting.ts_us >= LEAVE_GRACE_S * 1_000_000 * 0.9


async def test_the_lobby_and_the_casting_page_refuse_other_links(casting_day: Day) -> None:
    day = casting_day
    session_link = tokens.issue(
        day.secret, session_id="20260101-abcdef", role="performer", participant_id="ana", ttl_s=60
    )
    async with aiohttp.ClientSession() as http:
        status, body = await _credential(http, day.capture, "/api/lobby-credential", session_link)
        assert (status, body["code"]) == (403, "wrong_scope")
        status, body = await _credential(
            http, day.capture, "/api/lobby-credential", day.link("director")
        )
        assert (status, body["code"]) == (403, "not_performer")
        status, body = await _credential(
            http, day.dashboard, "/api/casting-credential", day.link("performer", "ana")
        )
        assert (status, body["code"]) == (403, "not_director")
        # A day link on a session's pages.
        status, body = await _credential(
            http, day.capture, "/api/credential", day.link("performer", "ana")
        )
        assert (status, body["code"]) == (403, "wrong_scope")
        status, body = await _credential(
            http, day.dashboard, "/api/credential", day.link("director")
        )
        assert (status, body["code"]) == (403, "wrong_scope")
        unknown = tokens.issue(
            day.secret,
            session_id="day-unknown",
            role="performer",
            participant_id="ana",
            ttl_s=60,
            scope="day",
        )
        status, body = await _credential(http, day.capture, "/api/lobby-credential", unknown)
        assert (status, body["code"]) == (404, "unknown_day")
        stranger = tokens.issue(
            day.secret,
            session_id=day.day.day_id,
            role="performer",
            participant_id="zoe",
            ttl_s=60,
            scope="day",
        )
        status, body = await _credential(http, day.capture, "/api/lobby-credential", stranger)
        assert (status, body["code"]) == (403, "not_in_day")
        # The websocket without a credential is refused at its handshake.
        with pytest.raises(aiohttp.WSServerHandshakeError) as handshake:
            await http.ws_connect(day.ws(day.capture, "/ws/lobby"))
        assert handshake.value.status == 401
    assert day.capture.refusals["wrong_scope"] >= 1
    assert day.dashboard.refusals["not_director"] >= 1


_requests = iter(range(1, 1_000_000))


async def _reply(ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]) -> dict[str, Any]:
    """The casting page's answer to one action (found by its request id)."""
    request_id = next(_requests)
    await ws.send_str(json.dumps({**message, "request_id": request_id}))
    async with asyncio.timeout(30):
        while True:
            received = await ws.receive()
            assert received.type == aiohttp.WSMsgType.TEXT, received
            data: dict[str, Any] = json.loads(received.data)
            if data.get("request_id") == request_id:
                return data


async def _wait_for_waiting(ws: aiohttp.ClientWebSocketResponse, who: set[str]) -> dict[str, Any]:
    """The casting page's next day state in which ``who`` all wait."""
    async with asyncio.timeout(30):
        while True:
            state = await _next(ws, "day")
            waiting = {p["performer_id"] for p in state["performers"] if p["status"] == "waiting"}
            if who <= waiting:
                return state


async def test_a_scene_started_on_the_casting_page_calls_the_performers_and_ends_on_the_day(
    casting_day: Day,
) -> None:
    day = casting_day
    day_id = day.day.day_id
    async with aiohttp.ClientSession() as http:
        ana = await _lobby_page(http, day, "ana")
        ben = await _lobby_page(http, day, "ben")
        director = await _casting_page(http, day)
        try:
            await _next(ana, "welcome")
            await _next(ben, "welcome")
            assert (await _next(director, "welcome"))["day_id"] == day_id
            state = await _wait_for_waiting(director, {"ana", "ben"})
            assert {s["scenario_id"] for s in state["scenarios"]} >= {"late-friend", "monologue"}

            # Bad input first: each refused with its code, nothing started.
            async def refused(message: dict[str, Any]) -> str:
                reply = await _reply(director, message)
                assert reply["type"] == "error", reply
                return str(reply["code"])

            assert (
                await refused({"type": "start_scene", "performers": ["ana", "zoe"]})
                == "unknown_performer"
            )
            assert (
                await refused({"type": "start_scene", "performers": ["ana", "cleo"]})
                == "not_waiting"
            )
            assert (
                await refused(
                    {
                        "type": "start_scene",
                        "performers": ["ana", "ben"],
                        "scenario_id": "monologue",
                    }
                )
                == "too_few_roles"
            )
            assert (
                await refused({"type": "start_scene", "performers": ["ana"], "scenario_id": "nope"})
                == "unknown_scenario"
            )
            assert (
                await refused(
                    {
                        "type": "start_scene",
                        "performers": ["ana", "ben"],
                        "scenario_id": "late-friend",
                        "roles": {"ana": "the king"},
                    }
                )
                == "bad_roles"
            )
            assert await refused({"type": "start_scene", "performers": "ana"}) == "malformed"
            assert await refused({"type": "dance"}) == "malformed"
            await director.send_str("[1, 2")
            assert (await _next(director, "error"))["code"] == "malformed"
            assert casting.running_scenes(day.dashboard.casting.day(day_id)) == []  # type: ignore[arg-type]

            proposals = await _reply(director, {"type": "propose"})
            assert proposals["type"] == "proposals"
            [proposal] = proposals["proposals"]
            assert sorted(proposal["performers"]) == ["ana", "ben"]
            assert proposal["scenario_id"] == "late-friend"
            assert proposal["reasons"]

            started = await _reply(
                director,
                {
                    "type": "start_scene",
                    "performers": proposal["performers"],
                    "scenario_id": proposal["scenario_id"],
                    "roles": {"ben": "the friend"},
                },
            )
            assert started["type"] == "scene_started", started
            session_id = started["session_id"]
            assert started["roles"] == {"ben": "the friend", "ana": "the widower"}
            assert started["dashboard_url"].startswith("/dashboard?token=")

            # Each performer's lobby page is called into the scene with a session link.
            for page, who in ((ana, "ana"), (ben, "ben")):
                call = await _next(page, "scene")
                assert call["session_id"] == session_id
                assert call["url"].startswith("/join?token=")
                claims = tokens.verify(day.secret, token_in(call["url"]))
                assert (claims.scope, claims.session_id, claims.participant_id) == (
                    "session",
                    session_id,
                    who,
                )

            # The session record: the day's vocabulary, the scenario, the roles, the day.
            directory = SessionDirectory(day.settings)
            await directory.start()
            try:
                session = await directory.wait_for(session_id, timeout_s=10)
            finally:
                await directory.stop()
            assert session is not None
            assert session.day_id == day_id
            assert session.scenario == SCENARIO
            assert session.prompt == SCENARIO.prompt
            assert session.roles == {"ben": "the friend", "ana": "the widower"}
            assert [p.performer_id for p in session.roster] == proposal["performers"]
            recorded = await casting.read_day(day.settings, day_id)
            assert recorded is not None
            [scene] = recorded.scenes
            assert (scene.session_id, scene.scenario_id, scene.ended_ts_us) == (
                session_id,
                "late-friend",
                None,
            )
            assert scene.roles == session.roles
            # Not waiting while in the scene (the lobby said so on livetag.lobby).
            await _presence(day.settings, day_id, "ana", lambda p: not p.waiting)
            assert await refused({"type": "start_scene", "performers": ["ana"]}) == "not_waiting"

            link = await _reply(director, {"type": "scene_link", "session_id": session_id})
            assert link["url"].startswith("/dashboard?token=")
            assert tokens.verify(day.secret, token_in(link["url"])).role == "director"

            ended = await _reply(director, {"type": "end_scene", "session_id": session_id})
            assert (ended["type"], ended["session_id"]) == ("scene_ending", session_id)

            async def scene_ended() -> records.SceneRef:
                while True:
                    current = await casting.read_day(day.settings, day_id)
                    assert current is not None
                    if current.scenes[0].ended_ts_us is not None:
                        return current.scenes[0]
                    await asyncio.sleep(0.3)

            async with asyncio.timeout(20):
                done = await scene_ended()
            assert done.ended_ts_us is not None
            assert done.ended_ts_us >= done.started_ts_us
        finally:
            for ws in (ana, ben, director):
                await ws.close()

        # Back in the lobby after the scene: waiting again, from a new time.
        async with http.ws_connect(
            day.ws(day.capture, "/ws/lobby"),
            protocols=as_browser(await _lobby_credential(http, day, "ana")),
        ) as again:
            welcome = await _next(again, "welcome")
            back = await _presence(day.settings, day_id, "ana", lambda p: p.waiting)
            assert back.since_ts_us == welcome["waiting_since_us"]
            assert back.since_ts_us > done.started_ts_us

    # The scene's coverage counts for the matcher across the day.
    coverage = records.Coverage(
        ts_us=done.ended_ts_us,
        session_id=session_id,
        performer_id="ana",
        window_us=100_000,
        windows=900,
        cells={"hesitation": records.CoverageCell(agreed_s=42.0, intended_s=60.0)},
    )
    producer = clients.make_producer(day.settings)
    await producer.start()
    try:
        message = records.encode(coverage)
        await producer.send_and_wait(
            topics.COVERAGE, message.value, key=message.key, headers=message.headers
        )
    finally:
        await producer.stop()
    desk = day.dashboard.casting
    await desk.coverage.wait_for(f"{session_id}/ana", timeout_s=10)
    current = desk.day(day_id)
    assert current is not None
    assert desk.agreed(current) == {"ana": {"hesitation": 42.0}}


async def test_a_restart_of_both_servers_keeps_the_day_and_the_place_in_the_queue(
    casting_day: Day,
) -> None:
    day = casting_day
    day_id = day.day.day_id
    async with aiohttp.ClientSession() as http:
        credential = await _lobby_credential(http, day, "cleo")
        async with http.ws_connect(
            day.ws(day.capture, "/ws/lobby"), protocols=as_browser(credential)
        ) as ws:
            first = await _next(ws, "welcome")
            waiting = await _presence(day.settings, day_id, "cleo", lambda p: p.waiting)
            # Both servers go down with the page open, and come back on other ports.
            await day.dashboard.stop()
            await day.capture.stop()
    configured = day.settings.model_copy(update={"capture_port": 0, "dashboard_port": 0})
    capture, dashboard, both = await _start_servers(configured)
    day.capture, day.dashboard, day.settings = capture, dashboard, both
    async with aiohttp.ClientSession() as http:
        credential = await _lobby_credential(http, day, "cleo")
        async with http.ws_connect(
            day.ws(capture, "/ws/lobby"), protocols=as_browser(credential)
        ) as ws:
            welcome = await _next(ws, "welcome")
            # The same wait: the place in the queue is kept across the restart.
            assert welcome["waiting_since_us"] == first["waiting_since_us"] == waiting.since_ts_us
            director = await http.ws_connect(
                day.ws(dashboard, "/ws/casting"),
                protocols=as_browser(await _casting_credential(http, day)),
            )
            try:
                state = await _wait_for_waiting(director, {"cleo"})
                [cleo] = [p for p in state["performers"] if p["performer_id"] == "cleo"]
                assert cleo["since_us"] == waiting.since_ts_us
                assert state["title"] == "Monday"
            finally:
                await director.close()


async def test_a_revoked_day_link_closes_its_lobby_page_and_is_refused(casting_day: Day) -> None:
    day = casting_day
    async with aiohttp.ClientSession() as http:
        credential = await _lobby_credential(http, day, "ben")
        async with http.ws_connect(
            day.ws(day.capture, "/ws/lobby"), protocols=as_browser(credential)
        ) as ws:
            await _next(ws, "welcome")
            producer = clients.make_producer(day.settings)
            await producer.start()
            try:
                await revocations.publish(
                    producer,
                    revocations.revocation(day.day.day_id, participant_id="ben", reason="replaced"),
                )
            finally:
                await producer.stop()
            refused = await _next(ws, "error")
            assert refused["code"] == "revoked"
            assert "replaced" in refused["message"]
            async with asyncio.timeout(10):
                closing = await ws.receive()
            assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
            assert ws.close_code == 4403
        status, body = await _credential(
            http, day.capture, "/api/lobby-credential", day.link("performer", "ben")
        )
        # A fresh link works again; the withdrawn credential does not.
        assert status == 200, body
        with pytest.raises(aiohttp.WSServerHandshakeError) as handshake:
            await http.ws_connect(
                day.ws(day.capture, "/ws/lobby"), protocols=as_browser(credential)
            )
        assert handshake.value.status == 403


# ---------------------------------------------------------------- a scene like any other


async def _join_call(http: aiohttp.ClientSession, day: Day, url: str) -> Any:
    """A performer's call page joining its scene from the lobby's link (the presence the
    casting page waits for)."""
    status, body = await _credential(http, day.capture, "/api/credential", token_in(url))
    assert status == 200, body
    ws = await http.ws_connect(
        day.ws(day.capture, "/ws/call"), protocols=as_browser(str(body["credential"]))
    )
    await _next(ws, "welcome")
    return ws


async def test_a_scene_from_the_casting_page_starts_its_take_when_all_are_in_and_is_aligned(
    casting_day: Day, tmp_path: Path
) -> None:
    day = casting_day
    day_id = day.day.day_id
    own = recorder_settings(day.settings, tmp_path)
    stop = asyncio.Event()
    workers: list[asyncio.Task[None]] = []
    directory = SessionDirectory(day.settings)
    await directory.start()
    labels = clients.make_consumer(own, topics.LABELS, auto_offset_reset="latest")
    producer = clients.make_producer(own)
    await asyncio.gather(labels.start(), producer.start())
    pages: list[Any] = []
    try:
        async with aiohttp.ClientSession() as http:
            ana = await _lobby_page(http, day, "ana")
            ben = await _lobby_page(http, day, "ben")
            director = await _casting_page(http, day)
            pages += [ana, ben, director]
            await _wait_for_waiting(director, {"ana", "ben"})
            started = await _reply(
                director,
                {
                    "type": "start_scene",
                    "performers": ["ana", "ben"],
                    "scenario_id": "late-friend",
                    "roles": {"ana": "the friend"},
                },
            )
            assert started["type"] == "scene_started", started
            sid = started["session_id"]
            # The scene is processed like any other session: a worker and a recorder.
            workers.append(asyncio.create_task(ProcessorWorker(own, only_sessions={sid}).run(stop)))
            workers.append(asyncio.create_task(RecorderWorker(own, only_sessions={sid}).run(stop)))
            calls = {
                who: (await _next(page, "scene"))["url"]
                for who, page in (("ana", ana), ("ben", ben))
            }
            assert day.capture.lobby._scene_urls.keys() >= {(sid, "ana"), (sid, "ben")}

            # One performer in: no take yet.
            pages.append(await _join_call(http, day, calls["ana"]))
            await directory.wait_until(
                lambda: (
                    (
                        (s := directory.get(sid)) is not None
                        and any(p.participant_id == "ana" and p.connected for p in s.presence)
                        and s
                    )
                    or None
                ),
                timeout_s=20,
            )
            await asyncio.sleep(1.5)  # the desk looks every 0.5 s
            assert day.dashboard.session(sid).takes == []  # type: ignore[union-attr]
            # Everyone in: take 1 starts by itself.
            pages.append(await _join_call(http, day, calls["ben"]))
            live = await directory.wait_until(
                lambda: ((s := directory.get(sid)) is not None and s.takes and s) or None,
                timeout_s=20,
            )
            [take] = live.takes
            assert (take.take_id, take.end_ts_us, live.state) == (1, None, "live")
            assert day.dashboard.casting.counters["takes_started"] == 1

            # Features of ana inside the take, as the processors send them.
            t0 = (time.time_ns() // 1000 // W) * W + 15_000_000
            hops = [
                h.model_copy(update={"performer_id": "ana"}) for h in prosody_hops(sid, t0, 101)
            ]
            for start in range(0, len(hops), 10):
                await send(
                    producer, live.topics.prosody, records.ProsodyHops.of(hops[start : start + 10])
                )
            for frame in face_frames(sid, t0, 21):
                await send(
                    producer, live.topics.face, frame.model_copy(update={"performer_id": "ana"})
                )
            await producer.flush()
            windows: dict[int, records.LabelWindow] = {}
            wanted = {t0 + k * W for k in range(10)}
            async with asyncio.timeout(90):
                while not wanted <= windows.keys():
                    for batch in (await labels.getmany(timeout_ms=200)).values():
                        for message in batch:
                            if message.key == f"{sid}/ana".encode():
                                window = records.decode(
                                    records.LabelWindow, message.value, message.headers
                                )
                                windows[window.ts_us] = window
            for ts_us in sorted(wanted):
                window = windows[ts_us]
                assert window.features.loudness_mean_db == -20.0
                # The scenario's arc runs in the take the casting page started.
                assert window.intent is not None
                assert (window.intent.label, window.intent.source) == ("hesitation", "arc")
                assert "hesitation" in window.intent.targets

            # The take ends long before the scene: the scene's end is the session's.
            await day.dashboard.act(sid, "take_end")
            await asyncio.sleep(1.0)
            # A fresh casting page: the first was not read while the windows were awaited.
            director = await _casting_page(http, day)
            pages.append(director)
            ended = await _reply(director, {"type": "end_scene", "session_id": sid})
            assert ended["type"] == "scene_ending", ended
            async with asyncio.timeout(20):
                while True:
                    current = await casting.read_day(day.settings, day_id)
                    assert current is not None
                    [scene] = [s for s in current.scenes if s.session_id == sid]
                    if scene.ended_ts_us is not None:
                        break
                    await asyncio.sleep(0.3)
            await directory.wait_until(
                lambda: directory.get(sid) if directory.ended_at_us(sid) else None, timeout_s=10
            )
            over = directory.ended_at_us(sid)
            assert over is not None
            took = day.dashboard.session(sid).takes[0]  # type: ignore[union-attr]
            assert took.end_ts_us is not None
            assert scene.ended_ts_us == over > took.end_ts_us + 500_000
            # The lobby forgets the scene's links once it is over.
            async with asyncio.timeout(10):
                while any(key[0] == sid for key in day.capture.lobby._scene_urls):  # noqa: ASYNC110 (server state)
                    await asyncio.sleep(0.2)

        manifest = await wait_for_manifest(store.session_dir(own, sid), timeout_s=60)
        assert manifest["counts"]["labels"] >= 10
        archived = {
            w.ts_us: w
            for w in store.read_records(store.session_dir(own, sid), "labels")
            if w.performer_id == "ana"
        }
        assert wanted <= archived.keys()
        assert all(archived[ts].intent is not None for ts in wanted)
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
        for page in pages:
            await page.close()
        await asyncio.gather(labels.stop(), producer.stop(), directory.stop())


async def test_a_scene_the_day_cannot_name_is_ended_not_left_open(
    casting_day: Day, monkeypatch: pytest.MonkeyPatch
) -> None:
    day = casting_day
    day_id = day.day.day_id

    async def broker_refuses(*_: Any, **__: Any) -> None:
        raise ConnectionError("livetag.casting is away")

    async with aiohttp.ClientSession() as http:
        ana = await _lobby_page(http, day, "ana")
        director = await _casting_page(http, day)
        try:
            await _wait_for_waiting(director, {"ana"})
            # The session is opened; the day's new version is then refused.
            monkeypatch.setattr(casting, "publish_day", broker_refuses)
            reply = await _reply(director, {"type": "start_scene", "performers": ["ana"]})
            assert (reply["type"], reply["code"]) == ("error", "unavailable")
            assert "could not be put on the day" in reply["message"]
        finally:
            await ana.close()
            await director.close()
    assert day.dashboard.casting.counters["scenes_abandoned"] == 1
    assert day.dashboard.casting.counters["abandoned_not_ended"] == 0
    directory = SessionDirectory(day.settings)
    await directory.start()
    try:
        orphan = await directory.wait_until(
            lambda: next(
                (s for s in directory.sessions() if s.day_id == day_id and is_over(s)), None
            ),
            timeout_s=10,
        )
    finally:
        await directory.stop()
    assert orphan.state == "ended"
    assert [p.performer_id for p in orphan.roster] == ["ana"]
