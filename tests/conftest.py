"""Shared fixtures: one real embedded broker per test session, and a capture server."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from capture.server import CaptureServer
from infra.broker import EmbeddedBroker
from streams.kafka import clients, topics
from streams.settings import Settings
from taggers.tokens import load_secret


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("livetag-state")


@pytest.fixture(scope="session")
def broker(state_dir: Path) -> Iterator[EmbeddedBroker]:
    embedded = EmbeddedBroker(port=0, log_path=state_dir / "logs" / "broker.log")
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def settings(broker: EmbeddedBroker, state_dir: Path) -> Settings:
    # The cache folder stays the real one: it holds the face model make install fetched.
    return Settings(broker_port=broker.port, state_dir=state_dir)


@pytest.fixture
async def admin(settings: Settings) -> AsyncIterator[AIOKafkaAdminClient]:
    async with clients.admin_client(settings) as client:
        yield client


@pytest.fixture
def session_id() -> str:
    """A fresh session id per test, so each test has its own session topics."""
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def session_topics(
    admin: AIOKafkaAdminClient, settings: Settings, session_id: str
) -> AsyncIterator[topics.records.SessionTopics]:
    names = await topics.create_session_topics(admin, settings, session_id)
    yield names
    await topics.delete_session_topics(admin, session_id)


@pytest.fixture
async def capture_server(capture_settings: Settings) -> AsyncIterator[CaptureServer]:
    """A running capture server with ``capture_settings``, a fixture each test folder or
    module that starts one provides (tests/e2e/conftest.py; the integration modules)."""
    server = CaptureServer(capture_settings, secret=load_secret(capture_settings))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
