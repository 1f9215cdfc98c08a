from __future__ import annotations

import pytest

from infra.settings import Settings
from streams import records, topics


def test_session_topic_names_follow_the_catalogue() -> None:
    names = topics.session_topic_names("scene-7")
    assert names.audio == "livetag.media.audio.scene-7"
    assert names.video == "livetag.media.video.scene-7"
    assert names.prosody == "livetag.features.prosody.scene-7"
    assert names.face == "livetag.features.face.scene-7"


@pytest.mark.parametrize("bad", ["", "Scene", "a/b", "-lead", "x" * 49, "a.b"])
def test_session_ids_must_be_topic_safe(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid session id"):
        topics.session_topic("audio", bad)


def test_record_type_of_every_topic() -> None:
    assert topics.record_type_of(topics.TAGS) is records.TagEvent
    assert topics.record_type_of("livetag.media.video.s1") is records.VideoFrame
    assert topics.record_type_of("livetag.features.face.s1") is records.FaceFrame
    with pytest.raises(ValueError, match="not a livetag topic"):
        topics.record_type_of("livetag.media.video.Bad/Id")


def test_resolve_short_names() -> None:
    assert topics.resolve_topic("labels") == topics.LABELS
    assert topics.resolve_topic("prosody", "s1") == "livetag.features.prosody.s1"
    with pytest.raises(ValueError, match="give the session id"):
        topics.resolve_topic("audio")


def test_keyed_topics_share_one_partition_count() -> None:
    settings = Settings(partitions=6)
    keyed = [t for t in topics.shared_topics(settings) if t.name in (topics.TAGS, topics.LABELS)]
    keyed += topics.session_topics(settings, "s1")
    assert {t.partitions for t in keyed} == {6}


def test_session_retention_only_when_configured() -> None:
    assert "retention.ms" not in topics.session_topics(Settings(), "s1")[0].configs
    kept = topics.session_topics(Settings(session_topic_retention_days=2), "s1")[0]
    assert kept.configs["retention.ms"] == str(2 * 24 * 3600 * 1000)
