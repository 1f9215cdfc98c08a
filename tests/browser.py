"""Launch Debian's headless Chromium with fake capture devices, driven by Playwright.

One browser process per performer: Chromium's fake camera and microphone files are
command-line switches, so they are fixed for the whole process.

Playwright's `launch()` refuses `--user-data-dir` (it makes its own temporary profile), so
this uses `launch_persistent_context(user_data_dir, ...)`, which owns the process and
yields a `BrowserContext` that already has one page (`context.pages[0]`). Closing the
context ends the browser process.

Never run `playwright install`: the browser is the Debian package `chromium`, found at
`$LIVETAG_CHROMIUM` or `/usr/bin/chromium`.

Run WebRTC tests in a network namespace that has only `lo` (see `only_loopback`), so
neither Chromium nor aiortc can gather or use another interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import BrowserContext, Page, Playwright, async_playwright

ENV_CHROMIUM = "LIVETAG_CHROMIUM"
DEFAULT_CHROMIUM = "/usr/bin/chromium"
NETNS_HINT = (
    "run browser tests in a network namespace with only loopback: "
    "unshare -n sh -c 'ip link set lo up; exec .venv/bin/pytest ...'"
)


def chromium_path() -> str:
    """The Chromium executable: `$LIVETAG_CHROMIUM`, else Debian's `/usr/bin/chromium`."""
    path = os.environ.get(ENV_CHROMIUM, DEFAULT_CHROMIUM)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)) and shutil.which(path) is None:
        raise FileNotFoundError(
            f"Chromium not found at {path}: install the Debian package `chromium` "
            f"(apt-get install -y chromium) or set ${ENV_CHROMIUM}"
        )
    return path


def only_loopback() -> bool:
    """True when this process sees no network interface except `lo`."""
    return {name for _, name in socket.if_nameindex()} <= {"lo"}


def chromium_args(*, video_file: Path | None, audio_file: Path | None) -> list[str]:
    """Switches for a headless WebRTC sender with fake devices, and nothing talking out.

    Usable without Playwright too (then add `--headless` and `--user-data-dir`).
    """
    args = [
        "--headless",
        # Root in a container has no usable sandbox; these tests run trusted pages only.
        "--no-sandbox",
        "--disable-gpu",
        # No update checks, sync, field trials or first-run pages: they would try the
        # network (absent in the namespace) and add noise to the logs and timings.
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        # QUIC probes use UDP, which could be mistaken for media traffic.
        "--disable-quic",
        # Grant getUserMedia without a prompt and use synthetic devices...
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        # ...loopback ICE candidates (off by default) with real IPs rather than mDNS
        # names, which aiortc on 127.0.0.1 could not resolve.
        "--allow-loopback-in-peer-connection",
        # Playwright passes its own --disable-features before user args; this one still
        # takes effect (the integration test checks for 127.0.0.1 candidates, no .local).
        "--disable-features=WebRtcHideLocalIpsWithMdns",
        # Let <video>/<audio> and AudioContext start without a user gesture.
        "--autoplay-policy=no-user-gesture-required",
    ]
    # Without a file the fake device shows Chromium's built-in test pattern / beeps.
    if video_file is not None:
        args.append(f"--use-file-for-fake-video-capture={_existing(video_file)}")
    if audio_file is not None:
        args.append(f"--use-file-for-fake-audio-capture={_existing(audio_file)}")
    return args


@asynccontextmanager
async def launch_chromium(
    *,
    video_file: Path | None,
    audio_file: Path | None,
    user_data_dir: Path,
    extra_args: Sequence[str] = (),
    playwright: Playwright | None = None,
) -> AsyncIterator[BrowserContext]:
    """Start one headless Chromium process and yield its (persistent) context.

    `user_data_dir` should be fresh per process (e.g. a pytest tmp dir): Chromium locks
    a profile, and an old profile could carry state between tests. `playwright`: a driver
    already running, shared by several browsers (default: one driver for this browser).
    """
    args = [*chromium_args(video_file=video_file, audio_file=audio_file), *extra_args]
    # --headless is also implied by headless=True; Playwright rejects --user-data-dir in
    # args, so the profile goes through its own parameter.
    args.remove("--headless")
    await asyncio.to_thread(user_data_dir.mkdir, parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        if playwright is None:
            playwright = await stack.enter_async_context(async_playwright())
        context = await playwright.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=chromium_path(),
            headless=True,
            args=args,
        )
        try:
            yield context
        finally:
            await context.close()


@asynccontextmanager
async def open_page(
    url: str,
    *,
    user_data_dir: Path,
    video_file: Path | None = None,
    audio_file: Path | None = None,
    playwright: Playwright | None = None,
    before_load: Callable[[Page], object] | None = None,
) -> AsyncIterator[Page]:
    """One Chromium process (its own profile) showing ``url``: a performer's call page
    with a camera and a microphone file, or a page without media (a director's dashboard,
    an observer). ``before_load`` sees the page before it loads (to listen to its console,
    to note when it was opened)."""
    async with launch_chromium(
        video_file=video_file,
        audio_file=audio_file,
        user_data_dir=user_data_dir,
        playwright=playwright,
    ) as context:
        page = context.pages[0] if context.pages else await context.new_page()
        if before_load is not None:
            before_load(page)
        await page.goto(url)
        yield page


def _existing(path: Path) -> str:
    # A bad path would only surface later as a failed or odd capture inside the page;
    # fail here, with the path, instead. Absolute, so the browser's cwd does not matter.
    if not path.is_file():
        raise FileNotFoundError(f"fake capture file not found: {path}")
    return str(path.resolve())
