"""A scripted tagging client for tests and benchmarks: the widget's protocol in Python.

It speaks the tag protocol over a real websocket, answers clock probes with its own
(possibly offset and drifting) clock, keeps every unacknowledged tag and rating batch and
re-sends them after a reconnect, like the browser widget does. ``uplink`` / ``downlink``
delay each message in one direction, in order (a jittery path, as TCP sees it), to
simulate a remote rater.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from streams import records
from streams.kafka import clients, topics
from streams.session_clock import now_us as wall_us  # the session clock, as tests name it
from streams.settings import Settings
from taggers import tokens
from taggers.service import FrameLookup, TagService
from taggers.vocabulary import DEFAULT_VOCABULARY

Delay = Callable[[], float]  # seconds
RETRY_CODES = frozenset({"not_synced", "unavailable"})  # too_frequent is tested as refused


@dataclass
class SimulatedClock:
    """A client clock ``offset_us`` ahead of the wall clock at ``origin_us``, drifting."""

    offset_us: int = 0
    drift_ppm: float = 0.0
    origin_us: int = field(default_factory=wall_us)

    def at(self, true_us: int) -> int:
        return round(true_us + self.offset_us + self.drift_ppm * (true_us - self.origin_us) / 1e6)

    def now(self) -> int:
        return self.at(wall_us())


class TagClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        clock: SimulatedClock | None = None,
        uplink: Delay | None = None,
        downlink: Delay | None = None,
    ) -> None:
        self.url = url
        self.token = token
        self.clock = clock or SimulatedClock()
        self.uplink = uplink
        self.downlink = downlink
        self.welcome: dict[str, Any] | None = None
        self.acks: dict[str, dict[str, Any]] = {}
        self.ack_times_us: dict[str, int] = {}  # when the ack was read off the socket
        self.written_us: dict[str, int] = {}  # when each tag was written to the socket
        self.errors: list[dict[str, Any]] = []
        self.unacked: dict[str, dict[str, Any]] = {}  # tag_id -> message, in send order
        self.rating_acks: dict[str, dict[str, Any]] = {}  # batch_id -> its first ratings_ack
        self.unacked_batches: dict[str, dict[str, Any]] = {}  # batch_id -> message
        self.replies: list[dict[str, Any]] = []  # other server messages (reaction_lag ...)
        self.probes_answered = 0
        self.clock_id = uuid.uuid4().hex  # one clock per client, across reconnects
        self.deaf = False  # drop every incoming message: acks lost with a dying connection
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._up: asyncio.Queue[tuple[float, str, str | None]] = asyncio.Queue()
        self._changed = asyncio.Condition()

    async def __aenter__(self) -> TagClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self, *, resend: bool = True) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.url)
        self._up = asyncio.Queue()
        self._tasks = [
            asyncio.create_task(self._read(self._ws)),
            asyncio.create_task(self._write(self._ws, self._up)),
        ]
        hello = {"type": "hello", "token": self.token, "clock_id": self.clock_id}
        await self.send_raw(json.dumps(hello))
        await self.wait_for(lambda: self.welcome is not None and self.probes_answered > 0)
        if resend:
            for tag_id, message in list(self.unacked.items()):
                await self.send_raw(json.dumps(message), tag_id)
            for batch_id, message in list(self.unacked_batches.items()):
                await self.send_raw(json.dumps(message), batch_id)

    async def drop(self) -> None:
        """Lose the connection abruptly: what was sent and not acked stays unacked."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        self.welcome = None
        self.probes_answered = 0

    async def close(self) -> None:
        await self.drop()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def send_raw(self, text: str, tag_id: str | None = None) -> None:
        delay = self.uplink() if self.uplink else 0.0
        await self._up.put((time.monotonic() + delay, text, tag_id))

    async def tag(
        self,
        performer_id: str,
        label: str,
        *,
        action: str = "point",
        press_us: int | None = None,
        **extra: Any,
    ) -> str:
        """Send a tag pressed at true wall time ``press_us`` (default now)."""
        tag_id = extra.pop("tag_id", None) or uuid.uuid4().hex
        message = {
            "type": "tag",
            "tag_id": tag_id,
            "action": action,
            "performer_id": performer_id,
            "label": label,
            "client_press_us": self.clock.at(wall_us() if press_us is None else press_us),
            **extra,
        }
        self.unacked[tag_id] = message
        await self.send_raw(json.dumps(message), tag_id)
        return tag_id

    async def ratings(
        self,
        performer_id: str,
        values: list[tuple[float, ...]],
        *,
        mode: str = "valence_arousal",
        label: str | None = None,
        rate_hz: int = 20,
        start_us: int | None = None,
        rtp_timestamps: list[int | None] | None = None,
        batch_id: str | None = None,
        **extra: Any,
    ) -> str:
        """Send a batch of continuous samples, one per value tuple, taken 1/rate_hz apart
        from true wall time ``start_us`` (default: ending now), stamped with this client's
        clock. Returns the batch_id."""
        batch_id = batch_id or uuid.uuid4().hex
        period_us = 1_000_000 // rate_hz
        if start_us is None:
            start_us = wall_us() - period_us * (len(values) - 1)
        rtps = rtp_timestamps or [None] * len(values)
        samples = [
            [self.clock.at(start_us + index * period_us), *value, rtp]
            for index, (value, rtp) in enumerate(zip(values, rtps, strict=True))
        ]
        message: dict[str, Any] = {
            "type": "ratings",
            "batch_id": batch_id,
            "performer_id": performer_id,
            "mode": mode,
            "rate_hz": rate_hz,
            "samples": samples,
            **extra,
        }
        if label is not None:
            message["label"] = label
        self.unacked_batches[batch_id] = message
        await self.send_raw(json.dumps(message), batch_id)
        return batch_id

    async def wait_rated(self, batch_ids: list[str], timeout_s: float = 10.0) -> None:
        await self.wait_for(lambda: all(b in self.rating_acks for b in batch_ids), timeout_s)

    async def wait_for(self, condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            async with self._changed:
                await self._changed.wait_for(condition)

    async def wait_acked(self, tag_ids: list[str], timeout_s: float = 10.0) -> None:
        await self.wait_for(lambda: all(tag_id in self.acks for tag_id in tag_ids), timeout_s)

    async def _write(self, ws: aiohttp.ClientWebSocketResponse, queue: asyncio.Queue[Any]) -> None:
        departure = 0.0
        while True:
            due, text, tag_id = await queue.get()
            departure = max(departure, due)  # in order, like one TCP stream
            await asyncio.sleep(max(0.0, departure - time.monotonic()))
            await ws.send_str(text)
            if tag_id is not None:
                self.written_us[tag_id] = wall_us()
            queue.task_done()

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        arrival = 0.0
        async for frame in ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                break
            read_us = wall_us()
            if self.downlink is not None:
                arrival = max(arrival, time.monotonic() + self.downlink())
                await asyncio.sleep(max(0.0, arrival - time.monotonic()))
            await self._handle(json.loads(frame.data), read_us)

    async def sent_all(self) -> None:
        """Wait until every queued message is written to the socket."""
        await self._up.join()

    async def _handle(self, message: dict[str, Any], read_us: int) -> None:
        if self.deaf:
            return
        kind = message["type"]
        if kind == "clock_probe":
            reply = {
                "type": "clock_reply",
                "probe_id": message["probe_id"],
                "server_send_us": message["server_send_us"],
                "client_time_us": self.clock.now(),
            }
            await self.send_raw(json.dumps(reply))
            self.probes_answered += 1
        elif kind == "welcome":
            self.welcome = message
        elif kind == "ack":
            self.acks.setdefault(message["tag_id"], message)
            self.ack_times_us.setdefault(message["tag_id"], read_us)
            self.unacked.pop(message["tag_id"], None)
        elif kind == "ratings_ack":
            self.rating_acks.setdefault(message["batch_id"], message)
            self.unacked_batches.pop(message["batch_id"], None)
        elif kind == "error":
            self.errors.append(message)
            # As the widget does: a tag or batch the service could not take yet is re-sent.
            tag_id = message.get("tag_id")
            batch_id = message.get("batch_id")
            kept = None
            if message["code"] in RETRY_CODES:
                if tag_id in self.unacked:
                    kept = tag_id, json.dumps(self.unacked[tag_id])
                elif batch_id in self.unacked_batches:
                    kept = batch_id, json.dumps(self.unacked_batches[batch_id])
            if kept is not None:
                resend_id, resend = kept
                asyncio.get_running_loop().call_later(
                    0.5, lambda: asyncio.ensure_future(self.send_raw(resend, resend_id))
                )
        else:
            self.replies.append(message)
        async with self._changed:
            self._changed.notify_all()


# ---------------------------------------------------------------- a tag service to test


SECRET = b"test-secret-that-is-long-enough-for-hs256-signatures"


def session_record(
    session_id: str, performers: tuple[str, ...] = ("ana", "ben")
) -> records.SessionRecord:
    now = wall_us()
    return records.SessionRecord(
        ts_us=now,
        session_id=session_id,
        created_ts_us=now,
        prompt="Two strangers share an umbrella.",
        roster=[records.Performer(performer_id=p, display_name=p.title()) for p in performers],
        vocabulary=list(DEFAULT_VOCABULARY),
        state="live",
        topics=topics.session_topic_names(session_id),
    )


def token_for(session_id: str, participant: str, role: records.Role) -> str:
    """A session credential (what a page has after exchanging its link) for an hour."""
    return tokens.issue(
        SECRET,
        session_id=session_id,
        role=role,
        participant_id=participant,
        ttl_s=3600,
        kind="session",
    )


async def exchange_link(base_url: str, link_token: str) -> str:
    """What a page does with its join link first: its token for a session credential
    (``POST /api/credential`` on the capture server or the dashboard at ``base_url``)."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{base_url}/api/credential", json={"token": link_token}) as response,
    ):
        body = await response.json()
        if response.status != 200:
            raise RuntimeError(f"link refused ({response.status}): {body}")
        credential: str = body["credential"]
        return credential


@dataclass
class ServedTags:
    service: TagService
    url: str
    session: records.SessionRecord

    def client(
        self, participant: str = "dir", role: records.Role = "director", **options: Any
    ) -> TagClient:
        token = token_for(self.session.session_id, participant, role)
        return TagClient(self.url, token, **options)


@asynccontextmanager
async def serve_tags(
    settings: Settings,
    session: records.SessionRecord,
    *,
    frame_lookup: FrameLookup | None = None,
) -> AsyncIterator[ServedTags]:
    """A tag service for ``session`` alone, on a free loopback port (``frame_lookup``: what
    the capture server would say of a watcher's frame on screen)."""

    async def lookup(session_id: str) -> records.SessionRecord | None:
        return session if session_id == session.session_id else None

    async with clients.admin_client(settings) as admin:
        await topics.ensure_shared_topics(admin, settings)
    service = TagService(settings, secret=SECRET, sessions=lookup, frame_lookup=frame_lookup)
    await service.start()
    app = web.Application()
    service.add_routes(app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = runner.addresses[0][1]
        yield ServedTags(service, f"http://127.0.0.1:{port}/ws/tag", session)
    finally:
        await service.stop()
        await runner.cleanup()
