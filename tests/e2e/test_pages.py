"""Every page, opened from its join link in real Chromium as people open it: the performer's
call page, the director's call page and the dashboard (each with the tagging widget). No
request is answered with an error (the favicon a browser asks for included), nothing is
written to the console as an error, and the links' tokens appear in no console line and
in no log line of the servers (their request lines included, logged at DEBUG)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.async_api import ConsoleMessage, Page, Request, Response

from capture.server import CaptureServer
from dashboard.server import DashboardServer
from streams.settings import Settings
from taggers import tokens
from taggers.tokens import load_secret
from tests.browser import launch_chromium
from tests.e2e.conftest import new_session
from tests.e2e.test_capture import wait_for_remote_media
from tests.e2e.test_dashboard import dashboard  # noqa: F401  (the fixture)
from tests.e2e.test_tagging import tagger_ready

pytestmark = pytest.mark.e2e


class _Kept(logging.Handler):
    """Every record as its handlers would write it (message and traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def every_log_line() -> Iterator[list[str]]:
    """Every log line of this process at DEBUG (the servers' request lines included),
    with no token filter: nothing may log a token in the first place."""
    root = logging.getLogger()
    kept = _Kept()
    level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(kept)
    try:
        yield kept.lines
    finally:
        root.removeHandler(kept)
        root.setLevel(level)


class Watched:
    """What a page did that people would see as broken: error answers, failed requests,
    console errors and uncaught exceptions; and every console line."""

    def __init__(self, name: str, page: Page) -> None:
        self.name = name
        self.page = page
        self.console: list[str] = []
        self.broken: list[str] = []
        page.on("console", self._console)
        page.on("response", self._response)
        page.on("requestfailed", self._failed)
        page.on("pageerror", lambda error: self.broken.append(f"uncaught: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        line = f"{message.type}: {message.text} @ {message.location}"
        self.console.append(line)
        if message.type == "error":
            self.broken.append(line)

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.broken.append(f"{response.status} {response.request.method} {response.url}")

    def _failed(self, request: Request) -> None:
        self.broken.append(f"failed {request.method} {request.url}: {request.failure}")


async def test_every_page_loads_cleanly_and_no_token_reaches_a_console_or_a_log(
    capture_settings: Settings,
    capture_server: CaptureServer,
    dashboard: DashboardServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    with every_log_line() as log_lines:
        session, links = await new_session(capture_settings, capture_server, ["alice"])
        linked = dashboard.settings.model_copy(update={"dashboard_port": dashboard.port})
        [board] = [
            link.url
            for link in tokens.join_links(linked, session, load_secret(capture_settings))
            if link.page == "dashboard"
        ]
        urls = {"performer": links["alice"], "director": links["director"], "dashboard": board}
        assert urlsplit(urls["director"]).path == "/direct"
        secrets = {parse_qs(urlsplit(url).query)["token"][0] for url in urls.values()}
        async with launch_chromium(
            video_file=None, audio_file=None, user_data_dir=tmp_path / "chromium"
        ) as context:
            watched = {}
            for name, url in urls.items():
                page = await context.new_page()
                watched[name] = Watched(name, page)
                await page.goto(url)
            performer, director, board_page = (
                watched[name].page for name in ("performer", "director", "dashboard")
            )
            await board_page.wait_for_function(
                "window.livetagDashboard && window.livetagDashboard.connected", timeout=20_000
            )
            for page in (performer, director, board_page):
                await tagger_ready(page)
            # The call works: the director watches the performer.
            await wait_for_remote_media(director, "alice")
            # Some seconds of a running scene: clock probes, the dashboard's updates.
            await asyncio.sleep(3.0)
            # A reload takes the link from the tab (the address has no token any more).
            for page in (performer, board_page):
                await page.reload()
            await board_page.wait_for_function(
                "window.livetagDashboard && window.livetagDashboard.connected", timeout=20_000
            )
            for page in (performer, board_page):
                await tagger_ready(page)
            await asyncio.sleep(1.0)
            for seen in watched.values():
                # The console is watched: a line of the page's own arrives.
                await seen.page.evaluate("console.info('livetag test: console watched')")
                await asyncio.sleep(0.2)
    for name, seen in watched.items():
        assert seen.broken == [], (name, seen.broken)
        assert any("console watched" in line for line in seen.console), name
    # The request lines were logged (the page loads among them), and never a token.
    assert any(" GET /join " in line for line in log_lines), log_lines[:20]
    assert any(" GET /dashboard " in line for line in log_lines), log_lines[:20]
    printed = [line for seen in watched.values() for line in seen.console] + log_lines
    for secret in secrets:
        signature = secret.split(".")[2]
        assert [line for line in printed if secret in line or signature in line] == []


async def test_a_tagging_widget_that_cannot_load_costs_the_tagging_not_the_call(
    capture_settings: Settings, capture_server: CaptureServer, tmp_path: Path
) -> None:
    _, links = await new_session(capture_settings, capture_server, ["alice"])
    async with launch_chromium(
        video_file=None, audio_file=None, user_data_dir=tmp_path / "chromium"
    ) as context:
        performer = await context.new_page()
        await performer.goto(links["alice"])
        director = await context.new_page()
        watched = Watched("director", director)
        # The widget's module never arrives (a proxy that blocks it, a failed deploy).
        await director.route("**/tagger/tagger.js", lambda route: route.abort())
        await director.goto(links["director"])
        await wait_for_remote_media(director, "alice")
        assert await director.evaluate("typeof window.livetagTagger") == "undefined"
    assert any("tagging widget failed" in line for line in watched.console), watched.console
