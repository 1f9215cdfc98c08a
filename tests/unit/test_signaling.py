from __future__ import annotations

import json

import pytest

from capture import signaling


def test_valid_messages_parse() -> None:
    publish = signaling.parse_page_message('{"type": "publish", "sdp": "v=0"}', max_bytes=1000)
    assert isinstance(publish, signaling.Publish)
    subscribe = signaling.parse_page_message(
        json.dumps({"type": "subscribe", "performer_id": "bob", "sdp": "v=0"}), max_bytes=1000
    )
    assert isinstance(subscribe, signaling.Subscribe)
    assert subscribe.performer_id == "bob"


@pytest.mark.parametrize(
    ("raw", "code", "detail"),
    [
        ("x" * 2000, "too_large", "exceeds 1000"),
        ("{not json", "malformed", "not JSON"),
        (b"\xff\xfe", "malformed", "not UTF-8"),
        ('{"type": "dance"}', "malformed", "type"),
        ('{"type": "publish"}', "malformed", "publish.sdp: Field required"),
        ('{"type": "publish", "sdp": 5}', "malformed", "publish.sdp"),
        (
            '{"type": "subscribe", "performer_id": "../x", "sdp": "v=0"}',
            "malformed",
            "performer_id",
        ),
        ('{"type": "publish", "sdp": "v=0", "extra": 1}', "malformed", "extra"),
        ("[]", "malformed", ""),
    ],
)
def test_bad_messages_get_a_code_and_a_reason(raw: str | bytes, code: str, detail: str) -> None:
    with pytest.raises(signaling.SignalingError) as caught:
        signaling.parse_page_message(raw, max_bytes=1000)
    assert caught.value.code == code
    assert detail in caught.value.message


def test_deeply_nested_json_is_malformed() -> None:
    nested = '{"a":' * 100_000 + "1" + "}" * 100_000
    with pytest.raises(signaling.SignalingError) as caught:
        signaling.parse_page_message(nested, max_bytes=10_000_000)
    assert caught.value.code == "malformed"


def test_a_publish_names_its_page_with_a_random_id_or_not_at_all() -> None:
    page = "0123456789abcdef0123456789abcdef"
    raw = json.dumps({"type": "publish", "sdp": "v=0", "page_id": page})
    named = signaling.parse_page_message(raw, max_bytes=1000)
    assert isinstance(named, signaling.Publish)
    assert named.page_id == page
    unnamed = signaling.parse_page_message('{"type": "publish", "sdp": "v=0"}', max_bytes=1000)
    assert isinstance(unnamed, signaling.Publish)
    assert unnamed.page_id is None
    for bad in ("short", "x" * 65, "../../etc/passwd-000000", 5):
        raw = json.dumps({"type": "publish", "sdp": "v=0", "page_id": bad})
        with pytest.raises(signaling.SignalingError) as caught:
            signaling.parse_page_message(raw, max_bytes=1000)
        assert caught.value.code == "malformed"
        assert "page_id" in caught.value.message
