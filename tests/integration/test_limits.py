"""Clients per session: one page, tagging connection or dashboard too many gets a clear
refusal, and every refusal is counted where the operator reads it."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pydantic import SecretStr

from capture.server import CaptureServer
from dashboard.server import DashboardServer
from streams import records
from streams.kafka.sessions import create_session
from streams.settings import Settings
from taggers.tokens import load_secret
from taggers.vocabulary import load_vocabulary
from tests.tag_client import SECRET, token_for

pytestmark = pytest.mark.integration

LIMIT = 2


@pytest.fixture
def limited(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "capture_port": 0,
            "dashboard_port": 0,
            "state_dir": tmp_path / "state",
            "max_clients_per_session": LIMIT,
            # The key tests.tag_client.token_for signs with.
            "token_secret": SecretStr(SECRET.decode()),
        }
    )


@pytest.fixture
def capture_settings(limited: Settings) -> Settings:
    return limited  # the capture fixture (tests/integration/conftest.py) runs with these


@pytest.fixture
async def session(limited: Settings) -> records.SessionRecord:
    return await create_session(
        limited,
        prompt="Two strangers share an umbrella.",
        performer_names=["ana", "ben"],
        vocabulary=load_vocabulary(None),
    )


def ws_url(base: str, path: str, token: str | None = None) -> str:
    url = base.replace("http://", "ws://") + path
    return url if token is None else f"{url}?token={token}"


async def first_of(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    while True:
        message = json.loads((await ws.receive(timeout=10)).data)
        if message["type"] == kind:
            return message


async def refusals(http: aiohttp.ClientSession, base: str) -> dict[str, dict[str, int]]:
    async with http.get(f"{base}/metrics/refusals") as response:
        counted: dict[str, dict[str, int]] = await response.json()
        return counted


async def test_call_pages_beyond_the_limit_are_refused_and_counted(
    capture: CaptureServer, session: records.SessionRecord
) -> None:
    sid = session.session_id
    director = token_for(sid, "director", "director")
    async with aiohttp.ClientSession() as http:
        pages = [await http.ws_connect(ws_url(capture.url, "/ws/call", director))]
        pages.append(await http.ws_connect(ws_url(capture.url, "/ws/call", director)))
        for page in pages:
            await first_of(page, "welcome")
        async with http.get(f"{capture.url}/ws/call", params={"token": director}) as refused:
            assert refused.status == 429
            body = await refused.json()
            assert body["code"] == "too_many_clients"
            assert str(LIMIT) in body["message"]
        # The page asks why (a refused handshake says nothing to a browser): told, and
        # the one refusal is not counted twice.
        async with http.get(f"{capture.url}/api/token", params={"token": director}) as why:
            assert why.status == 429
            assert (await why.json())["code"] == "too_many_clients"
        # A page that leaves makes room for the next one.
        await pages.pop().close()
        for _ in range(50):
            if len(capture._connections.get(sid, ())) < LIMIT:
                break
            await first_of(pages[0], "clock_probe")
        again = await http.ws_connect(ws_url(capture.url, "/ws/call", director))
        await first_of(again, "welcome")
        await again.close()
        await pages[0].close()
        counted = await refusals(http, capture.url)
    assert counted["call"] == {"too_many_clients": 1}


async def test_tagging_connections_beyond_the_limit_are_refused_and_counted(
    capture: CaptureServer, session: records.SessionRecord
) -> None:
    sid = session.session_id
    async with aiohttp.ClientSession() as http:
        admitted = []
        for rater in ("obs-1", "obs-2"):
            ws = await http.ws_connect(ws_url(capture.url, "/ws/tag"))
            await ws.send_str(
                json.dumps({"type": "hello", "token": token_for(sid, rater, "observer")})
            )
            await first_of(ws, "welcome")
            admitted.append(ws)
        extra = await http.ws_connect(ws_url(capture.url, "/ws/tag"))
        await extra.send_str(
            json.dumps({"type": "hello", "token": token_for(sid, "obs-3", "observer")})
        )
        error = await first_of(extra, "error")
        assert error["code"] == "too_many_clients"
        closing = await extra.receive(timeout=10)
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        # The admitted raters are untouched: their connections go on.
        assert (await first_of(admitted[0], "clock_probe"))["type"] == "clock_probe"
        for ws in admitted:
            await ws.close()
        # Other refusals are counted by code too.
        bad = await http.ws_connect(ws_url(capture.url, "/ws/tag"))
        await bad.send_str(json.dumps({"type": "hello", "token": "forged.token.value"}))
        assert (await first_of(bad, "error"))["code"] == "bad_token"
        await bad.send_str("x" * 10_000)
        assert (await first_of(bad, "error"))["code"] == "too_big"
        await bad.close()
        counted = await refusals(http, capture.url)
    assert counted["tag"]["too_many_clients"] == 1
    assert counted["tag"]["bad_token"] == 1
    assert counted["tag"]["too_big"] == 1


async def test_dashboards_beyond_the_limit_are_refused_and_counted(
    limited: Settings, capture: CaptureServer, session: records.SessionRecord
) -> None:
    linked = limited.model_copy(update={"capture_port": capture.port})
    dashboard = DashboardServer(linked, secret=load_secret(linked))
    await dashboard.start()
    try:
        director = token_for(session.session_id, "director", "director")
        async with aiohttp.ClientSession() as http:
            open_ones = [
                await http.ws_connect(ws_url(dashboard.url, "/ws/dashboard", director))
                for _ in range(LIMIT)
            ]
            for ws in open_ones:
                await first_of(ws, "hello")
            async with http.get(
                f"{dashboard.url}/ws/dashboard", params={"token": director}
            ) as refused:
                assert refused.status == 429
                assert (await refused.json())["code"] == "too_many_clients"
            performer = token_for(session.session_id, "ana", "performer")
            async with http.get(
                f"{dashboard.url}/ws/dashboard", params={"token": performer}
            ) as refused:
                assert refused.status == 403
            # A message over the websocket's frame limit closes it (1009), counted.
            oversized = open_ones.pop()
            await oversized.send_str("x" * (64 * 1024 + 1))
            async with asyncio.timeout(10):
                closing = await oversized.receive()
                while closing.type == aiohttp.WSMsgType.TEXT:  # updates sent meanwhile
                    closing = await oversized.receive()
            assert closing.type == aiohttp.WSMsgType.CLOSE
            assert closing.data == 1009
            for ws in open_ones:
                await ws.close()
            async with http.get(f"{dashboard.url}/metrics/clients") as response:
                counted = (await response.json())["refusals"]
        assert counted == {"too_many_clients": 1, "not_director": 1, "too_large": 1}
    finally:
        await dashboard.stop()
