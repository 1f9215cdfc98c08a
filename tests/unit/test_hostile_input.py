"""Hostile input: whatever arrives, the parsers answer with their own clear error."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import records
from taggers import tokens
from taggers.protocol import ProtocolError, parse_client_message

SECRET = b"hostile-input-secret-long-enough-for-hs256"

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)
message_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["hello", "tag", "undo", "clock_reply", "reaction_lag", "x"])},
    optional={
        "tag_id": json_values,
        "token": json_values,
        "action": json_values,
        "label": json_values,
        "performer_id": json_values,
        "client_press_us": json_values,
        "frame": json_values,
        "probe_id": json_values,
        "lag_us": json_values,
        "samples_us": json_values,
    },
)


def raised(call: Callable[[], object], kind: type[Exception]) -> Any:
    """The exception of ``kind`` the call raised, or None; any other exception propagates."""
    try:
        call()
    except kind as exc:
        return exc
    return None


@settings(max_examples=300, deadline=None)
@given(raw=st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_tag_protocol_rejects_any_text_or_bytes_clearly(raw: str | bytes) -> None:
    exc = raised(lambda: parse_client_message(raw, max_bytes=4096), ProtocolError)
    if exc is not None:
        assert exc.code in {"malformed", "too_big"}
        assert exc.message


@settings(max_examples=300, deadline=None)
@given(document=message_like)
def test_tag_protocol_rejects_wrong_types_clearly(document: dict[str, Any]) -> None:
    raw = json.dumps(document)
    exc = raised(lambda: parse_client_message(raw, max_bytes=4096), ProtocolError)
    if exc is not None:
        assert exc.code in {"malformed", "too_big"}


def test_invalid_utf8_and_huge_and_deep_messages() -> None:
    for raw in (b"\xff\xfe\xfd", "x" * 10_000, "[" * 2000 + "]" * 2000):
        with pytest.raises(ProtocolError) as caught:
            parse_client_message(raw, max_bytes=4096)
        assert caught.value.code in {"malformed", "too_big"}


RECORD_TYPES: list[Any] = [
    records.SessionRecord,
    records.ProsodyFrame,
    records.FaceFrame,
    records.TagEvent,
    records.LabelWindow,
    records.DeadLetter,
    records.AudioChunk,
    records.VideoFrame,
]


@settings(max_examples=200, deadline=None)
@given(
    value=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())),
    header=st.one_of(st.none(), st.binary(max_size=100)),
    kind=st.sampled_from(RECORD_TYPES),
)
def test_record_decoders_raise_only_record_errors(
    value: bytes, header: bytes | None, kind: Any
) -> None:
    headers = [] if header is None else [(records.MEDIA_HEADER, header)]
    exc = raised(lambda: records.decode(kind, value, headers), records.RecordError)
    if exc is not None:
        assert str(exc)


@settings(max_examples=200, deadline=None)
@given(token=st.one_of(st.none(), st.text(max_size=3000)))
def test_forged_or_garbage_tokens_get_a_reason(token: str | None) -> None:
    exc = raised(lambda: tokens.verify(SECRET, token), tokens.TokenError)
    assert exc is not None  # nothing random is a valid token
    assert exc.reason


def test_a_token_for_another_session_names_that_session() -> None:
    issued = tokens.issue(
        SECRET, session_id="other-session", role="director", participant_id="d", ttl_s=60
    )
    # Valid signature, but it names the session it was made for: a service that looks up
    # that session (not the one in a URL) cannot be steered into another.
    assert tokens.verify(SECRET, issued).session_id == "other-session"
    forged = issued[:-4] + ("AAAA" if not issued.endswith("AAAA") else "BBBB")
    with pytest.raises(tokens.TokenError) as caught:
        tokens.verify(SECRET, forged)
    assert "signature" in caught.value.reason or "malformed" in caught.value.reason
