from __future__ import annotations

import aioice.ice

from capture import ice


def test_host_addresses_are_exactly_the_configured_ones() -> None:
    original = aioice.ice.get_host_addresses
    try:
        ice.restrict_host_addresses(["127.0.0.1", "::1"])
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True) == [
            "127.0.0.1",
            "::1",
        ]
    finally:
        aioice.ice.get_host_addresses = original


def test_no_stun_server_unless_configured() -> None:
    assert ice.rtc_configuration().iceServers == []
    configured = ice.rtc_configuration(["stun:stun.example.org:3478"])
    assert [server.urls for server in configured.iceServers or []] == ["stun:stun.example.org:3478"]
