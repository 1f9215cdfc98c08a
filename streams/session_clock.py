"""The session clock: the one timeline every record's ``ts_us`` is on.

The session clock is the capture server's wall clock (Unix time, UTC) in integer
microseconds. Every service of one machine reads it here, so media capture instants, key
presses converted from a client's clock, session milestones and label windows all land on
the same line. It is the wall clock rather than a monotonic one because it has to mean
the same instant in every process and in the archive a consumer reads years later; clock
sync (taggers.clock) and RTP timing (capture.timing) map other clocks onto it.

Integer microseconds, because µs resolves an audio hop (10 ms) and a video frame many
times over, and integers compare, subtract and round-trip through JSON, Parquet and Kafka
headers exactly, where float seconds hold most such instants only approximately (a sum or
a round trip can come back a microsecond off).
"""

from __future__ import annotations

import time


def now_us() -> int:
    """This instant on the session clock: the wall clock, integer microseconds."""
    return time.time_ns() // 1000
