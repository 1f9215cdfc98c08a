"""End-to-end fixtures: a real capture server, real sessions, real headless Chromium."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page

from capture.server import CaptureServer
from streams import records
from streams.kafka.sessions import create_session
from streams.settings import Settings
from taggers.tokens import join_links, load_secret
from taggers.vocabulary import load_vocabulary
from tests import browser
from tests import media as test_media
from tests.browser import NETNS_HINT, only_loopback


@pytest.fixture(autouse=True)
def _loopback_only() -> None:
    # WebRTC must not touch any interface but loopback: these tests run in a network
    # namespace (make test does this); elsewhere they fail, they never silently skip.
    if not only_loopback():
        pytest.fail(NETNS_HINT)


@pytest.fixture(scope="session")
def media() -> test_media.MediaSet:
    return test_media.prepare(test_media.default_dir())


@pytest.fixture
def capture_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={"capture_port": 0, "state_dir": tmp_path / "state", "ice_addresses": ["127.0.0.1"]}
    )


async def new_session(
    settings: Settings, server: CaptureServer, performers: list[str]
) -> tuple[records.SessionRecord, dict[str, str]]:
    """A fresh session and its join links (performer id or 'director' -> URL)."""
    session = await create_session(
        settings,
        prompt="You both want the last seat on the bus.",
        performer_names=performers,
        vocabulary=load_vocabulary(None),
    )
    linked = settings.model_copy(update={"capture_port": server.port})
    links = {
        link.participant_id: link.url
        for link in join_links(linked, session, load_secret(settings))
        if link.page == "call"
    }
    return session, links


LaunchPage = Callable[..., AbstractAsyncContextManager[Page]]


@pytest.fixture
def open_page(tmp_path: Path) -> LaunchPage:
    """``async with open_page(url, video=..., audio=...) as page``: one Chromium per page."""
    from contextlib import asynccontextmanager

    counter = iter(range(1000))

    @asynccontextmanager
    async def launch(url: str, *, video: Path | None, audio: Path | None) -> AsyncIterator[Page]:
        profile = tmp_path / f"chromium-{next(counter)}"
        async with browser.open_page(
            url, video_file=video, audio_file=audio, user_data_dir=profile
        ) as page:
            yield page

    return launch


async def receive_stats(page: Page) -> dict[str, Any]:
    stats: dict[str, Any] = await page.evaluate("window.livetag.receiveStats()")
    return stats
