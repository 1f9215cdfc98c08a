"""The tag service over a real websocket and the real broker."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from infra.broker import EmbeddedBroker
from streams import records
from streams.kafka import clients, topics
from streams.session_clock import now_us
from streams.settings import Settings
from taggers.vocabulary import DEFAULT_VOCABULARY
from tests.tag_client import ServedTags as Served
from tests.tag_client import SimulatedClock, serve_tags, session_record, token_for
from tests.topic_records import session_records

pytestmark = pytest.mark.integration


@pytest.fixture
async def served(settings: Settings, session_id: str, tmp_path: Path) -> AsyncIterator[Served]:
    tag_settings = settings.model_copy(update={"state_dir": tmp_path / "state"})
    async with serve_tags(tag_settings, session_record(session_id)) as running:
        yield running


async def tags_on_topic(
    settings: Settings, session_id: str, expected: int, timeout_s: float = 20.0
) -> list[records.TagEvent]:
    """This session's records on livetag.tags, once at least ``expected`` are there (plus
    a short wait for any extra copy)."""
    return await session_records(
        settings,
        topics.TAGS,
        records.TagEvent,
        session_id,
        enough=lambda found: len(found) >= expected,
        timeout_s=timeout_s,
    )


async def raw_exchange(
    url: str, send: list[Any], until: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Send raw frames (str, bytes or dicts) on one connection; collect replies."""
    received: list[dict[str, Any]] = []
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        for item in send:
            if isinstance(item, bytes):
                await ws.send_bytes(item)
            elif isinstance(item, str):
                await ws.send_str(item)
            else:
                await ws.send_str(json.dumps(item))
        async with asyncio.timeout(10):
            while not until(received):
                message = json.loads((await ws.receive()).data)
                if message["type"] == "clock_probe":
                    await ws.send_str(
                        json.dumps(
                            {
                                "type": "clock_reply",
                                "probe_id": message["probe_id"],
                                "server_send_us": message["server_send_us"],
                                "client_time_us": now_us(),
                            }
                        )
                    )
                received.append(message)
        assert not ws.closed
    return received


def codes(received: list[dict[str, Any]]) -> list[str]:
    return [m["code"] for m in received if m["type"] == "error"]


# ---------------------------------------------------------------- admission


async def test_tags_before_hello_and_bad_tokens_are_refused_and_the_socket_stays(
    served: Served,
) -> None:
    good = token_for(served.session.session_id, "dir", "director")
    other = token_for("s-nobody", "dir", "director")
    refused = await raw_exchange(
        served.url,
        [
            {"type": "tag", "tag_id": "x" * 8},
            {"type": "hello", "token": "garbage"},
            {"type": "hello", "token": other},
            {"type": "hello", "token": token_for(served.session.session_id, "zoe", "performer")},
            {"type": "hello", "token": good},
        ],
        until=lambda got: any(m["type"] == "welcome" for m in got),
    )
    assert codes(refused) == ["malformed", "bad_token", "unknown_session", "not_in_roster"]
    welcome = next(m for m in refused if m["type"] == "welcome")
    assert welcome["rater_id"] == "dir"
    assert [p["performer_id"] for p in welcome["roster"]] == ["ana", "ben"]
    assert len(welcome["vocabulary"]) == len(DEFAULT_VOCABULARY)


# ---------------------------------------------------------------- bad input


async def test_every_bad_message_gets_its_error_and_the_session_goes_on(
    served: Served, settings: Settings
) -> None:
    async with served.client(participant="ana", role="performer") as client:
        good = await client.tag("ana", "laughter")
        bad: list[tuple[str, str]] = [
            ("{not json", "malformed"),
            (json.dumps({"type": "tag", "tag_id": "t" * 8, "note": "x" * 5000}), "too_big"),
            (json.dumps({"type": "hello", "token": client.token}), "unexpected"),
        ]
        for raw, _ in bad:
            await client.send_raw(raw)
        unknown_label = await client.tag("ana", "boredom")
        unknown_performer = await client.tag("zoe", "laughter")
        not_mine = await client.tag("ben", "laughter")
        await client.wait_for(lambda: len(client.errors) >= 6)
        by_tag = {e.get("tag_id"): e["code"] for e in client.errors}
        assert by_tag[unknown_label] == "unknown_label"
        assert by_tag[unknown_performer] == "unknown_performer"
        assert by_tag[not_mine] == "forbidden"
        assert [e["code"] for e in client.errors if "tag_id" not in e] == [code for _, code in bad]
        after = await client.tag("ana", "surprise")
        await client.wait_acked([good, after])
    stored = await tags_on_topic(settings, served.session.session_id, expected=2)
    assert sorted(t.tag_id for t in stored) == sorted([good, after])
    assert sum(served.service.refusals.values()) >= 6


async def test_too_frequent_tags_get_an_error_and_are_not_stored(
    served: Served, settings: Settings
) -> None:
    burst = served.service.limits.burst
    async with served.client() as client:
        sent = [await client.tag("ana", "amusement") for _ in range(burst + 20)]
        await client.wait_for(lambda: len(client.acks) + len(client.errors) >= len(sent))
        refused = [e["tag_id"] for e in client.errors if e["code"] == "too_frequent"]
        assert 15 <= len(refused) <= 20  # a few tokens come back while the burst is read
        assert set(refused).isdisjoint(client.acks)
        assert set(refused) | set(client.acks) == set(sent)


async def test_binary_frames_are_refused(served: Served) -> None:
    got = await raw_exchange(
        served.url, [b"\x00\x01", {"type": "hello", "token": "x"}], until=lambda g: len(g) >= 2
    )
    assert codes(got)[:2] == ["malformed", "bad_token"]


# ---------------------------------------------------------------- idempotence and loss


async def test_a_duplicate_tag_id_is_stored_once(served: Served, settings: Settings) -> None:
    async with served.client() as client:
        first = await client.tag("ben", "anger", tag_id="dup-tag-0001")
        await client.wait_acked([first])
        client.acks.clear()
        await client.tag("ben", "anger", tag_id="dup-tag-0001")
        await client.wait_acked([first])
        assert client.acks[first]["duplicate"] is True
    stored = await tags_on_topic(settings, served.session.session_id, expected=1)
    assert [t.tag_id for t in stored] == ["dup-tag-0001"]


async def test_200_tags_in_flight_survive_a_dropped_connection_exactly_once(
    served: Served, settings: Settings
) -> None:
    client = served.client(participant="obs", role="observer")
    await client.connect()
    try:
        # The connection dies with the first 100 stored but their acks lost on the way,
        # and the next 100 sent into it just before it went.
        client.deaf = True
        stored_unheard = [await client.tag("ana", "hesitation") for _ in range(100)]
        await client.sent_all()
        await asyncio.sleep(0.5)
        sent_late = [await client.tag("ben", "hesitation") for _ in range(100)]
        await client.sent_all()
        await client.drop()
        sent = stored_unheard + sent_late
        assert set(client.unacked) == set(sent)
        client.deaf = False
        await client.connect()  # re-sends everything unacknowledged
        await client.wait_acked(sent, timeout_s=20)
        assert sum(client.acks[t]["duplicate"] for t in stored_unheard) == 100
    finally:
        await client.close()
    stored = await tags_on_topic(settings, served.session.session_id, expected=200)
    counts = Counter(t.tag_id for t in stored)
    assert set(counts) == set(sent)
    assert max(counts.values()) == 1


# ---------------------------------------------------------------- timing


async def test_a_reconnecting_client_keeps_its_clock_sync(served: Served) -> None:
    client = served.client(participant="obs", role="observer")
    await client.connect()
    try:
        await client.wait_for(lambda: client.probes_answered >= 10)
        sync = served.service.clock_sync(served.session.session_id, "obs", client.clock_id)
        before = sync.accepted
        assert before >= 5
        await client.drop()
        await client.connect()
        # The first tag after the reconnect already uses everything measured before it.
        tag_id = await client.tag("ana", "fear")
        await client.wait_acked([tag_id])
        same = served.service.clock_sync(served.session.session_id, "obs", client.clock_id)
        assert same is sync
        assert same.accepted > before
        assert same.steps == 0
    finally:
        await client.close()


async def test_clock_offset_and_reaction_lag_are_applied(
    served: Served, settings: Settings
) -> None:
    skewed = SimulatedClock(offset_us=1_500_000)
    async with served.client(clock=skewed) as client:
        await client.send_raw(json.dumps({"type": "reaction_lag", "lag_us": 120_000}))
        await client.wait_for(lambda: bool(client.replies))
        assert client.replies[-1] == {"type": "reaction_lag", "lag_us": 120_000}
        press = now_us()
        tag_id = await client.tag("ana", "fear", press_us=press)
        await client.wait_acked([tag_id])
        ack = client.acks[tag_id]
    # Loopback round trips are well under a millisecond.
    assert abs(ack["ts_us"] - (press - 120_000)) <= 2_000
    [stored] = await tags_on_topic(settings, served.session.session_id, expected=1)
    assert stored.ts_us == ack["ts_us"]
    assert stored.timing.reaction_lag_us == 120_000
    assert abs(stored.timing.clock_offset_us + 1_500_000) <= 2_000
    assert stored.timing.client_press_ts_us == skewed.at(press)
    assert stored.rater_id == "dir"


async def test_undo_of_another_raters_tag_is_forbidden(served: Served) -> None:
    async with served.client(participant="obs1", role="observer") as one:
        tag_id = await one.tag("ana", "sadness")
        await one.wait_acked([tag_id])
    async with served.client(participant="obs2", role="observer") as two:
        undo = {
            "type": "undo",
            "tag_id": "undo-attempt-1",
            "undoes_tag_id": tag_id,
            "performer_id": "ana",
            "client_press_us": two.clock.now(),
        }
        await two.send_raw(json.dumps(undo))
        await two.wait_for(lambda: bool(two.errors))
        assert two.errors[0]["code"] == "forbidden"


# ---------------------------------------------------------------- broker down


async def test_tags_are_held_durably_while_the_broker_is_down_then_delivered(
    tmp_path: Path,
) -> None:
    broker = EmbeddedBroker(port=0, log_path=tmp_path / "broker.log")
    broker.start()
    own = Settings(
        broker_port=broker.port, state_dir=tmp_path / "state", tag_produce_timeout_ms=300
    )
    async with clients.admin_client(own) as admin:
        await topics.ensure_shared_topics(admin, own)
    try:
        async with serve_tags(own, session_record("held-1")) as served:
            client = served.client()
            async with client:
                before = await client.tag("ana", "disgust")
                await client.wait_acked([before])
                assert client.acks[before]["held"] is False
                broker.stop()
                during = [await client.tag("ben", "confusion") for _ in range(3)]
                await client.wait_acked(during, timeout_s=10)
                assert all(client.acks[t]["held"] for t in during)
                spooled = list((own.state_dir / "tag-spool").glob("*.jsonl"))
                assert spooled, "held tags must be on disk"
                # The memory broker comes back empty on the same port: the tags arrive late.
                broker = EmbeddedBroker(port=own.broker_port, log_path=tmp_path / "broker2.log")
                broker.start()
                async with clients.admin_client(own) as admin:
                    await topics.ensure_shared_topics(admin, own)
                stored = await tags_on_topic(own, "held-1", expected=3, timeout_s=40)
                assert {t.tag_id for t in stored} >= set(during)
                async with asyncio.timeout(10):
                    while served.service.outbox.backlog:  # noqa: ASYNC110 (a plain flag)
                        await asyncio.sleep(0.1)
                assert not list((own.state_dir / "tag-spool").glob("*.jsonl"))
    finally:
        broker.stop()
