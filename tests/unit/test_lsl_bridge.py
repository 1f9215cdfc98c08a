"""The LSL bridge without a network: layouts, descriptions, the clock mapping, record ->
sample conversion, dedupe and malformed input."""

from __future__ import annotations

import base64
import json
import math
import random
import time
import xml.etree.ElementTree as ET
from typing import Any

import pylsl  # type: ignore[import-untyped]
import pytest
from aiokafka import ConsumerRecord

from streams import records
from streams.bridges.lsl import (
    BLENDSHAPE_NAMES,
    STREAM_KINDS,
    BridgeCore,
    ClockMapping,
    RecentInstants,
    description,
    face_sample,
    label_sample,
    layouts_for,
    marker_tags,
    measure_clock_mapping,
    prosody_sample,
    refused_marker_letter,
    stream_info,
    tag_sample,
)
from streams.kafka import topics
from tests import samples

SID = "s-1"
CLOCK = ClockMapping(offset_us=samples.TS_US - 5_000_000_000, uncertainty_us=3)


def session() -> records.SessionRecord:
    record = samples.all_records(SID)[0]
    assert isinstance(record, records.SessionRecord)
    return record


def sample_of(record_type: type[records.Record]) -> Any:
    return next(r for r in samples.all_records(SID) if isinstance(r, record_type))


def message(record: records.AnyRecord, topic: str, offset: int = 0) -> ConsumerRecord[bytes, bytes]:
    encoded = records.encode(record)
    return raw_message(topic, encoded.key, encoded.value, offset, encoded.headers)


def raw_message(
    topic: str,
    key: bytes,
    value: bytes,
    offset: int = 0,
    headers: list[tuple[str, bytes]] | None = None,
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topic,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key),
        serialized_value_size=len(value),
        headers=headers or [],
    )


def same(left: list[float], right: list[float]) -> bool:
    """Equal, NaN equal to NaN."""
    return len(left) == len(right) and all(
        (math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(left, right, strict=True)
    )


# ---------------------------------------------------------------- layouts and descriptions


def test_each_performer_gets_four_streams_with_stable_names_types_and_source_ids() -> None:
    layouts = layouts_for(session(), "alice", face_rate_hz=12.5)
    by_kind = {layout.kind: layout for layout in layouts}
    assert list(by_kind) == list(STREAM_KINDS)
    assert {k: v.source_id for k, v in by_kind.items()} == {
        kind: f"livetag:{SID}:alice:{kind}" for kind in STREAM_KINDS
    }
    assert {k: v.name for k, v in by_kind.items()} == {
        kind: f"livetag-alice-{kind}" for kind in STREAM_KINDS
    }
    assert by_kind["tags"].type == "Markers"
    assert by_kind["tags"].channel_format == "string"
    assert by_kind["prosody"].nominal_srate == 100.0
    assert by_kind["face"].nominal_srate == 12.5
    assert by_kind["labels"].nominal_srate == pylsl.IRREGULAR_RATE
    assert by_kind["tags"].nominal_srate == pylsl.IRREGULAR_RATE
    # Another run (another clock, later) declares the very same streams.
    assert layouts_for(session(), "alice", face_rate_hz=12.5) == layouts


def test_channels_cover_the_hop_fields_the_blendshapes_and_the_vocabulary() -> None:
    by_kind = {layout.kind: layout for layout in layouts_for(session(), "bob", face_rate_hz=15)}
    prosody = [c.label for c in by_kind["prosody"].channels]
    # Every measured field of a hop has a channel (voice quality's window length aside).
    quality = set(records.VoiceQuality.model_fields) - {"window_us"}
    hop = set(records.HopMeasures.model_fields) - {"voice_quality"}
    assert set(prosody) == hop | quality
    face = [c.label for c in by_kind["face"].channels]
    assert face[:4] == ["face_present", "head_yaw_deg", "head_pitch_deg", "head_roll_deg"]
    assert face[4:] == list(BLENDSHAPE_NAMES)
    labels = [c.label for c in by_kind["labels"].channels]
    assert labels[-2:] == ["raters_laughter", "raters_hesitation"]
    assert by_kind["labels"].vocabulary == ("laughter", "hesitation")
    for layout in by_kind.values():
        assert len({c.label for c in layout.channels}) == len(layout.channels)
        assert all(c.label and c.unit and c.type for c in layout.channels)


def test_blendshape_names_are_mediapipes_categories_in_its_order() -> None:
    from mediapipe.tasks.python.vision.face_landmarker import Blendshapes

    def category(enum_name: str) -> str:
        # The model's category names are the enum's names in camelCase; NEUTRAL is
        # "_neutral" (streams.features.face reads category_name from the model's output).
        if enum_name == "NEUTRAL":
            return "_neutral"
        first, *rest = enum_name.lower().split("_")
        return first + "".join(part.title() for part in rest)

    assert tuple(category(b.name) for b in sorted(Blendshapes)) == BLENDSHAPE_NAMES


def test_the_xml_description_follows_the_xdf_channel_conventions() -> None:
    record = session()
    for layout in layouts_for(record, "alice", face_rate_hz=15):
        info = stream_info(
            layout, description(layout, CLOCK, record, source_topic="livetag.somewhere")
        )
        root = ET.fromstring(info.as_xml())
        assert root.findtext("name") == layout.name
        assert root.findtext("type") == layout.type
        assert root.findtext("source_id") == layout.source_id
        assert int(root.findtext("channel_count") or 0) == len(layout.channels)
        assert root.findtext("channel_format") == layout.channel_format
        channels = root.findall("desc/channels/channel")
        assert [
            (c.findtext("label"), c.findtext("unit"), c.findtext("type")) for c in channels
        ] == [(c.label, c.unit, c.type) for c in layout.channels]
        assert info.get_channel_labels() == [c.label for c in layout.channels]
        acquisition = root.find("desc/acquisition")
        assert acquisition is not None
        assert acquisition.findtext("manufacturer") == "livetag"
        assert acquisition.findtext("session_id") == SID
        assert acquisition.findtext("performer_id") == "alice"
        assert acquisition.findtext("performer_name") == "Alice"
        assert acquisition.findtext("stream") == layout.kind
        assert acquisition.findtext("source_topic") == "livetag.somewhere"
        assert int(root.findtext("desc/clock/offset_us") or 0) == CLOCK.offset_us
        assert int(root.findtext("desc/clock/offset_uncertainty_us") or -1) == 3
        if layout.kind == "labels":
            assert [e.text for e in root.findall("desc/vocabulary/label")] == [
                "laughter",
                "hesitation",
            ]


# ---------------------------------------------------------------- the clock mapping


def test_the_clock_mapping_is_exact_both_ways() -> None:
    rng = random.Random(3)
    mapping = ClockMapping(offset_us=1_764_000_000_000_000 - 86_400_000_000 * 30)
    for _ in range(10_000):
        ts_us = 1_764_000_000_000_000 + rng.randrange(-(10**12), 10**12)
        lsl_s = mapping.to_lsl_s(ts_us)
        assert mapping.to_session_us(lsl_s) == ts_us
        assert abs(lsl_s - (ts_us - mapping.offset_us) / 1e6) < 1e-9
    assert mapping.to_lsl_s(mapping.offset_us + 1_234_567) == 1.234567


def test_the_mapping_never_lands_on_the_timestamps_liblsl_reads_as_now_or_deduced() -> None:
    mapping = ClockMapping(offset_us=5_000_000)
    assert mapping.to_lsl_s(5_000_000) > 0.0
    assert mapping.to_lsl_s(4_000_000) != -1.0
    assert mapping.to_session_us(mapping.to_lsl_s(5_000_000)) == 5_000_000
    assert mapping.to_session_us(mapping.to_lsl_s(4_000_000)) == 4_000_000


def test_the_offset_is_taken_from_the_tightest_bracket() -> None:
    # Three tries: brackets of 40 us, 2 us and 10 us around wall readings.
    lsl = iter([100.0, 100.00004, 200.0, 200.000002, 300.0, 300.00001])
    walls = iter([1_000_000_000_000, 2_000_000_123_000, 3_000_000_000_000])
    mapping = measure_clock_mapping(lambda: next(lsl), lambda: next(walls), tries=3)
    assert mapping.offset_us == 2_000_000_123 - 200_000_001
    assert mapping.uncertainty_us == 1
    assert mapping.measured_at_lsl_s == pytest.approx(200.000001)


def test_the_measured_offset_agrees_with_the_clocks_read_naively() -> None:
    mapping = measure_clock_mapping()
    # Wall first, then LSL: a pause between the two reads only makes the difference
    # smaller, so the largest of many is the closest.
    naive_us = max(time.time() * 1e6 - pylsl.local_clock() * 1e6 for _ in range(200))
    assert abs(mapping.offset_us - naive_us) < 1_000
    assert 0 <= mapping.uncertainty_us < 1_000


# ---------------------------------------------------------------- record -> sample


def test_a_prosody_hop_becomes_its_values_with_nan_for_what_it_lacks() -> None:
    hops: records.ProsodyHops = sample_of(records.ProsodyHops)
    assert prosody_sample(hops.hops[0]) == [212.5, 0.93, 1.0, -23.4, 14.2, 0.011, 0.04]
    assert same(prosody_sample(hops.hops[1]), [math.nan, 0.12, 0.0, -61.0] + [math.nan] * 3)
    partial = hops.hops[0].model_copy(
        update={
            "voice_quality": records.VoiceQuality(
                hnr_db=None, jitter_local=0.02, shimmer_local=None
            )
        }
    )
    assert same(prosody_sample(partial)[4:], [math.nan, 0.02, math.nan])


def test_a_face_frame_becomes_presence_pose_and_blendshapes_by_name() -> None:
    frame: records.FaceFrame = sample_of(records.FaceFrame)
    labels = [c.label for c in layouts_for(session(), "alice", face_rate_hz=15)[1].channels]
    values = dict(zip(labels, face_sample(frame), strict=True))
    assert values["face_present"] == 1.0
    assert (values["head_yaw_deg"], values["head_pitch_deg"], values["head_roll_deg"]) == (
        -4.0,
        2.5,
        0.3,
    )
    assert values["mouthSmileLeft"] == 0.81
    assert values["mouthSmileRight"] == 0.77
    assert values["eyeBlinkLeft"] == 0.02
    assert math.isnan(values["jawOpen"])  # not in the record
    no_face = frame.model_copy(
        update={"face_present": False, "landmarks": None, "blendshapes": {}, "head_pose": None}
    )
    assert same(face_sample(no_face), [0.0] + [math.nan] * (len(labels) - 1))
    skipped = no_face.model_copy(update={"face_present": None, "skipped": "late"})
    assert same(face_sample(skipped), [math.nan] * len(labels))


def test_a_label_window_counts_raters_per_label_and_indexes_the_consensus() -> None:
    window: records.LabelWindow = sample_of(records.LabelWindow)
    second = records.RaterLabels(
        rater_id="carol",
        rater_role="observer",
        labels=[
            records.ActiveLabel(label="laughter", intensity="normal", tag_id="tag-carol-1"),
            # Two tags of one rater holding the same label count as one rater.
            records.ActiveLabel(label="laughter", intensity="strong", tag_id="tag-carol-2"),
            records.ActiveLabel(label="hesitation", intensity="normal", tag_id="tag-carol-3"),
        ],
    )
    revised = window.model_copy(
        update={
            "raters": [*window.raters, second],
            "revision": 2,
            "correction": True,
            "missing": {"face": "no_media"},
        }
    )
    layout = layouts_for(session(), "alice", face_rate_hz=15)[2]
    values = dict(
        zip(
            [c.label for c in layout.channels],
            label_sample(revised, layout.vocabulary),
            strict=True,
        )
    )
    assert values["revision"] == 2.0
    assert values["correction"] == 1.0
    assert values["consensus"] == 0.0  # laughter, the vocabulary's first label
    assert values["consensus_agreement"] == 1.0
    assert values["f0_mean_hz"] == 208.0
    assert values["loudness_mean_db"] == -24.0
    assert values["voiced_fraction"] == 0.8
    assert values["head_yaw_deg"] == -4.0
    assert values["raters_laughter"] == 2.0
    assert values["raters_hesitation"] == 1.0
    assert values["prosody_missing"] == 0.0
    assert values["face_missing"] == 3.0  # no_media
    nothing = window.model_copy(update={"consensus": None, "consensus_agreement": None})
    bare = label_sample(nothing, layout.vocabulary)
    assert math.isnan(bare[2])  # consensus
    assert math.isnan(bare[3])  # its agreement


def test_a_tag_marker_is_the_tag_records_own_json() -> None:
    tag: records.TagEvent = sample_of(records.TagEvent)
    (text,) = tag_sample(tag)
    assert records.decode(records.TagEvent, text.encode()) == tag
    assert json.loads(text)["label"] == "laughter"


# ---------------------------------------------------------------- the core


def test_the_core_pushes_each_record_once_with_mapped_timestamps() -> None:
    record = session()
    core = BridgeCore(record, CLOCK, face_rate_hz=15)
    hops: records.ProsodyHops = sample_of(records.ProsodyHops)
    (push,) = core.take(message(hops, record.topics.prosody))
    assert push.key == ("alice", "prosody")
    assert push.timestamps == [CLOCK.to_lsl_s(hop.ts_us) for hop in hops.hops]
    assert push.samples[0] == prosody_sample(hops.hops[0])
    # Re-delivered (a restarted processor): the hops already pushed are not pushed again.
    assert core.take(message(hops, record.topics.prosody, offset=1)) == []
    # A hop stamped before the last one, after the capture clock was re-anchored, is new.
    earlier = records.ProsodyHops.of(
        [hops.frames()[0].model_copy(update={"ts_us": hops.ts_us - 3})]
    )
    (push,) = core.take(message(earlier, record.topics.prosody, offset=2))
    assert push.timestamps == [CLOCK.to_lsl_s(hops.ts_us - 3)]
    frame: records.FaceFrame = sample_of(records.FaceFrame)
    assert len(core.take(message(frame, record.topics.face))) == 1
    assert core.take(message(frame, record.topics.face, offset=1)) == []
    window: records.LabelWindow = sample_of(records.LabelWindow)
    assert len(core.take(message(window, topics.LABELS))) == 1
    assert core.take(message(window, topics.LABELS, offset=1)) == []  # same revision
    revised = window.model_copy(update={"revision": 1, "correction": True})
    (push,) = core.take(message(revised, topics.LABELS, offset=2))
    assert push.timestamps == [CLOCK.to_lsl_s(window.ts_us)]  # the window's own instant
    tag: records.TagEvent = sample_of(records.TagEvent)
    (push,) = core.take(message(tag, topics.TAGS))
    assert push.key == ("alice", "tags")
    assert push.samples == [tag_sample(tag)]
    assert core.take(message(tag, topics.TAGS, offset=1)) == []
    assert dict(core.counts.samples) == {"prosody": 3, "face": 1, "labels": 2, "tags": 1}
    assert dict(core.counts.duplicates) == {"prosody": 2, "face": 1, "labels": 1, "tags": 1}


def test_malformed_records_are_counted_never_raised() -> None:
    record = session()
    core = BridgeCore(record, CLOCK, face_rate_hz=15)
    key = f"{SID}/alice".encode()
    bad = [
        raw_message(record.topics.prosody, key, b"\xff\xfe not json"),
        raw_message(record.topics.face, key, b'{"ts_us": 1}'),
        raw_message(topics.LABELS, key, b"[]"),
        raw_message(topics.TAGS, key, b'{"ts_us": -5}'),
        raw_message(topics.TAGS, key, b'{"ts_us": 1e999}'),
        raw_message(
            record.topics.prosody,
            key,
            records.encode(sample_of(records.ProsodyHops)).value,
            headers=[(records.RECORD_HEADER, b"face_frame/1")],
        ),
    ]
    for item in bad:
        assert core.take(item) == []
    assert dict(core.counts.malformed) == {"prosody": 2, "face": 1, "labels": 1, "tags": 2}
    assert sum(core.counts.samples.values()) == 0
    lines = core.counts.lines()
    assert "malformed\tprosody\t2" in lines
    assert "malformed\ttags\t2" in lines
    assert "samples\tface\t0" in lines


def test_other_sessions_and_performers_off_the_roster_are_not_published() -> None:
    record = session()
    core = BridgeCore(record, CLOCK, face_rate_hz=15)
    other = samples.all_records("s-2")
    window = next(r for r in other if isinstance(r, records.LabelWindow))
    assert core.take(message(window, topics.LABELS)) == []
    garbage_elsewhere = raw_message(topics.LABELS, b"s-2/alice", b"not json")
    assert core.take(garbage_elsewhere) == []  # another session's trouble
    assert sum(core.counts.malformed.values()) == 0
    stranger: records.TagEvent = sample_of(records.TagEvent).model_copy(
        update={"performer_id": "zed", "tag_id": "tag-for-zed-1"}
    )
    assert core.take(message(stranger, topics.TAGS)) == []
    assert core.counts.unknown_performer["tags"] == 1


def test_a_performer_added_to_the_roster_gets_streams() -> None:
    record = session()
    core = BridgeCore(record, CLOCK, face_rate_hz=15)
    assert {key[0] for key in core.layouts} == {"alice", "bob"}
    assert core.update_session(record) == []
    later = record.model_copy(
        update={
            "ts_us": record.ts_us + 1,
            "roster": [*record.roster, records.Performer(performer_id="carol", display_name="C")],
        }
    )
    new = core.update_session(later)
    assert [(layout.performer_id, layout.kind) for layout in new] == [
        ("carol", kind) for kind in STREAM_KINDS
    ]
    tag: records.TagEvent = sample_of(records.TagEvent).model_copy(update={"performer_id": "carol"})
    (push,) = core.take(message(tag, topics.TAGS))
    assert push.key == ("carol", "tags")


def test_recent_instants_forget_only_the_oldest() -> None:
    recent = RecentInstants(keep=3)
    assert [recent.add(ts) for ts in (10, 20, 10, 30, 40)] == [True, True, False, True, True]
    assert recent.add(10)  # the oldest of four was forgotten
    assert not recent.add(40)


# ---------------------------------------------------------------- markers -> tags


def test_a_marker_becomes_one_point_tag_per_performer_on_the_session_clock() -> None:
    record = session()
    lsl_s = 61_234.567891
    tags = marker_tags(
        record,
        " laughter ",
        lsl_s,
        CLOCK,
        rater_id="stimulus",
        performer_id=None,
        span_us=500_000,
        stream_uid="uid-1",
        received_us=samples.TS_US,
    )
    assert [tag.performer_id for tag in tags] == ["alice", "bob"]
    for tag in tags:
        assert tag.ts_us == 61_234_567_891 + CLOCK.offset_us
        assert CLOCK.to_lsl_s(tag.ts_us) == lsl_s
        assert (tag.action, tag.label, tag.span_us) == ("point", "laughter", 500_000)
        assert (tag.rater_id, tag.rater_role) == ("stimulus", "observer")
        assert tag.timing.client_press_ts_us + tag.timing.clock_offset_us == tag.ts_us
        assert tag.timing.clock_uncertainty_us == CLOCK.uncertainty_us
    assert len({tag.tag_id for tag in tags}) == 2
    again = marker_tags(
        record,
        "laughter",
        lsl_s,
        CLOCK,
        rater_id="stimulus",
        performer_id="bob",
        span_us=500_000,
        stream_uid="uid-1",
        received_us=samples.TS_US + 5,
    )
    assert [tag.tag_id for tag in again] == [tags[1].tag_id]  # the same marker, the same id


def test_a_marker_outside_the_vocabulary_is_refused_with_a_dead_letter() -> None:
    record = session()
    with pytest.raises(ValueError, match="'gasp' is not in session s-1's vocabulary"):
        marker_tags(
            record,
            "gasp",
            1.0,
            CLOCK,
            rater_id="stimulus",
            performer_id=None,
            span_us=1,
            stream_uid="u",
            received_us=1,
        )
    with pytest.raises(ValueError, match="not on session s-1's roster"):
        marker_tags(
            record,
            "laughter",
            1.0,
            CLOCK,
            rater_id="stimulus",
            performer_id="zed",
            span_us=1,
            stream_uid="u",
            received_us=1,
        )
    letter = refused_marker_letter(SID, "stimuli", "gasp", 12.5, "not in the vocabulary", 7)
    assert letter.source_topic == "lsl:s-1:stimuli"
    assert letter.service == "lsl-bridge"
    assert letter.reason == "not in the vocabulary"
    assert json.loads(base64.b64decode(letter.payload_head_b64)) == {
        "stream": "stimuli",
        "marker": "gasp",
        "lsl_timestamp": 12.5,
    }
