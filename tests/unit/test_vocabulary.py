from __future__ import annotations

from pathlib import Path

import pytest

from taggers.vocabulary import DEFAULT_VOCABULARY, VocabularyError, load_vocabulary


def test_default_set_has_unique_labels_and_hotkeys() -> None:
    entries = load_vocabulary(None)
    assert entries == list(DEFAULT_VOCABULARY)
    assert len({e.label for e in entries}) == len({e.hotkey for e in entries}) == len(entries)
    assert {"laughter", "hesitation", "embarrassment", "anger"} <= {e.label for e in entries}


def test_toml_vocabulary(tmp_path: Path) -> None:
    path = tmp_path / "v.toml"
    path.write_text(
        '[[label]]\nlabel = "joy"\nhotkey = "j"\ncolour = "#ffcc00"\n'
        '[[label]]\nlabel = "awe"\nhotkey = "w"\ncolour = "#00ccff"\n'
    )
    assert [e.label for e in load_vocabulary(path)] == ["joy", "awe"]
    assert all(e.intensity for e in load_vocabulary(path))


def test_a_label_can_take_no_intensity(tmp_path: Path) -> None:
    path = tmp_path / "v.toml"
    path.write_text(
        '[[label]]\nlabel = "joy"\nhotkey = "j"\ncolour = "#ffcc00"\nintensity = false\n'
    )
    [entry] = load_vocabulary(path)
    assert entry.intensity is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[label]]\nlabel = "joy"\nhotkey = "j"\ncolour = "#ffcc00"\n'
            '[[label]]\nlabel = "joy"\nhotkey = "k"\ncolour = "#ffcc00"\n',
            r"label #2: duplicate label 'joy' \(also label #1\)",
        ),
        (
            '[[label]]\nlabel = "joy"\nhotkey = "j"\ncolour = "#ffcc00"\n'
            '[[label]]\nlabel = "awe"\nhotkey = "j"\ncolour = "#ffcc00"\n',
            "duplicate hotkey 'j'",
        ),
        ('[[label]]\nlabel = "joy"\nhotkey = "j"\ncolour = "yellow"\n', "label #1: colour"),
        (
            '[[label]]\nlabel = "joy"\nhotkey = "j"\ncolour = "#ffcc00"\n'
            '[[label]]\nlabel = "awe"\nhotkey = "J"\ncolour = "#ffcc00"\n',
            "duplicate hotkey 'j'",
        ),
        ('[[label]]\nlabel = "joy"\nhotkey = "3"\ncolour = "#ffcc00"\n', "hotkey '3' is reserved"),
        (
            '[[label]]\nlabel = "joy"\nhotkey = "j"\ncolour = "#ffcc00"\nintensity = "yes"\n',
            "label #1: intensity",
        ),
        ("title = 'no labels'\n", r"expected one or more \[\[label\]\]"),
        ("[[label]\n", "v.toml"),
    ],
)
def test_bad_vocabularies_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "v.toml"
    path.write_text(text)
    with pytest.raises(VocabularyError, match=message):
        load_vocabulary(path)
