from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest

from streams import records
from streams.kafka import topics
from streams.settings import Settings


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


@pytest.mark.parametrize(("replicas", "insync"), [(1, "1"), (2, "1"), (3, "2"), (5, "4")])
def test_topics_are_created_with_min_insync_replicas_for_the_replication_factor(
    replicas: int, insync: str
) -> None:
    settings = Settings(replication_factor=replicas, session_topic_retention_days=1)
    specs = topics.shared_topics(settings) + topics.session_topics(settings, "s1")
    for spec in specs:
        configs = topics.creation_configs(spec, replicas)
        assert configs["min.insync.replicas"] == insync, spec.name
        # The topic's own configs are kept as they are.
        assert {k: v for k, v in configs.items() if k != "min.insync.replicas"} == spec.configs


async def test_topic_creation_sends_min_insync_replicas_to_the_cluster() -> None:
    class RecordingAdmin:
        """What the admin client was asked to create (a unit test: no broker)."""

        def __init__(self) -> None:
            self.created: list[Any] = []

        async def list_topics(self) -> list[str]:
            return []

        async def create_topics(self, new_topics: list[Any]) -> Any:
            self.created.extend(new_topics)
            return SimpleNamespace(topic_errors=[(t.name, 0, None) for t in new_topics])

    admin = RecordingAdmin()
    settings = Settings(replication_factor=3)
    await topics.ensure_shared_topics(cast(Any, admin), settings)
    await topics.create_session_topics(cast(Any, admin), settings, "s1")
    assert len(admin.created) == len(topics.shared_topics(settings)) + len(topics.SESSION_STREAMS)
    for new_topic in admin.created:
        assert new_topic.replication_factor == 3
        assert new_topic.topic_configs["min.insync.replicas"] == "2", new_topic.name
