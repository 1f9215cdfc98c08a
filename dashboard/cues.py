"""The director's live cues: a dashboard message becomes one ``cue`` record per performer.

The page sends ``{"type": "cue", "to": PERFORMER | "all", "kind": "emotion" | "text" |
"clear", "label": L, "intensity": "normal" | "strong", "text": T}`` (``request_id``, a
number or a short string, is echoed back). It is checked against the session as this
server knows it (the performer in the roster, the label in the vocabulary, the session not
over, the director's rate budget), stamped with the session clock, and published on
``livetag.cues`` keyed ``session/performer``: one record per performer, each with its own
``cue_id``; a cue to everyone shares one ``group_id``. The capture server shows each one
on its performer's page and publishes it again once shown (capture/cues.py).

The reply is ``{"type": "cue_sent", "cue_ids": {performer: cue_id}, "group_id": G,
"ts_us": T}`` once the broker has every record; a refusal is the dashboard's usual
``{"type": "error", "code": C, "message": M}``, counted in the server's refusals by code.
A cue to everyone whose records the broker took only in part is ``cue_sent`` with
``"partial": true`` and ``"failed": [performers]`` (``cue_ids`` names the ones it has):
sending it again to those performers alone duplicates nothing. None taken: the error
``unavailable``, naming the performers.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import statistics
from collections import Counter, deque
from typing import Any, get_args

from dashboard.server import ActionError, DashboardClient, DashboardServer, echoed_request_id
from streams import records
from streams.kafka import topics
from streams.kafka.sessions import is_over
from streams.session_clock import now_us
from taggers.protocol import RateLimiter

#: How long a cue may wait for the broker before the director hears it was not sent.
PUBLISH_TIMEOUT_S = 5.0
PUBLISH_DELAYS_KEPT = 1_000
#: How often the rate budgets of ended sessions and idle directors are dropped.
PRUNE_EVERY_US = 60 * 1_000_000
TO_ALL = "all"
_KINDS: tuple[str, ...] = get_args(records.CueKind)
_INTENSITIES: tuple[str, ...] = get_args(records.Intensity)


class CueRefused(ValueError):
    """A cue this server will not send; ``code`` is what the page is told."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


def new_cue_id() -> str:
    """A random url-safe id (16 characters, 96 bits): a ``cue_id`` or a ``group_id``."""
    return secrets.token_urlsafe(12)


def build_cues(
    message: dict[str, Any],
    session: records.SessionRecord,
    *,
    sent_by: str,
    ts_us: int,
    new_id: Any = new_cue_id,
) -> list[records.Cue]:
    """The records a director's cue message makes: one per performer it is for.

    Raises :class:`CueRefused` (``malformed``, ``session_ended``, ``unknown_performer``,
    ``unknown_label``, ``text_too_long``) with a message for the director."""
    to, kind = message.get("to"), message.get("kind")
    label, intensity = message.get("label"), message.get("intensity", "normal")
    text = message.get("text", "")
    if not isinstance(to, str) or not to:
        raise CueRefused("malformed", f'name who the cue is for: a performer or "{TO_ALL}"')
    if kind not in _KINDS:
        raise CueRefused("malformed", f"kind must be one of {', '.join(_KINDS)}")
    if intensity not in _INTENSITIES:
        raise CueRefused("malformed", f"intensity must be one of {', '.join(_INTENSITIES)}")
    if not isinstance(text, str):
        raise CueRefused("malformed", "text must be a string")
    if is_over(session):
        raise CueRefused("session_ended", f"the session is {session.state}: no more cues")
    roster = [performer.performer_id for performer in session.roster]
    if to == TO_ALL:
        targets = roster
    elif to in roster:
        targets = [to]
    else:
        raise CueRefused(
            "unknown_performer",
            f"{to!r} is not a performer of this scene (its performers: {', '.join(roster)})",
        )
    fields: dict[str, Any] = {"kind": kind}
    if kind == "emotion":
        known = [entry.label for entry in session.vocabulary]
        if label not in known:
            raise CueRefused(
                "unknown_label",
                f"{label!r} is not in the session's vocabulary (known: {', '.join(known)})",
            )
        fields.update(label=label, intensity=intensity)
    elif kind == "text":
        text = text.strip()
        if not text:
            raise CueRefused("malformed", "a text cue has a line of text")
        if len(text) > records.MAX_CUE_TEXT:
            raise CueRefused(
                "text_too_long",
                f"a cue's text is at most {records.MAX_CUE_TEXT} characters, not {len(text)}",
            )
        fields["text"] = text
    group_id = new_id() if len(targets) > 1 else None
    return [
        records.Cue(
            ts_us=ts_us,
            session_id=session.session_id,
            performer_id=performer_id,
            cue_id=new_id(),
            group_id=group_id,
            sent_by=sent_by,
            **fields,
        )
        for performer_id in targets
    ]


class CueDesk:
    """The ``cue`` action of a dashboard server: validates, rate-limits, publishes."""

    def __init__(self, server: DashboardServer) -> None:
        self.server = server
        rate = server.settings.cue_rate_per_s
        self._rate = rate
        self._burst = max(1, math.ceil(rate))  # a second's worth at once
        # Per (session, director): one director's burst never spends another's budget;
        # with when it was last used. A budget unused for as long as it takes to fill up
        # is the same as a new one: dropped, like those of sessions that are over.
        self._budgets: dict[tuple[str, str], tuple[RateLimiter, int]] = {}
        self._refill_us = int(self._burst / rate * 1_000_000) if rate > 0 else 0
        self._pruned_us = 0
        #: Cue records published since start (one per performer a cue was for).
        self.published = 0
        #: Cues the broker took in part (``partial``), and records it did not take
        #: (``records_failed``); never reset.
        self.counts: Counter[str] = Counter()
        # How long the broker took to have each recent cue's records, from its stamp (µs).
        self._publish_delays: deque[int] = deque(maxlen=PUBLISH_DELAYS_KEPT)

    async def handle(self, client: DashboardClient, message: dict[str, Any]) -> dict[str, Any]:
        session_id = client.feed.session_id
        director = client.claims.participant_id
        try:
            session = self.server.session(session_id)
            if session is None:
                raise CueRefused("unknown_session", "the session record is not known yet")
            stamp = now_us()
            cues = build_cues(message, session, sent_by=director, ts_us=stamp)
            self._prune(stamp)
            budget = self._budget(session_id, director, stamp)
            if not budget.allow(stamp):
                raise CueRefused(
                    "rate_limited",
                    f"at most {self._rate:g} cues a second: this one was not sent",
                )
            sent, failed = await self._publish(cues)
            if not sent:
                why = "; ".join(f"{who}: {reason}" for who, reason in failed.items())
                raise CueRefused("unavailable", f"the cue was not recorded ({why})")
            self._publish_delays.append(now_us() - stamp)
        except CueRefused as exc:
            # The dashboard counts its malformed messages itself.
            if exc.code != "malformed":
                self.server.refusals[exc.code] += 1
            raise ActionError(exc.code, exc.message) from None
        reply: dict[str, Any] = {
            "type": "cue_sent",
            "to": message["to"],
            "kind": cues[0].kind,
            "cue_ids": {cue.performer_id: cue.cue_id for cue in sent},
            "group_id": cues[0].group_id,
            "ts_us": stamp,
        }
        if failed:
            self.counts["partial"] += 1
            reply["partial"] = True
            reply["failed"] = list(failed)
        request_id = echoed_request_id(message)
        if request_id is not None:
            reply["request_id"] = request_id
        return reply

    def metrics(self) -> dict[str, Any]:
        """Cue records published, and how long the broker took to have the recent cues
        (ms from the stamp: the median and the longest of the last 1000)."""
        delays = [delay / 1000 for delay in self._publish_delays]
        return {
            **self.counts,
            "budgets": len(self._budgets),
            "published": self.published,
            "publish_ms_median": round(statistics.median(delays), 2) if delays else None,
            "publish_ms_max": round(max(delays), 2) if delays else None,
        }

    def _budget(self, session_id: str, director: str, stamp: int) -> RateLimiter:
        key = (session_id, director)
        kept = self._budgets.get(key)
        budget = kept[0] if kept is not None else RateLimiter(self._rate, self._burst)
        self._budgets[key] = (budget, stamp)
        return budget

    def _prune(self, stamp: int) -> None:
        """Drop the budgets of sessions that are over and of directors idle long enough
        for theirs to be full again (now and then: the scan is over every budget)."""
        if stamp - self._pruned_us < PRUNE_EVERY_US:
            return
        self._pruned_us = stamp
        for key, (_, used_us) in list(self._budgets.items()):
            session = self.server.session(key[0])
            if session is None or is_over(session) or stamp - used_us > self._refill_us:
                del self._budgets[key]

    async def _publish(self, cues: list[records.Cue]) -> tuple[list[records.Cue], dict[str, str]]:
        """The cues the broker has within PUBLISH_TIMEOUT_S, and why not for each of the
        other performers. Every send is awaited: a cue to everyone is never half-sent
        unknown to the director."""
        producer = self.server.producer
        deadline = asyncio.get_running_loop().time() + PUBLISH_TIMEOUT_S

        async def one(cue: records.Cue) -> None:
            wire = records.encode(cue)
            async with asyncio.timeout_at(deadline):
                delivery = await producer.send(
                    topics.CUES, wire.value, key=wire.key, headers=wire.headers
                )
                # Shielded: a delivery not confirmed in time may still land; the
                # producer keeps it (the director is told it is not confirmed).
                await asyncio.shield(delivery)

        # Every record handed to the producer at once: one batch, one wait.
        outcomes = await asyncio.gather(*(one(cue) for cue in cues), return_exceptions=True)
        sent: list[records.Cue] = []
        failed: dict[str, str] = {}
        for cue, outcome in zip(cues, outcomes, strict=True):
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, BaseException):
                why = (
                    "not confirmed in time" if isinstance(outcome, TimeoutError) else repr(outcome)
                )
                failed[cue.performer_id] = why
            else:
                sent.append(cue)
        self.published += len(sent)
        if failed:
            self.counts["records_failed"] += len(failed)
        return sent, failed


def register(server: DashboardServer) -> CueDesk:
    """Give ``server`` the ``cue`` action."""
    desk = CueDesk(server)
    server.director_actions["cue"] = desk.handle
    return desk
