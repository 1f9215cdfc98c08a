from __future__ import annotations

import base64
import json
from typing import Any

import jsonschema
import numpy as np
import pytest

from streams import records
from streams.kafka import topics
from tests.samples import TS_US, all_records

ALL = all_records()


def test_samples_cover_every_record_type() -> None:
    covered = {type(record) for record in ALL}
    assert covered == set(records.JSON_RECORD_TYPES) | set(records.MEDIA_RECORD_TYPES)


@pytest.mark.parametrize("record", ALL, ids=lambda r: r.record_type)
def test_round_trip(record: records.AnyRecord) -> None:
    message = records.encode(record)
    assert message.headers[0] == (records.RECORD_HEADER, f"{record.record_type}/1".encode())
    decoded = records.decode(type(record), message.value, message.headers)
    assert decoded == record
    assert message.key == record.key


@pytest.mark.parametrize("record", ALL, ids=lambda r: r.record_type)
def test_json_schema_validates_a_real_encoded_record(record: records.AnyRecord) -> None:
    message = records.encode(record)
    if isinstance(record, records.AudioChunk | records.VideoFrame):
        model: type[records.Record] = type(record.header)
        document = json.loads(dict(message.headers)[records.MEDIA_HEADER])
    else:
        model = type(record)
        document = json.loads(message.value)
    schema = records.json_schema(model)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(document)
    # The schema is not vacuous: it rejects the record without its timestamp.
    del document["ts_us"]
    with pytest.raises(jsonschema.ValidationError, match="ts_us"):
        jsonschema.Draft202012Validator(schema).validate(document)


def _tag_json(**changes: object) -> bytes:
    tag = next(r for r in ALL if isinstance(r, records.TagEvent))
    document = json.loads(tag.model_dump_json())
    for dotted, value in changes.items():
        target = document
        *parents, leaf = dotted.split("__")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"ts_us": "123"}, "ts_us"),
        ({"ts_us": 1.5}, "ts_us"),
        ({"ts_us": -1}, "ts_us"),
        ({"label": "Not A Label"}, "label"),
        ({"session_id": "has/slash"}, "session_id"),
        ({"timing__rtt_us": -5}, "timing.rtt_us"),
        ({"rater_role": "producer"}, "rater_role"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_validation_errors_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(records.RecordError) as caught:
        records.decode(records.TagEvent, _tag_json(**changes))
    assert caught.value.reason.startswith(f"{field}:")
    assert str(caught.value).startswith("tag: ")


def test_cross_field_rules() -> None:
    with pytest.raises(records.RecordError, match="needs a label"):
        records.decode(records.TagEvent, _tag_json(label=None))
    with pytest.raises(records.RecordError, match="undoes_tag_id"):
        records.decode(records.TagEvent, _tag_json(action="undo"))
    with pytest.raises(records.RecordError, match="span_us"):
        records.decode(records.TagEvent, _tag_json(action="point"))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"\xff\xfe\x00", "not UTF-8"),
        (b"{not json", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (None, "empty message"),
    ],
)
def test_bad_bytes_raise_record_error(value: bytes | None, reason: str) -> None:
    with pytest.raises(records.RecordError, match=reason):
        records.decode(records.ProsodyHops, value)


def test_wrong_type_header_is_rejected() -> None:
    prosody = next(r for r in ALL if isinstance(r, records.ProsodyHops))
    message = records.encode(prosody)
    with pytest.raises(records.RecordError, match="expected 'face_frame/1'"):
        records.decode(records.FaceFrame, message.value, message.headers)


def test_json_record_without_headers_decodes() -> None:
    prosody = next(r for r in ALL if isinstance(r, records.ProsodyHops))
    assert records.decode(records.ProsodyHops, prosody.model_dump_json().encode()) == prosody


def test_media_payload_must_match_header() -> None:
    audio = next(r for r in ALL if isinstance(r, records.AudioChunk))
    message = records.encode(audio)
    with pytest.raises(records.RecordError, match="header says 320"):
        records.decode(records.AudioChunk, message.value[:-2], message.headers)
    with pytest.raises(records.RecordError, match="missing header livetag-header"):
        records.decode(records.AudioChunk, message.value, message.headers[:1])
    video = next(r for r in ALL if isinstance(r, records.VideoFrame))
    message = records.encode(video)
    with pytest.raises(records.RecordError, match="not a JPEG"):
        records.decode(records.VideoFrame, b"PNG..." + message.value, message.headers)


def test_session_rejects_duplicate_hotkeys() -> None:
    session = next(r for r in ALL if isinstance(r, records.SessionRecord))
    document = json.loads(session.model_dump_json())
    document["vocabulary"][1]["hotkey"] = document["vocabulary"][0]["hotkey"]
    with pytest.raises(records.RecordError, match="duplicate vocabulary hotkey 'l'"):
        records.decode(records.SessionRecord, json.dumps(document).encode())


def test_face_absent_frame_carries_nothing() -> None:
    with pytest.raises(ValueError, match="without a face"):
        records.FaceFrame(
            ts_us=TS_US,
            session_id="s",
            performer_id="p",
            video_seq=0,
            face_present=False,
            blendshapes={"jawOpen": 0.3},
        )


def test_a_skipped_face_frame_says_so_and_carries_nothing() -> None:
    common = {"ts_us": TS_US, "session_id": "s", "performer_id": "p", "video_seq": 0}
    skipped = records.FaceFrame(**common, face_present=None, skipped="late")
    assert records.decode(records.FaceFrame, *_value_and_headers(skipped)) == skipped
    with pytest.raises(ValueError, match="null exactly when"):
        records.FaceFrame(**common, face_present=None)  # not looked at, but no reason
    with pytest.raises(ValueError, match="null exactly when"):
        records.FaceFrame(**common, face_present=False, skipped="late")
    with pytest.raises(ValueError, match="without a face"):
        records.FaceFrame(**common, face_present=None, skipped="late", blendshapes={"a": 0.1})


def _value_and_headers(record: records.FaceFrame) -> tuple[bytes, list[tuple[str, bytes]]]:
    message = records.encode(record)
    return message.value, list(message.headers)


def test_landmarks_pack_to_float16_and_back() -> None:
    xyz = np.random.default_rng(1).random((478, 3))
    packed = records.Landmarks.from_xyz(xyz)
    assert len(base64.b64decode(packed.data)) == 478 * 3 * 2
    np.testing.assert_allclose(packed.xyz(), xyz, atol=5e-4)
    with pytest.raises(ValueError, match="expected 2868"):
        records.Landmarks(count=478, data=base64.b64encode(b"\0" * 10).decode())


def test_dead_letter_keeps_only_the_payload_head() -> None:
    letter = records.DeadLetter.of(
        ts_us=TS_US,
        source_topic=topics.TAGS,
        service="tests",
        reason="too big",
        payload=b"x" * 100_000,
    )
    assert letter.payload_size == 100_000
    assert len(base64.b64decode(letter.payload_head_b64)) == records.MAX_DEAD_LETTER_PAYLOAD


def test_infinite_numbers_are_rejected_not_encoded_as_null() -> None:
    prosody = next(r for r in ALL if isinstance(r, records.ProsodyHops))
    document = json.loads(prosody.model_dump_json())
    document["hops"][0]["loudness_db"] = float("-inf")
    # Refused by the JSON reader already (-Infinity is no JSON number), before the field.
    with pytest.raises(records.RecordError, match="-Infinity is not a JSON number"):
        records.decode(records.ProsodyHops, json.dumps(document).encode())


def test_deeply_nested_json_is_a_record_error() -> None:
    nested = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    with pytest.raises(records.RecordError, match=r"nested too deeply|not JSON"):
        records.decode(records.TagEvent, nested)


def _hops(count: int, start_us: int = 1_000_000) -> list[records.ProsodyFrame]:
    return [
        records.ProsodyFrame(
            ts_us=start_us + index * 10_000 + (index % 3),  # capture stamps, not a grid
            session_id="s1",
            performer_id="alice",
            f0_hz=180.0 + index if index % 2 else None,
            voicing_probability=0.9 if index % 2 else 0.1,
            voiced=bool(index % 2),
            loudness_db=-30.0 - index,
            voice_quality=None
            if index % 10 != 9
            else records.VoiceQuality(hnr_db=12.0, jitter_local=0.01, shimmer_local=0.03),
        )
        for index in range(count)
    ]


def test_prosody_hops_carry_each_hop_exactly() -> None:
    frames = _hops(12)
    carried = records.ProsodyHops.of(frames)
    message = records.encode(carried)
    decoded = records.decode(records.ProsodyHops, message.value, message.headers)
    assert decoded.ts_us == frames[0].ts_us
    assert decoded.frames() == frames  # every hop's own ts_us, voice quality where it was


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda doc: doc.update(ts_us=doc["ts_us"] + 1), "first hop's ts_us"),
        (lambda doc: doc["hops"][1].update(ts_us=doc["ts_us"]), "increasing ts_us"),
        (lambda doc: doc.update(hops=[]), "at least 1 item"),
        (
            lambda doc: doc.update(hops=doc["hops"] * (records.MAX_PROSODY_HOPS // 2 + 1)),
            "at most 500 items",
        ),
    ],
)
def test_prosody_hops_must_be_one_ordered_run(change: Any, reason: str) -> None:
    document = json.loads(records.ProsodyHops.of(_hops(2)).model_dump_json())
    change(document)
    with pytest.raises(records.RecordError, match=reason):
        records.decode(records.ProsodyHops, json.dumps(document).encode())
