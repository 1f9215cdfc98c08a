"""A second browser page with a performer's link cannot take over their media: it is told
why, and takes the seat only once the first page has gone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from capture.server import CaptureServer
from streams.settings import Settings
from tests import media as test_media
from tests.e2e.conftest import LaunchPage, new_session
from tests.e2e.test_capture import _is_live, wait_until

pytestmark = pytest.mark.e2e


async def errors_of(page: Any) -> list[dict[str, Any]]:
    errors: list[dict[str, Any]] = await page.evaluate("window.livetag.errors")
    return errors


async def test_a_second_page_with_a_performer_s_link_waits_until_the_first_has_gone(
    capture_settings: Settings,
    capture_server: CaptureServer,
    open_page: LaunchPage,
    media: test_media.MediaSet,
) -> None:
    session, links = await new_session(capture_settings, capture_server, ["alice"])
    sid = session.session_id
    async with open_page(
        links["alice"], video=media.wolfgang_y4m, audio=media.speech_low_wav
    ) as first:
        await wait_until(lambda: _is_live(capture_server, sid), timeout_s=30)
        call = capture_server.calls[sid]
        held = call.published["alice"]
        async with open_page(
            links["alice"], video=media.wolfgang_y4m, audio=media.speech_low_wav
        ) as second:
            async with asyncio.timeout(30):
                # The page's state, polled: no event reaches the test from the browser.
                while not any(e["code"] == "performer_taken" for e in await errors_of(second)):  # noqa: ASYNC110
                    await asyncio.sleep(0.25)
            status = await second.text_content("#status")
            assert status is not None
            assert "already sending from another page" in status
            # The first page's media goes on, untouched.
            assert call.published["alice"] is held
            frames = call.stats()["alice"]["video_frames_in"]
            await wait_until(
                lambda: call.stats()["alice"]["video_frames_in"] > frames + 20, timeout_s=10
            )
            assert capture_server.refusals["performer_taken"] >= 1
            # The first page goes away: the second one, still asking, takes the seat.
            await first.goto("about:blank")

            def second_publishes() -> bool:
                now = capture_server.calls.get(sid)
                media_now = None if now is None else now.published.get("alice")
                return media_now is not None and media_now is not held and media_now.live

            await wait_until(second_publishes, timeout_s=20)
            async with asyncio.timeout(20):
                while (  # noqa: ASYNC110 - the page's state, polled
                    await second.evaluate("document.getElementById('status').dataset.state")
                    != "live"
                ):
                    await asyncio.sleep(0.25)
