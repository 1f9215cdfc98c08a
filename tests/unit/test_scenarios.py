"""Scenario files (streams/scenarios.py): reading TOML and YAML, every error with its line,
writing them back, the parts performers play and what each page shows; the editor's
messages (dashboard/scenarios.py) and `livetag scenarios check`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from dashboard.scenarios import MAX_SCENARIO_MESSAGE_BYTES, ScenarioDesk
from dashboard.server import MAX_DASHBOARD_MESSAGE_BYTES, ActionError, parse_dashboard_message
from infra.cli import main
from streams import records
from streams.kafka import topics
from streams.scenarios import (
    MAX_SCENARIO_BYTES,
    RoleAssignmentError,
    ScenarioError,
    assign_roles,
    load_library,
    load_scenario,
    parse_scenario,
    performer_view,
    scenario_to_toml,
    validate_labels,
)
from taggers.vocabulary import DEFAULT_VOCABULARY
from tests.documentation import ROOT, marked_block
from tests.samples import SCENARIO, all_records

LABELS = [entry.label for entry in DEFAULT_VOCABULARY]
KNOWN = ", ".join(sorted(LABELS))
EXAMPLES = ROOT / "infra" / "scenarios"

FUNERAL = """\
scenario_id = "funeral"
title = "After the funeral"
prompt = \"\"\"
Two cousins clear out their grandmother's flat.
Neither wants the piano.\"\"\"
duration_s = 180
targets = ["sadness",
  "laughter"]

[[roles]]
name = "the elder"
brief = "You promised her you would keep the piano."
targets = ["sadness"]

[[roles]]
name = "the younger"

[[arc]]
at_s = 0
label = "sadness"

[[arc]]
at_s = 60
label = "laughter"
intensity = "strong"
"""

FUNERAL_YAML = """\
scenario_id: funeral
title: After the funeral
prompt: |-
  Two cousins clear out their grandmother's flat.
  Neither wants the piano.
duration_s: 180
targets:
  - sadness
  - laughter
roles:
  - name: the elder
    brief: You promised her you would keep the piano.
    targets: [sadness]
  - name: the younger
arc:
  - at_s: 0
    label: sadness
  - at_s: 60
    label: laughter
    intensity: strong
"""


def _toml_error(text: str, path: str = "scenes/funeral.toml") -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, path=path, vocabulary_labels=LABELS)
    return caught.value


def _yaml_error(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, fmt="yaml", path="funeral.yaml", vocabulary_labels=LABELS)
    return caught.value


def _line_of(text: str, needle: str, occurrence: int = 0) -> int:
    lines = [n for n, line in enumerate(text.splitlines(), start=1) if needle in line]
    return lines[occurrence]


# ---------------------------------------------------------------- reading


def test_toml_and_yaml_read_to_the_same_scenario() -> None:
    from_toml = parse_scenario(FUNERAL, vocabulary_labels=LABELS)
    from_yaml = parse_scenario(FUNERAL_YAML, fmt="yaml", vocabulary_labels=LABELS)
    assert from_toml == from_yaml
    assert from_toml.prompt == (
        "Two cousins clear out their grandmother's flat.\nNeither wants the piano."
    )
    assert [role.name for role in from_toml.roles] == ["the elder", "the younger"]
    assert from_toml.arc[1] == records.ArcStep(at_s=60, label="laughter", intensity="strong")
    assert from_toml.observers_see == "prompt"


def test_a_file_without_an_id_is_named_by_its_file(tmp_path: Path) -> None:
    (tmp_path / "the-piano.toml").write_text(FUNERAL.replace('scenario_id = "funeral"\n', ""))
    (tmp_path / "piano.yml").write_text(FUNERAL_YAML.replace("scenario_id: funeral\n", ""))
    assert load_scenario(tmp_path / "the-piano.toml").scenario_id == "the-piano"
    assert load_scenario(tmp_path / "piano.yml").scenario_id == "piano"
    # The id in the file wins over the name.
    (tmp_path / "other.toml").write_text(FUNERAL)
    assert load_scenario(tmp_path / "other.toml").scenario_id == "funeral"
    (tmp_path / "Piano Scene.toml").write_text(FUNERAL.replace('scenario_id = "funeral"\n', ""))
    with pytest.raises(ScenarioError) as caught:
        load_scenario(tmp_path / "Piano Scene.toml")
    assert "scenario_id: the file name 'Piano Scene' is no scenario id" in str(caught.value)
    assert caught.value.line is None


def test_the_unknown_emotion_is_told_with_its_file_line_and_field() -> None:
    text = FUNERAL.replace('label = "laughter"', 'label = "jealousy"')
    error = _toml_error(text)
    line = _line_of(text, "jealousy")
    assert str(error) == (
        f"scenes/funeral.toml:{line}: arc[1].label: 'jealousy' is not in the vocabulary "
        f"(known: {KNOWN})"
    )
    assert (error.path, error.line) == ("scenes/funeral.toml", line)
    assert error.reason.startswith("arc[1].label: 'jealousy'")


@pytest.mark.parametrize(
    ("change", "field", "needle", "occurrence", "says"),
    [
        # An item of a list that spans lines: the line of the item.
        (('"laughter"]', '"jealousy"]'), "targets[1]", '"jealousy"]', 0, "not in the vocabulary"),
        (
            ('targets = ["sadness"]\n', 'targets = ["awe"]\n'),
            "roles[0].targets[0]",
            '["awe"]',
            0,
            "not in the vocabulary",
        ),
        (('label = "sadness"', 'label = "Sad"'), "arc[0].label", '"Sad"', 0, "'Sad' is no label"),
        (
            ('name = "the younger"', 'name = "the elder"'),
            "roles[1].name",
            "the elder",
            1,
            "duplicate",
        ),
        (("at_s = 60", "at_s = 0"), "arc[1].at_s", "at_s = 0", 1, "is not after arc[0].at_s"),
        (("at_s = 60", 'at_s = "sixty"'), "arc[1].at_s", '"sixty"', 0, "valid number"),
        (('name = "the younger"', 'nmae = "x"'), "roles[1].nmae", "nmae", 0, "not a field"),
        (('name = "the younger"', 'brief = "x"'), "roles[1].name", "[[roles]]", 1, "missing"),
        (("duration_s = 180", "duration_s = 0"), "duration_s", "duration_s", 0, "greater than 0"),
        (("duration_s = 180", "duration_s = 1.5"), "duration_s", "duration_s", 0, "integer"),
        (
            ("duration_s = 180", 'observers_see = "everyone"'),
            "observers_see",
            "observers_see",
            0,
            "'prompt', 'prompt_and_roles' or 'nothing'",
        ),
        (('intensity = "strong"', 'intensity = "loud"'), "arc[1].intensity", "loud", 0, "strong"),
        (('title = "After the funeral"', 'tilte = "x"'), "tilte", "tilte", 0, "not a field"),
    ],
)
def test_each_wrong_field_is_told_with_its_line(
    change: tuple[str, str], field: str, needle: str, occurrence: int, says: str
) -> None:
    text = FUNERAL.replace(*change, 1)
    assert text != FUNERAL
    error = _toml_error(text)
    assert error.reason.startswith(f"{field}: "), error
    assert says in error.reason, error
    assert error.line == _line_of(text, needle, occurrence), error


def test_a_missing_top_level_field_has_no_line() -> None:
    error = _toml_error(FUNERAL.replace('title = "After the funeral"\n', ""))
    assert (error.line, error.reason) == (None, "title: missing")
    assert str(error) == "scenes/funeral.toml: title: missing"


@pytest.mark.parametrize(
    ("text", "wrong", "says"),
    [
        (FUNERAL.replace("[[arc]]\nat_s = 60", "[[arc]\nat_s = 60"), "[[arc]", "Expected ']]'"),
        (
            FUNERAL.replace('title = "After the funeral"', 'title = "After'),
            'title = "After',
            "not TOML",
        ),
        ('title = "x"\nprompt = ', "prompt = ", "not TOML: Invalid value"),
    ],
)
def test_toml_syntax_errors_carry_the_parsers_line(text: str, wrong: str, says: str) -> None:
    line = text.splitlines().index(wrong) + 1
    error = _toml_error(text)
    assert error.line == line, error
    assert says in error.reason
    assert str(error).startswith(f"scenes/funeral.toml:{line}: not TOML: ")


@pytest.mark.parametrize(
    ("change", "line", "says"),
    [
        (("  - name: the younger\n", "  - brief: x\n"), 14, "roles[1].name: missing"),
        (("    label: laughter\n", "    label: jealousy\n"), 19, "arc[1].label: 'jealousy'"),
        (("  - laughter\n", "  - fear\n  - awe\n"), 10, "targets[2]: 'awe' is not"),
        (("    targets: [sadness]\n", "    targets: [sadness\n"), 14, "not YAML"),
        (("duration_s: 180\n", "duration_s: &d 180\nextra: *d\n"), 7, "aliases"),
        (("title: After", "titel: After"), 2, "titel: not a field"),
    ],
)
def test_yaml_errors_carry_their_line(change: tuple[str, str], line: int, says: str) -> None:
    text = FUNERAL_YAML.replace(*change)
    assert text != FUNERAL_YAML
    error = _yaml_error(text)
    assert error.line == line, error
    assert says in error.reason, error


@pytest.mark.parametrize("text", ["", "- just\n- a list\n", "a scalar\n"])
def test_yaml_that_is_not_a_mapping_is_refused(text: str) -> None:
    assert "expected the scenario's fields" in _yaml_error(text).reason


def test_oversized_and_unreadable_files_are_refused(tmp_path: Path) -> None:
    big = FUNERAL.replace("Neither wants", "x" * MAX_SCENARIO_BYTES)
    assert "more than the" in _toml_error(big).reason
    (tmp_path / "big.toml").write_text(big)
    (tmp_path / "latin1.toml").write_bytes("title = 'caf\xe9'".encode("latin-1"))
    (tmp_path / "notes.txt").write_text(FUNERAL)
    for name, says in [
        ("big.toml", "more than the"),
        ("latin1.toml", "not UTF-8"),
        ("notes.txt", ".toml, .yaml or .yml"),
        ("gone.toml", "cannot read it"),
    ]:
        with pytest.raises(ScenarioError, match=says) as caught:
            load_scenario(tmp_path / name)
        assert caught.value.path == str(tmp_path / name)


def test_validate_labels_names_the_first_emotion_missing() -> None:
    scenario = parse_scenario(FUNERAL)
    validate_labels(scenario, ["sadness", "laughter"])
    with pytest.raises(ScenarioError) as caught:
        validate_labels(scenario, ["sadness"])
    assert caught.value.reason == (
        "targets[1]: 'laughter' is not in the vocabulary (known: sadness)"
    )
    assert caught.value.line is None
    with pytest.raises(ScenarioError) as caught:
        validate_labels(scenario, ["sadness"], path="f.toml", text=FUNERAL)
    assert caught.value.line == _line_of(FUNERAL, '"laughter"]')


# ---------------------------------------------------------------- the library


def test_a_library_folder_collects_every_error_and_refuses_a_second_id(tmp_path: Path) -> None:
    (tmp_path / "a-funeral.toml").write_text(FUNERAL)
    (tmp_path / "b-broken.toml").write_text("title = \n")
    (tmp_path / "c-unknown.yaml").write_text(
        FUNERAL_YAML.replace("scenario_id: funeral", "scenario_id: c").replace(
            "label: laughter", "label: jealousy"
        )
    )
    (tmp_path / "d-again.yaml").write_text(FUNERAL_YAML)  # id funeral again
    (tmp_path / "e-piano.yml").write_text(FUNERAL_YAML.replace("scenario_id: funeral\n", ""))
    (tmp_path / "readme.md").write_text("not a scenario")
    library = load_library(tmp_path, vocabulary_labels=LABELS)
    assert sorted(library.scenarios) == ["e-piano", "funeral"]
    assert library.scenarios["funeral"][0].name == "a-funeral.toml"
    assert [Path(error.path).name for error in library.errors] == [
        "b-broken.toml",
        "c-unknown.yaml",
        "d-again.yaml",
    ]
    again = library.errors[2]
    assert again.line == 1
    assert again.reason == (
        "scenario_id: 'funeral' is also the id of a-funeral.toml: each scenario needs its own"
    )
    assert "arc[1].label: 'jealousy'" in library.errors[1].reason
    nowhere = load_library(tmp_path / "nope")
    assert (nowhere.scenarios, [e.reason for e in nowhere.errors]) == ({}, ["not a folder"])


def test_the_example_scenarios_and_the_documented_ones_load() -> None:
    library = load_library(EXAMPLES, vocabulary_labels=LABELS)
    assert library.errors == []
    assert sorted(library.scenarios) == ["cooking-show", "job-interview", "reunion"]
    for _, scenario in library.scenarios.values():
        assert len(scenario.roles) >= 2
        assert scenario.arc
        assert scenario.duration_s
        assert parse_scenario(scenario_to_toml(scenario), vocabulary_labels=LABELS) == scenario
    documented = parse_scenario(marked_block("scenario-example", "toml"), vocabulary_labels=LABELS)
    as_yaml = parse_scenario(
        marked_block("scenario-example-yaml", "yaml"), fmt="yaml", vocabulary_labels=LABELS
    )
    assert documented == as_yaml
    assert documented.scenario_id == "umbrella"
    assert [step.label for step in documented.arc] == ["hesitation", "amusement", "embarrassment"]


# ---------------------------------------------------------------- writing


@pytest.mark.parametrize("scenario", [SCENARIO, parse_scenario(FUNERAL)])
def test_a_scenario_written_as_toml_reads_back_the_same(scenario: records.Scenario) -> None:
    text = scenario_to_toml(scenario)
    assert parse_scenario(text) == scenario
    assert text.startswith(f'scenario_id = "{scenario.scenario_id}"\n')


_texts = st.text(max_size=200)


@given(
    title=st.text(min_size=1, max_size=120),
    prompt=_texts,
    brief=_texts,
    name=st.text(min_size=1, max_size=80),
    at_s=st.one_of(st.integers(0, 3600), st.floats(0, 3600, allow_nan=False, allow_infinity=False)),
)
def test_any_text_survives_the_round_trip(
    title: str, prompt: str, brief: str, name: str, at_s: float
) -> None:
    scenario = records.Scenario(
        scenario_id="any",
        title=title,
        prompt=prompt,
        roles=[records.ScenarioRole(name=name, brief=brief, targets=["fear"])],
        arc=[records.ArcStep(at_s=at_s, label="fear")],
    )
    assert parse_scenario(scenario_to_toml(scenario)) == scenario


# ---------------------------------------------------------------- parts and pages


def test_roles_go_to_the_named_performers_first_then_in_roster_order() -> None:
    scenario = parse_scenario(FUNERAL).model_copy(
        update={"roles": [records.ScenarioRole(name=n) for n in ("a", "b", "c")]}
    )
    assert assign_roles(scenario, ["ana", "ben"], {}) == {"ana": "a", "ben": "b"}
    assert assign_roles(scenario, ["ana", "ben"], {"ben": "a"}) == {"ana": "b", "ben": "a"}
    assert assign_roles(scenario, ["ana", "ben", "cy"], {"cy": "b"}) == {
        "ana": "a",
        "ben": "c",
        "cy": "b",
    }


@pytest.mark.parametrize(
    ("performers", "explicit", "says"),
    [
        (["ana", "ben", "cy"], {}, "3 performers and 2 parts"),
        (["ana"], {"zoe": "the elder"}, "'zoe' is not a performer of the scene"),
        (["ana"], {"ana": "the butler"}, "'the butler' is not a part"),
        (["ana", "ben"], {"ana": "the elder", "ben": "the elder"}, "given to both"),
    ],
)
def test_parts_that_do_not_fit_are_refused(
    performers: list[str], explicit: dict[str, str], says: str
) -> None:
    with pytest.raises(RoleAssignmentError, match=says):
        assign_roles(parse_scenario(FUNERAL), performers, explicit)


def _session(observers_see: str = "prompt") -> records.SessionRecord:
    session = all_records()[0]
    assert isinstance(session, records.SessionRecord)
    scenario = SCENARIO.model_copy(update={"observers_see": observers_see})
    return session.model_copy(update={"scenario": scenario})


def test_a_performer_sees_the_prompt_and_their_own_part_only() -> None:
    session = _session()
    view = performer_view(session, "alice", "performer")
    assert view["prompt"] == SCENARIO.prompt == session.prompt
    assert view["scenario"] == {
        "scenario_id": "late-friend",
        "title": "The late friend",
        "duration_s": 180,
        "role": {
            "name": "the friend",
            "brief": "You are late and cannot say why.",
            "targets": ["hesitation"],
            "performers": ["alice"],
        },
    }
    assert "You waited." not in json.dumps(view)  # the other part's brief
    bob = performer_view(session, "bob", "performer")
    assert bob["scenario"]["role"]["brief"] == "You waited."
    assert performer_view(session, "zed", "performer")["scenario"]["role"] is None


@pytest.mark.parametrize(
    ("observers_see", "prompt", "roles"),
    [("prompt", True, False), ("prompt_and_roles", True, True), ("nothing", False, False)],
)
def test_an_observer_sees_what_the_scenario_shows_them(
    observers_see: str, prompt: bool, roles: bool
) -> None:
    view = performer_view(_session(observers_see), "maria", "observer")
    assert (view["prompt"] == SCENARIO.prompt) is prompt
    text = json.dumps(view)
    assert ("You waited." in text) is roles
    assert "arc" not in text
    if not prompt:
        assert view == {"prompt": "", "scenario": None}


def test_the_director_sees_everything() -> None:
    view = performer_view(_session("nothing"), "director", "director")["scenario"]
    assert [role["performers"] for role in view["roles"]] == [["alice"], ["bob"]]
    assert view["targets"] == ["laughter", "hesitation"]
    assert view["arc"][1] == {"at_s": 60, "label": "laughter", "intensity": "strong"}
    assert view["observers_see"] == "nothing"


def test_a_session_without_a_scenario_shows_its_prompt() -> None:
    session = _session().model_copy(update={"scenario": None, "roles": {}})
    for role in ("performer", "observer", "director"):
        assert performer_view(session, "alice", role) == {
            "prompt": session.prompt,
            "scenario": None,
        }


# ---------------------------------------------------------------- the editor's messages


def test_scenario_messages_may_be_larger_than_the_others() -> None:
    limits = {"scenario_save": MAX_SCENARIO_MESSAGE_BYTES}
    text = json.dumps({"type": "scenario_save", "text": "x" * 20_000})
    assert parse_dashboard_message(text, limits)["type"] == "scenario_save"
    with pytest.raises(ActionError, match="more than the 4096"):
        parse_dashboard_message(text)
    other = json.dumps({"type": "take_start", "pad": "x" * (MAX_DASHBOARD_MESSAGE_BYTES)})
    with pytest.raises(ActionError, match="more than the 4096 accepted"):
        parse_dashboard_message(other, limits)
    huge = json.dumps({"type": "scenario_save", "text": "x" * MAX_SCENARIO_MESSAGE_BYTES})
    with pytest.raises(ActionError, match="more than the 32768"):
        parse_dashboard_message(huge, limits)


class _Producer:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail = fail

    async def send_and_wait(self, topic: str, value: bytes, *, key: bytes, headers: Any) -> None:
        if self.fail:
            raise ConnectionError("the broker is away")
        self.sent.append((topic, key, value))


def _desk(producer: _Producer) -> tuple[ScenarioDesk, Any, Any]:
    from streams.settings import Settings

    session = _session()
    server = SimpleNamespace(
        settings=Settings(),
        producer=producer,
        refusals=Counter(),
        session=lambda session_id: session if session_id == session.session_id else None,
    )
    client = SimpleNamespace(
        feed=SimpleNamespace(session_id=session.session_id),
        claims=SimpleNamespace(participant_id="director"),
    )
    return ScenarioDesk(server), server, client  # type: ignore[arg-type]


async def test_the_editor_checks_saves_refuses_and_deletes() -> None:
    producer = _Producer()
    desk, server, client = _desk(producer)
    # The sample session's vocabulary: laughter and hesitation.
    bad = FUNERAL
    checked = await desk.check(client, {"type": "scenario_check", "text": bad, "request_id": "r1"})
    assert checked["ok"] is False
    assert checked["request_id"] == "r1"
    assert checked["error"]["line"] == _line_of(FUNERAL, '"sadness",')
    assert checked["error"]["reason"].startswith("targets[0]: 'sadness' is not in the vocabulary")
    assert checked["error"]["message"].startswith(f"line {checked['error']['line']}: ")
    assert producer.sent == []

    good = scenario_to_toml(SCENARIO)
    checked = await desk.check(client, {"type": "scenario_check", "text": good})
    assert checked["ok"] is True
    assert checked["scenario"]["scenario_id"] == "late-friend"
    saved = await desk.save(client, {"type": "scenario_save", "text": good, "editing": None})
    assert saved["ok"] is True
    assert [s["scenario_id"] for s in saved["scenarios"]] == ["late-friend"]
    [(topic, key, value)] = producer.sent
    assert (topic, key) == (topics.SCENARIOS, b"late-friend")
    record = records.decode(records.ScenarioRecord, value, [])
    assert (record.saved_by, record.deleted, record.scenario) == ("director", False, SCENARIO)

    # A new scenario under an id the library has is refused; the one opened is replaced.
    again = await desk.save(client, {"type": "scenario_save", "text": good, "editing": None})
    assert (again["ok"], again["code"]) == (False, "exists")
    retitled = good.replace("The late friend", "The very late friend")
    replaced = await desk.save(
        client, {"type": "scenario_save", "text": retitled, "editing": "late-friend"}
    )
    assert replaced["ok"] is True
    refused = await desk.save(client, {"type": "scenario_save", "text": bad})
    assert refused["ok"] is False
    assert server.refusals == Counter({"scenario_exists": 1, "bad_scenario": 1})

    got = await desk.get_scenario(client, {"type": "scenario_get", "scenario_id": "late-friend"})
    assert parse_scenario(got["text"]).title == "The very late friend"
    deleted = await desk.delete(client, {"type": "scenario_delete", "scenario_id": "late-friend"})
    assert deleted["scenarios"] == []
    assert records.decode(records.ScenarioRecord, producer.sent[-1][2], []).deleted is True
    with pytest.raises(ActionError) as unknown:
        await desk.delete(client, {"type": "scenario_delete", "scenario_id": "late-friend"})
    assert unknown.value.code == "unknown_scenario"
    with pytest.raises(ActionError) as malformed:
        await desk.check(client, {"type": "scenario_check", "text": 3})
    assert malformed.value.code == "malformed"
    await desk.stop()


async def test_a_save_the_broker_refuses_is_told() -> None:
    desk, _, client = _desk(_Producer(fail=True))
    text = scenario_to_toml(SCENARIO)
    with pytest.raises(ActionError) as caught:
        await desk.save(client, {"type": "scenario_save", "text": text})
    assert caught.value.code == "unavailable"
    assert desk.library.get("late-friend") is None  # nothing saved, nothing listed
    await desk.stop()


# ---------------------------------------------------------------- the command line


def test_scenarios_check_prints_each_file_and_exits_2_on_a_bad_one(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["scenarios", "check", str(EXAMPLES)])
    assert result.exit_code == 0, result.output
    assert [line.split("\t")[:2] for line in result.output.splitlines()] == [
        ["ok", "cooking-show"],
        ["ok", "job-interview"],
        ["ok", "reunion"],
    ]
    bad = tmp_path / "funeral.toml"
    bad.write_text(FUNERAL.replace('label = "laughter"', 'label = "jealousy"'))
    result = runner.invoke(main, ["scenarios", "check", str(bad), str(EXAMPLES / "reunion.toml")])
    assert result.exit_code == 2
    line = _line_of(bad.read_text(), "jealousy")
    assert f"{bad}:{line}: arc[1].label: 'jealousy' is not in the vocabulary" in result.output
    assert "Error: 1 scenario file(s) with errors (above); 1 fine" in result.output
    yaml_file = tmp_path / "funeral.yaml"
    yaml_file.write_text(yaml.safe_dump(parse_scenario(FUNERAL).model_dump()))
    result = runner.invoke(main, ["scenarios", "check", str(yaml_file), str(tmp_path / "f2.yaml")])
    assert result.exit_code == 2
    assert f"ok\tfuneral\t{yaml_file}" in result.output
    assert "f2.yaml: cannot read it" in result.output
