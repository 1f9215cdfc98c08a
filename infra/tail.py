"""``livetag tail``: print a topic's records as JSON lines, undecodable ones as errors."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from streams import records
from streams.errors import BadInputError
from streams.kafka import clients, topics
from streams.kafka.sessions import OVER_STATES, SessionDirectory
from streams.settings import Settings

Emit = Callable[[str], None]


class TailError(BadInputError, RuntimeError):
    """The topic cannot be tailed (unknown, missing); the message says why."""


def describe(message: ConsumerRecord[bytes, bytes], record_type: type[records.AnyRecord]) -> Any:
    """The JSON-able form of one message: the decoded record, or an error object."""
    try:
        record = records.decode(record_type, message.value, message.headers)
    except records.RecordError as exc:
        return {
            "error": exc.reason,
            "record_type": record_type.record_type,
            "topic": message.topic,
            "partition": message.partition,
            "offset": message.offset,
            "key": None if message.key is None else message.key.decode("utf-8", "replace"),
            "payload_head_b64": base64.b64encode((message.value or b"")[:64]).decode(),
        }
    if isinstance(record, records.AudioChunk | records.VideoFrame):
        payload = record.pcm if isinstance(record, records.AudioChunk) else record.jpeg
        return {
            "record_type": record.record_type,
            **record.header.model_dump(mode="json"),
            "payload_bytes": len(payload),
        }
    return {"record_type": record.record_type, **record.model_dump(mode="json")}


def _key_filter(
    topic: str, session_id: str | None, performer_id: str | None
) -> Callable[[bytes | None], bool]:
    if topic == topics.SESSIONS:
        if performer_id is not None:
            raise TailError("--performer does not apply to livetag.sessions")
        wanted = None if session_id is None else session_id.encode()
        return lambda key: wanted is None or key == wanted
    if topic == topics.DEADLETTER:
        # Dead letters are keyed by source topic: filter on the source name instead.
        return lambda key: session_id is None or (key is not None and session_id.encode() in key)

    def matches(key: bytes | None) -> bool:
        if session_id is None and performer_id is None:
            return True
        if key is None:
            return False
        key_session, _, key_performer = key.decode("utf-8", "replace").partition("/")
        return (session_id is None or key_session == session_id) and (
            performer_id is None or key_performer == performer_id
        )

    return matches


async def _read_to(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    """Whether every partition has been read up to its end offset in ``ends``."""
    for partition, end in ends.items():
        if await consumer.position(partition) < end:
            return False
    return True


def session_quiet_s(settings: Settings) -> float:
    """With ``--follow --session`` and no recorder to archive the session: how long after
    its end, with nothing new, tail takes it that nothing more will come. Until the label
    grace has passed a late tag still revises a window, and the recorder waits as long
    plus its quiet time before it archives."""
    return settings.label_grace_s + settings.archive_quiet_s


async def tail(
    settings: Settings,
    topic_name: str,
    *,
    emit: Emit,
    session_id: str | None = None,
    performer_id: str | None = None,
    from_beginning: bool = False,
    max_records: int | None = None,
    follow: bool = False,
) -> int:
    """Print records, and return how many were printed.

    Without ``follow``: the records stored when tail starts, from the oldest, then stop.
    With ``follow``: from now (or the oldest, ``from_beginning``) on, as they come; with a
    ``session_id``, until that session is archived (every record of it is final: tail
    reads what the topic holds then, and stops), or, with no recorder running, until
    :func:`session_quiet_s` after its end with nothing new. Either way at most
    ``max_records``."""
    try:
        topic = topics.resolve_topic(topic_name, session_id)
        record_type = topics.record_type_of(topic)
    except ValueError as exc:
        raise TailError(str(exc)) from None
    accept = _key_filter(topic, session_id, performer_id)
    consumer: AIOKafkaConsumer = clients.make_consumer(
        settings,
        # Short waits suit a live tail on either broker kind.
        fetch_max_wait_ms=settings.embedded_fetch_wait_ms,
    )
    directory: SessionDirectory | None = None
    printed = 0
    try:
        await consumer.start()
        # topics() refreshes the metadata, so a topic created a moment ago is seen.
        partitions = (
            consumer.partitions_for_topic(topic) if topic in await consumer.topics() else None
        )
        if not partitions:
            raise TailError(f"topic {topic} does not exist on {settings.bootstrap_servers}")
        assigned = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer.assign(assigned)
        if from_beginning or not follow:
            await consumer.seek_to_beginning(*assigned)
        else:
            await consumer.seek_to_end(*assigned)
        # Without --follow, what is stored now is what there is to print.
        stop_at = None if follow else await consumer.end_offsets(assigned)
        if follow and session_id is not None:
            directory = SessionDirectory(settings)
            await directory.start()
        last_record = time.monotonic()
        ended_at: float | None = None  # when tail saw the session over
        while max_records is None or printed < max_records:
            if stop_at is not None and await _read_to(consumer, stop_at):
                break
            if directory is not None and session_id is not None:
                current = directory.get(session_id)
                state = None if current is None else current.state
                if state == "archived" and stop_at is None:
                    # Archived: nothing more comes for it; what the topic holds now is all.
                    stop_at = await consumer.end_offsets(assigned)
                    continue
                if state in OVER_STATES and ended_at is None:
                    ended_at = time.monotonic()
                if ended_at is not None and (
                    time.monotonic() - max(last_record, ended_at) >= session_quiet_s(settings)
                ):
                    break
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                for message in batch:
                    if (
                        stop_at is not None
                        and message.offset
                        >= stop_at[TopicPartition(message.topic, message.partition)]
                    ):
                        continue
                    if not accept(message.key):
                        continue
                    last_record = time.monotonic()
                    emit(json.dumps(describe(message, record_type), separators=(",", ":")))
                    printed += 1
                    if max_records is not None and printed >= max_records:
                        return printed
    finally:
        if directory is not None:
            await directory.stop()
        await consumer.stop()
    return printed
