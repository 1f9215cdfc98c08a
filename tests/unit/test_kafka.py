from __future__ import annotations

from typing import Any, cast

import pytest

from infra.settings import Settings
from streams import kafka


async def test_consumers_get_the_short_wait_on_the_embedded_broker() -> None:
    consumer = kafka.make_consumer(Settings(embedded_fetch_wait_ms=15), "livetag.tags")
    cluster = kafka.make_consumer(Settings(kafka_bootstrap="k:9092"), "livetag.tags")
    try:
        assert consumer._fetch_max_wait_ms == 15
        assert cluster._fetch_max_wait_ms == Settings().cluster_fetch_wait_ms
    finally:
        await consumer.stop()
        await cluster.stop()


async def _faust_worker_fetch_wait(settings: Settings) -> int:
    app = kafka.make_faust_app(settings, "livetag-test-fetch-wait")
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
    app = kafka.make_faust_app(settings, "livetag-test-scheme")
    assert app.conf.broker[0].scheme == kafka.EMBEDDED_TRANSPORT_SCHEME
    assert type(app.transport) is kafka.EmbeddedBrokerTransport
    assert await _faust_worker_fetch_wait(settings) == 25


async def test_faust_on_a_real_cluster_uses_the_stock_transport() -> None:
    settings = Settings(kafka_bootstrap="kafka-1:9092,kafka-2:9093")
    app = kafka.make_faust_app(settings, "livetag-test-cluster")
    assert [url.scheme for url in app.conf.broker] == ["kafka", "kafka"]
    assert type(app.transport) is not kafka.EmbeddedBrokerTransport
    assert await _faust_worker_fetch_wait(settings) == 1500


@pytest.mark.parametrize("servers", ["127.0.0.1:1", "127.0.0.1:1,127.0.0.2:2"])
async def test_producer_targets_the_configured_servers(servers: str) -> None:
    producer = kafka.make_producer(Settings(kafka_bootstrap=servers))
    try:
        assert producer.client._bootstrap_servers == servers
    finally:
        await producer.stop()
