from __future__ import annotations

from typing import Any, cast

import pytest

from streams.kafka import clients
from streams.settings import Settings


async def test_consumers_get_the_short_wait_on_the_embedded_broker() -> None:
    consumer = clients.make_consumer(Settings(embedded_fetch_wait_ms=15), "livetag.tags")
    cluster = clients.make_consumer(Settings(kafka_bootstrap="k:9092"), "livetag.tags")
    try:
        assert consumer._fetch_max_wait_ms == 15
        assert cluster._fetch_max_wait_ms == Settings().cluster_fetch_wait_ms
    finally:
        await consumer.stop()
        await cluster.stop()


async def _faust_worker_fetch_wait(settings: Settings, wait_ms: int | None = None) -> int:
    app = clients.make_faust_app(settings, "livetag-test-fetch-wait", fetch_wait_ms=wait_ms)
    thread = cast(Any, app.consumer)._thread
    created = thread._create_worker_consumer(app.consumer.transport)
    wait: int = created._fetch_max_wait_ms
    await created.stop()
    # The consumer thread was never started, so nothing closes the loop it made for itself.
    thread.thread_loop.close()
    return wait


async def test_faust_worker_consumer_fetch_wait_is_overridden() -> None:
    # faust hardcodes 1500 ms; if faust or aiokafka rename what we override, this fails.
    settings = Settings(embedded_fetch_wait_ms=25)
    app = clients.make_faust_app(settings, "livetag-test-scheme")
    assert app.conf.broker[0].scheme == clients.EMBEDDED_TRANSPORT_SCHEME
    assert type(app.transport) is clients.EmbeddedBrokerTransport
    assert await _faust_worker_fetch_wait(settings) == 25


async def test_session_processors_wait_longer_per_fetch_on_the_embedded_broker() -> None:
    # Each of their fetches costs the broker a walk over a session's stored batches.
    settings = Settings(embedded_fetch_wait_ms=10, embedded_stream_fetch_wait_ms=30)
    assert await _faust_worker_fetch_wait(settings, settings.stream_fetch_wait_ms) == 30
    assert await _faust_worker_fetch_wait(settings) == 10


async def test_faust_on_a_real_cluster_keeps_its_fetch_wait() -> None:
    settings = Settings(kafka_bootstrap="kafka-1:9092,kafka-2:9093")
    app = clients.make_faust_app(settings, "livetag-test-cluster")
    assert [url.scheme for url in app.conf.broker] == ["livetag-kafka", "livetag-kafka"]
    assert type(app.transport) is clients.ClusterTransport
    assert await _faust_worker_fetch_wait(settings) == 1500


@pytest.mark.parametrize("servers", ["127.0.0.1:1", "127.0.0.1:1,127.0.0.2:2"])
async def test_producer_targets_the_configured_servers(servers: str) -> None:
    producer = clients.make_producer(Settings(kafka_bootstrap=servers))
    try:
        assert producer.client._bootstrap_servers == servers
    finally:
        await producer.stop()


async def test_audio_producer_gathers_longer_on_the_embedded_broker() -> None:
    embedded = Settings(kafka_bootstrap=None, embedded_audio_linger_ms=80, producer_linger_ms=5)
    cluster = Settings(kafka_bootstrap="k:9092", embedded_audio_linger_ms=80, producer_linger_ms=5)
    producers = [clients.make_audio_producer(embedded), clients.make_audio_producer(cluster)]
    try:
        # aiokafka keeps the linger on its accumulator, in seconds.
        lingers = [p._message_accumulator._linger_time for p in producers]
        assert lingers == [0.08, 0.005]
    finally:
        for producer in producers:
            await producer.stop()


class _Message:
    def __init__(self, tp: object, offset: int) -> None:
        self.tp, self.offset, self.acked = tp, offset, False


def _consumer_with(committed: int | None, acked: list[int], unacked: list[int]) -> Any:
    """faust's commit bookkeeping for one partition, as its Consumer keeps it."""
    from collections import defaultdict
    from weakref import WeakSet

    from intervaltree import IntervalTree  # type: ignore[import-untyped]

    consumer: Any = clients.HeldAckConsumer.__new__(clients.HeldAckConsumer)
    consumer._gap = defaultdict(IntervalTree)
    consumer._acked = defaultdict(list, {"tp": list(acked)})
    consumer._acked_index = defaultdict(set, {"tp": set(acked)})
    consumer._committed_offset = defaultdict(lambda: None, {"tp": committed})
    consumer._unacked_messages = WeakSet()
    consumer.kept = [_Message("tp", offset) for offset in unacked]  # alive for the WeakSet
    for message in consumer.kept:
        consumer._unacked_messages.add(message)
    return consumer


@pytest.mark.parametrize("committed", [None, 0, 10])
def test_commits_never_pass_a_message_still_waiting_for_its_ack(committed: int | None) -> None:
    start = committed or 0
    # The message at the committed offset waits (e.g. a tag whose windows are not out);
    # everything after it is acked. faust alone would commit past it.
    consumer = _consumer_with(committed, list(range(start + 1, start + 6)), [start])
    assert consumer._new_offset("tp") is None
    consumer.kept[0].acked = True
    consumer._acked["tp"].append(start)
    assert consumer._new_offset("tp") == start + 6


def test_commits_go_up_to_the_first_message_waiting_for_its_ack() -> None:
    consumer = _consumer_with(10, [10, 11, 12, 14, 15], [13])
    assert consumer._new_offset("tp") == 13
    consumer._committed_offset["tp"] = 13  # what faust's commit() records
    consumer.kept[0].acked = True
    consumer._acked["tp"].append(13)
    assert consumer._new_offset("tp") == 16


def test_a_commit_of_many_partitions_holds_each_at_its_own_oldest_unacked() -> None:
    consumer = _consumer_with(10, [10, 11, 12, 14, 15], [13])
    consumer._acked["other"] = [20, 21, 22]
    consumer._acked_index["other"] = {20, 21, 22}
    consumer._committed_offset["other"] = 20
    consumer.kept.append(_Message("other", 23))  # read, not acked yet: the end stays 23
    consumer._unacked_messages.add(consumer.kept[-1])
    assert consumer._filter_committable_offsets(["tp", "other"]) == {"tp": 13, "other": 23}
    # The per-commit view is gone afterwards: a later call sees later acks.
    consumer.kept[0].acked = True
    consumer._acked["tp"].append(13)
    consumer._committed_offset["tp"] = 13
    assert consumer._filter_committable_offsets(["tp"]) == {"tp": 16}


def test_faust_uses_livetags_commit_rule_on_both_transports() -> None:
    for settings in (Settings(), Settings(kafka_bootstrap="kafka-1:9092")):
        app = clients.make_faust_app(settings, "livetag-test-commits")
        assert issubclass(app.transport.Consumer, clients.HeldAckConsumer)
