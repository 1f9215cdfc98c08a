"""Signed join tokens: who may join which session, in which role, until when.

A token is a JWT (HS256) signed with the deployment's secret. It names the session, the
role and the participant: for a performer, the performer they are; for an observer or a
director, the rater id their tags carry. Two kinds:

- a **link** token (``kind: "link"``) is what a join link carries, valid for
  ``token_ttl_s`` (a scene's day). It is good for one thing only: its page exchanges it for
  a credential (``POST /api/credential``) and then drops it from the address bar.
- a **session credential** (``kind: "session"``) is what websockets and API calls carry. It
  lasts ``credential_ttl_s`` (minutes), is renewed over the open connection, and never
  outlives its link (``link_expires_at_s``).

Every link has its own token id (``jti``); the credentials made from it carry the same id
and the link's issue time, so a revocation of the link or of its participant
(streams.kafka.revocations) withdraws them all.

A token's **scope** says what its id names: a session (``scope: "session"``, the default,
what a token without the claim is), or a casting day (``scope: "day"``: ``session_id`` then
holds the day id). A day's links open the lobby (performers) and the casting page (the
director) for the whole day; session pages refuse them, and the lobby and the casting page
refuse session tokens (``wrong_scope``). Revocations work per day as per session: a
revocation names the day id where it would name a session id.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import jwt
from pydantic import BaseModel, ConfigDict, ValidationError

from streams.errors import BadInputError
from streams.kafka.revocations import Holder
from streams.kafka.sessions import is_over, performer_from_name
from streams.records import (
    CastingDay,
    ParticipantId,
    Performer,
    Role,
    SessionId,
    SessionRecord,
    TokenId,
)
from streams.settings import Settings

_ALGORITHM = "HS256"
_AUDIENCE = "livetag"
SECRET_FILE = "token_secret"
MAX_TOKEN_CHARS = 2048
DIRECTOR = "director"  # the rater id of the session's own director link
_PARTICIPANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")  # records.ParticipantId

TokenKind = Literal["link", "session"]
#: What a token's id names: a session, or a casting day (its lobby and casting page).
Scope = Literal["session", "day"]
Page = Literal["call", "dashboard", "lobby", "casting"]


class TokenError(BadInputError, ValueError):
    """A token is missing, forged, expired, malformed or withdrawn; ``reason`` says which,
    ``code`` is the stable error code (``bad_token``, or ``revoked``)."""

    def __init__(self, reason: str, code: str = "bad_token") -> None:
        self.reason = reason
        self.code = code
        super().__init__(reason)


class JoinToken(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    session_id: SessionId
    role: Role
    participant_id: ParticipantId
    expires_at_s: int
    token_id: TokenId
    kind: TokenKind
    # The link's: a credential carries its link's issue time and expiry.
    issued_at_us: int
    link_expires_at_s: int
    # What session_id names: a session, or a casting day.
    scope: Scope = "session"

    @property
    def holder(self) -> Holder:
        """What a revocation is checked against."""
        return Holder(self.session_id, self.participant_id, self.token_id, self.issued_at_us)


def load_secret(settings: Settings) -> bytes:
    """The signing key: from settings, else generated once into the state folder (0600)."""
    if settings.token_secret is not None:
        return settings.token_secret.get_secret_value().encode()
    path = settings.state_dir / SECRET_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_once(path, secrets.token_urlsafe(48).encode())
    key = path.read_bytes().strip()
    if len(key) < 32:
        raise TokenError(f"{path} holds no usable key: delete it and restart to make a new one")
    return key


def _create_once(path: Path, data: bytes) -> None:
    # Written whole to a private temporary file, then linked into place: a process that
    # reads the path sees all of one key, and of two processes starting at once, the
    # first link wins and both use its key.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as secret_file:
            secret_file.write(data)
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def new_token_id() -> str:
    return secrets.token_urlsafe(12)  # 16 characters, 96 random bits


def issue(
    secret: bytes,
    *,
    session_id: str,
    role: Role,
    participant_id: str,
    ttl_s: int,
    now_s: float | None = None,
    kind: TokenKind = "link",
    token_id: str | None = None,
    issued_at_us: int | None = None,
    link_expires_at_s: int | None = None,
    scope: Scope = "session",
) -> str:
    """A signed token. By default a new link (its own token id, issued now); a credential
    names the link it was made from (``token_id``, ``issued_at_us``, ``link_expires_at_s``,
    see :func:`issue_credential`). ``scope="day"``: ``session_id`` is a casting day's id."""
    now = time.time() if now_s is None else now_s
    expires = int(now) + ttl_s
    if link_expires_at_s is not None:
        expires = min(expires, link_expires_at_s)
    claims = JoinToken(
        session_id=session_id,
        role=role,
        participant_id=participant_id,
        expires_at_s=expires,
        token_id=token_id or new_token_id(),
        kind=kind,
        issued_at_us=int(now * 1_000_000) if issued_at_us is None else issued_at_us,
        link_expires_at_s=expires if link_expires_at_s is None else link_expires_at_s,
        scope=scope,
    )
    return encode(secret, claims, now_s=now)


def issue_credential(
    secret: bytes, link: JoinToken, *, ttl_s: int, now_s: float | None = None
) -> tuple[str, JoinToken]:
    """A session credential for the holder of ``link`` (a link's or a credential's claims):
    the same session, role, participant and token id, never past the link's expiry."""
    now = time.time() if now_s is None else now_s
    claims = link.model_copy(
        update={
            "kind": "session",
            "expires_at_s": min(int(now) + ttl_s, link.link_expires_at_s),
        }
    )
    return encode(secret, claims, now_s=now), claims


def encode(secret: bytes, claims: JoinToken, *, now_s: float) -> str:
    payload: dict[str, Any] = {
        "sid": claims.session_id,
        "role": claims.role,
        "sub": claims.participant_id,
        "exp": claims.expires_at_s,
        "iat": int(now_s),
        "aud": _AUDIENCE,
        "jti": claims.token_id,
        "kind": claims.kind,
        # Microseconds: a participant revoked and invited again within one second must
        # still tell the old link from the new one.
        "liat_us": claims.issued_at_us,
        "lexp": claims.link_expires_at_s,
        "scope": claims.scope,
    }
    return jwt.encode(payload, secret, algorithm=_ALGORITHM)


def verify(secret: bytes, token: str | None, *, now_s: float | None = None) -> JoinToken:
    """The token's claims (either kind), or :class:`TokenError` with a reason a person can
    act on. Services admit with :func:`verify_credential`; only a page's exchange takes
    links (:func:`verify_link`)."""
    if not token:
        raise TokenError("missing token: open the join link you were given")
    if len(token) > MAX_TOKEN_CHARS:
        raise TokenError("token too long")
    now = time.time() if now_s is None else now_s
    try:
        payload = jwt.decode(
            token,
            secret,
            algorithms=[_ALGORITHM],
            audience=_AUDIENCE,
            # Expiry is checked below against the caller's clock (testable, one place).
            options={
                "require": ["exp", "sid", "role", "sub", "aud", "jti", "kind", "liat_us", "lexp"],
                "verify_exp": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise TokenError("token signature is invalid (forged or for another deployment)") from None
    except jwt.MissingRequiredClaimError as exc:
        # Links made before token ids existed have none: they cannot be revoked, so they
        # are not taken.
        raise TokenError(f"token without {exc.claim!r}: ask the director for a new link") from None
    except jwt.PyJWTError as exc:
        raise TokenError(f"malformed token: {exc}") from None
    try:
        claims = JoinToken(
            session_id=payload["sid"],
            role=payload["role"],
            participant_id=payload["sub"],
            expires_at_s=payload["exp"],
            token_id=payload["jti"],
            kind=payload["kind"],
            issued_at_us=payload["liat_us"],
            link_expires_at_s=payload["lexp"],
            # Tokens made before days existed name a session.
            scope=payload.get("scope", "session"),
        )
    except ValidationError as exc:
        raise TokenError(f"malformed token claims: {exc.errors()[0]['msg']}") from None
    if claims.expires_at_s <= now:
        if claims.kind == "session":
            raise TokenError("session credential expired: reload the page to get a new one")
        raise TokenError("token expired: ask the director for a new link")
    return claims


def verify_link(secret: bytes, token: str | None, *, now_s: float | None = None) -> JoinToken:
    """A join link's claims; a credential is refused (it is renewed, not exchanged)."""
    claims = verify(secret, token, now_s=now_s)
    if claims.kind != "link":
        raise TokenError("this is a session credential, not a join link")
    return claims


def verify_credential(secret: bytes, token: str | None, *, now_s: float | None = None) -> JoinToken:
    """A session credential's claims; a link's token is refused: it stays out of every URL
    and message but its page's exchange."""
    claims = verify(secret, token, now_s=now_s)
    if claims.kind != "session":
        raise TokenError(
            "this is a join link's token: its page exchanges it for a session credential "
            "(POST /api/credential) and uses that"
        )
    return claims


def require_scope(claims: JoinToken, scope: Scope) -> JoinToken:
    """``claims`` when they are of ``scope``; else :class:`TokenError` ``wrong_scope``
    saying which page the token opens."""
    if claims.scope == scope:
        return claims
    if claims.scope == "day":
        where = (
            "the lobby" if claims.role == "performer" else "the casting page"
        ) + f" of casting day {claims.session_id}"
        raise TokenError(
            f"this is a casting day's link: it opens {where}, not a session's page",
            code="wrong_scope",
        )
    raise TokenError(
        f"this is a link to session {claims.session_id}: the lobby and the casting page "
        "take the casting day's links",
        code="wrong_scope",
    )


# ---------------------------------------------------------------- links


@dataclass(frozen=True)
class JoinLink:
    role: Role
    participant_id: str
    url: str
    page: Page = "call"  # "call": the call page; "dashboard": the director's dashboard
    token_id: str = ""
    expires_at_s: int = 0


class InviteError(BadInputError, ValueError):
    """A link cannot be made as asked; the message says what to change."""


def participant_id_of(name: str) -> str:
    """The participant id a name stands for: an id as printed is itself, a name is made
    into one by the rule of performer ids (``Maria Lopez`` -> ``maria-lopez``)."""
    if _PARTICIPANT_ID.match(name):
        return name
    try:
        return performer_from_name(name).performer_id
    except ValueError as exc:
        raise InviteError(str(exc)) from None


def participant_for(session: SessionRecord, role: Role, name: str | None) -> str:
    """The participant id a link of ``role`` for ``name`` carries.

    Performers are the roster's (by id or name). A director is ``director``, or
    ``director-NAME`` for a further director. An observer's rater id is made from NAME
    (the same rule as performer ids, so a name always gives the same id): one observer,
    one rater id across their fresh links; it may not be a performer's or a director's,
    so every tag says who pressed it."""
    roster = {performer.performer_id for performer in session.roster}
    slug = None if name is None else participant_id_of(name)
    if role == "performer":
        return performer_of(session.roster, name, "this session")
    if role == "director":
        return director_id(slug)
    if slug is None:
        raise InviteError("an observer's link needs --name: their rater id is made from it")
    if slug in roster:
        raise InviteError(
            f"{slug!r} is a performer of this session: give the observer another name"
        )
    if slug == DIRECTOR or slug.startswith(f"{DIRECTOR}-"):
        raise InviteError(f"{slug!r} is reserved for directors: give the observer another name")
    return slug


def performer_of(roster: Sequence[Performer], name: str | None, where: str) -> str:
    """The performer id of the roster's performer ``name`` (an id, or a display name);
    :class:`InviteError` naming ``where`` and the roster when there is none."""
    slug = None if name is None else participant_id_of(name)
    ids = {performer.performer_id for performer in roster}
    by_name = {
        performer_from_name(performer.display_name).performer_id: performer.performer_id
        for performer in roster
        if any(c.isalnum() for c in performer.display_name)
    }
    performer = slug if slug in ids else by_name.get(slug or "")
    if performer is None:
        names = ", ".join(sorted(ids))
        raise InviteError(f"{name!r} is not a performer of {where} (roster: {names})")
    return performer


def director_id(slug: str | None) -> str:
    """A director's participant id: ``director``, or ``director-NAME`` for a further one."""
    if slug is None or slug == DIRECTOR:
        return DIRECTOR
    return f"{DIRECTOR}-{slug}"[:32].rstrip("-_")


def _link_url(settings: Settings, page: Page, role: Role, token: str) -> str:
    query = urlencode({"token": token})
    if page == "dashboard":
        return f"{settings.dashboard_base_url}/dashboard?{query}"
    if page == "casting":
        return f"{settings.dashboard_base_url}/casting?{query}"
    if page == "lobby":
        return f"{settings.capture_base_url}/lobby?{query}"
    path = "join" if role == "performer" else "direct"
    return f"{settings.capture_base_url}/{path}?{query}"


def invite(
    settings: Settings,
    session: SessionRecord,
    secret: bytes,
    *,
    role: Role,
    name: str | None = None,
    page: Page | None = None,
    now_s: float | None = None,
) -> JoinLink:
    """A new link (its own token id) for one participant. Performers open the call page;
    directors and observers the dashboard by default (an observer's is read-only: watch,
    features, everyone's tags, agreement and health, and their own tagging), or the call
    page with ``page="call"``."""
    if is_over(session):
        raise InviteError(f"session {session.session_id} is {session.state}: no new links")
    participant = participant_for(session, role, name)
    chosen: Page = page or ("call" if role == "performer" else "dashboard")
    if role == "performer" and chosen != "call":
        raise InviteError("a performer's link opens the call page")
    now = time.time() if now_s is None else now_s
    token = issue(
        secret,
        session_id=session.session_id,
        role=role,
        participant_id=participant,
        ttl_s=settings.token_ttl_s,
        now_s=now,
    )
    claims = verify(secret, token, now_s=now)
    return JoinLink(
        role,
        participant,
        _link_url(settings, chosen, role, token),
        chosen,
        claims.token_id,
        claims.expires_at_s,
    )


def join_links(settings: Settings, session: SessionRecord, secret: bytes) -> list[JoinLink]:
    """A new link per performer, and the director's (the call page and the dashboard, one
    token id for both), each with its own signed token."""
    links = [
        invite(settings, session, secret, role="performer", name=performer.performer_id)
        for performer in session.roster
    ]
    director = invite(settings, session, secret, role="director")
    token = director.url.split("?", 1)[1]
    links.append(
        JoinLink(
            "director",
            DIRECTOR,
            f"{settings.capture_base_url}/direct?{token}",
            "call",
            director.token_id,
            director.expires_at_s,
        )
    )
    links.append(director)
    return links


# ---------------------------------------------------------------- a casting day's links


def day_invite(
    settings: Settings,
    day: CastingDay,
    secret: bytes,
    *,
    role: Literal["performer", "director"],
    name: str | None = None,
    now_s: float | None = None,
) -> JoinLink:
    """A new link to a casting day (scope ``day``, valid ``token_ttl_s``): a performer's
    opens the lobby, where they wait between scenes; the director's opens the casting
    page. Each has its own token id, revocable like a session's links."""
    if day.state == "closed":
        raise InviteError(f"casting day {day.day_id} is closed: no new links")
    if role == "performer":
        participant = performer_of(day.roster, name, f"casting day {day.day_id}")
    else:
        participant = director_id(None if name is None else participant_id_of(name))
    page: Page = "lobby" if role == "performer" else "casting"
    now = time.time() if now_s is None else now_s
    token = issue(
        secret,
        session_id=day.day_id,
        role=role,
        participant_id=participant,
        ttl_s=settings.token_ttl_s,
        now_s=now,
        scope="day",
    )
    claims = verify(secret, token, now_s=now)
    return JoinLink(
        role,
        participant,
        _link_url(settings, page, role, token),
        page,
        claims.token_id,
        claims.expires_at_s,
    )


def day_links(settings: Settings, day: CastingDay, secret: bytes) -> list[JoinLink]:
    """A lobby link per performer of the day, then the director's casting-page link."""
    links = [
        day_invite(settings, day, secret, role="performer", name=performer.performer_id)
        for performer in day.roster
    ]
    links.append(day_invite(settings, day, secret, role="director"))
    return links
