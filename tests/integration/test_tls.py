"""The capture server and the dashboard over https and wss, with a self-signed certificate."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from capture.server import CaptureServer, CaptureServerError
from dashboard.server import DashboardServer
from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session
from streams.settings import Settings, TLSSettingsError, client_ssl_context
from taggers import tokens
from taggers.vocabulary import load_vocabulary
from tests.tls_certs import CertFiles, make_self_signed

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    return make_self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_settings(settings: Settings, certs: CertFiles, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "capture_port": 0,
            "dashboard_port": 0,
            "state_dir": tmp_path / "state",
            "tls_cert_file": certs.cert_file,
            "tls_key_file": certs.key_file,
        }
    )


@pytest.fixture
def capture_settings(tls_settings: Settings) -> Settings:
    return tls_settings  # the capture fixture (tests/integration/conftest.py) runs with these


@pytest.fixture
async def session(tls_settings: Settings) -> AsyncIterator[records.SessionRecord]:
    created = await create_session(
        tls_settings,
        prompt="Two strangers share a lift that has stopped.",
        performer_names=["ana"],
        vocabulary=load_vocabulary(None),
    )
    yield created
    async with clients.admin_client(tls_settings) as admin:
        await topics.delete_session_topics(admin, created.session_id)


def director_token(settings: Settings, session_id: str) -> str:
    """The director's session credential (what the page has after exchanging its link)."""
    return tokens.issue(
        tokens.load_secret(settings),
        session_id=session_id,
        role="director",
        participant_id="director",
        ttl_s=600,
        kind="session",
    )


def trusting(settings: Settings) -> aiohttp.ClientSession:
    """A client that trusts the deployment's certificate, as a browser told to would."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ssl_context(settings)))


async def first_message(ws: aiohttp.ClientWebSocketResponse, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            message = json.loads((await ws.receive()).data)
            if message["type"] == kind:
                return dict(message)


async def test_capture_server_speaks_https_and_wss_only(
    tls_settings: Settings, capture: CaptureServer, session: records.SessionRecord
) -> None:
    assert capture.url == f"https://127.0.0.1:{capture.port}"
    token = director_token(tls_settings, session.session_id)
    async with trusting(tls_settings) as http:
        async with http.get(f"{capture.url}/api/token", params={"token": token}) as response:
            assert response.status == 200
            assert await response.json() == {
                "session_id": session.session_id,
                "role": "director",
            }
        # Join links default to https on the port the server chose.
        linked = tls_settings.model_copy(update={"capture_port": capture.port})
        secret = tokens.load_secret(tls_settings)
        call_links = [
            link for link in tokens.join_links(linked, session, secret) if link.page == "call"
        ]
        assert call_links
        assert all(link.url.startswith(f"{capture.url}/") for link in call_links)
        async with http.get(call_links[0].url) as response:
            assert response.status == 200
            assert "text/html" in response.headers["Content-Type"]
        # The tag service behind the same certificate, over wss.
        async with http.ws_connect(f"wss://127.0.0.1:{capture.port}/ws/tag") as ws:
            await ws.send_str(json.dumps({"type": "hello", "token": token}))
            welcome = await first_message(ws, "welcome")
            assert welcome["rater_id"] == "director"
    # Plain http to the TLS port gets no answer.
    async with aiohttp.ClientSession() as plain:
        with pytest.raises(aiohttp.ClientError):
            async with plain.get(f"http://127.0.0.1:{capture.port}/api/token") as response:
                await response.read()
        # A client that does not trust the self-signed certificate refuses it.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            async with plain.get(f"{capture.url}/api/token") as response:
                await response.read()


async def test_dashboard_speaks_https_and_trusts_the_capture_server(
    tls_settings: Settings, capture: CaptureServer, session: records.SessionRecord
) -> None:
    # The dashboard polls the capture server at its default (https) base URL.
    settings = tls_settings.model_copy(update={"capture_port": capture.port})
    assert settings.capture_base_url == capture.url
    dashboard = DashboardServer(settings, secret=tokens.load_secret(settings))
    await dashboard.start()
    try:
        assert dashboard.url == f"https://127.0.0.1:{dashboard.port}"
        token = director_token(settings, session.session_id)
        async with trusting(settings) as http:
            async with http.get(
                f"{dashboard.url}/api/dashboard-token", params={"token": token}
            ) as response:
                assert response.status == 200
                assert (await response.json())["session_id"] == session.session_id
            async with http.ws_connect(
                f"wss://127.0.0.1:{dashboard.port}/ws/dashboard?token={token}", max_msg_size=0
            ) as ws:
                hello = await first_message(ws, "hello")
                assert hello["capture_url"] == capture.url
        # The dashboard's own client reads the capture server's metrics through the
        # self-signed certificate (its health view would be empty otherwise).
        assert dashboard._http is not None
        async with dashboard._http.get(f"{settings.capture_base_url}/metrics") as response:
            assert response.status == 200
        async with aiohttp.ClientSession() as plain:
            with pytest.raises(aiohttp.ClientError):
                async with plain.get(
                    f"http://127.0.0.1:{dashboard.port}/api/dashboard-token"
                ) as response:
                    await response.read()
    finally:
        await dashboard.stop()


def test_an_unusable_certificate_stops_the_servers_before_they_touch_kafka(
    tls_settings: Settings, certs: CertFiles
) -> None:
    swapped = tls_settings.model_copy(
        update={"tls_cert_file": certs.key_file, "tls_key_file": certs.cert_file}
    )
    secret = tokens.load_secret(swapped)
    with pytest.raises(CaptureServerError, match="LIVETAG_TLS_CERT_FILE"):
        CaptureServer(swapped, secret=secret)
    with pytest.raises(TLSSettingsError, match="LIVETAG_TLS_CERT_FILE"):
        DashboardServer(swapped, secret=secret)
