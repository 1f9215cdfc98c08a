"""The casting day's matcher: who plays the next scenes together, in which scenario.

Pure (no I/O, no clock but the ``now_us`` it is given): the casting page
(dashboard.casting) gives it who waits and since when, the day's scenes, the scenario
library and each performer's agreed seconds per emotion across the day (livetag.coverage),
and shows its proposals, each with its reasons, for the director to approve.

The rules, in order:

1. **Longest waiting first.** Groups are formed in waiting order: the performer who has
   waited longest anchors the first group, and is always in a proposal.
2. **New partners before repeats.** A group's next member is the waiting performer who
   has played with the group least often; a repeat partner is only chosen when every
   performer still free has played with the group before. Among equals, the one who has
   waited longest.
3. **The scenario the group lacks most.** A group of two is proposed by default; a
   scenario with k roles makes a group of k (a group is never proposed bigger than
   there are performers waiting). Of the scenarios that fit the group (at least as many
   roles as performers), the one whose target emotions the group has shown least (agreed
   seconds across the day, :func:`need`, averaged over its targets and the group: a
   scenario of many targets is not favoured for their number) is proposed; among equals
   the one its members played least, then by id. Roles go to whoever lacks their targets
   most.

Deterministic: the same inputs give the same proposals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from streams import records
from streams.kafka.casting import partner_counts

DEFAULT_GROUP_SIZE = 2
#: Agreed seconds at which an emotion counts as half covered for a performer: need falls
#: from 1 (never shown) towards 0 as agreed seconds grow.
HALF_COVERED_S = 10.0


@dataclass(frozen=True)
class Waiting:
    """A performer waiting in the lobby, since ``since_us`` (session clock)."""

    performer_id: str
    since_us: int


@dataclass(frozen=True)
class Proposal:
    """A proposed scene: its performers (the anchor first), scenario and roles, and why."""

    performers: list[str]
    scenario_id: str | None
    roles: dict[str, str]
    reasons: list[str]
    repeats: int = 0  # pairs in the group that played together before
    need: float = 0.0  # the group's mean need (0-1) of the scenario's targets

    def describe(self) -> dict[str, Any]:
        return {
            "performers": list(self.performers),
            "scenario_id": self.scenario_id,
            "roles": dict(self.roles),
            "reasons": list(self.reasons),
            "repeats": self.repeats,
            "need": round(self.need, 3),
        }


@dataclass
class DayHistory:
    """What the day so far says about who played with whom, and which scenario."""

    partners: dict[frozenset[str], int] = field(default_factory=dict)
    scenarios_played: dict[str, dict[str, int]] = field(default_factory=dict)

    @classmethod
    def of(cls, scenes: Sequence[records.SceneRef]) -> DayHistory:
        history = cls(partners=partner_counts(scenes))
        for scene in scenes:
            if scene.scenario_id is not None:
                for performer in set(scene.performers):
                    played = history.scenarios_played.setdefault(performer, {})
                    played[scene.scenario_id] = played.get(scene.scenario_id, 0) + 1
        return history

    def together(self, first: str, second: str) -> int:
        return self.partners.get(frozenset((first, second)), 0)

    def with_group(self, performer: str, group: Sequence[str]) -> int:
        return sum(self.together(performer, member) for member in group)

    def plays_of(self, scenario_id: str, group: Sequence[str]) -> int:
        return sum(self.scenarios_played.get(p, {}).get(scenario_id, 0) for p in group)


def need(agreed_s: float) -> float:
    """How much a performer still needs an emotion they have shown for ``agreed_s``
    seconds (observers agreeing): 1 when never, 0.5 at HALF_COVERED_S, towards 0 after."""
    return 1.0 / (1.0 + max(0.0, agreed_s) / HALF_COVERED_S)


def _wait_text(waited_us: int) -> str:
    seconds = max(0, waited_us) // 1_000_000
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def propose(
    waiting: Sequence[Waiting],
    *,
    scenes: Sequence[records.SceneRef] = (),
    scenarios: Sequence[records.Scenario] = (),
    agreed: Mapping[str, Mapping[str, float]] | None = None,
    now_us: int,
    group_size: int | None = None,
    limit: int | None = None,
) -> list[Proposal]:
    """Groups for the waiting performers, in the order they should play (see the module
    doc). ``group_size``: every group this big (default: two, or the roles of the
    scenario chosen); ``limit``: at most this many proposals."""
    agreed = agreed or {}
    history = DayHistory.of(scenes)
    free = sorted(waiting, key=lambda w: (w.since_us, w.performer_id))
    proposals: list[Proposal] = []
    while free and (limit is None or len(proposals) < limit):
        size = _group_size(group_size, scenarios, len(free))
        if size > len(free) or size < 1:
            break
        anchor, rest = free[0], free[1:]
        group = [anchor]
        reasons = [
            f"{anchor.performer_id} has waited longest ({_wait_text(now_us - anchor.since_us)})"
        ]
        while len(group) < size:
            members = [w.performer_id for w in group]
            # Who has played least with the group, then the longest waiting.
            pick = min(
                rest,
                key=lambda w: (history.with_group(w.performer_id, members), w.since_us),
            )
            times = history.with_group(pick.performer_id, members)
            if times == 0:
                reasons.append(f"{pick.performer_id} has not played with {', '.join(members)} yet")
            else:
                reasons.append(
                    f"{pick.performer_id} played with {', '.join(members)} {times}x before: "
                    "everyone else waiting has too"
                )
            group.append(pick)
            rest = [w for w in rest if w is not pick]
        members = [w.performer_id for w in group]
        scenario, roles, score, scenario_reason = _choose_scenario(
            members, scenarios, agreed, history
        )
        reasons.append(scenario_reason)
        repeats = sum(
            1
            for i, first in enumerate(members)
            for second in members[i + 1 :]
            if history.together(first, second)
        )
        proposals.append(
            Proposal(
                performers=members,
                scenario_id=None if scenario is None else scenario.scenario_id,
                roles=roles,
                reasons=reasons,
                repeats=repeats,
                need=score,
            )
        )
        free = rest
    return proposals


def _group_size(asked: int | None, scenarios: Sequence[records.Scenario], available: int) -> int:
    if asked is not None:
        return asked
    # A group of two, unless no scenario has two roles and one fits the waiting (a
    # scenario with k roles makes a group of k).
    sizes = sorted({len(s.roles) for s in scenarios if len(s.roles) <= available})
    if not scenarios or DEFAULT_GROUP_SIZE in sizes or not sizes:
        return DEFAULT_GROUP_SIZE
    return sizes[0]


def _targets(scenario: records.Scenario) -> set[str]:
    return scenario.labels()


def _lack(agreed: Mapping[str, Mapping[str, float]], performer: str, label: str) -> float:
    return need(float(agreed.get(performer, {}).get(label, 0.0)))


def _choose_scenario(
    members: list[str],
    scenarios: Sequence[records.Scenario],
    agreed: Mapping[str, Mapping[str, float]],
    history: DayHistory,
) -> tuple[records.Scenario | None, dict[str, str], float, str]:
    fitting = [s for s in scenarios if len(s.roles) >= len(members)]
    if not fitting:
        why = (
            "no scenario in the library"
            if not scenarios
            else f"no scenario has roles for {len(members)}"
        )
        return None, {}, 0.0, f"{why}: the director gives a prompt"

    def score(scenario: records.Scenario) -> float:
        # A mean, not a sum: two targets nobody has shown outweigh five half-shown ones.
        targets = _targets(scenario)
        if not targets:
            return 0.0
        total = sum(_lack(agreed, p, label) for p in members for label in targets)
        return total / (len(targets) * len(members))

    best = min(
        fitting,
        key=lambda s: (
            -round(score(s), 9),
            history.plays_of(s.scenario_id, members),
            s.scenario_id,
        ),
    )
    roles = _assign_roles(members, best, agreed)
    lacking = sorted(
        _targets(best),
        key=lambda label: (-sum(_lack(agreed, p, label) for p in members), label),
    )
    shown = ", ".join(f"{label} ({_agreed_text(agreed, members, label)})" for label in lacking[:3])
    text = f"scenario {best.scenario_id}: " + (
        f"targets what the group lacks most: {shown}" if lacking else "it has no targets"
    )
    return best, roles, score(best), text


def _agreed_text(agreed: Mapping[str, Mapping[str, float]], members: list[str], label: str) -> str:
    parts = [f"{p} {math.floor(float(agreed.get(p, {}).get(label, 0.0)))} s" for p in members]
    return "agreed: " + ", ".join(parts)


def _assign_roles(
    members: list[str], scenario: records.Scenario, agreed: Mapping[str, Mapping[str, float]]
) -> dict[str, str]:
    """Each member, in group order, the free role whose targets they lack most (ties: the
    scenario's order)."""
    free = list(scenario.roles)
    roles: dict[str, str] = {}
    for performer in members:
        role = min(
            enumerate(free),
            key=lambda item: (
                -sum(_lack(agreed, performer, label) for label in item[1].targets),
                item[0],
            ),
        )[1]
        roles[performer] = role.name
        free.remove(role)
    return roles
