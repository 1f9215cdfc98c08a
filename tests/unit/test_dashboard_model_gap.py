"""The dashboard's live model gap: where the human raters agreed, how the model rater read
it, per emotion, kept up to date window by window (and revision by revision)."""

from __future__ import annotations

from collections import Counter

import pytest

from dashboard.model_gap import LATEST_MOMENTS, ModelGap, cohen_kappa, humans_agreed
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


def test_cohen_kappa() -> None:
    confusion = Counter({("a", "a"): 20, ("a", "b"): 5, ("b", "a"): 10, ("b", "b"): 15})
    # observed 0.7, by chance (25*30 + 25*20) / 50**2 = 0.5: (0.7 - 0.5) / 0.5
    assert cohen_kappa(confusion) == 0.4
    assert cohen_kappa(Counter()) is None
    assert cohen_kappa(Counter({("a", "a"): 3})) is None  # one category only: chance is 1
    assert cohen_kappa(Counter({("a", "b"): 3, ("b", "a"): 3})) == -1.0


def test_the_model_kappa_is_over_the_agreed_windows() -> None:
    gap = ModelGap(VOCABULARY)
    both = {"a": "laughter", "b": "laughter"}
    angry = {"a": "anger", "b": "anger"}
    for k in range(4):
        gap.add(window("s-1", "ana", at(k), both, "laughter"))
        gap.add(window("s-1", "ana", at(10 + k), angry, "anger" if k < 2 else "laughter"))
    # 6 of 8 agree; chance: (4*6 + 4*2) / 64 = 0.5: kappa (0.75 - 0.5) / 0.5
    assert gap.summary()["models"][MODEL]["kappa"] == 0.5
