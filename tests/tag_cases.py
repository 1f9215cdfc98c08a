"""Tags whose coverage the aligner, the exporter and the dashboard once each decided on
their own, and disagreed about: each case with its one right answer (streams.labels.tag_rules).

Times are in seconds on the session clock; the limit on a hold is 30 s. Every case holds
in every arrival order of its tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from streams import records
from streams.labels import tag_rules

SID = "s-1"
S = 1_000_000  # µs per second
MAX_HOLD_US = 30 * S


def tag(
    tag_id: str,
    action: str,
    ts_us: int,
    *,
    rater: str = "dora",
    performer: str = "alice",
    label: str = "laughter",
    intensity: str = "normal",
    span_us: int | None = None,
    onset: str | None = None,
    undoes: str | None = None,
    session: str = SID,
) -> records.TagEvent:
    return records.TagEvent.model_validate(
        {
            "ts_us": ts_us,
            "session_id": session,
            "performer_id": performer,
            "tag_id": tag_id,
            "rater_id": rater,
            "rater_role": "director" if rater == "dora" else "observer",
            "action": action,
            "label": None if action == "undo" else label,
            "intensity": intensity,
            "span_us": span_us,
            "onset_tag_id": onset,
            "undoes_tag_id": undoes,
            "timing": {
                "client_press_ts_us": ts_us,
                "clock_offset_us": 0,
                "rtt_us": 1_000,
                "clock_uncertainty_us": 500,
            },
            "received_ts_us": ts_us,
        }
    )


def point(tag_id: str, ts_us: int, span_us: int = S // 2, **fields: Any) -> records.TagEvent:
    return tag(tag_id, "point", ts_us, span_us=span_us, **fields)


def onset(tag_id: str, ts_us: int, **fields: Any) -> records.TagEvent:
    return tag(tag_id, "onset", ts_us, **fields)


def offset(tag_id: str, ts_us: int, of: str, **fields: Any) -> records.TagEvent:
    return tag(tag_id, "offset", ts_us, onset=of, **fields)


def undo(tag_id: str, ts_us: int, of: str, **fields: Any) -> records.TagEvent:
    return tag(tag_id, "undo", ts_us, undoes=of, **fields)


@dataclass(frozen=True)
class Case:
    name: str
    tags: tuple[records.TagEvent, ...]
    # (tag_id, start_us, end_us, open) of every point and hold that covers something
    covers: tuple[tuple[str, int, int, bool], ...]


def covers(intervals: list[tag_rules.TagInterval]) -> tuple[tuple[str, int, int, bool], ...]:
    return tuple(sorted((i.tag_id, i.start_us, i.end_us, i.open) for i in intervals))


_IDS = [f"tag-{n:04d}" for n in range(12)]


@st.composite
def tag_sets(draw: st.DrawFn, *, horizon_us: int, max_span_us: int) -> list[records.TagEvent]:
    """Tags of two raters on two performers that name each other at random: points and
    onsets, offsets naming any tag, undos naming any tag (undos too), and re-delivered
    copies; pressed within ``[0, horizon_us]``."""
    count = draw(st.integers(min_value=1, max_value=len(_IDS)))
    out = []
    for tag_id in _IDS[:count]:
        action = draw(st.sampled_from(["point", "onset", "offset", "undo"]))
        rater = draw(st.sampled_from(["dora", "olga"]))
        performer = draw(st.sampled_from(["alice", "bob"]))
        ts = draw(st.integers(min_value=0, max_value=horizon_us))
        span = draw(st.integers(0, max_span_us)) if action == "point" else None
        named = draw(st.sampled_from(_IDS))
        out.append(
            tag(
                tag_id,
                action,
                ts,
                rater=rater,
                performer=performer,
                span_us=span,
                onset=named if action == "offset" else None,
                undoes=named if action == "undo" else None,
            )
        )
    return out + draw(st.lists(st.sampled_from(out), max_size=3))


CASES = (
    Case(
        "a point covers its span centred on the press",
        (point("point-01", 10 * S),),
        (("point-01", 9_750_000, 10_250_000, False),),
    ),
    Case(
        # It was 30-90 s in the export and on the dashboard.
        "a point's span is capped at the limit on a hold",
        (point("point-01", 60 * S, span_us=60 * S),),
        (("point-01", 45 * S, 75 * S, False),),
    ),
    Case(
        # It was -0.15-0.35 s in the export and on the dashboard.
        "a point that would start before the session clock starts at 0",
        (point("point-01", S // 10, span_us=S // 2),),
        (("point-01", 0, S // 2, False),),
    ),
    Case(
        "a tap without a span still marks its instant",
        (point("point-01", 10 * S, span_us=0),),
        (("point-01", 10 * S, 10 * S + 1, False),),
    ),
    Case(
        "a hold runs from key-down to key-up",
        (onset("hold-on1", 1 * S), offset("hold-off1", 2 * S, "hold-on1")),
        (("hold-on1", 1 * S, 2 * S, False),),
    ),
    Case(
        # It was 1-41 s in the export and on the dashboard.
        "a hold ends at most the limit after its onset",
        (onset("hold-on1", 1 * S), offset("hold-off1", 41 * S, "hold-on1")),
        (("hold-on1", 1 * S, 31 * S, False),),
    ),
    Case(
        # It was 1-5 s in the export of a session that ended at 5 s, and on the dashboard
        # it grew forever.
        "a hold whose key-up never came runs the limit",
        (onset("hold-on1", 1 * S),),
        (("hold-on1", 1 * S, 31 * S, True),),
    ),
    Case(
        "an offset stamped before its onset marks the onset's instant",
        (onset("hold-on1", 1 * S), offset("hold-off1", 900_000, "hold-on1")),
        (("hold-on1", 1 * S, 1 * S + 1, False),),
    ),
    Case(
        # The export and the dashboard let it end the hold.
        "another rater's offset does not end a hold",
        (onset("hold-on1", 1 * S), offset("hold-off1", 2 * S, "hold-on1", rater="olga")),
        (("hold-on1", 1 * S, 31 * S, True),),
    ),
    Case(
        # The aligner kept the first to arrive, the export the earliest, the dashboard
        # the last to arrive.
        "of two offsets of the same rater the earlier ends the hold",
        (
            onset("hold-on1", 1 * S),
            offset("hold-off1", 2 * S, "hold-on1"),
            offset("hold-off2", 1_500_000, "hold-on1"),
        ),
        (("hold-on1", 1 * S, 1_500_000, False),),
    ),
    Case(
        "an undo removes a point",
        (point("point-01", 1 * S), undo("undo-001", 2 * S, "point-01")),
        (),
    ),
    Case(
        # The export and the dashboard let it remove the tag.
        "another rater's undo changes nothing",
        (point("point-01", 1 * S), undo("undo-001", 2 * S, "point-01", rater="olga")),
        (("point-01", 750_000, 1_250_000, False),),
    ),
    Case(
        "an undo sent on another performer changes nothing",
        (point("point-01", 1 * S), undo("undo-001", 2 * S, "point-01", performer="bob")),
        (("point-01", 750_000, 1_250_000, False),),
    ),
    Case(
        # The aligner took the foreign undo as the tag's withdrawal and then refused the
        # owner's.
        "a foreign undo ahead of the owner's does not shadow it",
        (
            undo("undo-009", 2 * S, "point-01", rater="olga"),
            undo("undo-001", 2 * S, "point-01"),
            point("point-01", 1 * S),
        ),
        (),
    ),
    Case(
        # The aligner reopened the hold until the limit when the undo overtook the offset.
        "undoing the key-up removes the whole hold",
        (
            onset("hold-on1", 1 * S),
            offset("hold-off1", 2 * S, "hold-on1"),
            undo("undo-001", 3 * S, "hold-off1"),
        ),
        (),
    ),
    Case(
        "undoing the key-down removes the whole hold",
        (
            onset("hold-on1", 1 * S),
            offset("hold-off1", 2 * S, "hold-on1"),
            undo("undo-001", 3 * S, "hold-on1"),
        ),
        (),
    ),
    Case(
        # The dashboard matched an undo only to the offset that had ended the hold.
        "undoing the offset that did not end the hold removes the whole hold",
        (
            onset("hold-on1", 1 * S),
            offset("hold-off1", 2 * S, "hold-on1"),
            offset("hold-off2", 3 * S, "hold-on1"),
            undo("undo-001", 4 * S, "hold-off2"),
        ),
        (),
    ),
    Case(
        "undoing another rater's offset changes nothing",
        (
            onset("hold-on1", 1 * S),
            offset("hold-off1", 2 * S, "hold-on1", rater="olga"),
            undo("undo-001", 3 * S, "hold-off1", rater="olga"),
        ),
        (("hold-on1", 1 * S, 31 * S, True),),
    ),
    Case(
        "an undo of an undo changes nothing: there is no redo",
        (
            point("point-01", 1 * S),
            undo("undo-001", 2 * S, "point-01"),
            undo("undo-002", 3 * S, "undo-001"),
        ),
        (),
    ),
    Case(
        "a re-delivered tag counts once",
        (point("point-01", 1 * S), point("point-01", 1 * S), undo("undo-001", 2 * S, "nothing1")),
        (("point-01", 750_000, 1_250_000, False),),
    ),
)
