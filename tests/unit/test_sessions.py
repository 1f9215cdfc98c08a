"""The session directory's dead letters with a fake producer (the real broker's case is in
tests/integration/test_session_directory.py): a flood of bad records while the broker is
stuck costs a bounded number of dead letters on their way, and the rest are counted."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from streams import records
from streams.kafka import sessions, topics
from streams.settings import Settings
from tests.tag_client import session_record


class StuckProducer:
    """Takes dead letters and acknowledges none until the test releases them."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.waiting = 0
        self.sent: list[tuple[str, bytes]] = []

    async def send_and_wait(self, topic: str, value: bytes, *, key: Any, headers: Any) -> None:
        self.waiting += 1
        await self.release.wait()
        self.waiting -= 1
        self.sent.append((topic, value))


def _bad_record(offset: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic=topics.SESSIONS,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=b"s-1",
        value=b'{"ts_us":' + b"7" * 5000 + b"}",
        checksum=None,
        serialized_key_size=3,
        serialized_value_size=5010,
        headers=[],
    )


async def test_dead_letters_on_their_way_are_capped_and_the_rest_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer = StuckProducer()
    directory = sessions.SessionDirectory(Settings(), dead_letters=producer)
    cap = sessions.DEAD_LETTERS_IN_FLIGHT
    try:
        with caplog.at_level(logging.WARNING, logger="streams.kafka.sessions"):
            for offset in range(cap + 250):
                directory._take(_bad_record(offset), live=True)
            await asyncio.sleep(0)  # the dead letters' tasks reach the stuck producer
        assert directory.undecodable == cap + 250
        assert producer.waiting == cap
        assert directory.dead_letters_dropped == 250
        refusals = [r.getMessage() for r in caplog.records if "not sent" in r.getMessage()]
        # The first one not sent, then one line per 100 more: a flood does not flood the log.
        assert len(refusals) == 3
        assert f"the one for offset {cap} is not sent (1 not sent so far)" in refusals[0]

        producer.release.set()
        async with asyncio.timeout(5):
            while producer.waiting or len(producer.sent) < cap:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        # Room again once the broker took them: the next bad record is dead-lettered.
        directory._take(_bad_record(cap + 250), live=True)
        async with asyncio.timeout(5):
            while len(producer.sent) < cap + 1:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert directory.dead_letters_dropped == 250
        assert directory.dead_letters_failed == 0
        letters = [records.decode(records.DeadLetter, value) for _, value in producer.sent]
        assert {topic for topic, _ in producer.sent} == {topics.DEADLETTER}
        assert [letter.source_offset for letter in letters] == [*range(cap), cap + 250]
    finally:
        producer.release.set()
        await directory.stop()
        await directory._consumer.stop()  # made, never started: closed all the same


def _version(record: records.SessionRecord, offset: int) -> ConsumerRecord[bytes, bytes]:
    encoded = records.encode(record)
    return ConsumerRecord(
        topic=topics.SESSIONS,
        partition=0,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=encoded.key,
        value=encoded.value,
        checksum=None,
        serialized_key_size=len(encoded.key or b""),
        serialized_value_size=len(encoded.value),
        headers=list(encoded.headers),
    )


@pytest.mark.parametrize("ended_first", [True, False])
async def test_a_presence_update_that_had_not_read_the_end_never_reopens_a_session(
    ended_first: bool,
) -> None:
    # The dashboard ends the session; the capture server, not having read it yet, records
    # a page leaving on the copy it knows ("live"), stamped later. Whatever order they are
    # read in, the session stays ended and the leave is kept.
    live = session_record("s-race")
    ended = live.model_copy(update={"state": "ended", "ts_us": live.ts_us + 10})
    leave = live.model_copy(
        update={
            "ts_us": live.ts_us + 20,
            "presence": [
                records.Presence(
                    participant_id="ana", role="performer", connected=False, since_ts_us=0
                )
            ],
        }
    )
    directory = sessions.SessionDirectory(Settings())
    try:
        directory._take(_version(live, 0), live=False)
        order = [ended, leave] if ended_first else [leave, ended]
        for offset, version in enumerate(order, start=1):
            directory._take(_version(version, offset), live=False)
        seen = directory.get("s-race")
    finally:
        await directory.stop()
    assert seen is not None
    assert seen.state == "ended"
    assert [p.connected for p in seen.presence] == [False]
    assert directory.ended_at_us("s-race") == ended.ts_us


def test_a_take_starts_ends_and_the_session_end_closes_a_running_take() -> None:
    created = session_record("s-takes").model_copy(update={"state": "created"})
    first = sessions.apply_action(created, "take_start", stamp_us=created.ts_us + 5, max_takes=3)
    assert first.state == "live"
    assert [(t.take_id, t.start_ts_us, t.end_ts_us) for t in first.takes] == [
        (1, created.ts_us + 5, None)
    ]
    ended_take = sessions.apply_action(first, "take_end", stamp_us=first.ts_us + 7, max_takes=3)
    assert ended_take.takes[0].end_ts_us == first.ts_us + 7
    second = sessions.apply_action(
        ended_take, "take_start", stamp_us=ended_take.ts_us + 1, max_takes=3
    )
    # A stamp from a clock behind the record's still orders the new version after it.
    ended = sessions.apply_action(second, "end_session", stamp_us=0, max_takes=3)
    assert ended.state == "ended"
    assert ended.ts_us == second.ts_us + 1
    assert ended.takes[-1].take_id == 2
    assert ended.takes[-1].end_ts_us == ended.ts_us


@pytest.mark.parametrize(
    ("state", "takes", "action", "code"),
    [
        ("live", [records.Take(take_id=1, start_ts_us=1)], "take_start", "take_open"),
        ("live", [], "take_end", "no_take"),
        ("live", [records.Take(take_id=1, start_ts_us=1, end_ts_us=2)], "take_end", "no_take"),
        (
            "live",
            [records.Take(take_id=1, start_ts_us=1, end_ts_us=2)],
            "take_start",
            "too_many_takes",
        ),
        ("ended", [], "take_start", "session_ended"),
        ("archived", [], "end_session", "session_ended"),
        ("live", [], "pause", "malformed"),
    ],
)
def test_an_action_the_session_refuses_says_which_rule(
    state: str, takes: list[records.Take], action: str, code: str
) -> None:
    current = session_record("s-refuse").model_copy(update={"state": state, "takes": takes})
    with pytest.raises(sessions.SessionActionError) as refused:
        sessions.apply_action(current, action, stamp_us=current.ts_us + 1, max_takes=1)
    assert refused.value.code == code


def presence_of(
    current: records.SessionRecord,
    participant_id: str,
    *,
    connected: bool,
    stamp_us: int,
    newest_state: records.SessionState,
) -> records.SessionRecord | None:
    return sessions.with_presence(
        current,
        participant_id=participant_id,
        role="performer",
        connected=connected,
        stamp_us=stamp_us,
        newest_state=newest_state,
    )


def test_a_join_moves_a_created_session_live_and_a_repeat_changes_nothing() -> None:
    created = session_record("s-presence").model_copy(update={"state": "created"})
    joined = presence_of(
        created, "ana", connected=True, stamp_us=created.ts_us + 10, newest_state="created"
    )
    assert joined is not None
    assert joined.state == "live"
    assert joined.ts_us == created.ts_us + 10
    assert [(p.participant_id, p.connected, p.since_ts_us) for p in joined.presence] == [
        ("ana", True, created.ts_us + 10)
    ]
    repeat = presence_of(
        joined, "ana", connected=True, stamp_us=joined.ts_us + 1, newest_state="live"
    )
    assert repeat is None
    # A leave stamped by a clock behind the record still orders after it.
    left = presence_of(joined, "ana", connected=False, stamp_us=0, newest_state="live")
    assert left is not None
    assert left.ts_us == joined.ts_us + 1
    assert [p.connected for p in left.presence] == [False]


def test_a_leave_keeps_an_end_the_copy_built_on_has_not_seen() -> None:
    live = session_record("s-presence-end")
    left = presence_of(live, "ben", connected=False, stamp_us=live.ts_us + 1, newest_state="ended")
    assert left is not None
    assert left.state == "ended"
    assert sessions.is_over(left)
    assert not sessions.is_over(live)


def test_archiving_is_the_last_version() -> None:
    ended = session_record("s-archive").model_copy(update={"state": "ended"})
    done = sessions.archived(ended, stamp_us=ended.ts_us - 5)
    assert (done.state, done.ts_us) == ("archived", ended.ts_us + 1)
    assert done.roster == ended.roster
