"""Signed join tokens: who may join which session, in which role, until when.

A token is a JWT (HS256) signed with the deployment's secret. It names the session, the
role and the participant: for a performer, the performer they are; for an observer or a
director, the rater id their tags carry.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jwt
from pydantic import BaseModel, ConfigDict, ValidationError

from infra.settings import Settings
from streams.records import ParticipantId, Role, SessionId, SessionRecord

_ALGORITHM = "HS256"
_AUDIENCE = "livetag"
SECRET_FILE = "token_secret"


class TokenError(ValueError):
    """A token is missing, forged, expired or malformed; ``reason`` says which."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class JoinToken(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    session_id: SessionId
    role: Role
    participant_id: ParticipantId
    expires_at_s: int


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


def issue(
    secret: bytes,
    *,
    session_id: str,
    role: Role,
    participant_id: str,
    ttl_s: int,
    now_s: float | None = None,
) -> str:
    issued = int(time.time() if now_s is None else now_s)
    claims = JoinToken(
        session_id=session_id,
        role=role,
        participant_id=participant_id,
        expires_at_s=issued + ttl_s,
    )
    payload: dict[str, Any] = {
        "sid": claims.session_id,
        "role": claims.role,
        "sub": claims.participant_id,
        "exp": claims.expires_at_s,
        "iat": issued,
        "aud": _AUDIENCE,
    }
    return jwt.encode(payload, secret, algorithm=_ALGORITHM)


def verify(secret: bytes, token: str | None, *, now_s: float | None = None) -> JoinToken:
    """The token's claims, or :class:`TokenError` with a reason a person can act on."""
    if not token:
        raise TokenError("missing token: open the join link you were given")
    if len(token) > 2048:
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
                "require": ["exp", "sid", "role", "sub", "aud"],
                "verify_exp": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise TokenError("token signature is invalid (forged or for another deployment)") from None
    except jwt.PyJWTError as exc:
        raise TokenError(f"malformed token: {exc}") from None
    try:
        claims = JoinToken(
            session_id=payload["sid"],
            role=payload["role"],
            participant_id=payload["sub"],
            expires_at_s=payload["exp"],
        )
    except ValidationError as exc:
        raise TokenError(f"malformed token claims: {exc.errors()[0]['msg']}") from None
    if claims.expires_at_s <= now:
        raise TokenError("token expired: ask the director for a new link")
    return claims


@dataclass(frozen=True)
class JoinLink:
    role: Role
    participant_id: str
    url: str
    page: str = "call"  # "call": the call page; "dashboard": the director's dashboard


def join_links(settings: Settings, session: SessionRecord, secret: bytes) -> list[JoinLink]:
    """One link per performer, and the director's (the call page and the dashboard), each
    with a signed token."""
    base = settings.capture_base_url
    links = []
    for performer in session.roster:
        token = issue(
            secret,
            session_id=session.session_id,
            role="performer",
            participant_id=performer.performer_id,
            ttl_s=settings.token_ttl_s,
        )
        links.append(
            JoinLink(
                "performer", performer.performer_id, f"{base}/join?{urlencode({'token': token})}"
            )
        )
    director = issue(
        secret,
        session_id=session.session_id,
        role="director",
        participant_id="director",
        ttl_s=settings.token_ttl_s,
    )
    query = urlencode({"token": director})
    links.append(JoinLink("director", "director", f"{base}/direct?{query}"))
    dashboard = f"{settings.dashboard_base_url}/dashboard?{query}"
    links.append(JoinLink("director", "director", dashboard, page="dashboard"))
    return links
