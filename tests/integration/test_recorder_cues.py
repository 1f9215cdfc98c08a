"""The recorder archives a session's cues (cues.parquet) through the real broker, reading
livetag.cues from the session's start by record timestamp, not from offset 0."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition

from streams import records
from streams.archive import recorder as recorder_module
from streams.archive import store
from streams.archive.recorder import RecorderWorker
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session, new_session_id
from streams.settings import Settings
from taggers.vocabulary import load_vocabulary
from tests.integration.test_recorder import end_session, recorder_settings, wait_for_manifest
from tests.tag_client import wall_us

pytestmark = pytest.mark.integration


def cue(session_id: str, cue_id: str, sent_us: int, **fields: Any) -> records.Cue:
    return records.Cue(
        ts_us=sent_us,
        session_id=session_id,
        performer_id="ana",
        cue_id=cue_id,
        sent_by="dora",
        **{"kind": "emotion", "label": "laughter", **fields},
    )


async def test_cues_are_archived_from_the_sessions_start(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    own = recorder_settings(settings, tmp_path)
    # Read from the session's creation on exactly (no margin): a record of the session's
    # key from before it, which a reader from offset 0 would archive, is never seen.
    monkeypatch.setattr(recorder_module, "SEEK_MARGIN_S", 0.0)
    seeks: list[tuple[TopicPartition, int, int]] = []
    original = recorder_module.offset_at_time

    async def offset_at_time(consumer: Any, partition: TopicPartition, ts_ms: int) -> int:
        found = await original(consumer, partition, ts_ms)
        seeks.append((partition, ts_ms, found))
        return found

    monkeypatch.setattr(recorder_module, "offset_at_time", offset_at_time)
    sid = new_session_id()
    producer = clients.make_producer(own)
    await producer.start()
    stop = asyncio.Event()
    recording: asyncio.Task[None] | None = None
    try:
        stale = records.encode(cue(sid, "cue-stale-00001", wall_us()))
        await producer.send_and_wait(topics.CUES, stale.value, key=stale.key, headers=stale.headers)
        await asyncio.sleep(0.2)
        session = await create_session(
            own,
            prompt="cues",
            performer_names=["ana"],
            vocabulary=load_vocabulary(None),
            session_id=sid,
        )
        t0 = wall_us()
        shown = records.CueShown(client_shown_ts_us=t0 + 90_000, clock_offset_us=0, rtt_us=4_000)
        laughter = cue(sid, "cue-laughter-01", t0, group_id="group-laughter-1")
        sends = [
            laughter,
            laughter.model_copy(update={"shown_ts_us": t0 + 90_000, "shown": shown}),
            cue(sid, "cue-text-000001", t0 + 500_000, kind="text", label=None, text="slower"),
            cue(sid, "cue-clear-00001", t0 + 900_000, kind="clear", label=None),
            cue("s-other", "cue-of-another", t0 + 100_000),
        ]
        recording = asyncio.create_task(RecorderWorker(own, only_sessions={sid}).run(stop))
        for item in sends:
            message = records.encode(item)
            await producer.send(
                topics.CUES, message.value, key=message.key, headers=message.headers
            )
        await producer.send(topics.CUES, b"{not a record", key=f"{sid}/ana".encode())
        await producer.flush()
        await end_session(own, session)
        manifest = await wait_for_manifest(store.session_dir(own, sid), timeout_s=60)
    finally:
        stop.set()
        if recording is not None:
            await asyncio.gather(recording, return_exceptions=True)
        await producer.stop()
    archived = store.read_records(store.session_dir(own, sid), "cues")
    assert [c.cue_id for c in archived] == ["cue-laughter-01", "cue-text-000001", "cue-clear-00001"]
    first = archived[0]
    assert (first.ts_us, first.shown_ts_us, first.group_id) == (t0, t0 + 90_000, "group-laughter-1")
    assert archived[1].text == "slower"
    assert archived[2].shown_ts_us is None
    assert manifest["counts"]["cues"] == 3
    assert manifest["counts"]["undecodable"] == 1
    assert {p.partition for p, _, _ in seeks} == set(range(own.partitions))
    assert all(p.topic == topics.CUES and ts == session.created_ts_us // 1000 for p, ts, _ in seeks)
