"""Capture instants of received frames on the session clock.

Each received stream has its own :class:`StreamClock` fed by the RTCP sender reports and
packet arrivals of its receiver (capture.rtp_hooks). A sender-report time is on the
sender's wall clock; the page's clock-sync offset moves it to the session clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCRtpReceiver

from capture import rtp_hooks
from capture.media_clock import StreamClock
from streams.records import TimingSource

#: Session clock minus the sending page's clock, in µs; None until clock sync has a sample.
OffsetProvider = Callable[[], int | None]


@dataclass(frozen=True)
class Stamp:
    ts_us: int
    timing: TimingSource
    rtp_timestamp: int


class CaptureTimer:
    """Turns a received frame's ``pts`` into its capture instant on the session clock."""

    def __init__(
        self, receiver: RTCRtpReceiver, *, clock_rate: int, sender_offset_us: OffsetProvider
    ) -> None:
        self._receiver = receiver
        self.clock = StreamClock(clock_rate)
        self._sender_offset_us = sender_offset_us
        self.unstamped = 0
        rtp_hooks.attach(receiver, self.clock)

    def stamp(self, pts: int | None) -> Stamp | None:
        """The frame's stamp, or None (counted) when nothing maps it yet."""
        if pts is None:
            self.unstamped += 1
            return None
        rtp_timestamp = rtp_hooks.rtp_timestamp_of_frame(self._receiver, pts)
        try:
            ts_us, timing = self.clock.capture_time_us(rtp_timestamp)
        except ValueError:
            self.unstamped += 1
            return None
        if timing == "sender_report":
            offset = self._sender_offset_us()
            if offset is None:
                # A sender report came before the first clock-sync sample (rare: probes
                # start when the page connects): no honest session time for this frame.
                self.unstamped += 1
                return None
            ts_us += offset
        return Stamp(ts_us=ts_us, timing=timing, rtp_timestamp=rtp_timestamp)
