"""Emotion vocabularies: the labels raters can press, with hotkeys and colours.

The default set is made for improv and sketch scenes: the moments directors and dataset
builders ask for most (laughter, hesitation, embarrassment, anger...), on letter keys a
performer can reach without looking, and colours that stay distinct on a dark timeline.
A session can bring its own set as TOML::

    [[label]]
    label = "laughter"
    hotkey = "l"
    colour = "#f5b700"
    description = "audible laughter, not a smile"
    intensity = true          # optional: Shift + hotkey marks it strong (default true)
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import ValidationError

from streams.errors import BadInputError
from streams.records import VocabularyEntry

DEFAULT_VOCABULARY: tuple[VocabularyEntry, ...] = (
    VocabularyEntry(label="laughter", hotkey="l", colour="#f5b700", description="audible laugh"),
    VocabularyEntry(label="amusement", hotkey="a", colour="#ffd166", description="smile, glee"),
    VocabularyEntry(label="surprise", hotkey="s", colour="#06d6a0", description="startle, shock"),
    VocabularyEntry(label="hesitation", hotkey="h", colour="#8d99ae", description="pause, um"),
    VocabularyEntry(
        label="embarrassment", hotkey="e", colour="#ef476f", description="awkward, blushing"
    ),
    VocabularyEntry(label="anger", hotkey="g", colour="#d62828", description="irritation, rage"),
    VocabularyEntry(label="sadness", hotkey="d", colour="#118ab2", description="grief, crying"),
    VocabularyEntry(label="fear", hotkey="f", colour="#7209b7", description="anxiety, dread"),
    VocabularyEntry(label="disgust", hotkey="x", colour="#588157", description="revulsion"),
    VocabularyEntry(label="confusion", hotkey="c", colour="#f4a261", description="puzzlement"),
)


#: Keys the tagging widget uses itself (compared lower-cased, as KeyboardEvent.key): the
#: arrows and Home move a continuous rating, so they can never be a label's hotkey.
RATING_KEYS = frozenset({"arrowup", "arrowdown", "arrowleft", "arrowright", "home"})
RESERVED_KEYS = frozenset({*"0123456789", " ", "backspace", "enter", "escape", "tab", *RATING_KEYS})


class VocabularyError(BadInputError, ValueError):
    """A vocabulary file is unreadable or invalid; the message names the entry and field."""


def load_vocabulary(path: Path | None) -> list[VocabularyEntry]:
    """The session's vocabulary: the default set, or the one in a TOML file."""
    if path is None:
        return list(DEFAULT_VOCABULARY)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise VocabularyError(f"{path}: {exc}") from None
    raw_entries = document.get("label")
    if not isinstance(raw_entries, list) or not raw_entries:
        raise VocabularyError(f"{path}: expected one or more [[label]] tables")
    entries: list[VocabularyEntry] = []
    for index, raw in enumerate(raw_entries, start=1):
        try:
            entries.append(VocabularyEntry.model_validate(raw))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            raise VocabularyError(f"{path}: label #{index}: {field}: {first['msg']}") from None
    for index, entry in enumerate(entries, start=1):
        if entry.hotkey.lower() in RESERVED_KEYS:
            raise VocabularyError(
                f"{path}: label #{index}: hotkey {entry.hotkey!r} is reserved by the tagging "
                "widget (digits choose the performer, Backspace undoes, Space calibrates, the "
                "arrows and Home move a continuous rating)"
            )
    for attribute in ("label", "hotkey"):
        seen: dict[str, int] = {}
        for index, entry in enumerate(entries, start=1):
            # The widget matches keys case-insensitively (Shift means "strong").
            value = getattr(entry, attribute).lower()
            if value in seen:
                raise VocabularyError(
                    f"{path}: label #{index}: duplicate {attribute} {value!r} "
                    f"(also label #{seen[value]})"
                )
            seen[value] = index
    return entries
