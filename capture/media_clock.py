"""Map one received RTP stream's timestamps to capture instants (sans I/O).

Two references, in order of preference (DESIGN.md, "The time model"):

- **sender_report**: RTCP sender reports pair an RTP timestamp with the sender's wall clock
  (NTP). Mapping through them gives the capture instant on the *sender's* clock; the caller
  adds the sender -> session clock offset.
- **arrival_fit**: before the first usable SR, the minimum-delay envelope of
  ``arrival - rtp / clock_rate`` on the session clock. It is biased by the (unknown)
  minimum one-way delay but is not moved by jitter.

Every public time is integer Unix microseconds. Nothing here reads a clock: the caller
passes arrival times in, so the mapping never silently falls back to processing time.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Literal

TimeSource = Literal["sender_report", "arrival_fit"]

RTP_TIMESTAMP_MODULUS = 1 << 32
NTP_UNIX_EPOCH_OFFSET_S = 2_208_988_800  # seconds from 1900-01-01 to 1970-01-01
_Q32 = 1 << 32  # NTP fraction units per second
_US = 1_000_000

# How many recent sender reports the fit uses. Chromium sends video SRs ~1/s and audio SRs
# ~every 5 s, aiortc every 0.5-1.5 s: 8 reports span ~8-40 s, long enough to average the
# per-report noise and short enough that a drifting clock stays a straight line over it.
SENDER_REPORT_WINDOW = 8
# The fitted rate may differ from the nominal clock rate by at most this much. Crystal and
# NTP-slewed wall clocks stay within a few hundred ppm; a larger fitted slope is noise.
MAX_DRIFT_PPM = 500.0
# A drift slope is only fitted over at least this much RTP time; shorter baselines turn
# millisecond noise into hundreds of ppm of fake drift.
MIN_DRIFT_BASELINE_S = 2.0
# A report this far off the current fit is an outlier or a clock step. One such report is
# set aside (an aiortc sender stalled by a busy event loop stamps its report that late);
# when the next report agrees with it, the sender's clock stepped (or the stream restarted)
# and the older reports, which describe the old clock, are dropped.
CLOCK_STEP_US = 50_000
# How fast the arrival envelope may rise without a new minimum (µs per second of media).
# Covers sender/receiver clock drift up to 200 ppm; a lower arrival offset is always taken
# at once, so drift the other way needs no allowance.
ARRIVAL_LEAK_PPM = 200.0


class NoTimingReference(ValueError):
    """Raised when a capture time is asked for before any SR or packet arrival was seen."""


@dataclass(frozen=True, slots=True)
class _SenderReport:
    rtp_timestamp: int  # as received (32 bit)
    ntp_timestamp: int  # as received (64 bit)
    extended_rtp: int  # unwrapped
    sender_q32: int  # sender wall clock, Unix µs scaled by 2**32 (exact)


def ntp_to_unix_us(ntp_timestamp: int) -> int:
    """Convert a 64-bit NTP timestamp (epoch 1900) to integer Unix microseconds (rounded)."""
    q32 = _ntp_to_unix_us_q32(_check_uint("ntp_timestamp", ntp_timestamp, 64))
    return (q32 + (_Q32 >> 1)) >> 32


def _ntp_to_unix_us_q32(ntp_timestamp: int) -> int:
    # RFC 4330 section 3: the seconds field wraps in 2036; a value with the top bit clear
    # belongs to the next era (1968 and earlier cannot be a live sender's clock).
    if ntp_timestamp >> 63 == 0:
        ntp_timestamp += 1 << 64
    return (ntp_timestamp - (NTP_UNIX_EPOCH_OFFSET_S << 32)) * _US


def _check_uint(name: str, value: int, bits: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{name} must be an unsigned {bits}-bit integer, got {value}")
    return value


class StreamClock:
    """Maps one received RTP stream's timestamps to capture instants in Unix microseconds."""

    def __init__(self, clock_rate: int) -> None:
        if not isinstance(clock_rate, int) or isinstance(clock_rate, bool) or clock_rate <= 0:
            raise ValueError(f"clock_rate must be a positive int, got {clock_rate!r}")
        self._rate = clock_rate
        self._last_extended: int | None = None  # most recent RTP timestamp seen, unwrapped
        self._reports: deque[_SenderReport] = deque(maxlen=SENDER_REPORT_WINDOW)
        self._report_count = 0
        self._newest_q32: int | None = None
        self._set_aside: _SenderReport | None = None  # a report off the fit, awaiting another
        # Sender-report fit, relative to the latest report: residual (µs) from the
        # nominal-rate line = intercept + drift_ppm * seconds since that report.
        self._fit_intercept_us = 0.0
        self._fit_drift_ppm = 0.0
        # Arrival envelope: offset (µs) relative to the anchor = first packet seen.
        self._anchor: tuple[int, int] | None = None  # (extended rtp, arrival µs)
        self._envelope_us = 0.0
        self._envelope_extended = 0

    @property
    def clock_rate(self) -> int:
        """The RTP clock rate in Hz."""
        return self._rate

    @property
    def sender_reports(self) -> tuple[tuple[int, int], ...]:
        """The (rtp_timestamp, ntp_timestamp) pairs currently used by the fit, oldest first."""
        return tuple((r.rtp_timestamp, r.ntp_timestamp) for r in self._reports)

    @property
    def sender_report_count(self) -> int:
        """How many sender reports with a wall clock time were received (outliers included)."""
        return self._report_count

    def on_sender_report(self, rtp_timestamp: int, ntp_timestamp: int) -> None:
        """Record an RTCP sender report's (RTP timestamp, 64-bit NTP timestamp) pair."""
        _check_uint("rtp_timestamp", rtp_timestamp, 32)
        _check_uint("ntp_timestamp", ntp_timestamp, 64)
        if ntp_timestamp == 0:
            # RFC 3550 6.4.1: zero means the sender has no wall clock (aiortc also sends
            # zero before its first RTP packet). It maps nothing.
            return
        sender_q32 = _ntp_to_unix_us_q32(ntp_timestamp)
        if self._newest_q32 is not None and sender_q32 <= self._newest_q32:
            return  # a repeated or reordered report adds nothing newer
        self._newest_q32 = sender_q32
        self._report_count += 1
        extended = self._observe(rtp_timestamp)
        report = _SenderReport(rtp_timestamp, ntp_timestamp, extended, sender_q32)
        if self._reports and not self._agrees(report, self._sender_time_q32(extended)):
            # Off the fit: keep it aside; adopt it (dropping the old reports) only when the
            # next report is also off the fit and agrees with it instead.
            earlier, self._set_aside = self._set_aside, report
            if earlier is None:
                return
            ticks = extended - earlier.extended_rtp
            if not self._agrees(report, earlier.sender_q32 + self._nominal_q32(ticks)):
                return
            self._reports.clear()
            self._reports.append(earlier)
        self._set_aside = None
        self._reports.append(report)
        self._refit()

    def on_packet_arrival(self, rtp_timestamp: int, arrival_us: int) -> None:
        """Record a packet with this RTP timestamp arriving at ``arrival_us`` (session clock)."""
        _check_uint("rtp_timestamp", rtp_timestamp, 32)
        _check_uint("arrival_us", arrival_us, 64)
        extended = self._observe(rtp_timestamp)
        if self._anchor is None:
            self._anchor = (extended, arrival_us)
            self._envelope_us = 0.0
            self._envelope_extended = extended
            return
        anchor_rtp, anchor_us = self._anchor
        offset_us = (arrival_us - anchor_us) - (extended - anchor_rtp) * _US / self._rate
        # Minimum-delay envelope: a packet that took longer than the fastest one so far only
        # raises the estimate as far as clock drift could have moved it since the last update.
        elapsed_s = max(0, extended - self._envelope_extended) / self._rate
        ceiling = self._envelope_us + ARRIVAL_LEAK_PPM * elapsed_s
        self._envelope_us = min(offset_us, ceiling)
        self._envelope_extended = max(self._envelope_extended, extended)

    def capture_time_us(self, rtp_timestamp: int) -> tuple[int, TimeSource]:
        """The capture instant of a media sample with this RTP timestamp, and its reference.

        "sender_report": Unix µs on the sender's wall clock (add the sender -> session offset).
        "arrival_fit": Unix µs on the session clock, including the minimum one-way delay.
        """
        _check_uint("rtp_timestamp", rtp_timestamp, 32)
        if self._reports:
            extended = self._unwrap(rtp_timestamp)
            q32 = self._sender_time_q32(extended)
            return (q32 + (_Q32 >> 1)) >> 32, "sender_report"
        if self._anchor is not None:
            extended = self._unwrap(rtp_timestamp)
            anchor_rtp, anchor_us = self._anchor
            whole, rest = divmod((extended - anchor_rtp) * _US, self._rate)
            return (
                anchor_us + whole + math.floor(rest / self._rate + self._envelope_us + 0.5),
                "arrival_fit",
            )
        raise NoTimingReference(
            "no RTCP sender report and no packet arrival seen yet for this stream: "
            "its RTP timestamps cannot be mapped to capture time"
        )

    def _unwrap(self, rtp_timestamp: int) -> int:
        # The nearest extended value to the most recent one: valid while samples are within
        # half the 32-bit range (~6.6 h at 90 kHz) of it.
        if self._last_extended is None:
            return rtp_timestamp
        delta = (rtp_timestamp - self._last_extended) % RTP_TIMESTAMP_MODULUS
        if delta >= RTP_TIMESTAMP_MODULUS // 2:
            delta -= RTP_TIMESTAMP_MODULUS
        return self._last_extended + delta

    def _observe(self, rtp_timestamp: int) -> int:
        extended = self._unwrap(rtp_timestamp)
        self._last_extended = extended
        return extended

    def _nominal_q32(self, ticks: int) -> int:
        # Exact integer arithmetic: NTP-derived times (~2**50 µs * 2**32) are far beyond
        # float precision.
        return (ticks * _US * _Q32) // self._rate

    @staticmethod
    def _agrees(report: _SenderReport, predicted_q32: int) -> bool:
        return abs(report.sender_q32 - predicted_q32) <= CLOCK_STEP_US * _Q32

    def _sender_time_q32(self, extended: int) -> int:
        """Sender wall clock (Unix µs * 2**32) for an extended RTP timestamp, from the fit."""
        latest = self._reports[-1]
        ticks = extended - latest.extended_rtp
        # Only the small fitted correction is a float.
        nominal_q32 = self._nominal_q32(ticks)
        correction_us = self._fit_intercept_us + self._fit_drift_ppm * ticks / self._rate
        return latest.sender_q32 + nominal_q32 + round(correction_us * _Q32)

    def _refit(self) -> None:
        # Why a fit over recent reports rather than just the latest one: Chromium's SR pairs
        # are exact samples of its capture clock, but aiortc (and other senders) pair the NTP
        # time at which the *last packet was sent* with that packet's RTP timestamp, so each
        # report carries a few ms of encoder/pacer delay noise. A least-squares line over
        # the last reports averages that noise (libwebrtc's RTP-to-NTP estimator also fits
        # a line over recent SRs) and follows a sender whose media clock drifts against its
        # wall clock. With exact reports the fit equals the latest report.
        latest = self._reports[-1]
        xs: list[float] = []  # seconds of media relative to the latest report
        ys: list[float] = []  # µs off the nominal-rate line through the latest report
        for report in self._reports:
            ticks = report.extended_rtp - latest.extended_rtp
            xs.append(ticks / self._rate)
            ys.append((report.sender_q32 - latest.sender_q32 - self._nominal_q32(ticks)) / _Q32)
        n = len(xs)
        mean_x = sum(xs) / n
        mean_y = sum(ys) / n
        drift = 0.0
        if n >= 3 and max(xs) - min(xs) >= MIN_DRIFT_BASELINE_S:
            sxx = sum((x - mean_x) ** 2 for x in xs)
            sxy = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
            drift = max(-MAX_DRIFT_PPM, min(MAX_DRIFT_PPM, sxy / sxx))
        self._fit_drift_ppm = drift
        self._fit_intercept_us = mean_y - drift * mean_x
