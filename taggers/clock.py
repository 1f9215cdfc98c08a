"""Clock sync between the server and each browser client: a sans-I/O core.

The server owns the estimate (the client only echoes), so one :class:`ClockSync` lives per
client connection. The websocket handler calls :meth:`ClockSync.next_probe`, sends the
probe, and feeds each ``clock_reply`` to :meth:`ClockSync.on_reply` with its own receive
time. Nothing here reads a clock or touches a socket.

Each exchange gives a sample: ``rtt = received - sent`` and
``offset = (sent + received) / 2 - client_time`` (session clock minus client clock). The
true offset lies within ``rtt / 2`` of the sample whatever the path asymmetry. The
estimate keeps the sample with the tightest bound (minimum round trip, as LSL and NTP do),
ageing older samples by how far the clocks may have drifted since. The drift is the middle
of the range of slopes of the offset lines that stay within every sample's bound: unlike a
least-squares slope it comes with a guaranteed error, and an empty range reveals a client
clock that jumped. All times are integer microseconds.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt

__all__ = [
    "ClockEstimate",
    "ClockProbe",
    "ClockReply",
    "ClockSync",
]

_NonNegativeInt = Annotated[StrictInt, Field(ge=0)]


class ClockProbe(BaseModel):
    """Server -> client: "tell me your clock"."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["clock_probe"] = "clock_probe"
    probe_id: _NonNegativeInt
    server_send_us: _NonNegativeInt


class ClockReply(BaseModel):
    """Client -> server: the probe echoed with the client's clock when it handled it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: Literal["clock_reply"] = "clock_reply"
    probe_id: _NonNegativeInt
    server_send_us: _NonNegativeInt
    client_time_us: _NonNegativeInt


@dataclass(frozen=True, slots=True)
class ClockEstimate:
    """Offset of a client's clock to the session clock, valid around ``at_us``.

    ``offset_us`` is session minus client at server time ``at_us`` and lies within
    ``uncertainty_us`` of the truth. ``drift_ppm`` is how fast the offset grows (µs per
    second of session time; positive when the client clock runs slow) and
    ``drift_error_ppm`` bounds its error, which widens the uncertainty away from ``at_us``.
    """

    offset_us: int
    drift_ppm: float
    rtt_us: int
    uncertainty_us: int
    samples: int
    at_us: int
    drift_error_ppm: float

    def offset_at(self, server_us: int) -> int:
        """The offset extrapolated to session time ``server_us``."""
        return self.offset_us + round(self.drift_ppm * (server_us - self.at_us) / 1e6)

    def uncertainty_at(self, server_us: int) -> int:
        """Bound on the error of :meth:`offset_at` at ``server_us``."""
        spread = self.drift_error_ppm * abs(server_us - self.at_us) / 1e6
        return self.uncertainty_us + math.ceil(spread)

    def to_session_us(self, client_us: int) -> int:
        """Session time of the instant the client's clock read ``client_us``."""
        # Solve t - client_us = offset_at(t) for t. Work relative to at_us so the float
        # division only sees small numbers (Unix microseconds overflow a double's exactness).
        rate = self.drift_ppm / 1e6
        ahead = client_us + self.offset_us - self.at_us
        return self.at_us + round(ahead / (1.0 - rate))


@dataclass(frozen=True, slots=True)
class _Sample:
    mid_us: int  # server time the sample refers to: midway through the round trip
    offset_us: int
    rtt_us: int
    bound_us: int  # |offset_us - true offset at mid_us| <= bound_us


class ClockSync:
    """Server-side clock sync state for one client connection.

    ``max_rtt_s``: replies slower than this are ignored. ``max_outstanding``: probes kept
    waiting for a reply (the oldest is dropped). ``window_samples`` / ``max_age_s``: the
    samples the estimate uses. ``max_drift_ppm``: the largest drift believed (crystal
    clocks are within ~100 ppm); a client beyond it looks like a clock jump. Probes go out
    every ``fast_interval_s`` until ``fast_samples`` samples are in, then every
    ``interval_s``. ``bucket_s``: keep only the tightest sample of each such span of time,
    so the window reaches back far enough to measure drift even when probes are frequent
    (frequent probes find tight round trips; a long baseline pins the drift).
    """

    def __init__(
        self,
        *,
        max_rtt_s: float = 2.0,
        max_outstanding: int = 8,
        window_samples: int = 64,
        max_age_s: float = 300.0,
        max_drift_ppm: float = 100.0,
        fast_samples: int = 8,
        fast_interval_s: float = 0.2,
        interval_s: float = 2.0,
        bucket_s: float | None = None,
    ) -> None:
        if min(max_rtt_s, max_age_s, fast_interval_s, interval_s) <= 0:
            raise ValueError("clock sync durations must be positive")
        if max_outstanding < 1 or window_samples < 2 or fast_samples < 0:
            raise ValueError("clock sync counts out of range")
        if max_drift_ppm <= 0:
            raise ValueError("max_drift_ppm must be positive")
        if bucket_s is not None and bucket_s <= 0:
            raise ValueError("bucket_s must be positive")
        self.bucket_us = None if bucket_s is None else round(bucket_s * 1e6)
        self.max_rtt_us = round(max_rtt_s * 1e6)
        self.max_outstanding = max_outstanding
        self.max_age_us = round(max_age_s * 1e6)
        self.max_drift_ppm = max_drift_ppm
        self.fast_samples = fast_samples
        self.fast_interval_s = fast_interval_s
        self.interval_s = interval_s
        self.last_rejection: str | None = None
        """Why the last ignored reply was ignored (for logs and the dead letter topic)."""
        self.steps = 0
        """How many times the client clock jumped and the sample window was restarted."""
        self._next_id = 1
        self._outstanding: dict[int, int] = {}  # probe id -> server_send_us, oldest first
        self._window: deque[_Sample] = deque(maxlen=window_samples)
        self._accepted = 0  # samples accepted since the window last restarted
        self._estimate: ClockEstimate | None = None

    @property
    def estimate(self) -> ClockEstimate | None:
        """The current estimate, or None before the first accepted reply."""
        return self._estimate

    @property
    def probe_interval_s(self) -> float:
        """Suggested wait before the next probe: fast until a few samples are in."""
        if self._accepted < self.fast_samples:
            return self.fast_interval_s
        return self.interval_s

    @property
    def accepted(self) -> int:
        """Replies accepted since the sample window last restarted."""
        return self._accepted

    @property
    def outstanding(self) -> int:
        """Probes sent and not answered yet."""
        return len(self._outstanding)

    def next_probe(self, now_us: int) -> ClockProbe:
        """Make the next probe to send at server time ``now_us``."""
        # A probe older than max_rtt can only yield a rejected sample: forget it. The cap
        # bounds memory against a client that never answers.
        for probe_id, sent in list(self._outstanding.items()):
            if now_us - sent > self.max_rtt_us:
                del self._outstanding[probe_id]
        while len(self._outstanding) >= self.max_outstanding:
            del self._outstanding[next(iter(self._outstanding))]
        probe = ClockProbe(probe_id=self._next_id, server_send_us=now_us)
        self._outstanding[probe.probe_id] = now_us
        self._next_id += 1
        return probe

    def on_reply(self, reply: ClockReply, received_us: int) -> ClockEstimate | None:
        """Take a reply received at server time ``received_us``.

        Returns the updated estimate, or None if the reply was ignored (the reason is in
        :attr:`last_rejection`); an ignored reply never changes the estimate.
        """
        sample = self._sample(reply, received_us)
        if isinstance(sample, str):
            self.last_rejection = sample
            return None
        self.last_rejection = None
        self._add(sample)
        return self._estimate

    # ---------------------------------------------------------------- internals

    def _sample(self, reply: ClockReply, received_us: int) -> _Sample | str:
        """The sample a reply gives, or why it gives none."""
        sent = self._outstanding.get(reply.probe_id)
        if sent is None:
            return f"probe {reply.probe_id} is unknown, expired or already answered"
        if sent != reply.server_send_us:
            # Not a faithful echo of our probe: leave the probe open for the real answer.
            return f"probe {reply.probe_id}: server_send_us does not match the probe"
        del self._outstanding[reply.probe_id]
        rtt = received_us - sent
        if rtt < 0:
            # The session clock is a wall clock: it stepped back while the probe was out.
            return f"probe {reply.probe_id}: negative round trip ({rtt} us)"
        if rtt > self.max_rtt_us:
            return f"probe {reply.probe_id}: round trip {rtt} us is over {self.max_rtt_us} us"
        mid = sent + rtt // 2
        return _Sample(
            mid_us=mid,
            offset_us=mid - reply.client_time_us,
            rtt_us=rtt,
            bound_us=self._sample_bound(rtt),
        )

    def _sample_bound(self, rtt: int) -> int:
        # The client read its clock somewhere in the round trip, so the midpoint sample is
        # within rtt/2 of the offset at that instant; the offset may drift by up to
        # max_drift over the rtt/2 between that instant and mid; +1 covers rounding of mid.
        return math.ceil(rtt / 2 * (1 + self.max_drift_ppm / 1e6)) + 1

    def _add(self, sample: _Sample) -> None:
        self._accepted += 1
        newest = self._window[-1] if self._window else None
        if (
            self.bucket_us is not None
            and newest is not None
            and sample.mid_us // self.bucket_us == newest.mid_us // self.bucket_us
        ):
            if sample.bound_us >= newest.bound_us:
                return  # a looser sample of the same moment adds nothing
            self._window.pop()
        self._window.append(sample)
        while sample.mid_us - self._window[0].mid_us > self.max_age_us:
            self._window.popleft()
        estimate = _estimate(list(self._window), self.max_drift_ppm)
        if estimate is None:
            # No clock line within max_drift fits every sample: the client clock jumped
            # (OS time step, sleep) or drifts faster than assumed. The old samples describe
            # another clock, so start over from this one.
            self._window.clear()
            self._window.append(sample)
            self._accepted = 1
            self.steps += 1
            estimate = _estimate(list(self._window), self.max_drift_ppm)
            assert estimate is not None  # one sample always fits
        self._estimate = estimate


def _drift_range(window: Sequence[_Sample]) -> tuple[float, float]:
    """Range of drifts (ppm) of the straight offset lines that pass through every sample.

    Each sample says the offset at ``mid_us`` lies within ``bound_us`` of ``offset_us``; a
    line meets two such intervals only if its slope lies between the slopes joining their
    opposite ends. The range may be empty (low > high): then the samples disagree.
    """
    # All pairs at once (64 samples: ~2000 pairs, tens of µs with numpy vs ~1 ms in a loop).
    # Times and offsets relative to the newest sample keep float64 exact.
    ref = window[-1]
    t = np.array([s.mid_us - ref.mid_us for s in window], dtype=np.float64)
    y = np.array([s.offset_us - ref.offset_us for s in window], dtype=np.float64)
    e = np.array([s.bound_us for s in window], dtype=np.float64)
    first, second = np.triu_indices(len(window), k=1)
    dt = t[second] - t[first]
    change = y[second] - y[first]
    spread = e[second] + e[first]
    same = dt == 0
    if np.any(np.abs(change[same]) > spread[same]):
        return math.inf, -math.inf  # two samples at one instant that cannot both hold
    dt, change, spread = dt[~same], change[~same], spread[~same]
    if dt.size == 0:
        return -math.inf, math.inf
    # Replies may arrive out of order, so dt can be negative: the two slopes then swap.
    slopes_a, slopes_b = (change - spread) / dt, (change + spread) / dt
    low = float(np.max(np.minimum(slopes_a, slopes_b)))
    high = float(np.min(np.maximum(slopes_a, slopes_b)))
    return low * 1e6, high * 1e6


def _estimate(window: Sequence[_Sample], max_drift_ppm: float) -> ClockEstimate | None:
    """The estimate from a window of samples, or None if they fit no clock within bounds."""
    low, high = _drift_range(window)
    low, high = max(low, -max_drift_ppm), min(high, max_drift_ppm)
    if low > high:
        return None
    # The middle of the consistent range is the drift whose worst-case error is smallest;
    # with few or short-spanned samples it stays near 0 with an error near max_drift.
    drift_ppm = (low + high) / 2
    drift_error_ppm = (high - low) / 2
    newest = max(s.mid_us for s in window)
    # NTP-style ageing: an old sample's bound grows by what the drift error can add since,
    # so a slightly wider but recent sample can beat a tight old one. Ties go to the newest.
    ref = min(
        reversed(window),
        key=lambda s: s.bound_us + drift_error_ppm * (newest - s.mid_us) / 1e6,
    )
    return ClockEstimate(
        offset_us=ref.offset_us,
        drift_ppm=drift_ppm,
        rtt_us=ref.rtt_us,
        uncertainty_us=ref.bound_us,
        samples=len(window),
        at_us=ref.mid_us,
        drift_error_ppm=drift_error_ppm,
    )
