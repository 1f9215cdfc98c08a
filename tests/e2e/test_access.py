"""An observer's own link in real Chromium: the dashboard opens read-only, the link's token
leaves the address bar and the history at once for a short-lived credential the servers
renew, the observer tags under their own rater id, nothing prints a token in the console,
and a revocation closes the page for good."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.async_api import ConsoleMessage, Page

from capture.server import CaptureServer
from dashboard.server import DashboardServer
from streams.kafka import clients, revocations
from streams.settings import Settings
from taggers import tokens
from taggers.tokens import load_secret
from tests.browser import open_page
from tests.e2e.conftest import new_session
from tests.e2e.test_dashboard import dashboard  # noqa: F401  (the fixture)
from tests.e2e.test_tagging import last_press, tagger_ready, wait_acked
from tests.e2e.test_tagging_widget import tags_of

pytestmark = pytest.mark.e2e

CREDENTIAL_TTL_S = 6  # renewed every ~4 s: the page shows a renewal within the test


@pytest.fixture
def capture_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "capture_port": 0,
            "state_dir": tmp_path / "state",
            "ice_addresses": ["127.0.0.1"],
            "credential_ttl_s": CREDENTIAL_TTL_S,
        }
    )


@contextlib.asynccontextmanager
async def watched_page(url: str, profile: Path, console: list[str]) -> AsyncIterator[Page]:
    """A Chromium page whose every console line (with where it came from) is kept, from
    before it loads ``url``."""

    def keep(message: ConsoleMessage) -> None:
        console.append(f"{message.type}: {message.text} @ {message.location}")

    def listen(page: Page) -> None:
        page.on("console", keep)

    async with open_page(url, user_data_dir=profile, before_load=listen) as page:
        yield page


async def credentials_seen(page: Page) -> set[str]:
    seen: Any = await page.evaluate("window.LIVETAG_CREDENTIALS.current()")
    return {seen} if isinstance(seen, str) else set()


async def test_an_observer_link_opens_a_read_only_dashboard_and_stays_out_of_sight(
    capture_settings: Settings,
    capture_server: CaptureServer,
    dashboard: DashboardServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    session, _links = await new_session(capture_settings, capture_server, ["alice", "bob"])
    linked = dashboard.settings.model_copy(update={"dashboard_port": dashboard.port})
    secret = load_secret(capture_settings)
    link = tokens.invite(linked, session, secret, role="observer", name="Maria Lopez")
    link_token = parse_qs(urlsplit(link.url).query)["token"][0]
    console: list[str] = []
    secrets = {link_token}
    async with watched_page(link.url, tmp_path / "observer", console) as page:
        await page.wait_for_function(
            "window.livetagDashboard && window.livetagDashboard.connected", timeout=20_000
        )
        # The link's token left the address bar and the tab's history (replaced, not
        # pushed), and lives in this tab's sessionStorage only.
        assert "token" not in page.url
        assert page.url == f"{dashboard.url}/dashboard"
        # Two entries: the blank page the browser starts on, and this one, whose address
        # was replaced (not pushed); going back and forth finds no token in either.
        assert await page.evaluate("history.length") == 2
        assert await page.evaluate("sessionStorage.getItem('livetag-dashboard-link')") == link_token
        assert link_token not in await page.evaluate("JSON.stringify(localStorage)")
        # Read-only: no take or session controls, no links.
        assert await page.evaluate("window.livetagDashboard.you") == {
            "rater_id": "maria-lopez",
            "role": "observer",
            "controls": False,
        }
        for control in ("#take-start", "#take-end", "#end-session", "#links"):
            assert not await page.is_visible(control), control
        # The observer tags with the widget, as their own rater.
        await tagger_ready(page)
        await page.keyboard.press("1")  # target: alice
        await page.keyboard.press("l")
        press = await last_press(page)
        await wait_acked(page, press["tag_id"])
        secrets |= await credentials_seen(page)
        # The servers renew the credential over the open connections.
        await page.wait_for_function(
            "window.LIVETAG_CREDENTIALS.renewals >= 2", timeout=(CREDENTIAL_TTL_S + 5) * 1000
        )
        secrets |= await credentials_seen(page)
        assert await page.evaluate("window.LIVETAG_CREDENTIALS.exchanges") == 1

        await page.go_back()
        assert page.url == "about:blank"
        await page.go_forward()
        assert page.url == f"{dashboard.url}/dashboard"
        # A reload (no token in the address any more) joins again from sessionStorage.
        await page.reload()
        await page.wait_for_function(
            "window.livetagDashboard && window.livetagDashboard.connected", timeout=20_000
        )
        await tagger_ready(page)
        secrets |= await credentials_seen(page)

        # Revoked: every connection of the page is closed, it says why, and stops.
        producer = clients.make_producer(capture_settings)
        await producer.start()
        try:
            revocation = revocations.revocation(
                session.session_id, participant_id="maria-lopez", reason="left the production"
            )
            await revocations.publish(producer, revocation)
        finally:
            await producer.stop()
        await page.wait_for_function(
            "document.getElementById('conn').textContent.includes('revoked')", timeout=10_000
        )
        await page.wait_for_function("window.livetagTagger.stopped === true", timeout=10_000)
        await page.wait_for_function(
            "document.getElementById('status').textContent.includes('revoked')", timeout=10_000
        )
        assert "left the production" in (await page.text_content("#conn") or "")
        await asyncio.sleep(3.0)  # no reconnect attempt follows
        assert not await page.evaluate("window.livetagDashboard.connected")
        assert not [c for c in dashboard.clients if c.claims.participant_id == "maria-lopez"]
        assert not capture_server.tags.connections_in(session.session_id)

    [tag] = await tags_of(capture_settings, session.session_id, {press["tag_id"]})
    assert (tag.rater_id, tag.rater_role, tag.performer_id) == ("maria-lopez", "observer", "alice")
    print(f"{len(console)} console lines, e.g.: {console[:5]}")
    assert len(secrets) >= 3  # the link and at least two credentials were looked for
    for line in console:
        for token in secrets:
            assert token not in line, line
            assert token.split(".")[2] not in line, line
