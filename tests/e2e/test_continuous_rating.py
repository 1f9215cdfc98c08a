"""Continuous rating in real Chromium against the real tag service and broker: a pointer
drags the valence/arousal pad and the arrow keys move it, a (scripted) gamepad stick moves
the intensity slider across a lost connection and a hidden page; the batches land on
``livetag.ratings`` at the welcome's rate, once each, with values that follow the rater's
hand."""

from __future__ import annotations

import asyncio
import itertools
import statistics
import time
from collections import Counter
from typing import Any

import pytest
from playwright.async_api import Page

from capture.server import CaptureServer
from streams import records
from streams.kafka import topics
from streams.settings import Settings
from tests import media as test_media
from tests.e2e.conftest import LaunchPage, new_session
from tests.e2e.test_capture import wait_for_remote_media
from tests.e2e.test_tagging import last_press, tagger_ready, wait_acked
from tests.topic_records import session_records

pytestmark = pytest.mark.e2e

# A gamepad whose left stick the test moves (window.fakePad.axes): the widget reads
# navigator.getGamepads() at each sampling tick, as it would a real one.
FAKE_GAMEPAD = """
() => {
  window.fakePad = { axes: [0, 0, 0, 0] };
  Object.defineProperty(navigator, "getGamepads", {
    configurable: true,
    value: () => [{
      id: "scripted pad", index: 0, connected: true, mapping: "standard",
      axes: window.fakePad.axes.slice(), buttons: [], timestamp: performance.now(),
    }],
  });
}
"""


# The page as a browser shows it when its tab is in the background (or back).
SET_HIDDEN = """
(hidden) => {
  if (hidden) {
    Object.defineProperty(document, "visibilityState", { configurable: true, get: () => "hidden" });
  } else {
    delete document.visibilityState;
  }
  document.dispatchEvent(new Event("visibilitychange"));
}
"""


# In the page: the rating outbox of sent.js with a storage that counts its writes and a
# scripted page life. Many changes in one turn of the event loop, then the write they share;
# then what the page's going or hiding writes at once. Returns what the test checks.
OUTBOX_WRITES = """
async () => {
  const { SentRatings } = await import("/tagger/sent.js");
  const stored = new Map();
  const storage = {
    get: (name) => (stored.has(name) ? stored.get(name) : null),
    set: (name, value) => (value === null ? stored.delete(name) : stored.set(name, value)),
  };
  let hidden = false;
  let leave = null;
  const page = { hidden: () => hidden, onLeave: (write) => { leave = write; } };
  const sent = new SentRatings(storage, 8, page);
  const batch = (n) => ({
    type: "ratings", batch_id: `batch-${String(n).padStart(8, "0")}-test`, performer_id: "alice",
    mode: "intensity", label: "surprise", rate_hz: 20, samples: [[1000 + n, 0.5, null]],
  });
  const held = () => (stored.has("ratings") ? JSON.parse(stored.get("ratings")).length : 0);
  const seen = {};
  for (let n = 0; n < 300; n += 1) sent.add(batch(n));
  for (let n = 0; n < 290; n += 1) sent.ack({ batch_id: batch(n).batch_id, samples: 1 });
  seen.writesAtOnce = sent.writes;
  await new Promise((done) => setTimeout(done, 1000));
  seen.writesLater = sent.writes;
  seen.heldLater = held();
  sent.add(batch(300));
  leave(); // pagehide: written now, not in 400 ms
  seen.heldAfterLeaving = held();
  hidden = true;
  sent.add(batch(301)); // a hidden page's batch: written at once
  seen.heldWhileHidden = held();
  const restored = new SentRatings(storage, 8, page);
  restored.restore();
  seen.restored = restored.size;
  return seen;
}
"""


def wall_us() -> int:
    return time.time_ns() // 1000


async def batches_of(
    settings: Settings, session_id: str, wanted: set[str]
) -> list[records.RatingBatch]:
    """This session's batches on livetag.ratings, once those ``wanted`` are there."""
    return await session_records(
        settings,
        topics.RATINGS,
        records.RatingBatch,
        session_id,
        enough=lambda found: wanted <= {b.batch_id for b in found},
    )


async def all_acked(page: Page, timeout_s: float = 15.0) -> list[dict[str, Any]]:
    """Once the page holds no unacknowledged batch: the acks it got."""
    await page.wait_for_function(
        "window.livetagTagger.sentRatings.size === 0 && window.livetagTagger.ready",
        timeout=timeout_s * 1000,
    )
    acks: list[dict[str, Any]] = await page.evaluate("window.livetagTagger.sentRatings.acked")
    return acks


def samples_in_order(batches: list[records.RatingBatch]) -> list[records.RatingSample]:
    return sorted((s for b in batches for s in b.samples), key=lambda s: s.client_ts_us)


def number(value: float | None) -> float:
    """A dimension of the batch's mode (the record guarantees it is there)."""
    assert value is not None
    return float(value)


def median_gap_ms(samples: list[records.RatingSample]) -> float:
    return statistics.median(
        (b.client_ts_us - a.client_ts_us) / 1000 for a, b in itertools.pairwise(samples)
    )


async def test_a_pointer_drag_and_the_arrow_keys_make_a_20_hz_trace(
    capture_settings: Settings, capture_server: CaptureServer, open_page: LaunchPage
) -> None:
    session, links = await new_session(capture_settings, capture_server, ["alice", "bob"])
    async with open_page(f"{links['director']}&watch=0", video=None, audio=None) as page:
        await tagger_ready(page)
        rater = await page.evaluate("window.livetagTagger.rater.rater_id")
        assert await page.evaluate("window.livetagTagger.rater.ratings.rate_hz") == 20
        await page.keyboard.press("2")  # target: bob
        await page.click("button[data-mode=valence_arousal]")
        await asyncio.sleep(1.0)
        # Switched on but untouched: nothing sampled, nothing sent.
        assert await page.evaluate("window.livetagTagger.rating.state()") == "waiting"
        assert await page.evaluate("window.livetagTagger.rating.samplesTaken") == 0
        assert await page.evaluate("window.livetagTagger.sentRatings.size") == 0

        box = await page.locator(".lt-pad").bounding_box()
        assert box is not None

        def at(fx: float, fy: float) -> tuple[float, float]:
            return box["x"] + fx * box["width"], box["y"] + fy * box["height"]

        # Drag from valence -0.6 to +0.6 at arousal 0 over two seconds.
        path: list[tuple[int, float]] = []  # (wall µs after the move, valence there)
        await page.mouse.move(*at(0.2, 0.5))
        await page.mouse.down()
        path.append((wall_us(), -0.6))
        for step in range(1, 21):
            await asyncio.sleep(0.1)
            await page.mouse.move(*at(0.2 + 0.03 * step, 0.5))
            path.append((wall_us(), round(-0.6 + 0.06 * step, 3)))
        await page.mouse.up()
        drag_end_us = wall_us()
        await asyncio.sleep(1.0)  # let go: the value holds
        keys_us = wall_us()
        for _ in range(4):
            await page.keyboard.press("ArrowUp")  # arousal +0.05 each
        await page.keyboard.press("Shift+ArrowLeft")  # valence -0.2
        # A label's hotkey still tags while rating: the arrows and the hotkeys never meet.
        await page.keyboard.press("l")
        tap = await last_press(page)
        await asyncio.sleep(1.0)
        # The point the page shows is the one it samples.
        shown = await page.evaluate("window.livetagTagger.rating.current()")
        # The drag ends where the pointer lands on a whole pixel of the pad; the keys' steps
        # are exact.
        assert shown == {
            "valence": pytest.approx(0.4, abs=0.005),
            "arousal": pytest.approx(0.2, abs=1e-9),
        }
        await page.click("button[data-mode=off]")  # closes the last batch
        acks = await all_acked(page)
        failed = await page.evaluate("window.livetagTagger.sentRatings.failed")
        assert failed == []
        assert (await wait_acked(page, tap["tag_id"]))["tag_id"] == tap["tag_id"]
        assert tap["action"] == "point"

    acked_ids = {ack["batch_id"] for ack in acks}
    stored = [
        b
        for b in await batches_of(capture_settings, session.session_id, acked_ids)
        if b.rater_id == rater
    ]
    assert sorted(b.batch_id for b in stored) == sorted(acked_ids)  # each exactly once
    assert {(b.performer_id, b.mode, b.label, b.rate_hz) for b in stored} == {
        ("bob", "valence_arousal", None, 20)
    }
    assert all(len(b.samples) <= 10 for b in stored)  # half-second batches at 20 Hz
    samples = samples_in_order(stored)
    assert sum(ack["samples"] for ack in acks) == len(samples)
    # ~20 Hz: a median gap of 50 ms, and no more samples than the span allows (each is
    # stamped when its timer ran, a few ms late at times).
    assert 45 <= median_gap_ms(samples) <= 55
    span_s = (samples[-1].client_ts_us - samples[0].client_ts_us) / 1e6
    assert 3.5 <= span_s <= 6.0
    assert 14 * span_s <= len(samples) <= 20 * span_s + 2
    for sample in samples:
        # The director's page runs on this machine's clock: sampled == session instant.
        assert sample.basis == "key_press"
        assert abs(sample.ts_us - sample.client_ts_us) <= 5_000
    # The trace starts where the pointer first touched: no line at the untouched centre.
    assert samples[0].valence == pytest.approx(-0.6, abs=0.01)
    assert samples[0].ts_us >= path[0][0] - 50_000

    def expected_range(ts_us: int) -> tuple[float, float]:
        # Where the pointer was within 300 ms either side (the page and the test process
        # share two busy cores), as valence.
        near = [v for t, v in path if abs(t - ts_us) <= 300_000]
        before = [v for t, v in path if t <= ts_us - 300_000]
        if before:
            near.append(before[-1])
        return min(near, default=-0.6), max(near, default=0.6)

    dragging = [s for s in samples if s.ts_us <= drag_end_us]
    assert len(dragging) >= 30
    valences = [number(s.valence) for s in dragging]
    assert valences == sorted(valences)  # it only moved right
    for sample in dragging:
        low, high = expected_range(sample.ts_us)
        assert low - 0.011 <= number(sample.valence) <= high + 0.011, (sample, low, high)
        assert sample.arousal == pytest.approx(0.0, abs=0.011)
    holding = [s for s in samples if drag_end_us + 300_000 <= s.ts_us <= keys_us]
    assert len(holding) >= 10
    assert {(s.valence, s.arousal) for s in holding} == {(0.6, 0.0)}
    last = samples[-10:]
    assert {(s.valence, s.arousal) for s in last} == {(0.4, 0.2)}


async def test_a_gamepad_moves_the_intensity_slider_and_a_lost_connection_loses_nothing(
    capture_settings: Settings, capture_server: CaptureServer, open_page: LaunchPage
) -> None:
    session, links = await new_session(capture_settings, capture_server, ["alice"])
    async with open_page(f"{links['director']}&watch=0", video=None, audio=None) as page:
        await tagger_ready(page)
        await page.evaluate(FAKE_GAMEPAD)
        rater = await page.evaluate("window.livetagTagger.rater.rater_id")
        await page.click("button[data-mode=intensity]")
        await page.select_option(".lt-rating-label", "surprise")
        await asyncio.sleep(0.8)
        assert await page.evaluate("window.livetagTagger.rating.samplesTaken") == 0
        # Stick pushed fully up for 0.6 s: the intensity rises; let go: it holds.
        await page.evaluate("window.fakePad.axes[1] = -1")
        await asyncio.sleep(0.6)
        await page.evaluate("window.fakePad.axes[1] = 0")
        await asyncio.sleep(0.5)
        peak = (await page.evaluate("window.livetagTagger.rating.current()"))["intensity"]
        assert 0.2 <= peak <= 0.8
        # The connection drops and stays down 1.5 s (the service's address unreachable):
        # the trace goes on into the outbox, and out once the page is back.
        url = await page.evaluate("window.livetagTagger.connection.url")
        await page.evaluate(
            "window.livetagTagger.connection.url = 'ws://127.0.0.1:9/ws/tag';"
            "window.livetagTagger.disconnectForTest()"
        )
        await asyncio.sleep(1.5)
        assert await page.evaluate("window.livetagTagger.ready") is False
        assert await page.evaluate("window.livetagTagger.sentRatings.size") >= 2
        await page.evaluate("(url) => { window.livetagTagger.connection.url = url; }", url)
        await tagger_ready(page)
        await asyncio.sleep(0.5)
        # The page is hidden for a second: no samples then (the rater is not watching).
        await page.evaluate(SET_HIDDEN, True)
        taken = await page.evaluate("window.livetagTagger.rating.samplesTaken")
        await asyncio.sleep(1.0)
        assert await page.evaluate("window.livetagTagger.rating.state()") == "paused"
        assert await page.evaluate("window.livetagTagger.rating.samplesTaken") == taken
        await page.evaluate(SET_HIDDEN, False)
        await asyncio.sleep(0.5)
        assert await page.evaluate("window.livetagTagger.rating.samplesTaken") > taken
        await page.click("button[data-mode=off]")
        acks = await all_acked(page)

    acked_ids = {ack["batch_id"] for ack in acks}
    stored = [
        b
        for b in await batches_of(capture_settings, session.session_id, acked_ids)
        if b.rater_id == rater
    ]
    assert sorted(b.batch_id for b in stored) == sorted(acked_ids)  # once each
    assert {(b.performer_id, b.mode, b.label) for b in stored} == {
        ("alice", "intensity", "surprise")
    }
    samples = samples_in_order(stored)
    values = [number(s.intensity) for s in samples]
    # Sampling began with the stick's first move: never a run of zeros first.
    assert 0 < values[0] <= 0.1
    assert values == sorted(values)  # up only, then held
    assert values[-1] == pytest.approx(peak, abs=0.0005)  # sent with 3 decimals
    assert values.count(values[-1]) >= 2 * 20 * 0.9  # held through the outage and after
    # No hole where the connection was down (the page kept sampling), one where it was
    # hidden.
    gaps_ms = [(b.client_ts_us - a.client_ts_us) / 1000 for a, b in itertools.pairwise(samples)]
    assert len([gap for gap in gaps_ms if gap > 200]) == 1
    assert 950 <= max(gaps_ms) <= 1_600
    assert 45 <= statistics.median(gaps_ms) <= 55


async def test_a_watcher_s_samples_land_on_the_frames_on_screen(
    capture_settings: Settings,
    capture_server: CaptureServer,
    open_page: LaunchPage,
    media: test_media.MediaSet,
) -> None:
    session, links = await new_session(capture_settings, capture_server, ["alice"])
    video, audio = media.performer(0)
    async with (
        open_page(links["alice"], video=video, audio=audio),
        open_page(links["director"], video=None, audio=None) as director,
    ):
        await wait_for_remote_media(director, "alice")
        await tagger_ready(director)
        rater = await director.evaluate("window.livetagTagger.rater.rater_id")
        await director.click("button[data-mode=valence_arousal]")
        for _ in range(10):  # a rater nudging the point up while watching alice
            await director.keyboard.press("ArrowUp")
            await asyncio.sleep(0.15)
        await asyncio.sleep(0.5)
        await director.click("button[data-mode=off]")
        acks = await all_acked(director)

    acked_ids = {ack["batch_id"] for ack in acks}
    stored = [
        b
        for b in await batches_of(capture_settings, session.session_id, acked_ids)
        if b.rater_id == rater
    ]
    assert sorted(b.batch_id for b in stored) == sorted(acked_ids)
    samples = samples_in_order(stored)
    assert len(samples) >= 30
    on_frames = [s for s in samples if s.basis == "frame_on_screen"]
    # The call page tracks the frames it presents; a sample names the one on screen then.
    assert len(on_frames) >= 0.8 * len(samples)
    offsets = {b.clock_offset_us for b in stored}
    assert max(offsets) - min(offsets) <= 5_000
    offset_us = statistics.median(offsets)
    for sample in on_frames:
        # The frame seen was captured before it was sampled: by the video's delay, under
        # a second on loopback.
        delay_us = sample.client_ts_us + offset_us - sample.ts_us
        assert 0 < delay_us < 1_000_000, delay_us
    frame_times = [s.ts_us for s in on_frames]
    assert frame_times == sorted(frame_times)
    assert [s.arousal for s in samples] == sorted(s.arousal or 0 for s in samples)


async def test_the_rating_outbox_is_written_at_most_every_few_hundred_ms_and_when_the_page_goes(
    capture_settings: Settings, capture_server: CaptureServer, open_page: LaunchPage
) -> None:
    _, links = await new_session(capture_settings, capture_server, ["alice"])
    async with open_page(f"{links['director']}&watch=0", video=None, audio=None) as page:
        await tagger_ready(page)
        seen = await page.evaluate(OUTBOX_WRITES)
    # 590 changes, one write, of the 10 batches still unacknowledged.
    assert seen["writesAtOnce"] == 0
    assert seen["writesLater"] == 1
    assert seen["heldLater"] == 10
    assert seen["heldAfterLeaving"] == 11
    assert seen["heldWhileHidden"] == 12
    assert seen["restored"] == 12


async def test_batches_held_in_an_outage_survive_a_reload_and_are_stored_once(
    capture_settings: Settings, capture_server: CaptureServer, open_page: LaunchPage
) -> None:
    session, links = await new_session(capture_settings, capture_server, ["alice"])
    async with open_page(f"{links['director']}&watch=0", video=None, audio=None) as page:
        await tagger_ready(page)
        rater = await page.evaluate("window.livetagTagger.rater.rater_id")
        await page.click("button[data-mode=valence_arousal]")
        await page.keyboard.press("ArrowUp")  # the first move: sampling starts
        await asyncio.sleep(0.6)
        # The service unreachable: the trace piles up in the outbox.
        await page.evaluate(
            "window.livetagTagger.connection.url = 'ws://127.0.0.1:9/ws/tag';"
            "window.livetagTagger.disconnectForTest()"
        )
        await asyncio.sleep(2.0)
        for _ in range(3):
            await page.keyboard.press("ArrowUp")
            await asyncio.sleep(0.3)
        # Reloaded at once, most likely before the last batches' write was due: the page
        # writes them as it goes.
        held: list[str] = await page.evaluate("[...window.livetagTagger.sentRatings.outbox.keys()]")
        await page.reload()
        await tagger_ready(page)
        restored: list[str] = await page.evaluate(
            "window.livetagTagger.sentRatings.acked.map((ack) => ack.batch_id)"
            ".concat([...window.livetagTagger.sentRatings.outbox.keys()])"
        )
        assert set(held) <= set(restored)
        acks = await all_acked(page)
    assert len(held) >= 4
    acked_ids = {ack["batch_id"] for ack in acks}
    assert set(held) <= acked_ids
    stored = [
        b
        for b in await batches_of(capture_settings, session.session_id, acked_ids)
        if b.rater_id == rater
    ]
    counts = Counter(b.batch_id for b in stored)
    assert set(held) <= set(counts)
    assert max(counts.values()) == 1
