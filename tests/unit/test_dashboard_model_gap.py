"""The dashboard's live model gap: where the human raters agreed, how the model rater read
it, per emotion, kept up to date window by window (and revision by revision)."""

from __future__ import annotations

from collections import Counter

import pytest

from dashboard.model_gap import LATEST_MOMENTS, ModelGap, humans_agreed
from streams.archive.model_gap import cohen_kappa
from tests.gap_windows import MODEL, WINDOW_US, window

T0 = 1_790_000_000_000_000
VOCABULARY = ["laughter", "anger", "fear"]


def at(k: int) -> int:
    return T0 + k * WINDOW_US


@pytest.mark.parametrize(
    ("held", "agreed"),
    [
        ({"a": "laughter", "b": "laughter"}, "laughter"),
        # Two of three: 0.6667, two thirds as the aligner rounds it.
        ({"a": "laughter", "b": "laughter", "c": "anger"}, "laughter"),
        # Two of four hold it, two hold other labels: 0.5.
        ({"a": "fear", "b": "fear", "c": "anger", "d": "laughter"}, None),
        # One rater alone scores 1.0 on consensus_agreement, but no one agreed with them.
        ({"a": "laughter"}, None),
        # A tie has no consensus.
        ({"a": "laughter", "b": "anger"}, None),
        ({}, None),
    ],
)
def test_humans_agreed(held: dict[str, str], agreed: str | None) -> None:
    assert humans_agreed(window("s-1", "ana", T0, held)) == agreed


def test_counts_per_emotion_where_the_humans_agreed() -> None:
    gap = ModelGap(VOCABULARY)
    both = {"a": "laughter", "b": "laughter"}
    gap.add(window("s-1", "ana", at(0), both, "laughter"))  # read as the humans did
    gap.add(window("s-1", "ana", at(1), both, "laughter"))
    gap.add(window("s-1", "ana", at(2), both, "anger"))  # missed
    gap.add(window("s-1", "ana", at(3), both, None))  # the model read nothing
    gap.add(window("s-1", "ana", at(4), both, with_model=False))  # no model reading
    gap.add(window("s-1", "ana", at(5), {"a": "anger", "b": "anger"}, "laughter"))
    gap.add(window("s-1", "ana", at(6), {"a": "laughter"}, "anger"))  # one rater: not counted
    summary = gap.summary()
    assert (summary["threshold"], summary["min_raters"]) == (2 / 3, 2)
    assert summary["agreed"] == {"laughter": 5, "anger": 1, "fear": 0}
    model = summary["models"][MODEL]
    assert (model["read"], model["agree"], model["share"]) == (4, 2, 0.5)
    laughter = model["labels"]["laughter"]
    assert {k: v for k, v in laughter.items() if k != "latest"} == {
        "read": 3,
        "agree": 2,
        "share": 0.667,
        "missed": 1,
        "said_elsewhere": 1,  # the anger window
    }
    assert laughter["latest"] == [
        {
            "performer_id": "ana",
            "start_us": at(2),
            "end_us": at(3),
            "windows": 1,
            "model_label": "anger",
        }
    ]
    anger = model["labels"]["anger"]
    assert (anger["read"], anger["agree"], anger["missed"], anger["said_elsewhere"]) == (1, 0, 1, 1)
    assert model["labels"]["fear"]["share"] is None


def test_a_revision_replaces_what_its_window_counted() -> None:
    gap = ModelGap(VOCABULARY)
    both = {"a": "laughter", "b": "laughter"}
    gap.add(window("s-1", "ana", at(0), both, "anger"))
    assert gap.summary()["models"][MODEL]["labels"]["laughter"]["missed"] == 1
    version = gap.version
    gap.add(window("s-1", "ana", at(0), both, "anger"))  # re-delivered: nothing changes
    assert gap.version == version
    gap.add(window("s-1", "ana", at(0), both, "laughter", revision=1))  # a later reading
    laughter = gap.summary()["models"][MODEL]["labels"]["laughter"]
    assert (laughter["read"], laughter["agree"], laughter["latest"]) == (1, 1, [])
    # A late tag breaks the agreement: the window no longer counts at all.
    split = {"a": "laughter", "b": "anger"}
    gap.add(window("s-1", "ana", at(0), split, "laughter", revision=2))
    summary = gap.summary()
    assert summary["agreed"]["laughter"] == 0
    assert summary["models"][MODEL]["read"] == 0


def test_missed_moments_are_runs_of_adjacent_windows_newest_first() -> None:
    gap = ModelGap(VOCABULARY)
    both = {"a": "laughter", "b": "laughter"}
    for k in range(3):  # ana 0-2: read as fear, fear, anger
        gap.add(window("s-1", "ana", at(k), both, "fear" if k < 2 else "anger"))
    gap.add(window("s-1", "ana", at(3), both, "laughter"))  # a hit ends the run
    gap.add(window("s-1", "ana", at(4), both, "anger"))
    gap.add(window("s-1", "bob", at(4), both, "anger"))  # bob, at the same time: his own
    gap.add(window("s-1", "bob", at(5), both, "anger"))
    latest = gap.summary()["models"][MODEL]["labels"]["laughter"]["latest"]
    assert [(m["performer_id"], m["start_us"], m["end_us"], m["windows"]) for m in latest] == [
        ("bob", at(4), at(6), 2),
        ("ana", at(4), at(5), 1),
        ("ana", at(0), at(3), 3),
    ]
    assert [m["model_label"] for m in latest] == ["anger", "anger", "fear"]


def test_only_the_latest_moments_are_listed() -> None:
    gap = ModelGap(VOCABULARY)
    both = {"a": "fear", "b": "fear"}
    for k in range(0, 4 * LATEST_MOMENTS, 2):  # a moment every other window
        gap.add(window("s-1", "ana", at(k), both, "anger"))
    latest = gap.summary()["models"][MODEL]["labels"]["fear"]["latest"]
    assert len(latest) == LATEST_MOMENTS
    assert latest[0]["start_us"] == at(4 * LATEST_MOMENTS - 2)
    assert [m["start_us"] for m in latest] == sorted((m["start_us"] for m in latest), reverse=True)


def test_a_label_outside_the_vocabulary_and_a_second_model_are_kept_apart() -> None:
    gap = ModelGap(VOCABULARY)
    both = {"a": "joy", "b": "joy"}
    gap.add(window("s-1", "ana", at(0), both, "joy"))
    gap.add(window("s-1", "ana", at(0), both, "anger", model="other-model", revision=1))
    summary = gap.summary()
    assert list(summary["agreed"]) == [*VOCABULARY, "joy"]
    # The revision carries only the second model's reading: the first has none there now.
    assert summary["models"][MODEL]["read"] == 0
    assert summary["models"]["other-model"]["labels"]["joy"]["missed"] == 1


def test_the_model_kappa_is_over_the_agreed_windows() -> None:
    gap = ModelGap(VOCABULARY)
    both = {"a": "laughter", "b": "laughter"}
    angry = {"a": "anger", "b": "anger"}
    for k in range(4):
        gap.add(window("s-1", "ana", at(k), both, "laughter"))
        gap.add(window("s-1", "ana", at(10 + k), angry, "anger" if k < 2 else "laughter"))
    # 6 of 8 agree; chance: (4*6 + 4*2) / 64 = 0.5: kappa (0.75 - 0.5) / 0.5
    assert gap.summary()["models"][MODEL]["kappa"] == 0.5
    # The archive's helper, on the same counts: one measure.
    table = Counter({("laughter", "laughter"): 4, ("anger", "anger"): 2, ("anger", "laughter"): 2})
    assert cohen_kappa(table) == 0.5


def test_a_neutral_reading_is_a_miss_not_an_unread_window() -> None:
    """The model read the face and its neutral class outweighed every label: where the
    humans agreed on one, that is the commonest way such a model is wrong."""
    gap = ModelGap(VOCABULARY)
    embarrassed = {"a": "embarrassment", "b": "embarrassment"}
    gap.add(window("s-1", "ana", at(0), embarrassed, "(none)"))
    gap.add(window("s-1", "ana", at(1), embarrassed, "(none)"))
    gap.add(window("s-1", "ana", at(2), embarrassed, None))  # no frame read: unread
    gap.add(window("s-1", "ana", at(3), {"a": "laughter", "b": "laughter"}, "laughter"))
    summary = gap.summary()
    assert summary["no_label"] == "(none)"
    assert summary["agreed"]["embarrassment"] == 3
    model = summary["models"][MODEL]
    # Read 3 (two neutral, one laughter), agreed in 1; the unread window counts nowhere.
    assert (model["read"], model["agree"], model["said_none"]) == (3, 1, 2)
    # (none) is its own category in kappa: p_o = 1/3, p_e = (1*1) / 9 -> (3 - 1) / (9 - 1).
    assert model["kappa"] == 0.25
    embarrassment = model["labels"]["embarrassment"]
    assert {k: v for k, v in embarrassment.items() if k != "latest"} == {
        "read": 2,
        "agree": 0,
        "share": 0.0,
        "missed": 2,
        "said_elsewhere": 0,
    }
    assert embarrassment["latest"] == [
        {
            "performer_id": "ana",
            "start_us": at(0),
            "end_us": at(2),
            "windows": 2,
            "model_label": "(none)",
        }
    ]
    assert "(none)" not in summary["agreed"]  # no card: nobody agrees on "no label"


def test_windows_are_forgotten_once_final_and_the_counts_and_moments_stay() -> None:
    """Two hours at 10 windows a second must not keep two hours of windows: a window is
    held only until a newer window of its performer ends after its final_after_us."""
    grace_us = 1_000_000  # 10 windows
    gap = ModelGap(VOCABULARY, grace_us=grace_us)
    both = {"a": "laughter", "b": "laughter"}
    total = 3_000
    for k in range(total):  # every block of ten: 7 read alike, then a run of 3 as anger
        gap.add(window("s-1", "ana", at(k), both, "anger" if k % 10 >= 7 else "laughter"))
        assert gap.windows_kept <= 12
    model = gap.summary()["models"][MODEL]
    assert (model["read"], model["agree"], model["labels"]["laughter"]["missed"]) == (
        total,
        total * 7 // 10,
        total * 3 // 10,
    )
    # Chance: laughter 3000 * 2100 / 3000**2 = 0.7; observed 0.7: kappa 0.
    assert model["kappa"] == 0.0
    latest = model["labels"]["laughter"]["latest"]
    blocks = range(total // 10 - 1, total // 10 - 1 - LATEST_MOMENTS, -1)
    # The newest run is still held, the older ones forgotten, one across the line (its
    # first two windows forgotten, its last held): each whole.
    assert [(m["start_us"], m["end_us"], m["windows"]) for m in latest] == [
        (at(10 * b + 7), at(10 * b + 10), 3) for b in blocks
    ]
    assert {m["model_label"] for m in latest} == {"anger"}


def test_the_windows_own_final_instant_decides_and_a_revision_past_it_is_counted() -> None:
    gap = ModelGap(VOCABULARY)  # the default grace (30 s): the windows' own instant rules
    both = {"a": "laughter", "b": "laughter"}

    def final(k: int, top: str, revision: int = 0) -> None:
        made = window("s-1", "ana", at(k), both, top, revision=revision)
        gap.add(made.model_copy(update={"final_after_us": at(k + 1) + 200_000}))

    for k in range(50):
        final(k, "anger" if k in (20, 21) else "laughter")
    assert gap.windows_kept <= 4
    # A revision in its grace still replaces what the window counted ...
    final(48, "anger", revision=1)
    # ... one past it breaks the aligner's promise: not counted, but counted as such.
    before = gap.summary()
    final(20, "laughter", revision=1)
    assert gap.windows_after_final == 1
    assert gap.summary() == before
    laughter = before["models"][MODEL]["labels"]["laughter"]
    assert (laughter["read"], laughter["agree"], laughter["missed"]) == (50, 47, 3)
    assert [(m["start_us"], m["windows"]) for m in laughter["latest"]] == [(at(48), 1), (at(20), 2)]
    # Another performer has windows of their own time.
    gap.add(window("s-1", "bob", at(0), both, "anger"))
    assert gap.summary()["models"][MODEL]["labels"]["laughter"]["missed"] == 4
