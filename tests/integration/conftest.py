"""Integration fixtures shared by several modules."""

from __future__ import annotations

import pytest

from capture.server import CaptureServer


@pytest.fixture
def capture(capture_server: CaptureServer) -> CaptureServer:
    """The running capture server (tests/conftest.py), started with the module's own
    ``capture_settings`` (limits, TLS, a session's end ...)."""
    return capture_server
