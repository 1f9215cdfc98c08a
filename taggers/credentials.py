"""Session credentials on the servers: a join link exchanged for a short-lived credential,
credentials checked at admission and renewed over the open connection, withdrawn links
refused and their open connections closed.

The capture server (with its tag service) and the dashboard each hold one :class:`Access`
over one :class:`~streams.kafka.revocations.RevocationList`. What a page does with its link:
``POST /api/credential`` with ``{"token": LINK}`` in the body (never in a URL), then the
credential on every websocket (``Sec-WebSocket-Protocol: livetag,
livetag.credential.CREDENTIAL`` from a browser, whose console prints failed websocket
URLs; ``?token=`` from other clients) or in the tag service's hello. Each connection gets
``{"type": "credential", ...}`` messages with a fresh credential while a third of the
current one is left; a revoked link gets none, and is closed with :data:`CLOSE_REVOKED`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeAlias, TypeVar

from aiohttp import hdrs, web

from streams import records, strict_json
from streams.kafka.revocations import RevocationList
from streams.runtime.connection_gate import (
    WS_SUBPROTOCOL,
    ConnectionGate,
    Refusal,
    Ticket,
    close_code,
    close_reason,
)
from streams.settings import Settings
from taggers import tokens

log = logging.getLogger(__name__)

#: Websocket close codes (4000 + the refusal's HTTP status, streams.runtime.connection_gate): the
#: link was revoked (4403), the link ran out (4410: no credential can be made from it).
#: Pages stop reconnecting on both.
CLOSE_REVOKED = close_code("revoked")
CLOSE_LINK_EXPIRED = close_code("link_expired")
#: The subprotocol a browser page offers next to its credential (every endpoint's
#: websocket response picks it: streams.runtime.connection_gate.websocket_response).
WS_PROTOCOL = WS_SUBPROTOCOL
CREDENTIAL_PROTOCOL_PREFIX = "livetag.credential."
_LINK_EXPIRED = "the join link expired: ask the director for a new one"
_MAX_BODY_BYTES = 8 * 1024  # a token and a little JSON around it
#: What a token must be at a check: a credential (websockets, APIs), a link (the
#: exchange), or either (the "why was I refused" probe, which grants nothing).
Kind = Literal["session", "link", "any"]
#: A server's admission of a request: the token's claims and session, or the refusal.
Admitted: TypeAlias = tuple[tokens.JoinToken, records.SessionRecord] | web.Response
#: What an admission admits to: a session (its record), or a casting day (the lobby's and
#: the casting page's); the gate counts its connections by the token's id.
_Place = TypeVar("_Place")
_Place_co = TypeVar("_Place_co", covariant=True)
#: Headers of a page whose address carries a join link until the page takes it out.
PAGE_HEADERS = {"Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
#: Headers of the credential exchange and the refusal probe: readable by the dashboard's
#: page (another origin), never cached.
API_HEADERS = {"Access-Control-Allow-Origin": "*", "Cache-Control": "no-store"}


@dataclass(frozen=True)
class Issued:
    """A credential just made, and what its page is told about it."""

    token: str
    claims: tokens.JoinToken

    def describe(self, now_s: float) -> dict[str, Any]:
        claims = self.claims
        return {
            "credential": self.token,
            # Relative, so a page with a wrong clock still renews in time.
            "expires_in_s": max(0, claims.expires_at_s - int(now_s)),
            "expires_at_s": claims.expires_at_s,
            "session_id": claims.session_id,
            "role": claims.role,
            "participant_id": claims.participant_id,
            "token_id": claims.token_id,
        }


class Revocable(Protocol):
    """An open connection the revocation watcher may close."""

    @property
    def claims(self) -> tokens.JoinToken | None: ...

    async def end_access(self, code: str, message: str) -> None: ...


def revoked_message(revocation: records.TokenRevocation) -> str:
    if revocation.token_id is not None:
        text = f"this link to session {revocation.session_id} was revoked by the director"
    else:
        text = f"your links to session {revocation.session_id} were revoked by the director"
    return f"{text}: {revocation.reason}" if revocation.reason else text


class Access:
    """Credentials of one server: verified, exchanged, renewed, checked for revocation."""

    def __init__(
        self, settings: Settings, secret: bytes, revocations: RevocationList | None = None
    ) -> None:
        self.settings = settings
        self.secret = secret
        self._owned = revocations is None
        self.revocations = revocations if revocations is not None else RevocationList(settings)

    async def start(self) -> None:
        """Read the revocations (only when this object made the list)."""
        if self._owned:
            await self.revocations.start()

    async def stop(self) -> None:
        if self._owned:
            await self.revocations.stop()

    # ---------------------------------------------------------------- checks

    def check(self, claims: tokens.JoinToken) -> None:
        """:class:`tokens.TokenError` (code ``revoked``) when the link was withdrawn."""
        revocation = self.revocations.revoked(claims.holder)
        if revocation is not None:
            raise tokens.TokenError(revoked_message(revocation), code="revoked")

    def verified(
        self, token: str | None, kind: Kind, scope: tokens.Scope = "session"
    ) -> tokens.JoinToken:
        """The claims of a token of ``kind`` and ``scope`` whose link is not revoked."""
        if kind == "session":
            return self.admit(token, scope=scope)
        claims = (
            tokens.verify_link(self.secret, token)
            if kind == "link"
            else tokens.verify(self.secret, token)
        )
        tokens.require_scope(claims, scope)
        self.check(claims)
        return claims

    def admit(
        self, token: str | None, *, now_s: float | None = None, scope: tokens.Scope = "session"
    ) -> tokens.JoinToken:
        """The claims of a credential that may be admitted (signature, expiry, kind, scope
        and revocation checked): a session's pages take session tokens only, the lobby
        and the casting page a casting day's."""
        claims = tokens.verify_credential(self.secret, token, now_s=now_s)
        tokens.require_scope(claims, scope)
        self.check(claims)
        return claims

    def exchange(self, link: tokens.JoinToken, *, now_s: float | None = None) -> Issued:
        """A credential for a verified link that is not revoked."""
        self.check(link)
        token, claims = tokens.issue_credential(
            self.secret, link, ttl_s=self.settings.credential_ttl_s, now_s=now_s
        )
        return Issued(token, claims)

    def renew(self, current: tokens.JoinToken, *, now_s: float | None = None) -> Issued:
        """The next credential of an open connection; refused for a revoked link, and
        once the link itself has run out (a credential never outlives it)."""
        self.check(current)
        now = time.time() if now_s is None else now_s
        if current.link_expires_at_s <= now:
            raise tokens.TokenError(_LINK_EXPIRED)
        token, claims = tokens.issue_credential(
            self.secret, current, ttl_s=self.settings.credential_ttl_s, now_s=now
        )
        return Issued(token, claims)

    def renew_at_s(self, current: tokens.JoinToken) -> float:
        """When the connection holding ``current`` gets its next one: a third of the
        lifetime before expiry, room for a slow network and a busy page."""
        return current.expires_at_s - self.settings.credential_ttl_s / 3

    # ---------------------------------------------------------------- open connections

    async def keep_renewed(
        self,
        claims: tokens.JoinToken,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        end: Callable[[str, str], Awaitable[None]],
    ) -> None:
        """For one open connection, until it closes (the caller cancels this): a fresh
        credential before the current one runs out. A revoked link gets ``end(code,
        message)`` (``revoked``); so does a link that runs out, when the last
        credential it allowed expires."""
        current = claims
        try:
            # A revocation read between this connection's admission and its joining the
            # open connections was not seen by either: checked once more here.
            self.check(current)
        except tokens.TokenError as exc:
            await end(exc.code, exc.reason)
            return
        while True:
            now = time.time()
            if current.expires_at_s >= current.link_expires_at_s:
                # Nothing to renew to: the link ends with this credential.
                await asyncio.sleep(max(0.0, current.expires_at_s - now))
                try:
                    self.check(current)
                except tokens.TokenError as exc:
                    await end(exc.code, exc.reason)
                    return
                await end("link_expired", _LINK_EXPIRED)
                return
            await asyncio.sleep(max(0.0, self.renew_at_s(current) - now))
            try:
                issued = self.renew(current)
            except tokens.TokenError as exc:
                await end("revoked" if exc.code == "revoked" else "link_expired", exc.reason)
                return
            await send({"type": "credential", **issued.describe(time.time())})
            current = issued.claims

    async def close_revoked(self, connections: Callable[[], Iterable[Revocable]]) -> None:
        """Run for the server's life: whenever a revocation arrives, close the open
        connections it covers (each with :data:`CLOSE_REVOKED` and the reason)."""
        seen = self.revocations.version
        while True:
            seen = await self.revocations.changed(seen, timeout_s=30.0)
            ending = []
            for connection in list(connections()):
                claims = connection.claims
                if claims is None:
                    continue
                revocation = self.revocations.revoked(claims.holder)
                if revocation is None:
                    continue
                log.info(
                    "closing a %s connection of %s/%s: link %s revoked",
                    claims.role,
                    claims.session_id,
                    claims.participant_id,
                    claims.token_id,
                )
                ending.append(connection.end_access("revoked", revoked_message(revocation)))
            # Together: a client slow to answer its close must not delay the others'.
            results = await asyncio.gather(*ending, return_exceptions=True)
            for result in results:
                if isinstance(result, Exception):
                    log.warning("closing a revoked connection failed: %s", result)


async def end_connection(
    ws: web.WebSocketResponse,
    say_why: Awaitable[None] | None,
    code: str,
    message: str,
    timeout_s: float,
) -> None:
    """Send a connection its refusal (``say_why``: the error message, in the endpoint's
    form; None when it was told already), then close it with the refusal's close code
    and ``code: message`` as reason.

    The send is bounded by ``timeout_s``: a peer that reads nothing must not hold up the
    revocation watcher, which closes every covered connection before it reads the next
    revocation. A close that lingers is cut by the connection gate."""
    if say_why is not None:
        try:
            async with asyncio.timeout(timeout_s):
                await say_why
        except TimeoutError:
            pass
        except Exception as exc:  # the peer went away while being told: close all the same
            log.debug("telling a connection why it ends failed: %s", exc)
    try:
        await ws.close(code=close_code(code), message=close_reason(code, message))
    except Exception as exc:
        log.debug("closing a connection failed: %s", exc)


# ---------------------------------------------------------------- requests


def presented_token(request: web.Request) -> str | None:
    """The token a request carries: a browser's websocket offers it as a subprotocol
    (``livetag.credential.TOKEN`` next to ``livetag``), other clients put it in the
    query."""
    offered = [
        part.strip()
        for header in request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, [])
        for part in header.split(",")
    ]
    for protocol in offered:
        if protocol.startswith(CREDENTIAL_PROTOCOL_PREFIX):
            if WS_PROTOCOL not in offered:
                # aiohttp would log the offered list (the credential with it) when none
                # matches: the page must offer the protocol the server picks.
                raise tokens.TokenError(f"offer the {WS_PROTOCOL!r} subprotocol too")
            return protocol.removeprefix(CREDENTIAL_PROTOCOL_PREFIX)
    return request.query.get("token")


async def token_in_body(request: web.Request) -> str | None:
    """``token`` of a small JSON object body (``POST /api/credential``); None when there is
    none. Bad bodies raise :class:`tokens.TokenError` with the reason."""
    if request.content_length is not None and request.content_length > _MAX_BODY_BYTES:
        raise tokens.TokenError("request body too large")
    # One read returns what has arrived so far: a body split over TCP segments or TLS
    # records is read to its end (or just past the limit).
    raw = b""
    while len(raw) <= _MAX_BODY_BYTES:
        chunk = await request.content.read(_MAX_BODY_BYTES + 1 - len(raw))
        if not chunk:
            break
        raw += chunk
    if len(raw) > _MAX_BODY_BYTES:
        raise tokens.TokenError("request body too large")
    if not raw.strip():
        return None
    try:
        body = strict_json.loads_object(raw, max_bytes=_MAX_BODY_BYTES)
    except strict_json.JsonInputError as exc:
        raise tokens.TokenError(f'the body must be JSON {{"token": "..."}}: {exc.reason}') from None
    token = body.get("token")
    if token is not None and not isinstance(token, str):
        raise tokens.TokenError('the body must be JSON {"token": "..."}: token is not text')
    return token


# ---------------------------------------------------------------- endpoints both servers serve


class Admit(Protocol[_Place_co]):
    """A server's admission check (its roles and session rules differ): the claims and
    what they admit to (a session's record, a casting day's), or the refusal."""

    async def __call__(
        self, request: web.Request, *, counted: bool = True, token: str | None = ..., kind: Kind
    ) -> tuple[tokens.JoinToken, _Place_co] | web.Response: ...


class Refuse(Protocol):
    """A server's refusal: counted by code unless ``counted`` is false, in its JSON form."""

    def __call__(self, status: int, code: str, message: str, *, counted: bool) -> web.Response: ...


def token_refusal(refuse: Refuse, error: tokens.TokenError, *, counted: bool) -> web.Response:
    """The HTTP answer to a refused token (its status from the refusal's code)."""
    return refuse(
        Refusal(error.code, error.reason).status, error.code, error.reason, counted=counted
    )


def verified_token(
    access: Access,
    request: web.Request,
    refuse: Refuse,
    *,
    counted: bool,
    token: str | None,
    kind: Kind,
    scope: tokens.Scope = "session",
) -> tokens.JoinToken | web.Response:
    """The first step of every admission: the token (``token``, else the credential the
    request carries) verified as ``kind`` of ``scope`` and not revoked, or the refusal."""
    try:
        if token is None and kind == "session":
            token = presented_token(request)
        return access.verified(token, kind, scope=scope)
    except tokens.TokenError as exc:
        return token_refusal(refuse, exc, counted=counted)


#: Finds a casting day by id (None: not known).
FindDay: TypeAlias = Callable[[str], records.CastingDay | None]
#: Waits a little for a casting day just published (TimeoutError when none comes).
WaitForDay: TypeAlias = Callable[..., Awaitable[records.CastingDay | None]]
#: How long an admission waits for a day its follower has not read yet.
DAY_WAIT_S = 2.0


async def admitted_to_day(
    access: Access,
    request: web.Request,
    refuse: Refuse,
    *,
    counted: bool,
    token: str | None,
    kind: Kind,
    role: Literal["performer", "director"],
    wrong_role: str,
    find_day: FindDay,
    wait_for_day: WaitForDay,
) -> tuple[tokens.JoinToken, records.CastingDay] | web.Response:
    """A day link's admission (the lobby's: ``role`` performer; the casting page's:
    director): its token verified (scope ``day``), its role (else ``not_ROLE`` 403 with
    ``wrong_role``), its day known (``unknown_day`` 404, after waiting a little for one
    just published), a performer on its roster (``not_in_day`` 403), and the day open
    (``day_closed`` 409); the claims and the day, or the refusal."""
    claims = verified_token(
        access, request, refuse, counted=counted, token=token, kind=kind, scope="day"
    )
    if isinstance(claims, web.Response):
        return claims
    if claims.role != role:
        return refuse(403, f"not_{role}", wrong_role, counted=counted)
    day = find_day(claims.session_id)
    if day is None:
        with contextlib.suppress(TimeoutError):
            day = await wait_for_day(claims.session_id, timeout_s=DAY_WAIT_S)
    if day is None:
        return refuse(404, "unknown_day", f"no casting day {claims.session_id!r}", counted=counted)
    if role == "performer" and claims.participant_id not in {p.performer_id for p in day.roster}:
        return refuse(403, "not_in_day", "you are not on this day's roster", counted=counted)
    if day.state == "closed":
        return refuse(409, "day_closed", f"casting day {day.day_id} is closed", counted=counted)
    return claims, day


def gated_refusal(refuse: Refuse, refusal: Refusal, *, counted: bool) -> web.Response:
    """The HTTP answer to a connection the gate refuses."""
    response = refuse(refusal.status, refusal.code, refusal.message, counted=counted)
    # A refused client gets no idle keep-alive connection to hold instead.
    response.force_close()
    return response


@contextlib.asynccontextmanager
async def admitted_websocket(
    request: web.Request,
    gate: ConnectionGate,
    admit: Admit[_Place],
    refuse: Refuse,
    page_kind: str,
) -> AsyncIterator[tuple[Ticket, tokens.JoinToken, _Place] | web.Response]:
    """A websocket request's place in the gate, its credential checked and its session's
    (or casting day's) room taken: (ticket, claims, session), or the refusal to answer
    with. The place is given back when the block ends."""
    # Taken before the first await: concurrent handshakes cannot all pass the caps.
    entered = gate.enter(request.remote, asyncio.get_running_loop().time())
    if isinstance(entered, Refusal):
        yield gated_refusal(refuse, entered, counted=True)
        return
    try:
        admitted = await admit(request, kind="session")
        if isinstance(admitted, web.Response):
            yield admitted
            return
        claims, session = admitted
        # The token's id is the session's (or the day's) it was admitted to.
        full = entered.join(page_kind, claims.session_id)
        if full is not None:
            yield gated_refusal(refuse, full, counted=True)
            return
        yield entered, claims, session
    finally:
        entered.release()


async def exchange_endpoint(
    request: web.Request, access: Access, admit: Admit[object], refuse: Refuse
) -> web.Response:
    """``POST /api/credential`` with ``{"token": LINK}``: the page's session credential."""
    try:
        link = await token_in_body(request)
    except tokens.TokenError as exc:
        response = refuse(400, "malformed", exc.reason, counted=True)
    else:
        admitted = await admit(request, token=link or "", kind="link")
        if isinstance(admitted, web.Response):
            response = admitted
        else:
            claims, _session = admitted
            response = web.json_response(access.exchange(claims).describe(time.time()))
    response.headers.update(API_HEADERS)
    return response


async def probe_endpoint(
    request: web.Request,
    admit: Admit[object],
    refuse: Refuse,
    gate: ConnectionGate,
    page_kind: str,
) -> web.Response:
    """``/api/token``: why a link or a credential would be refused (a page cannot read a
    refused websocket handshake). Pages POST ``{"token": ...}``: a URL's query would put it
    in the browser's console when the answer is an error. Nothing here is counted: the
    refusal was counted where it happened."""
    try:
        token = (
            await token_in_body(request) if request.method == "POST" else request.query.get("token")
        )
    except tokens.TokenError as exc:
        response = refuse(400, "malformed", exc.reason, counted=False)
    else:
        admitted = await admit(request, counted=False, token=token or "", kind="any")
        if isinstance(admitted, web.Response):
            response = admitted
        else:
            claims, _place = admitted
            refusal = gate.refusal(request.remote) or gate.session_refusal(
                page_kind, claims.session_id
            )
            response = (
                gated_refusal(refuse, refusal, counted=False)
                if refusal is not None
                else web.json_response({"session_id": claims.session_id, "role": claims.role})
            )
    # The other server's page asks too (the dashboard the capture server, the call page
    # the dashboard); the answer reveals nothing the token's holder does not know.
    response.headers["Access-Control-Allow-Origin"] = "*"
    return response
