"""The casting day's matcher (dashboard.matching): longest waiting first, new partners
before repeats, the scenario the group lacks most; deterministic and explained."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from dashboard.matching import DayHistory, Proposal, Waiting, need, propose
from streams import records
from tests.samples import SCENARIO

NOW = 10_000_000_000
PEOPLE = [f"p{i}" for i in range(8)]


def _scene(number: int, *performers: str, scenario_id: str | None = None) -> records.SceneRef:
    return records.SceneRef(
        session_id=f"scene-{number}",
        performers=list(performers),
        scenario_id=scenario_id,
        started_ts_us=NOW - 1_000_000_000 + number,
        ended_ts_us=NOW - 500_000_000 + number,
    )


def _scenario(scenario_id: str, roles: int, targets: list[str]) -> records.Scenario:
    return records.Scenario(
        scenario_id=scenario_id,
        title=scenario_id,
        prompt=f"prompt of {scenario_id}",
        roles=[
            records.ScenarioRole(name=f"role {i}", targets=targets[i : i + 1]) for i in range(roles)
        ],
        targets=targets,
    )


def test_longest_waiting_anchors_and_a_new_partner_is_chosen_over_a_longer_waiting_repeat() -> None:
    waiting = [
        Waiting("cleo", NOW - 60_000_000),
        Waiting("ana", NOW - 300_000_000),  # longest
        Waiting("ben", NOW - 200_000_000),
        Waiting("dan", NOW - 10_000_000),
    ]
    scenes = [_scene(1, "ana", "ben")]
    proposals = propose(waiting, scenes=scenes, now_us=NOW)
    assert [p.performers for p in proposals] == [["ana", "cleo"], ["ben", "dan"]]
    first = proposals[0]
    assert first.reasons[0] == "ana has waited longest (5 min 00 s)"
    assert first.reasons[1] == "cleo has not played with ana yet"
    assert first.repeats == 0
    assert first.scenario_id is None
    assert "no scenario in the library" in first.reasons[-1]


def test_a_repeat_is_proposed_only_when_everyone_free_is_one_and_says_so() -> None:
    waiting = [Waiting("ana", NOW - 3), Waiting("ben", NOW - 2), Waiting("cleo", NOW - 1)]
    scenes = [_scene(1, "ana", "ben"), _scene(2, "ana", "cleo"), _scene(3, "ana", "ben")]
    [proposal] = propose(waiting, scenes=scenes, now_us=NOW)
    # Both played with ana; cleo once, ben twice: the fewer repeats win.
    assert proposal.performers == ["ana", "cleo"]
    assert proposal.repeats == 1
    assert "cleo played with ana 1x before: everyone else waiting has too" in proposal.reasons


def test_the_scenario_the_group_lacks_most_is_chosen_and_roles_go_to_who_lacks_them() -> None:
    laughing = _scenario("laughing", 2, ["laughter", "amusement"])
    sad = _scenario("sad", 2, ["sadness", "hesitation"])
    agreed = {
        "ana": {"laughter": 120.0, "amusement": 90.0},
        "ben": {"laughter": 60.0, "sadness": 40.0},
    }
    [proposal] = propose(
        [Waiting("ana", NOW - 2), Waiting("ben", NOW - 1)],
        scenarios=[laughing, sad],
        agreed=agreed,
        now_us=NOW,
    )
    assert proposal.scenario_id == "sad"
    # ana (the anchor) has no sadness yet: the part that targets it is hers.
    assert proposal.roles == {"ana": "role 0", "ben": "role 1"}
    assert proposal.reasons[-1].startswith("scenario sad: targets what the group lacks most:")
    assert "hesitation (agreed: ana 0 s, ben 0 s)" in proposal.reasons[-1]
    assert proposal.need > 0


def test_a_scenario_is_not_favoured_for_the_number_of_its_targets() -> None:
    many = ["laughter", "amusement", "sadness", "anger", "pride", "relief"]
    broad = _scenario("broad", 2, many)
    narrow = _scenario("narrow", 2, ["hesitation", "embarrassment"])
    # Both have shown each of the broad one's six targets for 10 s (half covered), and
    # nobody has shown either of the narrow one's two: summed, broad would win (6 > 4).
    agreed = {p: dict.fromkeys(many, 10.0) for p in ("ana", "ben")}
    [proposal] = propose(
        [Waiting("ana", NOW - 2), Waiting("ben", NOW - 1)],
        scenarios=[broad, narrow],
        agreed=agreed,
        now_us=NOW,
    )
    assert proposal.scenario_id == "narrow"
    assert proposal.need == 1.0


def test_among_equally_needed_scenarios_the_least_played_one_wins() -> None:
    first = _scenario("a-first", 2, ["laughter"])
    second = _scenario("b-second", 2, ["laughter"])
    scenes = [_scene(1, "ana", "cleo", scenario_id="a-first")]
    [proposal] = propose(
        [Waiting("ana", NOW - 2), Waiting("ben", NOW - 1)],
        scenes=scenes,
        scenarios=[first, second],
        now_us=NOW,
    )
    assert proposal.scenario_id == "b-second"


def test_a_scenario_with_three_roles_makes_a_group_of_three_when_none_has_two() -> None:
    trio = _scenario("trio", 3, ["laughter", "sadness", "hesitation"])
    waiting = [Waiting(p, NOW - 10 + i) for i, p in enumerate(["ana", "ben", "cleo", "dan"])]
    proposals = propose(waiting, scenarios=[trio], now_us=NOW)
    assert [p.performers for p in proposals] == [["ana", "ben", "cleo"]]
    assert set(proposals[0].roles.values()) == {"role 0", "role 1", "role 2"}


def test_a_scenario_with_fewer_roles_than_the_group_is_never_proposed() -> None:
    [proposal] = propose(
        [Waiting("ana", NOW - 3), Waiting("ben", NOW - 2), Waiting("cleo", NOW - 1)],
        scenarios=[SCENARIO],
        group_size=3,
        now_us=NOW,
    )
    assert proposal.scenario_id is None
    assert "no scenario has roles for 3" in proposal.reasons[-1]


def test_nobody_to_pair_with_gives_no_proposal() -> None:
    assert propose([Waiting("ana", NOW)], now_us=NOW) == []
    assert propose([], now_us=NOW) == []


def test_need_falls_as_agreed_seconds_grow() -> None:
    assert need(0) == 1.0
    assert need(10) == 0.5
    assert need(5) > need(10) > need(100) > 0


# ---------------------------------------------------------------- properties


@st.composite
def _day(draw: st.DrawFn) -> tuple[list[Waiting], list[records.SceneRef], int | None]:
    people = draw(st.lists(st.sampled_from(PEOPLE), min_size=0, max_size=8, unique=True))
    waits = draw(
        st.lists(
            st.integers(min_value=0, max_value=10_000), min_size=len(people), max_size=len(people)
        )
    )
    waiting = [Waiting(p, NOW - w * 1_000_000) for p, w in zip(people, waits, strict=True)]
    pairs = draw(
        st.lists(
            st.lists(st.sampled_from(PEOPLE), min_size=2, max_size=3, unique=True), max_size=12
        )
    )
    scenes = [_scene(i, *group) for i, group in enumerate(pairs)]
    size = draw(st.one_of(st.none(), st.integers(min_value=2, max_value=3)))
    return waiting, scenes, size


def _free_when_picked(
    waiting: list[Waiting], proposals: list[Proposal], index: int, member: int
) -> set[str]:
    """Who was still free when member ``member`` of proposal ``index`` was picked."""
    taken = {p for proposal in proposals[:index] for p in proposal.performers}
    taken |= set(proposals[index].performers[:member])
    return {w.performer_id for w in waiting} - taken


@settings(max_examples=300, deadline=None)
@given(_day())
def test_no_repeat_partner_while_a_new_one_is_available(
    day: tuple[list[Waiting], list[records.SceneRef], int | None],
) -> None:
    waiting, scenes, size = day
    history = DayHistory.of(scenes)
    proposals = propose(waiting, scenes=scenes, now_us=NOW, group_size=size)
    for index, proposal in enumerate(proposals):
        for member in range(1, len(proposal.performers)):
            group = proposal.performers[:member]
            chosen = proposal.performers[member]
            if history.with_group(chosen, group) == 0:
                continue
            # A repeat: nobody free at that moment was new to the group.
            free = _free_when_picked(waiting, proposals, index, member)
            assert all(history.with_group(other, group) > 0 for other in free)


@settings(max_examples=300, deadline=None)
@given(_day())
def test_the_longest_waiting_is_always_in_the_first_proposal(
    day: tuple[list[Waiting], list[records.SceneRef], int | None],
) -> None:
    waiting, scenes, size = day
    proposals = propose(waiting, scenes=scenes, now_us=NOW, group_size=size)
    if len(waiting) < (size or 2):
        assert proposals == []
        return
    longest = min(waiting, key=lambda w: (w.since_us, w.performer_id))
    assert proposals[0].performers[0] == longest.performer_id
    # Each group is anchored by the longest waiting of those still free.
    for index, proposal in enumerate(proposals):
        free = _free_when_picked(waiting, proposals, index, 0)
        anchor = min(
            (w for w in waiting if w.performer_id in free),
            key=lambda w: (w.since_us, w.performer_id),
        )
        assert proposal.performers[0] == anchor.performer_id


@settings(max_examples=200, deadline=None)
@given(_day())
def test_proposals_are_disjoint_deterministic_and_explained(
    day: tuple[list[Waiting], list[records.SceneRef], int | None],
) -> None:
    waiting, scenes, size = day
    proposals = propose(waiting, scenes=scenes, now_us=NOW, group_size=size)
    again = propose(list(reversed(waiting)), scenes=scenes, now_us=NOW, group_size=size)
    assert [p.describe() for p in proposals] == [p.describe() for p in again]
    everyone = list(itertools.chain.from_iterable(p.performers for p in proposals))
    assert len(everyone) == len(set(everyone))
    assert all(len(p.reasons) == len(p.performers) + 1 for p in proposals)
