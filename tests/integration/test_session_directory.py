"""The session directory on the real broker against hostile records on livetag.sessions
(issue 20): it skips, counts and dead-letters them, and keeps following."""

from __future__ import annotations

import asyncio

import aiokafka.producer.message_accumulator
import aiokafka.producer.producer
import pytest
from aiokafka import TopicPartition
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import SessionDirectory, publish
from streams.settings import Settings
from tests.samples import all_records

pytestmark = pytest.mark.integration


def _session(session_id: str) -> records.SessionRecord:
    record = all_records(session_id=session_id)[0]
    assert isinstance(record, records.SessionRecord)
    return record


def _hostile_values(valid: records.SessionRecord) -> list[bytes]:
    text = records.encode(valid).value
    return [
        # A 5000-digit number: Python's int() raises a plain ValueError past 4300 digits.
        text.replace(f'"ts_us":{valid.ts_us}'.encode(), b'"ts_us":' + b"7" * 5000),
        text.replace(b'"prompt":"', b'"prompt":"\xff\xfe'),  # not UTF-8
        b'{"session_id":' * 100_000 + b"1" + b"}" * 100_000,  # nested 100000 deep
    ]


class _NotUtf8Name(str):
    """A header name that goes on the wire as bytes that are not UTF-8 (as another
    language's client may send): aiokafka then fails on the whole fetch that holds it."""

    __slots__ = ()

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfe"


async def _send_with_unreadable_header(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, key: bytes
) -> int:
    """Produce a record with a header name that is not UTF-8; its offset. aiokafka's own
    pure-Python batch builder writes the name as the str's ``encode`` gives it (its C one
    refuses str subclasses)."""
    with monkeypatch.context() as patch:
        for module in (aiokafka.producer.producer, aiokafka.producer.message_accumulator):
            patch.setattr(module, "DefaultRecordBatchBuilder", _DefaultRecordBatchBuilderPy)
        producer = clients.make_producer(settings)
        await producer.start()
        try:
            sent = await producer.send_and_wait(
                topics.SESSIONS, b"{}", key=key, headers=[(_NotUtf8Name("x"), b"v")]
            )
        finally:
            await producer.stop()
    return int(sent.offset)


async def _dead_letters(
    settings: Settings, since: int, service: str, count: int
) -> list[records.DeadLetter]:
    """The first ``count`` dead letters of ``service`` on livetag.deadletter from ``since``."""
    consumer = clients.make_consumer(settings)
    await consumer.start()
    partition = TopicPartition(topics.DEADLETTER, 0)
    found: list[records.DeadLetter] = []
    try:
        consumer.assign([partition])
        consumer.seek(partition, since)
        async with asyncio.timeout(20):
            while len(found) < count:
                batches = await consumer.getmany(partition, timeout_ms=500)
                for message in batches.get(partition, []):
                    letter = records.decode(records.DeadLetter, message.value, message.headers)
                    if letter.service == service:
                        found.append(letter)
    finally:
        await consumer.stop()
    return found


async def test_hostile_session_records_are_skipped_counted_and_dead_lettered(
    settings: Settings, session_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with clients.admin_client(settings) as admin:
        await topics.ensure_shared_topics(admin, settings)
    valid = _session(session_id)
    # Another session's good record, right before an unreadable one (read in one fetch).
    neighbour = _session(f"{session_id}-n")
    service = f"test-directory-{session_id}"
    producer = clients.make_producer(settings)
    await producer.start()
    directory = SessionDirectory(settings, dead_letters=producer, service=service)
    try:
        await directory.start()
        following = directory._task
        assert following is not None
        before = directory.undecodable
        letters_from = (await _end_offsets(settings))[0]
        offsets = []
        headers = records.encode(valid).headers
        for value in _hostile_values(valid):
            sent = await producer.send_and_wait(
                topics.SESSIONS, value, key=valid.key, headers=headers
            )
            offsets.append(sent.offset)
        await publish(producer, neighbour)
        offsets.append(await _send_with_unreadable_header(settings, monkeypatch, valid.key))
        await publish(producer, valid)

        assert await directory.wait_for(session_id, timeout_s=20) == valid
        assert not following.done(), "the directory stopped following livetag.sessions"
        assert directory.get(neighbour.session_id) == neighbour
        assert directory.undecodable - before == 4
        # ...and it goes on following: a newer version of the session arrives too.
        ended = valid.model_copy(update={"ts_us": valid.ts_us + 1, "state": "ended"})
        await publish(producer, ended)
        async with asyncio.timeout(20):
            while directory.get(session_id) != ended:
                await directory.changed(timeout_s=1.0)

        letters = await _dead_letters(settings, letters_from, service, 4)
        assert [letter.source_offset for letter in letters] == offsets
        assert all(letter.source_topic == topics.SESSIONS for letter in letters)
        assert [letter.source_key for letter in letters[:3]] == [session_id] * 3
        reasons = [letter.reason for letter in letters]
        assert "signed 64-bit" in reasons[0]
        assert "not UTF-8" in reasons[1]
        assert "nested too deeply" in reasons[2]
        assert "cannot read it" in reasons[3]
        assert directory.dead_letters_failed == 0
    finally:
        await directory.stop()
        await producer.stop()

    # A directory started after them reads past them at start (counted, not dead-lettered
    # again: the records were there for the earlier one to reject) and has the session.
    later = SessionDirectory(settings)
    await later.start()
    try:
        assert later.get(session_id) == ended
        assert later.get(neighbour.session_id) == neighbour
        assert later.undecodable >= 4
    finally:
        await later.stop()


async def _end_offsets(settings: Settings) -> list[int]:
    consumer = clients.make_consumer(settings)
    await consumer.start()
    try:
        partition = TopicPartition(topics.DEADLETTER, 0)
        return [(await consumer.end_offsets([partition]))[partition]]
    finally:
        await consumer.stop()
