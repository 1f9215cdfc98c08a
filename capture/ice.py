"""Which addresses ICE may use: only the ones the operator configured.

aioice gathers host candidates on every interface except loopback, and aiortc adds a public
STUN server unless told otherwise. livetag advertises exactly the configured addresses
(``LIVETAG_ICE_ADDRESSES``, loopback by default) and uses STUN/TURN only when configured.
"""

from __future__ import annotations

from collections.abc import Sequence

import aioice.ice
from aiortc import RTCConfiguration, RTCIceServer


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Make every ICE agent in this process gather host candidates on these addresses only.

    aioice looks the function up at gather time, so replacing it is enough; the pinned
    aioice version is checked by tests/unit/test_ice.py.
    """
    chosen = list(addresses)

    def configured_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = configured_addresses


def rtc_configuration(ice_servers: Sequence[str] = ()) -> RTCConfiguration:
    """An RTCConfiguration with only the configured STUN/TURN servers (none by default)."""
    return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in ice_servers])
