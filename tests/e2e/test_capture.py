"""Performers join a scene from real Chromium; the call is forked into Kafka."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from PIL import Image

from capture.server import CaptureServer
from streams import records
from streams.kafka import clients, health, topics
from streams.settings import Settings
from taggers.tokens import load_secret
from tests import media as test_media
from tests.e2e.conftest import LaunchPage, new_session, receive_stats
from tests.lipsync import beep_onsets, flash_onsets
from tests.tag_client import exchange_link

pytestmark = pytest.mark.e2e

Collected = dict[tuple[str, str], list[records.AudioChunk | records.VideoFrame]]


async def collect(settings: Settings, session: records.SessionRecord, seconds: float) -> Collected:
    """Every media record of the session so far plus ``seconds`` more, per (stream, performer)."""
    consumer = clients.make_consumer(settings, session.topics.audio, session.topics.video)
    found: Collected = defaultdict(list)
    await consumer.start()
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                for message in batch:
                    record_type = topics.record_type_of(message.topic)
                    record = records.decode(record_type, message.value, message.headers)
                    assert isinstance(record, records.AudioChunk | records.VideoFrame)
                    found[(record.record_type, record.header.performer_id)].append(record)
    finally:
        await consumer.stop()
    return found


async def wait_for_remote_media(
    page: Any, performer_id: str, timeout_s: float = 30
) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        while True:
            stats = (await receive_stats(page)).get(performer_id)
            if stats and stats["framesDecoded"] > 10 and stats["audioSamples"] > 4800:
                return stats
            await asyncio.sleep(0.25)


async def test_two_performers_see_each_other_and_are_forked(
    capture_settings: Settings,
    capture_server: CaptureServer,
    open_page: LaunchPage,
    media: test_media.MediaSet,
) -> None:
    session, links = await new_session(capture_settings, capture_server, ["alice", "bob"])
    async with (
        open_page(links["alice"], video=media.wolfgang_y4m, audio=media.speech_low_wav) as alice,
        open_page(links["bob"], video=media.single_face_y4m, audio=media.speech_high_wav) as bob,
    ):
        alice_sees_bob = await wait_for_remote_media(alice, "bob")
        bob_sees_alice = await wait_for_remote_media(bob, "alice")
        assert alice_sees_bob["audioEnergy"] > 0
        assert bob_sees_alice["audioEnergy"] > 0
        started = time.monotonic()
        found = await collect(capture_settings, session, seconds=6.0)
        window_s = time.monotonic() - started
        stats = capture_server.calls[session.session_id].stats()

    fps = capture_settings.video_fps
    for performer in ("alice", "bob"):
        video = [r for r in found[("video_frame", performer)] if isinstance(r, records.VideoFrame)]
        audio = [r for r in found[("audio_chunk", performer)] if isinstance(r, records.AudioChunk)]
        assert len(video) > 10, (performer, len(video))
        assert len(audio) > 50, (performer, len(audio))
        for stream in (video, audio):
            seqs = [r.header.seq for r in stream]
            stamps = [r.header.ts_us for r in stream]
            assert seqs == sorted(set(seqs)), f"{performer}: seq not strictly increasing"
            assert all(b > a for a, b in itertools.pairwise(stamps)), f"{performer}: ts_us"
        # Rates on capture time over the last 4 s (the start is still warming up).
        video_span = [r for r in video if r.header.ts_us >= video[-1].header.ts_us - 4_000_000]
        video_rate = (len(video_span) - 1) / 4.0
        assert abs(video_rate - fps) <= 1.5, f"{performer}: {video_rate:.1f} fps, want {fps}"
        audio_span = [r for r in audio if r.header.ts_us >= audio[-1].header.ts_us - 4_000_000]
        assert 48 <= (len(audio_span) - 1) / 4.0 <= 52, f"{performer}: audio chunks/s"
        last = video[-1]
        image = Image.open(io.BytesIO(last.jpeg))
        assert image.size == (capture_settings.video_width, capture_settings.video_height)
        # Capture instants are real: recent, and never in the future.
        assert 0 < time.time_ns() // 1000 - last.header.ts_us < (window_s + 10) * 1_000_000
        assert stats[performer]["audio_chunks_dropped"] == 0


async def test_lip_sync_flash_and_beep_land_together(
    capture_settings: Settings,
    open_page: LaunchPage,
    media: test_media.MediaSet,
) -> None:
    # Every frame forked (30 fps), so a one-frame flash is never thinned away.
    settings = capture_settings.model_copy(update={"video_fps": 30.0})
    server = CaptureServer(settings, secret=load_secret(settings))
    await server.start()
    try:
        session, links = await new_session(settings, server, ["alice"])
        link = links["alice"]
        sync = media.lipsync
        async with open_page(link, video=sync.video, audio=sync.audio):
            # Audio sender reports come every ~5 s: wait for both streams' first one.
            found = await collect(settings, session, seconds=16.0)
    finally:
        await server.stop()
    video = [r for r in found[("video_frame", "alice")] if isinstance(r, records.VideoFrame)]
    audio = [r for r in found[("audio_chunk", "alice")] if isinstance(r, records.AudioChunk)]
    video = [r for r in video if r.header.timing == "sender_report"]
    audio = [r for r in audio if r.header.timing == "sender_report"]
    flashes, beeps = flash_onsets(video), beep_onsets(audio)
    assert len(flashes) >= 4, flashes
    assert len(beeps) >= 4, beeps
    errors_ms = []
    for flash in flashes:
        nearest = min(beeps, key=lambda beep: abs(beep - flash))
        if abs(nearest - flash) < 500_000:  # the same event (events are 1 s apart)
            errors_ms.append((nearest - flash) / 1000)
    print("lip-sync errors (beep - flash) ms:", json.dumps(errors_ms))
    assert len(errors_ms) >= 4, errors_ms
    # Chromium's fake camera runs a little slower than its 30 fps file while the fake
    # microphone keeps exact time, so flash and beep drift apart by about a frame every
    # few seconds of capture: judge the first events, where that drift is smallest.
    # Within those, the error steps by one frame (33 ms) every few events, so where the
    # first events fall in that cycle is chance: no event may be more than a frame and a
    # bit off, and where the cycle passes zero flash and beep must land together.
    first = errors_ms[:6]
    assert max(abs(e) for e in first) <= 40, first
    assert min(abs(e) for e in first) <= 20, first


async def test_bad_input_gets_clear_errors_while_the_scene_flows(
    capture_settings: Settings,
    capture_server: CaptureServer,
    open_page: LaunchPage,
    media: test_media.MediaSet,
) -> None:
    session, links = await new_session(capture_settings, capture_server, ["alice", "bob"])
    base = capture_server.url
    # What bob's page has after exchanging his link: a session credential.
    good_token = await exchange_link(base, links["bob"].split("token=", 1)[1])
    async with open_page(links["alice"], video=media.wolfgang_y4m, audio=media.speech_low_wav):
        before = await collect(capture_settings, session, seconds=3.0)
        async with aiohttp.ClientSession() as http:
            for token, status, code in (
                ("", 401, "bad_token"),
                ("forged.token.value", 401, "bad_token"),
                (good_token[:-4] + "abcd", 401, "bad_token"),
            ):
                async with http.get(f"{base}/ws/call", params={"token": token}) as response:
                    assert response.status == status
                    assert (await response.json())["code"] == code
            async with http.ws_connect(f"{base}/ws/call?token={good_token}") as ws:
                welcome = json.loads((await ws.receive()).data)
                while welcome["type"] != "welcome":
                    welcome = json.loads((await ws.receive()).data)
                for bad, code in (
                    ("{not json", "malformed"),
                    (json.dumps({"type": "publish", "sdp": "v=0\r\nnonsense"}), "bad_offer"),
                    (
                        json.dumps({"type": "publish", "sdp": "v=0\r\nm=audio x RTP/AVP 0\r\n"}),
                        "bad_sdp",
                    ),
                    (json.dumps({"type": "publish", "sdp": "x" * 40_000}), "malformed"),
                    ("x" * 100_000, "too_large"),
                    (
                        json.dumps({"type": "subscribe", "performer_id": "nobody", "sdp": "v=0"}),
                        "not_live",
                    ),
                ):
                    await ws.send_str(bad)
                    reply = json.loads((await ws.receive()).data)
                    while reply["type"] != "error":
                        reply = json.loads((await ws.receive()).data)
                    assert reply["code"] == code, (bad[:40], reply)
                assert not ws.closed, "a bad message must not close the connection"
            # The loop-lag metrics answer a bad query with a clear error, a good one with
            # the samples taken while the scene flowed.
            async with http.get(f"{base}/metrics/loop?since=yesterday") as response:
                assert response.status == 400
                assert (await response.json())["code"] == "malformed"
            async with http.get(f"{base}/metrics/loop?since=0") as response:
                loop_lag = await response.json()
            assert loop_lag["samples"], loop_lag
            assert loop_lag["lag_ms_p99"] is not None, loop_lag
            async with http.get(f"{base}/metrics/refusals") as response:
                counted = (await response.json())["call"]
            # Every refusal is counted by its code, for the operator.
            assert counted["bad_token"] == 3
            for code in ("malformed", "bad_offer", "bad_sdp", "too_large", "not_live"):
                assert counted[code] >= 1, (code, counted)
        after = await collect(capture_settings, session, seconds=3.0)
    # alice's media kept flowing throughout.
    before_video = len(before[("video_frame", "alice")])
    after_video = len(after[("video_frame", "alice")])
    assert after_video > before_video + 20


def _is_live(server: CaptureServer, session_id: str) -> bool:
    call = server.calls.get(session_id)
    return call is not None and bool(call.live_performers())


async def wait_until(condition: Callable[[], bool], *, timeout_s: float) -> None:
    """Poll a condition of server state that has no event to wait on."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # noqa: ASYNC110 - the state lives in another component
            await asyncio.sleep(0.2)


async def test_page_rejoins_after_a_server_restart(
    capture_settings: Settings,
    open_page: LaunchPage,
    media: test_media.MediaSet,
) -> None:
    secret = load_secret(capture_settings)
    server = CaptureServer(capture_settings, secret=secret)
    await server.start()
    port = server.port
    restarted: CaptureServer | None = None
    try:
        session, links = await new_session(capture_settings, server, ["alice"])
        link = links["alice"]
        async with open_page(link, video=media.wolfgang_y4m, audio=media.speech_low_wav) as page:
            first = await collect(capture_settings, session, seconds=4.0)
            assert len(first[("video_frame", "alice")]) > 10
            stopped_ms = time.time_ns() // 1_000_000
            await server.stop()
            await asyncio.sleep(3.0)  # down for a while: the page keeps retrying meanwhile
            restarted = CaptureServer(
                capture_settings.model_copy(update={"capture_port": port}), secret=secret
            )
            await restarted.start()
            back_ms = time.time_ns() // 1_000_000
            await wait_until(lambda: _is_live(restarted, session.session_id), timeout_s=30)
            connects = await page.evaluate("window.livetag.connects")
            assert connects >= 2
            # The page says it was down, noticed it at once, and was back (publishing
            # again) within 3 s of the server's return, not after a long backoff.
            outages = await page.evaluate("window.livetag.outages")
            async with asyncio.timeout(10):
                while not outages or outages[-1]["upUnixMs"] is None:
                    await asyncio.sleep(0.1)
                    outages = await page.evaluate("window.livetag.outages")
            assert [outage["key"] for outage in outages] == ["call"], outages
            assert outages[0]["downUnixMs"] - stopped_ms < 1000, outages
            assert outages[0]["upUnixMs"] is not None, outages
            assert outages[0]["upUnixMs"] - back_ms <= 3000, outages
            stats_before = restarted.calls[session.session_id].stats()["alice"]["video_frames_out"]
            await asyncio.sleep(4.0)
            stats_after = restarted.calls[session.session_id].stats()["alice"]["video_frames_out"]
            assert stats_after - stats_before > 20, "the fork did not resume"
    finally:
        await server.stop()
        if restarted is not None:
            await restarted.stop()


async def test_a_publication_the_server_loses_is_rejoined_at_once(
    capture_settings: Settings,
    capture_server: CaptureServer,
    open_page: LaunchPage,
    media: test_media.MediaSet,
) -> None:
    session, links = await new_session(capture_settings, capture_server, ["alice"])
    async with open_page(
        links["alice"], video=media.wolfgang_y4m, audio=media.speech_low_wav
    ) as page:
        await wait_until(lambda: _is_live(capture_server, session.session_id), timeout_s=30)
        call = capture_server.calls[session.session_id]
        first = call.published["alice"]
        await wait_until(lambda: call.stats()["alice"]["video_frames_in"] > 0, timeout_s=10)
        before = call.stats()["alice"]
        # What an ICE consent expiry does on the server: the connection closes under it.
        lost_ms = time.time_ns() // 1_000_000
        await first.pc.close()

        def republished() -> bool:
            # The page rejoins on a new signaling connection, which may bring a new call.
            now = capture_server.calls.get(session.session_id)
            media = None if now is None else now.published.get("alice")
            return media is not None and media is not first and media.live

        await wait_until(republished, timeout_s=10)
        back_ms = time.time_ns() // 1_000_000
        outages = await page.evaluate("window.livetag.outages")

        def carried_on() -> bool:
            # The fork counters go on from where the lost connection left them, in the
            # call's /metrics and on the session's health record.
            now = capture_server.calls[session.session_id].stats()["alice"]
            return now["reconnects"] == 1 and now["video_frames_in"] > before["video_frames_in"]

        await wait_until(carried_on, timeout_s=10)

        async def health_record_says_reconnected() -> bool:
            found = await health.read_counters(capture_settings, session.session_id)
            record = found.get((session.session_id, "alice", "capture"))
            return record is not None and record.counters["reconnects"] == 1

        async with asyncio.timeout(10):
            # The record comes from another component, through Kafka: polled.
            while not await health_record_says_reconnected():  # noqa: ASYNC110
                await asyncio.sleep(0.5)
    # The page was told and came back within seconds, not after its own ICE timeout.
    assert back_ms - lost_ms < 3000, back_ms - lost_ms
    assert [outage["reason"] for outage in outages] == ["media connection lost on the server"]


async def test_director_watches_and_frames_on_screen_map_to_capture_instants(
    capture_settings: Settings,
    capture_server: CaptureServer,
    open_page: LaunchPage,
    media: test_media.MediaSet,
) -> None:
    session, links = await new_session(capture_settings, capture_server, ["alice", "bob"])
    async with (
        open_page(links["alice"], video=media.wolfgang_y4m, audio=media.speech_low_wav),
        open_page(links["director"], video=None, audio=None) as director,
    ):
        await wait_for_remote_media(director, "alice")
        await asyncio.sleep(2.0)
        frames = await director.evaluate(
            "window.livetag.subscriptions.get('alice').frames.slice(-60)"
        )
        connections = capture_server._connections[session.session_id]
        watcher = next(c for c in connections if c.claims.role == "director")
        stamps = [watcher.frame_on_screen("alice", frame["rtpTimestamp"]) for frame in frames]
        # Joins are on livetag.sessions: both pages connected, the session went live.
        record = capture_server._directory.get(session.session_id)
    assert len(frames) >= 30, frames
    mapped = [(f, s) for f, s in zip(frames, stamps, strict=True) if s is not None]
    assert len(mapped) >= 0.9 * len(frames), f"{len(mapped)} of {len(frames)} frames mapped"
    for frame, stamp in mapped:
        shown_after_ms = frame["presentedUnixMs"] - stamp.ts_us / 1000
        # Captured, relayed, re-encoded, decoded and shown: later, but not by much.
        assert 0 < shown_after_ms < 500, shown_after_ms
    # Consecutive frames on screen map to capture instants as far apart as their RTP times.
    for (f1, s1), (f2, s2) in itertools.pairwise(mapped):
        rtp_ms = ((f2["rtpTimestamp"] - f1["rtpTimestamp"]) % 2**32) / 90
        assert abs((s2.ts_us - s1.ts_us) / 1000 - rtp_ms) < 2, (rtp_ms, s1, s2)
    assert record is not None
    assert record.state == "live"
    presence = {p.participant_id: p for p in record.presence}
    assert presence["alice"].connected
    assert presence["director"].role == "director"
