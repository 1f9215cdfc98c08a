"""The /metrics routes: this machine only, or a bearer token; odd queries, concurrent
scrapes, a poisoned health record and a failing handler never take a server down."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from pydantic import SecretStr

from capture.server import CaptureServer
from dashboard.server import DashboardServer, SessionFeed
from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session
from streams.runtime.metrics_access import MetricsGuard
from streams.settings import Settings, is_loopback
from taggers import tokens
from taggers.tokens import load_secret
from taggers.vocabulary import load_vocabulary
from tests.tag_client import SECRET, token_for, wall_us

pytestmark = pytest.mark.integration

TOKEN = "metrics-token-for-the-tests"
CAPTURE_ROUTES = (
    "/metrics",
    "/metrics/clients",
    "/metrics/refusals",
    "/metrics/loop",
    "/metrics/lobby",
    "/metrics/cues",
)
DASHBOARD_ROUTES = ("/metrics", "/metrics/clients")


@pytest.fixture
def web_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={"capture_port": 0, "dashboard_port": 0, "state_dir": tmp_path / "state"}
    )


@pytest.fixture
def capture_settings(web_settings: Settings) -> Settings:
    return web_settings  # the capture fixture (tests/integration/conftest.py) runs with these


@pytest.fixture
async def dashboard(
    web_settings: Settings, capture: CaptureServer
) -> AsyncIterator[DashboardServer]:
    linked = web_settings.model_copy(update={"capture_port": capture.port})
    server = DashboardServer(linked, secret=load_secret(linked))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class Peer:
    """A connection's transport as aiohttp asks it for the peer's address."""

    def __init__(self, address: str) -> None:
        self.address = address

    def get_extra_info(self, name: str, default: object = None) -> object:
        return (self.address, 40000) if name == "peername" else default


def test_only_loopback_addresses_count_as_this_machine() -> None:
    for address in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert is_loopback(address), address
    others: tuple[str | None, ...] = (
        "10.0.0.5",
        "192.168.1.10",
        "::ffff:10.0.0.5",
        "fe80::1%eth0",
        "",
        None,
        "x",
    )
    for other in others:
        assert not is_loopback(other), other


async def test_metrics_refuse_other_machines_and_want_the_token_when_one_is_set(
    web_settings: Settings,
) -> None:
    async def metrics(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    def request_from(address: str, headers: dict[str, str] | None = None) -> web.Request:
        # No other machine reaches the test's loopback-only network: the request says
        # where it came from the way aiohttp reads it, from its transport.
        return make_mocked_request("GET", "/metrics", headers=headers, transport=Peer(address))

    refusals: Counter[str] = Counter()
    open_guard = MetricsGuard(web_settings, refusals).wrap(metrics)
    assert (await open_guard(request_from("127.0.0.1"))).status == 200
    refused = await open_guard(request_from("192.0.2.7"))
    assert refused.status == 403
    assert refusals == {"metrics_forbidden": 1}
    # A reverse proxy on this machine: loopback, but the client is elsewhere.
    for header in ("Forwarded", "X-Forwarded-For", "X-Real-IP"):
        proxied = await open_guard(request_from("127.0.0.1", {header: "192.0.2.7"}))
        assert proxied.status == 403, header
    assert refusals == {"metrics_forbidden": 4}

    with_token = web_settings.model_copy(update={"metrics_token": SecretStr(TOKEN)})
    guarded = MetricsGuard(with_token, refusals).wrap(metrics)
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    # With a token, the token is what counts, from any address, loopback included.
    assert (await guarded(request_from("192.0.2.7", bearer))).status == 200
    assert (await guarded(request_from("127.0.0.1"))).status == 401
    for wrong in ("Bearer nope", f"Basic {TOKEN}", TOKEN, "Bearer"):
        answer = await guarded(request_from("127.0.0.1", {"Authorization": wrong}))
        assert answer.status == 401, wrong
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert refusals["metrics_unauthorized"] == 5


async def test_every_metrics_route_wants_the_token_and_the_dashboard_sends_it(
    web_settings: Settings,
) -> None:
    tokened = web_settings.model_copy(update={"metrics_token": SecretStr(TOKEN)})
    capture = CaptureServer(tokened, secret=load_secret(tokened))
    await capture.start()
    linked = tokened.model_copy(update={"capture_port": capture.port})
    dashboard = DashboardServer(linked, secret=load_secret(linked))
    await dashboard.start()
    try:
        async with aiohttp.ClientSession() as http:
            for base, routes in ((capture.url, CAPTURE_ROUTES), (dashboard.url, DASHBOARD_ROUTES)):
                for route in routes:
                    async with http.get(base + route) as answer:
                        assert answer.status == 401, route
                        assert (await answer.json())["code"] == "metrics_unauthorized"
                    headers = {"Authorization": f"Bearer {TOKEN}"}
                    async with http.get(base + route, headers=headers) as answer:
                        assert answer.status == 200, route
            # The dashboard's health view polls the capture server with the token.
            session = await create_session(
                tokened, prompt="metrics", performer_names=["ana"], vocabulary=load_vocabulary(None)
            )
            before = capture.refusals["metrics_unauthorized"]
            feed = SessionFeed(linked, session, http)
            try:
                performers, clients = await feed._capture_health()
            finally:
                await feed.stop()
            assert capture.refusals["metrics_unauthorized"] == before
            assert (performers, clients) == ({}, [])  # no call yet, read without refusal
            # Without the token it is refused (and shows nothing rather than the error).
            untokened = linked.model_copy(update={"metrics_token": None})
            feed = SessionFeed(untokened, session, http)
            try:
                assert await feed._capture_health() == ({}, [])
            finally:
                await feed.stop()
            assert capture.refusals["metrics_unauthorized"] == before + 1
    finally:
        await dashboard.stop()
        await capture.stop()


async def test_odd_queries_and_concurrent_scrapes_never_fail_a_server(
    capture: CaptureServer, dashboard: DashboardServer
) -> None:
    odd = [
        "?samples=1",
        "?samples=%ff%fe",
        "?samples=1&samples=0",
        "?session=%00",
        "?session=" + "x" * 4000,
        "?since=" + "9" * 5000,
        "?since=-1",
        "?since=1e999",
        "?since=%F0%9F%98%80",
        "?%zz=1",
    ]
    async with aiohttp.ClientSession() as http:
        for base, routes in ((capture.url, CAPTURE_ROUTES), (dashboard.url, DASHBOARD_ROUTES)):
            for route in routes:
                for query in odd:
                    async with http.get(base + route + query) as answer:
                        assert answer.status in (200, 400), (route, query, answer.status)

        async def scrape(url: str) -> int:
            async with http.get(url) as answer:
                await answer.read()
                return answer.status

        urls = [
            base + route
            for base, routes in ((capture.url, CAPTURE_ROUTES), (dashboard.url, DASHBOARD_ROUTES))
            for route in routes
        ]
        statuses = await asyncio.gather(*(scrape(url) for url in urls * 20))
        assert set(statuses) <= {200, 503}, Counter(statuses)
        assert statuses.count(200) >= len(urls)
        # Both still serve.
        assert await scrape(capture.url + "/metrics") == 200
        assert await scrape(dashboard.url + "/metrics") == 200


async def test_a_failing_metrics_handler_answers_500_with_the_reason_and_the_server_goes_on(
    capture: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(since_unix_ms: int | None = None) -> dict[str, object]:
        raise RuntimeError("loop-lag samples are being rebuilt")

    monkeypatch.setattr(capture.loop_lag, "snapshot", broken)
    async with aiohttp.ClientSession() as http:
        async with http.get(capture.url + "/metrics/loop") as answer:
            assert answer.status == 500
            body = await answer.json()
        assert body["code"] == "internal"
        assert "RuntimeError: loop-lag samples are being rebuilt" in body["message"]
        async with http.get(capture.url + "/metrics") as answer:
            assert answer.status == 200


async def test_a_presence_update_the_writer_cannot_take_is_counted_on_the_loop_metrics(
    capture: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = tokens.verify(SECRET, token_for("s-presence", "ana", "performer"))
    # The writer waits on the queue it started with; a one-place queue in its stead fills
    # with the first update, and the second finds no room.
    monkeypatch.setattr(capture, "_presence_updates", asyncio.Queue(maxsize=1))
    capture.note_presence("s-presence", claims, connected=True)
    capture.note_presence("s-presence", claims, connected=False)
    async with aiohttp.ClientSession() as http, http.get(capture.url + "/metrics/loop") as answer:
        assert answer.status == 200
        body = await answer.json()
    assert body["presence_updates_lost"] == {"writer_behind": 1}
    # What the server's session directory skipped is there too (the broker is shared by
    # the whole run: other tests' hostile session records may be counted).
    directory = body["session_directory"]
    assert set(directory) == {
        "undecodable",
        "dead_letters_failed",
        "dead_letters_dropped",
        "read_errors",
    }
    assert directory["undecodable"] == capture._directory.undecodable
    capture._presence_updates.get_nowait()  # the writer's stop waits for what is queued
    capture._presence_updates.task_done()


async def test_a_counter_too_large_for_a_scrape_does_not_fail_it(
    web_settings: Settings, dashboard: DashboardServer
) -> None:
    session_id = f"metrics-{wall_us() % 10**9}"
    producer = clients.make_producer(web_settings)
    await producer.start()
    try:
        for performer, value in (("ana", 10**400), ("ben", 7)):
            record = records.PipelineCounters(
                ts_us=wall_us(),
                session_id=session_id,
                performer_id=performer,
                source="capture",
                counters={"video_frames_dropped": value},
            )
            message = records.encode(record)
            await producer.send_and_wait(
                topics.HEALTH, message.value, key=message.key, headers=message.headers
            )
    finally:
        await producer.stop()
    wanted = f'performer="ben",session="{session_id}"'
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(20):
            while True:
                async with http.get(dashboard.url + "/metrics") as answer:
                    assert answer.status == 200, await answer.text()
                    text = await answer.text()
                if wanted in text:
                    break
                await asyncio.sleep(0.3)
    assert f'performer="ana",session="{session_id}"' not in text


async def test_the_dashboards_desks_and_followers_counters_are_on_its_client_metrics(
    web_settings: Settings, dashboard: DashboardServer
) -> None:
    async def figures() -> dict[str, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.get(dashboard.url + "/metrics/clients") as answer,
        ):
            assert answer.status == 200, await answer.text()
            body: dict[str, Any] = await answer.json()
            return body

    before = await figures()
    casting = before["casting"]
    assert casting["counters"] == dict(dashboard.casting.counters)
    for follower in ("days", "lobby", "coverage"):
        assert set(casting[follower]) == {
            "undecodable",
            "dead_letters_failed",
            "dead_letters_dropped",
            "read_errors",
        }, follower
    assert before["scenarios"] == {
        "saved": dashboard.scenarios.saved,
        "deleted": dashboard.scenarios.deleted,
        "library": dashboard.scenarios.library.counters(),
    }
    # A record the lobby follower cannot read is counted where an operator can see it.
    skipped = casting["lobby"]["undecodable"]
    producer = clients.make_producer(web_settings)
    await producer.start()
    try:
        await producer.send_and_wait(topics.LOBBY, b"{not a presence", key=b"day-x/ana")
    finally:
        await producer.stop()
    async with asyncio.timeout(20):
        while True:
            after = await figures()
            lobby = after["casting"]["lobby"]
            if lobby["undecodable"] > skipped:
                break
            await asyncio.sleep(0.3)
    assert lobby["undecodable"] == dashboard.casting.lobby.undecodable
