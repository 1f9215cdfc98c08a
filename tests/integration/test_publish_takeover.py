"""One performer's media comes from one page: a second page with the same link cannot take
it over, the same page rejoining can, and nothing of a performer who left is forked.

The pages are aiortc peer connections in this process, over loopback, against a real
capture server and broker."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import aioice.ice
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from av import VideoFrame
from pydantic import SecretStr

from capture.fork import PerformerFork
from capture.ice import rtc_configuration
from capture.server import CallConnection, CaptureServer
from streams import records
from streams.kafka import clients
from streams.kafka.sessions import create_session
from streams.settings import Settings
from taggers.vocabulary import load_vocabulary
from tests.tag_client import SECRET, token_for

pytestmark = pytest.mark.integration

PAGE_A = "a" * 32
PAGE_B = "b" * 32


class SmallVideo(VideoStreamTrack):
    """A camera of 160x120 grey frames: cheap to encode on a busy test machine."""

    async def recv(self) -> VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = VideoFrame.from_ndarray(np.full((180, 160), 100, np.uint8), format="yuv420p")
        frame.pts = pts
        frame.time_base = time_base if time_base else fractions.Fraction(1, 90_000)
        return frame


class Page:
    """A performer's call page: its signaling websocket and its publish connection."""

    def __init__(self, http: aiohttp.ClientSession, url: str, page_id: str | None) -> None:
        self.http = http
        self.url = url
        self.page_id = page_id
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.pc: RTCPeerConnection | None = None
        self.replies: list[dict[str, Any]] = []

    async def join(self) -> None:
        self.ws = await self.http.ws_connect(self.url)
        await self.first("welcome")

    async def first(self, *kinds: str) -> dict[str, Any]:
        assert self.ws is not None
        async with asyncio.timeout(15):
            while True:
                message = json.loads((await self.ws.receive()).data)
                self.replies.append(message)
                if message["type"] == "clock_probe":
                    await self.ws.send_str(
                        json.dumps(
                            {
                                "type": "clock_reply",
                                "probe_id": message["probe_id"],
                                "server_send_us": message["server_send_us"],
                                "client_time_us": time.time_ns() // 1000,
                            }
                        )
                    )
                if message["type"] in kinds:
                    return message

    async def offer(self) -> str:
        if self.pc is not None:
            await self.pc.close()
        self.pc = RTCPeerConnection(configuration=rtc_configuration())
        self.pc.addTrack(AudioStreamTrack())
        self.pc.addTrack(SmallVideo())
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    def publish_message(self, sdp: str) -> str:
        message: dict[str, Any] = {"type": "publish", "sdp": sdp}
        if self.page_id is not None:
            message["page_id"] = self.page_id
        return json.dumps(message)

    async def publish(self) -> dict[str, Any]:
        """Send the camera; the server's answer (applied) or its error."""
        assert self.ws is not None
        await self.ws.send_str(self.publish_message(await self.offer()))
        reply = await self.first("publish_answer", "error")
        if reply["type"] == "publish_answer":
            assert self.pc is not None
            await self.pc.setRemoteDescription(
                RTCSessionDescription(sdp=reply["sdp"], type="answer")
            )
        return reply

    async def close_websocket(self) -> None:
        if self.ws is not None:
            await self.ws.close()

    async def close(self) -> None:
        await self.close_websocket()
        if self.pc is not None:
            await self.pc.close()


@pytest.fixture
def capture_settings(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """What the capture fixture (tests/integration/conftest.py) runs with."""
    # The server restricts ICE for the whole process; the test's pages share it.
    monkeypatch.setattr(aioice.ice, "get_host_addresses", aioice.ice.get_host_addresses)
    return settings.model_copy(
        update={
            "capture_port": 0,
            "state_dir": tmp_path / "state",
            "ice_addresses": ["127.0.0.1"],
            # The key tests.tag_client.token_for signs with.
            "token_secret": SecretStr(SECRET.decode()),
        }
    )


async def wait_until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - server state, no event to wait on
            await asyncio.sleep(0.1)


async def new_session(capture: CaptureServer) -> tuple[records.SessionRecord, str]:
    session = await create_session(
        capture.settings,
        prompt="Two captains, one ship.",
        performer_names=["ana", "ben"],
        vocabulary=load_vocabulary(None),
    )
    credential = token_for(session.session_id, "ana", "performer")
    url = capture.url.replace("http://", "ws://") + f"/ws/call?token={credential}"
    return session, url


async def test_a_second_page_cannot_take_over_a_performer_s_media_but_the_same_page_rejoins(
    capture: CaptureServer,
) -> None:
    session, url = await new_session(capture)
    sid = session.session_id
    async with aiohttp.ClientSession() as http:
        first, second, rejoined = Page(http, url, PAGE_A), Page(http, url, PAGE_B), None
        anonymous = Page(http, url, None)
        try:
            await first.join()
            assert (await first.publish())["type"] == "publish_answer"
            call = capture.calls[sid]
            held = call.published["ana"]
            await wait_until(lambda: call.stats()["ana"]["video_frames_in"] > 5)
            # Another page with the same link (or one that does not say which it is):
            # refused with the reason while the first is connected.
            for intruder in (second, anonymous):
                await intruder.join()
                refused = await intruder.publish()
                assert refused["type"] == "error", refused
                assert refused["code"] == "performer_taken"
                assert "already sending from another page" in refused["message"]
            assert call.published["ana"] is held
            frames = call.stats()["ana"]["video_frames_in"]
            await wait_until(lambda: call.stats()["ana"]["video_frames_in"] > frames + 5)
            # Counted, where the operator reads refusals and the call's metrics.
            async with http.get(f"{capture.url}/metrics/refusals") as response:
                assert (await response.json())["call"]["performer_taken"] == 2
            async with http.get(f"{capture.url}/metrics") as response:
                assert (await response.json())[sid]["ana"]["takeovers_refused"] == 2
            # The same page after a network cut: a new websocket while the old one is
            # still open on the server. It takes its media back at once.
            rejoined = Page(http, url, PAGE_A)
            await rejoined.join()
            assert (await rejoined.publish())["type"] == "publish_answer"
            assert call.published["ana"] is not held
            renewed = call.published["ana"]
            # The old connection closing later leaves the rejoined media alone.
            await first.close()
            await asyncio.sleep(1.0)
            assert call.published.get("ana") is renewed
            # Once that page is gone, the second page may publish.
            await rejoined.close_websocket()
            await wait_until(lambda: "ana" not in call.published)
            assert (await second.publish())["type"] == "publish_answer"
        finally:
            for page in (first, second, anonymous, rejoined):
                if page is not None:
                    await page.close()


async def test_nothing_of_a_performer_who_left_is_forked(
    capture: CaptureServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fork that takes its time to stop (its last records wait for a slow broker): the
    # media connection is still open meanwhile.
    original_stop = PerformerFork.stop

    async def slow_stop(fork: PerformerFork) -> None:
        await asyncio.sleep(1.5)
        await original_stop(fork)

    monkeypatch.setattr(PerformerFork, "stop", slow_stop)
    session, url = await new_session(capture)
    sid = session.session_id
    async with aiohttp.ClientSession() as http:
        watcher = Page(http, url, None)  # keeps the call open, as another page would
        page = Page(http, url, PAGE_A)
        try:
            await watcher.join()
            await page.join()
            assert (await page.publish())["type"] == "publish_answer"
            totals = capture._fork_totals[sid]["ana"]
            await wait_until(lambda: totals.video_frames_out > 5 and totals.audio_chunks_out > 20)
            # The page leaves: its websocket closes, its peer connection is left open (as a
            # page closing its socket first would); the server ends the media itself.
            await page.close_websocket()
            await wait_until(lambda: "ana" not in capture.calls[sid].published)
            left_us = time.time_ns() // 1000
            # Frames taken in stop at once (what came before may still be flushed out).
            frames_in = totals.video_frames_in
            await asyncio.sleep(3.0)
            assert totals.video_frames_in == frames_in
            assert page.pc is not None
            assert page.pc.connectionState == "closed", "the server kept the media connection"
        finally:
            await page.close()
            await watcher.close()
    # Nothing captured after the server knew they left is on Kafka (a frame in flight
    # at that instant was captured a little before it).
    assert not await media_after(capture.settings, session, left_us + 100_000)


async def media_after(
    settings: Settings, session: records.SessionRecord, after_us: int
) -> list[tuple[str, int]]:
    """Media records of the session captured after ``after_us`` (ts_us)."""
    consumer = clients.make_consumer(
        settings, session.topics.audio, session.topics.video, auto_offset_reset="earliest"
    )
    found: list[tuple[str, int]] = []
    await consumer.start()
    try:
        quiet = 0
        while quiet < 3:
            batches = await consumer.getmany(timeout_ms=300)
            got = [message for batch in batches.values() for message in batch]
            quiet = 0 if got else quiet + 1
            for message in got:
                kind = records.AudioChunk if "audio" in message.topic else records.VideoFrame
                item = records.decode(kind, message.value, message.headers)
                assert isinstance(item, records.AudioChunk | records.VideoFrame)
                if item.header.ts_us > after_us:
                    found.append((item.record_type, item.header.ts_us))
    finally:
        await consumer.stop()
    return found


async def test_a_page_closed_while_its_media_is_set_up_is_not_forked(
    capture: CaptureServer,
) -> None:
    session, url = await new_session(capture)
    sid = session.session_id
    async with aiohttp.ClientSession() as http:
        watcher = Page(http, url, None)
        page = Page(http, url, PAGE_A)
        try:
            await watcher.join()
            await page.join()
            connection = next(
                c
                for c in capture._connections[sid]
                if isinstance(c, CallConnection) and c.claims.participant_id == "ana"
            )
            # The server closes the page (the session ended, its link was revoked) while
            # its publish is being set up.
            handling = asyncio.create_task(
                connection._handle(page.publish_message(await page.offer()))
            )
            # Closed at the publish's first wait, once its media is in place.
            async with asyncio.timeout(5):
                while "ana" not in capture.calls[sid].published:  # noqa: ASYNC110
                    await asyncio.sleep(0)
            assert not handling.done()
            await connection.close()
            await handling
            assert "ana" not in capture.calls[sid].published
        finally:
            with contextlib.suppress(Exception):
                await page.close()
            await watcher.close()
