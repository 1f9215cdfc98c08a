"""The project's documentation as the tests read it: README.md and every page of docs/.

Examples move between the README and the docs pages; the tests that run them look them up
here by their markers, so a moved example is still run, and a lost one fails."""

from __future__ import annotations

import os
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Set to 1 to have the end-to-end tests write their pictures for the documentation into
#: docs/images/ (they go to test-artifacts/ otherwise). Not LIVETAG_*: the settings refuse
#: names of theirs they do not know.
DOCS_IMAGES_ENV = "WRITE_DOCS_IMAGES"


def picture_path(name: str) -> Path:
    """Where an end-to-end test saves its picture ``name`` (e.g. ``dashboard-directing.png``):
    docs/images/ when ``WRITE_DOCS_IMAGES=1``, else test-artifacts/. The directory exists."""
    folder = (
        ROOT / "docs" / "images"
        if os.environ.get(DOCS_IMAGES_ENV) == "1"
        else Path("test-artifacts")
    )
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


def documentation_files() -> list[Path]:
    """README.md first (the first scene's commands come first), then docs/ by name."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def marked_block(marker: str, language: str = "python") -> str:
    """The code block between ``<!-- marker -->`` and ``<!-- /marker -->``: exactly one in
    all the documentation, so two diverging copies of an example cannot both pass."""
    pattern = re.compile(
        rf"<!-- {re.escape(marker)} -->\s*```{language}\n(.*?)```\s*<!-- /{re.escape(marker)} -->",
        re.DOTALL,
    )
    found = [
        (path.relative_to(ROOT), match.group(1))
        for path in documentation_files()
        for match in pattern.finditer(path.read_text(encoding="utf-8"))
    ]
    assert len(found) == 1, (
        f"expected one {marker} block between its markers in README.md and docs/*.md, "
        f"found {len(found)}: {[str(path) for path, _ in found]}"
    )
    return found[0][1]
