"""The dashboard shows staleness and never hides it, in real Chromium.

A face stream that arrives 2 s after its capture instants is drawn continuously 2 s
behind, faded, and labelled so; prosody arriving on time says so next to it; an ended
session shows ENDED alone.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from playwright.async_api import Dialog, Page
from playwright.async_api import TimeoutError as PlaywrightTimeout

from capture.server import CaptureServer
from dashboard.server import DashboardServer
from streams import records
from streams.kafka import clients
from streams.settings import Settings
from taggers import tokens
from taggers.tokens import load_secret
from tests.e2e.conftest import LaunchPage, new_session
from tests.e2e.test_dashboard import (
    dashboard,  # noqa: F401  (the fixture)
    dashboard_url,
    director_token,
    rate,
)
from tests.tag_client import wall_us

pytestmark = pytest.mark.e2e

FACE_DELAY_US = 2_000_000
FACE_FPS = 15
PROSODY_STEP_S = 0.1  # ten 10 ms hops per record, as the processors send them
TAG_AGO_US = 5_000_000
SCREENSHOT = Path("test-artifacts") / "dashboard-staleness.png"

# What one check of the director's page reads for a performer: the lane labels, the
# page's own figures, and how many pixels of the mesh canvas are painted.
READ_LANES = """
(id) => {
  const root = document.getElementById(`perf-${id}`);
  const hook = window.livetagDashboard.performers[id];
  const text = (lane) => root.querySelector(`.lane-age-${lane}`).textContent;
  const canvas = root.querySelector("canvas.mesh");
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted += 1;
  return {
    labels: Object.fromEntries(["video", "mesh", "prosody", "tags"].map((l) => [l, text(l)])),
    meshLevel: root.querySelector(".lane-age-mesh").dataset.level,
    ages: hook.ages,
    faceTsUs: hook.meshFaceTsUs,
    delayMs: hook.meshDelayMs,
    opacity: Number(getComputedStyle(canvas).opacity),
    painted,
  };
}
"""

PAGE_STATE = """
() => JSON.stringify({
  alice: window.livetagDashboard.performers.alice,
  updates: window.livetagDashboard.updates,
  errors: window.livetagDashboard.errors,
})
"""

HEADER = """
() => {
  const visible = (el) => !!el && el.getClientRects().length > 0;
  return {
    body: document.body.dataset.session,
    badge: document.getElementById("session-state").innerText,
    connVisible: visible(document.getElementById("conn")),
    header: document.getElementById("dash-header").innerText,
  };
}
"""


def seconds(label: str, pattern: str) -> float:
    found = re.fullmatch(pattern, label)
    assert found, f"label {label!r} does not read {pattern!r}"
    return float(found.group(1))


def face_landmarks(n: int) -> records.Landmarks:
    """A ring of 478 points that drifts sideways frame by frame (a moving 'face')."""
    angles = np.linspace(0, 2 * np.pi, 478, endpoint=False)
    radius = 0.08 + 0.06 * (np.arange(478) % 5) / 4
    shift = 0.1 * np.sin(n / 10)
    xyz = np.stack(
        [0.5 + shift + radius * np.cos(angles), 0.5 + radius * np.sin(angles), np.zeros(478)],
        axis=1,
    ).astype(np.float32)
    return records.Landmarks.from_xyz(xyz)


async def feed_late_faces(
    producer: Any, session: records.SessionRecord, stop: asyncio.Event
) -> int:
    """Face records at 15 fps, each produced 2 s after its capture instant."""
    n = 0
    started = time.monotonic()
    while not stop.is_set():
        record = records.FaceFrame(
            ts_us=wall_us() - FACE_DELAY_US,
            session_id=session.session_id,
            performer_id="alice",
            video_seq=n,
            face_present=True,
            landmarks=face_landmarks(n),
            blendshapes={f"shape{k}": round(0.5 + 0.4 * np.sin(n / 7 + k), 3) for k in range(52)},
            head_pose=records.HeadPose(yaw_deg=1.0, pitch_deg=2.0, roll_deg=3.0),
        )
        message = records.encode(record)
        await producer.send(
            session.topics.face, message.value, key=message.key, headers=message.headers
        )
        n += 1
        # Paced on the monotonic clock: a busy loop sends the next one sooner, not later.
        await asyncio.sleep(max(0.0, started + n / FACE_FPS - time.monotonic()))
    return n


async def feed_prosody(producer: Any, session: records.SessionRecord, stop: asyncio.Event) -> None:
    """Prosody hops as they happen: the last 100 ms of hops every 100 ms, on time."""
    while not stop.is_set():
        end = wall_us()
        hops = [
            records.ProsodyHop(
                ts_us=end - (10 - k) * 10_000,
                f0_hz=180.0,
                voicing_probability=0.9,
                voiced=True,
                loudness_db=-25.0,
            )
            for k in range(10)
        ]
        record = records.ProsodyHops(
            ts_us=hops[0].ts_us, session_id=session.session_id, performer_id="alice", hops=hops
        )
        message = records.encode(record)
        await producer.send(
            session.topics.prosody, message.value, key=message.key, headers=message.headers
        )
        await asyncio.sleep(PROSODY_STEP_S)


async def end_the_session(director: Page) -> None:
    """The director's End session button, confirmed in its dialog."""

    async def confirm(dialog: Dialog) -> None:
        await dialog.accept()

    director.once("dialog", confirm)
    await director.click("#end-session")


async def test_a_face_stream_two_seconds_late_is_drawn_two_seconds_behind_and_labelled(
    capture_settings: Settings,
    capture_server: CaptureServer,
    dashboard: DashboardServer,  # noqa: F811
    open_page: LaunchPage,
) -> None:
    session, _links = await new_session(capture_settings, capture_server, ["alice"])
    sid = session.session_id
    observer = tokens.issue(
        load_secret(capture_settings),
        session_id=sid,
        role="observer",
        participant_id="rater",
        ttl_s=600,
        kind="session",
    )
    tag_url = f"{capture_server.url.replace('http', 'ws')}/ws/tag"
    producer = clients.make_producer(capture_settings)
    await producer.start()
    stop = asyncio.Event()
    feeders: list[asyncio.Task[Any]] = []
    checks: list[dict[str, Any]] = []
    try:
        async with open_page(
            dashboard_url(dashboard, director_token(capture_settings, sid)), video=None, audio=None
        ) as director:
            await director.wait_for_function(
                "window.livetagDashboard && window.livetagDashboard.connected", timeout=20_000
            )
            # The dashboard reads features from the moment its feed started: feed after.
            feeders = [
                asyncio.create_task(feed_late_faces(producer, session, stop)),
                asyncio.create_task(feed_prosody(producer, session, stop)),
            ]
            tag_press_us = wall_us() - TAG_AGO_US
            # The lane's delay settles on the stream's latency (a 1 s window) meanwhile.
            await asyncio.gather(
                rate(tag_url, observer, "alice", "laughter", [tag_press_us]), asyncio.sleep(3.0)
            )
            try:
                await director.wait_for_function(
                    "(() => { const p = window.livetagDashboard.performers.alice;"
                    " return p && p.meshDraws > 10 && p.ages.mesh !== null"
                    " && p.ages.prosody !== null && p.ages.tags !== null; })()",
                    timeout=30_000,
                )
            except PlaywrightTimeout:
                print("the page has:", await director.evaluate(PAGE_STATE))
                raise
            for _ in range(6):
                check = await director.evaluate(READ_LANES, "alice")
                check["tag_age_s"] = (wall_us() - tag_press_us) / 1e6
                checks.append(check)
                await asyncio.sleep(0.6)
            await end_the_session(director)
            await director.wait_for_function(
                "document.body.dataset.session === 'ended'", timeout=15_000
            )
            header = await director.evaluate(HEADER)
            after_end = await director.evaluate(READ_LANES, "alice")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            await director.screenshot(path=str(SCREENSHOT))
    finally:
        stop.set()
        sent = await asyncio.gather(*feeders, return_exceptions=True)
        await producer.stop()
    for check in checks:
        print(check["labels"], check["ages"], check["opacity"], check["painted"])
    print("after the end:", header, after_end["labels"])
    faces_sent = sent[0] if sent else None
    assert isinstance(faces_sent, int), sent
    assert faces_sent > 5 * FACE_FPS, sent

    for check in checks:
        labels = check["labels"]
        mesh_s = seconds(labels["mesh"], r"mesh (\d+\.\d) s behind")
        # ~2 s: the stream's own latency (plus the feed's and the page's share of it).
        assert 1.5 <= mesh_s <= 3.5, labels
        assert check["meshLevel"] in ("warn", "bad"), check
        # Drawn, not blanked for being late; faded for its age, not hidden.
        assert check["painted"] > 200, check
        assert 0.3 <= check["opacity"] < 1.0, check
        # Prosody arrives on time: its own lane says so, well under the mesh's age.
        prosody_s = seconds(labels["prosody"], r"prosody (\d+\.\d) s behind")
        assert prosody_s < mesh_s - 1.0, labels
        tag_s = seconds(labels["tags"], r"tags: newest (\d+(?:\.\d)?) s ago")
        assert abs(tag_s - check["tag_age_s"]) < 1.5, (labels, check["tag_age_s"])
        assert labels["video"] == "video: none", labels  # nobody publishes video here
    # The mesh keeps being drawn: the record it shows moves on, never back (a busy machine
    # may hold one record over two checks: the feed itself paused).
    drawn = [check["faceTsUs"] for check in checks]
    assert all(later >= earlier for earlier, later in itertools.pairwise(drawn)), drawn
    assert len(set(drawn)) >= len(drawn) - 2, drawn

    assert header["body"] == "ended", header
    assert header["badge"] == "ENDED", header
    assert not header["connVisible"], header
    assert not re.search(r"\blive\b", header["header"], re.IGNORECASE), header
    assert after_end["painted"] > 200, after_end  # the mesh is still there, ageing
