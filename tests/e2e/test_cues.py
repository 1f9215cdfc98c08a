"""Live cues end to end in real Chromium: a director's dashboard sends them (through its
page, window.livetagDashboard.cue), the two performers' pages show them, and each comes
back on livetag.cues as shown, on the session clock; bad cues get their error codes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka import TopicPartition
from playwright.async_api import Page

from capture.server import CaptureServer
from dashboard.server import DashboardServer
from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import publish
from streams.settings import Settings
from taggers.tokens import load_secret
from tests import media as test_media
from tests.e2e.conftest import LaunchPage, new_session
from tests.e2e.test_capture import wait_for_remote_media
from tests.e2e.test_dashboard import dashboard_url, director_token
from tests.tag_client import wall_us

pytestmark = pytest.mark.e2e

CUE_RATE_PER_S = 4.0


@pytest.fixture
async def dashboard(
    capture_settings: Settings, capture_server: CaptureServer
) -> AsyncIterator[DashboardServer]:
    settings = capture_settings.model_copy(
        update={
            "dashboard_port": 0,
            "public_url": capture_server.url,
            "cue_rate_per_s": CUE_RATE_PER_S,
        }
    )
    server = DashboardServer(settings, secret=load_secret(settings))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def send_cue(director: Page, **cue: Any) -> dict[str, Any]:
    """A cue sent as the director's page sends it; the server's answer."""
    reply: dict[str, Any] = await director.evaluate("(c) => window.livetagDashboard.cue(c)", cue)
    return reply


async def on_screen(page: Page, cue_id: str | None) -> None:
    """Wait until the page shows this cue (None: no cue)."""
    await page.wait_for_function(
        "(id) => id === null ? window.livetagCall.cue === null"
        " : Boolean(window.livetagCall.cue && window.livetagCall.cue.cue_id === id)",
        arg=cue_id,
        timeout=10_000,
    )


async def cue_records(settings: Settings, session_id: str) -> dict[str, list[records.Cue]]:
    """Every cue record of the session now on livetag.cues, by cue_id, in order."""
    consumer = clients.make_consumer(settings)
    await consumer.start()
    try:
        partitions = [TopicPartition(topics.CUES, n) for n in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: dict[str, list[records.Cue]] = {}
        while [p for p in partitions if await consumer.position(p) < ends[p]]:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for message in messages:
                    if (message.key or b"").startswith(f"{session_id}/".encode()):
                        cue = records.decode(records.Cue, message.value, message.headers)
                        found.setdefault(cue.cue_id, []).append(cue)
        return found
    finally:
        await consumer.stop()


async def all_shown(
    settings: Settings, session_id: str, cue_ids: set[str], timeout_s: float = 15.0
) -> dict[str, list[records.Cue]]:
    async with asyncio.timeout(timeout_s):
        while True:
            found = await cue_records(settings, session_id)
            if all(any(c.shown_ts_us for c in found.get(i, [])) for i in cue_ids):
                return found
            await asyncio.sleep(0.3)


async def test_the_directors_cues_show_on_the_performers_pages_and_come_back_shown(
    capture_settings: Settings,
    capture_server: CaptureServer,
    dashboard: DashboardServer,
    open_page: LaunchPage,
    media: test_media.MediaSet,
) -> None:
    session, links = await new_session(capture_settings, capture_server, ["alice", "bob"])
    sid = session.session_id
    token = director_token(capture_settings, sid)
    async with (
        open_page(links["alice"], video=media.single_face_y4m, audio=media.speech_low_wav) as alice,
        open_page(links["bob"], video=media.wolfgang_y4m, audio=media.speech_high_wav) as bob,
        open_page(dashboard_url(dashboard, token), video=None, audio=None) as director,
    ):
        await director.wait_for_function(
            "window.livetagDashboard && window.livetagDashboard.connected"
            " && typeof window.livetagDashboard.cue === 'function'",
            timeout=20_000,
        )
        await wait_for_remote_media(alice, "bob")
        await wait_for_remote_media(bob, "alice")

        strong = await send_cue(
            director, to="alice", kind="emotion", label="laughter", intensity="strong"
        )
        assert strong["type"] == "cue_sent", strong
        await on_screen(alice, strong["cue_ids"]["alice"])
        assert await alice.text_content("#cue-label") == "laughter"

        everyone = await send_cue(director, to="all", kind="text", text="Switch places")
        assert set(everyone["cue_ids"]) == {"alice", "bob"}
        await on_screen(alice, everyone["cue_ids"]["alice"])
        await on_screen(bob, everyone["cue_ids"]["bob"])
        assert await bob.text_content("#cue-text") == "Switch places"

        cleared = await send_cue(director, to="bob", kind="clear")
        await on_screen(bob, None)
        assert await bob.is_hidden("#cue")
        # Alice's cue stands: the clear was bob's.
        assert await alice.is_visible("#cue")

        sent = {
            cue_id for reply in (strong, everyone, cleared) for cue_id in reply["cue_ids"].values()
        }
        found = await all_shown(capture_settings, sid, sent)
        delays_ms = []
        for cue_id in sent:
            [first, shown] = found[cue_id]
            assert first.shown_ts_us is None
            assert shown.shown_ts_us is not None
            assert shown.shown_ts_us >= shown.ts_us == first.ts_us
            delays_ms.append((shown.shown_ts_us - shown.ts_us) / 1000)
        print("sent -> shown (ms):", sorted(delays_ms))
        # Shown, not lost (the benchmark's bar for a lost cue): how fast is the
        # benchmark's figure, on a machine not shared with the test's own servers.
        assert max(delays_ms) < 10_000, delays_ms
        assert await alice.evaluate("window.livetagCall.cuesShown") == 2
        assert await bob.evaluate("window.livetagCall.cuesShown") == 2

        # Bad cues: each refused with its code, none published.
        for bad, code in (
            ({"to": "carol", "kind": "emotion", "label": "laughter"}, "unknown_performer"),
            ({"to": "alice", "kind": "emotion", "label": "glee"}, "unknown_label"),
            ({"to": "alice", "kind": "text", "text": "x" * 201}, "text_too_long"),
        ):
            refused = await send_cue(director, **bad)
            assert (refused["type"], refused["code"]) == ("error", code), refused
        # More cues at once than the director's budget allows: the rest are refused.
        burst = await director.evaluate(
            "() => Promise.all(Array.from({length: 10}, (_, i) =>"
            " window.livetagDashboard.cue({to: 'bob', kind: 'text', text: `line ${i}`})))"
        )
        codes = [reply.get("code") for reply in burst]
        assert codes.count("rate_limited") >= 1, codes
        assert codes.count(None) >= 1, codes
        assert dashboard.refusals["rate_limited"] == codes.count("rate_limited")
        await asyncio.sleep(1.0 / CUE_RATE_PER_S + 0.1)  # a token for the next cue

        # Once the scene is over, no cue goes out.
        producer = clients.make_producer(capture_settings)
        await producer.start()
        try:
            await publish(
                producer, session.model_copy(update={"state": "ended", "ts_us": wall_us()})
            )
        finally:
            await producer.stop()
        async with asyncio.timeout(10):
            while True:
                ended = await send_cue(director, to="alice", kind="clear")
                if ended.get("code") == "session_ended":
                    break
                await asyncio.sleep(0.3)
    found = await cue_records(capture_settings, sid)
    refused_text = [c for cues in found.values() for c in cues if c.text == "x" * 201]
    assert refused_text == []
