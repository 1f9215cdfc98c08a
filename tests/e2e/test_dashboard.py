"""The director's dashboard in real Chromium, fed by the real pipeline."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Page

from capture.server import CaptureServer
from dashboard.server import DashboardServer
from infra.worker import ProcessorWorker
from streams import records
from streams.kafka import clients
from streams.kafka.sessions import SessionDirectory
from streams.settings import Settings
from taggers import tokens
from taggers.tokens import load_secret
from tests import media as test_media
from tests.e2e.conftest import LaunchPage, new_session
from tests.e2e.test_tagging import last_press, tagger_ready, wait_acked
from tests.tag_client import TagClient, wall_us

pytestmark = pytest.mark.e2e

SCREENSHOT = Path("test-artifacts") / "dashboard.png"


@pytest.fixture
async def dashboard(
    capture_settings: Settings, capture_server: CaptureServer
) -> AsyncIterator[DashboardServer]:
    settings = capture_settings.model_copy(
        update={
            "dashboard_port": 0,
            "public_url": capture_server.url,
            "dashboard_send_timeout_s": 3.0,
        }
    )
    server = DashboardServer(settings, secret=load_secret(settings))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def dashboard_url(server: DashboardServer, token: str) -> str:
    return f"{server.url}/dashboard?token={token}"


def director_token(settings: Settings, session_id: str) -> str:
    """The director's join link token (what a dashboard link carries)."""
    return tokens.issue(
        load_secret(settings),
        session_id=session_id,
        role="director",
        participant_id="director",
        ttl_s=600,
    )


def director_credential(settings: Settings, session_id: str) -> str:
    """The director's session credential (what the page has after exchanging its link)."""
    return tokens.issue(
        load_secret(settings),
        session_id=session_id,
        role="director",
        participant_id="director",
        ttl_s=600,
        kind="session",
    )


async def performer_state(page: Page, performer: str) -> dict[str, Any]:
    state: dict[str, Any] = await page.evaluate(
        "(id) => JSON.parse(JSON.stringify(window.livetagDashboard.performers[id] || {}))",
        performer,
    )
    return state


async def test_live_tiles_mesh_and_a_performer_tag_within_a_second(
    capture_settings: Settings,
    capture_server: CaptureServer,
    dashboard: DashboardServer,
    open_page: LaunchPage,
    media: test_media.MediaSet,
) -> None:
    session, links = await new_session(capture_settings, capture_server, ["alice", "bob"])
    stop = asyncio.Event()
    worker = asyncio.create_task(
        ProcessorWorker(capture_settings, only_sessions={session.session_id}).run(stop)
    )
    token = director_token(capture_settings, session.session_id)
    try:
        async with (
            open_page(
                links["alice"], video=media.single_face_y4m, audio=media.speech_low_wav
            ) as alice,
            open_page(dashboard_url(dashboard, token), video=None, audio=None) as director,
        ):
            await director.wait_for_function(
                "window.livetagDashboard && window.livetagDashboard.connected", timeout=20_000
            )
            # Features flow once the processors are up (faust, landmarkers: ~8 s).
            await director.wait_for_function(
                "(() => { const p = window.livetagDashboard.performers.alice;"
                " return p && p.prosodyPoints > 20 && p.meshDraws > 5; })()",
                timeout=60_000,
            )
            first = await performer_state(director, "alice")
            await asyncio.sleep(2.0)
            second = await performer_state(director, "alice")
            assert second["pitchChartDraws"] > first["pitchChartDraws"]
            assert second["meshDraws"] > first["meshDraws"]
            assert (second["lastLoudness"], second["blendshapes"]) != (
                first["lastLoudness"],
                first["blendshapes"],
            )
            assert second["blendshapes"], "no blendshape bars"
            # Every lane says how old what it draws is; the live video is seconds fresh
            # at worst (its age counts from capture, less the network's minimum delay).
            ages = second["ages"]
            print("lane ages (ms):", ages)
            assert ages["video"] is not None, ages
            assert 0 <= ages["video"] < 5000, ages
            assert ages["mesh"] is not None, ages
            assert ages["prosody"] is not None, ages
            assert await director.evaluate(
                "Object.keys(window.livetagDashboard.performers).sort()"
            ) == ["alice", "bob"]

            # A tag pressed on the performer's page shows on the director's timeline.
            await tagger_ready(alice)
            await alice.keyboard.press("a")
            press = await last_press(alice)
            # Timed in the pages (one machine clock): the key press in the performer's page
            # to the animation frame that first has the tag in the director's timeline.
            shown = await director.wait_for_function(
                "(id) => (window.livetagDashboard.timeline.alice || []).includes(id)"
                " && performance.timeOrigin + performance.now()",
                arg=press["tag_id"],
                timeout=5_000,
            )
            shown_after_s = (await shown.json_value() * 1000 - press["press_unix_us_true"]) / 1e6
            await wait_acked(alice, press["tag_id"])
            print("tag on the director's timeline after", round(shown_after_s * 1000, 1), "ms")
            # The session's counters (the capture server's and the aligner's health
            # records) reach the health panel, and /metrics in the Prometheus format.
            await director.wait_for_function(
                "(() => { const h = window.livetagDashboard.health;"
                " const c = h && h.counters && h.counters.alice;"
                " return !!(c && c.capture && c.capture.video_frames_in > 0"
                " && c.aligner && c.aligner.windows_emitted > 0); })()",
                timeout=15_000,
            )
            windows_shown = await director.evaluate(
                "document.querySelector('#health-counters tr[data-key=\"alice\"]')"
                ".cells[4].textContent"
            )
            assert int(windows_shown) > 0, windows_shown
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"{dashboard.url}/metrics") as response,
            ):
                exported = await response.text()
                content_type = response.headers["Content-Type"]
            assert content_type.startswith("text/plain"), content_type
            labels = f'{{performer="alice",session="{session.session_id}"}}'
            assert f"livetag_aligner_windows_emitted_total{labels}" in exported, exported[:2000]
            assert f"livetag_capture_video_frames_in_total{labels}" in exported
            health = await director.evaluate("window.livetagDashboard.health")
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            await director.screenshot(path=str(SCREENSHOT), full_page=True)
    finally:
        stop.set()
        await worker
    assert shown_after_s < 1.0, shown_after_s
    assert health["broker"] is True
    assert "alice" in health["performers"]
    assert SCREENSHOT.stat().st_size > 10_000


async def rate(
    url: str, token: str, performer: str, label: str, presses_us: list[int]
) -> list[str]:
    client = TagClient(url, token)
    async with client:
        await asyncio.sleep(1.0)  # clock sync settles
        ids = [
            await client.tag(performer, label, press_us=press, span_us=300_000)
            for press in presses_us
        ]
        await client.wait_acked(ids)
    return ids


async def test_agreement_is_one_for_identical_raters_and_low_for_disjoint_ones(
    capture_settings: Settings,
    capture_server: CaptureServer,
    dashboard: DashboardServer,
    open_page: LaunchPage,
) -> None:
    session, _links = await new_session(capture_settings, capture_server, ["alice", "bob"])
    sid = session.session_id
    stop = asyncio.Event()
    worker = asyncio.create_task(ProcessorWorker(capture_settings, only_sessions={sid}).run(stop))
    secret = load_secret(capture_settings)
    url = f"{capture_server.url.replace('http', 'ws')}/ws/tag"

    def observer(name: str) -> str:
        return tokens.issue(
            secret, session_id=sid, role="observer", participant_id=name, ttl_s=600, kind="session"
        )

    try:
        async with open_page(
            dashboard_url(dashboard, director_token(capture_settings, sid)), video=None, audio=None
        ) as director:
            await director.wait_for_function(
                "window.livetagDashboard && window.livetagDashboard.connected", timeout=20_000
            )
            # Presses on label-window starts: each 300 ms span then ends mid-window, so the
            # two raters' clock estimates (a few ms apart on a loaded machine) cannot put
            # one press in different windows; each press labels 4 windows.
            window_us = capture_settings.label_window_ms * 1000
            base = (wall_us() - 20_000_000) // window_us * window_us
            same = [base + k * 1_000_000 for k in range(8)]
            # alice: both raters press the same moments; bob: never the same moment.
            await asyncio.gather(
                rate(url, observer("r1"), "alice", "laughter", same),
                rate(url, observer("r2"), "alice", "laughter", same),
                rate(url, observer("r1"), "bob", "anger", same[::2]),
                rate(url, observer("r2"), "bob", "anger", [p + 500_000 for p in same[1::2]]),
            )
            await director.wait_for_function(
                "(() => { const a = window.livetagDashboard.agreement || {};"
                " return a.alice && a.bob && a.alice.session !== null && a.bob.session !== null"
                " && a.alice.units >= 32 && a.bob.units >= 32 && a.alice.session === 1; })()",
                timeout=60_000,
            )
            agreement = await director.evaluate("window.livetagDashboard.agreement")
    finally:
        stop.set()
        await worker
    assert agreement["alice"]["session"] == 1.0, agreement
    assert agreement["bob"]["session"] < 0.2, agreement
    assert agreement["alice"]["raters"] == agreement["bob"]["raters"] == 2


async def test_performer_tokens_are_refused_and_a_stalled_client_costs_nothing(
    capture_settings: Settings, capture_server: CaptureServer, dashboard: DashboardServer
) -> None:
    session, _links = await new_session(capture_settings, capture_server, ["alice"])
    sid = session.session_id
    performer = tokens.issue(
        load_secret(capture_settings),
        session_id=sid,
        role="performer",
        participant_id="alice",
        ttl_s=600,
    )
    async with aiohttp.ClientSession() as http:
        # The page's exchange of its link, the websocket and the probe refuse a performer.
        async with http.post(
            f"{dashboard.url}/api/credential", data=json.dumps({"token": performer})
        ) as response:
            assert response.status == 403
            assert (await response.json())["code"] == "not_director"
        for path in ("/ws/dashboard", "/api/dashboard-token"):
            async with http.get(f"{dashboard.url}{path}", params={"token": performer}) as response:
                assert response.status == 403, path
                assert (await response.json())["code"] == "not_director"
        async with http.post(
            f"{dashboard.url}/api/credential", data=json.dumps({"token": "forged"})
        ) as response:
            assert response.status == 401

    # A client that never reads, while big updates (face frames) keep coming: a raw
    # websocket handshake, then silence (its socket buffers fill, then nothing moves).
    token = director_credential(capture_settings, sid)
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", dashboard.port))
    reader, writer = await asyncio.open_connection(sock=stalled, limit=4096)
    writer.write(
        (
            f"GET /ws/dashboard?token={token} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
    producer = clients.make_producer(capture_settings)
    await producer.start()
    samples: list[int] = []
    dropped_after: float | None = None
    started = time.monotonic()
    try:
        face = face_frame(sid)
        for n in range(225):  # 15 s of 15 fps face records of ~5 KB
            record = face.model_copy(update={"ts_us": wall_us(), "video_seq": n})
            message = records.encode(record)
            await producer.send(
                session.topics.face, message.value, key=message.key, headers=message.headers
            )
            await asyncio.sleep(1 / 15)
            stats = [c.stats() for c in dashboard.clients]
            if stats:
                samples.append(max(s["pending_bytes"] for s in stats))
            elif dropped_after is None and samples:
                dropped_after = time.monotonic() - started
    finally:
        await producer.stop()
        writer.close()
    print("stalled client: buffered bytes:", json.dumps(samples[::10]), "dropped", dropped_after)
    # The socket's buffer fills to its limit and stays there (nothing queues behind it),
    # and the client is dropped once it has taken nothing for the send timeout (3 s here)
    # after the server's 256 KB per-client send buffer filled (~75 KB/s of updates).
    assert samples, "the stalled client never connected"
    assert max(samples) < 1_000_000, max(samples)
    assert dropped_after is not None, "the stalled client was not disconnected"
    assert dropped_after < 14.0


def face_frame(session_id: str) -> records.FaceFrame:
    import numpy as np

    rng = np.random.default_rng(7)
    return records.FaceFrame(
        ts_us=wall_us(),
        session_id=session_id,
        performer_id="alice",
        video_seq=0,
        face_present=True,
        landmarks=records.Landmarks.from_xyz(rng.random((478, 3), dtype=np.float32)),
        blendshapes={f"shape{k}": 0.5 for k in range(52)},
        head_pose=records.HeadPose(yaw_deg=1.0, pitch_deg=2.0, roll_deg=3.0),
    )


async def test_takes_and_end_of_session_are_recorded_on_the_sessions_topic(
    capture_settings: Settings, capture_server: CaptureServer, dashboard: DashboardServer
) -> None:
    session, _links = await new_session(capture_settings, capture_server, ["alice"])
    token = director_credential(capture_settings, session.session_id)
    replies: list[dict[str, Any]] = []
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(f"{dashboard.url}/ws/dashboard?token={token}", max_msg_size=0) as ws,
    ):

        async def until(check: Any) -> dict[str, Any]:
            async with asyncio.timeout(10):
                while True:
                    message = json.loads((await ws.receive()).data)
                    replies.append(message)
                    if check(message):
                        return message

        def session_with(check: Any) -> Any:
            return lambda m: m["type"] == "update" and "session" in m and check(m["session"])

        await until(lambda m: m["type"] == "hello")
        await ws.send_str(json.dumps({"type": "take_start"}))
        started = await until(session_with(lambda s: len(s["takes"]) == 1))
        assert started["session"]["takes"][0]["end_ts_us"] is None
        await ws.send_str(json.dumps({"type": "take_end"}))
        await until(session_with(lambda s: s["takes"][0]["end_ts_us"] is not None))
        await ws.send_str(json.dumps({"type": "take_end"}))
        refused = await until(lambda m: m["type"] == "error")
        assert refused["code"] == "no_take"
        await ws.send_str("{not json")
        assert (await until(lambda m: m["type"] == "error"))["code"] == "malformed"
        await ws.send_str(json.dumps({"type": "take_start"}))
        await until(session_with(lambda s: len(s["takes"]) == 2))
        await ws.send_str(json.dumps({"type": "end_session"}))
        ended = await until(session_with(lambda s: s["state"] == "ended"))
    takes = ended["session"]["takes"]
    assert [t["take_id"] for t in takes] == [1, 2]
    assert all(t["end_ts_us"] is not None for t in takes)  # ending closes the open take
    assert takes[0]["start_ts_us"] < takes[0]["end_ts_us"] <= takes[1]["start_ts_us"]
    # The record is on livetag.sessions, where workers and the capture server follow it.
    directory = SessionDirectory(capture_settings)
    await directory.start()
    try:
        async with asyncio.timeout(10):
            while (record := directory.get(session.session_id)) is None or record.state != "ended":
                await directory.changed(timeout_s=1.0)
    finally:
        await directory.stop()
    assert [t.take_id for t in record.takes] == [1, 2]
