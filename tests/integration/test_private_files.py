"""What livetag writes about people (archives, the tag spool, logs) is its user's alone:
folders 0700, files 0600, whatever the umask it was started with."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.broker import EmbeddedBroker
from streams import records
from streams.archive import store
from streams.archive.recorder import RecorderWorker
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session
from streams.settings import Settings
from taggers.outbox import TagOutbox
from taggers.vocabulary import load_vocabulary
from tests.archive_samples import jpeg
from tests.integration.test_recorder import end_session, recorder_settings, wait_for_manifest
from tests.tag_client import wall_us

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _open_umask() -> Iterator[None]:
    # What a shell usually starts livetag with: new files world-readable unless made private.
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def assert_private_tree(root: Path) -> None:
    assert mode(root) == 0o700, root
    for path in root.rglob("*"):
        if path.is_dir():
            assert mode(path) == 0o700, f"{path}: {oct(mode(path))}"
        else:
            assert mode(path) == 0o600, f"{path}: {oct(mode(path))}"


def tag_event(session_id: str, n: int, ts_us: int) -> records.TagEvent:
    return records.TagEvent(
        ts_us=ts_us,
        session_id=session_id,
        performer_id="ana",
        tag_id=f"private-tag-{n:04d}",
        rater_id="director",
        rater_role="director",
        action="point",
        label="laughter",
        span_us=500_000,
        timing=records.TagTiming(
            client_press_ts_us=ts_us, clock_offset_us=0, rtt_us=500, clock_uncertainty_us=250
        ),
        received_ts_us=ts_us,
    )


async def test_the_archive_and_its_parts_are_private(settings: Settings, tmp_path: Path) -> None:
    own = recorder_settings(settings, tmp_path).model_copy(
        update={"data_dir": tmp_path / "share" / "livetag" / "sessions"}
    )
    session = await create_session(
        own, prompt="private", performer_names=["ana"], vocabulary=load_vocabulary(None)
    )
    sid = session.session_id
    stop = asyncio.Event()
    recording = asyncio.create_task(RecorderWorker(own, only_sessions={sid}).run(stop))
    producer = clients.make_producer(own)
    await producer.start()
    folder = store.session_dir(own, sid)
    try:
        for k in range(30):
            now = wall_us()
            common = {"session_id": sid, "performer_id": "ana", "seq": k}
            frame = records.VideoFrame(
                records.VideoFrameHeader(
                    ts_us=now, timing="sender_report", width=160, height=90, **common
                ),
                jpeg(k),
            )
            chunk = records.AudioChunk(
                records.AudioChunkHeader(
                    ts_us=now, timing="sender_report", sample_count=320, **common
                ),
                bytes(640),
            )
            for topic, item in ((session.topics.video, frame), (session.topics.audio, chunk)):
                message = records.encode(item)
                await producer.send(topic, message.value, key=message.key, headers=message.headers)
        message = records.encode(tag_event(sid, 1, wall_us()))
        await producer.send(topics.TAGS, message.value, key=message.key, headers=message.headers)
        await producer.flush()
        # Mid-session: the raw parts on disk are private too.
        async with asyncio.timeout(30):
            while not list(folder.glob("parts/*/*.parquet")):  # noqa: ASYNC110 (files appear)
                await asyncio.sleep(0.2)
        assert_private_tree(folder)
        await end_session(own, session)
        await wait_for_manifest(folder, timeout_s=60)
    finally:
        stop.set()
        await asyncio.gather(recording, return_exceptions=True)
        await producer.stop()
    assert (folder / "media" / "ana.mkv").is_file()
    assert (folder / "tags.parquet").is_file()
    # Every folder livetag made for its archives, down to each file in them.
    assert_private_tree(tmp_path / "share")


async def test_the_tag_spool_is_private(tmp_path: Path) -> None:
    # A producer that never reached a broker: every tag goes to the spool.
    producer = clients.make_producer(Settings(broker_port=1))
    outbox = TagOutbox(producer, tmp_path / "state", produce_timeout_s=0.2, retry_interval_s=60)
    await outbox.start()
    try:
        held = await outbox.deliver(tag_event("s-private", 1, wall_us()))
    finally:
        await outbox.stop()
        await producer.stop()
    assert held
    spooled = list((tmp_path / "state" / "tag-spool").glob("tags-*.jsonl"))
    assert len(spooled) == 1
    assert_private_tree(tmp_path / "state")


def test_the_broker_log_is_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)  # made before, with wide rights: the logs are private anyway
    broker = EmbeddedBroker(port=0, log_path=state / "logs" / "broker.log")
    with contextlib.ExitStack() as stack:
        stack.enter_context(broker)
        assert mode(state / "logs") == 0o700
        assert mode(state / "logs" / "broker.log") == 0o600
