"""Abuse benchmark: a live scene while hostile and clumsy clients hammer it, then the broker
goes away.

Run: ``.venv/bin/python -m tests.bench.abuse [--quiet 30] [--abuse 60] [--outage 30]``.

``livetag up`` runs as users run it (embedded broker, capture server with the tag service,
processor worker, recorder, dashboard). Two performer pages in headless Chromium publish
real face and speech media and watch each other; three observers (links made with
``livetag session invite``) tag at a steady rate over real websocket tagging clients
(``tests.tag_client``, which re-send what was not acknowledged, as the widget does), each
with the session credential its link was exchanged for.

Phases, one after the other:
1. quiet (``--quiet`` s): the observers tag; their acknowledgement times are the baseline.
2. abuse (``--abuse`` s, at least until every loop below is done), from loopback, all at
   once while the observers go on tagging:
   - 2000 unauthenticated websocket connects spread over ``/ws/tag``, ``/ws/call`` and
     ``/ws/dashboard``, from another loopback address (127.0.0.2, as an attacker's
     machine): half send nothing, half a hello with no token, only after the hello
     deadline; at most 200 at once;
   - 500 oversized and malformed messages per endpoint (``/ws/tag`` after a valid hello,
     ``/ws/call`` and ``/ws/dashboard`` with the director's token): invalid JSON, invalid
     UTF-8, numbers of 5000 digits, nesting 100000 deep, messages over the size limit,
     wrong types;
   - token replays: the session credential of an observer revoked with ``livetag session
     revoke`` and an expired credential, 100 times on every websocket; the revoked
     observer's link and an expired link, 100 times at each server's credential exchange;
   - a second publisher: a second page with a live performer's link asks to publish.
3. outage (``--outage`` s): the embedded broker is frozen (SIGSTOP, every client
   connection to it reset each second, as clients of a broker restarting on its log see
   it), then thawed; the observers go on tagging.
4. after: 20 s more tagging, every tag acknowledged, the session ended.

Last line, one JSON object:
- ``unauthenticated_accepted``: unauthenticated connections still open 1 s past the hello
  deadline (refused at the upgrade or closed in time: not counted);
- ``revoked_accepted``: revoked or expired tokens that were let in (a tagging welcome, an
  upgraded call or dashboard websocket, a credential for a link);
- ``services_crashed``: livetag's processes that died or were restarted meanwhile (a
  supervised restart counts too), and ``livetag up`` itself exiting;
- ``tags_lost``: tags pressed but never acknowledged or never on ``livetag.tags``;
- ``audio_lost_unaccounted_s``: holes in each performer's forked audio (ts_us) over the
  run, less the audio the capture server counted as lost (``audio_lost_ms``) and less the
  seconds the performer's page was not publishing (its publication down, as the page and
  the server's counters say);
- ``tag_ack_ms_p99_quiet``, ``tag_ack_ms_p99_under_abuse`` (tags written during the abuse
  phase), ``tag_ack_ratio`` (under abuse / quiet);
- ``second_publisher_took_over``: 1 when the second page got the performer's media.
Details (each loop's outcome by refusal, the pages' publications, CPU) go in ``details``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import aiohttp
from aiokafka.admin import NewTopic

from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import SessionDirectory, create_session, publish
from streams.settings import Settings, load_settings, to_environment
from taggers.tokens import issue, issue_credential, join_links, load_secret, verify_link
from taggers.vocabulary import load_vocabulary
from tests import media as test_media
from tests.bench.capture import BenchError, free_port
from tests.bench.common import ROOT, percentile, reexec_in_netns
from tests.bench.drill import cut_broker_connections
from tests.bench.scene import (
    CpuMeter,
    LabelLog,
    LivetagUp,
    MediaLog,
    TopicReader,
    command_line,
    process_table,
)
from tests.browser import only_loopback, open_page
from tests.tag_client import TagClient, exchange_link, wall_us

IN_NETNS_ENV = "BENCH_ABUSE_IN_NETNS"
PROBE_TOPIC = "bench-abuse-probe"  # the benchmark's own, read by nobody
ATTACKER_ADDRESS = "127.0.0.2"  # loopback too, but not the address the users come from
UNAUTHENTICATED_CONNECTS = 2000
UNAUTHENTICATED_AT_ONCE = 200
MALFORMED_PER_ENDPOINT = 500
REPLAYS_PER_ENDPOINT = 100
ANSWER_TIMEOUT_S = 10.0  # a hello with no answer this long is reported as no_answer
HELLO_GRACE_S = 1.0  # a connection still open this long past the deadline was accepted
DRAIN_S = 0.25  # then what is in its socket is read, if the attacker's loop was late
TAGS_PER_S_PER_OBSERVER = 2.0
AFTER_OUTAGE_S = 20.0
ACK_TIMEOUT_S = 90.0
OBSERVERS = ("observer-a", "observer-b", "observer-c")
LABELS = ("amusement", "embarrassment", "hesitation", "anger")  # in the default vocabulary


def wall_ms() -> float:
    return time.time() * 1000


# ---------------------------------------------------------------- hostile payloads


def malformed_messages(limit_bytes: int) -> list[str | bytes]:
    """One of each kind of bad message a path must refuse clearly."""
    digits = "9" * 5000
    deep = "[" * 100_000 + "]" * 100_000
    return [
        "{not json",
        b"\xff\xfe\xfa not utf-8",
        f'{{"type": "tag", "tag_id": {digits}}}',
        f'{{"type": "hello", "token": "x", "clock_id": {digits}}}',
        deep,
        '{"type": "tag", "label": ' + deep[:20_000] + "}",
        json.dumps({"type": "tag", "tag_id": "x" * (limit_bytes + 1)}),
        "x" * (limit_bytes * 4),
        json.dumps({"type": 7}),
        json.dumps([1, 2, 3]),
        json.dumps({"type": "offer", "sdp": 12}),
        json.dumps({"type": "tag", "client_press_us": 1e999}),
        '{"type": "tag", "client_press_us": NaN}',
        json.dumps({"type": "action", "action": {"take": [None] * 1000}}),
    ]


# ---------------------------------------------------------------- outcomes


@dataclass
class Outcomes:
    """What each abuse loop saw, by outcome."""

    unauthenticated: Counter[str] = field(default_factory=Counter)
    malformed: dict[str, Counter[str]] = field(default_factory=dict)
    replays: dict[str, Counter[str]] = field(default_factory=dict)
    second_publisher: dict[str, Any] = field(default_factory=dict)
    attacker_lag_ms_max: float = 0.0

    def unauthenticated_accepted(self) -> int:
        return self.unauthenticated["open_past_deadline"]

    def revoked_accepted(self) -> int:
        return sum(counts["accepted"] for counts in self.replays.values())


def close_reason(ws: aiohttp.ClientWebSocketResponse) -> str:
    code = ws.close_code
    return f"closed_{code}" if code is not None else "closed"


async def hold_unauthenticated(
    http: aiohttp.ClientSession,
    url: str,
    deadline_s: float,
    send_late_hello: bool,
) -> str:
    """One connection that never authenticates in time; how it ended."""
    try:
        ws = await http.ws_connect(url, timeout=aiohttp.ClientWSTimeout(ws_close=2.0))
    except aiohttp.WSServerHandshakeError as exc:
        return f"refused_{exc.status}"
    except (aiohttp.ClientError, OSError, TimeoutError):
        return "connect_failed"
    try:
        opened = time.monotonic()
        limit = deadline_s + HELLO_GRACE_S
        if send_late_hello:
            await asyncio.sleep(deadline_s + 0.2)
            with contextlib.suppress(Exception):
                await ws.send_str(json.dumps({"type": "hello", "clock_id": "late"}))
        while time.monotonic() - opened < limit:
            try:
                message = await ws.receive(timeout=max(0.01, limit - (time.monotonic() - opened)))
            except TimeoutError:
                break
            if message.type in (
                aiohttp.WSMsgType.CLOSE,
                aiohttp.WSMsgType.CLOSED,
                aiohttp.WSMsgType.CLOSING,
                aiohttp.WSMsgType.ERROR,
            ):
                return close_reason(ws)
        if not ws.closed:
            # This process holds hundreds of sockets: a close that arrived while its loop
            # was busy may still wait unread. What is not read within a moment was not sent.
            with contextlib.suppress(TimeoutError):
                message = await ws.receive(timeout=DRAIN_S)
                if message.type != aiohttp.WSMsgType.TEXT:
                    return close_reason(ws)
                message = await ws.receive(timeout=DRAIN_S)  # after the refusal's text
                if message.type != aiohttp.WSMsgType.TEXT:
                    return close_reason(ws)
        return "open_past_deadline" if not ws.closed else close_reason(ws)
    finally:
        await ws.close()


async def unauthenticated_flood(
    base_ws: str, dashboard_ws: str, deadline_s: float, outcomes: Outcomes
) -> None:
    endpoints = [f"{base_ws}/ws/tag", f"{base_ws}/ws/call", f"{dashboard_ws}/ws/dashboard"]
    connector = aiohttp.TCPConnector(local_addr=(ATTACKER_ADDRESS, 0), limit=0)
    gate = asyncio.Semaphore(UNAUTHENTICATED_AT_ONCE)
    async with aiohttp.ClientSession(connector=connector) as http:

        async def one(index: int) -> None:
            async with gate:
                outcome = await hold_unauthenticated(
                    http, endpoints[index % 3], deadline_s, send_late_hello=index % 2 == 1
                )
            outcomes.unauthenticated[outcome] += 1

        await asyncio.gather(*(one(i) for i in range(UNAUTHENTICATED_CONNECTS)))


async def send_malformed(
    http: aiohttp.ClientSession,
    name: str,
    url: str,
    opening: list[str],
    payloads: list[str | bytes],
    outcomes: Outcomes,
) -> None:
    """MALFORMED_PER_ENDPOINT bad messages down one endpoint, reconnecting when closed."""
    counts = outcomes.malformed.setdefault(name, Counter())
    sent = 0
    while sent < MALFORMED_PER_ENDPOINT:
        try:
            ws = await http.ws_connect(url, max_msg_size=0)
        except aiohttp.WSServerHandshakeError as exc:
            counts[f"refused_{exc.status}"] += 1
            await asyncio.sleep(0.5)
            continue
        except (aiohttp.ClientError, OSError) as exc:
            counts[f"connect_failed_{type(exc).__name__}"] += 1
            await asyncio.sleep(0.5)
            continue
        replies = asyncio.create_task(count_replies(ws, counts))
        try:
            for text in opening:
                await ws.send_str(text)
            while sent < MALFORMED_PER_ENDPOINT and not ws.closed:
                payload = payloads[sent % len(payloads)]
                try:
                    if isinstance(payload, bytes):
                        await ws.send_bytes(payload)
                    else:
                        await ws.send_str(payload)
                except (ConnectionResetError, RuntimeError, aiohttp.ClientError):
                    break
                sent += 1
                counts["sent"] += 1
                await asyncio.sleep(0.02)
        finally:
            await ws.close()
            replies.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await replies
        counts[close_reason(ws)] += 1


async def count_replies(ws: aiohttp.ClientWebSocketResponse, counts: Counter[str]) -> None:
    async for message in ws:
        if message.type != aiohttp.WSMsgType.TEXT:
            continue
        with contextlib.suppress(ValueError):
            body = json.loads(message.data)
            if isinstance(body, dict) and body.get("type") == "error":
                counts[f"error_{body.get('code')}"] += 1


async def try_token(http: aiohttp.ClientSession, endpoint: str, url: str, token: str) -> str:
    """Whether a token was let in: the tag service's welcome (its answer to the hello), or
    on the other websockets an upgrade at all (they check the credential before it) and
    the page's first message."""
    target = url if endpoint == "tag" else f"{url}?{urlencode({'token': token})}"
    try:
        ws = await http.ws_connect(target)
    except aiohttp.WSServerHandshakeError as exc:
        return f"refused_{exc.status}"
    except (aiohttp.ClientError, OSError):
        return "connect_failed"
    try:
        if endpoint == "tag":
            hello = {"type": "hello", "token": token, "clock_id": "replayed-clock"}
            await ws.send_str(json.dumps(hello))
        else:
            return "accepted"  # upgraded: the credential was taken
        # The answer to the hello decides; a busy server may take a while to give it.
        end = time.monotonic() + ANSWER_TIMEOUT_S
        while time.monotonic() < end:
            try:
                message = await ws.receive(timeout=max(0.01, end - time.monotonic()))
            except TimeoutError:
                break
            if message.type != aiohttp.WSMsgType.TEXT:
                return close_reason(ws)
            with contextlib.suppress(ValueError):
                body = json.loads(message.data)
                if body.get("type") == "welcome":
                    return "accepted"
                if body.get("type") == "error":
                    return f"error_{body.get('code')}"
        return "no_answer"
    finally:
        await ws.close()


async def try_link(http: aiohttp.ClientSession, base_url: str, link_token: str) -> str:
    """Whether a link's token is still exchanged for a session credential."""
    try:
        async with http.post(f"{base_url}/api/credential", json={"token": link_token}) as got:
            return "accepted" if got.status == 200 else f"refused_{got.status}"
    except (aiohttp.ClientError, OSError):
        return "connect_failed"


async def replay_tokens(
    endpoints: dict[str, str],
    exchanges: dict[str, str],
    bad_credentials: dict[str, str],
    bad_links: dict[str, str],
    outcomes: Outcomes,
) -> None:
    """Revoked and expired credentials on every websocket, revoked and expired links at
    every credential exchange, each REPLAYS_PER_ENDPOINT times."""
    async with aiohttp.ClientSession() as http:
        for kind, token in bad_credentials.items():
            for endpoint, url in endpoints.items():
                counts = outcomes.replays.setdefault(f"{kind}@{endpoint}", Counter())
                for _ in range(REPLAYS_PER_ENDPOINT):
                    counts[await try_token(http, endpoint, url, token)] += 1
        for kind, link_token in bad_links.items():
            for server, base_url in exchanges.items():
                counts = outcomes.replays.setdefault(f"{kind}@{server}", Counter())
                for _ in range(REPLAYS_PER_ENDPOINT):
                    counts[await try_link(http, base_url, link_token)] += 1


async def second_publisher(base_ws: str, token: str, outcomes: Outcomes) -> None:
    """A second page with a live performer's link asks to publish their media (as another
    tab or device would): it must be refused while the first page is connected."""
    async with aiohttp.ClientSession() as http:
        try:
            ws = await http.ws_connect(f"{base_ws}/ws/call?{urlencode({'token': token})}")
        except aiohttp.WSServerHandshakeError as exc:
            outcomes.second_publisher = {"outcome": f"refused_{exc.status}"}
            return
        try:
            publish = {"type": "publish", "sdp": "v=0\r\n", "page_id": "second-page-0123456789"}
            await ws.send_str(json.dumps(publish))
            outcome = "no_answer"
            end = time.monotonic() + 5.0
            while time.monotonic() < end and not ws.closed:
                try:
                    message = await ws.receive(timeout=max(0.01, end - time.monotonic()))
                except TimeoutError:
                    break
                if message.type != aiohttp.WSMsgType.TEXT:
                    outcome = close_reason(ws)
                    break
                with contextlib.suppress(ValueError):
                    body = json.loads(message.data)
                    if body.get("type") == "error":
                        outcome = f"error_{body.get('code')}"
                        break
                    if body.get("type") == "publish_answer":
                        outcome = "took_over"
                        break
            outcomes.second_publisher = {"outcome": outcome}
        finally:
            await ws.close()


@dataclass(frozen=True)
class AttackPlan:
    """What the attacker process needs (picklable)."""

    base_ws: str
    dashboard_ws: str
    capture: str
    dashboard: str
    deadline_s: float
    tag_limit: int
    call_limit: int
    tag_hello: str
    director_at_capture: str
    director_at_dashboard: str
    bad_credentials: dict[str, str]
    bad_links: dict[str, str]
    second_publisher_credential: str


async def attack(plan: AttackPlan) -> Outcomes:
    """Every abuse loop at once; what each saw."""
    outcomes = Outcomes()
    base_ws, dashboard_ws = plan.base_ws, plan.dashboard_ws
    lag_watch = asyncio.create_task(watch_loop_lag(outcomes))
    async with aiohttp.ClientSession() as http:
        await asyncio.gather(
            unauthenticated_flood(base_ws, dashboard_ws, plan.deadline_s, outcomes),
            send_malformed(
                http,
                "tag",
                f"{base_ws}/ws/tag",
                [plan.tag_hello],
                malformed_messages(plan.tag_limit),
                outcomes,
            ),
            send_malformed(
                http,
                "call",
                f"{base_ws}/ws/call?{urlencode({'token': plan.director_at_capture})}",
                [],
                malformed_messages(plan.call_limit),
                outcomes,
            ),
            send_malformed(
                http,
                "dashboard",
                f"{dashboard_ws}/ws/dashboard?{urlencode({'token': plan.director_at_dashboard})}",
                [],
                malformed_messages(64 * 1024),
                outcomes,
            ),
            replay_tokens(
                {
                    "tag": f"{base_ws}/ws/tag",
                    "call": f"{base_ws}/ws/call",
                    "dashboard": f"{dashboard_ws}/ws/dashboard",
                },
                {"capture": plan.capture, "dashboard": plan.dashboard},
                plan.bad_credentials,
                plan.bad_links,
                outcomes,
            ),
            second_publisher(base_ws, plan.second_publisher_credential, outcomes),
        )
    lag_watch.cancel()
    return outcomes


async def watch_loop_lag(outcomes: Outcomes) -> None:
    """The attacker's own event loop lag (its timeouts fire that late)."""
    while True:
        before = time.monotonic()
        await asyncio.sleep(0.1)
        late_ms = (time.monotonic() - before - 0.1) * 1000
        outcomes.attacker_lag_ms_max = max(outcomes.attacker_lag_ms_max, round(late_ms, 1))


def attack_in_process(plan: AttackPlan) -> Outcomes:
    return asyncio.run(attack(plan))


# ---------------------------------------------------------------- the scene


def run_cli(settings: Settings, *args: str) -> str:
    """``livetag ARGS`` as a user types it; its standard output."""
    done = subprocess.run(
        [sys.executable, "-m", "infra", *args],
        cwd=ROOT,
        env={**os.environ, **to_environment(settings)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"livetag {' '.join(args)} failed: {done.stderr.strip()[-800:]}")
    return done.stdout


def token_of(link: str) -> str:
    query = parse_qs(urlparse(link).query)
    if "token" not in query:
        raise BenchError(f"no token in the link {link!r}")
    return query["token"][0]


def find_link(output: str) -> str:
    for word in output.split():
        if word.startswith(("http://", "https://")) and "token=" in word:
            return word
    raise BenchError(f"no link in the output:\n{output}")


@dataclass
class Observer:
    name: str
    client: TagClient
    pressed: list[str] = field(default_factory=list)


async def tag_steadily(
    observer: Observer, performers: list[str], stop: asyncio.Event, rng: random.Random
) -> None:
    period = 1.0 / TAGS_PER_S_PER_OBSERVER
    while not stop.is_set():
        with contextlib.suppress(Exception):  # a closed socket: kept unacked and re-sent
            tag_id = await observer.client.tag(rng.choice(performers), rng.choice(LABELS))
            observer.pressed.append(tag_id)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), period)


async def keep_connected(observer: Observer, stop: asyncio.Event) -> None:
    """Reconnect a dropped tagging client, re-sending what was not acknowledged."""
    while not stop.is_set():
        ws = observer.client._ws
        if ws is None or ws.closed:
            with contextlib.suppress(Exception):
                await observer.client.drop()
                await observer.client.connect()
        await asyncio.sleep(0.5)


def ack_ms(observers: list[Observer], start_us: int, end_us: int) -> list[float]:
    """Acknowledgement times of tags written to the socket in [start, end)."""
    out = []
    for observer in observers:
        client = observer.client
        for tag_id, written in client.written_us.items():
            acked = client.ack_times_us.get(tag_id)
            if acked is not None and start_us <= written < end_us:
                out.append((acked - written) / 1000)
    return out


async def probe_broker(producer: Any, produce_ms: list[tuple[int, float]]) -> None:
    """A small record every 100 ms, each one's produce round trip."""
    while True:
        started = wall_us()
        with contextlib.suppress(Exception):
            await producer.send_and_wait(PROBE_TOPIC, b"probe")
            produce_ms.append((started, (wall_us() - started) / 1000))
        await asyncio.sleep(0.1)


async def capture_loop_lag(
    http: aiohttp.ClientSession, capture: str, start_us: int, end_us: int
) -> dict[str, float | None]:
    """The capture server's event loop lag over [start, end), from its own monitor."""
    try:
        async with http.get(
            f"{capture}/metrics/loop", params={"since": str(start_us // 1000)}
        ) as got:
            body = await got.json()
    except (aiohttp.ClientError, ValueError):
        return {"p50": None, "p99": None, "max": None}  # not measured: said as such
    lags = sorted(lag for at, lag in body.get("samples", []) if at * 1000 < end_us)
    return {
        "p50": percentile(lags, 0.5),
        "p99": percentile(lags, 0.99),
        "max": lags[-1] if lags else None,
    }


def slowest_acks(observers: list[Observer], start_us: int, end_us: int) -> list[list[float]]:
    """The ten slowest acknowledgements of [start, end): [s into the phase, ms]."""
    found = []
    for observer in observers:
        client = observer.client
        for tag_id, written in client.written_us.items():
            acked = client.ack_times_us.get(tag_id)
            if acked is not None and start_us <= written < end_us:
                found.append(
                    [round((written - start_us) / 1e6, 1), round((acked - written) / 1000)]
                )
    return sorted(found, key=lambda pair: -pair[1])[:10]


def livetag_children(up_pid: int) -> dict[tuple[int, int], str]:
    """Every process under ``livetag up`` ((pid, start) -> command), the broker included."""
    table = process_table()
    found: dict[tuple[int, int], str] = {}
    frontier = [up_pid]
    while frontier:
        parent = frontier.pop()
        for pid, proc in table.items():
            if proc.ppid == parent and (pid, proc.started) not in found:
                found[(pid, proc.started)] = " ".join(command_line(pid))[-120:]
                frontier.append(pid)
    return found


class PublicationLog:
    """Each performer's publication as the capture server sees it, sampled every second:
    the seconds a page was not publishing are audio livetag could not receive."""

    def __init__(self, performers: list[str]) -> None:
        self.performers = performers
        self.down_s: dict[str, float] = dict.fromkeys(performers, 0.0)
        self.drops: Counter[str] = Counter()
        self._last: dict[str, str] = {}
        self._at = time.monotonic()

    async def follow(self, http: aiohttp.ClientSession, url: str, sid: str) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as got:
                    body = await got.json()
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue  # a missed sample: the next one covers the time
            now = time.monotonic()
            published = body.get(sid) or {}
            for performer in self.performers:
                view = published.get(performer)
                state = str(view.get("connection")) if isinstance(view, dict) else "gone"
                if state != "connected":
                    self.down_s[performer] += now - self._at
                    if self._last.get(performer) == "connected":
                        self.drops[performer] += 1
                self._last[performer] = state
            self._at = now


async def wait_for(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def timed(phases: dict[str, float], name: str, work: Awaitable[Any]) -> Any:
    started = time.monotonic()
    try:
        return await work
    finally:
        phases[name] = round(time.monotonic() - started, 1)


async def run_abuse(
    args: argparse.Namespace, media: test_media.MediaSet, work: Path
) -> dict[str, Any]:
    settings = load_settings(
        broker_port=free_port(),
        capture_port=free_port(),
        dashboard_port=free_port(),
        state_dir=work / "state",
        data_dir=work / "data",
    )
    results = args.results
    results.mkdir(parents=True, exist_ok=True)
    up = LivetagUp(settings, results / "livetag-up.log")
    outcomes = Outcomes()
    phases: dict[str, float] = {}
    rng = random.Random(7)
    async with contextlib.AsyncExitStack() as stack:
        await up.start()
        stack.push_async_callback(up.stop, {})
        children_at_start = livetag_children(up.pid)
        broker_pid = next(
            (pid for (pid, _), name in children_at_start.items() if "tansu" in name), None
        )
        if broker_pid is None:
            raise BenchError(f"no embedded broker under livetag up: {children_at_start}")

        session = await create_session(
            settings,
            prompt="Two neighbours argue over a parking space, then laugh about it.",
            performer_names=["performer-1", "performer-2"],
            vocabulary=load_vocabulary(None),
        )
        sid = session.session_id
        performers = [p.performer_id for p in session.roster]
        secret = load_secret(settings)
        links = join_links(settings, session, secret)
        call_links = {
            link.participant_id: link.url
            for link in links
            if link.role == "performer" and link.page == "call"
        }
        capture = settings.capture_base_url
        dashboard = settings.dashboard_base_url
        director_link = token_of(next(link.url for link in links if link.page == "dashboard"))
        # Every client does what a page does: its link's token for a session credential.
        director_at_capture = await exchange_link(capture, director_link)
        director_at_dashboard = await exchange_link(dashboard, director_link)
        observer_links = {
            name: token_of(
                find_link(
                    run_cli(
                        settings, "session", "invite", sid, "--role", "observer", "--name", name
                    )
                )
            )
            for name in (*OBSERVERS, "observer-revoked")
        }
        observer_credentials = {
            name: await exchange_link(capture, link) for name, link in observer_links.items()
        }
        run_cli(settings, "session", "revoke", sid, "--participant", "observer-revoked")
        past = time.time() - 3600
        expired_credential, _ = issue_credential(
            secret, verify_link(secret, observer_links["observer-a"]), ttl_s=60, now_s=past
        )
        expired_link = issue(
            secret,
            session_id=sid,
            role="observer",
            participant_id="observer-expired",
            ttl_s=60,
            now_s=past,
        )

        media_log = MediaLog(keep_records=False)
        labels = LabelLog(sid)
        readers = [
            TopicReader(settings, [session.topics.audio], 250, media_log.handle),
            TopicReader(
                settings, [topics.TAGS, topics.LABELS, topics.DEADLETTER], 100, labels.handle
            ),
        ]
        for reader in readers:
            stack.push_async_callback(reader.stop)
            await reader.start()

        # The performers: Chromium pages publishing real media, watching each other.
        from playwright.async_api import async_playwright

        playwright = await stack.enter_async_context(async_playwright())
        for index, performer in enumerate(performers):
            camera, microphone = media.performer(index)
            await stack.enter_async_context(
                open_page(
                    call_links[performer],
                    video_file=camera,
                    audio_file=microphone,
                    user_data_dir=work / f"chromium-{performer}",
                    playwright=playwright,
                )
            )

        http = await stack.enter_async_context(aiohttp.ClientSession())
        base_ws = capture.replace("http", "ws", 1)
        dashboard_ws = dashboard.replace("http", "ws", 1)

        async def fork_counters() -> dict[str, Any]:
            async with http.get(f"{capture}/metrics") as response:
                body = await response.json()
            return dict(body.get(sid, {}))

        await wait_for_forking(media_log, performers, 60.0)
        # The performer's own link, exchanged again as a second browser would.
        second_publisher_credential = await exchange_link(
            capture, token_of(call_links[performers[0]])
        )
        publications = PublicationLog(performers)
        follower = asyncio.create_task(publications.follow(http, f"{capture}/metrics", sid))
        run_start_us = wall_us()

        observers = [
            Observer(name, TagClient(f"{base_ws}/ws/tag", observer_credentials[name]))
            for name in OBSERVERS
        ]
        for observer in observers:
            await observer.client.connect()
            stack.push_async_callback(observer.client.close)
        stop_tagging = asyncio.Event()
        taggers = [
            asyncio.create_task(tag_steadily(o, performers, stop_tagging, rng)) for o in observers
        ] + [asyncio.create_task(keep_connected(o, stop_tagging)) for o in observers]

        # Where the two cores go, quiet and under abuse (the attacker shares the machine).
        meters = {"quiet": CpuMeter(up.pid), "abuse": CpuMeter(up.pid)}

        async def sample_cpu() -> None:
            while True:
                for meter in meters.values():
                    meter.sample()
                await asyncio.sleep(2.0)

        sampler = asyncio.create_task(sample_cpu())
        # The broker's produce round trip, as the tag service's own producer sees it (a tag
        # is acknowledged once the broker stores it): where the acknowledgements wait.
        async with clients.admin_client(settings) as admin:
            await admin.create_topics([NewTopic(PROBE_TOPIC, 1, 1)])
        probe_producer = clients.make_producer(settings, linger_ms=0)
        await probe_producer.start()
        stack.push_async_callback(probe_producer.stop)
        produce_ms: list[tuple[int, float]] = []
        prober = asyncio.create_task(probe_broker(probe_producer, produce_ms))
        await asyncio.sleep(0.1)
        # 1. quiet
        meters["quiet"].open_window()
        quiet_start = wall_us()
        await asyncio.sleep(args.quiet)
        quiet_end = wall_us()
        meters["quiet"].close_window()
        loop_lag = {"quiet": await capture_loop_lag(http, capture, quiet_start, quiet_end)}

        # 2. abuse
        deadline_s = settings.ws_hello_timeout_s
        abuse_start = wall_us()
        meters["abuse"].open_window()
        tag_limit = settings.tag_max_message_bytes
        call_limit = settings.max_message_bytes
        plan = AttackPlan(
            base_ws=base_ws,
            dashboard_ws=dashboard_ws,
            capture=capture,
            dashboard=dashboard,
            deadline_s=deadline_s,
            tag_limit=tag_limit,
            call_limit=call_limit,
            tag_hello=json.dumps(
                {"type": "hello", "token": observer_credentials["observer-c"], "clock_id": "abuser"}
            ),
            director_at_capture=director_at_capture,
            director_at_dashboard=director_at_dashboard,
            bad_credentials={
                "revoked_credential": observer_credentials["observer-revoked"],
                "expired_credential": expired_credential,
            },
            bad_links={
                "revoked_link": observer_links["observer-revoked"],
                "expired_link": expired_link,
            },
            second_publisher_credential=second_publisher_credential,
        )
        # The attacker runs in a process of its own, as it would on its own machine: on
        # the observers' event loop its 200 sockets would delay the acknowledgements the
        # benchmark measures, whatever the server did.
        attacker = stack.enter_context(
            concurrent.futures.ProcessPoolExecutor(
                1, mp_context=multiprocessing.get_context("spawn")
            )
        )
        attack = asyncio.get_running_loop().run_in_executor(attacker, attack_in_process, plan)
        outcomes = (
            await timed(phases, "abuse", asyncio.gather(attack, asyncio.sleep(args.abuse)))
        )[0]
        abuse_end = wall_us()
        meters["abuse"].close_window()
        loop_lag["abuse"] = await capture_loop_lag(http, capture, abuse_start, abuse_end)
        prober.cancel()
        sampler.cancel()

        # 3. outage
        outage_start = wall_us()
        os.kill(broker_pid, signal.SIGSTOP)
        reset = 0
        try:
            until = time.monotonic() + args.outage
            while time.monotonic() < until:
                reset += await asyncio.to_thread(cut_broker_connections, settings.broker_port)
                await asyncio.sleep(1.0)
        finally:
            os.kill(broker_pid, signal.SIGCONT)
        outage_end = wall_us()

        # 4. after
        await asyncio.sleep(AFTER_OUTAGE_S)
        stop_tagging.set()
        await asyncio.gather(*taggers, return_exceptions=True)
        pressed = [tag_id for o in observers for tag_id in o.pressed]
        with contextlib.suppress(BenchError):
            await wait_for(
                lambda: all(not o.client.unacked for o in observers), ACK_TIMEOUT_S, "acks"
            )
        run_end_us = wall_us()
        counters = await fork_counters()
        follower.cancel()
        await asyncio.sleep(2.0)  # the fork's last spool and the tags reach the readers
        for reader in readers:
            await reader.drain(60.0)

        latest = await latest_session(settings, sid) or session
        producer = clients.make_producer(settings)
        await producer.start()
        try:
            stamp = max(wall_us(), latest.ts_us + 1)
            await publish(producer, latest.model_copy(update={"state": "ended", "ts_us": stamp}))
        finally:
            await producer.stop()

        children_at_end = livetag_children(up.pid)
        up_alive = up.process is not None and up.process.returncode is None
        crashed = [
            f"{name} (pid {pid})"
            for (pid, started), name in children_at_start.items()
            if (pid, started) not in children_at_end
        ]
        services_crashed = len(crashed) + (0 if up_alive else 1)

        acked = {tag_id for o in observers for tag_id in o.client.acks}
        stored = set(labels.tags)
        lost = [t for t in pressed if t not in acked or t not in stored]

        audio: dict[str, Any] = {}
        unaccounted_s = 0.0
        for performer in performers:
            holes_s = sum(audio_holes_us(media_log, performer, run_start_us, run_end_us)) / 1e6
            fork = counters.get(performer, {})
            lost_s = fork.get("audio_lost_ms", 0) / 1000
            down_s = publications.down_s[performer]
            unaccounted = max(0.0, holes_s - lost_s - down_s)
            unaccounted_s += unaccounted
            audio[performer] = {
                "holes_s": round(holes_s, 3),
                "counted_lost_s": lost_s,
                "publication_down_s": round(down_s, 1),
                "publication_drops": publications.drops[performer],
                "reconnects": fork.get("reconnects"),
                "send_retries": fork.get("audio_send_retries"),
            }

        quiet = ack_ms(observers, quiet_start, quiet_end)
        abused = ack_ms(observers, abuse_start, abuse_end)
        p99_quiet = percentile(quiet, 0.99) or 0.0
        p99_abuse = percentile(abused, 0.99) or 0.0
        result = {
            "unauthenticated_accepted": outcomes.unauthenticated_accepted(),
            "revoked_accepted": outcomes.revoked_accepted(),
            "services_crashed": services_crashed,
            "tags_lost": len(lost),
            "audio_lost_unaccounted_s": round(unaccounted_s, 3),
            "tag_ack_ms_p99_quiet": p99_quiet,
            "tag_ack_ms_p99_under_abuse": p99_abuse,
            "tag_ack_ratio": round(p99_abuse / p99_quiet, 3) if p99_quiet else None,
            "second_publisher_took_over": int(
                outcomes.second_publisher.get("outcome") == "took_over"
            ),
            "details": {
                "tags_pressed": len(pressed),
                "tags_acked": len(acked),
                "tags_on_topic": len(stored & set(pressed)),
                "tags_lost_ids": lost[:10],
                "tag_errors": dict(
                    Counter(str(e.get("code")) for o in observers for e in o.client.errors)
                ),
                "acks_quiet": len(quiet),
                "acks_under_abuse": len(abused),
                "tag_ack_ms_p50_quiet": percentile(quiet, 0.5),
                "tag_ack_ms_p50_under_abuse": percentile(abused, 0.5),
                "unauthenticated": dict(outcomes.unauthenticated),
                "malformed": {k: dict(v) for k, v in outcomes.malformed.items()},
                "replays": {k: dict(v) for k, v in outcomes.replays.items()},
                "second_publisher": outcomes.second_publisher,
                "attacker_loop_lag_ms_max": outcomes.attacker_lag_ms_max,
                "capture_loop_lag_ms": loop_lag,
                "broker_produce_ms": {
                    phase: {
                        "p50": percentile([ms for at, ms in produce_ms if a <= at < b], 0.5),
                        "p99": percentile([ms for at, ms in produce_ms if a <= at < b], 0.99),
                    }
                    for phase, (a, b) in (
                        ("quiet", (quiet_start, quiet_end)),
                        ("abuse", (abuse_start, abuse_end)),
                    )
                },
                "slowest_acks_under_abuse": slowest_acks(observers, abuse_start, abuse_end),
                "cores": {
                    phase: {group: round(c, 2) for group, c in meter.window_cores().items()}
                    for phase, meter in meters.items()
                },
                "crashed": crashed,
                "audio": audio,
                "broker_outage_s": round((outage_end - outage_start) / 1e6, 1),
                "broker_connections_reset": reset,
                "dead_letters": len(labels.dead_letters),
                "phases_s": phases,
                "hello_deadline_s": deadline_s,
            },
        }
        (results / "result.json").write_text(json.dumps(result, indent=2))
        return result
    raise AssertionError("unreachable")


async def latest_session(settings: Settings, sid: str) -> records.SessionRecord | None:
    directory = SessionDirectory(settings)
    await directory.start()
    try:
        with contextlib.suppress(TimeoutError):
            return await directory.wait_for(sid, timeout_s=10.0)
        return directory.get(sid)
    finally:
        await directory.stop()


async def wait_for_forking(media_log: MediaLog, performers: list[str], timeout_s: float) -> None:
    await wait_for(
        lambda: all(len(media_log.performers[p].audio) > 100 for p in performers),
        timeout_s,
        "both performers' audio on the topic",
    )


def audio_holes_us(media_log: MediaLog, performer: str, start: int, end: int) -> list[int]:
    """Stretches of [start, end) no forked audio chunk covers (over 5 ms: stamp jitter)."""
    chunks = sorted(set(media_log.performers[performer].audio))
    covered_to, holes = start, []
    for ts, duration in chunks:
        if ts + duration <= start or ts >= end:
            continue
        if ts - covered_to > 5_000:
            holes.append(ts - covered_to)
        covered_to = max(covered_to, ts + duration)
    if end - covered_to > 5_000:
        holes.append(end - covered_to)
    return holes


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quiet", type=float, default=30.0, help="s of tagging before abuse")
    parser.add_argument("--abuse", type=float, default=60.0, help="s of abuse at least")
    parser.add_argument("--outage", type=float, default=30.0, help="s the broker is away")
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    media = test_media.prepare(None)
    if not only_loopback():
        reexec_in_netns("tests.bench.abuse", IN_NETNS_ENV)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.results = args.results or ROOT / "test-artifacts" / "bench" / f"abuse-{stamp}"

    async def play() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
        with tempfile.TemporaryDirectory(prefix="livetag-bench-abuse-") as work:
            return await run_abuse(args, media, Path(work))

    try:
        result = asyncio.run(play())
    except BenchError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"abuse: results in {args.results}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
