"""A casting day in real Chromium: two performers wait in the lobby (their camera and
microphone from the test clips, the face found by real mediapipe), the director's casting
page sees both, proposes them, starts the scene; both pages land on the call page of the new
session; the director ends it; both go back to the lobby and wait again."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Page

from capture.server import CaptureServer
from dashboard.server import DashboardServer
from streams.kafka import casting, clients
from streams.kafka.scenarios import publish_scenario
from streams.settings import Settings
from taggers import tokens
from taggers.tokens import load_secret
from taggers.vocabulary import load_vocabulary
from tests import media as test_media
from tests.documentation import picture_path
from tests.e2e.conftest import LaunchPage
from tests.samples import SCENARIO

pytestmark = pytest.mark.e2e


@pytest.fixture
async def dashboard(
    capture_settings: Settings, capture_server: CaptureServer
) -> AsyncIterator[DashboardServer]:
    settings = capture_settings.model_copy(
        update={"dashboard_port": 0, "public_url": capture_server.url}
    )
    server = DashboardServer(settings, secret=load_secret(settings))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def _lobby_ready(page: Page) -> None:
    """The lobby page is connected, hears its microphone and found the face."""
    await page.wait_for_function(
        "(() => { const l = window.livetagLobby; return l && l.connected"
        " && l.faceFound === true && l.peakDb !== null && l.peakDb > -50; })()",
        timeout=40_000,
    )


async def _waiting(director: Page, who: list[str]) -> None:
    """The casting page shows ``who`` waiting, each with the face found."""
    await director.wait_for_function(
        """(who) => {
          const c = window.livetagCasting;
          if (!c || !c.day) return false;
          return who.every((id) => c.day.performers.some((p) =>
            p.performer_id === id && p.status === "waiting" && p.check && p.check.face_found
            && p.check.camera && p.check.microphone));
        }""",
        arg=who,
        timeout=40_000,
    )


async def test_a_casting_day_lobby_matching_scene_and_back(
    capture_settings: Settings,
    capture_server: CaptureServer,
    dashboard: DashboardServer,
    open_page: LaunchPage,
    media: test_media.MediaSet,
) -> None:
    linked = capture_settings.model_copy(
        update={"capture_port": capture_server.port, "dashboard_port": dashboard.port}
    )
    producer = clients.make_producer(linked)
    await producer.start()
    try:
        await publish_scenario(producer, SCENARIO, "test")
    finally:
        await producer.stop()
    day = await casting.create_day(
        linked,
        title="E2E casting",
        performer_names=["ana", "ben"],
        vocabulary=load_vocabulary(None),
    )
    links = {
        link.participant_id: link.url for link in tokens.day_links(linked, day, load_secret(linked))
    }
    ana_camera, ana_voice = media.performer(0)
    ben_camera, ben_voice = media.performer(1)
    async with (
        open_page(links["ana"], video=ana_camera, audio=ana_voice) as ana,
        open_page(links["ben"], video=ben_camera, audio=ben_voice) as ben,
        open_page(links["director"], video=None, audio=None) as director,
    ):
        for page in (ana, ben):
            await _lobby_ready(page)
            # The link left the address bar at once; the page keeps it for the way back.
            assert "token" not in page.url
        await director.wait_for_function("window.livetagCasting && window.livetagCasting.connected")
        await _waiting(director, ["ana", "ben"])
        # The lobby table shows both, with their checks and levels.
        rows = director.locator("#lobby tbody tr[data-performer]")
        assert await rows.count() == 2
        await ana.screenshot(path=str(picture_path("lobby.png")))

        await director.click("#propose")
        await director.wait_for_selector(".proposal button", timeout=10_000)
        proposals = await director.evaluate("window.livetagCasting.proposals")
        assert sorted(proposals[0]["performers"]) == ["ana", "ben"]
        assert proposals[0]["scenario_id"] == SCENARIO.scenario_id
        await director.screenshot(path=str(picture_path("casting.png")), full_page=True)
        await director.click(".proposal button")

        # Both performers are sent to the call page of the new scene.
        for page in (ana, ben):
            await page.wait_for_url("**/join**", timeout=20_000)
            await page.wait_for_function(
                "window.livetag && window.livetag.sessionId", timeout=20_000
            )
        session_id = await ana.evaluate("window.livetag.sessionId")
        assert await ben.evaluate("window.livetag.sessionId") == session_id
        recorded = await casting.read_day(linked, day.day_id)
        assert recorded is not None
        [scene] = recorded.scenes
        assert scene.session_id == session_id
        assert sorted(scene.performers) == ["ana", "ben"]
        await director.wait_for_function(
            "(sid) => window.livetagCasting.day.scenes.some((s) => s.session_id === sid"
            " && s.ended_ts_us === null)",
            arg=session_id,
        )
        # The scene's row links to the director dashboard minted with it, in a new tab.
        link = director.locator(f"#scenes li[data-session='{session_id}'] a.dashboard-link")
        await link.wait_for(timeout=10_000)
        assert (await link.get_attribute("href") or "").startswith("/dashboard?token=")
        assert await link.get_attribute("target") == "_blank"

        # The director ends the scene from the casting page.
        await director.click(f"#scenes li[data-session='{session_id}'] button.danger")
        # One follows the link, the other goes back by itself a few seconds later.
        await ana.wait_for_selector("#lobby:not([hidden]) a", timeout=20_000)
        await ana.click("#lobby a")
        await ben.wait_for_selector("#lobby:not([hidden]) a", timeout=20_000)
        for page in (ana, ben):
            await page.wait_for_url("**/lobby", timeout=15_000)
            await page.wait_for_function(
                "window.livetagLobby && window.livetagLobby.connected", timeout=20_000
            )
        await _waiting(director, ["ana", "ben"])
        await director.wait_for_function(
            "(sid) => window.livetagCasting.day.scenes.some((s) => s.session_id === sid"
            " && s.ended_ts_us !== null)",
            arg=session_id,
        )
        ended = await casting.read_day(linked, day.day_id)
        assert ended is not None
        assert ended.scenes[0].ended_ts_us is not None
