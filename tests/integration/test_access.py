"""Who may do what, on the real servers and broker: join links exchanged for short-lived
credentials renewed over the open connection, observers with their own links and rater
ids who watch and tag only, links revoked with ``livetag session revoke`` (refused at
admission, open connections closed within seconds), and no token in the logs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from pydantic import SecretStr

from capture.server import CaptureServer
from dashboard.server import DashboardServer
from streams import records
from streams.kafka import clients, revocations, topics
from streams.kafka.sessions import SessionDirectory, create_session, publish
from streams.settings import Settings, to_environment
from taggers import credentials, tokens
from taggers.vocabulary import load_vocabulary
from tests.tag_client import TagClient, wall_us

pytestmark = pytest.mark.integration

SECRET = "a-deployment-secret-long-enough-for-hs256-signatures"
CREDENTIAL_TTL_S = 6  # renewed 2 s before it runs out: a test sees renewals within 5 s
CLOSED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED)


@dataclass
class Deployment:
    """A capture server (with its tag service) and a dashboard, sharing one secret."""

    settings: Settings  # with both servers' ports: what the CLI is run with
    capture: CaptureServer
    dashboard: DashboardServer
    session: records.SessionRecord

    @property
    def secret(self) -> bytes:
        return SECRET.encode()

    @property
    def sid(self) -> str:
        return self.session.session_id

    def ws(self, server: CaptureServer | DashboardServer, path: str) -> str:
        return server.url.replace("http://", "ws://") + path


@pytest.fixture
async def deployment(
    settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Deployment]:
    """``credential_ttl_s`` is CREDENTIAL_TTL_S, or the test's (indirect) parameter."""
    configured = settings.model_copy(
        update={
            "capture_port": 0,
            "dashboard_port": 0,
            "state_dir": tmp_path / "state",
            "token_secret": SecretStr(SECRET),
            "credential_ttl_s": getattr(request, "param", CREDENTIAL_TTL_S),
        }
    )
    capture = CaptureServer(configured, secret=SECRET.encode())
    await capture.start()
    linked = configured.model_copy(update={"capture_port": capture.port})
    dashboard = DashboardServer(linked, secret=SECRET.encode())
    try:
        await dashboard.start()
        session = await create_session(
            linked,
            prompt="A tour guide who has never been here before.",
            performer_names=["ana", "ben"],
            vocabulary=load_vocabulary(None),
        )
        both = linked.model_copy(update={"dashboard_port": dashboard.port})
        yield Deployment(both, capture, dashboard, session)
    finally:
        await dashboard.stop()
        await capture.stop()


async def livetag(settings: Settings, *args: str) -> list[list[str]]:
    """Run the ``livetag`` command with these settings; its output's tab-separated rows."""
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "infra", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **to_environment(settings)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [line.split("\t") for line in done.stdout.splitlines()]


async def publish_revocation(settings: Settings, revocation: records.TokenRevocation) -> None:
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        await revocations.publish(producer, revocation)
    finally:
        await producer.stop()


def token_in(url: str) -> str:
    return parse_qs(urlsplit(url).query)["token"][0]


async def exchange(
    http: aiohttp.ClientSession, server: CaptureServer | DashboardServer, body: Any
) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with http.post(f"{server.url}/api/credential", data=data) as response:
        return response.status, await response.json()


async def credential_for(
    http: aiohttp.ClientSession, server: CaptureServer | DashboardServer, link_url: str
) -> str:
    status, body = await exchange(http, server, {"token": token_in(link_url)})
    assert status == 200, body
    credential: str = body["credential"]
    return credential


def as_browser(credential: str) -> tuple[str, str]:
    """The subprotocols a page offers: the credential rides in the handshake."""
    return (credentials.WS_PROTOCOL, f"{credentials.CREDENTIAL_PROTOCOL_PREFIX}{credential}")


async def first_of(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.TEXT, message
            parsed: dict[str, Any] = json.loads(message.data)
            if parsed["type"] == kind:
                return parsed


async def hello(ws: aiohttp.ClientWebSocketResponse, token: str) -> dict[str, Any]:
    """The tag service's first answer to a hello: welcome or error."""
    await ws.send_str(json.dumps({"type": "hello", "token": token, "clock_id": "test-clock"}))
    async with asyncio.timeout(10):
        while True:
            message = json.loads((await ws.receive()).data)
            if message["type"] in ("welcome", "error"):
                return dict(message)


async def until_closed(
    ws: aiohttp.ClientWebSocketResponse, timeout_s: float
) -> tuple[list[dict[str, Any]], int | None, str]:
    """The messages until the server closes, its close code and reason."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout_s):
        while True:
            message = await ws.receive()
            if message.type == aiohttp.WSMsgType.CLOSE:
                return seen, int(message.data), str(message.extra or "")
            if message.type in CLOSED:
                return seen, ws.close_code, ""
            if message.type == aiohttp.WSMsgType.TEXT:
                seen.append(json.loads(message.data))


async def refused(
    http: aiohttp.ClientSession, url: str, credential: str
) -> tuple[int, dict[str, Any]]:
    async with http.get(url, params={"token": credential}) as response:
        return response.status, await response.json()


async def test_a_link_is_exchanged_for_a_credential_and_only_that_opens_websockets(
    deployment: Deployment,
) -> None:
    capture, dashboard = deployment.capture, deployment.dashboard
    link = tokens.invite(
        deployment.settings, deployment.session, deployment.secret, role="observer", name="Maria"
    )
    link_token = token_in(link.url)
    async with aiohttp.ClientSession() as http:
        # The page's exchange: the link's token in a POST body, a credential back.
        async with http.post(
            f"{capture.url}/api/credential", data=json.dumps({"token": link_token})
        ) as response:
            assert response.status == 200
            assert response.headers["Cache-Control"] == "no-store"
            issued = await response.json()
        assert (issued["role"], issued["participant_id"], issued["token_id"]) == (
            "observer",
            "maria",
            link.token_id,
        )
        assert 0 < issued["expires_in_s"] <= CREDENTIAL_TTL_S
        credential = issued["credential"]
        assert tokens.verify_credential(deployment.secret, credential).token_id == link.token_id
        # The link's own token opens no websocket: it stays out of every URL but the page's.
        for url in (f"{capture.url}/ws/call", f"{dashboard.url}/ws/dashboard"):
            status, body = await refused(http, url, link_token)
            assert (status, body["code"]) == (401, "bad_token"), url
            assert "join link's token" in body["message"]
        async with http.ws_connect(deployment.ws(capture, "/ws/tag")) as ws:
            answer = await hello(ws, link_token)
            assert (answer["type"], answer["code"]) == ("error", "bad_token")
        # A credential is not exchanged again (it is renewed over its connection), and a
        # body that is not {"token": ...} is told so.
        status, body = await exchange(http, capture, {"token": credential})
        assert (status, body["code"]) == (401, "bad_token")
        assert "not a join link" in body["message"]
        status, body = await exchange(http, dashboard, b'{"token": [1e999]}')
        assert (status, body["code"]) == (400, "malformed")
        # The credential opens each websocket, in the handshake as a browser sends it.
        async with http.ws_connect(
            deployment.ws(capture, "/ws/call"), protocols=as_browser(credential)
        ) as ws:
            assert ws.protocol == credentials.WS_PROTOCOL
            welcome = await first_of(ws, "welcome")
            assert welcome["you"] == {"participant_id": "maria", "role": "observer"}
        async with http.ws_connect(
            deployment.ws(dashboard, "/ws/dashboard"),
            protocols=as_browser(credential),
            max_msg_size=0,
        ) as ws:
            greeting = await first_of(ws, "hello")
            assert greeting["you"] == {"rater_id": "maria", "role": "observer", "controls": False}
        async with http.ws_connect(deployment.ws(capture, "/ws/tag")) as ws:
            welcome = await hello(ws, credential)
            assert (welcome["type"], welcome["rater_id"]) == ("welcome", "maria")
        # Offered without "livetag", the server could not pick a subprotocol (and aiohttp
        # would log the offered list, credential and all): refused before the upgrade.
        async with http.get(
            f"{capture.url}/ws/call",
            headers={"Sec-WebSocket-Protocol": as_browser(credential)[1]},
        ) as response:
            assert response.status == 401


# Credentials of the default lifetime: no renewal falls in the test, so the connections
# are closed by the services' following of the revocations, not at a renewal.
@pytest.mark.parametrize("deployment", [600], indirect=True)
async def test_a_revoked_participant_is_refused_and_their_open_connections_closed(
    deployment: Deployment,
) -> None:
    capture, dashboard, sid = deployment.capture, deployment.dashboard, deployment.sid
    settings = deployment.settings
    [maria] = await livetag(
        settings, "session", "invite", sid, "--role", "observer", "--name", "Maria"
    )
    [noor] = await livetag(
        settings, "session", "invite", sid, "--role", "observer", "--name", "Noor"
    )
    # role, participant, page, token id, URL: an observer's link opens the dashboard.
    assert maria[:3] == ["observer", "maria", "dashboard"]
    assert maria[4].startswith(f"{dashboard.url}/dashboard?token=")
    assert tokens.verify_link(deployment.secret, token_in(maria[4])).token_id == maria[3]
    async with aiohttp.ClientSession() as http:
        maria_credential = await credential_for(http, dashboard, maria[4])
        noor_credential = await credential_for(http, dashboard, noor[4])
        call = await http.ws_connect(
            deployment.ws(capture, "/ws/call"), protocols=as_browser(maria_credential)
        )
        board = await http.ws_connect(
            deployment.ws(dashboard, "/ws/dashboard"),
            protocols=as_browser(maria_credential),
            max_msg_size=0,
        )
        tag = await http.ws_connect(deployment.ws(capture, "/ws/tag"))
        others = await http.ws_connect(deployment.ws(capture, "/ws/tag"))
        await first_of(call, "welcome")
        await first_of(board, "hello")
        assert (await hello(tag, maria_credential))["type"] == "welcome"
        assert (await hello(others, noor_credential))["type"] == "welcome"

        # Written as `livetag session revoke SID --participant Maria` does (the command is
        # run in the other tests), here in-process to time what the services take.
        revoked_at = time.monotonic()
        await publish_revocation(
            settings, revocations.revocation(sid, participant_id="maria", reason="left early")
        )
        # Every open connection of hers is closed within seconds, saying why.
        for ws in (call, board, tag):
            seen, code, reason = await until_closed(ws, timeout_s=10)
            assert code == credentials.CLOSE_REVOKED, (code, reason)
            assert reason.startswith("revoked: ")
            errors = [m for m in seen if m["type"] == "error"]
            assert errors, seen
            assert errors[-1]["code"] == "revoked", seen
            assert "left early" in errors[-1]["message"]
            assert not [m for m in seen if m["type"] == "credential"]
        closed_after_s = time.monotonic() - revoked_at
        print(f"revoked connections closed {closed_after_s:.2f} s after the revocation")
        assert closed_after_s < 3.0
        # Noor's connection goes on.
        assert (await first_of(others, "clock_probe"))["type"] == "clock_probe"
        await others.close()
        # Refused at admission everywhere: her link, and the credential she still holds.
        status, body = await exchange(http, dashboard, {"token": token_in(maria[4])})
        assert (status, body["code"]) == (403, "revoked")
        status, body = await refused(http, f"{capture.url}/ws/call", maria_credential)
        assert (status, body["code"]) == (403, "revoked")
        status, body = await refused(http, f"{dashboard.url}/ws/dashboard", maria_credential)
        assert (status, body["code"]) == (403, "revoked")
        async with http.ws_connect(deployment.ws(capture, "/ws/tag")) as ws:
            assert (await hello(ws, maria_credential))["code"] == "revoked"
        # A link issued after the revocation (the director invites her again) works.
        [again] = await livetag(
            settings, "session", "invite", sid, "--role", "observer", "--name", "Maria"
        )
        assert again[1] == "maria"
        assert again[3] != maria[3]
        await credential_for(http, dashboard, again[4])


async def test_revoking_one_token_id_leaves_the_other_links(deployment: Deployment) -> None:
    settings = deployment.settings
    rows = await livetag(
        settings, "session", "create", "--prompt", "A lift.", "--performers", "ana,ben"
    )
    sid = rows[0][0].removeprefix("session ")
    links = {(row[1], row[2]): row for row in rows[1:]}
    assert set(links) == {
        ("ana", "call"),
        ("ben", "call"),
        ("director", "call"),
        ("director", "dashboard"),
    }
    # The director's two pages carry one link token: one token id to revoke.
    assert links[("director", "call")][3] == links[("director", "dashboard")][3]
    ana, ben = links[("ana", "call")], links[("ben", "call")]
    await livetag(settings, "session", "revoke", sid, "--token-id", ana[3])
    async with aiohttp.ClientSession() as http:
        status, body = await exchange(http, deployment.capture, {"token": token_in(ana[4])})
        assert (status, body["code"]) == (403, "revoked")
        await credential_for(http, deployment.capture, ben[4])
        # A fresh link for the same performer is another token id: it works.
        [fresh] = await livetag(
            settings, "session", "invite", sid, "--role", "performer", "--name", "ana"
        )
        assert fresh[:3] == ["performer", "ana", "call"]
        await credential_for(http, deployment.capture, fresh[4])


async def test_credentials_are_renewed_over_the_connection_until_the_link_is_revoked(
    deployment: Deployment,
) -> None:
    capture, dashboard = deployment.capture, deployment.dashboard
    link = tokens.invite(
        deployment.settings, deployment.session, deployment.secret, role="director"
    )
    async with aiohttp.ClientSession() as http:
        status, issued = await exchange(http, dashboard, {"token": token_in(link.url)})
        assert status == 200
        first = tokens.verify_credential(deployment.secret, issued["credential"])
        call = await http.ws_connect(
            deployment.ws(capture, "/ws/call"), protocols=as_browser(issued["credential"])
        )
        board = await http.ws_connect(
            deployment.ws(dashboard, "/ws/dashboard"),
            protocols=as_browser(issued["credential"]),
            max_msg_size=0,
        )
        tag = await http.ws_connect(deployment.ws(capture, "/ws/tag"))
        assert (await hello(tag, issued["credential"]))["type"] == "welcome"
        # Each connection gets a fresh credential before the current one runs out.
        renewed = []
        for ws in (call, board, tag):
            message = await first_of(ws, "credential")
            claims = tokens.verify_credential(deployment.secret, message["credential"])
            assert claims.token_id == first.token_id
            assert claims.participant_id == "director"
            assert claims.expires_at_s > first.expires_at_s
            assert 0 < message["expires_in_s"] <= CREDENTIAL_TTL_S
            renewed.append(message["credential"])
        # ... which opens new connections after the first one has expired.
        await asyncio.sleep(max(0.0, first.expires_at_s - time.time() + 0.5))
        status, body = await refused(http, f"{capture.url}/ws/call", issued["credential"])
        assert (status, body["code"]) == (401, "bad_token")
        assert "expired" in body["message"]
        async with http.ws_connect(
            deployment.ws(capture, "/ws/call"), protocols=as_browser(renewed[-1])
        ) as fresh:
            await first_of(fresh, "welcome")
        # Revoked (by name, as given to invite): no more renewals, the connections closed.
        rows = await livetag(
            deployment.settings, "session", "revoke", deployment.sid, "--participant", "Director"
        )
        assert rows == [["revoked", deployment.sid, "participant director"]]
        for ws in (call, board, tag):
            seen, code, _reason = await until_closed(ws, timeout_s=10)
            assert code == credentials.CLOSE_REVOKED
            assert [m["code"] for m in seen if m["type"] == "error"] == ["revoked"]
        status, body = await refused(http, f"{dashboard.url}/ws/dashboard", renewed[1])
        assert (status, body["code"]) == (403, "revoked")


async def tags_of(settings: Settings, session_id: str, wanted: set[str]) -> list[records.TagEvent]:
    consumer = clients.make_consumer(settings, topics.TAGS, auto_offset_reset="earliest")
    found: list[records.TagEvent] = []
    await consumer.start()
    try:
        async with asyncio.timeout(20):
            while not wanted <= {tag.tag_id for tag in found}:
                batches = await consumer.getmany(timeout_ms=200)
                found.extend(
                    records.decode(records.TagEvent, m.value, m.headers)
                    for batch in batches.values()
                    for m in batch
                    if (m.key or b"").startswith(f"{session_id}/".encode())
                )
    finally:
        await consumer.stop()
    return [tag for tag in found if tag.tag_id in wanted]


async def session_state(settings: Settings, session_id: str) -> str:
    directory = SessionDirectory(settings)
    await directory.start()
    try:
        record = directory.get(session_id)
    finally:
        await directory.stop()
    assert record is not None
    return record.state


async def test_an_observer_watches_and_tags_and_only_the_director_controls_the_session(
    deployment: Deployment,
) -> None:
    capture, dashboard, sid = deployment.capture, deployment.dashboard, deployment.sid
    settings, session, secret = deployment.settings, deployment.session, deployment.secret
    maria = tokens.invite(settings, session, secret, role="observer", name="Maria")
    noor = tokens.invite(settings, session, secret, role="observer", name="Noor", page="call")
    director = tokens.invite(settings, session, secret, role="director")
    async with aiohttp.ClientSession() as http:
        observer = await credential_for(http, dashboard, maria.url)
        async with http.ws_connect(
            deployment.ws(dashboard, "/ws/dashboard"),
            protocols=as_browser(observer),
            max_msg_size=0,
        ) as board:
            greeting = await first_of(board, "hello")
            assert greeting["you"]["controls"] is False
            assert "links" not in greeting  # no link is made for anyone at a hello
            for action in (
                {"type": "take_start"},
                {"type": "take_end"},
                {"type": "end_session"},
                {"type": "invite", "role": "observer", "name": "Eve"},
            ):
                await board.send_str(json.dumps(action))
                error = await first_of(board, "error")
                assert error["code"] == "forbidden", (action, error)
        async with http.ws_connect(
            deployment.ws(capture, "/ws/call"), protocols=as_browser(observer)
        ) as call:
            await first_of(call, "welcome")
            await call.send_str(json.dumps({"type": "publish", "sdp": "v=0\r\n"}))
            assert (await first_of(call, "error"))["code"] == "forbidden"
        assert await session_state(settings, sid) != "ended"
        # Each observer's tags carry their own rater id (not "director").
        ids = []
        for link in (maria, noor):
            credential = await credential_for(http, capture, link.url)
            async with TagClient(deployment.ws(capture, "/ws/tag"), credential) as client:
                tag_id = await client.tag("ana", "laughter", press_us=wall_us() - 200_000)
                await client.wait_acked([tag_id])
                ids.append(tag_id)
        stored = {tag.tag_id: tag for tag in await tags_of(settings, sid, set(ids))}
        assert [(stored[i].rater_id, stored[i].rater_role) for i in ids] == [
            ("maria", "observer"),
            ("noor", "observer"),
        ]
        # The director's link can invite, and end the session.
        ruler = await credential_for(http, dashboard, director.url)
        async with http.ws_connect(
            deployment.ws(dashboard, "/ws/dashboard"), protocols=as_browser(ruler), max_msg_size=0
        ) as board:
            greeting = await first_of(board, "hello")
            assert greeting["you"]["controls"] is True
            await board.send_str(json.dumps({"type": "invite", "role": "observer", "name": "Lee"}))
            invited = await first_of(board, "invite")
            assert (invited["role"], invited["participant_id"], invited["page"]) == (
                "observer",
                "lee",
                "dashboard",
            )
            claims = tokens.verify_link(secret, token_in(invited["url"]))
            assert claims.token_id == invited["token_id"]
            await board.send_str(json.dumps({"type": "end_session"}))
            async with asyncio.timeout(10):
                while True:
                    update = await first_of(board, "update")
                    if update.get("session", {}).get("state") == "ended":
                        break
    assert await session_state(settings, sid) == "ended"


async def test_tokens_stay_out_of_the_logs(
    deployment: Deployment, caplog: pytest.LogCaptureFixture
) -> None:
    capture, dashboard = deployment.capture, deployment.dashboard
    link = tokens.invite(
        deployment.settings, deployment.session, deployment.secret, role="director"
    )
    link_token = token_in(link.url)
    caplog.set_level(logging.DEBUG)
    async with aiohttp.ClientSession() as http:
        credential = await credential_for(http, capture, link.url)
        for url in (
            f"{capture.url}/direct?token={link_token}",
            f"{dashboard.url}/dashboard?token={link_token}",
            f"{capture.url}/api/token?token={credential}",
            f"{capture.url}/ws/call?token={link_token}",  # refused: a link
        ):
            async with http.get(url) as response:
                await response.read()
        async with http.ws_connect(
            deployment.ws(capture, "/ws/call"), protocols=as_browser(credential)
        ) as ws:
            await first_of(ws, "welcome")
    # The pages keep the link out of Referer headers and caches.
    async with aiohttp.ClientSession() as http, http.get(link.url) as response:
        assert response.headers["Referrer-Policy"] == "no-referrer"
        assert response.headers["Cache-Control"] == "no-store"
    access = [r.getMessage() for r in caplog.records if r.name == "livetag.access"]
    # Every request is in the access log, by path: never with its query.
    for path in ("/direct", "/dashboard", "/api/token", "/api/credential", "/ws/call"):
        assert any(f" {path} " in line for line in access), (path, access)
    logged = caplog.text + "\n".join(access)
    for secret in (link_token, credential, link_token.split(".")[2], credential.split(".")[2]):
        assert secret not in logged


async def test_the_end_of_a_session_closes_its_call_pages_with_the_reason(
    deployment: Deployment,
) -> None:
    capture = deployment.capture
    link = tokens.invite(
        deployment.settings, deployment.session, deployment.secret, role="director"
    )
    async with aiohttp.ClientSession() as http:
        credential = await credential_for(http, capture, link.url)
        call = await http.ws_connect(
            deployment.ws(capture, "/ws/call"), protocols=as_browser(credential)
        )
        await first_of(call, "welcome")
        ended = deployment.session.model_copy(update={"state": "ended", "ts_us": wall_us()})
        producer = clients.make_producer(deployment.settings)
        await producer.start()
        try:
            await publish(producer, ended)
        finally:
            await producer.stop()
        # Closed with 4409 (the page stops rejoining), told why first.
        seen, code, reason = await until_closed(call, timeout_s=10)
        assert code == 4409, (code, reason)
        assert reason.startswith("session_ended: ")
        assert [m["code"] for m in seen if m["type"] == "error"] == ["session_ended"]
        assert capture.refusals["session_ended"] == 1
