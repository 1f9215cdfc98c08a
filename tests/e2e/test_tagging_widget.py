"""The tagging widget in real Chromium against the real tag service and broker: taps, holds,
intensity, undo, reaction lag (set and calibrated), and re-sending across a lost connection."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from playwright.async_api import Page

from capture.server import CaptureServer
from streams import records
from streams.kafka import topics
from streams.settings import Settings
from tests.e2e.conftest import LaunchPage, new_session
from tests.e2e.test_tagging import last_press, tagger_ready, wait_acked
from tests.topic_records import session_records

pytestmark = pytest.mark.e2e


REACT_AFTER_200_MS = """
() => new MutationObserver((changes) => {
  for (const change of changes) {
    if (change.target.classList && change.target.classList.contains("is-shown")) {
      setTimeout(() => window.dispatchEvent(
        new KeyboardEvent("keydown", { key: " ", code: "Space", bubbles: true })), 200);
    }
  }
}).observe(document.body, { attributes: true, subtree: true, attributeFilter: ["class"] })
"""


# A rater who presses Space 400 ms after each expression change of the calibration clip.
REACT_TO_CLIP_AFTER_400_MS = """
() => document.addEventListener("livetag-change-shown", () => setTimeout(() =>
  window.dispatchEvent(new KeyboardEvent("keydown", { key: " ", code: "Space", bubbles: true })),
  400))
"""


async def tags_of(settings: Settings, session_id: str, wanted: set[str]) -> list[records.TagEvent]:
    """This session's tags on livetag.tags, once those ``wanted`` are there."""
    return await session_records(
        settings,
        topics.TAGS,
        records.TagEvent,
        session_id,
        enough=lambda found: wanted <= {t.tag_id for t in found},
    )


async def presses(page: Page) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = await page.evaluate("window.livetagTagger.lastPresses")
    return result


async def test_widget_taps_holds_undoes_and_resends(
    capture_settings: Settings, capture_server: CaptureServer, open_page: LaunchPage
) -> None:
    session, links = await new_session(capture_settings, capture_server, ["alice", "bob"])
    async with open_page(f"{links['director']}&watch=0", video=None, audio=None) as page:
        await tagger_ready(page)
        await asyncio.sleep(1.0)  # a page is open a moment before its first tag
        await page.keyboard.press("2")  # target: bob, the second performer
        await page.keyboard.press("l")  # tap
        tap = await last_press(page)
        await page.keyboard.down("h")  # hold for 400 ms
        await asyncio.sleep(0.4)
        await page.keyboard.up("h")
        onset, offset = (await presses(page))[-2:]
        await page.keyboard.press("Shift+G")  # strong anger
        strong = await last_press(page)
        await page.keyboard.press("Backspace")  # undo the anger
        undo = await last_press(page)
        for press in (tap, onset, offset, strong, undo):
            await wait_acked(page, press["tag_id"])

        # A lost connection: tags pressed meanwhile wait in the outbox, then go out once.
        await page.evaluate("window.livetagTagger.disconnectForTest()")
        for key in "sdfxc":
            await page.keyboard.press(key)
        offline = (await presses(page))[-5:]
        await tagger_ready(page)
        for press in offline:
            await wait_acked(page, press["tag_id"])
        assert await page.evaluate("window.livetagTagger.outbox.size") == 0
        assert await page.evaluate("window.livetagTagger.failed") == []

    ids = {p["tag_id"] for p in (tap, onset, offset, strong, undo, *offline)}
    stored = await tags_of(capture_settings, session.session_id, ids)
    mine = [t for t in stored if t.tag_id in ids]
    assert Counter(t.tag_id for t in mine) == Counter(dict.fromkeys(ids, 1))
    by_id = {t.tag_id: t for t in mine}
    assert by_id[tap["tag_id"]].action == "point"
    assert by_id[tap["tag_id"]].label == "laughter"
    assert by_id[tap["tag_id"]].performer_id == "bob"
    assert by_id[tap["tag_id"]].span_us == capture_settings.tag_default_span_ms * 1000
    assert by_id[onset["tag_id"]].action == "onset"
    assert by_id[offset["tag_id"]].action == "offset"
    assert by_id[offset["tag_id"]].onset_tag_id == onset["tag_id"]
    held_us = by_id[offset["tag_id"]].ts_us - by_id[onset["tag_id"]].ts_us
    assert 380_000 <= held_us <= 600_000, held_us
    assert by_id[strong["tag_id"]].intensity == "strong"
    assert by_id[strong["tag_id"]].label == "anger"
    assert by_id[undo["tag_id"]].action == "undo"
    assert by_id[undo["tag_id"]].undoes_tag_id == strong["tag_id"]
    assert [by_id[p["tag_id"]].label for p in offline] == [
        "surprise",
        "sadness",
        "fear",
        "disgust",
        "confusion",
    ]
    for press in (tap, onset, offset, strong, *offline):
        # The director's page clock is this machine's: each tag is on its key press.
        tag = by_id[press["tag_id"]]
        error_us = tag.ts_us - press["press_unix_us_true"]
        print(press["action"], error_us, tag.timing.clock_uncertainty_us, tag.timing.rtt_us)
    for press in (tap, onset, offset, strong, *offline):
        error_us = by_id[press["tag_id"]].ts_us - press["press_unix_us_true"]
        assert abs(error_us) <= 5_000, (press, error_us)


async def test_reaction_lag_calibrated_then_applied(
    capture_settings: Settings, capture_server: CaptureServer, open_page: LaunchPage
) -> None:
    session, links = await new_session(capture_settings, capture_server, ["alice"])
    async with open_page(f"{links['director']}&watch=0", video=None, audio=None) as page:
        await tagger_ready(page)
        # A rater who reacts 200 ms after the square appears: the page presses Space itself
        # 200 ms after the square's class is set (Playwright's own polling would add its
        # variable delay to the reaction being measured).
        await page.evaluate(REACT_AFTER_200_MS)
        await page.evaluate("window.livetagTagger.calibrate('squares')")
        # 8 trials, each after a random 1-3 s wait.
        await page.wait_for_selector(".livetag-cal", state="detached", timeout=40_000)
        await page.wait_for_function("window.livetagTagger.reactionLagUs > 0", timeout=10_000)
        lag_us = await page.evaluate("window.livetagTagger.reactionLagUs")
        await page.keyboard.press("l")
        tap = await last_press(page)
        await wait_acked(page, tap["tag_id"])
    # 200 ms after the class change, less the frame or two until the square was on screen.
    assert 150_000 <= lag_us <= 220_000, lag_us
    [tag] = [
        t
        for t in await tags_of(capture_settings, session.session_id, {tap["tag_id"]})
        if t.tag_id == tap["tag_id"]
    ]
    assert tag.timing.reaction_lag_us == lag_us
    assert abs(tag.ts_us - (tap["press_unix_us_true"] - lag_us)) <= 5_000


async def test_reaction_lag_calibrated_on_the_expression_clip(
    capture_settings: Settings, capture_server: CaptureServer, open_page: LaunchPage
) -> None:
    _, links = await new_session(capture_settings, capture_server, ["alice"])
    async with open_page(f"{links['director']}&watch=0", video=None, audio=None) as page:
        await tagger_ready(page)
        await page.evaluate(REACT_TO_CLIP_AFTER_400_MS)
        await page.evaluate("window.livetagTagger.calibrate()")
        # Opened without a kind, the dialog asks which: the rater picks the clip.
        await page.click("text=Expression clip (60 s)")
        changes = await page.evaluate(
            "new Promise((done) => { let n = 0; document.addEventListener("
            "'livetag-change-shown', () => { n += 1; if (n === 3) done(n); }); })"
        )
        assert changes == 3
        await page.wait_for_selector(".livetag-cal", state="detached", timeout=75_000)
        await page.wait_for_function("window.livetagTagger.reactionLagUs > 0", timeout=10_000)
        lag_us = await page.evaluate("window.livetagTagger.reactionLagUs")
    # 400 ms after each change was first on screen, plus the timer's own delay.
    assert 390_000 <= lag_us <= 470_000, lag_us
