"""Kafka security settings reach every client livetag builds: aiokafka's and faust's."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any, cast

import faust
import pytest
from faust.transport.drivers import aiokafka as faust_aiokafka
from pydantic import ValidationError

from streams.kafka import clients
from streams.settings import Settings
from tests.tls_certs import CertFiles, make_self_signed

PROTOCOLS = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
PASSWORD = "broker-password-not-for-logs"


@pytest.fixture(scope="module")
def cluster_ca(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_self_signed(tmp_path_factory.mktemp("kafka-ca"), "kafka-test-ca")


@pytest.fixture(scope="module")
def client_cert(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_self_signed(tmp_path_factory.mktemp("kafka-client"), "livetag-client")


def cluster_settings(
    protocol: str, cluster_ca: CertFiles, client_cert: CertFiles, state_dir: Path
) -> Settings:
    options: dict[str, Any] = {
        "kafka_bootstrap": "kafka-1:9093,kafka-2:9093",
        "kafka_security_protocol": protocol,
        "state_dir": state_dir,
    }
    if protocol.startswith("SASL_"):
        options |= {
            "kafka_sasl_mechanism": "SCRAM-SHA-512",
            "kafka_sasl_username": "livetag",
            "kafka_sasl_password": PASSWORD,
        }
    if protocol in ("SSL", "SASL_SSL"):
        options |= {
            "kafka_ssl_cafile": cluster_ca.cert_file,
            "kafka_ssl_certfile": client_cert.cert_file,
            "kafka_ssl_keyfile": client_cert.key_file,
        }
    return Settings(**options)


def assert_client_security(client: Any, protocol: str) -> None:
    """``client`` is the AIOKafkaClient under a producer, consumer or admin client."""
    assert client._security_protocol == protocol
    context = client._ssl_context
    if protocol in ("SSL", "SASL_SSL"):
        assert isinstance(context, ssl.SSLContext)
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname
        trusted = {
            value
            for ca in cast(list[dict[str, Any]], context.get_ca_certs())
            for rdn in ca["subject"]
            for key, value in rdn
            if key == "commonName"
        }
        assert "kafka-test-ca" in trusted
    else:
        assert context is None
    if protocol.startswith("SASL_"):
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert client._sasl_plain_username == "livetag"
        assert client._sasl_plain_password == PASSWORD


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_producer_consumer_and_admin_carry_the_security_settings(
    protocol: str, cluster_ca: CertFiles, client_cert: CertFiles, tmp_path: Path
) -> None:
    settings = cluster_settings(protocol, cluster_ca, client_cert, tmp_path)
    producer = clients.make_producer(settings)
    consumer = clients.make_consumer(settings, "livetag.tags", group_id="livetag-test")
    admin = clients.make_admin(settings)
    try:
        assert_client_security(producer.client, protocol)
        assert_client_security(consumer._client, protocol)
        assert_client_security(admin._client, protocol)
    finally:
        await producer.stop()
        await consumer.stop()
        await admin.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_faust_apps_get_the_same_credentials(
    protocol: str, cluster_ca: CertFiles, client_cert: CertFiles, tmp_path: Path
) -> None:
    settings = cluster_settings(protocol, cluster_ca, client_cert, tmp_path)
    app = clients.make_faust_app(settings, f"livetag-test-auth-{protocol.lower()}")
    credentials = app.conf.broker_credentials
    if protocol == "PLAINTEXT":
        assert credentials is None
    elif protocol == "SSL":
        assert isinstance(credentials, faust.SSLCredentials)
    else:
        assert isinstance(credentials, faust.SASLCredentials)
        assert credentials.username == "livetag"
        assert credentials.password == PASSWORD
        assert credentials.mechanism.value == "SCRAM-SHA-512"
    # What faust's driver hands aiokafka: it derives the protocol from the credentials.
    auth = faust_aiokafka.credentials_to_aiokafka_auth(credentials, app.conf.ssl_context)
    assert auth["security_protocol"] == protocol
    assert dict(cast(Any, app.producer)._settings_auth())["security_protocol"] == protocol
    # And the consumer faust's worker really builds.
    thread = cast(Any, app.consumer)._thread
    created = thread._create_worker_consumer(app.consumer.transport)
    try:
        assert_client_security(created._client, protocol)
    finally:
        await created.stop()
        # Never started, so nothing else closes the loop the thread made for itself.
        thread.thread_loop.close()


def test_the_password_stays_out_of_reprs(
    cluster_ca: CertFiles, client_cert: CertFiles, tmp_path: Path
) -> None:
    settings = cluster_settings("SASL_SSL", cluster_ca, client_cert, tmp_path)
    assert PASSWORD not in repr(settings)
    credentials = clients.faust_credentials(settings)
    assert PASSWORD not in repr(credentials)


def test_tls_to_the_embedded_broker_is_refused() -> None:
    with pytest.raises(ValidationError, match="LIVETAG_KAFKA_BOOTSTRAP"):
        Settings(kafka_security_protocol="SSL")


@pytest.mark.parametrize(
    ("missing", "variable"),
    [
        ("kafka_sasl_password", "LIVETAG_KAFKA_SASL_PASSWORD"),
        ("kafka_sasl_username", "LIVETAG_KAFKA_SASL_USERNAME"),
        ("kafka_sasl_mechanism", "LIVETAG_KAFKA_SASL_MECHANISM"),
    ],
)
def test_sasl_needs_mechanism_user_and_password(missing: str, variable: str) -> None:
    options: dict[str, Any] = {
        "kafka_bootstrap": "kafka:9093",
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "PLAIN",
        "kafka_sasl_username": "livetag",
        "kafka_sasl_password": PASSWORD,
    }
    del options[missing]
    with pytest.raises(ValidationError, match=variable):
        Settings(**options)


def test_credentials_the_protocol_would_ignore_are_refused(cluster_ca: CertFiles) -> None:
    with pytest.raises(ValidationError, match="LIVETAG_KAFKA_SASL_PASSWORD"):
        Settings(kafka_bootstrap="kafka:9093", kafka_sasl_password=PASSWORD)
    with pytest.raises(ValidationError, match="LIVETAG_KAFKA_SSL_CAFILE"):
        Settings(
            kafka_bootstrap="kafka:9093",
            kafka_security_protocol="SASL_PLAINTEXT",
            kafka_sasl_mechanism="PLAIN",
            kafka_sasl_username="livetag",
            kafka_sasl_password=PASSWORD,
            kafka_ssl_cafile=cluster_ca.cert_file,
        )


def test_unknown_protocol_or_mechanism_is_refused() -> None:
    with pytest.raises(ValidationError, match="kafka_security_protocol"):
        Settings(kafka_bootstrap="kafka:9093", kafka_security_protocol="TLS")
    with pytest.raises(ValidationError, match="kafka_sasl_mechanism"):
        Settings(
            kafka_bootstrap="kafka:9093",
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="GSSAPI",
            kafka_sasl_username="livetag",
            kafka_sasl_password=PASSWORD,
        )


def test_unusable_tls_files_name_their_setting(
    cluster_ca: CertFiles, client_cert: CertFiles, tmp_path: Path
) -> None:
    base: dict[str, Any] = {"kafka_bootstrap": "kafka:9093", "kafka_security_protocol": "SSL"}
    absent = Settings(**base, kafka_ssl_cafile=tmp_path / "absent.pem")
    with pytest.raises(clients.KafkaSecurityError, match=r"LIVETAG_KAFKA_SSL_CAFILE.*no such file"):
        clients.make_producer(absent)
    # A key where the CA bundle belongs.
    not_a_ca = Settings(**base, kafka_ssl_cafile=cluster_ca.key_file)
    with pytest.raises(clients.KafkaSecurityError, match="LIVETAG_KAFKA_SSL_CAFILE"):
        clients.kafka_ssl_context(not_a_ca)
    # The client certificate with another certificate's key.
    mismatched = Settings(
        **base,
        kafka_ssl_cafile=cluster_ca.cert_file,
        kafka_ssl_certfile=client_cert.cert_file,
        kafka_ssl_keyfile=cluster_ca.key_file,
    )
    with pytest.raises(clients.KafkaSecurityError, match="LIVETAG_KAFKA_SSL_KEYFILE"):
        clients.make_faust_app(mismatched.model_copy(update={"state_dir": tmp_path}), "t")
    with pytest.raises(ValidationError, match="LIVETAG_KAFKA_SSL_CERTFILE"):
        Settings(**base, kafka_ssl_keyfile=client_cert.key_file)


def test_ssl_without_a_ca_file_trusts_the_system_store(tmp_path: Path) -> None:
    settings = Settings(kafka_bootstrap="kafka:9093", kafka_security_protocol="SSL")
    context = clients.kafka_ssl_context(settings)
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
