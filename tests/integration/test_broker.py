from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.broker import BrokerError, EmbeddedBroker, answers_kafka

pytestmark = pytest.mark.integration


def test_session_broker_answers_kafka(broker: EmbeddedBroker) -> None:
    assert broker.running
    assert answers_kafka(broker.host, broker.port)


def test_second_broker_on_a_taken_port_fails_clearly(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    second = EmbeddedBroker(port=broker.port, log_path=tmp_path / "second.log")
    with pytest.raises(BrokerError, match=rf"127\.0\.0\.1:{broker.port} is already in use"):
        second.start()
    assert not second.running
    assert broker.running, "the first broker must be untouched"


def test_cli_broker_on_a_taken_port_exits_with_the_reason(
    broker: EmbeddedBroker, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "infra", "broker", "--port", str(broker.port)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LIVETAG_STATE_DIR": str(tmp_path)},
        check=False,
    )
    assert result.returncode == 4  # unavailable: the port
    assert f"127.0.0.1:{broker.port} is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_binary_that_cannot_run_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_broker = tmp_path / "tansu"
    not_a_broker.write_bytes(b"\x7fELF garbage")
    not_a_broker.chmod(0o755)
    monkeypatch.setenv("CALF_TANSU_BIN", str(not_a_broker))
    embedded = EmbeddedBroker(port=0, log_path=tmp_path / "broker.log")
    with pytest.raises(BrokerError, match="cannot run the tansu binary"):
        embedded.start()


def test_start_and_stop_are_idempotent(tmp_path: Path) -> None:
    embedded = EmbeddedBroker(port=0, log_path=tmp_path / "broker.log")
    embedded.start()
    pid = embedded.pid
    embedded.start()
    assert embedded.pid == pid
    embedded.stop()
    embedded.stop()
    assert not embedded.running
    assert not answers_kafka(embedded.host, embedded.port, timeout_s=0.2)
    assert "listening on: tcp://127.0.0.1" in (tmp_path / "broker.log").read_text()
