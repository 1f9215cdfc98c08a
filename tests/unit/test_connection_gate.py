"""The connection gate's counting and deadlines, without sockets
(streams.runtime.connection_gate)."""

from __future__ import annotations

import pytest

from streams.runtime.connection_gate import (
    CLOSE_REASON_BYTES,
    ConnectionGate,
    Refusal,
    Ticket,
    address_key,
    close_code,
    close_reason,
)


def gate(
    *,
    total: int = 100,
    per_address: int = 100,
    per_session: int = 100,
    unwelcomed: int = 100,
    hello_s: float = 5.0,
    close_s: float = 2.0,
) -> ConnectionGate:
    return ConnectionGate(
        max_total=total,
        max_per_address=per_address,
        max_per_session=per_session,
        max_unwelcomed=unwelcomed,
        hello_timeout_s=hello_s,
        close_timeout_s=close_s,
    )


def admitted(entered: Ticket | Refusal) -> Ticket:
    assert isinstance(entered, Ticket), entered
    return entered


class FakeConnection:
    """The hooks an upgraded connection gives its ticket."""

    def __init__(self) -> None:
        self.closed = False
        self.aborted = 0
        self.deadlines = 0

    def watch(self, ticket: Ticket, *, deadline: bool = False) -> None:
        ticket.watch(
            is_closed=lambda: self.closed,
            abort=self.abort,
            on_deadline=self.on_deadline if deadline else None,
        )

    def abort(self) -> None:
        self.aborted += 1

    def on_deadline(self) -> None:
        self.deadlines += 1


# ---------------------------------------------------------------- codes and addresses


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("bad_token", 4401),
        ("not_director", 4403),
        ("not_in_roster", 4403),
        ("unknown_session", 4404),
        ("hello_timeout", 4408),
        ("session_ended", 4409),
        ("revoked", 4403),
        ("link_expired", 4410),
        ("too_many_clients", 4429),
        ("too_many_connections", 4429),
        ("server_busy", 4503),
        ("too_many_waiting", 4503),
        ("hello_first", 4400),
        ("something_new", 4400),
    ],
)
def test_a_close_code_is_4000_plus_the_refusals_http_status(code: str, expected: int) -> None:
    assert close_code(code) == expected
    assert Refusal(code, "why").close_code == expected
    assert Refusal(code, "why").status == expected - 4000


def test_a_close_reason_fits_a_close_frame_and_stays_valid_utf8() -> None:
    assert close_reason("bad_token", "expired") == b"bad_token: expired"
    long = close_reason("bad_token", "é" * 200)  # two bytes each: cut mid-character
    assert len(long) <= CLOSE_REASON_BYTES
    assert long.decode("utf-8").startswith("bad_token: éé")


@pytest.mark.parametrize(
    ("remote", "key"),
    [
        ("192.0.2.7", "192.0.2.7"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),
        (None, "unknown"),
        ("", "unknown"),
    ],
)
def test_clients_are_counted_per_ipv4_address_and_per_ipv6_slash_64(
    remote: str | None, key: str
) -> None:
    assert address_key(remote) == key


# ---------------------------------------------------------------- caps


def test_the_connection_beyond_an_addresss_cap_is_refused_and_takes_nothing() -> None:
    g = gate(per_address=2)
    first = admitted(g.enter("192.0.2.1", 0.0))
    admitted(g.enter("192.0.2.1", 0.0))
    refused = g.enter("192.0.2.1", 0.0)
    assert isinstance(refused, Refusal)
    assert (refused.code, refused.status) == ("too_many_connections", 429)
    assert "2" in refused.message
    assert (g.open, g.open_from("192.0.2.1")) == (2, 2)
    # Another address is not affected; one leaving makes room for the next.
    admitted(g.enter("192.0.2.2", 0.0))
    first.release()
    first.release()  # twice frees once
    assert g.open_from("192.0.2.1") == 1
    admitted(g.enter("192.0.2.1", 0.0))
    assert g.open == 3


def test_the_connection_beyond_the_total_is_refused_whatever_its_address() -> None:
    g = gate(total=2)
    tickets = [admitted(g.enter(f"192.0.2.{n}", 0.0)) for n in (1, 2)]
    refused = g.enter("192.0.2.3", 0.0)
    assert isinstance(refused, Refusal)
    assert (refused.code, refused.status, refused.close_code) == ("server_busy", 503, 4503)
    assert g.refusal("192.0.2.4") == refused
    for ticket in tickets:
        ticket.release()
    assert (g.open, g.open_from("192.0.2.1"), g._addresses) == (0, 0, {})
    assert g.refusal("192.0.2.3") is None


def test_connections_without_a_hello_share_a_small_room_that_pages_still_get_past() -> None:
    connections = gate(total=10, unwelcomed=3)
    waiting = [
        admitted(connections.enter(f"10.0.0.{i}", 0.0, hello_deadline=True)) for i in range(3)
    ]
    refused = connections.enter("10.0.0.9", 0.0, hello_deadline=True)
    assert isinstance(refused, Refusal)
    assert (refused.code, refused.status) == ("too_many_waiting", 503)
    assert connections.open == 3
    assert connections.unwelcomed == 3
    # A page that needs no hello (its credential was checked at the upgrade) still enters.
    admitted(connections.enter("10.0.0.9", 0.0))
    # A welcome frees a place in the waiting room, and so does a release; neither twice.
    waiting[0].welcome()
    waiting[0].welcome()
    waiting[1].release()
    waiting[1].release()
    assert connections.unwelcomed == 1
    admitted(connections.enter("10.0.0.10", 0.0, hello_deadline=True))
    admitted(connections.enter("10.0.0.11", 0.0, hello_deadline=True))
    assert connections.unwelcomed == 3
    waiting[0].release()  # welcomed: its release leaves the waiting count alone
    assert connections.unwelcomed == 3


def test_sessions_are_capped_per_kind_and_a_refused_join_takes_nothing() -> None:
    g = gate(per_session=1)
    page = admitted(g.enter("192.0.2.1", 0.0))
    assert page.join("call", "s-1") is None
    assert page.join("call", "s-1") is None  # joining again is no second place
    assert g.open_in("call", "s-1") == 1
    second = admitted(g.enter("192.0.2.1", 0.0))
    refused = second.join("call", "s-1")
    assert refused is not None
    assert refused.code == "too_many_clients"
    assert refused.message == "this session already has 1 pages open"
    # Another kind, another session: their own places.
    assert second.join("tag", "s-1") is None
    assert admitted(g.enter("192.0.2.1", 0.0)).join("call", "s-2") is None
    with pytest.raises(RuntimeError):
        second.join("tag", "s-2")
    second.release()
    page.release()
    assert (g.open_in("call", "s-1"), g.open_in("tag", "s-1")) == (0, 0)
    assert g._sessions == {("call", "s-2"): 1}


# ---------------------------------------------------------------- deadlines


def test_an_unwelcomed_connection_is_due_at_its_hello_deadline_once() -> None:
    g = gate(hello_s=5.0)
    ticket = admitted(g.enter("192.0.2.1", 100.0, hello_deadline=True))
    connection = FakeConnection()
    assert g.sweep(106.0) == []  # not upgraded yet: nothing to close
    connection.watch(ticket, deadline=True)
    assert g.unwelcomed == 1
    assert g.sweep(104.9) == []
    due = g.sweep(105.0)
    assert due == [(ticket, "hello_deadline")]
    ticket.act("hello_deadline")
    assert connection.deadlines == 1
    assert g.sweep(106.0) == []
    assert g.expired == 1


def test_a_welcomed_connection_has_no_deadline() -> None:
    g = gate(hello_s=5.0)
    ticket = admitted(g.enter("192.0.2.1", 0.0, hello_deadline=True))
    FakeConnection().watch(ticket, deadline=True)
    ticket.welcome()
    assert g.unwelcomed == 0
    assert g.sweep(60.0) == []
    plain = admitted(g.enter("192.0.2.1", 0.0))  # authenticated before its upgrade
    FakeConnection().watch(plain)
    assert g.sweep(60.0) == []


def test_a_closed_websocket_whose_connection_lingers_is_cut_once() -> None:
    g = gate(close_s=2.0)
    ticket = admitted(g.enter("192.0.2.1", 0.0))
    connection = FakeConnection()
    connection.watch(ticket)
    assert g.sweep(1.0) == []
    connection.closed = True
    assert g.sweep(10.0) == []  # first seen closed now
    assert g.sweep(11.9) == []
    due = g.sweep(12.0)
    assert due == [(ticket, "cut")]
    ticket.act("cut")
    assert connection.aborted == 1
    assert g.sweep(20.0) == []
    assert g.cut == 1
    # Its place is given back by its handler, not by the cut.
    assert g.open == 1
    ticket.release()
    assert g.open == 0


def test_a_released_connection_is_not_swept() -> None:
    g = gate(hello_s=1.0, close_s=1.0)
    ticket = admitted(g.enter("192.0.2.1", 0.0, hello_deadline=True))
    connection = FakeConnection()
    connection.watch(ticket, deadline=True)
    connection.closed = True
    ticket.release()
    assert g.sweep(0.5) == []
    assert g.sweep(5.0) == []
