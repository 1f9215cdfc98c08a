"""A page refused by a websocket endpoint says why and comes back slowly, in real Chromium
(the close codes of streams.runtime.connection_gate)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from capture.server import CaptureServer
from dashboard.server import DashboardServer
from streams.settings import Settings
from taggers import tokens
from taggers.tokens import load_secret
from tests.e2e.conftest import LaunchPage, new_session

pytestmark = pytest.mark.e2e

REFUSED_WIDGET = """
async () => {
  const { LivetagTagger } = await import("/tagger/tagger.js");
  const mount = document.createElement("div");
  document.body.append(mount);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  window.refused = new LivetagTagger({
    url: `${scheme}://${location.host}/ws/tag`,
    token: "forged.token.value",
    storageKey: "livetag-refused-widget",
    mount,
  });
}
"""


@pytest.fixture
def capture_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "capture_port": 0,
            "state_dir": tmp_path / "state",
            "ice_addresses": ["127.0.0.1"],
            "ws_hello_timeout_s": 1.0,
        }
    )


async def test_a_refused_tagging_widget_says_why_and_does_not_retry_at_once(
    capture_settings: Settings, capture_server: CaptureServer, open_page: LaunchPage
) -> None:
    _, links = await new_session(capture_settings, capture_server, ["alice"])
    async with open_page(f"{links['director']}&watch=0&tagger=0", video=None, audio=None) as page:
        await page.wait_for_function("Boolean(window.livetag && window.livetag.role)")
        # Its hello is refused at once; the socket is closed at the hello deadline (4401).
        await page.evaluate(REFUSED_WIDGET)
        await page.wait_for_function("window.refused.connects === 1 && window.refused.ws === null")
        status = await page.evaluate("window.refused.statusText")
        assert status.startswith("bad_token: "), status
        # The usual pace would have tried again after 0.5 s, 1 s, 2 s: a refusal waits 10 s.
        await asyncio.sleep(5.0)
        assert await page.evaluate("window.refused.connects") == 1
    assert capture_server.tags.refusals["bad_token"] == 1


async def test_a_call_page_refused_for_its_address_says_why_and_does_not_retry_at_once(
    capture_settings: Settings, open_page: LaunchPage
) -> None:
    # One websocket per address: a second page from this machine is refused (HTTP 429
    # before its upgrade; the page asks the server why).
    one_each = capture_settings.model_copy(update={"ws_max_connections_per_address": 1})
    server = CaptureServer(one_each, secret=load_secret(one_each))
    await server.start()
    try:
        _, links = await new_session(one_each, server, ["alice"])
        url = f"{links['director']}&watch=0&tagger=0"
        async with open_page(url, video=None, audio=None) as first:
            await first.wait_for_function("Boolean(window.livetag && window.livetag.role)")
            async with open_page(url, video=None, audio=None) as second:
                await second.wait_for_function(
                    "document.getElementById('status').textContent.includes('connections open')"
                )
                # The usual pace would have tried again after 0.5 s, 1 s, 2 s.
                await asyncio.sleep(5.0)
                assert await second.evaluate("window.livetag.connects") == 1
        assert server.refusals["too_many_connections"] == 1
    finally:
        await server.stop()


async def test_a_dashboard_refused_for_its_address_says_why_and_does_not_retry_at_once(
    capture_settings: Settings, capture_server: CaptureServer, open_page: LaunchPage
) -> None:
    settings = capture_settings.model_copy(
        update={
            "dashboard_port": 0,
            "public_url": capture_server.url,
            "ws_max_connections_per_address": 1,
        }
    )
    dashboard = DashboardServer(settings, secret=load_secret(settings))
    await dashboard.start()
    try:
        session, _ = await new_session(capture_settings, capture_server, ["alice"])
        link = tokens.issue(
            load_secret(settings),
            session_id=session.session_id,
            role="director",
            participant_id="director",
            ttl_s=600,
        )
        url = f"{dashboard.url}/dashboard?token={link}"
        async with open_page(url, video=None, audio=None) as first:
            await first.wait_for_function("window.livetagDashboard.connected")
            async with open_page(url, video=None, audio=None) as second:
                await second.wait_for_function(
                    "window.livetagDashboard.errors.some("
                    "(e) => (e.message || '').includes('connections open'))"
                )
                # The usual pace would have tried again after 0.5 s, 1 s, 2 s.
                await asyncio.sleep(5.0)
        assert dashboard.refusals["too_many_connections"] == 1
    finally:
        await dashboard.stop()
