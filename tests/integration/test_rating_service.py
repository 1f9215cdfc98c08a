"""Continuous rating batches through the tag service over a real websocket to the real
broker: acknowledged, on ``livetag.ratings`` on the session clock, stored once, refused
clearly, budgeted apart from tags, and held while the broker is away."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from infra.broker import EmbeddedBroker
from streams import records
from streams.kafka import clients, topics
from streams.session_clock import now_us
from streams.settings import Settings
from tests.tag_client import ServedTags as Served
from tests.tag_client import SimulatedClock, TagClient, serve_tags, session_record
from tests.topic_records import session_records

pytestmark = pytest.mark.integration

PERIOD_US = 50_000  # 20 Hz
FRAME_RTP = 123_456
FRAME_LAG_US = 140_000  # how late the watcher saw the frame it rated


@pytest.fixture
def frames() -> dict[int, int]:
    """The frames director "dir" saw of performer "ana": RTP timestamp -> capture ts_us."""
    return {}


@pytest.fixture
async def served(
    settings: Settings, session_id: str, tmp_path: Path, frames: dict[int, int]
) -> AsyncIterator[Served]:
    tag_settings = settings.model_copy(update={"state_dir": tmp_path / "state"})

    def lookup(session: str, rater: str, performer: str, rtp: int) -> int | None:
        watching = (session, rater, performer) == (session_id, "dir", "ana")
        return frames.get(rtp) if watching else None

    async with serve_tags(tag_settings, session_record(session_id), frame_lookup=lookup) as running:
        yield running


async def batches_on_topic(
    settings: Settings, session_id: str, expected: int, timeout_s: float = 20.0
) -> list[records.RatingBatch]:
    """This session's records on livetag.ratings, once at least ``expected`` are there (and
    a short wait for any extra copy)."""
    return await session_records(
        settings,
        topics.RATINGS,
        records.RatingBatch,
        session_id,
        enough=lambda found: len(found) >= expected,
        timeout_s=timeout_s,
    )


def trace(start: float, step: float, count: int) -> list[tuple[float, ...]]:
    return [(round(start + step * i, 3), round(-start - step * i, 3)) for i in range(count)]


async def test_a_trace_is_acked_and_lands_on_the_session_clock(
    served: Served, settings: Settings, frames: dict[int, int]
) -> None:
    skewed = SimulatedClock(offset_us=1_500_000)  # the rater's clock runs 1.5 s ahead
    async with served.client(clock=skewed) as client:
        start = now_us() - 4 * 10 * PERIOD_US
        sent = []
        for n in range(4):  # four half-second batches of a 20 Hz trace, as the widget sends
            first = start + n * 10 * PERIOD_US
            rtps: list[int | None] = [None] * 10
            if n == 3:
                # The last batch's fourth sample names the frame on screen then.
                frames[FRAME_RTP] = first + 3 * PERIOD_US - FRAME_LAG_US
                rtps[3] = FRAME_RTP
            sent.append(
                await client.ratings(
                    "ana", trace(-0.5 + 0.25 * n, 0.01, 10), start_us=first, rtp_timestamps=rtps
                )
            )
        slider = await client.ratings(
            "ben", [(0.1 * i,) for i in range(5)], mode="intensity", label="laughter"
        )
        await client.wait_rated([*sent, slider])
        acks = [client.rating_acks[b] for b in sent]
    assert [ack["samples"] for ack in acks] == [10, 10, 10, 10]
    assert [ack["frame_samples"] for ack in acks] == [0, 0, 0, 1]
    assert not any(ack["duplicate"] or ack["held"] for ack in acks)
    stored = {b.batch_id: b for b in await batches_on_topic(settings, served.session.session_id, 5)}
    assert set(stored) == {*sent, slider}
    for n, batch_id in enumerate(sent):
        batch = stored[batch_id]
        assert (batch.performer_id, batch.rater_id, batch.rater_role) == ("ana", "dir", "director")
        assert (batch.mode, batch.label, batch.rate_hz) == ("valence_arousal", None, 20)
        assert abs(batch.clock_offset_us + 1_500_000) <= 2_000  # loopback round trips
        assert batch.ts_us == batch.samples[0].ts_us == acks[n]["ts_us"]
        for index, sample in enumerate(batch.samples):
            true_us = start + (n * 10 + index) * PERIOD_US
            assert sample.client_ts_us == skewed.at(true_us)
            assert sample.valence == round(-0.5 + 0.25 * n + 0.01 * index, 3)
            assert sample.arousal == -sample.valence
            if n == 3 and index == 3:
                assert sample.basis == "frame_on_screen"
                assert sample.ts_us == true_us - FRAME_LAG_US
            else:
                assert sample.basis == "key_press"
                assert abs(sample.ts_us - true_us) <= 2_000
    ben = stored[slider]
    assert (ben.performer_id, ben.mode, ben.label) == ("ben", "intensity", "laughter")
    assert [s.intensity for s in ben.samples] == [0.1 * i for i in range(5)]


async def test_a_re_sent_batch_is_stored_once(served: Served, settings: Settings) -> None:
    async with served.client(participant="obs", role="observer") as client:
        # The same batch twice at once (the second while the first is in flight), then
        # again after its ack.
        first = await client.ratings("ben", trace(0.0, 0.02, 10), batch_id="batch-dup-0001")
        message = client.unacked_batches[first]
        await client.send_raw(json.dumps(message), first)
        await client.wait_rated([first])
        client.rating_acks.clear()
        client.unacked_batches[first] = message
        await client.send_raw(json.dumps(message), first)
        await client.wait_rated([first])
        assert client.rating_acks[first]["duplicate"] is True
    stored = await batches_on_topic(settings, served.session.session_id, expected=1)
    assert [b.batch_id for b in stored] == ["batch-dup-0001"]
    assert served.service.stats["rating_batches"] == 1
    assert served.service.stats["rating_duplicates"] >= 2


async def test_bad_batches_get_their_error_and_the_connection_goes_on(
    served: Served, settings: Settings
) -> None:
    now = now_us()
    async with served.client(participant="obs", role="observer") as client:
        bad = {
            await client.ratings("ana", [(0.5,)], mode="intensity", label="boredom"): (
                "unknown_label"
            ),
            await client.ratings("zoe", trace(0, 0, 3)): "unknown_performer",
            await client.ratings("ana", [(1.2, 0.0)]): "out_of_range",
            await client.ratings("ana", [(-0.1,)], mode="intensity", label="fear"): (
                "out_of_range"
            ),
            await client.ratings("ana", trace(0, 0, 2), start_us=now + 60_000_000): "bad_time",
            await client.ratings("ana", trace(0, 0, 2), start_us=now - 7_200_000_000): "bad_time",
            await client.ratings("ana", trace(0, 0, 601), start_us=now - 40_000_000): (
                "too_many_samples"
            ),
            await client.ratings("ana", trace(0, 0, 2), rate_hz=100): "malformed",
            await client.ratings("ana", [(0.1, 0.2, 0.3)]): "malformed",
        }
        await client.wait_for(lambda: len(client.errors) >= len(bad))
        by_batch = {e.get("batch_id"): e["code"] for e in client.errors}
        assert by_batch == bad
        assert all(e["message"] for e in client.errors)
        good = await client.ratings("ana", trace(0.1, 0.0, 10))
        await client.wait_rated([good])
    async with served.client(participant="ana", role="performer") as performer:
        own = await performer.ratings("ana", trace(0, 0, 3))
        await performer.wait_for(lambda: bool(performer.errors))
        assert performer.errors[0]["batch_id"] == own
        assert performer.errors[0]["code"] == "forbidden"
    stored = await batches_on_topic(settings, served.session.session_id, expected=1)
    assert [b.batch_id for b in stored] == [good]
    assert served.service.refusals["out_of_range"] == 2


async def test_ratings_have_a_budget_of_their_own(served: Served) -> None:
    limits = served.service.limits
    served.service.limits = dataclasses.replace(
        limits, burst=4, rate_per_s=1.0, rating_batch_burst=30, rating_batches_per_s=1.0
    )
    try:
        async with served.client(participant="obs", role="observer") as client:
            # Ten seconds of a 20 Hz trace in half-second batches, sent at once (a page back
            # from a short outage), does not touch the tag budget...
            start = now_us() - 20 * 10 * PERIOD_US
            trace_ids = [
                await client.ratings("ana", trace(0, 0.01, 10), start_us=start + n * 10 * PERIOD_US)
                for n in range(20)
            ]
            await client.wait_rated(trace_ids)
            tags = [await client.tag("ana", "laughter") for _ in range(4)]
            await client.wait_acked(tags)
            # ...and a flood of batches runs out of its own.
            flood = [await client.ratings("ben", [(0.0, 0.0)]) for _ in range(30)]
            await client.wait_for(
                lambda: all(b in client.rating_acks or b in refused(client) for b in flood)
            )
            assert 5 <= len(refused(client)) <= 20
            assert not [e for e in client.errors if e.get("tag_id")]
    finally:
        served.service.limits = limits


def refused(client: TagClient) -> set[str]:
    return {e["batch_id"] for e in client.errors if e["code"] == "too_frequent" and "batch_id" in e}


async def test_batches_in_flight_survive_a_dropped_connection_exactly_once(
    served: Served, settings: Settings
) -> None:
    client = served.client(participant="obs", role="observer")
    await client.connect()
    try:
        start = now_us() - 40 * 10 * PERIOD_US
        client.deaf = True  # stored, but the acks are lost with the connection
        sent = [
            await client.ratings("ana", trace(0, 0.001, 10), start_us=start + n * 10 * PERIOD_US)
            for n in range(40)
        ]
        await client.sent_all()
        await asyncio.sleep(0.5)
        await client.drop()
        assert set(client.unacked_batches) == set(sent)
        client.deaf = False
        await client.connect()  # re-sends everything unacknowledged
        await client.wait_rated(sent, timeout_s=20)
        assert sum(client.rating_acks[b]["duplicate"] for b in sent) >= 30
    finally:
        await client.close()
    stored = await batches_on_topic(settings, served.session.session_id, expected=40)
    counts = Counter(b.batch_id for b in stored)
    assert set(counts) == set(sent)
    assert max(counts.values()) == 1


async def test_a_session_that_ended_takes_only_the_batches_begun_before_its_end(
    settings: Settings, session_id: str, tmp_path: Path
) -> None:
    ended_at = now_us() - 2_000_000
    session = session_record(session_id).model_copy(update={"state": "ended", "ts_us": ended_at})
    tag_settings = settings.model_copy(update={"state_dir": tmp_path / "state"})
    async with (
        serve_tags(tag_settings, session) as served,
        served.client(participant="obs", role="observer") as client,
    ):
        straddling = await client.ratings("ana", trace(0, 0, 10), start_us=ended_at - 5 * PERIOD_US)
        after = await client.ratings("ana", trace(0, 0, 10), start_us=ended_at + 500_000)
        await client.wait_for(lambda: straddling in client.rating_acks and bool(client.errors))
        assert client.errors[0]["batch_id"] == after
        assert client.errors[0]["code"] == "session_ended"


async def test_batches_are_held_while_the_broker_is_down_then_delivered(tmp_path: Path) -> None:
    broker = EmbeddedBroker(port=0, log_path=tmp_path / "broker.log")
    broker.start()
    own = Settings(
        broker_port=broker.port, state_dir=tmp_path / "state", tag_produce_timeout_ms=300
    )
    async with clients.admin_client(own) as admin:
        await topics.ensure_shared_topics(admin, own)
    try:
        async with serve_tags(own, session_record("held-ratings-1")) as served:
            client = served.client(participant="obs", role="observer")
            async with client:
                before = await client.ratings("ana", trace(0, 0.01, 10))
                await client.wait_rated([before])
                assert client.rating_acks[before]["held"] is False
                broker.stop()
                during = [await client.ratings("ben", trace(0.2, 0.01, 10)) for _ in range(3)]
                tag = await client.tag("ben", "surprise")  # tags and batches share the spool
                await client.wait_rated(during, timeout_s=10)
                await client.wait_acked([tag], timeout_s=10)
                assert all(client.rating_acks[b]["held"] for b in during)
                assert list((own.state_dir / "tag-spool").glob("*.jsonl"))
                assert served.service.stats["rating_held"] == 3
                # The memory broker comes back empty on the same port: the batches arrive.
                broker = EmbeddedBroker(port=own.broker_port, log_path=tmp_path / "broker2.log")
                broker.start()
                async with clients.admin_client(own) as admin:
                    await topics.ensure_shared_topics(admin, own)
                stored = await batches_on_topic(own, "held-ratings-1", expected=3, timeout_s=40)
                assert {b.batch_id for b in stored} >= set(during)
                held = [b for b in stored if b.batch_id in during]
                assert all(len(b.samples) == 10 for b in held)
                async with asyncio.timeout(10):
                    while served.service.outbox.backlog:  # noqa: ASYNC110 (a plain flag)
                        await asyncio.sleep(0.1)
                assert not list((own.state_dir / "tag-spool").glob("*.jsonl"))
    finally:
        broker.stop()


async def no_connections(served: Served) -> None:
    async with asyncio.timeout(10):
        while served.service.connections_in(served.session.session_id):  # noqa: ASYNC110 (a count)
            await asyncio.sleep(0.05)


async def test_an_ended_session_s_ledgers_go_once_it_is_archived_and_its_raters_left(
    settings: Settings, session_id: str, tmp_path: Path
) -> None:
    grace_s = 1.5
    ended_at = now_us() - 600_000
    session = session_record(session_id).model_copy(update={"state": "ended", "ts_us": ended_at})
    tag_settings = settings.model_copy(
        update={"state_dir": tmp_path / "state", "label_grace_s": grace_s}
    )
    async with serve_tags(tag_settings, session) as served:
        service = served.service
        async with served.client(participant="obs", role="observer") as client:
            batch = await client.ratings("ana", trace(0, 0, 10), start_us=ended_at - 5 * PERIOD_US)
            message = client.unacked_batches[batch]
            await client.wait_rated([batch])
            await asyncio.sleep((ended_at + grace_s * 1_000_000 - now_us()) / 1e6 + 0.1)
            # Past the grace, a rater still connected may be re-sending what it holds: it is
            # answered from the ledger until it is closed.
            await service.forget_ended_sessions()
            assert service.stored_batches.sessions() == {session_id}
            client.rating_acks.clear()
            client.unacked_batches[batch] = message
            await client.send_raw(json.dumps(message), batch)
            await client.wait_rated([batch])
            assert client.rating_acks[batch]["duplicate"] is True
        await no_connections(served)
        # Ended and past the grace, but not archived yet: a page may still come back with
        # a batch whose ack it lost, and is answered from the ledger.
        await service.close_ended_sessions()
        assert service.stored_batches.sessions() == {session_id}
        archived = session.model_copy(update={"state": "archived"})

        async def lookup(wanted: str) -> records.SessionRecord | None:
            return archived if wanted == session_id else None

        service.sessions = lookup
        await service.close_ended_sessions()
        assert service.stored_batches.sessions() == set()
        # The rater's clock sync went with the session.
        assert service.clock_sync(session_id, "obs", client.clock_id).estimate is None
        # A page back later with the batch still unacknowledged is told the session is
        # over; nothing is stored twice.
        late = served.client(participant="obs", role="observer")
        late.unacked_batches[batch] = message
        async with late:
            await late.wait_for(lambda: any(e["code"] == "session_ended" for e in late.errors))
        ended = [e["batch_id"] for e in late.errors if e["code"] == "session_ended"]
        assert ended == [batch]
        assert batch not in late.rating_acks
    stored = await batches_on_topic(settings, session_id, expected=1)
    assert [b.batch_id for b in stored] == [batch]


async def test_a_live_session_keeps_its_ledgers_while_its_raters_are_away(
    served: Served, settings: Settings
) -> None:
    async with served.client(participant="obs", role="observer") as client:
        batch = await client.ratings("ana", trace(0, 0, 10))
        message = client.unacked_batches[batch]
        await client.wait_rated([batch])
    await no_connections(served)
    await served.service.close_ended_sessions()
    assert served.service.stored_batches.sessions() == {served.session.session_id}
    back = served.client(participant="obs", role="observer")
    back.unacked_batches[batch] = message
    async with back:
        await back.wait_rated([batch])
    assert back.rating_acks[batch]["duplicate"] is True
    stored = await batches_on_topic(settings, served.session.session_id, expected=1)
    assert [b.batch_id for b in stored] == [batch]
