"""After a session ends: tags about the scene still arrive for the grace, tags pressed after
the end are refused, and tags that keep coming never hold up the archive."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from pydantic import SecretStr

from capture.server import CaptureServer
from streams import records
from streams.archive import store
from streams.archive.recorder import RecorderWorker
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session, publish
from streams.settings import Settings
from taggers.vocabulary import load_vocabulary
from tests.tag_client import SECRET, TagClient, token_for, wall_us

pytestmark = pytest.mark.integration

GRACE_S = 3.0


@pytest.fixture
def ending(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "capture_port": 0,
            "state_dir": tmp_path / "state",
            "data_dir": tmp_path / "archive",
            # The key tests.tag_client.token_for signs with.
            "token_secret": SecretStr(SECRET.decode()),
            "label_grace_s": GRACE_S,
            "archive_flush_s": 0.5,
            "archive_quiet_s": 1.0,
            "archive_release_s": 0.0,
        }
    )


@pytest.fixture
def capture_settings(ending: Settings) -> Settings:
    return ending  # the capture fixture (tests/integration/conftest.py) runs with these


async def new_session(settings: Settings) -> records.SessionRecord:
    return await create_session(
        settings, prompt="Last orders.", performer_names=["ana"], vocabulary=load_vocabulary(None)
    )


async def end(settings: Settings, session: records.SessionRecord) -> int:
    """End the session as the dashboard does; returns the end instant."""
    ended_us = wall_us()
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        await publish(producer, session.model_copy(update={"state": "ended", "ts_us": ended_us}))
    finally:
        await producer.stop()
    return ended_us


async def until_ended(capture: CaptureServer, session_id: str) -> None:
    async with asyncio.timeout(10):
        while capture._directory.ended_at_us(session_id) is None:
            await capture._directory.changed(timeout_s=0.5)


def refusals_of(client: TagClient, tag_id: str) -> list[str]:
    return [error["code"] for error in client.errors if error.get("tag_id") == tag_id]


async def test_tags_about_the_scene_arrive_after_the_end_and_later_presses_are_refused(
    ending: Settings, capture: CaptureServer
) -> None:
    session = await new_session(ending)
    sid = session.session_id
    url = capture.url.replace("http://", "ws://") + "/ws/tag"
    async with TagClient(url, token_for(sid, "dir", "director")) as client:
        live = await client.tag("ana", "laughter")
        await client.wait_acked([live])
        ended_us = await end(ending, session)
        await until_ended(capture, sid)
        # Pressed in the scene, sent after its end (a page re-sending after a reconnect):
        # taken, and so is the key-up of a hold pressed in the scene.
        before = await client.tag("ana", "surprise", press_us=ended_us - 1_000_000)
        sent_before = dict(client.unacked[before])
        onset = await client.tag("ana", "anger", action="onset", press_us=ended_us - 500_000)
        await client.wait_acked([before, onset])
        offset = await client.tag("ana", "anger", action="offset", onset_tag_id=onset)
        await client.wait_acked([offset])
        # Pressed after the end: refused, with the reason.
        after = await client.tag("ana", "laughter")
        await client.wait_for(lambda: bool(refusals_of(client, after)))
        assert refusals_of(client, after) == ["session_ended"]
        assert "after the session ended" in client.errors[-1]["message"]
        # Past the grace the session takes no more tags: its quiet tagging connections are
        # closed with 4409 and the reason (the widget stops reconnecting).
        ws = client._ws
        assert ws is not None
        await client.wait_for(lambda: ws.closed, timeout_s=GRACE_S + 10)
        assert wall_us() >= ended_us + GRACE_S * 1_000_000
        assert ws.close_code == 4409
        assert client.errors[-1]["code"] == "session_ended"
        assert capture.tags.refusals["session_ended"] == 2  # the press after the end, the close
        # A client that comes back anyway: a press from the scene is too late now (the labels
        # are final), and a tag taken in time and re-sent (its ack lost) is answered from the
        # ledger.
        await client.drop()
        client.unacked.pop(after)  # dropped by the widget when refused
        client.acks.pop(before)
        client.unacked[before] = sent_before
        await client.connect()
        late = await client.tag("ana", "surprise", press_us=ended_us - 1_000_000)
        await client.wait_for(lambda: bool(refusals_of(client, late)))
        assert refusals_of(client, late) == ["session_ended"]
        await client.wait_acked([before])
        assert client.acks[before]["duplicate"] is True
    assert capture.tags.refusals["session_ended"] >= 3
    stored = await tags_of(ending, sid)
    assert sorted(stored) == sorted([live, before, onset, offset])


async def tags_of(settings: Settings, session_id: str) -> list[str]:
    consumer = clients.make_consumer(settings, topics.TAGS, auto_offset_reset="earliest")
    found: list[str] = []
    await consumer.start()
    try:
        quiet = 0
        while quiet < 3:
            batches = await consumer.getmany(timeout_ms=300)
            got = [m for batch in batches.values() for m in batch]
            quiet = 0 if got else quiet + 1
            for message in got:
                if (message.key or b"").startswith(f"{session_id}/".encode()):
                    tag = records.decode(records.TagEvent, message.value, message.headers)
                    found.append(tag.tag_id)
    finally:
        await consumer.stop()
    return found


async def archived_within(settings: Settings, session_id: str, timeout_s: float) -> bool:
    """Whether a recorder archives the session within ``timeout_s`` of now."""
    stop = asyncio.Event()
    recorder = RecorderWorker(settings, only_sessions={session_id})
    running = asyncio.create_task(recorder.run(stop))
    manifest = store.session_dir(settings, session_id) / store.MANIFEST
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not manifest.is_file():
                    assert not running.done(), running
                    await asyncio.sleep(0.2)
        return manifest.is_file()
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)


async def keep_tagging(client: TagClient, stop: asyncio.Event) -> int:
    """A rater who goes on pressing after the end (or a page stuck re-sending)."""
    sent = 0
    while not stop.is_set():
        await client.tag("ana", "laughter")
        sent += 1
        await asyncio.sleep(0.2)
    return sent


async def test_tags_pressed_after_the_end_do_not_keep_the_recorder_from_archiving(
    ending: Settings, capture: CaptureServer
) -> None:
    session = await new_session(ending)
    sid = session.session_id
    url = capture.url.replace("http://", "ws://") + "/ws/tag"
    async with TagClient(url, token_for(sid, "dir", "director")) as client:
        await end(ending, session)
        await until_ended(capture, sid)
        stop = asyncio.Event()
        tagging = asyncio.create_task(keep_tagging(client, stop))
        try:
            # The grace, the quiet time and flushes: well within 15 s.
            archived = await archived_within(ending, sid, timeout_s=15)
        finally:
            stop.set()
            sent = await tagging
    assert archived, "tags after the end kept the recorder from archiving"
    assert sent > 20
    assert capture.tags.refusals["session_ended"] >= sent - 1


async def test_tags_that_reach_the_topic_past_the_grace_do_not_hold_the_archive(
    ending: Settings,
) -> None:
    # Another writer of livetag.tags (an old tag service, a spool delivered late): the
    # recorder still archives once the grace is over.
    session = await new_session(ending)
    sid = session.session_id
    ended_us = await end(ending, session)
    producer = clients.make_producer(ending)
    await producer.start()
    stop = asyncio.Event()

    async def produce() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            now = wall_us()
            tag = records.TagEvent(
                ts_us=ended_us - 1000,
                session_id=sid,
                performer_id="ana",
                tag_id=f"stray-{n:06d}",
                rater_id="dir",
                rater_role="director",
                action="point",
                label="laughter",
                span_us=500_000,
                timing=records.TagTiming(
                    client_press_ts_us=ended_us - 1000,
                    clock_offset_us=0,
                    rtt_us=1000,
                    clock_uncertainty_us=500,
                ),
                received_ts_us=now,
            )
            message = records.encode(tag)
            await producer.send_and_wait(
                topics.TAGS, message.value, key=message.key, headers=message.headers
            )
            await asyncio.sleep(0.2)

    producing = asyncio.create_task(produce())
    try:
        archived = await archived_within(ending, sid, timeout_s=15)
    finally:
        stop.set()
        await producing
        await producer.stop()
    assert archived, "tags past the grace kept the recorder from archiving"
