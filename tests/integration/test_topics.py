from __future__ import annotations

import os
import subprocess
import sys

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams.kafka import topics
from streams.settings import Settings

pytestmark = pytest.mark.integration


def livetag(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LIVETAG_BROKER_PORT": str(settings.broker_port)},
        check=False,
    )


async def test_shared_topics_create_twice(admin: AIOKafkaAdminClient, settings: Settings) -> None:
    await topics.ensure_shared_topics(admin, settings)
    assert await topics.ensure_shared_topics(admin, settings) == []
    shared = {spec.name for spec in topics.shared_topics(settings)}
    assert shared <= set(await topics.list_livetag_topics(admin))
    described = await admin.describe_topics([topics.TAGS, topics.SESSIONS])
    partitions = {d["topic"]: len(d["partitions"]) for d in described}
    assert partitions == {topics.TAGS: settings.partitions, topics.SESSIONS: 1}


def test_cli_topics_create_is_idempotent_and_list_prints_names(settings: Settings) -> None:
    first = livetag(settings, "topics", "create")
    second = livetag(settings, "topics", "create")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == [
        f"{spec.name}\texists" for spec in topics.shared_topics(settings)
    ]
    listed = livetag(settings, "topics", "list")
    assert listed.returncode == 0, listed.stderr
    names = listed.stdout.splitlines()
    assert all(name.startswith("livetag.") for name in names)
    assert {topics.SESSIONS, topics.TAGS, topics.LABELS, topics.DEADLETTER} <= set(names)


def test_cli_explains_an_unreachable_broker(settings: Settings) -> None:
    result = livetag(settings, "topics", "list", "--bootstrap", "127.0.0.1:1")
    assert result.returncode == 4  # unavailable
    assert "cannot reach Kafka at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


async def test_session_topic_set_is_created_and_deleted(
    admin: AIOKafkaAdminClient, settings: Settings, session_id: str
) -> None:
    names = await topics.create_session_topics(admin, settings, session_id)
    expected = {getattr(names, stream) for stream in topics.SESSION_STREAMS}
    assert names.model in expected
    assert expected <= set(await topics.list_livetag_topics(admin))
    again = await topics.create_session_topics(admin, settings, session_id)
    assert again == names
    described = await admin.describe_topics(sorted(expected))
    assert {len(d["partitions"]) for d in described} == {settings.partitions}
    deleted = await topics.delete_session_topics(admin, session_id)
    assert set(deleted) == expected
    assert not expected & set(await topics.list_livetag_topics(admin))
    assert await topics.delete_session_topics(admin, session_id) == []
