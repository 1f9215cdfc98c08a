"""The tag protocol's sans-I/O core: parsing, checks, conversion, rate limit, calibration."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streams import records
from taggers.clock import ClockEstimate, ClockReply
from taggers.protocol import (
    FrameCapture,
    Hello,
    ProtocolError,
    RateLimiter,
    ReactionLag,
    TagLedger,
    TagMessage,
    UndoMessage,
    check_tag,
    parse_client_message,
    reaction_lag_from_samples,
    resolve_reaction_lag,
    tag_event,
)
from taggers.vocabulary import DEFAULT_VOCABULARY

T0 = 1_790_000_000_000_000
SESSION = records.SessionRecord(
    ts_us=T0,
    session_id="s-1",
    created_ts_us=T0,
    prompt="p",
    roster=[
        records.Performer(performer_id="ana", display_name="Ana"),
        records.Performer(performer_id="ben", display_name="Ben"),
    ],
    vocabulary=list(DEFAULT_VOCABULARY),
    state="live",
    topics=records.SessionTopics(audio="a", video="v", prosody="p", face="f"),
)
ESTIMATE = ClockEstimate(
    offset_us=2_500_000,
    drift_ppm=50.0,
    rtt_us=12_000,
    uncertainty_us=6_001,
    samples=20,
    at_us=T0,
    drift_error_ppm=3.0,
)


def tag(**change: Any) -> dict[str, Any]:
    message = {
        "type": "tag",
        "tag_id": "tag-0001",
        "action": "point",
        "performer_id": "ana",
        "label": "laughter",
        "client_press_us": T0 - 2_500_000,
    }
    message.update(change)
    return message


def parse(message: dict[str, Any] | str, max_bytes: int = 4096) -> Any:
    raw = message if isinstance(message, str) else json.dumps(message)
    return parse_client_message(raw, max_bytes)


def code_of(message: dict[str, Any] | str | bytes, max_bytes: int = 4096) -> str:
    raw = message if isinstance(message, str | bytes) else json.dumps(message)
    with pytest.raises(ProtocolError) as caught:
        parse_client_message(raw, max_bytes)
    return caught.value.code


# ---------------------------------------------------------------- parsing


def test_each_client_message_parses_to_its_type() -> None:
    assert isinstance(parse({"type": "hello", "token": "x"}), Hello)
    reply = {"type": "clock_reply", "probe_id": 1, "server_send_us": 5, "client_time_us": 7}
    assert isinstance(parse(reply), ClockReply)
    assert isinstance(parse(tag()), TagMessage)
    undo = {
        "type": "undo",
        "tag_id": "undo-0001",
        "undoes_tag_id": "tag-0001",
        "performer_id": "ana",
        "client_press_us": 1,
    }
    assert isinstance(parse(undo), UndoMessage)
    assert isinstance(parse({"type": "reaction_lag", "lag_us": 200_000}), ReactionLag)


@pytest.mark.parametrize(
    ("message", "code"),
    [
        ("{not json", "malformed"),
        ("[1, 2]", "malformed"),
        ({"type": "dance"}, "malformed"),
        (tag(tag_id="short"), "malformed"),
        (tag(action="sideways"), "malformed"),
        (tag(client_press_us=-1), "malformed"),
        (tag(client_press_us=1.5), "malformed"),
        (tag(label="Not A Label"), "malformed"),
        (tag(extra_field=1), "malformed"),
        (tag(frame={"rtp_timestamp": 2**32}), "malformed"),
        (tag(note="x" * 5000), "too_big"),
        ("[" * 2000 + "]" * 2000, "malformed"),
    ],
)
def test_bad_messages_get_a_code(message: dict[str, Any] | str, code: str) -> None:
    assert code_of(message) == code


def test_binary_message_is_malformed() -> None:
    assert code_of(b'{"type": "hello"}') == "malformed"


def test_size_limit_counts_utf8_bytes() -> None:
    # 1500 three-byte characters: 1500 str characters, 4500 bytes.
    assert code_of(tag(label="é" * 1500)) == "too_big"


def test_malformed_tag_error_names_its_tag_id() -> None:
    with pytest.raises(ProtocolError) as caught:
        parse(tag(action="sideways", tag_id="tag-0042"))
    assert caught.value.tag_id == "tag-0042"
    assert "action" in caught.value.message


# ---------------------------------------------------------------- session checks


@pytest.mark.parametrize(
    ("change", "role", "code"),
    [
        ({"label": "boredom"}, "director", "unknown_label"),
        ({"performer_id": "zoe"}, "director", "unknown_performer"),
        ({"performer_id": "ben"}, "performer", "forbidden"),
        ({"action": "offset"}, "director", "malformed"),
        ({"action": "onset", "onset_tag_id": "tag-0000"}, "director", "malformed"),
        ({"action": "onset", "span_us": 100}, "director", "malformed"),
    ],
)
def test_session_rules(change: dict[str, Any], role: records.Role, code: str) -> None:
    message = parse(tag(**change))
    with pytest.raises(ProtocolError) as caught:
        check_tag(message, SESSION, "ana" if role == "performer" else "dir", role)
    assert caught.value.code == code
    assert caught.value.tag_id == "tag-0001"


def test_strong_is_refused_for_a_label_without_intensity() -> None:
    vocabulary = [entry.model_copy(update={"intensity": False}) for entry in SESSION.vocabulary]
    session = SESSION.model_copy(update={"vocabulary": vocabulary})
    check_tag(parse(tag()), session, "dir", "director")
    with pytest.raises(ProtocolError) as caught:
        check_tag(parse(tag(intensity="strong")), session, "dir", "director")
    assert caught.value.code == "malformed"
    assert "intensity" in caught.value.message


def test_valid_tags_pass() -> None:
    check_tag(parse(tag()), SESSION, "ana", "performer")
    check_tag(parse(tag(performer_id="ben")), SESSION, "dir", "director")
    offset = tag(action="offset", onset_tag_id="tag-0000")
    check_tag(parse(offset), SESSION, "obs", "observer")


# ---------------------------------------------------------------- conversion


def convert(message: dict[str, Any], **kwargs: Any) -> records.TagEvent:
    options: dict[str, Any] = {
        "session_id": "s-1",
        "rater_id": "dir",
        "role": "director",
        "estimate": ESTIMATE,
        "reaction_lag_us": 0,
        "frame": None,
        "default_span_us": 500_000,
        "received_us": T0 + 40_000,
    }
    options.update(kwargs)
    return tag_event(parse(message), **options)


def test_key_press_is_converted_with_the_clock_estimate() -> None:
    event = convert(tag())
    assert event.ts_us == T0  # client T0-2.5 s + offset 2.5 s at T0
    assert event.timing.basis == "key_press"
    assert event.timing.client_press_ts_us == T0 - 2_500_000
    assert event.timing.clock_offset_us == 2_500_000
    assert event.timing.rtt_us == 12_000
    assert event.timing.clock_uncertainty_us == 6_001
    assert event.span_us == 500_000
    assert event.received_ts_us == T0 + 40_000


def test_drift_is_applied_away_from_the_estimate_instant() -> None:
    # 100 s later the offset has grown by 50 ppm * 100 s = 5 ms.
    later = T0 + 100_000_000
    event = convert(tag(client_press_us=later - 2_500_000 - 5_000), received_us=later + 40_000)
    assert abs(event.ts_us - later) <= 1
    assert event.timing.clock_uncertainty_us == 6_001 + 300  # 3 ppm * 100 s


def test_reaction_lag_is_subtracted_and_recorded() -> None:
    event = convert(tag(), reaction_lag_us=250_000)
    assert event.ts_us == T0 - 250_000
    assert event.timing.reaction_lag_us == 250_000


def test_frame_on_screen_wins_over_the_key_press() -> None:
    frame = FrameCapture(rtp_timestamp=90_000, capture_ts_us=T0 - 180_000)
    event = convert(tag(frame={"rtp_timestamp": 90_000}), frame=frame, reaction_lag_us=10)
    assert event.ts_us == T0 - 180_000 - 10
    assert event.timing.basis == "frame_on_screen"
    assert event.timing.media_rtp_timestamp == 90_000
    assert event.timing.media_capture_ts_us == T0 - 180_000


def test_unknown_frame_falls_back_to_the_key_press_and_says_so() -> None:
    frame = FrameCapture(rtp_timestamp=90_000, capture_ts_us=None)
    event = convert(tag(frame={"rtp_timestamp": 90_000}), frame=frame)
    assert event.ts_us == T0
    assert event.timing.basis == "key_press"
    assert event.timing.media_rtp_timestamp == 90_000


def test_point_span_from_the_message_is_kept() -> None:
    assert convert(tag(span_us=200_000)).span_us == 200_000


def test_hold_and_undo_convert() -> None:
    onset = convert(tag(action="onset", intensity="strong"))
    assert (onset.action, onset.intensity, onset.span_us) == ("onset", "strong", None)
    offset = convert(tag(action="offset", tag_id="tag-0002", onset_tag_id="tag-0001"))
    assert offset.onset_tag_id == "tag-0001"
    undo = {
        "type": "undo",
        "tag_id": "undo-0001",
        "undoes_tag_id": "tag-0001",
        "performer_id": "ana",
        "client_press_us": T0 - 2_500_000,
    }
    event = convert(undo)
    assert (event.action, event.undoes_tag_id, event.label) == ("undo", "tag-0001", None)


@pytest.mark.parametrize(
    ("press_us", "accepted"),
    [
        (T0 + 40_000 + 6_001 + 50_000 - 1_000, True),  # just within the clock's error
        (T0 + 40_000 + 6_001 + 50_000 + 10_000, False),  # pressed after it arrived
        (T0 - 3_700_000_000, False),  # over an hour before it arrived
    ],
)
def test_a_press_must_lie_before_its_receipt(press_us: int, accepted: bool) -> None:
    message = tag(client_press_us=press_us - 2_500_000)
    if accepted:
        assert abs(convert(message).ts_us - press_us) <= 10  # 50 ppm drift over 95 ms
    else:
        with pytest.raises(ProtocolError) as caught:
            convert(message)
        assert caught.value.code == "bad_time"


def test_tag_before_any_clock_sample_is_refused_not_guessed() -> None:
    with pytest.raises(ProtocolError) as caught:
        convert(tag(), estimate=None)
    assert caught.value.code == "not_synced"


# ---------------------------------------------------------------- limits and calibration


def test_rate_limiter_allows_a_burst_then_the_sustained_rate() -> None:
    limiter = RateLimiter(rate_per_s=10.0, burst=5)
    assert [limiter.allow(0) for _ in range(6)] == [True] * 5 + [False]
    assert not limiter.allow(50_000)  # half a token back
    assert limiter.allow(100_000)
    assert not limiter.allow(100_000)
    assert [limiter.allow(10_000_000) for _ in range(6)] == [True] * 5 + [False]  # capped


def test_calibration_takes_the_median_of_plausible_reactions() -> None:
    samples = [40_000, 230_000, 250_000, 260_000, 240_000, 900_000, 270_000, 5_000_000]
    assert reaction_lag_from_samples(samples, max_lag_us=1_500_000) == 255_000


def test_calibration_with_too_few_plausible_reactions_fails_clearly() -> None:
    with pytest.raises(ProtocolError) as caught:
        reaction_lag_from_samples([10_000, 20_000, 300_000], max_lag_us=1_500_000)
    assert caught.value.code == "calibration_failed"
    assert "1 of 3" in caught.value.message


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"type": "reaction_lag", "lag_us": 120_000}, 120_000),
        ({"type": "reaction_lag", "lag_us": 2_000_000}, "malformed"),
        ({"type": "reaction_lag"}, "malformed"),
        ({"type": "reaction_lag", "lag_us": 1, "samples_us": [1]}, "malformed"),
        ({"type": "reaction_lag", "samples_us": [200_000] * 5}, 200_000),
    ],
)
def test_reaction_lag_messages(message: dict[str, Any], expected: int | str) -> None:
    parsed = parse(message)
    if isinstance(expected, int):
        assert resolve_reaction_lag(parsed, max_lag_us=1_500_000) == expected
    else:
        with pytest.raises(ProtocolError) as caught:
            resolve_reaction_lag(parsed, max_lag_us=1_500_000)
        assert caught.value.code == expected


def test_ledger_is_bounded_and_forgets_oldest_first() -> None:
    ledger = TagLedger(capacity=3)
    events = [convert(tag(tag_id=f"tag-000{n}")) for n in range(5)]
    for event in events:
        ledger.remember(event)
    assert len(ledger) == 3
    assert ledger.get("tag-0000") is None
    assert ledger.get("tag-0004") == events[4]
