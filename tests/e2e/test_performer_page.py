"""The performer's page in real Chromium, at a phone's size and a laptop's: the partner's
video is the largest thing on it, the director's cue shows within the window, nothing
scrolls sideways, the performer sees their own part of the scenario, and a scene of a
casting day ends with the way back to the lobby.

Screenshots go to test-artifacts/; with DOCS_SCREENSHOTS=1 also to
docs/images/performer-phone.png and docs/images/performer-laptop.png (they show the test
clips' faces: made on your machine, like docs/dashboard.png)."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Page, ViewportSize

from capture.server import CaptureServer
from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session, publish
from streams.settings import Settings
from taggers.tokens import join_links, load_secret
from taggers.vocabulary import load_vocabulary
from tests import media as test_media
from tests.documentation import ROOT
from tests.e2e.conftest import LaunchPage
from tests.e2e.test_capture import wait_for_remote_media
from tests.tag_client import wall_us

pytestmark = pytest.mark.e2e

DOCS_SCREENSHOTS_ENV = "DOCS_SCREENSHOTS"  # not LIVETAG_*: the settings reject unknown ones
ARTIFACTS = Path("test-artifacts")
VIEWPORTS = {
    "phone": ViewportSize(width=390, height=844),
    "laptop": ViewportSize(width=1366, height=768),
}
SCENARIO = records.Scenario(
    scenario_id="umbrella",
    title="One umbrella",
    prompt="Two strangers share an umbrella at a bus stop in the rain.",
    roles=[
        records.ScenarioRole(
            name="The planner",
            brief="You have a job interview in ten minutes and cannot get wet.",
            targets=["embarrassment"],
        ),
        records.ScenarioRole(
            name="The romantic",
            brief="You think this is how great love stories start.",
            targets=["amusement"],
        ),
    ],
)

# The page's layout as the performer sees it: the areas of its parts (a video's area is
# the picture it draws: object-fit contain letterboxes it), the cue's box, the overflow.
LAYOUT = """
() => {
  const area = (el) => {
    if (!el || el.hidden) return 0;
    const r = el.getBoundingClientRect();
    return r.width * r.height;
  };
  const pictureArea = (video) => {
    const r = video.getBoundingClientRect();
    const fit = getComputedStyle(video).objectFit;
    if (fit === "contain" && video.videoWidth && video.videoHeight) {
      const scale = Math.min(r.width / video.videoWidth, r.height / video.videoHeight);
      return scale * video.videoWidth * scale * video.videoHeight;
    }
    return r.width * r.height;
  };
  const partner = document.querySelector("#tiles figure[data-performer] video");
  const cue = document.getElementById("cue").getBoundingClientRect();
  return {
    partner: partner ? pictureArea(partner) : 0,
    others: {
      self: area(document.getElementById("self-video")),
      header: area(document.querySelector("header")),
      scene: area(document.getElementById("scene")),
      tagger: area(document.getElementById("tagger")),
      cue: area(document.getElementById("cue")),
    },
    cue: { left: cue.left, top: cue.top, right: cue.right, bottom: cue.bottom },
    viewport: { width: document.documentElement.clientWidth, height: window.innerHeight },
    scrollWidth: Math.max(document.documentElement.scrollWidth, document.body.scrollWidth),
  };
}
"""


async def publish_cue(settings: Settings, cue: records.Cue) -> None:
    """A cue as the director's dashboard publishes it (dashboard.cues)."""
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        wire = records.encode(cue)
        await producer.send_and_wait(topics.CUES, wire.value, key=wire.key, headers=wire.headers)
    finally:
        await producer.stop()


async def shown_record(
    settings: Settings, sent: records.Cue, timeout_s: float = 15.0
) -> records.Cue:
    """The cue's shown record, once the capture server has published it."""
    cue_id, performer_key = sent.cue_id, sent.key
    consumer = clients.make_consumer(settings)
    await consumer.start()
    try:
        consumer.subscribe([topics.CUES])
        async with asyncio.timeout(timeout_s):
            while True:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    for message in messages:
                        if message.key != performer_key:  # another test's, bad ones too
                            continue
                        cue = records.decode(records.Cue, message.value, message.headers)
                        if cue.cue_id == cue_id and cue.shown_ts_us is not None:
                            return cue
    finally:
        await consumer.stop()


def cue_for(
    session: records.SessionRecord, n: int, kind: records.CueKind, **fields: Any
) -> records.Cue:
    return records.Cue(
        ts_us=wall_us(),
        session_id=session.session_id,
        performer_id="alice",
        cue_id=f"cue-{n}-{uuid.uuid4().hex[:12]}",
        kind=kind,
        sent_by="director",
        **fields,
    )


async def screenshot(page: Page, name: str) -> None:
    out = ARTIFACTS / f"performer-{name}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(out))
    if os.environ.get(DOCS_SCREENSHOTS_ENV) == "1":
        docs = ROOT / "docs" / "images" / f"performer-{name}.png"
        docs.parent.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(docs))


async def test_the_performer_page_fits_a_phone_and_a_laptop_with_the_partner_largest(
    capture_settings: Settings,
    capture_server: CaptureServer,
    open_page: LaunchPage,
    media: test_media.MediaSet,
) -> None:
    session = await create_session(
        capture_settings,
        prompt=SCENARIO.prompt,
        performer_names=["alice", "bob"],
        vocabulary=load_vocabulary(None),
        scenario=SCENARIO,
        roles={"alice": "The planner", "bob": "The romantic"},
        day_id="day-1",
    )
    linked = capture_settings.model_copy(update={"capture_port": capture_server.port})
    links = {
        link.participant_id: link.url
        for link in join_links(linked, session, load_secret(capture_settings))
        if link.page == "call"
    }
    colours = {entry.label: entry.colour for entry in session.vocabulary}
    async with (
        open_page(links["alice"], video=media.single_face_y4m, audio=media.speech_low_wav) as alice,
        open_page(links["bob"], video=media.wolfgang_y4m, audio=media.speech_high_wav) as bob,
    ):
        await wait_for_remote_media(alice, "bob")
        await alice.wait_for_function("Boolean(window.livetagTagger && window.livetagTagger.ready)")
        # Her own part, never her partner's brief.
        assert await alice.text_content("#role-name") == "The planner"
        assert "job interview" in (await alice.text_content("#role-brief") or "")
        assert "great love" not in (await alice.inner_text("body"))
        assert await alice.text_content("#prompt") == SCENARIO.prompt

        text = cue_for(session, 1, "text", text="Ask her name, then forget it at once")
        await publish_cue(capture_settings, text)
        await alice.wait_for_function(
            "(id) => window.livetagCall.cue && window.livetagCall.cue.cue_id === id",
            arg=text.cue_id,
            timeout=10_000,
        )
        assert await alice.text_content("#cue-text") == text.text
        assert await alice.is_hidden("#cue-label")
        assert await alice.is_hidden("#cue-intensity")

        strong = cue_for(session, 2, "emotion", label="laughter", intensity="strong")
        await publish_cue(capture_settings, strong)
        await alice.wait_for_function(
            "(id) => window.livetagCall.cue && window.livetagCall.cue.cue_id === id",
            arg=strong.cue_id,
            timeout=10_000,
        )
        assert await alice.text_content("#cue-label") == "laughter"
        assert await alice.is_visible("#cue-intensity")
        colour = await alice.evaluate(
            "getComputedStyle(document.getElementById('cue-label')).color"
        )
        red, green, blue = (int(colours["laughter"][i : i + 2], 16) for i in (1, 3, 5))
        assert colour == f"rgb({red}, {green}, {blue})"
        shown = await shown_record(capture_settings, strong)
        assert shown.shown_ts_us is not None
        assert shown.shown_ts_us >= shown.ts_us
        # Bob's page shows nothing of alice's cue.
        assert await bob.evaluate("window.livetagCall.cue") is None
        assert await bob.is_hidden("#cue")

        for name, viewport in VIEWPORTS.items():
            await alice.set_viewport_size(viewport)
            await alice.evaluate("window.scrollTo(0, 0)")
            await asyncio.sleep(0.5)  # the layout and the video settle at the new size
            layout = await alice.evaluate(LAYOUT)
            print(name, layout)
            assert layout["viewport"]["width"] == viewport["width"]
            assert layout["scrollWidth"] <= layout["viewport"]["width"], (name, layout)
            others = layout["others"]
            assert layout["partner"] > max(others.values()), (name, layout)
            assert 0 < others["self"] < layout["partner"] / 4, (name, layout)
            box, view = layout["cue"], layout["viewport"]
            assert others["cue"] > 0, (name, layout)
            assert min(box["left"], box["top"]) >= 0, (name, layout)
            assert box["right"] <= view["width"], (name, layout)
            assert box["bottom"] <= view["height"], (name, layout)
            await screenshot(alice, name)

        clear = cue_for(session, 3, "clear")
        await publish_cue(capture_settings, clear)
        await alice.wait_for_function("window.livetagCall.cue === null", timeout=10_000)
        assert await alice.is_hidden("#cue")
        # Said shown a frame after it is painted: wait for it, the clear included.
        await alice.wait_for_function("window.livetagCall.cuesShown >= 3", timeout=10_000)
        assert await alice.evaluate("window.livetagCall.cuesShown") == 3

        # The scene ends: the page of a casting day leads back to its lobby.
        assert await alice.is_hidden("#lobby")
        producer = clients.make_producer(capture_settings)
        await producer.start()
        try:
            ended = session.model_copy(update={"state": "ended", "ts_us": wall_us()})
            await publish(producer, ended)
        finally:
            await producer.stop()
        await alice.wait_for_selector("#lobby", state="visible", timeout=15_000)
        assert await alice.get_attribute("#lobby a", "href") == "/lobby"
        # ...and goes there by itself a few seconds later.
        await alice.wait_for_url("**/lobby", timeout=15_000)
