"""The one rule of what a session's tags cover (streams.labels.tag_rules)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams import records
from streams.labels.tag_rules import (
    TagInterval,
    TagSet,
    hold_end,
    offset_applies,
    point_interval,
    tag_interval,
    tag_intervals,
    undo_applies,
)
from tests.tag_cases import (
    CASES,
    MAX_HOLD_US,
    Case,
    S,
    covers,
    offset,
    onset,
    point,
    tag,
    tag_sets,
    undo,
)


def test_a_point_is_centred_on_its_press_at_least_1_us_at_most_the_limit() -> None:
    assert point_interval(10 * S, S // 2, 30 * S) == (9_750_000, 10_250_000)
    assert point_interval(10 * S, 3, 30 * S) == (10 * S - 1, 10 * S + 2)  # odd: 1 before
    assert point_interval(10 * S, 0, 30 * S) == (10 * S, 10 * S + 1)
    assert point_interval(60 * S, 60 * S, 30 * S) == (45 * S, 75 * S)
    assert point_interval(S // 10, S // 2, 30 * S) == (0, S // 2)  # moved, not cut


def test_a_hold_ends_at_its_offset_kept_between_1_us_and_the_limit() -> None:
    assert hold_end(S, 2 * S, 30 * S) == (2 * S, False)
    assert hold_end(S, 41 * S, 30 * S) == (31 * S, False)
    assert hold_end(S, S, 30 * S) == (S + 1, False)
    assert hold_end(S, S - 5, 30 * S) == (S + 1, False)
    assert hold_end(S, None, 30 * S) == (31 * S, True)


def test_only_the_owner_ends_or_undoes_a_tag() -> None:
    down = onset("hold-on1", S)
    assert offset_applies(down, offset("hold-off1", 2 * S, "hold-on1"))
    assert not offset_applies(down, offset("hold-off1", 2 * S, "hold-on1", rater="olga"))
    assert not offset_applies(down, offset("hold-off1", 2 * S, "hold-on1", performer="bob"))
    assert not offset_applies(down, offset("hold-off1", 2 * S, "hold-on9"))
    tap = point("point-01", S)
    assert not offset_applies(tap, offset("hold-off1", 2 * S, "point-01"))
    assert undo_applies(undo("undo-001", 2 * S, "point-01"), "dora", "alice")
    assert not undo_applies(undo("undo-001", 2 * S, "point-01", rater="olga"), "dora", "alice")
    assert not undo_applies(undo("undo-001", 2 * S, "point-01", performer="bob"), "dora", "alice")
    assert not undo_applies(tap, "dora", "alice")


def test_an_interval_carries_the_tag_it_came_from() -> None:
    down = tag("hold-on1", "onset", S, rater="olga", label="anger", intensity="strong")
    up = offset("hold-off1", 2 * S, "hold-on1", rater="olga")
    assert tag_interval(down, [up], {}, max_hold_us=MAX_HOLD_US) == TagInterval(
        tag_id="hold-on1",
        performer_id="alice",
        rater_id="olga",
        rater_role="observer",
        label="anger",
        intensity="strong",
        kind="hold",
        start_us=S,
        end_us=2 * S,
        open=False,
        offset_tag_id="hold-off1",
    )
    # Offsets and undos are not marks of their own.
    assert tag_interval(up, [], {}, max_hold_us=MAX_HOLD_US) is None


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_each_case_has_one_answer_in_every_order(case: Case) -> None:
    for order in itertools.permutations(case.tags):
        assert covers(tag_intervals(order, max_hold_us=MAX_HOLD_US)) == case.covers, order
        # Taken one at a time, as a live consumer does, it comes to the same.
        known = TagSet(MAX_HOLD_US)
        marks = {known.add(t) for t in order} - {None}
        found = [known.interval(mark) for mark in marks if mark is not None]
        assert covers([i for i in found if i is not None]) == case.covers, order


def test_each_tag_names_the_one_mark_it_may_change() -> None:
    known = TagSet(MAX_HOLD_US)
    assert known.add(undo("undo-001", 3 * S, "hold-off1")) is None, "its offset is not known"
    assert known.add(offset("hold-off1", 2 * S, "hold-on1")) is None, "its onset is not known"
    assert known.add(onset("hold-on1", S)) == "hold-on1"
    assert known.interval("hold-on1") is None, "the undo that came first removes the hold"
    assert known.add(onset("hold-on1", S)) is None, "a re-delivered tag changes nothing"
    assert known.add(undo("undo-002", 4 * S, "undo-001")) is None, "an undo is no mark"
    assert known.add(offset("hold-off2", 2 * S, "point-01")) is None
    assert known.add(point("point-01", S)) == "point-01"
    assert known.add(undo("undo-003", 4 * S, "hold-off1")) == "hold-on1"
    assert len(known) == 7


def test_forgotten_tags_count_no_more() -> None:
    known = TagSet(MAX_HOLD_US)
    for t in (onset("hold-on1", S), offset("hold-off1", 2 * S, "hold-on1")):
        known.add(t)
    known.add(undo("undo-001", 3 * S, "hold-on1"))
    assert known.interval("hold-on1") is None
    known.forget("undo-001")
    known.forget("hold-off1")
    interval = known.interval("hold-on1")
    assert interval is not None
    assert (interval.end_us, interval.open) == (31 * S, True)
    assert "hold-off1" not in known
    assert len(known) == 1
    known.forget("nothing1")  # forgetting what is not known is nothing


@settings(max_examples=300, deadline=None)
@given(tags=tag_sets(horizon_us=40 * S, max_span_us=70 * S), data=st.data())
def test_what_tags_cover_does_not_depend_on_their_order(
    tags: list[records.TagEvent], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(tags))
    expected = tag_intervals(tags, max_hold_us=MAX_HOLD_US)
    assert tag_intervals(shuffled, max_hold_us=MAX_HOLD_US) == expected
    for interval in expected:
        assert interval.end_us > interval.start_us >= 0
        assert interval.end_us - interval.start_us <= MAX_HOLD_US
