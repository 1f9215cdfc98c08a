"""StreamClock with synthetic numbers: exact sender-report mapping, wrap-around, arrival fit."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from fractions import Fraction

import pytest

from capture.media_clock import (
    NTP_UNIX_EPOCH_OFFSET_S,
    NoTimingReference,
    StreamClock,
    ntp_to_unix_us,
)

VIDEO_RATE = 90_000
AUDIO_RATE = 48_000
WRAP = 1 << 32
T0_US = 1_767_225_600_123_457  # 2026-01-01 plus an odd fraction of a second


def ntp_of(unix_us: Fraction | int) -> int:
    """The 64-bit NTP timestamp (epoch 1900) of a Unix time in µs, rounded to 2**-32 s."""
    return round((Fraction(unix_us) / 1_000_000 + NTP_UNIX_EPOCH_OFFSET_S) * 2**32)


def test_ntp_conversion_uses_the_1900_epoch() -> None:
    ntp = ((1_700_000_000 + NTP_UNIX_EPOCH_OFFSET_S) << 32) | (1 << 30)  # + 0.25 s
    assert ntp_to_unix_us(ntp) == 1_700_000_000_250_000
    # After the 2036 rollover the seconds field restarts at 0 (RFC 4330 era 1).
    assert ntp_to_unix_us(5 << 32) == (2**32 - NTP_UNIX_EPOCH_OFFSET_S + 5) * 1_000_000


def test_sender_report_maps_rtp_exactly() -> None:
    clock = StreamClock(VIDEO_RATE)
    rtp0 = 1_234_567_890
    clock.on_sender_report(rtp0, ntp_of(T0_US))
    for ticks in (0, 1, 2999, 3000, -3000, 90_000 * 7 + 13, -90_000 * 3 - 1):
        expected = round(T0_US + Fraction(ticks * 1_000_000, VIDEO_RATE))
        got, source = clock.capture_time_us((rtp0 + ticks) % WRAP)
        assert source == "sender_report"
        assert abs(got - expected) <= 1, ticks


def test_sender_report_fit_follows_a_drifting_sender_exactly() -> None:
    # The sender's media clock runs 125 ppm fast against its wall clock (48006 ticks per
    # second, so every report is exact): the fitted line must predict between and beyond
    # the reports to the microsecond.
    rate = Fraction(AUDIO_RATE + 6)
    rtp0 = 4_000_000_000
    clock = StreamClock(AUDIO_RATE)

    def rtp_at(seconds: Fraction) -> int:
        return (rtp0 + round(seconds * rate)) % WRAP

    for second in range(6):
        clock.on_sender_report(rtp_at(Fraction(second)), ntp_of(T0_US + second * 1_000_000))
    for seconds in (Fraction(1, 3), Fraction(9, 2), Fraction(6), Fraction(15, 2)):
        ticks = round(seconds * rate)
        expected = T0_US + Fraction(ticks, rate) * 1_000_000
        got, source = clock.capture_time_us((rtp0 + ticks) % WRAP)
        assert source == "sender_report"
        assert abs(got - expected) <= 1, seconds


def test_sender_report_fit_beats_the_latest_report_on_noisy_reports() -> None:
    # aiortc stamps a report with the time its last packet was *sent*: 1-9 ms after capture,
    # varying. Over many streams, the fit over recent reports must predict the next frame
    # closer to the mean delay than the latest report alone would (RMS about 0.7x).
    rng = random.Random(7)
    fit_errors, latest_errors = [], []
    for _ in range(300):
        clock = StreamClock(VIDEO_RATE)
        rtp0 = rng.randrange(WRAP)
        for second in range(8):
            delay_us = round(rng.uniform(1_000, 9_000))
            at_us = T0_US + second * 1_000_000
            clock.on_sender_report((rtp0 + second * VIDEO_RATE) % WRAP, ntp_of(at_us + delay_us))
        got, _ = clock.capture_time_us((rtp0 + 7 * VIDEO_RATE + VIDEO_RATE // 2) % WRAP)
        fit_errors.append(got - (T0_US + 7_500_000) - 5_000)
        latest_errors.append(delay_us - 5_000)

    def rms(values: list[int]) -> float:
        return (sum(v * v for v in values) / len(values)) ** 0.5

    assert rms(fit_errors) < 0.85 * rms(latest_errors)
    assert abs(sum(fit_errors) / len(fit_errors)) < 300  # unbiased


def test_a_single_late_report_is_set_aside() -> None:
    clock = StreamClock(VIDEO_RATE)
    for second in range(5):
        clock.on_sender_report(second * VIDEO_RATE, ntp_of(T0_US + second * 1_000_000))
    # A sender stalled for 120 ms stamps one report that late; it must not move the mapping.
    clock.on_sender_report(5 * VIDEO_RATE, ntp_of(T0_US + 5_120_000))
    clock.on_sender_report(6 * VIDEO_RATE, ntp_of(T0_US + 6_000_000))
    got, _ = clock.capture_time_us(7 * VIDEO_RATE)
    assert abs(got - (T0_US + 7_000_000)) <= 1
    assert clock.sender_report_count == 7
    assert len(clock.sender_reports) == 6


def test_a_clock_step_replaces_the_old_reports() -> None:
    clock = StreamClock(VIDEO_RATE)
    for second in range(5):
        clock.on_sender_report(second * VIDEO_RATE, ntp_of(T0_US + second * 1_000_000))
    step_us = 1_500_000  # e.g. NTP stepped the sender's wall clock
    clock.on_sender_report(5 * VIDEO_RATE, ntp_of(T0_US + 5_000_000 + step_us))
    # One report off the fit could be an outlier: the mapping keeps the old clock...
    assert abs(clock.capture_time_us(6 * VIDEO_RATE)[0] - (T0_US + 6_000_000)) <= 1
    # ...and a second report confirming the step switches to the new clock at once.
    clock.on_sender_report(6 * VIDEO_RATE, ntp_of(T0_US + 6_000_000 + step_us))
    got, _ = clock.capture_time_us(7 * VIDEO_RATE)
    assert abs(got - (T0_US + 7_000_000 + step_us)) <= 1
    assert len(clock.sender_reports) == 2


def test_repeated_stale_and_zero_reports_are_ignored() -> None:
    clock = StreamClock(VIDEO_RATE)
    ntp = ntp_of(T0_US)
    clock.on_sender_report(1000, ntp)
    clock.on_sender_report(1000, ntp)  # repeated (aiortc repeats while no packet was sent)
    clock.on_sender_report(5000, ntp - (1 << 32))  # older than the latest: reordered
    clock.on_sender_report(9000, 0)  # RFC 3550: sender without a wall clock
    assert clock.sender_reports == ((1000, ntp),)
    assert clock.sender_report_count == 1
    got, _ = clock.capture_time_us(1000 + VIDEO_RATE)
    assert abs(got - (T0_US + 1_000_000)) <= 1


def test_rtp_wraparound_is_unwrapped_against_the_latest_timestamp() -> None:
    clock = StreamClock(VIDEO_RATE)
    before_wrap = WRAP - 9_000  # 0.1 s before the 32-bit rollover
    clock.on_sender_report(before_wrap, ntp_of(T0_US))
    # A frame after the rollover is later, not 13 hours earlier.
    got, _ = clock.capture_time_us(9_000)
    assert abs(got - (T0_US + 200_000)) <= 1
    # Packets carry the stream past the rollover; older and newer frames both still map.
    for k in range(1, 200):
        clock.on_packet_arrival((before_wrap + k * 3_000) % WRAP, T0_US + 40_000 + k * 33_333)
    latest = (before_wrap + 199 * 3_000) % WRAP
    assert abs(clock.capture_time_us(latest)[0] - (T0_US + round(199 * 3_000 / 0.09))) <= 1
    assert abs(clock.capture_time_us(before_wrap)[0] - T0_US) <= 1
    # Many rollovers later (continuously fed), the mapping still counts whole cycles.
    rtp = latest
    for _ in range(3):
        for _ in range(4):
            rtp = (rtp + WRAP // 4 - 1) % WRAP
            clock.on_packet_arrival(rtp, T0_US)
    ticks = 199 * 3_000 + 12 * (WRAP // 4 - 1)
    expected = T0_US + Fraction(ticks * 1_000_000, VIDEO_RATE)
    assert abs(clock.capture_time_us(rtp)[0] - expected) <= 1


def jittery_arrivals(
    clock: StreamClock,
    *,
    seconds: float,
    min_delay_us: int,
    drift_ppm: float = 0.0,
    seed: int = 1,
) -> list[tuple[int, int]]:
    """Feed 20 ms audio packets, 80% of them 0-30 ms late; return (rtp, true capture µs)."""
    rng = random.Random(seed)
    rtp0 = WRAP - 48_000 * 2  # crosses the rollover after 2 s
    truth: list[tuple[int, int]] = []
    for i in range(int(seconds * 50)):
        capture_us = T0_US + i * 20_000
        rtp = (rtp0 + round(i * 960 * (1 - drift_ppm / 1e6))) % WRAP
        extra_us = rng.uniform(0, 30_000) if rng.random() < 0.8 else 0.0
        clock.on_packet_arrival(rtp, capture_us + min_delay_us + round(extra_us))
        truth.append((rtp, capture_us))
    return truth


def test_arrival_fit_is_the_minimum_delay_envelope_not_moved_by_jitter() -> None:
    clock = StreamClock(AUDIO_RATE)
    min_delay_us = 4_321
    truth = jittery_arrivals(clock, seconds=5, min_delay_us=min_delay_us)
    for rtp, capture_us in truth[-100:] + truth[:5]:
        got, source = clock.capture_time_us(rtp)
        assert source == "arrival_fit"
        assert abs(got - (capture_us + min_delay_us)) <= 1_000
    # Spacing between frames is the media spacing (20 ms), not the jittery arrival spacing.
    times = [clock.capture_time_us(rtp)[0] for rtp, _ in truth[-50:]]
    assert all(abs((b - a) - 20_000) <= 1 for a, b in itertools.pairwise(times))


def test_arrival_fit_follows_a_slow_sender_clock() -> None:
    # The sender's media clock runs 100 ppm slow: arrival offsets grow 100 µs per second,
    # which a frozen minimum would miss by 6 ms after a minute.
    clock = StreamClock(AUDIO_RATE)
    truth = jittery_arrivals(clock, seconds=60, min_delay_us=3_000, drift_ppm=100.0)
    rtp, capture_us = truth[-1]
    got, _ = clock.capture_time_us(rtp)
    assert abs(got - (capture_us + 3_000)) <= 1_000


def test_sender_report_takes_over_from_the_arrival_fit() -> None:
    clock = StreamClock(AUDIO_RATE)
    truth = jittery_arrivals(clock, seconds=1, min_delay_us=5_000)
    rtp, capture_us = truth[-1]
    fitted, source = clock.capture_time_us(rtp)
    assert source == "arrival_fit"
    assert abs(fitted - (capture_us + 5_000)) <= 1_000
    # The sender's wall clock is 2.5 s ahead of the session clock: SR results are on it.
    sender_ahead_us = 2_500_000
    clock.on_sender_report(rtp, ntp_of(capture_us + sender_ahead_us))
    got, source = clock.capture_time_us(rtp)
    assert source == "sender_report"
    assert abs(got - (capture_us + sender_ahead_us)) <= 1
    # Further packet arrivals do not take the stream back to the arrival fit.
    clock.on_packet_arrival((rtp + 960) % WRAP, capture_us + 25_000)
    assert clock.capture_time_us((rtp + 960) % WRAP)[1] == "sender_report"


def test_no_reference_yet_is_a_clear_value_error() -> None:
    clock = StreamClock(VIDEO_RATE)
    with pytest.raises(NoTimingReference, match="no RTCP sender report and no packet arrival"):
        clock.capture_time_us(1234)
    clock.on_sender_report(1234, 0)  # carries no wall clock, so still nothing to map with
    with pytest.raises(ValueError, match="cannot be mapped"):
        clock.capture_time_us(1234)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.capture_time_us(WRAP), "rtp_timestamp"),
        (lambda c: c.on_packet_arrival(-1, T0_US), "rtp_timestamp"),
        (lambda c: c.on_packet_arrival(0, -5), "arrival_us"),
        (lambda c: c.on_sender_report(0, 1 << 64), "ntp_timestamp"),
    ],
)
def test_out_of_range_inputs_are_rejected(
    call: Callable[[StreamClock], object], message: str
) -> None:
    clock = StreamClock(VIDEO_RATE)
    with pytest.raises(ValueError, match=message):
        call(clock)


def test_clock_rate_must_be_positive() -> None:
    with pytest.raises(ValueError, match="clock_rate"):
        StreamClock(0)
