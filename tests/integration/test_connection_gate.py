"""Websockets that are not welcome: unauthenticated, too many, or gone silent, against real
servers (streams.runtime.connection_gate in the tag service, the capture server and the
dashboard)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from pydantic import SecretStr

from capture.server import CaptureServer
from dashboard.server import DashboardServer
from streams import records
from streams.kafka.sessions import create_session
from streams.runtime.connection_gate import ConnectionGate
from streams.settings import Settings
from taggers.tokens import load_secret
from taggers.vocabulary import load_vocabulary
from tests.integration.test_limits import first_of, refusals, ws_url
from tests.tag_client import SECRET, ServedTags, serve_tags, session_record, token_for

pytestmark = pytest.mark.integration

HELLO_S = 1.0


async def until(condition: Callable[[], bool], timeout_s: float) -> float:
    """Seconds until ``condition()`` holds (fails after ``timeout_s``)."""
    start = time.monotonic()
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 (the gate's counts are plain numbers)
            await asyncio.sleep(0.02)
    return time.monotonic() - start


async def wait_until_empty(gate: ConnectionGate, timeout_s: float) -> float:
    """Seconds until ``gate`` holds no connection (fails after ``timeout_s``)."""
    return await until(lambda: gate.open == 0, timeout_s)


async def closing_of(ws: aiohttp.ClientWebSocketResponse) -> tuple[list[str], int, str]:
    """The error codes a connection gets before its close, its close code and reason."""
    codes = []
    while True:
        message = await ws.receive()
        if message.type == aiohttp.WSMsgType.TEXT:
            body = json.loads(message.data)
            if body["type"] == "error":
                codes.append(body["code"])
            continue
        assert message.type == aiohttp.WSMsgType.CLOSE, message
        return codes, int(message.data), str(message.extra)


# ---------------------------------------------------------------- a websocket by hand


class RawPeer:
    """A websocket client written by hand, so that a test decides what it answers: pings
    go unanswered, and with ``read=False`` nothing is read at all."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, url: str, *, receive_buffer: int | None = None) -> RawPeer:
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        if receive_buffer is not None:  # before connecting: the window is offered then
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        # A small stream limit: the peer stops taking bytes off the socket early.
        reader, writer = await asyncio.open_connection(sock=sock, limit=4096)
        key = base64.b64encode(os.urandom(16)).decode()
        target = f"{parts.path}?{parts.query}" if parts.query else parts.path
        writer.write(
            (
                f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    @staticmethod
    def frame(text: str) -> bytes:
        payload = text.encode()
        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            head = struct.pack("!BB", 0x81, 0x80 | size)
        else:
            head = struct.pack("!BBH", 0x81, 0x80 | 126, size)
        masked = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
        return head + mask + masked

    async def send(self, message: dict[str, Any]) -> None:
        self.writer.write(self.frame(json.dumps(message)))
        await self.writer.drain()

    async def seconds_until_dropped(self, timeout_s: float) -> float:
        """Read (answering nothing) until the server drops the connection."""
        start = time.monotonic()
        async with asyncio.timeout(timeout_s):
            while await self.reader.read(65536):
                pass
        return time.monotonic() - start

    def close(self) -> None:
        self.writer.transport.abort()


# ---------------------------------------------------------------- the tag service alone


@pytest.fixture
async def served(settings: Settings, session_id: str, tmp_path: Path) -> AsyncIterator[ServedTags]:
    quick = settings.model_copy(
        update={
            "state_dir": tmp_path / "state",
            "ws_hello_timeout_s": HELLO_S,
            "ws_heartbeat_s": 0.5,
            "ws_close_timeout_s": 0.5,
        }
    )
    async with serve_tags(quick, session_record(session_id)) as running:
        yield running


async def test_a_tag_connection_that_sends_nothing_is_closed_at_the_hello_deadline(
    served: ServedTags,
) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(served.url) as ws:
        start = time.monotonic()
        async with asyncio.timeout(HELLO_S + 3):
            codes, code, reason = await closing_of(ws)
        elapsed = time.monotonic() - start
    assert codes == ["hello_timeout"]
    assert code == 4408
    assert reason.startswith("hello_timeout: no valid hello within 1 s")
    assert HELLO_S - 0.2 <= elapsed <= HELLO_S + 1.0
    assert served.service.refusals["hello_timeout"] == 1
    await wait_until_empty(served.service.gate, 2.0)


async def test_a_tag_connection_that_sends_garbage_is_closed_at_the_hello_deadline(
    served: ServedTags,
) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(served.url) as ws:
        start = time.monotonic()
        for garbage in ("{not json", '{"type": "tag"}', "[]", "x" * 9000):
            await ws.send_str(garbage)
        await ws.send_bytes(b"\x00\xff")
        async with asyncio.timeout(HELLO_S + 3):
            codes, code, reason = await closing_of(ws)
        elapsed = time.monotonic() - start
    assert codes[-1] == "hello_timeout"
    assert len(codes) == 6  # each piece of garbage got its error, then the deadline
    assert code == 4408
    assert reason.startswith("hello_timeout")
    assert elapsed >= HELLO_S - 0.2
    assert served.service.refusals["hello_timeout"] == 1


async def test_a_refused_hello_closes_with_its_reason_at_the_deadline_counted_once(
    served: ServedTags,
) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(served.url) as ws:
        await ws.send_str(json.dumps({"type": "hello", "token": "forged.token.value"}))
        async with asyncio.timeout(HELLO_S + 3):
            codes, code, reason = await closing_of(ws)
    assert codes == ["bad_token"]
    assert code == 4401
    assert reason.startswith("bad_token: ")
    assert served.service.refusals == {"bad_token": 1}


async def test_a_token_on_the_upgrade_url_is_checked_before_the_upgrade(
    served: ServedTags,
) -> None:
    sid = served.session.session_id
    async with aiohttp.ClientSession() as http:
        async with http.get(served.url, params={"token": "forged.token.value"}) as refused:
            assert refused.status == 401
            assert (await refused.json())["code"] == "bad_token"
        stranger = token_for(sid, "zoe", "performer")
        with pytest.raises(aiohttp.WSServerHandshakeError) as not_in_roster:
            await http.ws_connect(f"{served.url}?token={stranger}")
        assert not_in_roster.value.status == 403
        # A good token on the URL: upgraded, and welcomed at its hello as before.
        good = token_for(sid, "obs", "observer")
        async with http.ws_connect(f"{served.url}?token={good}") as ws:
            await ws.send_str(json.dumps({"type": "hello", "token": good}))
            assert (await first_of(ws, "welcome"))["rater_id"] == "obs"
    assert served.service.refusals == {"bad_token": 1, "not_in_roster": 1}


async def test_a_peer_that_stops_answering_pings_is_dropped(served: ServedTags) -> None:
    peer = await RawPeer.open(served.url)
    try:
        token = token_for(served.session.session_id, "obs", "observer")
        await peer.send({"type": "hello", "token": token})
        await until(lambda: served.service.gate.unwelcomed == 0, 5.0)
        # Welcomed: no hello deadline any more. It reads what comes but answers nothing:
        # pinged after 0.5 s of silence, dropped when no pong came 0.25 s later.
        elapsed = await peer.seconds_until_dropped(timeout_s=4.0)
    finally:
        peer.close()
    assert elapsed <= 2.0
    await wait_until_empty(served.service.gate, 2.0)


def refused_tags() -> list[str]:
    return [
        json.dumps(
            {
                "type": "tag",
                "tag_id": f"flood-{n:06d}",
                "action": "point",
                "performer_id": "zoe",  # not in the session: refused
                "label": "laughter",
                "client_press_us": 1,
            }
        )
        for n in range(1000)
    ]


async def welcome_and_flood(peer: RawPeer, session_id: str) -> None:
    """Welcome ``peer`` on the tag service, then :func:`flood_until_stuck` with tags."""
    await peer.send({"type": "hello", "token": token_for(session_id, "obs", "observer")})
    await flood_until_stuck(peer, refused_tags())


async def flood_until_stuck(peer: RawPeer, messages: list[str]) -> None:
    """Send ``messages`` (each answered with an error) again and again, reading none of the
    answers, until the server stops taking them: it is stuck in a send to a full socket,
    no longer reading."""
    flood = b"".join(peer.frame(text) for text in messages)
    start = time.monotonic()
    # ConnectionError: the service may drop the peer before its sends block for 2 s.
    with contextlib.suppress(TimeoutError, ConnectionError):
        while time.monotonic() - start < 30:
            peer.writer.write(flood)
            async with asyncio.timeout(2):
                await peer.writer.drain()


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_peer_that_reads_nothing_is_cut_after_its_close_times_out(
    served: ServedTags, caplog: pytest.LogCaptureFixture
) -> None:
    peer = await RawPeer.open(served.url, receive_buffer=4096)
    try:
        await welcome_and_flood(peer, served.session.session_id)
        # Pinged 0.5 s after it stopped reading, no pong by 0.75 s: its websocket is
        # closed, and its connection cut 0.5 s later (plus the sweep's step). Without the
        # cut the service would wait on the full socket for as long as the peer lives.
        elapsed = await wait_until_empty(served.service.gate, 8.0)
    finally:
        peer.close()
    assert elapsed <= 4.0
    assert served.service.gate.cut == 1
    assert errors_logged(caplog) == []


@pytest.fixture
async def patient(settings: Settings, session_id: str, tmp_path: Path) -> AsyncIterator[ServedTags]:
    """A tag service that pings only after 30 s of silence."""
    slow = settings.model_copy(update={"state_dir": tmp_path / "state", "ws_heartbeat_s": 30.0})
    async with serve_tags(slow, session_record(session_id)) as running:
        yield running


async def test_a_peer_that_dies_while_the_service_waits_to_send_to_it_is_no_error(
    patient: ServedTags, caplog: pytest.LogCaptureFixture
) -> None:
    peer = await RawPeer.open(patient.url, receive_buffer=4096)
    try:
        await welcome_and_flood(peer, patient.session.session_id)
        assert patient.service.gate.open == 1
    finally:
        peer.close()  # a reset: the service's waiting send fails with the connection lost
    await wait_until_empty(patient.service.gate, 5.0)
    assert errors_logged(caplog) == []


# ---------------------------------------------------------------- the caps, per server


@pytest.fixture
def capped(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "capture_port": 0,
            "dashboard_port": 0,
            "state_dir": tmp_path / "state",
            "token_secret": SecretStr(SECRET.decode()),
            "ws_max_connections_per_address": 3,
            "ws_max_connections": 5,
            "ws_hello_timeout_s": 30.0,  # unwelcomed connections stay for the whole test
        }
    )


@pytest.fixture
def capture_settings(capped: Settings) -> Settings:
    return capped  # the capture fixture (tests/integration/conftest.py) runs with these


@pytest.fixture
async def session(capped: Settings) -> records.SessionRecord:
    return await create_session(
        capped,
        prompt="Two strangers share an umbrella.",
        performer_names=["ana", "ben"],
        vocabulary=load_vocabulary(None),
    )


def from_address(address: str) -> aiohttp.ClientSession:
    """A client whose connections come from ``address`` (any of 127/8 on loopback)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def test_an_address_beyond_its_cap_is_refused_on_every_endpoint_and_counted(
    capped: Settings, capture: CaptureServer, session: records.SessionRecord
) -> None:
    director = token_for(session.session_id, "director", "director")
    tag_url = ws_url(capture.url, "/ws/tag")
    async with from_address("127.0.0.1") as http, from_address("127.0.0.2") as other:
        # Three from one address: a call page and two tag connections not yet welcomed.
        page = await http.ws_connect(ws_url(capture.url, "/ws/call", director))
        await first_of(page, "welcome")
        unwelcomed = [await http.ws_connect(tag_url) for _ in range(2)]
        for path, token in (("/ws/tag", None), ("/ws/call", director)):
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(ws_url(capture.url, path, token))
            assert refused.value.status == 429
        async with http.get(tag_url) as body:
            assert body.status == 429
            assert (await body.json())["code"] == "too_many_connections"
        # A page asks why its handshake failed, and is told.
        async with http.get(f"{capture.url}/api/token", params={"token": director}) as why:
            assert why.status == 429
            assert (await why.json())["code"] == "too_many_connections"
        # Another address is not affected.
        elsewhere = await other.ws_connect(tag_url)
        assert capture.gate.open == 4
        # The refused took nothing: one leaving makes room for exactly one.
        await unwelcomed.pop().close()
        await until(lambda: capture.gate.open_from("127.0.0.1") == 2, 5.0)
        again = await http.ws_connect(tag_url)
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(tag_url)
        for ws in (page, *unwelcomed, elsewhere, again):
            await ws.close()
        counted = await refusals(http, capture.url)
    assert counted["call"] == {"too_many_connections": 1}
    assert counted["tag"] == {"too_many_connections": 3}
    await wait_until_empty(capture.gate, 5.0)
    assert capture.gate._addresses == {}


async def test_the_connection_beyond_the_servers_total_is_refused_then_admitted_again(
    capture: CaptureServer,
) -> None:
    tag_url = ws_url(capture.url, "/ws/tag")
    sessions = [from_address(f"127.0.0.{n}") for n in range(1, 7)]
    try:
        # Five addresses hold one each: the sixth address is refused, whoever it is.
        held = [await http.ws_connect(tag_url) for http in sessions[:5]]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await sessions[5].ws_connect(tag_url)
        assert refused.value.status == 503
        async with sessions[5].get(tag_url) as body:
            assert (await body.json())["code"] == "server_busy"
        assert capture.gate.open == 5
        await held.pop().close()
        await until(lambda: capture.gate.open == 4, 5.0)
        held.append(await sessions[5].ws_connect(tag_url))
        for ws in held:
            await ws.close()
    finally:
        for http in sessions:
            await http.close()
    assert capture.tags.refusals == {"server_busy": 2}
    await wait_until_empty(capture.gate, 5.0)


async def test_dashboards_beyond_an_addresss_cap_are_refused_and_counted(
    capped: Settings, capture: CaptureServer, session: records.SessionRecord
) -> None:
    linked = capped.model_copy(
        update={"capture_port": capture.port, "ws_max_connections_per_address": 1}
    )
    dashboard = DashboardServer(linked, secret=load_secret(linked))
    await dashboard.start()
    try:
        director = token_for(session.session_id, "director", "director")
        url = ws_url(dashboard.url, "/ws/dashboard", director)
        async with aiohttp.ClientSession() as http:
            first = await http.ws_connect(url)
            await first_of(first, "hello")
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(url)
            assert refused.value.status == 429
            why_url = f"{dashboard.url}/api/dashboard-token"
            async with http.get(why_url, params={"token": director}) as why:
                assert why.status == 429
                assert (await why.json())["code"] == "too_many_connections"
            await first.close()
            await wait_until_empty(dashboard.gate, 5.0)
            second = await http.ws_connect(url)
            await first_of(second, "hello")
            await second.close()
            async with http.get(f"{dashboard.url}/metrics/clients") as response:
                counted = (await response.json())["refusals"]
        assert counted == {"too_many_connections": 1}
    finally:
        await dashboard.stop()


async def test_pages_that_die_while_a_server_waits_to_send_to_them_are_no_error(
    capped: Settings,
    capture: CaptureServer,
    session: records.SessionRecord,
    caplog: pytest.LogCaptureFixture,
) -> None:
    director = token_for(session.session_id, "director", "director")
    linked = capped.model_copy(update={"capture_port": capture.port})
    dashboard = DashboardServer(linked, secret=load_secret(linked))
    await dashboard.start()
    try:
        # Each piece of garbage is answered with a malformed error that nobody reads.
        for server, path in ((capture, "/ws/call"), (dashboard, "/ws/dashboard")):
            peer = await RawPeer.open(f"{server.url}{path}?token={director}", receive_buffer=4096)
            try:
                await flood_until_stuck(peer, ["not json"] * 2000)
                assert server.gate.open == 1
            finally:
                peer.close()
            await wait_until_empty(server.gate, 5.0)
    finally:
        await dashboard.stop()
    assert errors_logged(caplog) == []
