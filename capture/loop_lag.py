"""How late the capture server's event loop runs: the health signal of a live call.

Everything the call must answer on time (ICE consent checks, RTCP, DTLS, keyframe
requests, the forwarding of every packet) runs on one event loop. A task that sleeps a
fixed interval and measures how much later than asked it woke up sees every stall: CPU
work that slipped onto the loop, a burst of callbacks, a GC pause, a starved process.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from streams.runtime import background

INTERVAL_S = 0.1
# Ten minutes of samples for /metrics/loop; the totals below cover the whole run.
RECENT_SAMPLES = 6000
# A lag above this is reported as a stall (counted): a call's audio is 20 ms frames, and a
# loop that late delays what watchers hear and what the fork stamps.
STALL_MS = 50.0


def percentile(ordered: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of sorted values, rounded to 0.01 (None when empty)."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))], 2)


class LoopLagMonitor:
    """Idempotent ``start``/``stop``; ``snapshot`` for metrics."""

    def __init__(self, interval_s: float = INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.recent: collections.deque[tuple[int, float]] = collections.deque(maxlen=RECENT_SAMPLES)
        self.samples_total = 0
        self.stalls_total = 0
        self.lag_ms_max = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await background.cancel(task)

    async def _run(self) -> None:
        while True:
            asked = time.perf_counter()
            await asyncio.sleep(self.interval_s)
            self.record(max(0.0, (time.perf_counter() - asked - self.interval_s) * 1000))

    def record(self, lag_ms: float) -> None:
        self.recent.append((time.time_ns() // 1_000_000, round(lag_ms, 2)))
        self.samples_total += 1
        self.lag_ms_max = max(self.lag_ms_max, lag_ms)
        if lag_ms > STALL_MS:
            self.stalls_total += 1

    def snapshot(self, *, since_unix_ms: int | None = None) -> dict[str, Any]:
        """Percentiles over the recent samples (after ``since_unix_ms`` if given), the
        run's totals, and the samples themselves as ``[unix_ms, lag_ms]``."""
        samples = [s for s in self.recent if since_unix_ms is None or s[0] > since_unix_ms]
        ordered = sorted(lag for _, lag in samples)
        return {
            "interval_ms": round(self.interval_s * 1000),
            "lag_ms_p50": percentile(ordered, 0.50),
            "lag_ms_p99": percentile(ordered, 0.99),
            "lag_ms_max": round(self.lag_ms_max, 2),
            "samples_total": self.samples_total,
            "stalls_total": self.stalls_total,
            "stall_ms": STALL_MS,
            "samples": [list(sample) for sample in samples],
        }
