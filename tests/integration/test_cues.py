"""Live cues through the real broker: the director's dashboard publishes them, the capture
server shows each on its performer's page (here a scripted page in this process, with a
clock of its own) and publishes it again with the page's "shown" on the session clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import TopicPartition
from pydantic import SecretStr

from capture.server import CaptureServer
from dashboard.server import DashboardServer
from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session
from streams.settings import Settings
from taggers.tokens import load_secret
from taggers.vocabulary import load_vocabulary
from tests.tag_client import SECRET, SimulatedClock, token_for, wall_us

pytestmark = pytest.mark.integration

PAGE_CLOCK_OFFSET_US = -1_500_000  # the pages' clocks run 1.5 s behind the session clock


@pytest.fixture
def capture_settings(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "capture_port": 0,
            "dashboard_port": 0,
            "state_dir": tmp_path / "state",
            # The key tests.tag_client.token_for signs with.
            "token_secret": SecretStr(SECRET.decode()),
        }
    )


@pytest.fixture
async def session(capture_settings: Settings) -> records.SessionRecord:
    return await create_session(
        capture_settings,
        prompt="Two strangers share an umbrella.",
        performer_names=["ana", "ben"],
        vocabulary=load_vocabulary(None),
    )


@pytest.fixture
async def dashboard(
    capture_settings: Settings, capture: CaptureServer
) -> AsyncIterator[DashboardServer]:
    linked = capture_settings.model_copy(update={"capture_port": capture.port})
    server = DashboardServer(linked, secret=load_secret(linked))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def ws_url(base: str, path: str, token: str) -> str:
    return base.replace("http://", "ws://") + f"{path}?token={token}"


class Page:
    """A performer's call page, scripted: it answers clock probes with its own clock (once
    ``synced`` is set), shows every cue at once and says so."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, *, synced: bool = True) -> None:
        self.ws = ws
        self.clock = SimulatedClock(offset_us=PAGE_CLOCK_OFFSET_US)
        self.synced = asyncio.Event()
        if synced:
            self.synced.set()
        self.cues: list[dict[str, Any]] = []
        self.shown_at_us: dict[str, int] = {}  # cue_id -> true (session clock) time shown
        self.errors: list[dict[str, Any]] = []
        self.welcome: dict[str, Any] | None = None
        self.got = asyncio.Condition()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if data["type"] == "clock_probe":
                if self.synced.is_set():
                    await self.ws.send_json(
                        {
                            "type": "clock_reply",
                            "probe_id": data["probe_id"],
                            "server_send_us": data["server_send_us"],
                            "client_time_us": self.clock.now(),
                        }
                    )
                continue
            if data["type"] == "welcome":
                self.welcome = data
            elif data["type"] == "cue":
                cue = data["cue"]
                self.cues.append(cue)
                true_now = wall_us()
                self.shown_at_us[cue["cue_id"]] = true_now
                await self.show(cue["cue_id"], self.clock.at(true_now))
            elif data["type"] == "error":
                self.errors.append(data)
            async with self.got:
                self.got.notify_all()

    async def show(self, cue_id: str, client_us: int) -> None:
        await self.ws.send_json(
            {"type": "cue_shown", "cue_id": cue_id, "client_shown_ts_us": client_us}
        )

    async def wait(self, what: Any, timeout_s: float = 15.0) -> None:
        async with asyncio.timeout(timeout_s), self.got:
            await self.got.wait_for(what)

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


async def read_cues(settings: Settings, session_id: str) -> list[records.Cue]:
    """Every cue record of the session on livetag.cues now, in each partition's order."""
    consumer = clients.make_consumer(settings)
    await consumer.start()
    try:
        partitions = [TopicPartition(topics.CUES, n) for n in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        found: list[records.Cue] = []
        while any([await consumer.position(p) < ends[p] for p in partitions]):
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                for message in messages:
                    if (message.key or b"").startswith(f"{session_id}/".encode()):
                        found.append(records.decode(records.Cue, message.value, message.headers))
        return found
    finally:
        await consumer.stop()


async def wait_for_cues(
    settings: Settings, session_id: str, done: Any, timeout_s: float = 15.0
) -> list[records.Cue]:
    async with asyncio.timeout(timeout_s):
        while True:
            found = await read_cues(settings, session_id)
            if done(found):
                return found
            await asyncio.sleep(0.2)


async def director_says(
    ws: aiohttp.ClientWebSocketResponse, message: dict[str, Any]
) -> dict[str, Any]:
    """Send a dashboard message; its answer (cue_sent or error), updates skipped."""
    await ws.send_json(message)
    async with asyncio.timeout(15):
        while True:
            reply = json.loads((await ws.receive()).data)
            if reply.get("type") in ("cue_sent", "error"):
                return reply


async def test_a_cue_reaches_its_performers_page_and_comes_back_shown_on_the_session_clock(
    capture_settings: Settings,
    capture: CaptureServer,
    dashboard: DashboardServer,
    session: records.SessionRecord,
) -> None:
    sid = session.session_id
    async with aiohttp.ClientSession() as http:
        ana = Page(
            await http.ws_connect(
                ws_url(capture.url, "/ws/call", token_for(sid, "ana", "performer"))
            )
        )
        # Ben's page answers no clock probe until after it said it showed a cue.
        ben = Page(
            await http.ws_connect(
                ws_url(capture.url, "/ws/call", token_for(sid, "ben", "performer"))
            ),
            synced=False,
        )
        director = await http.ws_connect(
            ws_url(dashboard.url, "/ws/dashboard", token_for(sid, "director", "director"))
        )
        try:
            await ana.wait(lambda: ana.welcome is not None)
            assert ana.welcome is not None
            assert ana.welcome["day_id"] is None
            await asyncio.sleep(1.0)  # ana's clock sync settles (probes every 0.2 s)

            sent = await director_says(
                director,
                {
                    "type": "cue",
                    "to": "ana",
                    "kind": "emotion",
                    "label": "laughter",
                    "intensity": "strong",
                    "request_id": 1,
                },
            )
            assert sent["type"] == "cue_sent", sent
            cue_id = sent["cue_ids"]["ana"]
            await ana.wait(lambda: any(c["cue_id"] == cue_id for c in ana.cues))
            assert ana.cues[-1] == {
                "cue_id": cue_id,
                "kind": "emotion",
                "label": "laughter",
                "intensity": "strong",
                "text": "",
                "ts_us": sent["ts_us"],
            }
            found = await wait_for_cues(
                capture_settings, sid, lambda cues: any(c.shown_ts_us for c in cues)
            )
            [first, shown] = [c for c in found if c.cue_id == cue_id]
            assert first.shown_ts_us is None
            assert shown.shown is not None
            assert shown.shown_ts_us is not None
            # The page's own clock, converted: within a few ms of the true instant.
            assert abs(shown.shown_ts_us - ana.shown_at_us[cue_id]) < 5_000
            assert abs(shown.shown.clock_offset_us + PAGE_CLOCK_OFFSET_US) < 5_000
            assert shown.shown_ts_us >= shown.ts_us == first.ts_us == sent["ts_us"]
            assert shown.model_dump(exclude={"shown_ts_us", "shown"}) == first.model_dump(
                exclude={"shown_ts_us", "shown"}
            )
            print("sent -> shown", (shown.shown_ts_us - shown.ts_us) / 1000, "ms")

            # Shown twice (a rejoin shows the cue in force again): one shown record only.
            await ana.show(cue_id, ana.clock.now())
            # A cue the page never got is refused, and counted.
            await ana.show("cue-never-sent", ana.clock.now())
            await ana.wait(lambda: any(e["code"] == "unknown_cue" for e in ana.errors))
            assert capture.refusals["unknown_cue"] == 1

            # To everyone: ben shows it before his clock is synced; his "shown" waits for
            # the first clock reply.
            everyone = await director_says(
                director, {"type": "cue", "to": "all", "kind": "text", "text": "Whisper now"}
            )
            assert set(everyone["cue_ids"]) == {"ana", "ben"}
            await ben.wait(lambda: len(ben.cues) == 1)
            assert ben.cues[0]["cue_id"] == everyone["cue_ids"]["ben"]
            await asyncio.sleep(0.5)
            ben.synced.set()
            found = await wait_for_cues(
                capture_settings,
                sid,
                lambda cues: sum(1 for c in cues if c.shown_ts_us and c.group_id) == 2,
            )
            group = [c for c in found if c.group_id == everyone["group_id"]]
            assert len(group) == 4
            ben_shown = next(c for c in group if c.performer_id == "ben" and c.shown_ts_us)
            assert ben_shown.shown_ts_us is not None
            assert abs(ben_shown.shown_ts_us - ben.shown_at_us[ben_shown.cue_id]) < 5_000
            assert [c["cue_id"] for c in ana.cues] == [cue_id, everyone["cue_ids"]["ana"]]
            assert sum(1 for c in found if c.cue_id == cue_id) == 2  # sent, shown once

            # A page that joins gets the cue in force.
            again = Page(
                await http.ws_connect(
                    ws_url(capture.url, "/ws/call", token_for(sid, "ana", "performer"))
                )
            )
            try:
                await again.wait(lambda: len(again.cues) == 1)
                assert again.cues[0]["cue_id"] == everyone["cue_ids"]["ana"]
            finally:
                await again.close()

            # Bad cues: their codes, the broker untouched.
            for bad, code in (
                ({"to": "zoe", "kind": "clear"}, "unknown_performer"),
                ({"to": "ana", "kind": "emotion", "label": "glee"}, "unknown_label"),
                ({"to": "ana", "kind": "text", "text": "x" * 201}, "text_too_long"),
            ):
                refused = await director_says(director, {"type": "cue", **bad})
                assert refused["type"] == "error"
                assert refused["code"] == code, refused
            assert dashboard.refusals["unknown_label"] == 1
        finally:
            await director.close()
            await ana.close()
            await ben.close()


async def test_an_undecodable_cue_is_dead_lettered_by_the_capture_server(
    capture_settings: Settings, capture: CaptureServer, session: records.SessionRecord
) -> None:
    producer = clients.make_producer(capture_settings)
    await producer.start()
    key = f"{session.session_id}/ana".encode()
    try:
        await producer.send_and_wait(topics.CUES, b'{"cue": "not one"}', key=key)
    finally:
        await producer.stop()
    consumer = clients.make_consumer(capture_settings)
    await consumer.start()
    try:
        consumer.subscribe([topics.DEADLETTER])
        async with asyncio.timeout(15):
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                letters = [
                    records.decode(records.DeadLetter, m.value, m.headers)
                    for ms in batches.values()
                    for m in ms
                ]
                mine = [
                    letter
                    for letter in letters
                    if letter.source_topic == topics.CUES and letter.source_key == key.decode()
                ]
                if mine:
                    break
    finally:
        await consumer.stop()
    assert mine[0].service == "livetag-capture"
    assert "cue" in mine[0].reason
    assert capture.cues.counts["undecodable"] >= 1
