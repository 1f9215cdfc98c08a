"""Scenarios: a scene's prompt, its parts (roles), the emotions it targets and their arc,
read from TOML or YAML files and shown to each page of the scene.

A scenario file (TOML; YAML takes the same keys)::

    scenario_id = "late-friend"        # optional: the file's name without its suffix
    title = "The late friend"
    prompt = "Two old friends meet at a reunion; one of them is very late."
    duration_s = 180                   # optional: the suggested length of a take
    observers_see = "prompt"           # or "prompt_and_roles", or "nothing"
    targets = ["amusement", "embarrassment"]

    [[roles]]
    name = "the latecomer"
    brief = "You are an hour late and will not say why."
    targets = ["embarrassment"]

    [[arc]]
    at_s = 0
    label = "amusement"

    [[arc]]
    at_s = 60
    label = "embarrassment"
    intensity = "strong"

Pure: no I/O but reading the files it is given; the library on Kafka is
streams/kafka/scenarios.py. Every error is a :class:`ScenarioError` naming the file, the
line where it can be found and the field (``arc[1].label``), so a director can fix it.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import ValidationError

from streams.errors import BadInputError
from streams.records import ArcStep, Role, Scenario, ScenarioRole, SessionRecord

#: The suffixes of scenario files, by format.
SCENARIO_SUFFIXES: Final = {".toml": "toml", ".yaml": "yaml", ".yml": "yaml"}
#: The largest scenario file read: a scenario is a page of text, not a data set.
MAX_SCENARIO_BYTES: Final = 64 * 1024

ScenarioFormat = Literal["toml", "yaml"]
Loc = tuple[str | int, ...]


class ScenarioError(BadInputError, ValueError):
    """A scenario that cannot be read: ``path`` (the file, or what the text came from),
    ``line`` (1-based, None when it cannot be placed) and ``reason`` (the field, then what
    is wrong with it)."""

    def __init__(self, path: str | Path, line: int | None, reason: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {reason}")


class RoleAssignmentError(BadInputError, ValueError):
    """Performers and a scenario's parts that do not fit together."""


# ---------------------------------------------------------------- reading


def parse_scenario(
    text: str,
    *,
    fmt: ScenarioFormat = "toml",
    path: str | Path = "<scenario>",
    default_id: str | None = None,
    vocabulary_labels: Collection[str] | None = None,
) -> Scenario:
    """The scenario in ``text``; ``default_id`` is its id when the text names none (a
    file's stem), ``vocabulary_labels`` the emotions it may name (None: any label)."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SCENARIO_BYTES:
        raise ScenarioError(
            path, None, f"{size} bytes, more than the {MAX_SCENARIO_BYTES} a scenario may have"
        )
    document = _parse_toml(text, path) if fmt == "toml" else _parse_yaml(text, path)
    if "scenario_id" not in document and default_id is not None:
        document = {"scenario_id": default_id, **document}
        if not re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,47}", default_id):
            raise ScenarioError(
                path,
                None,
                f"scenario_id: the file name {default_id!r} is no scenario id (lower-case "
                "letters, digits, _ and -, at most 48): name the file so, or give "
                "scenario_id in it",
            )
    try:
        scenario = Scenario.model_validate(document)
    except ValidationError as exc:
        raise _validation_error(exc, document, path, _lines(text, fmt)) from None
    if vocabulary_labels is not None:
        validate_labels(scenario, vocabulary_labels, path=path, text=text, fmt=fmt)
    return scenario


def load_scenario(path: Path, *, vocabulary_labels: Collection[str] | None = None) -> Scenario:
    """The scenario in a ``.toml``, ``.yaml`` or ``.yml`` file (its id defaults to the
    file's name without the suffix)."""
    fmt = SCENARIO_SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise ScenarioError(path, None, "a scenario file ends in .toml, .yaml or .yml")
    try:
        if path.stat().st_size > MAX_SCENARIO_BYTES:
            raise ScenarioError(
                path, None, f"more than the {MAX_SCENARIO_BYTES} bytes a scenario may have"
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ScenarioError(path, None, f"not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ScenarioError(path, None, f"cannot read it: {exc.strerror or exc}") from None
    return parse_scenario(
        text,
        fmt="toml" if fmt == "toml" else "yaml",
        path=path,
        default_id=path.stem,
        vocabulary_labels=vocabulary_labels,
    )


def validate_labels(
    scenario: Scenario,
    vocabulary_labels: Collection[str],
    *,
    path: str | Path = "<scenario>",
    text: str | None = None,
    fmt: ScenarioFormat = "toml",
) -> None:
    """Raise :class:`ScenarioError` for the first emotion the scenario names that the
    vocabulary lacks (its line found in ``text``, the scenario's source, when given)."""
    known = set(vocabulary_labels)
    for loc, label in _named_labels(scenario):
        if label not in known:
            line = None
            if text is not None:
                line = _lines(text, fmt).line(loc, label)
            raise ScenarioError(
                path,
                line,
                f"{_dotted(loc)}: {label!r} is not in the vocabulary "
                f"(known: {', '.join(sorted(known))})",
            )


def _named_labels(scenario: Scenario) -> Iterable[tuple[Loc, str]]:
    for index, label in enumerate(scenario.targets):
        yield ("targets", index), label
    for role_index, role in enumerate(scenario.roles):
        for index, label in enumerate(role.targets):
            yield ("roles", role_index, "targets", index), label
    for index, step in enumerate(scenario.arc):
        yield ("arc", index, "label"), step.label


@dataclass
class Library:
    """What :func:`load_library` read: each scenario with its file, and every error."""

    scenarios: dict[str, tuple[Path, Scenario]] = field(default_factory=dict)
    errors: list[ScenarioError] = field(default_factory=list)


def load_library(folder: Path, *, vocabulary_labels: Collection[str] | None = None) -> Library:
    """Every scenario file in ``folder`` (not its subfolders), by name; a bad file is an
    error of its own and never hides the others; a second file with an id already read
    is refused (the first keeps it)."""
    library = Library()
    if not folder.is_dir():
        library.errors.append(ScenarioError(folder, None, "not a folder"))
        return library
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in SCENARIO_SUFFIXES and p.is_file()
    )
    for path in files:
        try:
            scenario = load_scenario(path, vocabulary_labels=vocabulary_labels)
        except ScenarioError as exc:
            library.errors.append(exc)
            continue
        first = library.scenarios.get(scenario.scenario_id)
        if first is not None:
            library.errors.append(
                ScenarioError(
                    path,
                    _id_line(path),
                    f"scenario_id: {scenario.scenario_id!r} is also the id of "
                    f"{first[0].name}: each scenario needs its own",
                )
            )
            continue
        library.scenarios[scenario.scenario_id] = (path, scenario)
    return library


def _id_line(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    fmt: ScenarioFormat = "toml" if path.suffix.lower() == ".toml" else "yaml"
    return _lines(text, fmt).line(("scenario_id",))


def _parse_toml(text: str, path: str | Path) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        # tomllib (Python 3.11) puts the position in its message only.
        found = re.search(r"\(at line (\d+), column \d+\)$", message)
        if found is not None:
            line: int | None = int(found.group(1))
        elif message.endswith("(at end of document)"):
            line = max(1, text.count("\n") + (0 if text.endswith("\n") else 1))
        else:
            line = None
        reason = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)$", "", message)
        raise ScenarioError(path, line, f"not TOML: {reason}") from None


def _parse_yaml(text: str, path: str | Path) -> dict[str, Any]:
    try:
        # Anchors and aliases refused: an alias repeats a whole subtree without its text,
        # so a few lines could stand for more than any scenario holds.
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                line = event.start_mark.line + 1 if event.start_mark else None
                raise ScenarioError(path, line, "YAML aliases (*name) are not accepted here")
        document = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = None if mark is None else mark.line + 1
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        raise ScenarioError(path, line, f"not YAML: {problem or exc}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(path, None, f"not YAML: {exc}") from None
    if not isinstance(document, dict):
        kind = "nothing" if document is None else type(document).__name__
        raise ScenarioError(path, 1, f"expected the scenario's fields (a mapping), got {kind}")
    return document


# ---------------------------------------------------------------- errors, placed


_MODEL_OF_PART: Final[dict[str, type[Any]]] = {"roles": ScenarioRole, "arc": ArcStep}
_FIELD_NAMES: Final = frozenset(
    [*Scenario.model_fields, *ScenarioRole.model_fields, *ArcStep.model_fields]
)


def _validation_error(
    exc: ValidationError, document: Mapping[str, Any], path: str | Path, locate: _Lines
) -> ScenarioError:
    errors = exc.errors(include_url=False)
    # A misspelt key is the likely cause of the field it left missing: told first.
    first = min(errors, key=lambda error: error["type"] != "extra_forbidden")
    loc: Loc = tuple(first["loc"])
    if first["type"] != "extra_forbidden":
        # A union's member ("arc.0.at_s.float") is pydantic's business, not the author's.
        while loc and isinstance(loc[-1], str) and loc[-1] not in _FIELD_NAMES:
            loc = loc[:-1]
    if not loc:
        # The model's own rules (unique role names, the arc's order): placed here.
        placed = _model_rule_error(document, path, locate)
        if placed is not None:
            return placed
        message = str(first["msg"]).removeprefix("Value error, ")
        return ScenarioError(path, None, message)
    value = first.get("input")
    line = locate.line(loc, value if isinstance(value, str | int | float) else None)
    return ScenarioError(path, line, f"{_dotted(loc)}: {_message(first, loc)}")


def _message(error: Mapping[str, Any], loc: Loc) -> str:
    kind = error["type"]
    value = error.get("input")
    if kind == "extra_forbidden":
        model: type[Any] = Scenario
        if len(loc) >= 3 and isinstance(loc[0], str) and loc[0] in _MODEL_OF_PART:
            model = _MODEL_OF_PART[loc[0]]
        return f"not a field of a scenario here (known: {', '.join(model.model_fields)})"
    if kind == "string_pattern_mismatch":
        last = next((part for part in reversed(loc) if isinstance(part, str)), "")
        if last == "scenario_id":
            return f"{value!r} is no scenario id (lower-case letters, digits, _ and -, at most 48)"
        return f"{value!r} is no label (lower-case letters, digits, _ and -, from a letter)"
    if kind == "missing":
        return "missing"
    return str(error["msg"])


def _model_rule_error(
    document: Mapping[str, Any], path: str | Path, locate: _Lines
) -> ScenarioError | None:
    roles = document.get("roles")
    if isinstance(roles, list):
        seen: dict[str, int] = {}
        for index, role in enumerate(roles):
            name = role.get("name") if isinstance(role, dict) else None
            if not isinstance(name, str):
                continue
            if name in seen:
                loc: Loc = ("roles", index, "name")
                return ScenarioError(
                    path,
                    locate.line(loc, name),
                    f"{_dotted(loc)}: duplicate role name {name!r} (also roles[{seen[name]}])",
                )
            seen[name] = index
    arc = document.get("arc")
    if isinstance(arc, list):
        previous: float | None = None
        for index, step in enumerate(arc):
            at = step.get("at_s") if isinstance(step, dict) else None
            if not isinstance(at, int | float) or isinstance(at, bool):
                continue
            if previous is not None and at <= previous:
                loc = ("arc", index, "at_s")
                return ScenarioError(
                    path,
                    locate.line(loc, at),
                    f"{_dotted(loc)}: {at} is not after arc[{index - 1}].at_s ({previous}): "
                    "the arc's steps go in time order",
                )
            previous = at
    return None


def _dotted(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


class _Lines:
    def line(self, loc: Loc, value: object = None) -> int | None:
        raise NotImplementedError


def _lines(text: str, fmt: ScenarioFormat) -> _Lines:
    """Where fields are in ``text``: read only when an error needs placing."""
    return _TomlLines(text) if fmt == "toml" else _YamlLines(text)


class _TomlLines(_Lines):
    """Where a field of a scenario is in its TOML text: tomllib keeps no positions, so the
    text is read again for table headers (``[[roles]]``) and ``key =`` lines. Good for the
    layouts scenarios are written in; a line it cannot place is None."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_-]+)\s*\]\]?")
    _KEY = re.compile(r"""^\s*(?:"([^"]*)"|'([^']*)'|([A-Za-z0-9_-]+))\s*=""")

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()
        # (table, occurrence) -> header line; (table, occurrence, key) -> line
        self._headers: dict[tuple[str, int], int] = {}
        self._keys: dict[tuple[str, int, str], int] = {}
        self._ends: dict[tuple[str, int], int] = {}  # a table's last line
        counts: dict[str, int] = {}
        table: tuple[str, int] = ("", 0)
        in_multiline: str | None = None
        for number, raw in enumerate(self._lines, start=1):
            if in_multiline is not None:
                if raw.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            header = self._HEADER.match(raw)
            if header is not None:
                self._ends[table] = number - 1
                name = header.group(2)
                occurrence = counts.get(name, -1) + 1 if header.group(1) == "[[" else 0
                counts[name] = occurrence
                table = (name, occurrence)
                self._headers[table] = number
                continue
            key = self._KEY.match(raw)
            if key is not None:
                name = next(group for group in key.groups() if group is not None)
                self._keys.setdefault((*table, name), number)
                for quotes in ('"""', "'''"):
                    if raw.count(quotes) % 2 == 1:
                        in_multiline = quotes
        self._ends[table] = len(self._lines)

    def line(self, loc: Loc, value: object = None) -> int | None:
        if not loc or not isinstance(loc[0], str):
            return None
        first = loc[0]
        if len(loc) >= 2 and isinstance(loc[1], int) and (first, loc[1]) in self._headers:
            table = (first, loc[1])
            rest = loc[2:]
        else:
            table, rest = ("", 0), loc
        start = self._headers.get(table, 0 if table == ("", 0) else None)
        if start is None:
            return None
        if not rest or not isinstance(rest[0], str):
            return start or None
        key_line = self._keys.get((*table, rest[0]))
        if key_line is None:
            # A missing field, or one written some other way: the table it belongs to.
            return start or (self._keys.get(("", 0, first)) if table == ("", 0) else None)
        if value is None or len(rest) == 1:
            return key_line
        return self._value_line(key_line, self._ends.get(table, len(self._lines)), value)

    def _value_line(self, start: int, end: int, value: object) -> int:
        # An item of a list that spans lines: the line that holds it.
        written = json.dumps(value) if isinstance(value, str) else str(value)
        alternatives = [written, f"'{value}'"] if isinstance(value, str) else [written]
        for number in range(start, end + 1):
            text = self._lines[number - 1]
            if number > start and self._KEY.match(text):
                break
            if any(candidate in text for candidate in alternatives):
                return number
        return start


class _YamlLines(_Lines):
    """Where a field is in YAML text, from the parser's own node positions."""

    def __init__(self, text: str) -> None:
        try:
            self._root: yaml.Node | None = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError:
            self._root = None

    def line(self, loc: Loc, value: object = None) -> int | None:
        node = self._root
        if node is None:
            return None
        for part in loc:
            child: yaml.Node | None = None
            if isinstance(node, yaml.MappingNode):
                for key, item in node.value:
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                        # A key's line is where the problem is shown (its value may be on
                        # the next lines).
                        child = item if isinstance(item, yaml.CollectionNode) else key
                        break
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(part, int)
                and 0 <= part < len(node.value)
            ):
                child = node.value[part]
            if child is None:
                # A missing field: the line of what it is missing from (not the whole
                # document's first line).
                return None if node is self._root else int(node.start_mark.line) + 1
            node = child
        return int(node.start_mark.line) + 1


# ---------------------------------------------------------------- writing


def scenario_to_toml(scenario: Scenario) -> str:
    """The scenario as a TOML file that :func:`parse_scenario` reads back to the same
    scenario (what the dashboard's editor shows)."""
    lines = [
        f"scenario_id = {_toml_string(scenario.scenario_id)}",
        f"title = {_toml_string(scenario.title)}",
        f"prompt = {_toml_text(scenario.prompt)}",
    ]
    if scenario.duration_s is not None:
        lines.append(f"duration_s = {scenario.duration_s}")
    lines.append(f"observers_see = {_toml_string(scenario.observers_see)}")
    lines.append(f"targets = {_toml_list(scenario.targets)}")
    for role in scenario.roles:
        lines += [
            "",
            "[[roles]]",
            f"name = {_toml_string(role.name)}",
            f"brief = {_toml_text(role.brief)}",
            f"targets = {_toml_list(role.targets)}",
        ]
    for step in scenario.arc:
        lines += [
            "",
            "[[arc]]",
            f"at_s = {step.at_s!r}",
            f"label = {_toml_string(step.label)}",
            f"intensity = {_toml_string(step.intensity)}",
        ]
    return "\n".join(lines) + "\n"


def _toml_string(value: str) -> str:
    # A JSON string is a TOML basic string, but for DEL, which TOML wants escaped.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_text(value: str) -> str:
    """A multi-line basic string for text that spans lines (prompts, briefs), so the
    editor shows it as written; a plain string otherwise."""
    if "\n" not in value:
        return _toml_string(value)
    escaped = []
    for char in value:
        if char == "\\":
            escaped.append("\\\\")
        elif char == '"':
            escaped.append('\\"')
        elif char == "\n" or char == "\t":
            escaped.append(char)
        elif ord(char) < 0x20 or char == "\x7f":
            escaped.append(f"\\u{ord(char):04x}")
        else:
            escaped.append(char)
    # The newline right after the opening quotes is not part of the string.
    return '"""\n' + "".join(escaped) + '"""'


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_toml_string(value) for value in values) + "]"


# ---------------------------------------------------------------- casting


def assign_roles(
    scenario: Scenario, performer_ids: Sequence[str], explicit: Mapping[str, str]
) -> dict[str, str]:
    """Each performer's part: the ``explicit`` ones first (performer id -> role name),
    then the other performers in roster order take the parts left, in the scenario's
    order. One performer per part; fewer performers than parts leaves parts unplayed."""
    parts = [role.name for role in scenario.roles]
    roster = list(dict.fromkeys(performer_ids))
    if len(roster) > len(parts):
        raise RoleAssignmentError(
            f"{len(roster)} performers and {len(parts)} parts in scenario "
            f"{scenario.scenario_id!r} ({', '.join(parts)}): one performer per part"
        )
    assigned: dict[str, str] = {}
    for performer_id, role in explicit.items():
        if performer_id not in roster:
            raise RoleAssignmentError(
                f"{performer_id!r} is not a performer of the scene ({', '.join(roster)})"
            )
        if role not in parts:
            raise RoleAssignmentError(
                f"{role!r} is not a part of scenario {scenario.scenario_id!r} ({', '.join(parts)})"
            )
        taken = next((pid for pid, name in assigned.items() if name == role), None)
        if taken is not None:
            raise RoleAssignmentError(f"{role!r} is given to both {taken!r} and {performer_id!r}")
        assigned[performer_id] = role
    free = [part for part in parts if part not in assigned.values()]
    for performer_id in roster:
        if performer_id not in assigned:
            assigned[performer_id] = free.pop(0)
    return {performer_id: assigned[performer_id] for performer_id in roster}


def performer_view(session: SessionRecord, participant_id: str, role: Role) -> dict[str, Any]:
    """What a page of the scene shows of its scenario: ``prompt``, and ``scenario`` (None
    when the session has none, or this page sees nothing of it).

    - a performer: the title, the suggested duration and their own part (name, brief,
      targets), never the others' briefs;
    - an observer: the prompt, with every part's brief when the scenario's
      ``observers_see`` is ``prompt_and_roles``; nothing of the scenario (not even the
      prompt) when it is ``nothing``;
    - the director: all of it, the targets and the arc included."""
    scenario = session.scenario
    if scenario is None:
        return {"prompt": session.prompt, "scenario": None}
    by_part: dict[str, list[str]] = {}
    for performer_id, part_name in session.roles.items():
        by_part.setdefault(part_name, []).append(performer_id)

    def part_view(part: ScenarioRole) -> dict[str, Any]:
        return {
            "name": part.name,
            "brief": part.brief,
            "targets": list(part.targets),
            "performers": by_part.get(part.name, []),
        }

    view: dict[str, Any] = {
        "scenario_id": scenario.scenario_id,
        "title": scenario.title,
        "duration_s": scenario.duration_s,
    }
    if role == "performer":
        mine = session.roles.get(participant_id)
        own = next((p for p in scenario.roles if p.name == mine), None)
        view["role"] = None if own is None else part_view(own)
        return {"prompt": session.prompt, "scenario": view}
    if role == "observer":
        if scenario.observers_see == "nothing":
            return {"prompt": "", "scenario": None}
        if scenario.observers_see == "prompt_and_roles":
            # Briefs, not targets: an observer who knows the emotion a part aims at no
            # longer reports what they perceive.
            view["roles"] = [
                {k: v for k, v in part_view(part).items() if k != "targets"}
                for part in scenario.roles
            ]
        return {"prompt": session.prompt, "scenario": view}
    view.update(
        roles=[part_view(part) for part in scenario.roles],
        targets=list(scenario.targets),
        arc=[step.model_dump() for step in scenario.arc],
        observers_see=scenario.observers_see,
    )
    return {"prompt": session.prompt, "scenario": view}
