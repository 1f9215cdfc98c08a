from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.settings import Settings


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
    from infra.settings import load_settings

    monkeypatch.setenv("LIVETAG_BROKR_PORT", "1")
    with pytest.raises(ValueError, match="LIVETAG_BROKR_PORT"):
        load_settings()
