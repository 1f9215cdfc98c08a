"""What the benchmarks share: CPU accounting, the percentiles they report, a broker to
measure against, and the loopback-only network namespace the WebRTC benchmarks run in."""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from infra.broker import EmbeddedBroker
from streams.kafka import clients, topics
from streams.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def percentile(values: Sequence[float], fraction: float) -> float | None:
    """The sample at ``fraction`` (0 to 1) of the way through the sorted values, rounded to
    0.01: numpy's "nearest" rule (index round(fraction * (n - 1)), ties to even), so a
    reported p99 is a latency that was measured, never one interpolated between two.
    None when there are no values: "not measured", which JSON can say and NaN cannot."""
    if len(values) == 0:
        return None
    return round(float(np.quantile(values, fraction, method="nearest")), 2)


def percentile_or_nan(values: Sequence[float], fraction: float) -> float:
    """``percentile``, NaN when there are no values: for a summary that subtracts and
    compares percentiles and lets "not measured" carry through the arithmetic."""
    found = percentile(values, fraction)
    return math.nan if found is None else found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    # guest time is already counted in user/nice: only the first 8 fields are disjoint.
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its living descendants (its worker processes)."""
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            total += cpu_seconds(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue  # it ended meanwhile
    return total


@dataclass(frozen=True)
class BenchBroker:
    """The settings to run against, and the embedded broker's pid (None on a cluster)."""

    settings: Settings
    pid: int | None


@contextmanager
def bench_broker(settings: Settings, state_dir: Path) -> Iterator[BenchBroker]:
    """A fresh embedded broker on a free port, unless the settings name a cluster."""
    if not settings.uses_embedded_broker:
        yield BenchBroker(settings, None)
        return
    broker = EmbeddedBroker(port=0, log_path=state_dir / "broker.log")
    broker.start()
    try:
        yield BenchBroker(settings.model_copy(update={"broker_port": broker.port}), broker.pid)
    finally:
        broker.stop()


@asynccontextmanager
async def fresh_bench_broker(**updates: Any) -> AsyncIterator[BenchBroker]:
    """What a benchmark that starts from nothing stands on: a temporary state folder, the
    settings (with ``updates``), a fresh broker (bench_broker) and the shared topics."""
    with tempfile.TemporaryDirectory(prefix="livetag-bench-") as tmp:
        state = Path(tmp)
        base = load_settings().model_copy(update={"state_dir": state, **updates})
        with bench_broker(base, state) as bench:
            async with clients.admin_client(bench.settings) as admin:
                await topics.ensure_shared_topics(admin, bench.settings)
            yield bench


def reexec_in_netns(module: str, marker_env: str) -> NoReturn:
    """Run ``python -m module`` (same arguments) again inside a network namespace that has
    only ``lo``, so neither Chromium nor aiortc can gather or use another interface.

    ``marker_env`` is set on the re-exec so that it never loops (not a LIVETAG_ name: the
    settings reject unknown LIVETAG_ variables).
    """
    if os.environ.get(marker_env):
        raise SystemExit("error: still not loopback-only after unshare -n")
    unshare = shutil.which("unshare")
    if unshare is None:
        raise SystemExit("error: `unshare` not found (Debian package util-linux)")
    # Root can make a network namespace directly; others need a user namespace too.
    flags = "-n" if os.geteuid() == 0 else "-rn"
    command = [
        unshare,
        flags,
        "sh",
        "-c",
        'ip link set lo up && exec "$0" "$@"',
        sys.executable,
        "-m",
        module,
        *sys.argv[1:],
    ]
    sys.stdout.flush()
    os.chdir(ROOT)  # -m finds the tests package from the working directory
    os.execvpe(unshare, command, {**os.environ, marker_env: "1"})
