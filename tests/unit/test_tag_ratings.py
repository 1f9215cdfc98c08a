"""Continuous ratings in the tag protocol's sans-I/O core: parsing, refusals, conversion to
the session clock, the rating budget, the ledger and storing once by id, the welcome, and
the spool's lines."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import records
from taggers import outbox
from taggers.clock import ClockEstimate
from taggers.protocol import (
    PAGE_OUTBOX_BATCHES,
    RATER_BATCHES_REMEMBERED,
    BatchLedger,
    ProtocolError,
    RateLimiter,
    RatingsMessage,
    StoredBatch,
    TagLimits,
    check_ratings,
    parse_client_message,
    rating_batch,
    ratings_ack,
    welcome,
)
from taggers.service import StoredOnce
from tests.unit.test_tag_protocol import ESTIMATE, SESSION, T0

LIMITS = TagLimits()
OFFSET = ESTIMATE.offset_us  # session minus client, at T0
RECEIVED = T0 + 40_000


def ratings(**change: Any) -> dict[str, Any]:
    """A valence/arousal batch of 10 samples at 20 Hz, the last 50 ms before receipt."""
    start = T0 - 500_000 - OFFSET
    message: dict[str, Any] = {
        "type": "ratings",
        "batch_id": "batch-0001",
        "performer_id": "ana",
        "mode": "valence_arousal",
        "rate_hz": 20,
        "samples": [[start + i * 50_000, -0.5 + i * 0.1, 0.25, None] for i in range(10)],
    }
    message.update(change)
    return message


def intensity(**change: Any) -> dict[str, Any]:
    message = ratings(mode="intensity", label="laughter")
    originals = message["samples"]
    message["samples"] = [[ts, 0.1 * i, rtp] for i, (ts, _, _, rtp) in enumerate(originals)]
    message.update(change)
    return message


def parse(message: dict[str, Any]) -> RatingsMessage:
    parsed = parse_client_message(
        json.dumps(message),
        LIMITS.max_message_bytes,
        max_ratings_bytes=LIMITS.max_rating_message_bytes,
    )
    assert isinstance(parsed, RatingsMessage)
    return parsed


def refusal(message: dict[str, Any], role: records.Role = "observer") -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        check_ratings(parse(message), SESSION, role, LIMITS)
    return caught.value


def convert(
    message: dict[str, Any],
    captures: list[int | None] | None = None,
    estimate: ClockEstimate | None = ESTIMATE,
    received_us: int = RECEIVED,
) -> records.RatingBatch:
    parsed = parse(message)
    samples = check_ratings(parsed, SESSION, "observer", LIMITS)
    return rating_batch(
        parsed,
        samples,
        session_id="s-1",
        rater_id="obs",
        role="observer",
        estimate=estimate,
        reaction_lag_us=180_000,
        frame_captures=captures or [None] * len(samples),
        received_us=received_us,
    )


# ---------------------------------------------------------------- parsing and refusals


def test_a_batch_parses_and_passes_its_checks() -> None:
    checked = check_ratings(parse(ratings()), SESSION, "director", LIMITS)
    assert len(checked) == 10
    assert checked[3].values == {"valence": pytest.approx(-0.2), "arousal": 0.25}
    assert checked[0].rtp_timestamp is None
    slider = check_ratings(parse(intensity()), SESSION, "observer", LIMITS)
    assert [sample.values["intensity"] for sample in slider][:3] == [0.0, 0.1, 0.2]


@pytest.mark.parametrize(
    ("change", "code", "words"),
    [
        ({"label": "boredom", "mode": "intensity"}, "unknown_label", "boredom"),
        ({"performer_id": "zoe"}, "unknown_performer", "zoe"),
        ({"label": "laughter"}, "malformed", "names no label"),
        ({"rate_hz": 100}, "malformed", "rate_hz 100"),
        ({"rate_hz": 5}, "malformed", "between 10 and 30"),
        ({"samples": [[1, 0.5, 0.5, None]] * 601}, "too_many_samples", "at most 600"),
        ({"samples": [[1, 1.5, 0.0, None]]}, "out_of_range", "valence 1.5"),
        ({"samples": [[1, 0.0, -1.01, None]]}, "out_of_range", "arousal -1.01"),
        ({"samples": [[1, 0.0, None]]}, "malformed", "[client_ts_us, valence, arousal"),
        ({"samples": [[1, 0.0, 0.0, 0.0, None]]}, "malformed", "samples.0"),
        ({"samples": [[1.5, 0.0, 0.0, None]]}, "malformed", "client_ts_us"),
        ({"samples": [[1, 0.0, 0.0, 2**32]]}, "malformed", "rtp_timestamp"),
        ({"samples": [[1, None, 0.0, None]]}, "malformed", "valence must be a number"),
        ({"samples": [[100_000, 0, 0, None], [90_000, 0, 0, None]]}, "malformed", "time order"),
        ({"samples": [[100_000, 0, 0, None], [100_000, 0, 0, None]]}, "malformed", "time order"),
        (
            {"samples": [[100_000 + i * 10_000, 0, 0, None] for i in range(10)]},
            "malformed",
            "10 samples in 90 ms: more than 20 Hz",
        ),
    ],
)
def test_bad_batches_are_refused_with_a_clear_code(
    change: dict[str, Any], code: str, words: str
) -> None:
    error = refusal(ratings(**change))
    assert error.code == code
    assert words in error.message
    assert error.batch_id == "batch-0001"
    assert error.to_message()["batch_id"] == "batch-0001"
    assert "tag_id" not in error.to_message()


def test_an_intensity_out_of_its_unit_range_and_without_a_label_are_refused() -> None:
    assert refusal(intensity(samples=[[1, -0.1, None]])).code == "out_of_range"
    assert refusal(intensity(samples=[[1, 0.2, 0.3, None]])).code == "malformed"
    unnamed = intensity()
    del unnamed["label"]
    assert refusal(unnamed).code == "malformed"


def test_a_performer_does_not_rate_continuously() -> None:
    error = refusal(ratings(performer_id="ana"), role="performer")
    assert error.code == "forbidden"
    assert "observers and the director" in error.message


def test_samples_a_late_timer_brought_close_together_pass() -> None:
    # On a 50 ms grid, the third sample's timer ran 30 ms late: 20 ms to the fourth.
    late = [0, 50_000, 130_000, 150_000, 200_000, 250_000, 300_000, 350_000, 400_000, 449_000]
    message = ratings(samples=[[T0 + at, 0, 0, None] for at in late])
    assert len(check_ratings(parse(message), SESSION, "observer", LIMITS)) == 10


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (ratings(batch_id="short"), "malformed"),
        (ratings(mode="arousal_only"), "malformed"),
        (ratings(samples=[]), "malformed"),
        (ratings(samples=[[1, "0.5", 0.5, None]]), "malformed"),
        (ratings(samples=[[1, True, 0.5, None]]), "malformed"),
        (ratings(extra=1), "malformed"),
    ],
)
def test_malformed_batches_name_their_batch(message: dict[str, Any], code: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(json.dumps(message), 4096, max_ratings_bytes=65536)
    assert caught.value.code == code
    if message["batch_id"] != "short":
        assert caught.value.batch_id == message["batch_id"]


def test_ratings_have_their_own_size_limit_and_nothing_else_does() -> None:
    big = ratings(samples=[[i * 50_000, 0.123, -0.456, 4_000_000_000] for i in range(300)])
    raw = json.dumps(big)
    assert 4096 < len(raw) < 65536
    assert isinstance(parse_client_message(raw, 4096, max_ratings_bytes=65536), RatingsMessage)
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(raw, 4096)  # no ratings limit given: the message limit holds
    assert caught.value.code == "too_big"
    tag = {"type": "tag", "tag_id": "tag-0001", "note": "x" * 5000}
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(json.dumps(tag), 4096, max_ratings_bytes=65536)
    assert caught.value.code == "too_big"
    with pytest.raises(ProtocolError) as caught:
        parse_client_message("x" * 70_000, 4096, max_ratings_bytes=65536)
    assert caught.value.code == "too_big"


# ---------------------------------------------------------------- conversion


def test_samples_are_converted_to_the_session_clock() -> None:
    message = ratings()
    batch = convert(message)
    for sample, (client_us, valence, arousal, _) in zip(
        batch.samples, message["samples"], strict=True
    ):
        assert sample.client_ts_us == client_us
        assert sample.ts_us == ESTIMATE.to_session_us(client_us)
        assert sample.basis == "key_press"
        assert (sample.valence, sample.arousal, sample.intensity) == (valence, arousal, None)
    assert batch.ts_us == batch.samples[0].ts_us
    assert abs(batch.ts_us - (T0 - 500_000)) <= 100  # 50 ppm drift over half a second
    assert batch.clock_offset_us == ESTIMATE.offset_at(batch.ts_us)
    assert batch.clock_uncertainty_us >= ESTIMATE.uncertainty_us
    # The lag is recorded, not applied: the aligner corrects traces.
    assert batch.reaction_lag_us == 180_000
    assert (batch.rater_id, batch.rater_role, batch.received_ts_us) == ("obs", "observer", RECEIVED)
    assert batch.key == b"s-1/ana"
    # What goes on the topic decodes to the same batch.
    encoded = records.encode(batch)
    assert records.decode(records.RatingBatch, encoded.value, encoded.headers) == batch


def test_a_sample_with_its_frame_found_lands_on_the_frame() -> None:
    message = intensity()
    captures: list[int | None] = [None] * 10
    captures[2] = T0 - 700_000
    batch = convert(message, captures=captures)
    assert batch.mode == "intensity"
    assert batch.label == "laughter"
    assert batch.samples[2].ts_us == T0 - 700_000
    assert batch.samples[2].basis == "frame_on_screen"
    assert {s.basis for i, s in enumerate(batch.samples) if i != 2} == {"key_press"}
    stored = StoredBatch.of(batch)
    assert stored.frame_samples == 1
    assert stored.samples == 10
    assert stored.end_ts_us == batch.samples[-1].ts_us


@pytest.mark.parametrize(
    ("last_sample_us", "accepted"),
    [
        (RECEIVED + 6_001 + 50_000 - 1_000, True),  # within the clock's error
        (RECEIVED + 6_001 + 50_000 + 10_000, False),  # sampled after it arrived
    ],
)
def test_a_sample_cannot_come_after_its_receipt(last_sample_us: int, accepted: bool) -> None:
    message = ratings(
        samples=[
            [last_sample_us - OFFSET - 50_000, 0, 0, None],
            [last_sample_us - OFFSET, 0, 0, None],
        ]
    )
    if accepted:
        assert convert(message).samples[-1].ts_us == pytest.approx(last_sample_us, abs=10)
    else:
        with pytest.raises(ProtocolError) as caught:
            convert(message)
        assert caught.value.code == "bad_time"
        assert caught.value.batch_id == "batch-0001"


def test_a_sample_over_an_hour_old_is_refused() -> None:
    old = T0 - 3_700_000_000 - OFFSET
    with pytest.raises(ProtocolError) as caught:
        convert(ratings(samples=[[old, 0, 0, None]]))
    assert caught.value.code == "bad_time"
    assert "hour" in caught.value.message


def test_a_batch_before_any_clock_sample_is_refused_not_guessed() -> None:
    with pytest.raises(ProtocolError) as caught:
        convert(ratings(), estimate=None)
    assert caught.value.code == "not_synced"


def test_a_batch_the_record_refuses_is_refused_for_good_not_raised() -> None:
    # Nothing a page sends gets here past check_ratings; a reaction lag read back from a
    # corrupt store could, and must cost the batch a clear error, not the connection.
    parsed = parse(ratings())
    with pytest.raises(ProtocolError) as caught:
        rating_batch(
            parsed,
            check_ratings(parsed, SESSION, "observer", LIMITS),
            session_id="s-1",
            rater_id="obs",
            role="observer",
            estimate=ESTIMATE,
            reaction_lag_us=-1,
            frame_captures=[None] * 10,
            received_us=RECEIVED,
        )
    assert caught.value.code == "malformed"
    assert "reaction_lag_us" in caught.value.message
    assert caught.value.batch_id == "batch-0001"


_VALUE = st.floats(min_value=-1, max_value=1, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(
    gaps_ms=st.lists(st.integers(min_value=40, max_value=400), min_size=0, max_size=40),
    values=st.lists(st.tuples(_VALUE, _VALUE), min_size=41, max_size=41),
    offset_us=st.integers(min_value=-(10**12), max_value=10**12),
    drift_ppm=st.floats(min_value=-200, max_value=200),
)
def test_any_valid_trace_converts_in_order_with_its_values(
    gaps_ms: list[int],
    values: list[tuple[float, float]],
    offset_us: int,
    drift_ppm: float,
) -> None:
    estimate = ClockEstimate(
        offset_us=offset_us,
        drift_ppm=drift_ppm,
        rtt_us=2_000,
        uncertainty_us=1_000,
        samples=20,
        at_us=T0,
        drift_error_ppm=1.0,
    )
    times = [T0 - 30_000_000]
    for gap in gaps_ms:
        times.append(times[-1] + gap * 1000)
    samples = [
        [estimate_client(estimate, t), v, a, None] for t, (v, a) in zip(times, values, strict=False)
    ]
    message = ratings(samples=samples)
    parsed = parse(message)
    batch = rating_batch(
        parsed,
        check_ratings(parsed, SESSION, "observer", LIMITS),
        session_id="s-1",
        rater_id="obs",
        role="observer",
        estimate=estimate,
        reaction_lag_us=0,
        frame_captures=[None] * len(samples),
        received_us=T0,
    )
    stamps = [sample.ts_us for sample in batch.samples]
    assert stamps == sorted(stamps)
    for sample, true_us, (valence, arousal) in zip(batch.samples, times, values, strict=False):
        assert abs(sample.ts_us - true_us) <= 2
        assert (sample.valence, sample.arousal) == (valence, arousal)


def estimate_client(estimate: ClockEstimate, session_us: int) -> int:
    """The client clock's reading at session time ``session_us`` under ``estimate``."""
    return session_us - estimate.offset_at(session_us)


_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    field=st.sampled_from(["batch_id", "performer_id", "mode", "label", "rate_hz", "samples"]),
    value=_JSONISH,
)
def test_any_field_value_is_taken_or_refused_clearly(field: str, value: Any) -> None:
    message = ratings()
    message[field] = value
    try:
        raw = json.dumps(message, allow_nan=False)
    except ValueError:
        return  # not JSON: the parser's own tests cover what is not JSON
    refused: ProtocolError | None = None
    try:
        parsed = parse_client_message(raw, 4096, max_ratings_bytes=65536)
        assert isinstance(parsed, RatingsMessage)
        samples = check_ratings(parsed, SESSION, "director", LIMITS)
        rating_batch(
            parsed,
            samples,
            session_id="s-1",
            rater_id="dir",
            role="director",
            estimate=ESTIMATE,
            reaction_lag_us=0,
            frame_captures=[None] * len(samples),
            received_us=RECEIVED,
        )
    except ProtocolError as exc:
        refused = exc
    if refused is not None:
        assert refused.code in {
            "malformed",
            "unknown_label",
            "unknown_performer",
            "out_of_range",
            "too_many_samples",
            "bad_time",
        }
        assert refused.message


# ---------------------------------------------------------------- budget, ledger, welcome


def test_a_rating_budget_counts_samples() -> None:
    samples = RateLimiter(rate_per_s=600.0, burst=12_000)
    # Ten minutes of a 20 Hz trace in half-second batches re-sent at once fit the burst...
    assert all(samples.allow(0, cost=10) for _ in range(1200))
    assert not samples.allow(0, cost=10)
    # ...and then the sustained rate: 20 times a 30 Hz rater.
    assert not samples.can_afford(1_000_000, cost=601)
    assert samples.can_afford(1_000_000, cost=600)
    assert samples.allow(1_000_000, cost=600)
    assert not samples.allow(1_000_000, cost=1)


def stored(n: int, rater: str = "obs") -> StoredBatch:
    return StoredBatch(f"batch-{rater}-{n:04d}", rater, T0 + n, T0 + n + 450_000, 10, 0)


def test_the_batch_ledger_answers_re_sends_and_forgets_each_rater_s_oldest_first() -> None:
    ledger = BatchLedger(per_rater=2, capacity=10)
    batches = [stored(n) for n in range(3)]
    for batch in batches:
        ledger.remember(batch)
    ledger.remember(stored(0, "dir"))
    assert len(ledger) == 3
    assert ledger.get(batches[0].batch_id) is None
    assert ledger.get(batches[2].batch_id) == batches[2]
    # Another rater's batches do not push this rater's out.
    assert ledger.get(stored(0, "dir").batch_id) == stored(0, "dir")
    assert ratings_ack(batches[2], duplicate=True, held=False) == {
        "type": "ratings_ack",
        "batch_id": "batch-obs-0002",
        "ts_us": T0 + 2,
        "end_ts_us": T0 + 450_002,
        "samples": 10,
        "frame_samples": 0,
        "duplicate": True,
        "held": False,
    }


def test_the_batch_ledger_of_a_session_is_bounded_whatever_its_raters() -> None:
    ledger = BatchLedger(per_rater=3, capacity=4)
    for n in range(3):
        ledger.remember(stored(n, "a"))
    ledger.remember(stored(0, "b"))
    ledger.remember(stored(1, "b"))  # over the session's capacity: the oldest of all goes
    assert len(ledger) == 4
    assert ledger.get(stored(0, "a").batch_id) is None
    assert [ledger.get(stored(n, "a").batch_id) for n in (1, 2)] == [stored(1, "a"), stored(2, "a")]
    for n in range(2, 6):  # b's own bound, and the session's, both hold after
        ledger.remember(stored(n, "b"))
    assert len(ledger) == 4
    assert [n for n in range(6) if ledger.get(stored(n, "b").batch_id)] == [3, 4, 5]
    assert ledger.get(stored(2, "a").batch_id) == stored(2, "a")


def test_the_service_remembers_more_of_a_rater_than_a_page_can_re_send() -> None:
    sent_js = (Path(__file__).parents[2] / "taggers" / "static" / "sent.js").read_text()
    kept = re.search(r"const RATING_BATCHES_KEPT = (\d+);", sent_js)
    assert kept is not None
    assert int(kept.group(1)) == PAGE_OUTBOX_BATCHES
    assert BatchLedger().per_rater == RATER_BATCHES_REMEMBERED > PAGE_OUTBOX_BATCHES


async def test_a_record_is_stored_once_however_often_it_is_re_sent() -> None:
    once: StoredOnce[StoredBatch] = StoredOnce(BatchLedger)
    release = asyncio.Event()
    deliveries = 0

    async def deliver() -> tuple[StoredBatch, bool]:
        nonlocal deliveries
        deliveries += 1
        await release.wait()
        return stored(1), False

    first = asyncio.create_task(once.store("s-1", "batch-obs-0001", deliver))
    await asyncio.sleep(0)
    again = asyncio.create_task(once.store("s-1", "batch-obs-0001", deliver))  # in flight
    await asyncio.sleep(0)
    release.set()
    assert await first == (stored(1), False, False)
    assert await again == (stored(1), True, False)
    assert await once.store("s-1", "batch-obs-0001", deliver) == (stored(1), True, False)
    assert deliveries == 1
    assert once.known("s-1", "batch-obs-0001") == stored(1)
    assert once.known("s-2", "batch-obs-0001") is None
    assert once.sessions() == {"s-1"}


async def test_a_record_that_failed_to_store_is_stored_by_its_re_send() -> None:
    once: StoredOnce[StoredBatch] = StoredOnce(BatchLedger)
    outcomes: list[Exception | None] = [OSError("spool full"), None]

    async def deliver() -> tuple[StoredBatch, bool]:
        failure = outcomes.pop(0)
        if failure is not None:
            raise failure
        return stored(1), True

    with pytest.raises(OSError, match="spool full"):
        await once.store("s-1", "batch-obs-0001", deliver)
    assert once.known("s-1", "batch-obs-0001") is None
    assert await once.store("s-1", "batch-obs-0001", deliver) == (stored(1), False, True)


async def test_a_forgotten_session_s_records_would_be_stored_again() -> None:
    once: StoredOnce[StoredBatch] = StoredOnce(BatchLedger)
    deliveries = 0

    async def deliver() -> tuple[StoredBatch, bool]:
        nonlocal deliveries
        deliveries += 1
        return stored(1), False

    await once.store("s-1", "batch-obs-0001", deliver)
    await once.store("s-2", "batch-obs-0001", deliver)
    once.forget("s-1")
    assert once.sessions() == {"s-2"}
    assert once.known("s-1", "batch-obs-0001") is None
    assert (await once.store("s-1", "batch-obs-0001", deliver))[1] is False
    assert deliveries == 3


def test_the_welcome_offers_continuous_rating_to_watchers_only() -> None:
    limits = TagLimits(rating_rate_hz=25)
    for role in ("observer", "director"):
        offered = welcome(SESSION, rater_id="x", role=role, reaction_lag_us=0, limits=limits)
        assert offered["ratings"]["rate_hz"] == 25
        assert offered["ratings"]["batch_ms"] == 500
        assert offered["ratings"]["modes"] == {
            "valence_arousal": ["valence", "arousal"],
            "intensity": ["intensity"],
        }
    performer = welcome(SESSION, rater_id="ana", role="performer", reaction_lag_us=0, limits=limits)
    assert performer["ratings"] is None


# ---------------------------------------------------------------- the spool


def test_a_spool_line_is_a_tag_or_a_rating_batch() -> None:
    batch = convert(ratings())
    tag = records.TagEvent(
        ts_us=T0,
        session_id="s-1",
        performer_id="ana",
        tag_id="tag-0001",
        rater_id="obs",
        rater_role="observer",
        action="point",
        label="laughter",
        span_us=500_000,
        timing=records.TagTiming(
            client_press_ts_us=T0,
            clock_offset_us=0,
            rtt_us=1,
            clock_uncertainty_us=1,
        ),
        received_ts_us=T0,
    )
    assert outbox._spooled(batch.model_dump_json().encode()) == batch
    assert outbox._spooled(tag.model_dump_json().encode()) == tag
    with pytest.raises(ValueError, match="validation error"):
        outbox._spooled(b'{"neither": true}')
