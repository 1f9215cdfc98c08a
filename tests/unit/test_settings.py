from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from streams.settings import Settings


def test_defaults_use_the_embedded_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIVETAG_KAFKA_BOOTSTRAP", raising=False)
    settings = Settings()
    assert settings.uses_embedded_broker
    assert settings.bootstrap_servers == "127.0.0.1:9092"
    assert settings.consumer_fetch_wait_ms == settings.embedded_fetch_wait_ms


def test_bootstrap_env_means_a_real_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVETAG_KAFKA_BOOTSTRAP", "kafka-1:9092,kafka-2:9092")
    settings = Settings()
    assert not settings.uses_embedded_broker
    assert settings.bootstrap_servers == "kafka-1:9092,kafka-2:9092"
    assert settings.consumer_fetch_wait_ms == settings.cluster_fetch_wait_ms


def test_embedded_broker_batching_and_fetch_waits_follow_the_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LIVETAG_KAFKA_BOOTSTRAP", raising=False)
    # The embedded broker walks a partition's stored batches on each fetch that returns
    # data: audio is gathered longer and the dashboard fetches at its own update rate.
    embedded = Settings(
        dashboard_update_hz=15, embedded_stream_fetch_wait_ms=25, embedded_audio_linger_ms=80
    )
    assert embedded.dashboard_fetch_wait_ms == 67
    assert embedded.audio_linger_ms == 80
    # Never shorter than the processors' wait, however fast the dashboard updates.
    fast = Settings(dashboard_update_hz=60, embedded_stream_fetch_wait_ms=25)
    assert fast.dashboard_fetch_wait_ms == 25
    cluster = Settings(kafka_bootstrap="kafka-1:9092", producer_linger_ms=5)
    assert cluster.dashboard_fetch_wait_ms == cluster.cluster_fetch_wait_ms
    assert cluster.audio_linger_ms == 5


@pytest.mark.parametrize("bad", ["kafka", "kafka:port", "kafka:0", ":9092"])
def test_bad_bootstrap_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ValidationError, match="expected host:port"):
        Settings(kafka_bootstrap=bad)


def test_toml_file_and_env_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "site.toml"
    config.write_text('broker_port = 19092\npartitions = 8\nlog_level = "DEBUG"\n')
    monkeypatch.setenv("LIVETAG_CONFIG", str(config))
    monkeypatch.setenv("LIVETAG_PARTITIONS", "2")
    settings = Settings()
    assert settings.broker_port == 19092
    assert settings.partitions == 2  # the environment wins over the file
    assert settings.log_level == "DEBUG"


def test_unknown_keys_and_missing_files_are_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "site.toml"
    config.write_text("brokr_port = 1\n")
    monkeypatch.setenv("LIVETAG_CONFIG", str(config))
    with pytest.raises(ValidationError, match="brokr_port"):
        Settings()
    monkeypatch.setenv("LIVETAG_CONFIG", str(tmp_path / "absent.toml"))
    with pytest.raises(FileNotFoundError, match="no such settings file"):
        Settings()


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError, match="frozen"):
        settings.partitions = 9  # type: ignore[misc]


def test_a_mistyped_environment_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.settings import load_settings

    monkeypatch.setenv("LIVETAG_BROKR_PORT", "1")
    with pytest.raises(ValueError, match="LIVETAG_BROKR_PORT"):
        load_settings()


# ---------------------------------------------------------------- TLS and Kafka security


def test_tls_cert_and_key_go_together(tmp_path: Path) -> None:
    from tests.tls_certs import make_self_signed

    files = make_self_signed(tmp_path)
    with pytest.raises(ValidationError, match="LIVETAG_TLS_CERT_FILE and LIVETAG_TLS_KEY_FILE"):
        Settings(tls_cert_file=files.cert_file)
    with pytest.raises(ValidationError, match="LIVETAG_TLS_CERT_FILE and LIVETAG_TLS_KEY_FILE"):
        Settings(tls_key_file=files.key_file)


def test_tls_makes_the_default_links_https(tmp_path: Path) -> None:
    from tests.tls_certs import make_self_signed

    plain = Settings()
    assert plain.capture_base_url.startswith("http://")
    assert plain.dashboard_base_url.startswith("http://")
    files = make_self_signed(tmp_path)
    secure = Settings(
        tls_cert_file=files.cert_file, tls_key_file=files.key_file, dashboard_port=9443
    )
    assert secure.capture_base_url == "https://127.0.0.1:8080"
    assert secure.dashboard_base_url == "https://127.0.0.1:9443"
    # A public URL (a proxy in front, say) is taken as given.
    proxied = secure.model_copy(update={"public_url": "https://live.example.org/"})
    assert proxied.capture_base_url == "https://live.example.org"


def test_unusable_tls_files_name_their_setting(tmp_path: Path) -> None:
    from streams.settings import TLSSettingsError, server_ssl_context
    from tests.tls_certs import make_self_signed

    assert server_ssl_context(Settings()) is None
    files = make_self_signed(tmp_path / "one")
    other = make_self_signed(tmp_path / "other")
    absent = Settings(tls_cert_file=tmp_path / "absent.crt", tls_key_file=files.key_file)
    with pytest.raises(TLSSettingsError, match=r"LIVETAG_TLS_CERT_FILE=.*no such file"):
        server_ssl_context(absent)
    swapped = Settings(tls_cert_file=files.key_file, tls_key_file=files.cert_file)
    with pytest.raises(TLSSettingsError, match=r"LIVETAG_TLS_CERT_FILE=.*not a PEM certificate"):
        server_ssl_context(swapped)
    mismatched = Settings(tls_cert_file=files.cert_file, tls_key_file=other.key_file)
    with pytest.raises(TLSSettingsError, match=r"LIVETAG_TLS_KEY_FILE=.*not the PEM private key"):
        server_ssl_context(mismatched)
    good = Settings(tls_cert_file=files.cert_file, tls_key_file=files.key_file)
    assert server_ssl_context(good) is not None


def test_our_clients_trust_the_deployment_certificate_and_the_system_store(
    tmp_path: Path,
) -> None:
    import ssl
    from typing import Any, cast

    from streams.settings import client_ssl_context
    from tests.tls_certs import make_self_signed

    files = make_self_signed(tmp_path, "deployment")
    context = client_ssl_context(
        Settings(tls_cert_file=files.cert_file, tls_key_file=files.key_file)
    )
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname
    trusted = cast(list[dict[str, Any]], context.get_ca_certs())
    names = {value for ca in trusted for rdn in ca["subject"] for _, value in rdn}
    assert "deployment" in names
    system = ssl.create_default_context().get_ca_certs()
    assert len(context.get_ca_certs()) == len(system) + 1


def test_security_settings_survive_the_trip_to_a_child_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.settings import to_environment
    from tests.tls_certs import make_self_signed

    web = make_self_signed(tmp_path / "web")
    ca = make_self_signed(tmp_path / "ca")
    parent = Settings(
        kafka_bootstrap="kafka-1:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="livetag",
        kafka_sasl_password="p@ss word;=",
        kafka_ssl_cafile=ca.cert_file,
        tls_cert_file=web.cert_file,
        tls_key_file=web.key_file,
        state_dir=tmp_path / "state",
    )
    environment = to_environment(parent)
    assert environment["LIVETAG_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert environment["LIVETAG_KAFKA_SASL_PASSWORD"] == "p@ss word;="
    assert environment["LIVETAG_TLS_CERT_FILE"] == str(web.cert_file)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    child = Settings()
    assert child == parent
    assert child.kafka_sasl_password is not None
    assert child.kafka_sasl_password.get_secret_value() == "p@ss word;="


def test_kafka_security_errors_name_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LIVETAG_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("LIVETAG_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(ValidationError, match="LIVETAG_KAFKA_BOOTSTRAP"):
        Settings()
    monkeypatch.setenv("LIVETAG_KAFKA_BOOTSTRAP", "kafka-1:9093")
    monkeypatch.setenv("LIVETAG_KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("LIVETAG_KAFKA_SASL_USERNAME", "livetag")
    with pytest.raises(ValidationError, match="needs LIVETAG_KAFKA_SASL_PASSWORD"):
        Settings()


def test_capture_rate_follows_the_analysis_rate_and_never_falls_below_it() -> None:
    assert Settings().effective_capture_fps == 15
    assert Settings(video_fps=30.0).effective_capture_fps == 30
    assert Settings(capture_fps=30).effective_capture_fps == 30
    with pytest.raises(ValueError, match="below the analysis rate"):
        Settings(video_fps=30.0, capture_fps=15)


def test_label_windows_cannot_wait_past_the_archive() -> None:
    Settings(label_grace_s=10.1)  # 10 s for a silent stream + 100 ms for tags
    with pytest.raises(ValueError, match="LIVETAG_LABEL_GRACE_S"):
        Settings(label_grace_s=5.0)
    Settings(label_grace_s=1.0, label_feature_wait_ms=500)
