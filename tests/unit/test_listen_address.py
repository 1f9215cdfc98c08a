"""Listeners other machines reach: refused in the clear unless the operator says so."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from capture.server import CaptureServer, CaptureServerError
from dashboard.server import DashboardServer
from infra.broker import BrokerError, EmbeddedBroker
from streams.settings import PlaintextNetworkError, Settings, check_listen_address, is_loopback

SECRET = b"listen-address-test-secret-long-enough-for-hs256"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("::ffff:127.0.0.1", True),
        ("fe80::1%eth0", False),
        ("10.0.0.5", False),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("livetag.example", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_the_embedded_broker_refuses_a_network_address_unless_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(BrokerError, match="ALLOW_PLAINTEXT_NETWORK"):
        EmbeddedBroker.from_settings(Settings(broker_host="0.0.0.0", state_dir=tmp_path))
    assert EmbeddedBroker.from_settings(Settings(state_dir=tmp_path)).host == "127.0.0.1"
    with caplog.at_level(logging.WARNING):
        allowed = Settings(broker_host="0.0.0.0", allow_plaintext_network=True, state_dir=tmp_path)
        assert EmbeddedBroker.from_settings(allowed).host == "0.0.0.0"
    assert "the embedded broker would listen on 0.0.0.0 without TLS" in caplog.text


def test_web_servers_refuse_a_network_address_in_the_clear(tmp_path: Path) -> None:
    with pytest.raises(CaptureServerError, match="LIVETAG_TLS_CERT_FILE"):
        CaptureServer(Settings(capture_host="0.0.0.0", state_dir=tmp_path), secret=SECRET)
    with pytest.raises(PlaintextNetworkError, match="LIVETAG_TLS_CERT_FILE"):
        DashboardServer(Settings(dashboard_host="10.0.0.2", state_dir=tmp_path), secret=SECRET)


def test_a_network_address_is_taken_with_tls_or_when_allowed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Constructing the servers here would make Kafka clients; the check they run first is
    # enough (the refusals above show they run it).
    plain = Settings(state_dir=tmp_path)
    allowed = Settings(allow_plaintext_network=True, state_dir=tmp_path)
    check_listen_address(plain, "the dashboard", "0.0.0.0", tls=True)
    with caplog.at_level(logging.WARNING):
        check_listen_address(allowed, "the dashboard", "0.0.0.0", tls=False)
    assert "the dashboard would listen on 0.0.0.0 without TLS" in caplog.text
