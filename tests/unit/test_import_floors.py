"""livetag's packages stand on floors, and no import runs back up one.

Floor 0, the ground: the record contract, settings, errors, the session clock
(``streams/*.py``) and what every service process stands on (``streams.runtime``).
Floor 1: Kafka plumbing (``streams.kafka``). Floor 2: the domains built on it (features,
labels, archive, bridges). Floor 3: the services (tag service, capture server, dashboard).
Floor 4, the roof: the command line, ``up`` and the worker (``infra``).

Every import counts, the ones inside functions included: a lazy import up a floor is still
a dependency that runs backwards. Packages on one floor may use each other, but never in a
circle. A new module or package must be given a floor here before it can be imported.
"""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("capture", "streams", "taggers", "dashboard", "infra")

#: Each unit (a package, or the ground modules at the top of ``streams``) and its floor.
FLOORS: dict[str, int] = {
    "streams": 0,
    "streams.runtime": 0,
    "streams.kafka": 1,
    "streams.features": 2,
    "streams.labels": 2,
    "streams.archive": 2,
    "streams.bridges": 2,
    "taggers": 3,
    "capture": 3,
    "dashboard": 3,
    "infra": 4,
}


def unit_of(module: str) -> str:
    """The floor unit a dotted module belongs to: its ``streams`` subpackage, or its package."""
    parts = module.split(".")
    if parts[0] == "streams" and len(parts) > 1 and (ROOT / "streams" / parts[1]).is_dir():
        return f"streams.{parts[1]}"
    return parts[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module: str | None = None) -> list[tuple[int, str]]:
    """(line, dotted target) of every livetag import in a file, relative ones resolved
    against ``module`` (by default the file's own dotted name)."""
    source_package = (module or module_name(path)).split(".")
    if path.name != "__init__.py":
        source_package = source_package[:-1]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = source_package[: len(source_package) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import module` names a module; `from module import name` does not,
            # and its unit is the module's either way.
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return [(line, target) for line, target in found if target.split(".")[0] in PACKAGES]


def livetag_sources() -> list[Path]:
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


def test_every_unit_has_a_floor() -> None:
    units = {unit_of(module_name(path)) for path in livetag_sources()}
    assert units - FLOORS.keys() == set(), "give each new package a floor in FLOORS"
    assert FLOORS.keys() - units == set(), "FLOORS names a package that no longer exists"


def test_no_import_runs_up_a_floor() -> None:
    upward: list[str] = []
    for path in livetag_sources():
        source = unit_of(module_name(path))
        for line, target in imported_modules(path):
            if FLOORS[unit_of(target)] > FLOORS[source]:
                upward.append(
                    f"{path.relative_to(ROOT)}:{line} ({source}, floor {FLOORS[source]}) "
                    f"imports {target} (floor {FLOORS[unit_of(target)]})"
                )
    assert upward == []


def test_packages_on_a_floor_do_not_import_in_a_circle() -> None:
    graph: dict[str, set[str]] = {unit: set() for unit in FLOORS}
    for path in livetag_sources():
        source = unit_of(module_name(path))
        for _, target in imported_modules(path):
            if unit_of(target) != source:
                graph[source].add(unit_of(target))
    # Raises CycleError naming the circle if there is one.
    order = list(graphlib.TopologicalSorter(graph).static_order())
    assert order.index("streams") < order.index("infra")


def test_the_check_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """An upward import inside a function, or written relative, would not slip through."""
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from infra import cli\n    from .. import records\n")
    targets = [target for _, target in imported_modules(lazy, "streams.kafka.lazy")]
    assert targets == ["infra.cli", "streams.records"]
    assert FLOORS[unit_of(targets[0])] > FLOORS[unit_of("streams.kafka.lazy")]
    assert unit_of(targets[1]) == "streams"
