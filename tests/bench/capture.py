"""Capture benchmark: N headless Chromium performers publishing into one capture server.

The embedded broker runs in this process's child; the capture server runs alone as
``python -m infra capture`` so its CPU can be read from /proc without ours. Every sender
plays the long lip-sync media (a white frame and a 1 kHz beep once a second) so A/V sync
is measured on the forked records. After a warm-up (every performer forked, audio and
video both on sender-report time) it measures for ``--seconds``.

Last line: {"performers", "cpu_cores_per_performer", "fork_latency_ms_p50",
"fork_latency_ms_p99", "video_fps_out", "video_frames_dropped", "audio_chunks_dropped",
"av_sync_error_ms_p95", ...}, plus the fork latency p99 of video and of audio records
apart (audio waits up to ``embedded_audio_linger_ms`` in its producer by design). Options:
--performers, --seconds, --video-fps, --timeout, --media-dir, --camera, --py-spy.

WebRTC must stay on loopback: started outside a loopback-only network namespace, it
prepares the media (which may need ``pip download``) and re-executes itself inside
``unshare -n``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import TopicPartition
from playwright.async_api import Page

from infra.broker import EmbeddedBroker
from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session
from streams.session_clock import now_us
from streams.settings import Settings, load_settings
from taggers.tokens import join_links
from taggers.vocabulary import load_vocabulary
from tests import media as test_media
from tests.bench import common
from tests.bench.common import cpu_seconds, machine_busy_seconds, percentile
from tests.browser import only_loopback, open_page
from tests.lipsync import beep_onsets, flash_onsets

ROOT = Path(__file__).resolve().parents[2]
# Fixed so the bench and the server subprocess sign and check the same join tokens.
TOKEN_SECRET = "livetag capture benchmark key: fixed, not a secret"
# Set on the re-exec, to never loop. Not LIVETAG_*: settings reject unknown LIVETAG_ names.
IN_NETNS_ENV = "BENCH_CAPTURE_IN_NETNS"
PAIR_WINDOW_US = 500_000  # events are 1 s apart: a beep within 0.5 s is the same event
SETTLE_S = 2.0  # after warm-up: let re-anchored audio and the JPEG pool reach steady state
ACK_GRACE_S = 1.5  # after the window: let frames captured before its end be acknowledged
_PR_SET_PDEATHSIG = 1


# ---------------------------------------------------------------- small helpers


def descendants(root: int, exclude: set[int]) -> set[int]:
    """Live processes under ``root`` (not ``root`` itself), skipping the ``exclude`` subtrees:
    here the browsers, their renderers and the Playwright drivers."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                children[int(stat[1])].append(int(entry.name))
    found: set[int] = set()
    todo = [pid for pid in children[root] if pid not in exclude]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += [child for child in children[pid] if child not in exclude]
    return found


def cpu_of(pids: Iterable[int]) -> dict[int, float]:
    used = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            used[pid] = cpu_seconds(pid)
    return used


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds per thread id of a process, to split the server's CPU by thread (the
    thread names come from py-spy's output, which carries the same ids)."""
    used = {}
    tick = os.sysconf("SC_CLK_TCK")
    for task in Path(f"/proc/{pid}/task").iterdir():
        # /proc/TID/stat would be the whole process: a thread's own times are under task/.
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            used[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return used


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # In the server child between fork and exec: if the bench is killed outright, the
    # server must not linger holding its port and the browsers' connections.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def new_samples(before: list[float], after: list[float]) -> list[float]:
    """The latency samples appended between two snapshots of the server's bounded deque.

    The server keeps the last 4096 samples per performer and cannot reset them, so the
    window's samples are what follows the end of the earlier snapshot in the later one
    (samples are rounded to 1 µs, so a run of 32 of them identifies a position). If that
    run has rolled out of the deque, every sample in the later snapshot is from the window.
    """
    anchor = before[-32:]
    if not anchor:
        return after
    for start in range(len(after) - len(anchor), -1, -1):
        if after[start : start + len(anchor)] == anchor:
            return after[start + len(anchor) :]
    return after


# ---------------------------------------------------------------- onsets


def sync_errors_ms(flashes: list[int], beeps: list[int], start_us: int, end_us: int) -> list[float]:
    """beep - flash (ms) for each flash captured in [start, end) that has a beep near it."""
    errors = []
    for flash in flashes:
        if not start_us <= flash < end_us or not beeps:
            continue
        nearest = min(beeps, key=lambda beep: abs(beep - flash))
        if abs(nearest - flash) < PAIR_WINDOW_US:
            errors.append((nearest - flash) / 1000)
    return errors


# ---------------------------------------------------------------- the run


@dataclass
class Sender:
    performer_id: str
    page: Page
    opened_us: int  # before page.goto: the fake devices cannot start earlier than this


@dataclass
class Forked:
    """A performer's forked records around the window, in production order."""

    video: list[records.VideoFrame] = field(default_factory=list)
    audio: list[records.AudioChunk] = field(default_factory=list)


class BenchError(RuntimeError):
    pass


async def wait_http(url: str, server: asyncio.subprocess.Process, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s), aiohttp.ClientSession() as http:
        while True:
            if server.returncode is not None:
                raise BenchError(f"the capture server exited with code {server.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.1)


async def get_json(url: str) -> Any:
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, timeout=aiohttp.ClientTimeout(total=10)) as response,
    ):
        response.raise_for_status()
        return await response.json()


async def warm_up(
    settings: Settings,
    session: records.SessionRecord,
    performer_ids: Sequence[str],
    timeout_s: float,
) -> None:
    """Return once every performer's latest audio and video records are on sender-report
    time: before that, ts_us comes from arrival fits and A/V sync is meaningless."""
    consumer = clients.make_consumer(settings, session.topics.audio, session.topics.video)
    timing: dict[tuple[str, str], str] = {}
    wanted = {(p, kind) for p in performer_ids for kind in ("audio_chunk", "video_frame")}
    await consumer.start()
    try:
        async with asyncio.timeout(timeout_s):
            while not all(timing.get(key) == "sender_report" for key in wanted):
                batches = await consumer.getmany(timeout_ms=200)
                for batch in batches.values():
                    for message in batch:
                        record = records.decode(
                            topics.record_type_of(message.topic), message.value, message.headers
                        )
                        assert isinstance(record, records.AudioChunk | records.VideoFrame)
                        key = (record.header.performer_id, record.record_type)
                        timing[key] = record.header.timing
    except TimeoutError:
        missing = sorted(key for key in wanted if timing.get(key) != "sender_report")
        raise BenchError(f"no sender-report timing after {timeout_s:g} s for {missing}") from None
    finally:
        await consumer.stop()


async def read_forked(
    settings: Settings, session: records.SessionRecord, start_us: int, end_us: int
) -> dict[str, Forked]:
    """Every media record captured in [start, end), read back after the window so that
    consuming and decoding JPEGs does not compete with the server while it is measured."""
    consumer = clients.make_consumer(settings)
    await consumer.start()
    forked: dict[str, Forked] = defaultdict(Forked)
    try:
        await consumer.topics()  # loads the metadata that partitions_for_topic reads
        partitions = [
            TopicPartition(topic, partition)
            for topic in (session.topics.audio, session.topics.video)
            for partition in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        end = await consumer.end_offsets(partitions)

        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in partitions])

        async with asyncio.timeout(120):
            while await behind():
                batches = await consumer.getmany(timeout_ms=500)
                for batch in batches.values():
                    for message in batch:
                        record = records.decode(
                            topics.record_type_of(message.topic), message.value, message.headers
                        )
                        if not isinstance(record, records.VideoFrame | records.AudioChunk):
                            continue
                        if not start_us <= record.header.ts_us < end_us:
                            continue
                        if isinstance(record, records.VideoFrame):
                            forked[record.header.performer_id].video.append(record)
                        elif isinstance(record, records.AudioChunk):
                            forked[record.header.performer_id].audio.append(record)
    finally:
        await consumer.stop()
    for media in forked.values():
        media.video.sort(key=lambda r: r.header.seq)
        media.audio.sort(key=lambda r: r.header.seq)
    return forked


def fork_counters(metrics: dict[str, Any], session_id: str) -> dict[str, dict[str, Any]]:
    counters: dict[str, dict[str, Any]] = metrics.get(session_id, {})
    return counters


async def measure(
    args: argparse.Namespace,
    sync: test_media.LipSync,
    state: Path,
    stack: contextlib.AsyncExitStack,
    broker: EmbeddedBroker | None,
) -> dict[str, Any]:
    n = args.performers
    overrides: dict[str, Any] = {
        "capture_port": free_port(),
        "state_dir": state,
        "token_secret": TOKEN_SECRET,
        "video_fps": args.video_fps,
        "log_level": "WARNING",
    }
    if broker is not None:
        overrides["broker_port"] = broker.port
    settings = load_settings(**overrides)
    env = {
        **os.environ,
        "LIVETAG_CAPTURE_PORT": str(settings.capture_port),
        "LIVETAG_STATE_DIR": str(state),
        "LIVETAG_TOKEN_SECRET": TOKEN_SECRET,
        "LIVETAG_LOG_LEVEL": "WARNING",
        "LIVETAG_VIDEO_FPS": str(args.video_fps),
    }
    if broker is not None:
        env["LIVETAG_BROKER_PORT"] = str(broker.port)
    server_log = (state / "capture.log").open("wb")
    stack.callback(server_log.close)
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra",
        "capture",
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=server_log,
        stderr=asyncio.subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
    stack.push_async_callback(stop_process, server)
    base = settings.capture_base_url
    await wait_http(base + "/", server, timeout_s=30)

    session = await create_session(
        settings,
        prompt="capture benchmark",
        performer_names=[f"performer-{i + 1}" for i in range(n)],
        vocabulary=load_vocabulary(None),
    )
    links = [
        link
        for link in join_links(settings, session, TOKEN_SECRET.encode())
        if link.role == "performer"
    ]
    senders: list[Sender] = []
    for index, link in enumerate(links):
        opened_us: list[int] = []

        def note_opened(_: Page, opened: list[int] = opened_us) -> None:
            opened.append(now_us())

        page = await stack.enter_async_context(
            open_page(
                # Publish only (the page's ?watch=0): a sender that also watched the others
                # would add N*(N-1) forwarded streams, not what this benchmark measures.
                link.url + "&watch=0",
                video_file=args.camera or sync.video,
                audio_file=sync.audio,
                user_data_dir=state / f"chromium-{index}",
                before_load=note_opened,
            )
        )
        senders.append(Sender(link.participant_id, page, opened_us[0]))
    performer_ids = [sender.performer_id for sender in senders]

    warm_started = time.monotonic()
    await warm_up(settings, session, performer_ids, timeout_s=60)
    await asyncio.sleep(SETTLE_S)
    warm_up_s = time.monotonic() - warm_started
    for sender in senders:
        watched = await sender.page.evaluate("window.livetag.subscriptions.size")
        if watched:
            raise BenchError(f"{sender.performer_id} subscribed to {watched} performers")

    metrics_url = f"{base}/metrics?samples=1"
    assert server.pid is not None
    before = fork_counters(await get_json(metrics_url), session.session_id)
    if sorted(before) != sorted(performer_ids):
        raise BenchError(f"forks at the start: {sorted(before)}, want {performer_ids}")
    profiler = await start_py_spy(args.py_spy, server.pid, args.seconds)
    threads_before = thread_cpu_seconds(server.pid)
    start_us = now_us()
    started = time.monotonic()
    cpu_before = {
        "server": cpu_seconds(server.pid),
        "machine": machine_busy_seconds(),
        "bench": cpu_seconds(os.getpid()),
    }
    if broker is not None and broker.pid is not None:
        cpu_before["broker"] = cpu_seconds(broker.pid)
    not_browsers = {server.pid, broker.pid if broker else None, profiler.pid if profiler else None}
    browsers_before = cpu_of(descendants(os.getpid(), {p for p in not_browsers if p}))
    await asyncio.sleep(args.seconds)
    cpu_used = {
        "server": cpu_seconds(server.pid),
        "machine": machine_busy_seconds(),
        "bench": cpu_seconds(os.getpid()),
    }
    if broker is not None and broker.pid is not None:
        cpu_used["broker"] = cpu_seconds(broker.pid)
    browsers_after = cpu_of(browsers_before)
    threads_after = thread_cpu_seconds(server.pid)
    # Processes alive at both ends; Chromium starts its helpers before the warm-up ends.
    cpu_before["browsers"] = sum(browsers_before[pid] for pid in browsers_after)
    cpu_used["browsers"] = sum(browsers_after.values())
    elapsed = time.monotonic() - started
    end_us = now_us()
    after = fork_counters(await get_json(metrics_url), session.session_id)
    if args.py_spy is not None and profiler is not None:
        # py-spy stops by itself after the window and then writes its file.
        await stop_process(profiler, terminate=False, grace_s=30)
        thread_cores = {
            tid: round((used - threads_before.get(tid, 0.0)) / elapsed, 3)
            for tid, used in threads_after.items()
        }
        args.py_spy.with_name(args.py_spy.name + ".threads.json").write_text(
            json.dumps(thread_cores)
        )

    for performer_id in performer_ids:
        state_now = after.get(performer_id, {}).get("connection")
        if state_now != "connected":
            raise BenchError(f"{performer_id}: publish connection {state_now} after the window")
        for counter in ("video_frames_out", "audio_chunks_out"):
            if after[performer_id][counter] < before[performer_id][counter]:
                # Counters restart with a new publication: the deltas would be wrong.
                raise BenchError(f"{performer_id} rejoined during the window")
    await asyncio.sleep(ACK_GRACE_S)
    # Browsers and server are done: stop them before reading back, to free the CPU.
    await stack.aclose()
    forked = await read_forked(settings, session, start_us - 1_000_000, end_us + 1_000_000)

    cores = {name: (cpu_used[name] - cpu_before[name]) / elapsed for name in cpu_before}
    window_s = (end_us - start_us) / 1e6
    latencies: list[float] = []
    by_kind: dict[str, list[float]] = {"video": [], "audio": []}
    fps: dict[str, float] = {}
    errors: dict[str, list[float]] = {}
    onsets: dict[str, dict[str, list[float]]] = {}
    for performer_id in performer_ids:
        latencies += new_samples(
            before[performer_id]["fork_latency_ms"], after[performer_id]["fork_latency_ms"]
        )
        for kind, samples in by_kind.items():
            name = f"{kind}_fork_latency_ms"
            samples += new_samples(before[performer_id][name], after[performer_id][name])
        media = forked.get(performer_id, Forked())
        in_window = [r for r in media.video if start_us <= r.header.ts_us < end_us]
        fps[performer_id] = len(in_window) / window_s
        # Only sender-report stamps are on the capture clock (warm-up made sure of it).
        video = [r for r in media.video if r.header.timing == "sender_report"]
        audio = [r for r in media.audio if r.header.timing == "sender_report"]
        flashes, beeps = flash_onsets(video), beep_onsets(audio)
        errors[performer_id] = sync_errors_ms(flashes, beeps, start_us, end_us)
        # Event intervals should be 1000 ms on both streams: a longer flash interval where
        # the error steps means the sender's camera fell behind its file, not a bad stamp.
        onsets[performer_id] = {
            "flash_ms": [round((t - start_us) / 1000, 1) for t in flashes],
            "beep_ms": [round((t - start_us) / 1000, 1) for t in beeps],
        }

    # The events behind the A/V figures, for whoever has to explain an outlier.
    print(f"A/V errors (beep - flash, ms): {json.dumps(errors)}", file=sys.stderr)
    print(f"onsets (ms after the window start): {json.dumps(onsets)}", file=sys.stderr)

    def delta(counter: str) -> int:
        return sum(after[p][counter] - before[p][counter] for p in performer_ids)

    # Chromium starts its fake camera and its fake microphone independently, so each
    # sender can carry its own constant flash-to-beep offset (tens of ms, measured in the
    # page) that is no fault of the server. The median signed error per performer is that
    # offset; the spread around it is the jitter the capture path adds.
    offsets = {p: statistics.median(e) for p, e in errors.items() if e}
    all_errors = [abs(e) for errs in errors.values() for e in errs]
    spread = [abs(e - offsets[p]) for p, errs in errors.items() for e in errs]
    loop_us = round(sync.duration_s * 1e6)
    return {
        "performers": n,
        "cpu_cores_per_performer": round(cores["server"] / n, 3),
        "fork_latency_ms_p50": percentile(latencies, 0.50),
        "fork_latency_ms_p99": percentile(latencies, 0.99),
        # Audio waits up to audio_linger_ms in its producer by design (100 ms with the
        # embedded broker, which lists a partition's stored batches on every fetch).
        "video_fork_latency_ms_p99": percentile(by_kind["video"], 0.99),
        "audio_fork_latency_ms_p99": percentile(by_kind["audio"], 0.99),
        "video_fps_out": round(statistics.mean(fps.values()), 2),
        "video_frames_dropped": delta("video_frames_dropped"),
        "audio_chunks_dropped": delta("audio_chunks_dropped"),
        "av_sync_error_ms_p95": percentile(all_errors, 0.95),
        "av_offset_ms_median": (
            round(statistics.median([e for errs in errors.values() for e in errs]), 2)
            if all_errors
            else None
        ),
        "av_offset_ms_by_performer": {p: round(v, 2) for p, v in offsets.items()},
        "av_sync_spread_ms_p95": percentile(spread, 0.95),
        "av_events": len(all_errors),
        "server_cpu_cores": round(cores["server"], 3),
        "broker_cpu_cores": round(cores["broker"], 3) if "broker" in cores else None,
        "browsers_cpu_cores": round(cores["browsers"], 2),
        "machine_busy_cores": round(cores["machine"], 2),
        # Anything else on the machine during the window (other people's test runs on a
        # shared box): when this is not ~0 the latency figures are not this setup's alone.
        "other_cpu_cores": round(
            cores["machine"]
            - sum(
                cores[name] for name in ("server", "broker", "browsers", "bench") if name in cores
            ),
            2,
        ),
        "cpu_count": os.cpu_count(),
        "fork_latency_samples": len(latencies),
        "video_fps_out_by_performer": {p: round(v, 2) for p, v in fps.items()},
        "video_frames_in": delta("video_frames_in"),
        "video_frames_skipped": delta("video_frames_skipped"),
        "audio_chunks_out": delta("audio_chunks_out"),
        "produce_errors": delta("produce_errors"),
        "analysis_fps": args.video_fps,
        "seconds": round(elapsed, 2),
        "warm_up_s": round(warm_up_s, 2),
        "first_page_to_window_end_s": round((end_us - senders[0].opened_us) / 1e6, 2),
        # The seam drift (tests.media.LipSync) must not enter the window: the fake
        # devices cannot start before page.goto, so this bound is conservative.
        "window_within_first_loop": all(end_us < s.opened_us + loop_us for s in senders),
    }


async def start_py_spy(
    out: Path | None, pid: int, seconds: float
) -> asyncio.subprocess.Process | None:
    """Optionally sample the server's Python stacks during the window.

    --nonblocking: pausing the server for native stacks stalled it enough for a sender to
    drop and rejoin. py-spy's idle detection does not work here (threads waiting on a
    condition are reported busy), so read its samples together with the per-thread CPU
    written next to them.
    """
    if out is None:
        return None
    binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return await asyncio.create_subprocess_exec(
        binary,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(round(seconds)),
        "--rate",
        "100",
        "--nonblocking",
        "--threads",
        "--format",
        "raw",
        "--output",
        str(out),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def stop_process(
    process: asyncio.subprocess.Process, *, terminate: bool = True, grace_s: float = 15
) -> None:
    """SIGTERM (the server then closes its calls cleanly), wait, and kill if need be."""
    if terminate and process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
    if process.returncode is None:
        try:
            async with asyncio.timeout(grace_s):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()


async def run(args: argparse.Namespace, sync: test_media.LipSync) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM: unwind through the finally blocks like Ctrl-C does.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    with tempfile.TemporaryDirectory(prefix="livetag-bench-capture-") as tmp:
        state = Path(tmp)
        broker: EmbeddedBroker | None = None
        if load_settings().uses_embedded_broker:
            broker = EmbeddedBroker(port=0, log_path=state / "broker.log")
            broker.start()
        try:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    async with asyncio.timeout(args.timeout):
                        return await measure(args, sync, state, stack, broker)
                except BaseException:
                    log = state / "capture.log"
                    if log.is_file():
                        tail = log.read_text(errors="replace")[-3000:]
                        print(f"capture server log (tail):\n{tail}", file=sys.stderr)
                    raise
                finally:
                    # Browsers, then the server: bounded, whatever happened above.
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(60):
                            await stack.aclose()
        finally:
            if broker is not None:
                broker.stop()


def reexec_in_netns() -> None:
    """Run this benchmark again inside a network namespace that has only ``lo``."""
    common.reexec_in_netns("tests.bench.capture", IN_NETNS_ENV)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--performers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement window")
    parser.add_argument(
        "--video-fps",
        type=float,
        default=30.0,
        help="the server's analysis rate; 30 forks every frame, so no one-frame flash is "
        "thinned away (the A/V sync figures need that)",
    )
    parser.add_argument("--timeout", type=float, default=240.0, help="overall limit (s)")
    parser.add_argument("--media-dir", type=Path, default=None, help="tests.media folder")
    parser.add_argument(
        "--camera",
        type=Path,
        default=None,
        help="y4m to send instead of the flash video (e.g. a real face: flat grey frames "
        "are unusually cheap to decode and JPEG-encode); no A/V sync figures then",
    )
    parser.add_argument(
        "--py-spy", type=Path, default=None, help="write py-spy raw stacks of the server here"
    )
    args = parser.parse_args()
    if args.performers < 1:
        parser.error("--performers must be at least 1")
    # Media first, outside the namespace: building it may need `pip download`.
    media = test_media.prepare(args.media_dir, long_lipsync=True)
    if not only_loopback():
        reexec_in_netns()
    sync = media.lipsync_long
    if args.seconds + 15 > sync.duration_s:
        parser.error(f"--seconds must leave room for warm-up in the {sync.duration_s:g} s media")
    # Last resort if cleanup itself hangs: the children die with us (PDEATHSIG, pipes).
    signal.alarm(round(args.timeout) + 120)
    try:
        result = asyncio.run(run(args, sync))
    except BenchError as exc:
        raise SystemExit(f"error: {exc}") from None
    except TimeoutError:
        raise SystemExit(f"error: not done within --timeout {args.timeout:g} s") from None
    except asyncio.CancelledError:  # SIGTERM, after everything was stopped
        raise SystemExit("error: stopped by SIGTERM") from None
    signal.alarm(0)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
