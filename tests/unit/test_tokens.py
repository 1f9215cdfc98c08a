from __future__ import annotations

import base64
import json
from pathlib import Path

import jwt
import pytest

from infra.settings import Settings
from taggers import tokens

SECRET = b"k" * 48
NOW = 1_800_000_000


def _issue(**changes: object) -> str:
    options: dict[str, object] = {
        "session_id": "scene-1",
        "role": "performer",
        "participant_id": "alice",
        "ttl_s": 3600,
        "now_s": NOW,
    }
    options.update(changes)
    return tokens.issue(SECRET, **options)  # type: ignore[arg-type]


def test_round_trip() -> None:
    claims = tokens.verify(SECRET, _issue(), now_s=NOW + 10)
    assert (claims.session_id, claims.role, claims.participant_id) == (
        "scene-1",
        "performer",
        "alice",
    )
    assert claims.expires_at_s == NOW + 3600


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "missing token"),
        ("", "missing token"),
        ("not.a.jwt", "malformed token"),
        ("x" * 5000, "too long"),
    ],
)
def test_bad_tokens(token: str | None, reason: str) -> None:
    with pytest.raises(tokens.TokenError, match=reason):
        tokens.verify(SECRET, token, now_s=NOW)


def test_forged_expired_and_foreign_tokens() -> None:
    with pytest.raises(tokens.TokenError, match="signature is invalid"):
        tokens.verify(b"another deployment's key, long enough", _issue(), now_s=NOW)
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.verify(SECRET, _issue(ttl_s=60), now_s=NOW + 61)
    # Signed with our key but with claims we never issue.
    odd = jwt.encode(
        {"sid": "Bad/Id", "role": "performer", "sub": "a", "exp": NOW + 60, "aud": "livetag"},
        SECRET,
        algorithm="HS256",
    )
    with pytest.raises(tokens.TokenError, match="malformed token claims"):
        tokens.verify(SECRET, odd, now_s=NOW)
    # An unsigned token ("alg": "none") must never pass.
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = {"sid": "s", "role": "director", "sub": "d", "exp": NOW + 60, "aud": "livetag"}
    claims = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    unsigned = f"{header}.{claims}."
    with pytest.raises(tokens.TokenError):
        tokens.verify(SECRET, unsigned, now_s=NOW)


def test_secret_is_generated_once_and_private(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    first = tokens.load_secret(settings)
    assert len(first) >= 32
    assert tokens.load_secret(settings) == first
    assert (tmp_path / tokens.SECRET_FILE).stat().st_mode & 0o077 == 0
    assert tokens.load_secret(Settings(state_dir=tmp_path, token_secret="configured")) == (
        b"configured"
    )
