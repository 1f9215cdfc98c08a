"""The ledger's rules (streams.labels.ledger): perception, self-tags, the intent of a window
(cues, the scenario's arc by take, the midpoint rule), coverage with revisions, the next
cue, and the aligner filling each window's intent from cues and the session's plan."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from streams import records
from streams.archive import model_gap
from streams.labels import ledger
from streams.labels.aligner_core import AlignerConfig, LateCue, SessionAligner
from streams.labels.ledger import CoverageBook, CueTimeline, Plan, intent_at
from tests.samples import SCENARIO
from tests.unit.test_aligner_core import feed_prosody

SID = "s-1"
W = 100_000
T0 = 1_700_000_000_000_000
VOCABULARY = ["laughter", "embarrassment", "hesitation", "anger"]
PROSODY_ONLY = AlignerConfig(awaited_streams=("prosody",))


def window(
    ts_us: int = T0,
    held: Mapping[str, Sequence[str]] | None = None,
    *,
    performer: str = "alice",
    roles: Mapping[str, records.Role] | None = None,
    intent: str | None = None,
    revision: int = 0,
    final_after_us: int | None = None,
) -> records.LabelWindow:
    """A window where each rater in ``held`` holds those labels (observers unless ``roles``
    says otherwise), with the consensus the aligner computes over every rater."""
    held = held or {}
    roles = roles or {}
    holders: dict[str, set[str]] = {}
    for rater, labels in held.items():
        for label in labels:
            holders.setdefault(label, set()).add(rater)
    consensus, agreement = None, None
    if holders:
        most = max(len(r) for r in holders.values())
        leaders = [label for label, r in holders.items() if len(r) == most]
        if len(leaders) == 1:
            tagging = sum(1 for labels in held.values() if labels)
            consensus, agreement = leaders[0], round(most / tagging, 4)
    return records.LabelWindow(
        ts_us=ts_us,
        session_id=SID,
        performer_id=performer,
        window_us=W,
        features=records.WindowFeatures(),
        raters=[
            records.RaterLabels(
                rater_id=rater,
                rater_role=roles.get(rater, "observer"),
                labels=[
                    records.ActiveLabel(
                        label=label, intensity="normal", tag_id=f"tag-{rater}-{label}"
                    )
                    for label in labels
                ],
            )
            for rater, labels in held.items()
            if labels
        ],
        consensus=consensus,
        consensus_agreement=agreement,
        revision=revision,
        final_after_us=ts_us + W + 30_000_000 if final_after_us is None else final_after_us,
        intent=None if intent is None else records.Intent(label=intent, source="cue"),
    )


def cue(
    cue_id: str,
    sent_us: int,
    kind: records.CueKind = "emotion",
    label: str | None = "laughter",
    *,
    shown_us: int | None = None,
    performer: str = "alice",
    text: str = "",
    intensity: records.Intensity = "normal",
) -> records.Cue:
    return records.Cue(
        ts_us=sent_us,
        session_id=SID,
        performer_id=performer,
        cue_id=cue_id,
        kind=kind,
        label=label if kind == "emotion" else None,
        intensity=intensity,
        text=text,
        sent_by="director",
        shown_ts_us=shown_us,
        shown=None
        if shown_us is None
        else records.CueShown(client_shown_ts_us=shown_us, clock_offset_us=0, rtt_us=2_000),
    )


# ---------------------------------------------------------------- perception


def test_perceived_is_the_observers_majority_and_never_a_performers_tag() -> None:
    seen = ledger.perceived(
        window(
            held={"o1": ["laughter"], "o2": ["laughter"], "o3": ["anger"], "alice": ["anger"]},
            roles={"alice": "performer", "o3": "director"},
        )
    )
    assert seen.label == "laughter"
    assert seen.observers == 3
    assert seen.labels == ("laughter", "anger")
    # The performer's own tag is not an observer's: with it, anger would tie.
    performer_only = ledger.perceived(
        window(
            held={"alice": ["anger"], "bob": ["anger"]},
            roles=dict.fromkeys(("alice", "bob"), "performer"),
        )
    )
    assert performer_only == ledger.NOTHING
    assert performer_only.answer == records.NOTHING_PERCEIVED


def test_a_tie_goes_to_the_vocabulary_order_then_the_alphabet() -> None:
    tied = window(held={"o1": ["laughter"], "o2": ["anger"]})
    assert ledger.perceived(tied, VOCABULARY).label == "laughter"
    assert ledger.perceived(tied, ["anger", "laughter"]).label == "anger"
    assert ledger.perceived(tied).label == "anger", "alphabetically without a vocabulary"
    outside = window(held={"o1": ["zeal"], "o2": ["awe"]})
    assert ledger.perceived(outside, VOCABULARY).label == "awe"


def test_agreement_is_decided_among_observers_only() -> None:
    two = window(held={"o1": ["laughter"], "o2": ["laughter"]})
    assert ledger.perceived(two).agreed
    assert model_gap.human_agreed(two)
    three = window(held={"o1": ["laughter"], "o2": ["laughter"], "o3": ["anger"]})
    assert ledger.perceived(three).agreed  # 2/3 counts, as in the model gap
    split = window(held={"o1": ["laughter"], "o2": ["anger"]})
    seen = ledger.perceived(split, VOCABULARY)
    assert (seen.agreed, seen.disputed) == (False, True)
    lone = ledger.perceived(window(held={"o1": ["laughter"]}))
    assert (lone.label, lone.agreed, lone.disputed) == ("laughter", False, False)
    # Two of three observers hold laughter; the performer's own anger ties the consensus
    # over every rater (no consensus at all): the observers still agreed.
    performer_too = window(
        held={"o1": ["laughter"], "o2": ["laughter"], "o3": ["anger"], "alice": ["anger"]},
        roles={"alice": "performer"},
    )
    assert performer_too.consensus is None
    seen = ledger.perceived(performer_too, VOCABULARY)
    assert (seen.label, seen.agreed, seen.disputed) == ("laughter", True, False)
    # ...while the model gap's rule (every rater, by the consensus) is unchanged.
    assert not model_gap.human_agreed(performer_too)
    # Observers split 1-1; the performer's own tag makes a 2/3 consensus of all raters,
    # which must not pass for the observers agreeing.
    swayed = window(
        held={"o1": ["laughter"], "o2": ["anger"], "alice": ["laughter"]},
        roles={"alice": "performer"},
    )
    assert swayed.consensus == "laughter"
    assert model_gap.human_agreed(swayed)
    assert not ledger.perceived(swayed, VOCABULARY).agreed
    assert ledger.perceived(swayed, VOCABULARY).disputed


def test_self_tagged_is_the_performers_own_labels_only() -> None:
    tagged = window(
        held={"alice": ["laughter", "hesitation"], "bob": ["anger"], "o1": ["anger"]},
        roles={"alice": "performer", "bob": "performer"},
    )
    assert ledger.self_tagged(tagged) == {"laughter", "hesitation"}
    assert (
        ledger.self_tagged(
            window(performer="bob", held={"alice": ["anger"]}, roles={"alice": "performer"})
        )
        == set()
    )


# ---------------------------------------------------------------- intent


def test_a_window_is_under_a_cue_that_started_at_or_before_its_midpoint() -> None:
    cues = CueTimeline()
    cues.add(cue("cue-00000001", T0 + W // 2))  # exactly window 0's midpoint
    assert intent_at(T0, W, cues) is not None
    later = CueTimeline()
    later.add(cue("cue-00000001", T0 + W // 2 + 1))
    assert intent_at(T0, W, later) is None
    under = intent_at(T0 + W, W, later)
    assert under is not None
    assert (under.label, under.source, under.intensity) == ("laughter", "cue", "normal")
    assert ledger.windows_under(T0 + W // 2 + 1, T0 + 3 * W + W // 2 + 1, W) == range(
        T0 // W + 1, T0 // W + 4
    )


def test_a_cue_starts_when_shown_else_when_sent_and_the_shown_record_supersedes() -> None:
    cues = CueTimeline()
    assert cues.add(cue("cue-00000001", T0 + 10_000)) == (T0 + 10_000, None)
    first = cues.at(T0 + 50_000)
    assert first is not None
    assert (first.since_ts_us, first.shown) == (T0 + 10_000, False)
    changed = cues.add(cue("cue-00000001", T0 + 10_000, shown_us=T0 + 160_000))
    assert changed == (T0 + 10_000, None)
    assert cues.at(T0 + 150_000) is None, "it had not been on screen yet"
    shown = cues.at(T0 + 200_000)
    assert shown is not None
    assert (shown.since_ts_us, shown.shown) == (T0 + 160_000, True)
    # The sent record again (redelivered, or overtaken by the shown one): nothing changes.
    assert cues.add(cue("cue-00000001", T0 + 10_000)) is None
    assert cues.add(cue("cue-00000001", T0 + 10_000, shown_us=T0 + 160_000)) is None
    assert len(cues) == 1


def test_cues_a_page_painted_in_one_frame_stand_in_the_order_they_were_sent() -> None:
    # A busy page paints two queued cues in one frame: both are shown at one instant, and
    # the one on screen is the later-sent, whatever their (random) ids say.
    cues = CueTimeline()
    cues.add(cue("zzzz-0000001", T0, label="laughter", shown_us=T0 + 5 * W))
    cues.add(cue("aaaa-0000002", T0 + W, label="anger", shown_us=T0 + 5 * W))
    on_screen = cues.at(T0 + 6 * W)
    assert on_screen is not None
    assert on_screen.label == "anger"


def test_a_cue_stands_until_the_next_cue_and_a_clear_ends_it() -> None:
    cues = CueTimeline()
    cues.add(cue("cue-00000001", T0, label="laughter"))
    cues.add(cue("cue-00000002", T0 + 10 * W, "text", text="slower"))
    cues.add(cue("cue-00000003", T0 + 20 * W, label="anger", intensity="strong"))
    assert cues.add(cue("cue-00000004", T0 + 30 * W, "clear")) == (T0 + 30 * W, None)
    labels = [getattr(intent_at(T0 + k * W, W, cues), "label", "-") for k in (5, 15, 25, 35)]
    assert labels == ["laughter", None, "anger", "-"]
    text = intent_at(T0 + 15 * W, W, cues)
    assert text is not None
    assert text.cue is not None
    assert (text.cue.kind, text.cue.text, text.source) == ("text", "slower", None)
    strong = intent_at(T0 + 25 * W, W, cues)
    assert strong is not None
    assert strong.intensity == "strong"
    # A cue slotted in between changes the instants up to the next one.
    assert cues.add(cue("cue-00000005", T0 + 12 * W, label="hesitation")) == (
        T0 + 12 * W,
        T0 + 20 * W,
    )


def test_the_arc_runs_from_each_takes_start_and_not_outside_takes() -> None:
    arc = (
        records.ArcStep(at_s=0, label="hesitation"),
        records.ArcStep(at_s=2, label="laughter", intensity="strong"),
    )
    take_two = T0 + 100 * W
    plan = Plan(takes=((T0, T0 + 50 * W), (take_two, None)), arc=arc, targets=("laughter",))
    assert intent_at(T0 + 5 * W, W, None, plan) == records.Intent(
        label="hesitation", source="arc", arc_label="hesitation", targets=["laughter"]
    )
    late = intent_at(T0 + 25 * W, W, None, plan)
    assert late is not None
    assert (late.label, late.intensity, late.source) == ("laughter", "strong", "arc")
    between = intent_at(T0 + 60 * W, W, None, plan)
    assert between == records.Intent(targets=["laughter"]), "targets only, no arc"
    again = intent_at(take_two + 5 * W, W, None, plan)
    assert again is not None
    assert again.label == "hesitation", "the arc starts again"
    # An emotion cue outranks the arc; a text cue does not, but is in force.
    cues = CueTimeline()
    cues.add(cue("cue-00000001", T0, label="anger"))
    cued = intent_at(T0 + 5 * W, W, cues, plan)
    assert cued is not None
    assert (cued.label, cued.source, cued.arc_label) == ("anger", "cue", "hesitation")
    cues.add(cue("cue-00000002", T0 + W, "text", text="breathe"))
    texted = intent_at(T0 + 5 * W, W, cues, plan)
    assert texted is not None
    assert texted.cue is not None
    assert (texted.label, texted.source, texted.cue.kind) == ("hesitation", "arc", "text")
    assert intent_at(T0, W, None, Plan(takes=((T0, None),))) is None


def session_with_arc(takes: list[records.Take]) -> records.SessionRecord:
    """A live session of alice and bob playing tests.samples.SCENARIO."""
    return records.SessionRecord(
        ts_us=T0,
        session_id=SID,
        created_ts_us=T0,
        prompt=SCENARIO.prompt,
        roster=[
            records.Performer(performer_id="alice", display_name="Alice"),
            records.Performer(performer_id="bob", display_name="Bob"),
        ],
        vocabulary=[
            records.VocabularyEntry(label=label, hotkey=str(i), colour="#112233")
            for i, label in enumerate(VOCABULARY)
        ],
        state="live",
        takes=takes,
        topics=records.SessionTopics(audio="a", video="v", prosody="p", face="f"),
        scenario=SCENARIO,
        roles={"alice": "the friend", "bob": "the widower"},
    )


def test_the_plan_of_a_performer_has_their_parts_targets_first() -> None:
    session = session_with_arc(
        [
            records.Take(take_id=2, start_ts_us=T0 + W),
            records.Take(take_id=1, start_ts_us=T0, end_ts_us=T0 + W),
        ]
    )
    alice = ledger.plan_of(session, "alice")
    assert alice.targets == ("hesitation", "laughter")
    assert ledger.plan_of(session, "bob").targets == ("laughter", "hesitation")
    assert alice.takes == ((T0, T0 + W), (T0 + W, None))
    assert alice.arc == tuple(SCENARIO.arc)


# ---------------------------------------------------------------- coverage


def test_coverage_counts_each_window_once_in_its_newest_revision() -> None:
    book = CoverageBook(SID, VOCABULARY)
    first = window(T0, {"o1": ["anger"], "o2": ["anger"]}, intent="laughter")
    book.add(first)
    book.add(
        window(T0 + W, {"alice": ["laughter"]}, roles={"alice": "performer"}, intent="laughter")
    )
    assert book.changed() == {"alice"}
    coverage = book.coverage("alice")
    assert coverage.windows == 2
    assert coverage.confusion == {"laughter": {"(none)": 1, "anger": 1}}
    assert coverage.cells["laughter"].intended_s == 0.2
    assert coverage.cells["laughter"].self_tagged_s == 0.1
    assert coverage.cells["anger"].agreed_s == 0.1
    # A revision: the observers' late tags now say laughter.
    book.add(window(T0, {"o1": ["laughter"], "o2": ["laughter"]}, intent="laughter", revision=1))
    revised = book.coverage("alice")
    assert revised.windows == 2
    assert "anger" not in revised.cells
    assert revised.confusion == {"laughter": {"(none)": 1, "laughter": 1}}
    cell = revised.cells["laughter"]
    assert (cell.intended_s, cell.perceived_s, cell.agreed_s, cell.hit_s) == (0.2, 0.1, 0.1, 0.1)
    assert ledger.hit_rate(revised, "laughter") == 0.5
    assert ledger.hit_rate_where_perceived(revised, "laughter") == 1.0
    assert ledger.hit_rate(revised, "anger") is None
    # An older revision that comes again changes nothing; the same one neither.
    assert not book.add(first)
    assert not book.add(
        window(T0, {"o1": ["laughter"], "o2": ["laughter"]}, intent="laughter", revision=1)
    )
    assert book.coverage("alice") == revised
    assert revised.ts_us == T0 + 2 * W


def test_disputed_seconds_go_to_every_label_the_observers_split_over() -> None:
    book = CoverageBook(SID, VOCABULARY)
    book.add(window(T0, {"o1": ["laughter"], "o2": ["anger"]}, intent="anger"))
    coverage = book.coverage("alice")
    assert coverage.cells["laughter"].disputed_s == 0.1
    assert coverage.cells["anger"].disputed_s == 0.1
    assert coverage.cells["laughter"].perceived_s == 0.1  # the vocabulary breaks the tie
    assert coverage.confusion == {"anger": {"laughter": 1}}
    assert coverage.cells["anger"].hit_s == 0


def test_the_book_forgets_final_windows_but_keeps_their_counts() -> None:
    book = CoverageBook(SID)
    for k in range(10):
        book.add(window(T0 + k * W, {"o1": ["anger"]}, final_after_us=T0 + (k + 1) * W))
    assert book.open_windows == 10
    assert book.settle(T0 + 5 * W + 1) == 5
    assert book.open_windows == 5
    assert book.coverage("alice").cells["anger"].perceived_s == 1.0


def test_an_older_book_merges_under_the_windows_this_one_counted() -> None:
    older = CoverageBook(SID)
    older.add(window(T0, {"o1": ["anger"], "o2": ["anger"]}))
    older.add(window(T0 + W, {"o1": ["anger"], "o2": ["anger"]}))
    live = CoverageBook(SID)
    # Window 1 revised after the restart: the live book's revision is the newer one.
    live.add(window(T0 + W, {"o1": ["laughter"], "o2": ["laughter"]}, revision=1))
    live.add(window(T0 + 2 * W, {"o1": ["laughter"], "o2": ["laughter"]}))
    live.merge_older(older)
    merged = live.coverage("alice")
    assert merged.windows == 3
    assert merged.cells["anger"].agreed_s == 0.1
    assert merged.cells["laughter"].agreed_s == 0.2


# ---------------------------------------------------------------- steering


def coverage_of(performer: str, cells: Mapping[str, records.CoverageCell]) -> records.Coverage:
    return records.Coverage(
        ts_us=T0, session_id=SID, performer_id=performer, window_us=W, windows=1, cells=dict(cells)
    )


def test_the_next_cue_is_an_emotion_no_one_has_shown_targets_first() -> None:
    coverage = {
        "alice": coverage_of("alice", {"laughter": records.CoverageCell(agreed_s=5, intended_s=9)}),
        "bob": coverage_of("bob", {"hesitation": records.CoverageCell(intended_s=4)}),
    }
    found = ledger.suggest_next_cue(coverage, VOCABULARY, targets=["hesitation"])
    assert found is not None
    assert (found.performer_id, found.label) == ("alice", "hesitation"), "bob tried it already"
    assert "target" in found.reason
    untargeted = ledger.suggest_next_cue(coverage, VOCABULARY)
    assert untargeted is not None
    assert (untargeted.performer_id, untargeted.label) == ("alice", "embarrassment")
    assert ledger.suggest_next_cue({}, VOCABULARY) is None


def test_once_every_emotion_was_shown_the_fewest_agreed_seconds_disputes_break_ties() -> None:
    cell = records.CoverageCell
    coverage = {
        "alice": coverage_of("alice", {"laughter": cell(agreed_s=4), "anger": cell(agreed_s=1)}),
        "bob": coverage_of(
            "bob", {"laughter": cell(agreed_s=1, disputed_s=6), "anger": cell(agreed_s=3)}
        ),
    }
    found = ledger.suggest_next_cue(coverage, ["laughter", "anger"])
    assert found is not None
    assert (found.performer_id, found.label) == ("bob", "laughter")
    assert "disputed" in found.reason
    assert ledger.suggest_next_cue(coverage, ["laughter", "anger"]) == found, "deterministic"


def test_day_gaps_sum_the_newest_coverage_of_each_session() -> None:
    cell = records.CoverageCell
    old = coverage_of("alice", {"laughter": cell(agreed_s=1)})
    new = old.model_copy(update={"ts_us": T0 + 1, "cells": {"laughter": cell(agreed_s=3)}})
    other = new.model_copy(update={"session_id": "s-2", "cells": {"anger": cell(agreed_s=2)}})
    assert ledger.day_gaps([new, old, other]) == {"alice": {"laughter": 3.0, "anger": 2.0}}


# ---------------------------------------------------------------- in the aligner


def emitted(out: Sequence[object]) -> list[records.LabelWindow]:
    return [item for item in out if isinstance(item, records.LabelWindow)]


def test_the_aligner_fills_intent_and_never_waits_for_cues() -> None:
    plain = SessionAligner(SID, PROSODY_ONLY)
    cued = SessionAligner(SID, PROSODY_ONLY)
    cued.add_cue(cue("cue-00000001", T0 + 2 * W), T0)
    now = T0 + 10 * W + PROSODY_ONLY.tag_wait_us
    without = feed_prosody(plain, T0, T0 + 10 * W, now)
    with_cues = feed_prosody(cued, T0, T0 + 10 * W, now)
    assert [w.ts_us for w in with_cues] == [w.ts_us for w in without], "same windows, same time"
    assert all(w.intent is None for w in without)
    labels = [None if w.intent is None else w.intent.label for w in with_cues]
    assert labels == [None, None] + ["laughter"] * (len(with_cues) - 2)
    assert cued.stats["cues"] == 1


def test_a_shown_record_revises_the_windows_it_moves() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    now = T0 + 10 * W + PROSODY_ONLY.tag_wait_us
    aligner.add_cue(cue("cue-00000001", T0 + 2 * W), T0)
    feed_prosody(aligner, T0, T0 + 10 * W, now)
    out = aligner.add_cue(cue("cue-00000001", T0 + 2 * W, shown_us=T0 + 4 * W), now)
    revised = emitted(out)
    assert len(revised) == len(out)
    # Windows 2-3 are no longer under it; 4 on show it shown.
    assert [(w.ts_us - T0) // W for w in revised] == list(range(2, 9))
    assert all(w.correction and w.revision == 1 for w in revised)
    assert [w.intent for w in revised[:2]] == [None, None]
    assert all(w.intent and w.intent.cue and w.intent.cue.shown for w in revised[2:])
    assert aligner.add_cue(cue("cue-00000001", T0 + 2 * W), now) == [], "the sent one, again"
    assert aligner.stats["duplicate_cues"] == 1
    assert aligner.stats["intent_revisions"] == 7


def test_a_cue_past_the_grace_is_late() -> None:
    config = AlignerConfig(awaited_streams=("prosody",), grace_us=1_000_000)
    aligner = SessionAligner(SID, config)
    feed_prosody(aligner, T0, T0 + 40 * W, T0 + 40 * W + config.tag_wait_us)
    now = T0 + 40 * W + config.tag_wait_us
    aligner.add_cue(cue("cue-00000002", T0 + 5 * W, "clear"), now)
    [late] = aligner.add_cue(cue("cue-00000001", T0 + 2 * W), now)
    assert isinstance(late, LateCue)
    assert "1000000 us before now" in late.reason
    assert aligner.stats["late_cues"] == 1


def test_the_session_plan_gives_the_arc_and_a_take_end_revises() -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    aligner.set_session(session_with_arc(takes=[records.Take(take_id=1, start_ts_us=T0)]), T0)
    now = T0 + 10 * W + PROSODY_ONLY.tag_wait_us
    first = feed_prosody(aligner, T0, T0 + 10 * W, now)
    assert all(w.intent and w.intent.source == "arc" for w in first)
    ended = session_with_arc(takes=[records.Take(take_id=1, start_ts_us=T0, end_ts_us=T0 + 5 * W)])
    revised = aligner.set_session(ended, now)
    assert [(w.ts_us - T0) // W for w in revised] == list(range(5, 9))
    assert all(w.intent and w.intent.source is None and w.intent.targets for w in revised)
    assert aligner.set_session(ended, now) == []


def test_restore_knows_the_cue_in_force_and_a_clear_from_the_windows() -> None:
    earlier = SessionAligner(SID, PROSODY_ONLY)
    earlier.add_cue(cue("cue-00000001", T0 + 2 * W, shown_us=T0 + 2 * W), T0)
    now = T0 + 10 * W + PROSODY_ONLY.tag_wait_us
    sent = feed_prosody(earlier, T0, T0 + 10 * W, now)
    successor = SessionAligner(SID, PROSODY_ONLY)
    successor.restore(sent, now)
    assert successor.stats["restored_cues"] == 1
    later = feed_prosody(successor, T0 + 10 * W, T0 + 14 * W, now + 4 * W)
    assert later
    assert all(w.intent and w.intent.label == "laughter" for w in later)

    cleared = SessionAligner(SID, PROSODY_ONLY)
    cleared.add_cue(cue("cue-00000001", T0 + 2 * W), T0)
    cleared.add_cue(cue("cue-00000002", T0 + 6 * W, "clear"), T0)
    sent = feed_prosody(cleared, T0, T0 + 10 * W, now)
    successor = SessionAligner(SID, PROSODY_ONLY)
    successor.restore(sent, now)
    later = feed_prosody(successor, T0 + 10 * W, T0 + 14 * W, now + 4 * W)
    assert later
    assert all(w.intent is None for w in later)


@pytest.mark.parametrize("kind", ["emotion", "text"])
def test_a_cue_is_acked_once_a_window_under_it_went_out(kind: records.CueKind) -> None:
    aligner = SessionAligner(SID, PROSODY_ONLY)
    given = cue("cue-00000001", T0 + 2 * W, kind, text="go on")
    aligner.add_cue(given, T0)
    until = aligner.cue_settles_at_us(given)
    assert not aligner.passed("alice", until), "no window of the performer yet"
    feed_prosody(aligner, T0, T0 + 10 * W, T0 + 10 * W + PROSODY_ONLY.tag_wait_us)
    assert aligner.passed("alice", until)


# ---------------------------------------------------------------- the documented reader


def test_the_documented_ledger_reader_prints_intent_against_perception() -> None:
    import json
    import subprocess
    import sys

    from tests.documentation import marked_block

    aligner = SessionAligner(SID, PROSODY_ONLY)
    aligner.add_cue(cue("cue-00000001", T0 + W), T0)
    aligner.add_cue(cue("cue-00000002", T0 + 2 * W, "text", text="slower"), T0)
    now = T0 + 4 * W + PROSODY_ONLY.tag_wait_us
    windows = feed_prosody(aligner, T0, T0 + 4 * W, now)
    late = cue("cue-00000001", T0 + W, shown_us=T0 + W + 10_000)  # revises window 1
    revised = emitted(aligner.add_cue(late, now))
    assert [(w.ts_us, w.revision) for w in revised] == [(T0 + W, 1)]
    windows += revised
    observed = window(
        T0 + 2 * W, {"o1": ["anger"], "alice": ["laughter"]}, roles={"alice": "performer"}
    )
    windows.append(observed.model_copy(update={"intent": windows[2].intent, "revision": 5}))
    lines = [
        json.dumps({"record_type": "label_window", **w.model_dump(mode="json")}) for w in windows
    ]
    lines.insert(1, json.dumps({"error": "not json", "record_type": "label_window"}))
    printed = subprocess.run(
        [sys.executable, "-c", marked_block("ledger-example")],
        input="\n".join(lines) + "\n",
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    assert printed == [
        f"alice {T0} intended=- via=- cue=- perceived=-",
        f"alice {T0 + W} intended=laughter via=cue cue=laughter perceived=-",
        f"alice {T0 + 2 * W} intended=- via=- cue=slower perceived=anger",
    ]
