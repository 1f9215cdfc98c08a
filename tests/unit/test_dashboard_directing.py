"""The director's side of the dashboard's view: cues and their state, the ledger lanes,
hit rate, confusion, coverage and the next cue (dashboard.directing, dashboard.view)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dashboard import directing
from dashboard.server import MAX_REQUEST_ID_CHARS, echoed_request_id
from dashboard.view import CHART_WINDOW_US, ClientCursor, SessionView
from streams import records
from streams.kafka import topics
from taggers.vocabulary import DEFAULT_VOCABULARY
from tests import directing_records as made
from tests.gap_windows import WINDOW_US
from tests.samples import SCENARIO

T0 = 1_790_000_000_000_000
SID = "s-1"
VOCABULARY = [entry.label for entry in DEFAULT_VOCABULARY]
SESSION = records.SessionRecord(
    ts_us=T0,
    session_id=SID,
    created_ts_us=T0,
    prompt="p",
    roster=[
        records.Performer(performer_id="ana", display_name="Ana"),
        records.Performer(performer_id="ben", display_name="Ben"),
    ],
    vocabulary=list(DEFAULT_VOCABULARY),
    state="live",
    topics=topics.session_topic_names(SID),
)
BOTH_LAUGH = {"r1": "laughter", "r2": "laughter"}


def cues_of(update: dict[str, Any] | None) -> list[tuple[str, str, float | None]]:
    assert update is not None
    return [(c["cue_id"], c["state"], c["latency_ms"]) for c in update.get("cues", [])]


# ---------------------------------------------------------------- cues


def test_a_cue_goes_out_sent_then_shown_with_its_latency_once_each() -> None:
    view = SessionView(SESSION)
    cursor = ClientCursor()
    sent = made.cue(SID, "ana", "cue-00000001", T0)
    assert view.add_cue(sent)
    update = view.update_for(cursor, T0)
    assert cues_of(update) == [("cue-00000001", "sent", None)]
    assert update is not None
    assert update["cues_current"] == {"ana": "cue-00000001"}
    assert view.update_for(cursor, T0) is None
    shown = made.cue(SID, "ana", "cue-00000001", T0, shown_after_us=42_500)
    assert view.add_cue(shown)
    update = view.update_for(cursor, T0)
    assert cues_of(update) == [("cue-00000001", "shown", 42.5)]
    assert update is not None
    assert "cues_current" not in update
    [entry] = update["cues"]
    assert entry["shown_ts_us"] == T0 + 42_500
    assert (entry["kind"], entry["label"], entry["sent_by"]) == ("emotion", "laughter", "director")
    # The sent record re-delivered after the shown one, or the shown one again: nothing.
    assert not view.add_cue(sent)
    assert not view.add_cue(shown)
    assert view.update_for(cursor, T0) is None
    # Another session's cue is not this one's.
    assert not view.add_cue(made.cue("s-2", "ana", "cue-00000009", T0))
    # A client that comes later is told the cue once, in its newest state.
    assert cues_of(view.update_for(ClientCursor(), T0)) == [("cue-00000001", "shown", 42.5)]


def test_the_newest_cue_is_in_force_a_clear_withdraws_it() -> None:
    view = SessionView(SESSION)
    cursor = ClientCursor()
    view.add_cue(made.cue(SID, "ana", "cue-00000001", T0))
    view.add_cue(made.cue(SID, "ben", "cue-00000002", T0, kind="text", text="look away"))
    view.add_cue(made.cue(SID, "ana", "cue-00000003", T0 + 1_000_000, label="anger"))
    update = view.update_for(cursor, T0)
    assert update is not None
    assert update["cues_current"] == {"ana": "cue-00000003", "ben": "cue-00000002"}
    view.add_cue(made.cue(SID, "ana", "cue-00000004", T0 + 2_000_000, kind="clear"))
    update = view.update_for(cursor, T0)
    assert update is not None
    assert update["cues_current"] == {"ana": None, "ben": "cue-00000002"}
    # A cue that arrives late but was sent before the newest does not replace it.
    view.add_cue(made.cue(SID, "ana", "cue-00000000", T0 - 1_000_000))
    update = view.update_for(cursor, T0)
    assert cues_of(update) == [("cue-00000000", "sent", None)]
    assert update is not None
    assert "cues_current" not in update


def test_cues_replaced_before_the_charts_span_are_forgotten_the_one_in_force_never() -> None:
    view = SessionView(SESSION)
    view.add_cue(made.cue(SID, "ana", "cue-00000001", T0))
    view.add_cue(made.cue(SID, "ana", "cue-00000002", T0 + 1_000_000))
    # Long after: the first cue ended (when the second came) before the chart's span.
    later = T0 + 1_000_000 + CHART_WINDOW_US + 5_000_000
    view.add_cue(made.cue(SID, "ana", "cue-00000003", later))
    kept = [entry["cue_id"] for entry in view.cues.kept("ana")]
    assert kept == ["cue-00000002", "cue-00000003"]  # the second ended inside the span
    fresh = cues_of(view.update_for(ClientCursor(), later))
    assert [cue_id for cue_id, _, _ in fresh] == kept
    # Its shown record, come after it was forgotten, brings nothing back.
    assert not view.add_cue(made.cue(SID, "ana", "cue-00000001", T0, shown_after_us=50_000))
    # However many cues come at once, at most CUES_KEPT are kept, the newest among them.
    for k in range(directing.CUES_KEPT + 20):
        view.add_cue(made.cue(SID, "ben", f"cue-ben-{k:05d}", later + k * 1000))
    kept = [entry["cue_id"] for entry in view.cues.kept("ben")]
    assert len(kept) == directing.CUES_KEPT
    assert kept[-1] == f"cue-ben-{directing.CUES_KEPT + 19:05d}"
    assert view.cues.current()["ben"] == kept[-1]


# ---------------------------------------------------------------- the ledger lanes


def test_each_window_sends_its_intent_and_what_the_observers_perceived() -> None:
    view = SessionView(SESSION)
    cursor = ClientCursor()
    cued = made.intent("laughter", cue_id="cue-00000001", since_us=T0 - 500_000)
    arc = made.intent("anger")
    text = made.intent(None, cue_id="cue-00000002", since_us=T0, text="look at the door")
    # Agreed by two observers; the performer's own tag is not what observers saw.
    view.add_label(made.window(SID, "ana", T0, BOTH_LAUGH, cued, self_tag="anger"))
    # Two observers split: perceived (the vocabulary's first of the tie), disputed.
    view.add_label(made.window(SID, "ana", T0 + WINDOW_US, {"r1": "laughter", "r2": "anger"}, arc))
    # A text cue: in force, nothing intended; one observer: neither agreed nor disputed.
    view.add_label(made.window(SID, "ana", T0 + 2 * WINDOW_US, {"r1": "anger"}, text))
    # Nothing intended, nothing tagged but by the performer: nothing to draw.
    view.add_label(made.window(SID, "ana", T0 + 3 * WINDOW_US, {}, None, self_tag="anger"))
    update = view.update_for(cursor, T0)
    assert update is not None
    first_of_tie = min(("laughter", "anger"), key=VOCABULARY.index)
    assert update["ledger"] == [
        [
            "ana",
            T0,
            WINDOW_US,
            ["laughter", "normal", "cue", "emotion", None, T0 - 500_000, True],
            ["laughter", 2, True, False],
        ],
        [
            "ana",
            T0 + WINDOW_US,
            WINDOW_US,
            ["anger", "normal", "arc", None, None, None, None],
            [first_of_tie, 2, False, True],
        ],
        [
            "ana",
            T0 + 2 * WINDOW_US,
            WINDOW_US,
            [None, "normal", None, "text", "look at the door", T0, True],
            ["anger", 1, False, False],
        ],
    ]
    # A revision that changes nothing is not sent; one that empties a window is.
    view.add_label(made.window(SID, "ana", T0, BOTH_LAUGH, cued, self_tag="anger", revision=1))
    assert view.update_for(cursor, T0) is None
    view.add_label(made.window(SID, "ana", T0 + 2 * WINDOW_US, {}, None, revision=1))
    update = view.update_for(cursor, T0)
    assert update is not None
    assert update["ledger"] == [["ana", T0 + 2 * WINDOW_US, WINDOW_US, None, None]]


# ---------------------------------------------------------------- what observers see


def test_an_observer_is_sent_what_was_perceived_never_what_was_intended() -> None:
    staged = SESSION.model_copy(
        update={"scenario": SCENARIO, "roles": {"ana": "the friend", "ben": "the widower"}}
    )
    view = SessionView(staged)
    cued = made.intent("laughter", cue_id="cue-00000001", since_us=T0 - 500_000)
    view.add_cue(made.cue(SID, "ana", "cue-00000001", T0 - 500_000))
    view.add_label(made.window(SID, "ana", T0, BOTH_LAUGH, cued))
    # Intended, perceived by nobody: the observers are not told the window exists.
    view.add_label(made.window(SID, "ana", T0 + WINDOW_US, {}, made.intent("anger")))
    for record in ana_and_ben():
        view.add_coverage(record)
    view.compute_coverage()
    director, observer = ClientCursor(), ClientCursor(role="observer")
    assert director.key() != observer.key()  # never one shared encoded update
    told = view.update_for(director, T0)
    assert told is not None
    assert {"cues", "cues_current", "coverage"} <= set(told)
    assert [row[3] is not None for row in told["ledger"]] == [True, True]
    seen = view.update_for(observer, T0)
    assert seen is not None
    assert not {"cues", "cues_current", "coverage"} & set(seen)
    assert seen["ledger"] == [["ana", T0, WINDOW_US, None, ["laughter", 2, True, False]]]
    # A revision that changes only the intent is the director's news alone.
    recued = made.intent("anger", cue_id="cue-00000002", since_us=T0)
    view.add_cue(made.cue(SID, "ana", "cue-00000002", T0, label="anger"))
    view.add_label(made.window(SID, "ana", T0, BOTH_LAUGH, recued, revision=1))
    assert view.update_for(observer, T0) is None
    told = view.update_for(director, T0)
    assert told is not None
    assert told["ledger"][0][3][0] == "anger"
    assert "cues" in told
    # The hello: the director's has the whole scenario; an observer's the prompt only.
    assert view.hello("director")["session"]["scenario"]["arc"]
    hello = view.hello("observer", "maria")["session"]
    assert hello["prompt"] == staged.prompt
    assert hello["scenario"]["title"] == SCENARIO.title
    assert hello["roles"] == {}
    for secret in ('"arc"', '"targets"', "You waited."):
        assert secret not in json.dumps(hello), secret


@pytest.mark.parametrize("observers_see", ["prompt_and_roles", "nothing"])
def test_an_observers_hello_shows_the_scenario_as_far_as_it_allows(observers_see: str) -> None:
    scenario = SCENARIO.model_copy(update={"observers_see": observers_see})
    staged = SESSION.model_copy(
        update={"scenario": scenario, "roles": {"ana": "the friend", "ben": "the widower"}}
    )
    hello = SessionView(staged).hello("observer", "maria")["session"]
    text = json.dumps(hello)
    assert '"arc"' not in text
    assert '"targets"' not in text
    if observers_see == "nothing":
        assert (hello["prompt"], hello["scenario"], hello["roles"]) == ("", None, {})
    else:
        assert hello["prompt"] == staged.prompt
        assert [part["brief"] for part in hello["scenario"]["roles"]][1] == "You waited."
        assert hello["roles"] == {"ana": "the friend", "ben": "the widower"}


# ---------------------------------------------------------------- coverage


def ana_and_ben(ts_us: int = T0) -> list[records.Coverage]:
    return [
        made.coverage(
            SID,
            "ana",
            ts_us,
            {
                "laughter": {"intended_s": 10.0, "hit_s": 6.0, "perceived_s": 8, "agreed_s": 5},
                "anger": {"perceived_s": 2.0, "self_tagged_s": 1.5, "disputed_s": 1.0},
            },
            {"laughter": {"laughter": 60, "anger": 20, "(none)": 20}},
        ),
        made.coverage(
            SID,
            "ben",
            ts_us,
            {"laughter": {"intended_s": 10.0, "hit_s": 2.0, "agreed_s": 2.0, "perceived_s": 3}},
            {"laughter": {"laughter": 20, "(none)": 80}},
        ),
    ]


def test_coverage_hit_rate_and_confusion_per_performer_and_over_the_session() -> None:
    view = SessionView(SESSION)
    cursor = ClientCursor()
    for record in ana_and_ben():
        view.add_coverage(record)
    view.compute_coverage()
    update = view.update_for(cursor, T0)
    assert update is not None
    coverage = update["coverage"]
    assert coverage["labels"] == VOCABULARY
    assert coverage["performers"] == ["ana", "ben"]
    assert coverage["cells"]["ana"]["anger"] == {
        "intended_s": 0.0,
        "self_tagged_s": 1.5,
        "perceived_s": 2.0,
        "agreed_s": 0.0,
        "hit_s": 0.0,
        "disputed_s": 1.0,
    }
    session = directing.SESSION_SCOPE
    assert coverage["cells"][session]["laughter"]["intended_s"] == 20.0
    assert coverage["cells"][session]["laughter"]["agreed_s"] == 7.0
    assert coverage["windows"] == {"ana": 100, "ben": 100, session: 200}
    [ana] = coverage["hit"]["ana"]
    assert ana == {
        "label": "laughter",
        "intended_s": 10.0,
        "hit_s": 6.0,
        "hit_rate": 0.6,
        "hit_rate_where_perceived": 0.75,  # 6 s of the 8 s observers saw anything
        "confused_with": "anger",  # 20 windows, as many as (none): the vocabulary first
        "confused_share": 0.2,
    }
    [both] = coverage["hit"][session]
    assert (both["hit_rate"], both["confused_with"], both["confused_share"]) == (
        0.4,
        "(none)",
        0.5,
    )
    assert coverage["confusion"][session] == {
        "laughter": {"laughter": 80, "anger": 20, "(none)": 100}
    }
    # Every label was shown with agreement by nobody but laughter: the first such
    # emotion of the vocabulary, to whoever was cued it least.
    first_unshown = next(label for label in VOCABULARY if label != "laughter")
    assert coverage["suggestion"]["label"] == first_unshown
    assert coverage["suggestion"]["performer_id"] == "ana"
    assert first_unshown in coverage["suggestion"]["reason"]
    # Nothing changed: nothing recomputed, nothing re-sent; an older record is no news.
    view.compute_coverage()
    assert view.update_for(cursor, T0) is None
    view.add_coverage(ana_and_ben(T0 - 1)[0])
    view.compute_coverage()
    assert view.update_for(cursor, T0) is None


def test_the_next_cue_follows_the_scenarios_targets() -> None:
    view = SessionView(SESSION)
    for record in ana_and_ben():
        view.add_coverage(record)
    view.compute_coverage()
    cursor = ClientCursor()
    assert view.update_for(cursor, T0) is not None
    assert view.coverage["suggestion"]["label"] == "amusement"  # the vocabulary's order
    # The scene gets a scenario: its targets come first (hesitation before amusement).
    scenario = SCENARIO.model_copy(update={"targets": ["hesitation", "laughter"]})
    staged = SESSION.model_copy(
        update={
            "ts_us": T0 + 1,
            "scenario": scenario,
            "roles": {"ana": "the friend", "ben": "the widower"},
        }
    )
    records.SessionRecord.model_validate(staged.model_dump())  # a valid session record
    view.add_session(staged)
    view.compute_coverage()
    update = view.update_for(cursor, T0)
    assert update is not None
    assert update["coverage"]["targets"] == ["hesitation", "laughter"]
    assert update["coverage"]["suggestion"]["label"] == "hesitation"
    assert "a target" in update["coverage"]["suggestion"]["reason"]


def test_no_coverage_yet_still_suggests_a_first_cue() -> None:
    summary = directing.coverage_summary({}, SESSION)
    assert summary["hit"] == {}
    assert summary["cells"] == {}
    assert summary["suggestion"]["label"] == VOCABULARY[0]
    assert summary["suggestion"]["performer_id"] == "ana"


def test_a_refusal_names_the_request_it_refuses() -> None:
    # The page matches each answer to its cue by the request id it sent.
    assert echoed_request_id({"type": "cue", "request_id": 7}) == 7
    assert echoed_request_id({"type": "cue", "request_id": "r-7"}) == "r-7"
    for unusable in (None, True, 1.5, "x" * (MAX_REQUEST_ID_CHARS + 1), ["7"]):
        assert echoed_request_id({"type": "cue", "request_id": unusable}) is None
    assert echoed_request_id({"type": "take_start"}) is None
