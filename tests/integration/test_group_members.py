"""A consumer killed without leaving its group is removed by the next one of its machine."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from streams.kafka import clients, group_members, topics
from streams.settings import Settings, to_environment

pytestmark = pytest.mark.integration

GROUP = "livetag-test-evict"

# A member that joins, notes itself, says so, and is then killed without leaving.
MEMBER = """
import asyncio, sys
from streams.settings import load_settings
from streams.kafka import clients, group_members, topics

async def main():
    settings = load_settings()
    consumer = clients.make_consumer(settings, topics.SESSIONS, group_id=sys.argv[1])
    member = group_members.MemberNote(settings, sys.argv[1])
    await consumer.start()
    while not consumer.assignment():
        await consumer.getmany(timeout_ms=200)
    member.note(group_members.consumer_member_id(consumer))
    print("joined", flush=True)
    while True:
        await consumer.getmany(timeout_ms=200)

asyncio.run(main())
"""


async def test_a_killed_member_is_evicted_and_the_next_one_joins_at_once(
    settings: Settings, tmp_path: Path
) -> None:
    own = settings.model_copy(update={"state_dir": tmp_path / "state"})
    group = f"{GROUP}-{os.getpid()}-{time.monotonic_ns()}"
    async with clients.admin_client(own) as admin:
        await topics.ensure_shared_topics(admin, own)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        MEMBER,
        group,
        env={**os.environ, **to_environment(own)},
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    async with asyncio.timeout(60):
        assert (await process.stdout.readline()).strip() == b"joined"
    assert group_members.dead_members(own, group) == [], "a live member is not dead"
    process.send_signal(signal.SIGKILL)
    await process.wait()
    [dead] = group_members.dead_members(own, group)

    assert await group_members.evict_dead_members(own, group) == [dead]
    assert group_members.dead_members(own, group) == []
    # Without the eviction, the join below waits out the dead member's 10 s session.
    consumer = clients.make_consumer(own, topics.SESSIONS, group_id=group)
    started = time.monotonic()
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=200)
        joined_s = time.monotonic() - started
        assert group_members.consumer_member_id(consumer) not in (None, dead)
    finally:
        await consumer.stop()
    assert joined_s < 9.0, f"the new member waited {joined_s:.1f} s: the dead one was not removed"
