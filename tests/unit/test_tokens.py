from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from aiohttp import streams
from aiohttp.test_utils import make_mocked_request

from streams import records
from streams.kafka.revocations import RevocationList, revocation
from streams.settings import Settings
from taggers import credentials, tokens
from tests.tag_client import session_record

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


def _settings(**changes: object) -> Settings:
    options: dict[str, object] = {
        "capture_port": 8080,
        "dashboard_port": 8081,
        "token_ttl_s": 3600,
        "credential_ttl_s": 600,
    }
    return Settings(**{**options, **changes})  # type: ignore[arg-type]


def _access(**changes: object) -> credentials.Access:
    settings = _settings(**changes)
    return credentials.Access(settings, SECRET, RevocationList(settings))


def test_round_trip() -> None:
    claims = tokens.verify(SECRET, _issue(), now_s=NOW + 10)
    assert (claims.session_id, claims.role, claims.participant_id) == (
        "scene-1",
        "performer",
        "alice",
    )
    assert claims.expires_at_s == NOW + 3600
    assert claims.kind == "link"
    assert claims.link_expires_at_s == NOW + 3600
    assert claims.issued_at_us == NOW * 1_000_000


def test_every_link_has_its_own_token_id() -> None:
    first, second = (tokens.verify(SECRET, _issue(), now_s=NOW) for _ in range(2))
    assert first.token_id != second.token_id
    assert len(first.token_id) >= 16


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
    good = jwt.decode(
        _issue(),
        SECRET,
        algorithms=["HS256"],
        audience="livetag",
        options={"verify_exp": False, "verify_iat": False},
    )
    odd = jwt.encode({**good, "sid": "Bad/Id"}, SECRET, algorithm="HS256")
    with pytest.raises(tokens.TokenError, match="malformed token claims"):
        tokens.verify(SECRET, odd, now_s=NOW)
    # A token without a token id (as made before there were ids) cannot be revoked.
    old = {"sid": "s", "role": "director", "sub": "d", "exp": NOW + 60, "aud": "livetag"}
    with pytest.raises(tokens.TokenError, match="without 'jti'"):
        tokens.verify(SECRET, jwt.encode(old, SECRET, algorithm="HS256"), now_s=NOW)
    # An unsigned token ("alg": "none") must never pass.
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps(good).encode()).rstrip(b"=").decode()
    with pytest.raises(tokens.TokenError):
        tokens.verify(SECRET, f"{header}.{body}.", now_s=NOW)


def test_a_credential_is_short_lived_and_never_outlives_its_link() -> None:
    link = tokens.verify(SECRET, _issue(ttl_s=3600), now_s=NOW)
    token, claims = tokens.issue_credential(SECRET, link, ttl_s=600, now_s=NOW + 10)
    verified = tokens.verify_credential(SECRET, token, now_s=NOW + 20)
    assert verified == claims
    assert verified.kind == "session"
    assert verified.expires_at_s == NOW + 610
    # The link's identity travels with it: what revocations are checked against.
    assert (verified.token_id, verified.issued_at_us) == (link.token_id, link.issued_at_us)
    assert verified.link_expires_at_s == link.expires_at_s
    with pytest.raises(tokens.TokenError, match="session credential expired"):
        tokens.verify_credential(SECRET, token, now_s=NOW + 610)
    # Near the link's end, the credential ends with the link.
    _, last = tokens.issue_credential(SECRET, link, ttl_s=600, now_s=NOW + 3300)
    assert last.expires_at_s == NOW + 3600


def test_links_and_credentials_are_not_interchangeable() -> None:
    link_token = _issue()
    link = tokens.verify_link(SECRET, link_token, now_s=NOW)
    credential, _ = tokens.issue_credential(SECRET, link, ttl_s=600, now_s=NOW)
    # A websocket or an API takes a credential only: the link stays out of every URL.
    with pytest.raises(tokens.TokenError, match="join link's token"):
        tokens.verify_credential(SECRET, link_token, now_s=NOW)
    # The exchange takes a link only: a credential is renewed over its connection.
    with pytest.raises(tokens.TokenError, match="not a join link"):
        tokens.verify_link(SECRET, credential, now_s=NOW)


def test_an_observer_gets_a_rater_id_of_their_own_from_their_name() -> None:
    session = session_record("scene-1", ("ana", "ben"))
    assert tokens.participant_for(session, "observer", "Maria Lopez") == "maria-lopez"
    # The same name, the same rater id: a fresh link for the same observer.
    assert tokens.participant_for(session, "observer", "maria lopez") == "maria-lopez"
    for taken in ("Ana", "director", "Director-2"):
        with pytest.raises(tokens.InviteError, match="another name"):
            tokens.participant_for(session, "observer", taken)
    with pytest.raises(tokens.InviteError, match="needs --name"):
        tokens.participant_for(session, "observer", None)
    with pytest.raises(tokens.InviteError, match="no letters or digits"):
        tokens.participant_for(session, "observer", "!!!")
    assert tokens.participant_for(session, "performer", "Ben") == "ben"
    with pytest.raises(tokens.InviteError, match="not a performer"):
        tokens.participant_for(session, "performer", "zoe")
    assert tokens.participant_for(session, "director", None) == "director"
    assert tokens.participant_for(session, "director", "Kim") == "director-kim"


def test_invites_open_the_page_of_their_role() -> None:
    settings = _settings()
    session = session_record("scene-1", ("ana", "ben"))
    observer = tokens.invite(settings, session, SECRET, role="observer", name="Maria")
    assert observer.page == "dashboard"
    assert observer.url.startswith("http://127.0.0.1:8081/dashboard?token=")
    token = parse_qs(urlsplit(observer.url).query)["token"][0]
    claims = tokens.verify_link(SECRET, token)
    assert (claims.role, claims.participant_id, claims.token_id) == (
        "observer",
        "maria",
        observer.token_id,
    )
    watching = tokens.invite(settings, session, SECRET, role="observer", name="Maria", page="call")
    assert watching.url.startswith("http://127.0.0.1:8080/direct?token=")
    assert watching.token_id != observer.token_id
    performer = tokens.invite(settings, session, SECRET, role="performer", name="ana")
    assert performer.url.startswith("http://127.0.0.1:8080/join?token=")
    with pytest.raises(tokens.InviteError, match="call page"):
        tokens.invite(settings, session, SECRET, role="performer", name="ana", page="dashboard")
    ended = session.model_copy(update={"state": "ended"})
    with pytest.raises(tokens.InviteError, match="ended"):
        tokens.invite(settings, ended, SECRET, role="observer", name="Maria")


def test_session_links_name_their_token_ids() -> None:
    links = tokens.join_links(_settings(), session_record("scene-1", ("ana", "ben")), SECRET)
    assert [(link.role, link.participant_id, link.page) for link in links] == [
        ("performer", "ana", "call"),
        ("performer", "ben", "call"),
        ("director", "director", "call"),
        ("director", "director", "dashboard"),
    ]
    for link in links:
        token = parse_qs(urlsplit(link.url).query)["token"][0]
        assert tokens.verify_link(SECRET, token).token_id == link.token_id
    assert len({link.token_id for link in links}) == 3  # the director's two pages share one


def test_revocation_by_token_id_or_participant() -> None:
    access = _access()
    link = tokens.verify(SECRET, _issue(now_s=NOW), now_s=NOW)
    other = tokens.verify(SECRET, _issue(now_s=NOW), now_s=NOW)
    credential = access.admit(access.exchange(link, now_s=NOW).token, now_s=NOW)
    access.revocations.add(revocation("scene-1", token_id=link.token_id, now_us=NOW * 10**6))
    for claims in (link, credential):
        with pytest.raises(tokens.TokenError) as refused:
            access.check(claims)
        assert refused.value.code == "revoked"
    access.check(other)  # alice's other link is untouched
    # Every link of alice issued up to the revocation; one issued after it is valid.
    access.revocations.add(revocation("scene-1", participant_id="alice", now_us=(NOW + 5) * 10**6))
    with pytest.raises(tokens.TokenError, match="revoked"):
        access.check(other)
    fresh = tokens.verify(SECRET, _issue(now_s=NOW + 5.000001), now_s=NOW + 6)
    access.check(fresh)
    # Another session's alice is someone else.
    elsewhere = tokens.verify(SECRET, _issue(session_id="scene-2", now_s=NOW), now_s=NOW)
    access.check(elsewhere)


def test_renewal_extends_the_credential_and_is_refused_when_revoked_or_run_out() -> None:
    access = _access()
    link = tokens.verify(SECRET, _issue(now_s=NOW, ttl_s=3600), now_s=NOW)
    first = access.exchange(link, now_s=NOW)
    renewed = access.renew(first.claims, now_s=NOW + 400)
    assert renewed.claims.expires_at_s == NOW + 1000
    assert renewed.claims.token_id == link.token_id
    assert access.renew_at_s(first.claims) == NOW + 400  # a third of 600 s left
    with pytest.raises(tokens.TokenError, match="link expired"):
        access.renew(renewed.claims, now_s=NOW + 3600)
    access.revocations.add(revocation("scene-1", token_id=link.token_id, now_us=NOW * 10**6))
    with pytest.raises(tokens.TokenError) as refused:
        access.renew(renewed.claims, now_s=NOW + 800)
    assert refused.value.code == "revoked"
    with pytest.raises(tokens.TokenError, match="revoked"):
        access.exchange(link, now_s=NOW)


async def test_an_open_connection_is_renewed_then_ended_when_revoked() -> None:
    access = _access(credential_ttl_s=6)
    link = tokens.verify(SECRET, _issue(ttl_s=3600, now_s=time.time()))
    issued = access.exchange(link)
    sent: list[dict[str, object]] = []
    ended: list[tuple[str, str]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)
        access.revocations.add(revocation("scene-1", participant_id="alice"))

    async def end(code: str, message: str) -> None:
        ended.append((code, message))

    async with asyncio.timeout(15):
        await access.keep_renewed(issued.claims, send, end)
    # One renewal (a third of the lifetime before expiry), then the revocation: refused.
    assert [message["type"] for message in sent] == ["credential"]
    renewed = tokens.verify_credential(SECRET, str(sent[0]["credential"]))
    assert renewed.expires_at_s > issued.claims.expires_at_s
    assert ended == [("revoked", ended[0][1])]
    assert "revoked" in ended[0][1]


async def test_a_connection_revoked_while_it_was_admitted_is_ended_at_once() -> None:
    access = _access()
    link = tokens.verify(SECRET, _issue(ttl_s=3600, now_s=time.time()))
    issued = access.exchange(link)
    # The revocation arrives after the admission, before the connection was among the
    # open ones the watcher closes.
    access.revocations.add(revocation("scene-1", token_id=link.token_id))
    ended: list[tuple[str, str]] = []

    async def send(message: dict[str, object]) -> None:
        raise AssertionError("a revoked link gets no credential")

    async def end(code: str, message: str) -> None:
        ended.append((code, message))

    async with asyncio.timeout(1):
        await access.keep_renewed(issued.claims, send, end)
    assert [code for code, _ in ended] == ["revoked"]


def test_revocation_records_name_one_target() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        records.TokenRevocation(ts_us=1, session_id="s", token_id="abcdefgh", participant_id="a")
    with pytest.raises(ValueError, match="exactly one"):
        records.TokenRevocation(ts_us=1, session_id="s")


def test_secret_is_generated_once_and_private(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path)
    first = tokens.load_secret(settings)
    assert len(first) >= 32
    assert tokens.load_secret(settings) == first
    assert (tmp_path / tokens.SECRET_FILE).stat().st_mode & 0o077 == 0
    assert tokens.load_secret(Settings(state_dir=tmp_path, token_secret="configured")) == (
        b"configured"
    )


async def test_a_credential_request_body_split_over_several_packets_is_read_whole() -> None:
    loop = asyncio.get_running_loop()
    body = streams.StreamReader(mock.Mock(_reading_paused=False), limit=2**16, loop=loop)
    body.feed_data(b'{"tok')
    # The rest arrives in later segments, as over a slow network or TLS records.
    loop.call_later(0.02, body.feed_data, b'en": "a.b')
    loop.call_later(0.04, body.feed_data, b'.c"}')
    loop.call_later(0.06, body.feed_eof)
    request = make_mocked_request("POST", "/api/credential", payload=body)
    assert await credentials.token_in_body(request) == "a.b.c"


async def test_a_credential_request_body_over_the_limit_is_refused_however_it_arrives() -> None:
    loop = asyncio.get_running_loop()
    body = streams.StreamReader(mock.Mock(_reading_paused=False), limit=2**16, loop=loop)
    for _ in range(20):
        body.feed_data(b" " * 1024)
    body.feed_eof()
    request = make_mocked_request("POST", "/api/credential", payload=body)
    with pytest.raises(tokens.TokenError, match="too large"):
        await credentials.token_in_body(request)
