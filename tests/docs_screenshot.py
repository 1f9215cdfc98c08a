"""Take the README's picture of the director's dashboard (docs/dashboard.png) from a real
scene: ``livetag up``, two headless Chromium performers on their join links with the test
media (real faces and speech), a director's dashboard that tags, then a screenshot.

    .venv/bin/python -m tests.docs_screenshot [--seconds 25] [--out docs/dashboard.png]

It re-executes itself in a loopback-only network namespace, as the scene benchmark does,
and needs the test media (``python -m tests.media prepare``, which ``make pytest`` runs).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from pathlib import Path

from playwright.async_api import ViewportSize, async_playwright

from streams.kafka.sessions import create_session
from streams.settings import load_settings
from taggers.tokens import join_links, load_secret
from taggers.vocabulary import load_vocabulary
from tests import media as test_media
from tests.bench.capture import free_port
from tests.bench.common import ROOT, reexec_in_netns
from tests.bench.scene import LivetagUp
from tests.browser import only_loopback, open_page

IN_NETNS_ENV = "DOCS_SCREENSHOT_IN_NETNS"  # not LIVETAG_*: the settings reject unknown ones
VIEWPORT = ViewportSize(width=1440, height=900)
TAG_EVERY_S = 2.0


async def take(seconds: float, out: Path) -> None:
    media = test_media.prepare()
    with tempfile.TemporaryDirectory(prefix="livetag-docs-") as tmp:
        work = Path(tmp)
        settings = load_settings(
            broker_port=free_port(),
            capture_port=free_port(),
            dashboard_port=free_port(),
            state_dir=work / "state",
            data_dir=work / "data",
        )
        up = LivetagUp(settings, work / "livetag-up.log")
        try:
            await up.start()
            session = await create_session(
                settings,
                prompt="Two strangers share an umbrella",
                performer_names=["alice", "bob"],
                vocabulary=load_vocabulary(None),
            )
            links = join_links(settings, session, load_secret(settings))
            calls = {
                link.participant_id: link.url
                for link in links
                if link.role == "performer" and link.page == "call"
            }
            dashboard = next(link.url for link in links if link.page == "dashboard")
            async with contextlib.AsyncExitStack() as browsers:
                playwright = await browsers.enter_async_context(async_playwright())
                performers = []
                for index, performer in enumerate(calls):
                    video, audio = media.performer(index)
                    page = await browsers.enter_async_context(
                        open_page(
                            calls[performer],
                            video_file=video,
                            audio_file=audio,
                            user_data_dir=work / f"chromium-{performer}",
                            playwright=playwright,
                        )
                    )
                    performers.append(page)
                director = await browsers.enter_async_context(
                    open_page(
                        dashboard, user_data_dir=work / "chromium-director", playwright=playwright
                    )
                )
                await director.set_viewport_size(VIEWPORT)
                await director.click("#take-start", timeout=30_000)
                # Everyone taps a tag now and then, so the timelines and agreement fill.
                hotkeys = [entry.hotkey for entry in session.vocabulary][:4]
                until = time.monotonic() + seconds
                count = 0
                while time.monotonic() < until:
                    up.check()
                    hotkey = hotkeys[count % len(hotkeys)]
                    for page in performers:
                        await page.keyboard.press(hotkey)
                    await director.keyboard.press(str(count % len(performers) + 1))
                    await director.keyboard.press(hotkey)
                    count += 1
                    await asyncio.sleep(TAG_EVERY_S)
                await asyncio.to_thread(out.parent.mkdir, parents=True, exist_ok=True)
                await director.screenshot(path=str(out), full_page=True)
                print(f"docs_screenshot: wrote {out} (session {session.session_id})")
        finally:
            await up.stop({})


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Write docs/dashboard.png: the director's dashboard in a real scene."
    )
    parser.add_argument("--seconds", type=float, default=25.0, help="scene length before it")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    args = parser.parse_args()
    if not only_loopback():
        reexec_in_netns("tests.docs_screenshot", IN_NETNS_ENV)
    try:
        asyncio.run(take(args.seconds, args.out.resolve()))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
