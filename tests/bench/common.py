"""What the benchmarks share: CPU accounting and a broker to measure against."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from infra.broker import EmbeddedBroker
from infra.settings import Settings


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
