"""What the services stored on a shared topic for one session, read back the way a test needs
it: everything from the start, until the test has what it waits for and a short quiet
shows no extra copy is coming."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from streams import records
from streams.kafka import clients
from streams.settings import Settings

RecordT = TypeVar("RecordT", bound=records.AnyRecord)

_QUIET_ROUNDS = 3  # empty fetches of 200 ms in a row after the wait is over


async def session_records(
    settings: Settings,
    topic: str,
    kind: type[RecordT],
    session_id: str,
    *,
    enough: Callable[[list[RecordT]], bool],
    timeout_s: float = 20.0,
) -> list[RecordT]:
    """The records of ``session_id`` (keyed ``session/...``) on ``topic``, decoded as
    ``kind``, once ``enough`` says they are all there; :class:`TimeoutError` if they are
    not within ``timeout_s``."""
    consumer = clients.make_consumer(settings, topic, auto_offset_reset="earliest")
    prefix = f"{session_id}/".encode()
    found: list[RecordT] = []
    await consumer.start()
    try:
        async with asyncio.timeout(timeout_s):
            quiet = 0
            while not enough(found) or quiet < _QUIET_ROUNDS:
                fetched = await consumer.getmany(timeout_ms=200)
                got = [
                    records.decode(kind, message.value, message.headers)
                    for partition in fetched.values()
                    for message in partition
                    if (message.key or b"").startswith(prefix)
                ]
                found.extend(got)
                quiet = 0 if got else quiet + 1
    finally:
        await consumer.stop()
    return found
