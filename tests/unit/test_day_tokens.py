"""A casting day's links (taggers.tokens scope "day") and the day record's changes
(streams.kafka.casting): day tokens open the lobby and the casting page only, session
tokens never do, and revocation works per day as per session."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from streams import records
from streams.kafka import casting
from streams.kafka.revocations import RevocationList, revocation
from streams.settings import Settings
from taggers import credentials, tokens
from taggers.vocabulary import load_vocabulary

SECRET = b"k" * 48
NOW = 1_800_000_000


def _settings() -> Settings:
    return Settings(capture_port=8080, dashboard_port=8081, token_ttl_s=3600)


def _day(**changes: object) -> records.CastingDay:
    day = casting.new_day(
        title="Monday",
        performer_names=["Ana Ruiz", "Ben"],
        vocabulary=load_vocabulary(None),
        day_id="day-20260101-abcdef",
        stamp_us=NOW * 1_000_000,
    )
    return day.model_copy(update=changes)


def _token_of(link: tokens.JoinLink) -> str:
    return parse_qs(urlsplit(link.url).query)["token"][0]


def _credential(link: tokens.JoinLink, now_s: float | None = None) -> str:
    """The credential a page gets for ``link`` (at ``now_s``, default: now)."""
    claims = tokens.verify(SECRET, _token_of(link), now_s=now_s)
    token, _ = tokens.issue_credential(SECRET, claims, ttl_s=600, now_s=now_s)
    return token


def test_day_links_open_the_lobby_and_the_casting_page_for_the_whole_day() -> None:
    links = tokens.day_links(_settings(), _day(), SECRET)
    assert [(link.role, link.participant_id, link.page) for link in links] == [
        ("performer", "ana-ruiz", "lobby"),
        ("performer", "ben", "lobby"),
        ("director", "director", "casting"),
    ]
    assert links[0].url.startswith("http://127.0.0.1:8080/lobby?token=")
    assert links[2].url.startswith("http://127.0.0.1:8081/casting?token=")
    claims = tokens.verify(SECRET, _token_of(links[0]))
    assert claims.scope == "day"
    assert claims.session_id == "day-20260101-abcdef"
    assert claims.kind == "link"
    assert claims.expires_at_s - claims.issued_at_us // 1_000_000 in (3599, 3600)
    # Every link its own id, so one can be withdrawn alone.
    assert len({link.token_id for link in links}) == 3


def test_a_performer_is_found_by_id_or_name_and_a_stranger_is_refused() -> None:
    day = _day()
    link = tokens.day_invite(_settings(), day, SECRET, role="performer", name="Ana Ruiz")
    assert link.participant_id == "ana-ruiz"
    with pytest.raises(tokens.InviteError, match="not a performer of casting day"):
        tokens.day_invite(_settings(), day, SECRET, role="performer", name="Zoe")
    with pytest.raises(tokens.InviteError, match="is closed"):
        tokens.day_invite(_settings(), _day(state="closed"), SECRET, role="performer", name="ben")


def test_a_day_credential_is_refused_by_session_pages_and_a_session_s_by_the_lobby() -> None:
    settings = _settings()
    access = credentials.Access(settings, SECRET, RevocationList(settings))
    day_link = tokens.day_invite(settings, _day(), SECRET, role="performer", name="ben")
    day_credential = _credential(day_link)
    with pytest.raises(tokens.TokenError) as refused:
        access.admit(day_credential)  # a session's page: the default scope
    assert refused.value.code == "wrong_scope"
    assert "opens the lobby of casting day day-20260101-abcdef" in refused.value.reason
    assert access.admit(day_credential, scope="day").participant_id == "ben"
    # The exchange checks the scope too: a day link gets no session credential.
    with pytest.raises(tokens.TokenError) as exchanged:
        access.verified(_token_of(day_link), "link")
    assert exchanged.value.code == "wrong_scope"

    session_token = tokens.issue(
        SECRET, session_id="20260101-aaaaaa", role="performer", participant_id="ben", ttl_s=60
    )
    with pytest.raises(tokens.TokenError) as wrong:
        access.verified(session_token, "link", scope="day")
    assert wrong.value.code == "wrong_scope"
    assert "take the casting day's links" in wrong.value.reason


def test_a_token_without_a_scope_claim_is_a_session_s() -> None:
    token = tokens.issue(
        SECRET, session_id="s-1", role="director", participant_id="director", ttl_s=60
    )
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], audience="livetag")
    del payload["scope"]
    older = jwt.encode(payload, SECRET, algorithm="HS256")
    assert tokens.verify(SECRET, older).scope == "session"


def test_revocation_withdraws_a_day_link_by_token_and_by_performer() -> None:
    settings = _settings()
    revocations = RevocationList(settings)
    access = credentials.Access(settings, SECRET, revocations)
    day = _day()
    link = tokens.day_invite(settings, day, SECRET, role="performer", name="ben", now_s=NOW)
    credential = _credential(link, NOW)
    revocations.add(revocation(day.day_id, token_id=link.token_id, now_us=NOW * 1_000_000))
    with pytest.raises(tokens.TokenError) as refused:
        access.admit(credential, now_s=NOW, scope="day")
    assert refused.value.code == "revoked"

    other = tokens.day_invite(settings, day, SECRET, role="performer", name="ana-ruiz", now_s=NOW)
    revocations.add(revocation(day.day_id, participant_id="ana-ruiz", now_us=NOW * 1_000_000 + 5))
    with pytest.raises(tokens.TokenError):
        access.admit(_credential(other, NOW), now_s=NOW, scope="day")
    fresh = tokens.day_invite(
        settings, day, SECRET, role="performer", name="ana-ruiz", now_s=NOW + 1
    )
    assert access.admit(_credential(fresh, NOW + 1), now_s=NOW + 1, scope="day").participant_id == (
        "ana-ruiz"
    )


# ---------------------------------------------------------------- the day's changes


def _scene(session_id: str, *performers: str, started: int = 1) -> records.SceneRef:
    return records.SceneRef(
        session_id=session_id, performers=list(performers), started_ts_us=NOW + started
    )


def test_a_scene_starts_on_the_day_and_ends_once() -> None:
    day = _day()
    started = casting.with_scene(day, _scene("s-1", "ana-ruiz", "ben"), stamp_us=0)
    assert started.ts_us == day.ts_us + 1  # ordered after the version it replaces
    assert casting.scene_of(started, "ben") == started.scenes[0]
    assert casting.running_scenes(started) == started.scenes
    with pytest.raises(casting.CastingError) as busy:
        casting.with_scene(started, _scene("s-2", "ben"), stamp_us=0)
    assert busy.value.code == "not_waiting"
    with pytest.raises(casting.CastingError) as stranger:
        casting.with_scene(started, _scene("s-2", "zoe"), stamp_us=0)
    assert stranger.value.code == "unknown_performer"

    ended = casting.with_scenes_ended(started, {"s-1": NOW + 99}, stamp_us=0)
    assert ended is not None
    assert ended.scenes[0].ended_ts_us == NOW + 99
    assert casting.scene_of(ended, "ben") is None
    assert casting.with_scenes_ended(ended, {"s-1": NOW + 500}, stamp_us=0) is None
    with pytest.raises(casting.CastingError) as closed:
        casting.with_scene(casting.closed(ended, stamp_us=0), _scene("s-3", "ben"), stamp_us=0)
    assert closed.value.code == "day_closed"


def test_a_day_is_refused_with_duplicate_performers_or_a_bad_id() -> None:
    with pytest.raises(ValueError, match="roster performer_id"):
        casting.new_day(title="t", performer_names=["Ben", "ben"], vocabulary=[])
    with pytest.raises(ValueError, match="invalid session id"):
        casting.new_day(title="t", performer_names=["Ben"], vocabulary=[], day_id="Day One")
    assert casting.new_day_id().startswith("day-")


def test_partner_counts() -> None:
    counts = casting.partner_counts(
        [_scene("a", "ana", "ben"), _scene("b", "ben", "ana", "cleo"), _scene("c", "dan")]
    )
    assert counts == {
        frozenset({"ana", "ben"}): 2,
        frozenset({"ana", "cleo"}): 1,
        frozenset({"ben", "cleo"}): 1,
    }
