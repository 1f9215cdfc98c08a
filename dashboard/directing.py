"""The director's side of the ledger, live: the cues and their state, each label window's
intent and perception, hit rate, confusion, coverage and the next cue to send: sans I/O.

**Cues** (``livetag.cues``): each cue is published twice, when sent and once the
performer's page showed it (the second record supersedes the first, same ``cue_id``).
:class:`CueBoard` keeps per performer the cues of the chart's span and the newest one (a
cue stands until the performer's next cue replaces it, so the newest is the cue in force,
or none when it is a ``clear``), each with its state: ``sent``, or ``shown`` with the
latency sent -> shown in milliseconds. A cue is sent to the page once per change.

**The ledger lanes** of the timeline come from the label windows: :func:`ledger_row`
gives per window what was intended (``window.intent``: the cue in force or the
scenario arc's step) and what the observers perceived (:func:`streams.labels.ledger.perceived`:
the performer's own tags never count; agreed or disputed by the rule the model gap and the
archive use). Self-tags are the tags the timeline draws already (their own lane); the
model lane is the measured one.

**Coverage** (``livetag.coverage``, the aligner's per-performer ledger so far):
:func:`coverage_summary` lays out the coverage matrix (emotion x performer: seconds
intended, self-tagged, perceived, agreed), the hit rate per emotion (the share of the
intended seconds observers perceived as intended) with the top confusion, the confusion
matrices per performer and summed over the session, and the next cue
(:func:`streams.labels.ledger.suggest_next_cue`) from the scenario's targets and the
vocabulary. Every number is the server's; the page lays them out.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from streams import records
from streams.labels import ledger

__all__ = [
    "CUES_KEPT",
    "SESSION_SCOPE",
    "CueBoard",
    "coverage_basis",
    "coverage_summary",
    "cue_entry",
    "intent_cell",
    "ledger_row",
    "perceived_cell",
    "scene_targets",
    "session_coverage",
]

#: At most this many cues are kept per performer, however fast the director sends them.
CUES_KEPT: Final = 200
#: The key of the totals over every performer in the hit-rate tables and confusion.
SESSION_SCOPE: Final = "(session)"


def cue_entry(cue: records.Cue) -> dict[str, Any]:
    """A cue as the page is told of it: what it asks and its state."""
    latency = None if cue.shown_ts_us is None else round((cue.shown_ts_us - cue.ts_us) / 1000, 1)
    return {
        "cue_id": cue.cue_id,
        "performer_id": cue.performer_id,
        "group_id": cue.group_id,
        "kind": cue.kind,
        "label": cue.label,
        "intensity": cue.intensity,
        "text": cue.text,
        "sent_by": cue.sent_by,
        "ts_us": cue.ts_us,
        "shown_ts_us": cue.shown_ts_us,
        "latency_ms": latency,
        "state": "sent" if cue.shown_ts_us is None else "shown",
    }


class CueBoard:
    """Each performer's recent cues and the one in force, and what changed for the page.

    ``next_seq`` numbers the changes (the view's own sequence, so a client cursor orders
    them with everything else it is sent)."""

    def __init__(self, session_id: str, next_seq: Callable[[], int], keep_us: int) -> None:
        self.session_id = session_id
        self._next_seq = next_seq
        self._keep_us = keep_us
        # Per performer, its kept cues in (ts_us, cue_id) order: the last is the newest.
        self._order: dict[str, list[tuple[int, str]]] = {}
        self._entries: dict[str, dict[str, Any]] = {}  # cue_id -> entry
        # cue_id -> (seq of its last change, entry): the newest change last, so what is
        # new for a client is the dict's tail, each cue once however often it changed.
        self._changes: dict[str, tuple[int, dict[str, Any]]] = {}
        self.current_version = 0

    def add(self, cue: records.Cue) -> bool:
        """Take a cue record (sent or shown); whether the page has something new."""
        if cue.session_id != self.session_id:
            return False
        known = self._entries.get(cue.cue_id)
        if known is not None and (known["state"] == "shown" or cue.shown_ts_us is None):
            return False  # re-delivered, or the sent record after its shown one
        order = self._order.setdefault(cue.performer_id, [])
        entry = cue_entry(cue)
        if known is None:
            newest_before = order[-1] if order else None
            bisect.insort(order, (cue.ts_us, cue.cue_id))
            if not self._prune(cue.performer_id, order, cue.cue_id):
                return False  # older than everything the page still shows
            if order[-1] != newest_before:
                self.current_version += 1
        self._entries[cue.cue_id] = entry
        self._changes.pop(cue.cue_id, None)
        self._changes[cue.cue_id] = (self._next_seq(), entry)
        return True

    def _prune(self, performer_id: str, order: list[tuple[int, str]], added: str) -> bool:
        """Forget the cues replaced before the chart's span (and beyond the cap); whether
        the cue just added is kept."""
        horizon = order[-1][0] - self._keep_us
        kept = True
        while len(order) > 1 and (order[1][0] < horizon or len(order) > CUES_KEPT):
            _, cue_id = order.pop(0)
            self._entries.pop(cue_id, None)
            self._changes.pop(cue_id, None)
            kept = kept and cue_id != added
        return kept

    def since(self, seq: int) -> list[dict[str, Any]]:
        """The cues that changed after ``seq``, oldest change first."""
        news = []
        for change_seq, entry in reversed(self._changes.values()):
            if change_seq <= seq:
                break
            news.append(entry)
        news.reverse()
        return news

    @property
    def newest_seq(self) -> int:
        return next(reversed(self._changes.values()))[0] if self._changes else 0

    def current(self) -> dict[str, str | None]:
        """Per performer, the cue in force: the newest one's id (None: it was a clear)."""
        result: dict[str, str | None] = {}
        for performer_id, order in self._order.items():
            if order:
                cue_id = order[-1][1]
                result[performer_id] = None if self._entries[cue_id]["kind"] == "clear" else cue_id
        return result

    def kept(self, performer_id: str) -> list[dict[str, Any]]:
        """The cues kept for a performer, oldest first."""
        return [self._entries[cue_id] for _, cue_id in self._order.get(performer_id, [])]


# ---------------------------------------------------------------- the ledger lanes


def intent_cell(intent: records.Intent | None) -> list[Any] | None:
    """What the intent lane draws of a window: ``[label, intensity, source, cue kind,
    cue text, cue since_ts_us, cue shown]`` (the cue's fields None without a cue in force),
    or None: nothing intended there (no emotion, no cue)."""
    if intent is None or (intent.label is None and intent.cue is None):
        return None
    cue = intent.cue
    return [
        intent.label,
        intent.intensity,
        intent.source,
        None if cue is None else cue.kind,
        cue.text if cue is not None and cue.kind == "text" else None,
        None if cue is None else cue.since_ts_us,
        None if cue is None else cue.shown,
    ]


def perceived_cell(
    window: records.LabelWindow, vocabulary: Mapping[str, int] | None = None
) -> list[Any] | None:
    """What the perceived lane draws of a window: ``[label, observers tagging, agreed,
    disputed]``, or None: no observer tagged it. ``vocabulary`` (label -> rank) breaks a
    tie between labels, as the aligner's coverage does."""
    perception = ledger.perceived(window, vocabulary)
    if perception.label is None:
        return None
    return [perception.label, perception.observers, perception.agreed, perception.disputed]


def ledger_row(
    window: records.LabelWindow, vocabulary: Mapping[str, int] | None = None
) -> tuple[list[Any] | None, list[Any] | None]:
    """The window's intent and perceived cells (see :func:`intent_cell`,
    :func:`perceived_cell`)."""
    return intent_cell(window.intent), perceived_cell(window, vocabulary)


# ---------------------------------------------------------------- coverage


def scene_targets(session: records.SessionRecord) -> list[str]:
    """The emotions the scene means to show, each once: the scenario's targets, then each
    performer's part's (:func:`streams.labels.ledger.plan_of`), in the roster's order."""
    if session.scenario is None:
        return []
    wanted = list(session.scenario.targets)
    for performer in session.roster:
        wanted.extend(ledger.plan_of(session, performer.performer_id).targets)
    return list(dict.fromkeys(wanted))


def coverage_basis(session: records.SessionRecord) -> tuple[Any, ...]:
    """What of the session record the coverage panel is laid out by (besides the coverage
    records): when it changes, the panel and the next cue are made again."""
    return (
        tuple(performer.performer_id for performer in session.roster),
        tuple(entry.label for entry in session.vocabulary),
        tuple(scene_targets(session)),
    )


def _cell(cell: records.CoverageCell) -> dict[str, float]:
    return {
        "intended_s": round(cell.intended_s, 1),
        "self_tagged_s": round(cell.self_tagged_s, 1),
        "perceived_s": round(cell.perceived_s, 1),
        "agreed_s": round(cell.agreed_s, 1),
        "hit_s": round(cell.hit_s, 1),
        "disputed_s": round(cell.disputed_s, 1),
    }


_SECONDS: Final = tuple(records.CoverageCell.model_fields)


def session_coverage(coverages: Iterable[records.Coverage]) -> records.Coverage | None:
    """Every performer's coverage summed: the session's cells and confusion, in a
    Coverage's shape (its performer_id is the first performer's, and means nothing)."""
    performers = list(coverages)
    if not performers:
        return None
    cells: dict[str, records.CoverageCell] = {}
    confusion: dict[str, dict[str, int]] = {}
    for coverage in performers:
        for label, cell in coverage.cells.items():
            known = cells.get(label) or records.CoverageCell()
            cells[label] = records.CoverageCell(
                **{name: getattr(known, name) + getattr(cell, name) for name in _SECONDS}
            )
        for intended, row in coverage.confusion.items():
            into = confusion.setdefault(intended, {})
            for answer, windows in row.items():
                into[answer] = into.get(answer, 0) + windows
    return performers[0].model_copy(
        update={
            "ts_us": max(coverage.ts_us for coverage in performers),
            "windows": sum(coverage.windows for coverage in performers),
            "cells": cells,
            "confusion": confusion,
        }
    )


def _hit_rows(labels: list[str], coverage: records.Coverage) -> list[dict[str, Any]]:
    """One row per intended emotion: seconds intended, the share observers perceived as
    intended (:func:`streams.labels.ledger.hit_rate`; and of the seconds they perceived
    anything: :func:`~streams.labels.ledger.hit_rate_where_perceived`), and what it was
    most often perceived as instead, with its share of the windows it was intended."""
    rank = {name: k for k, name in enumerate([*labels, records.NOTHING_PERCEIVED])}
    rows = []
    for label in labels:
        cell = coverage.cells.get(label)
        rate = ledger.hit_rate(coverage, label)
        if cell is None or rate is None:
            continue
        perceived_as = coverage.confusion.get(label, {})
        windows = sum(perceived_as.values())
        # The commonest other reading; ties go to the vocabulary's order, '(none)' last.
        others = sorted(
            ((n, other) for other, n in perceived_as.items() if other != label and n > 0),
            key=lambda item: (-item[0], rank.get(item[1], len(rank)), item[1]),
        )
        top = others[0] if others else None
        rows.append(
            {
                "label": label,
                "intended_s": round(cell.intended_s, 1),
                "hit_s": round(cell.hit_s, 1),
                "hit_rate": round(rate, 3),
                "hit_rate_where_perceived": ledger.hit_rate_where_perceived(coverage, label),
                "confused_with": None if top is None else top[1],
                "confused_share": None if top is None else round(top[0] / windows, 3),
            }
        )
    return rows


def coverage_summary(
    coverages: Mapping[str, records.Coverage], session: records.SessionRecord
) -> dict[str, Any]:
    """The coverage matrix, the hit-rate tables and confusion matrices (per performer and
    over the session, under :data:`SESSION_SCOPE`) and the next cue, from each performer's
    newest Coverage record."""
    vocabulary = [entry.label for entry in session.vocabulary]
    seen = {label for coverage in coverages.values() for label in coverage.cells}
    seen |= {label for coverage in coverages.values() for label in coverage.confusion}
    labels = vocabulary + sorted(seen - set(vocabulary))
    roster = [performer.performer_id for performer in session.roster]
    performers = roster + sorted(set(coverages) - set(roster))
    scopes = {p: coverages[p] for p in performers if p in coverages}
    total = session_coverage(scopes.values())
    if total is not None:
        scopes[SESSION_SCOPE] = total
    suggestion = ledger.suggest_next_cue(
        {p: coverages.get(p) or _empty(session, p) for p in roster},
        vocabulary,
        scene_targets(session),
    )
    return {
        "labels": labels,
        "performers": performers,
        "cells": {
            p: {label: _cell(cell) for label, cell in coverage.cells.items()}
            for p, coverage in scopes.items()
        },
        "windows": {p: coverage.windows for p, coverage in scopes.items()},
        "as_of_us": None if total is None else total.ts_us,
        "hit": {p: _hit_rows(labels, coverage) for p, coverage in scopes.items()},
        "confusion": {
            p: {intended: dict(row) for intended, row in coverage.confusion.items()}
            for p, coverage in scopes.items()
        },
        "targets": scene_targets(session),
        "suggestion": None if suggestion is None else _suggestion(suggestion),
    }


def _empty(session: records.SessionRecord, performer_id: str) -> records.Coverage:
    """A performer with no ledger yet: nothing shown at all."""
    return records.Coverage(
        ts_us=session.created_ts_us,
        session_id=session.session_id,
        performer_id=performer_id,
        window_us=1,
        windows=0,
    )


def _suggestion(suggestion: ledger.Suggestion) -> dict[str, Any]:
    return {
        "performer_id": suggestion.performer_id,
        "label": suggestion.label,
        "reason": suggestion.reason,
    }
