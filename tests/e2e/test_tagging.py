"""Tagging in real Chromium: an observer tags the frame on screen, a performer with a
skewed clock tags themself; both land on the session clock and in the labeled stream."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from playwright.async_api import Page

from capture.server import CaptureServer
from infra.worker import ProcessorWorker
from streams import records
from streams.kafka import clients, topics
from streams.settings import Settings
from taggers.tokens import load_secret
from tests import media as test_media
from tests.e2e.conftest import LaunchPage, new_session
from tests.e2e.test_capture import wait_for_remote_media
from tests.lipsync import flash_onsets

pytestmark = pytest.mark.e2e

# Runs in the observer page: report each white frame of alice's video as it is presented
# (its RTP timestamp on this page's subscription), so the test can press right then.
WATCH_FLASHES = """
() => {
  const video = document.querySelector('figure[data-performer="alice"] video');
  const canvas = document.createElement("canvas");
  canvas.width = 32;
  canvas.height = 18;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  let wasBright = false;
  const onFrame = (_now, metadata) => {
    context.drawImage(video, 0, 0, 32, 18);
    const pixels = context.getImageData(0, 0, 32, 18).data;
    let sum = 0;
    for (let i = 0; i < pixels.length; i += 4) sum += pixels[i];
    const bright = sum / (pixels.length / 4) > 150;
    if (bright && !wasBright && metadata.rtpTimestamp !== undefined) {
      const rtp = metadata.rtpTimestamp;
      if (window.livetagPressOnFlash > 0) {
        // The observer's key press, timed in the page to 5 ms after the flash becomes
        // visible (the call page times frames by expectedDisplayTime): a press sent from
        // the test process came after the 33 ms frame too often on a busy machine.
        window.livetagPressOnFlash -= 1;
        const delay = Math.max(0, metadata.expectedDisplayTime - performance.now() + 5);
        setTimeout(() => {
          window.dispatchEvent(new KeyboardEvent("keydown", { key: "l", code: "KeyL" }));
          window.dispatchEvent(new KeyboardEvent("keyup", { key: "l", code: "KeyL" }));
          window.livetagFlash(rtp);
        }, delay);
      } else {
        window.livetagFlash(rtp);
      }
    }
    wasBright = bright;
    video.requestVideoFrameCallback(onFrame);
  };
  video.requestVideoFrameCallback(onFrame);
}
"""


async def tagger_ready(page: Page, timeout_s: float = 20.0) -> None:
    await page.wait_for_function(
        "Boolean(window.livetagTagger && window.livetagTagger.ready)", timeout=timeout_s * 1000
    )


async def wait_acked(page: Page, tag_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            acked = await page.evaluate(
                "(id) => window.livetagTagger.acked.find((ack) => ack.tag_id === id) || null",
                tag_id,
            )
            if acked:
                return dict(acked)
            await asyncio.sleep(0.05)


async def last_press(page: Page) -> dict[str, Any]:
    press: dict[str, Any] = await page.evaluate("window.livetagTagger.lastPresses.at(-1)")
    return press


async def read_session(
    settings: Settings, session: records.SessionRecord, until: Any, timeout_s: float
) -> dict[str, list[Any]]:
    """Video frames, tags and label windows of the session, until ``until(found)``."""
    consumer = clients.make_consumer(
        settings, session.topics.video, topics.TAGS, topics.LABELS, auto_offset_reset="earliest"
    )
    found: dict[str, list[Any]] = {"video": [], "tags": [], "labels": []}
    prefix = f"{session.session_id}/".encode()
    await consumer.start()
    try:
        async with asyncio.timeout(timeout_s):
            while not until(found):
                batches = await consumer.getmany(timeout_ms=200)
                for batch in batches.values():
                    for message in batch:
                        if not (message.key or b"").startswith(prefix):
                            continue
                        kind = topics.record_type_of(message.topic)
                        record = records.decode(kind, message.value, message.headers)
                        if isinstance(record, records.VideoFrame):
                            found["video"].append(record)
                        elif isinstance(record, records.TagEvent):
                            found["tags"].append(record)
                        elif isinstance(record, records.LabelWindow):
                            found["labels"].append(record)
    finally:
        await consumer.stop()
    return found


def window_with(labels: list[records.LabelWindow], tag: records.TagEvent) -> bool:
    for window in labels:
        if window.ts_us <= tag.ts_us < window.ts_us + window.window_us and any(
            active.tag_id == tag.tag_id for rater in window.raters for active in rater.labels
        ):
            return True
    return False


async def test_observer_tags_the_frame_on_screen_and_a_skewed_performer_tags_themself(
    capture_settings: Settings, open_page: LaunchPage, media: test_media.MediaSet
) -> None:
    # Every frame forked (30 fps), so the one-frame flash the observer saw is on the topic.
    settings = capture_settings.model_copy(update={"video_fps": 30.0})
    server = CaptureServer(settings, secret=load_secret(settings))
    await server.start()
    stop = asyncio.Event()
    worker: asyncio.Task[None] | None = None
    observed: list[tuple[str, int]] = []  # (tag_id, rtp of the flash frame pressed on)
    try:
        session, links = await new_session(settings, server, ["alice"])
        worker = asyncio.create_task(
            ProcessorWorker(settings, only_sessions={session.session_id}).run(stop)
        )
        sync = media.lipsync
        async with (
            open_page(
                f"{links['alice']}&clock_skew_ms=1500", video=sync.video, audio=sync.audio
            ) as alice,
            open_page(links["director"], video=None, audio=None) as director,
        ):
            await wait_for_remote_media(director, "alice")
            await tagger_ready(alice)
            await tagger_ready(director)

            # The performer's page clock runs 1.5 s ahead of the machine clock.
            await alice.keyboard.press("a")
            self_press = await last_press(alice)
            self_ack = await wait_acked(alice, self_press["tag_id"])

            # Sender reports (every few s) must time the frames before the flash test.
            await asyncio.sleep(6.0)
            flashes: asyncio.Queue[int] = asyncio.Queue()
            await director.expose_function("livetagFlash", flashes.put_nowait)
            await director.evaluate(WATCH_FLASHES)
            for _attempt in range(5):
                while not flashes.empty():  # the flash pressed on, not a past one
                    flashes.get_nowait()
                await director.evaluate("window.livetagPressOnFlash = 1")
                flash_rtp = await asyncio.wait_for(flashes.get(), timeout=5)
                press = await last_press(director)
                # The widget took the flash as the frame on screen (it tracks presented
                # frames itself; a press it placed on another frame would fail this test).
                # The press is a page event, not a device one: what this checks is the
                # frame reference and its mapping to capture time; real key input is the
                # performer's press above.
                if press["frame"] and press["frame"]["rtp_timestamp"] == flash_rtp:
                    await wait_acked(director, press["tag_id"])
                    observed.append((press["tag_id"], flash_rtp))
                if len(observed) >= 2:
                    break
            assert observed, "no press landed while a flash frame was on screen"
            wanted = {tag_id for tag_id, _ in observed} | {self_press["tag_id"]}

            def complete(found: dict[str, list[Any]]) -> bool:
                tags = [t for t in found["tags"] if t.tag_id in wanted]
                return len(tags) == len(wanted) and all(
                    window_with(found["labels"], t) for t in tags
                )

            found = await read_session(settings, session, complete, timeout_s=60)
    finally:
        stop.set()
        if worker is not None:
            await worker
        await server.stop()

    tags = {t.tag_id: t for t in found["tags"]}
    self_tag = tags[self_press["tag_id"]]
    true_press_us = self_press["press_unix_us_true"]
    assert self_tag.rater_role == "performer"
    assert self_tag.performer_id == "alice"
    assert self_tag.timing.basis == "key_press"
    assert abs(self_tag.timing.clock_offset_us + 1_500_000) < 5_000
    print("self-tag error ms:", (self_tag.ts_us - true_press_us) / 1000)
    assert abs(self_tag.ts_us - true_press_us) <= 5_000, (self_tag.ts_us - true_press_us) / 1000
    assert self_ack["ts_us"] == self_tag.ts_us

    video = [f for f in found["video"] if f.header.performer_id == "alice"]
    flash_times = flash_onsets(video)
    assert flash_times, "no flash frame on the video topic"
    for tag_id, flash_rtp in observed:
        tag = tags[tag_id]
        assert tag.timing.basis == "frame_on_screen"
        assert tag.timing.media_rtp_timestamp == flash_rtp
        nearest = min(flash_times, key=lambda ts: abs(ts - tag.ts_us))
        print("observer tag - flash capture ms:", (tag.ts_us - nearest) / 1000)
        assert abs(tag.ts_us - nearest) <= 5_000, (tag.ts_us - nearest) / 1000
        # The press came after the flash was shown: key-press time is later than the frame.
        assert tag.timing.client_press_ts_us > 0
        assert window_with(found["labels"], tag)
    assert time.time_ns() // 1000 - self_tag.ts_us < 300_000_000
