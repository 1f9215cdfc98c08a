"""Who may hold a websocket open on a livetag web server, and for how long.

Every websocket endpoint (``/ws/call`` and ``/ws/tag`` on the capture server,
``/ws/dashboard`` on the dashboard) takes a :class:`Ticket` from its server's
:class:`ConnectionGate` before it upgrades, and gives it back when its handler ends. The
gate caps the websockets a server holds open in total, per client address, per session and
kind of page, and those not authenticated yet (tag websockets before their hello). It
decides; the servers send: a refusal before the upgrade is an HTTP status with a JSON body,
after the upgrade a close frame whose code is 4000 plus that same status
(:func:`close_code`). Either way the refusal's code is counted by the server.

The gate also keeps each connection's deadlines. A ``/ws/tag`` connection must be welcomed
(a valid hello) within ``ws_hello_timeout_s`` of its request, or the endpoint closes it. A
websocket that is closed (by either side, or by aiohttp's heartbeat when the peer stops
answering pings) but whose handler still holds the connection ``ws_close_timeout_s`` later
has its connection cut: a peer that reads nothing must not keep a handler waiting on a
full socket for as long as TCP keeps retrying.

The gate does no I/O and reads no clock: :meth:`ConnectionGate.sweep` is given the time and
says what is due, :func:`keep_swept` acts on it. The aiohttp helpers at the end build the
endpoints' websocket responses with the same heartbeat and close timeout everywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

from aiohttp import WSCloseCode, web

from streams.settings import Settings

log = logging.getLogger(__name__)

#: The HTTP status of each refusal a websocket endpoint makes; the close code of the same
#: refusal after the upgrade is 4000 + this status (websocket codes 4000-4999 are ours).
REFUSAL_STATUS: Final[dict[str, int]] = {
    "hello_first": 400,  # messages, but no valid hello (tag connections)
    "bad_token": 401,  # missing, forged, expired or of another session
    "revoked": 403,  # the link or its participant was revoked (taggers.credentials)
    "not_in_roster": 403,
    "not_director": 403,
    "wrong_scope": 403,  # a casting day's link on a session's page, or the reverse
    "not_in_day": 403,  # a performer not on the casting day's roster
    "not_performer": 403,  # a director's day link at the lobby
    "unknown_session": 404,
    "unknown_day": 404,  # no such casting day on livetag.casting
    "day_closed": 409,
    "hello_timeout": 408,  # no valid hello within ws_hello_timeout_s
    "session_ended": 409,
    "link_expired": 410,  # the join link ran out while connected (taggers.credentials)
    "too_many_clients": 429,  # the session's pages of this kind
    "too_many_connections": 429,  # this client address's websockets
    "server_busy": 503,  # the server's websockets in total
    "too_many_waiting": 503,  # tag websockets still without a valid hello, in total
}

#: The websocket subprotocol every endpoint picks when a page offers it.
WS_SUBPROTOCOL: Final = "livetag"

#: Longest close reason a close frame carries (125 bytes of payload minus the code).
CLOSE_REASON_BYTES: Final = 123

#: What a page calls its websockets in refusals, by kind.
_KIND_NOUNS: Final = {"call": "pages", "tag": "tagging connections", "dashboard": "dashboards"}

Due = Literal["hello_deadline", "cut"]
_Key = TypeVar("_Key", str, tuple[str, str])


def close_code(refusal_code: str) -> int:
    """The websocket close code of a refusal (4400 for a code without its own status)."""
    return 4000 + REFUSAL_STATUS.get(refusal_code, 400)


def close_reason(refusal_code: str, message: str) -> bytes:
    """``code: message`` cut to what a close frame carries, on a character boundary."""
    reason = f"{refusal_code}: {message}".encode()
    if len(reason) <= CLOSE_REASON_BYTES:
        return reason
    return reason[:CLOSE_REASON_BYTES].decode("utf-8", errors="ignore").encode()


def address_key(remote: str | None) -> str:
    """The address a client's websockets are counted under.

    IPv6 clients count per /64 (one host usually holds a whole /64, so per address would
    cap nothing); an IPv4 address mapped into IPv6 counts as the IPv4 address.
    """
    if not remote:
        return "unknown"
    try:
        ip = ipaddress.ip_address(remote)
    except ValueError:  # not an IP address (a Unix socket): one bucket per name
        return remote
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip), 64), strict=False))
    return str(ip)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a websocket is not admitted; ``status`` before the upgrade, ``close_code`` after."""

    code: str
    message: str

    @property
    def status(self) -> int:
        return REFUSAL_STATUS.get(self.code, 400)

    @property
    def close_code(self) -> int:
        return close_code(self.code)

    @property
    def close_reason(self) -> bytes:
        return close_reason(self.code, self.message)


class Ticket:
    """One websocket's place in its server's gate, from before its upgrade until its
    handler ends. :meth:`release` gives back exactly what the ticket took."""

    __slots__ = (
        "_abort",
        "_closed_seen_at",
        "_gate",
        "_is_closed",
        "_on_deadline",
        "address",
        "cut",
        "deadline",
        "expired",
        "released",
        "session",
        "welcomed",
    )

    def __init__(self, gate: ConnectionGate, address: str, deadline: float | None) -> None:
        self._gate = gate
        self.address = address
        #: Loop time by which the connection must be welcomed; None: no hello needed.
        self.deadline = deadline
        self.welcomed = deadline is None
        self.expired = False
        self.cut = False
        self.released = False
        self.session: tuple[str, str] | None = None  # (kind, session_id) once joined
        self._is_closed: Callable[[], bool] | None = None
        self._abort: Callable[[], None] | None = None
        self._on_deadline: Callable[[], None] | None = None
        self._closed_seen_at: float | None = None

    def join(self, kind: str, session_id: str) -> Refusal | None:
        """Count this connection in its session (once), or say why the session is full."""
        if self.session == (kind, session_id):
            return None
        if self.session is not None:
            raise RuntimeError(f"this connection already counts in {self.session}")
        if self.released:
            raise RuntimeError("a released ticket cannot join a session")
        refusal = self._gate.session_refusal(kind, session_id)
        if refusal is None:
            self.session = (kind, session_id)
            self._gate._sessions[self.session] = self._gate._sessions.get(self.session, 0) + 1
        return refusal

    def welcome(self) -> None:
        """The connection is authenticated: its hello deadline no longer applies."""
        if not self.welcomed:
            self.welcomed = True
            if not self.released:
                self._gate._unwelcomed -= 1

    def watch(
        self,
        *,
        is_closed: Callable[[], bool],
        abort: Callable[[], None],
        on_deadline: Callable[[], None] | None = None,
    ) -> None:
        """The upgraded connection's hooks for :meth:`ConnectionGate.sweep`'s decisions."""
        self._is_closed = is_closed
        self._abort = abort
        self._on_deadline = on_deadline

    def act(self, due: Due) -> None:
        """Carry out what the sweep found due."""
        if due == "hello_deadline":
            if self._on_deadline is not None:
                self._on_deadline()
        elif self._abort is not None:
            self._abort()

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        gate = self._gate
        gate._tickets.discard(self)
        if not self.welcomed:
            gate._unwelcomed -= 1
        _decrement(gate._addresses, self.address)
        if self.session is not None:
            _decrement(gate._sessions, self.session)


def _decrement(counts: dict[_Key, int], key: _Key) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)  # no entry per address or session left behind


class ConnectionGate:
    """The open websockets of one web server, counted in total, per client address and
    per (kind, session); sans-I/O."""

    def __init__(
        self,
        *,
        max_total: int,
        max_per_address: int,
        max_per_session: int,
        max_unwelcomed: int,
        hello_timeout_s: float,
        close_timeout_s: float,
    ) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.max_per_session = max_per_session
        self.max_unwelcomed = max_unwelcomed
        self.hello_timeout_s = hello_timeout_s
        self.close_timeout_s = close_timeout_s
        self._tickets: set[Ticket] = set()
        self._addresses: dict[str, int] = {}
        self._sessions: dict[tuple[str, str], int] = {}
        self._unwelcomed = 0
        #: Connections closed at their hello deadline, and cut after their close timeout.
        self.expired = 0
        self.cut = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionGate:
        return cls(
            max_total=settings.ws_max_connections,
            max_per_address=settings.ws_max_connections_per_address,
            max_per_session=settings.max_clients_per_session,
            max_unwelcomed=settings.ws_max_unwelcomed,
            hello_timeout_s=settings.ws_hello_timeout_s,
            close_timeout_s=settings.ws_close_timeout_s,
        )

    # ---------------------------------------------------------------- counts

    @property
    def open(self) -> int:
        return len(self._tickets)

    @property
    def unwelcomed(self) -> int:
        """Open connections still waiting for their hello to be accepted."""
        return self._unwelcomed

    def open_from(self, remote: str | None) -> int:
        return self._addresses.get(address_key(remote), 0)

    def open_in(self, kind: str, session_id: str) -> int:
        return self._sessions.get((kind, session_id), 0)

    # ---------------------------------------------------------------- admission

    def refusal(self, remote: str | None, *, hello_deadline: bool = False) -> Refusal | None:
        """What a new connection from ``remote`` would be refused now, if anything
        (``hello_deadline``: one that is not authenticated yet)."""
        if len(self._tickets) >= self.max_total:
            return Refusal("server_busy", f"this server already holds {self.max_total} connections")
        if self._addresses.get(address_key(remote), 0) >= self.max_per_address:
            return Refusal(
                "too_many_connections",
                f"your address already has {self.max_per_address} connections open",
            )
        if hello_deadline and self._unwelcomed >= self.max_unwelcomed:
            # Clients that have proved nothing share a small part of the room, so a flood
            # of them (from many addresses) cannot crowd out the pages of a session.
            return Refusal(
                "too_many_waiting",
                f"{self.max_unwelcomed} connections are already waiting for their hello",
            )
        return None

    def session_refusal(self, kind: str, session_id: str) -> Refusal | None:
        """Whether one more connection of ``kind`` would exceed the session's limit."""
        if self._sessions.get((kind, session_id), 0) < self.max_per_session:
            return None
        noun = _KIND_NOUNS.get(kind, "connections")
        return Refusal(
            "too_many_clients", f"this session already has {self.max_per_session} {noun} open"
        )

    def enter(
        self, remote: str | None, now: float, *, hello_deadline: bool = False
    ) -> Ticket | Refusal:
        """A ticket for a new connection, or its refusal (which takes nothing).

        ``hello_deadline``: the connection must be welcomed within ``hello_timeout_s`` of
        ``now`` (the loop's time)."""
        refusal = self.refusal(remote, hello_deadline=hello_deadline)
        if refusal is not None:
            return refusal
        address = address_key(remote)
        deadline = now + self.hello_timeout_s if hello_deadline else None
        ticket = Ticket(self, address, deadline)
        self._tickets.add(ticket)
        self._addresses[address] = self._addresses.get(address, 0) + 1
        if not ticket.welcomed:
            self._unwelcomed += 1
        return ticket

    # ---------------------------------------------------------------- deadlines

    def sweep(self, now: float) -> list[tuple[Ticket, Due]]:
        """What is due at ``now``: hello deadlines passed, and connections whose websocket
        has been closed for ``close_timeout_s`` (each reported once)."""
        due: list[tuple[Ticket, Due]] = []
        for ticket in self._tickets:
            deadline = ticket.deadline
            if (
                not ticket.welcomed
                and not ticket.expired
                and deadline is not None
                and now >= deadline
                and ticket._on_deadline is not None  # upgraded: it can be closed
            ):
                ticket.expired = True
                self.expired += 1
                due.append((ticket, "hello_deadline"))
            if ticket.cut or ticket._is_closed is None or not ticket._is_closed():
                continue
            if ticket._closed_seen_at is None:
                ticket._closed_seen_at = now
            elif now - ticket._closed_seen_at >= self.close_timeout_s:
                ticket.cut = True
                self.cut += 1
                due.append((ticket, "cut"))
        return due


async def keep_swept(gate: ConnectionGate, interval_s: float = 0.2) -> None:
    """Act on what ``gate`` finds due, every ``interval_s``, until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        for ticket, due in gate.sweep(loop.time()):
            try:
                ticket.act(due)
            except Exception:  # one connection's close must not stop the others'
                log.exception("a websocket's %s failed", due)


# -------------------------------------------------------------------- aiohttp glue


def websocket_response(settings: Settings, *, max_msg_size: int) -> web.WebSocketResponse:
    """A websocket response with the deployment's heartbeat and close timeout.

    aiohttp pings a websocket that has sent nothing for ``heartbeat`` seconds and, when no
    pong (nor anything else) arrives within ``heartbeat / 2``, marks it closed (code 1006),
    closes its transport and ends the handler's receive loop. ``timeout`` bounds how long a
    close waits for the peer's close frame."""
    return web.WebSocketResponse(
        heartbeat=settings.ws_heartbeat_s,
        timeout=settings.ws_close_timeout_s,
        max_msg_size=max_msg_size,
        # A browser page offers "livetag" next to its credential (taggers.credentials):
        # the server must pick one of the offered subprotocols, or the browser fails the
        # handshake (and aiohttp would log the offered list, credential included).
        protocols=(WS_SUBPROTOCOL,),
    )


async def send_json(ws: web.WebSocketResponse, message: dict[str, Any]) -> None:
    """Send one JSON message to a page; nothing when its connection is gone (closed, or
    lost while the send waited to drain): the page's own close handling takes over."""
    if ws.closed:
        return
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(json.dumps(message))


def watch_websocket(
    ticket: Ticket,
    request: web.Request,
    ws: web.WebSocketResponse,
    *,
    on_deadline: Callable[[], None] | None = None,
) -> None:
    """Let the gate cut ``ws``'s connection when it lingers after its close, and (with
    ``on_deadline``) close it at its hello deadline."""
    transport = request.transport

    def cut() -> None:
        # abort, not close: a transport with unsent data would wait on the peer to read it.
        if transport is not None:
            transport.abort()

    ticket.watch(is_closed=lambda: ws.closed, abort=cut, on_deadline=on_deadline)


def refusal_response(refusal: Refusal) -> web.Response:
    """The HTTP answer to a websocket request the gate refuses before the upgrade."""
    response = web.json_response(
        {"type": "error", "code": refusal.code, "message": refusal.message},
        status=refusal.status,
    )
    # A refused client gets no idle keep-alive connection to hold instead.
    response.force_close()
    return response


def failure_code(ws: web.WebSocketResponse) -> str:
    """The refusal code of a websocket aiohttp failed (an ``ERROR`` message): ``too_large``
    for a frame over its ``max_msg_size`` (closed with 1009), else ``protocol_error``."""
    error = ws.exception()
    if getattr(error, "code", None) == WSCloseCode.MESSAGE_TOO_BIG:
        return "too_large"
    log.info("a websocket failed: %s", error)
    return "protocol_error"
