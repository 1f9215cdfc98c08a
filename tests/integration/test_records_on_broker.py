from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest

from streams import records
from streams.kafka import clients, topics
from streams.settings import Settings
from tests.samples import all_records

pytestmark = pytest.mark.integration


def _topic_for(record: records.AnyRecord, names: records.SessionTopics) -> str:
    assert names.model is not None, "a new session has a model topic"
    by_type: dict[type[records.AnyRecord], str] = {
        records.SessionRecord: topics.SESSIONS,
        records.TagEvent: topics.TAGS,
        records.LabelWindow: topics.LABELS,
        records.DeadLetter: topics.DEADLETTER,
        records.PipelineCounters: topics.HEALTH,
        records.TokenRevocation: topics.REVOCATIONS,
        records.AudioChunk: names.audio,
        records.VideoFrame: names.video,
        records.ProsodyHops: names.prosody,
        records.FaceFrame: names.face,
        records.RatingBatch: topics.RATINGS,
        records.RaterLag: topics.RATERS,
        records.ModelReading: names.model,
        records.ScenarioRecord: topics.SCENARIOS,
        records.Cue: topics.CUES,
        records.Coverage: topics.COVERAGE,
        records.LobbyPresence: topics.LOBBY,
        records.CastingDay: topics.CASTING,
    }
    return by_type[type(record)]


async def test_every_record_type_through_aiokafka(
    settings: Settings, session_topics: records.SessionTopics, session_id: str
) -> None:
    sent = all_records(session_id=session_id)
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        async with clients.admin_client(settings) as admin:
            await topics.ensure_shared_topics(admin, settings)
        for record in sent:
            message = records.encode(record)
            await producer.send_and_wait(
                _topic_for(record, session_topics),
                message.value,
                key=message.key,
                headers=message.headers,
            )
    finally:
        await producer.stop()

    wanted = {_topic_for(record, session_topics) for record in sent}
    consumer = clients.make_consumer(settings, *sorted(wanted), group_id=f"g-{session_id}")
    received: list[records.AnyRecord] = []
    await consumer.start()
    try:
        async with asyncio.timeout(20):
            while len(received) < len(sent):
                batches = await consumer.getmany(timeout_ms=200)
                for batch in batches.values():
                    for message in batch:
                        # Shared topics hold other tests' records, hostile ones included
                        # (e.g. counters past 64 bits): only this session's are decoded.
                        if session_id.encode() not in (message.key or b""):
                            continue
                        record_type = topics.record_type_of(message.topic)
                        received.append(records.decode(record_type, message.value, message.headers))
    finally:
        await consumer.stop()
    # Shared topics hold other tests' records too; this session's are all there, intact.
    for record in sent:
        assert record in received, record.record_type
    assert len(received) == len(sent)


async def test_tail_prints_an_error_line_for_a_malformed_record_and_goes_on(
    settings: Settings, session_topics: records.SessionTopics, session_id: str
) -> None:
    good = [r for r in all_records(session_id=session_id) if isinstance(r, records.ProsodyHops)]
    producer = clients.make_producer(settings)
    await producer.start()
    key = f"{session_id}/alice".encode()
    try:
        # Same key, so one partition and a fixed order: good, malformed, wrong type, good.
        first = records.encode(good[0])
        await producer.send_and_wait(
            session_topics.prosody, first.value, key=key, headers=first.headers
        )
        await producer.send_and_wait(session_topics.prosody, b"\xff{not json", key=key)
        await producer.send_and_wait(session_topics.prosody, b'{"ts_us": "soon"}', key=key)
        await producer.send_and_wait(session_topics.prosody, first.value, key=key)
    finally:
        await producer.stop()

    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "infra",
            "tail",
            "prosody",
            "--session",
            session_id,
            "--performer",
            "alice",
            "--from-beginning",
            "--max",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LIVETAG_BROKER_PORT": str(settings.broker_port)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(lines) == 4
    assert lines[0]["record_type"] == "prosody_hops"
    assert lines[0]["hops"][0]["f0_hz"] == good[0].hops[0].f0_hz
    assert lines[1]["error"].startswith("not UTF-8")
    assert lines[1]["topic"] == session_topics.prosody
    assert "ts_us: Input should be a valid integer" in lines[2]["error"]
    assert lines[3]["ts_us"] == good[0].ts_us


async def test_tail_of_a_missing_topic_is_a_clear_error(settings: Settings) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "infra", "tail", "face", "--session", "never-created", "--max", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LIVETAG_BROKER_PORT": str(settings.broker_port)},
        check=False,
    )
    assert result.returncode == 2  # bad input: no such topic
    assert "livetag.features.face.never-created does not exist" in result.stderr
