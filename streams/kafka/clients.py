"""The one place Kafka clients are built from settings: producers, consumers, admin, faust.

The embedded broker (tansu 0.6.0) does not answer a waiting fetch when data arrives: a
consumer always waits out its ``fetch_max_wait_ms``. Consumers built here use a short
wait with the embedded broker and an ordinary one with a real cluster. faust hardcodes
1500 ms in its aiokafka driver, so faust apps made here use a transport that shortens it.

Every client built here, faust's included, also gets the cluster's security settings
(``kafka_security_protocol``, SASL credentials, TLS files).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import aiokafka
import faust
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.helpers import create_ssl_context
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.auth import CredentialsT

from streams import records
from streams.errors import BadInputError
from streams.records import R
from streams.settings import Settings

#: faust transport scheme registered by this distribution (pyproject entry point
#: ``faust.transports``) for the embedded broker.
EMBEDDED_TRANSPORT_SCHEME = "livetag-embedded"
#: ...and the one for a Kafka cluster.
CLUSTER_TRANSPORT_SCHEME = "livetag-kafka"

CLIENT_ID = "livetag"


class KafkaSecurityError(BadInputError, ValueError):
    """A Kafka TLS file cannot be used; the message names the setting."""


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context for SSL and SASL_SSL (None for the plaintext protocols).

    Without ``kafka_ssl_cafile`` the system's CAs verify the brokers, and host names are
    always checked.
    """
    if settings.kafka_security_protocol not in ("SSL", "SASL_SSL"):
        return None
    cafile, certfile, keyfile = (
        settings.kafka_ssl_cafile,
        settings.kafka_ssl_certfile,
        settings.kafka_ssl_keyfile,
    )
    for name, path in (
        ("LIVETAG_KAFKA_SSL_CAFILE", cafile),
        ("LIVETAG_KAFKA_SSL_CERTFILE", certfile),
        ("LIVETAG_KAFKA_SSL_KEYFILE", keyfile),
    ):
        if path is not None and not path.is_file():
            raise KafkaSecurityError(f"{name}={str(path)!r}: no such file")
    # The CA bundle alone first, so an error names the file that is wrong.
    try:
        create_ssl_context(cafile=cafile)
    except (ssl.SSLError, OSError) as exc:
        raise KafkaSecurityError(
            f"LIVETAG_KAFKA_SSL_CAFILE={str(cafile)!r} is not a PEM CA bundle: {exc}"
        ) from None
    try:
        return create_ssl_context(cafile=cafile, certfile=certfile, keyfile=keyfile)
    except (ssl.SSLError, OSError) as exc:
        raise KafkaSecurityError(
            f"LIVETAG_KAFKA_SSL_CERTFILE={str(certfile)!r} with LIVETAG_KAFKA_SSL_KEYFILE="
            f"{str(keyfile)!r} is not a PEM client certificate and its key: {exc}"
        ) from None


def security_options(settings: Settings) -> dict[str, Any]:
    """aiokafka's security keyword arguments (producer, consumer and admin take the same)."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    context = kafka_ssl_context(settings)
    if context is not None:
        options["ssl_context"] = context
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        assert settings.kafka_sasl_password is not None  # Settings checks SASL is complete
        # aiokafka reads the "plain" user and password for the SCRAM mechanisms too.
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """The same security settings as faust's ``broker_credentials``.

    faust derives the protocol from the credentials' type: SSLCredentials is SSL, and
    SASLCredentials is SASL_SSL with a TLS context, SASL_PLAINTEXT without one.
    """
    protocol = settings.kafka_security_protocol
    context = kafka_ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        assert settings.kafka_sasl_password is not None  # Settings checks SASL is complete
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=settings.kafka_sasl_password.get_secret_value(),
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    return None


def client_options(settings: Settings) -> dict[str, Any]:
    return {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": CLIENT_ID,
        **security_options(settings),
    }


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """A producer that waits for the broker's acknowledgement of every record.

    No idempotent producer and no transactions: the embedded broker supports neither, so
    livetag is at-least-once and every record has an identity consumers dedupe on.
    """
    options: dict[str, Any] = {
        **client_options(settings),
        "acks": "all",
        "linger_ms": settings.producer_linger_ms,
        "max_request_size": 4 * 1024 * 1024,
        "request_timeout_ms": 15_000,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


def make_audio_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """The capture server's producer for audio chunks: it gathers them longer than the
    other producers (``audio_linger_ms``), into fewer batches."""
    return make_producer(settings, **{"linger_ms": settings.audio_linger_ms, **overrides})


def make_consumer(
    settings: Settings, *topics: str, group_id: str | None = None, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer with the fetch wait that suits the broker in use."""
    options: dict[str, Any] = {
        **client_options(settings),
        "group_id": group_id,
        "fetch_max_wait_ms": settings.consumer_fetch_wait_ms,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_partition_fetch_bytes": 4 * 1024 * 1024,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


def make_admin(settings: Settings) -> AIOKafkaAdminClient:
    return AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=15_000)


@asynccontextmanager
async def admin_client(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = make_admin(settings)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


#: faust's services log through a logger named after their class's module, so faust's own
#: lines (starting, stopping, rebalances) from the subclasses here would read as livetag's
#: code; they log under faust's name instead (livetag up keeps faust's lines in the logs).
FAUST_LOG = logging.getLogger("faust.livetag")


class LivetagFaustApp(faust.App):
    """A faust app that knows the consumer fetch wait its settings ask for."""

    logger = FAUST_LOG
    consumer_fetch_wait_ms: int = 1500


def raw_topic(app: Any, name: str) -> Any:
    """A topic of ``app`` whose keys and values faust passes through as bytes: livetag's
    records are encoded and decoded by streams.records, headers included."""
    return app.topic(name, key_type=bytes, value_type=bytes, value_serializer="raw")


def make_faust_app(
    settings: Settings, app_id: str, *, fetch_wait_ms: int | None = None, **conf: Any
) -> LivetagFaustApp:
    """A faust app on the configured broker (at-least-once: no transactions on tansu);
    its consumer waits ``fetch_wait_ms`` per fetch (default: the settings' wait)."""
    scheme = (
        EMBEDDED_TRANSPORT_SCHEME if settings.uses_embedded_broker else CLUSTER_TRANSPORT_SCHEME
    )
    brokers = ";".join(f"{scheme}://{server}" for server in settings.bootstrap_servers.split(","))
    options: dict[str, Any] = {
        "broker": brokers,
        "processing_guarantee": "at_least_once",
        "producer_acks": -1,
        "producer_linger": settings.producer_linger_ms / 1000,
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "web_enabled": False,
        "consumer_auto_offset_reset": "earliest",
        # faust keeps table state on disk; under the state folder, not the working directory.
        "datadir": str(settings.state_dir / "faust" / app_id),
    }
    credentials = faust_credentials(settings)
    if credentials is not None:
        options["broker_credentials"] = credentials
    options.update(conf)
    # faust creates the app's own folder but not its parents.
    Path(options["datadir"]).parent.mkdir(parents=True, exist_ok=True)
    app = LivetagFaustApp(app_id, **options)
    app.consumer_fetch_wait_ms = fetch_wait_ms or settings.consumer_fetch_wait_ms
    return app


class _ShortFetchWaitConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    logger = FAUST_LOG

    def _create_worker_consumer(self, transport: Any) -> aiokafka.AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # faust passes fetch_max_wait_ms=1500 with no setting to change it; aiokafka
        # keeps the value in this attribute until start() builds the fetcher.
        # tests/unit/test_kafka.py fails if either library changes this.
        consumer._fetch_max_wait_ms = getattr(self.app, "consumer_fetch_wait_ms", 1500)
        return consumer


class HeldAckConsumer(faust_aiokafka.Consumer):
    """faust's consumer, never committing past a message a stream has not acked yet.

    livetag's agents ack some events only when their results are out (a face frame when its
    record is produced, the aligner's input when its label windows are), and rely on faust
    committing only up to the first unacked offset. faust 0.15 commits past an unacked
    message that sits right at the committed offset (and checks nothing before the first
    commit), so the acked offsets above the oldest unacked one are hidden from it here.
    tests/unit/test_kafka.py fails if faust changes the state this reads.
    """

    logger = FAUST_LOG
    _oldest_unacked: dict[Any, int] | None = None

    def _oldest_unacked_offsets(self) -> dict[Any, int]:
        """The oldest unacked offset of every partition, in one pass over the unacked
        messages (thousands while the aligner holds its input)."""
        oldest: dict[Any, int] = {}
        for message in list(self._unacked_messages):
            if not message.acked:
                known = oldest.get(message.tp)
                if known is None or message.offset < known:
                    oldest[message.tp] = message.offset
        return oldest

    def _filter_committable_offsets(self, tps: Any) -> dict[Any, int]:
        # One pass for all partitions, not one per partition: a commit cost ~5% of the
        # processors' event loop that way.
        self._oldest_unacked = self._oldest_unacked_offsets()
        try:
            committable: dict[Any, int] = super()._filter_committable_offsets(tps)
            return committable
        finally:
            self._oldest_unacked = None

    def _new_offset(self, tp: Any) -> int | None:
        oldest = self._oldest_unacked
        oldest_unacked = (oldest if oldest is not None else self._oldest_unacked_offsets()).get(tp)
        acked: list[int] = self._acked[tp]
        held_back: list[int] = []
        if oldest_unacked is not None:
            held_back = [o for o in acked if o > oldest_unacked]
            acked[:] = [o for o in acked if o < oldest_unacked]
        try:
            new_offset: int | None = super()._new_offset(tp)
            return new_offset
        finally:
            acked.extend(held_back)


class _ShortFetchWaitConsumer(HeldAckConsumer):
    def _new_consumer_thread(self) -> _ShortFetchWaitConsumerThread:
        return _ShortFetchWaitConsumerThread(self, loop=self.loop, beacon=self.beacon)


class EmbeddedBrokerTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport with the short fetch wait the embedded broker needs."""

    Consumer = _ShortFetchWaitConsumer
    default_port = 9092


class ClusterTransport(faust_aiokafka.Transport):
    """faust's aiokafka transport for a Kafka cluster, with livetag's commit rule."""

    Consumer = HeldAckConsumer
    default_port = 9092


def event_headers(
    raw: Mapping[str, bytes] | Sequence[tuple[str, bytes]] | None,
) -> list[tuple[str, bytes]]:
    """A faust event's headers (a mapping or pairs, depending on the path) as pairs."""
    if raw is None:
        return []
    if isinstance(raw, Mapping):
        return list(raw.items())
    return list(raw)


async def decoded_events(
    stream: Any,
    record_class: type[R],
    source_topic: str,
    dead_letter: Callable[[Any, str, str], Awaitable[None]],
) -> AsyncIterator[tuple[Any, R]]:
    """``(event, record)`` for each event of a faust ``stream``, left unacked for the caller
    to ack when its output is out; an event that does not decode is dead-lettered with the
    reason and acked here."""
    async for event in cast(Any, stream).noack().events():
        try:
            record = records.decode(record_class, event.value, event_headers(event.headers))
        except records.RecordError as exc:
            await dead_letter(event, source_topic, str(exc))
            event.ack()
            continue
        yield event, record
