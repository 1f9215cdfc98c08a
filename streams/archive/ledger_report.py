"""The ledger of an archived session: per take, what each performer was meant to show,
what they tagged themselves, what observers perceived and what was measured, window by
window (``livetag export --format ledger``).

Everything comes from the newest revision of each label window (the one a live consumer
ends up with), by the rules of :mod:`streams.labels.ledger`: the intent is the window's
``intent`` as the aligner placed it (the cue in force at the window's midpoint, else the
scenario arc's step), *perceived* is the observers' majority label (directors and
observers; never a performer's tags), *agreed* at least two observers tagging with at least 2/3
of them holding the perceived label. Takes group the windows as in the model gap
(:func:`streams.archive.model_gap.by_group`: a window belongs to the take holding its start;
the windows outside every take form ``no-take``, written only when there are some).

Files (per group, in ``ledger/``):

- ``take-N.parquet`` and ``.csv``: a row per performer per window: its time (session clock,
  seconds from the take's start and from the media's 0), the intended label with its
  source (``cue`` or ``arc``), the cue in force (id, kind, text, whether the page showed it)
  and the arc's label, the performer's targets, the labels they tagged themselves, the
  perceived label with the number of observers and whether they agreed or disputed it,
  the consensus of all raters, the model's answer (its top label, ``(none)`` where it read
  a face without one; the first model by name that read the window) and a few features
  (f0 and loudness means, the share of frames with a face, the top blendshape);
- ``take-N.summary.parquet`` and ``.csv``: per performer and emotion (the vocabulary's, then
  any other seen), the seconds intended, self-tagged, perceived, agreed, hit (intended and
  perceived alike) and disputed (records.CoverageCell), the hit rate (hit / intended) and
  the hit rate where observers perceived anything;
- ``take-N.png`` (with matplotlib, the ``report`` extra; skipped with a warning without
  it): the confusion matrix intended x perceived over the windows with an intended
  emotion, and the take's timeline with four lanes per performer: intended, self-tagged,
  perceived (solid where observers agreed), measured (the model's answer);
- ``take-N.md``: a short report a director reads after the scene: the summary table, the
  confusion in words, and the picture's file name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pyarrow as pa

from streams import records
from streams.archive import model_gap, store
from streams.labels import ledger

__all__ = [
    "LEDGER_SCHEMA",
    "SUMMARY_SCHEMA",
    "LedgerRow",
    "LedgerSummaryRow",
    "TakeLedger",
    "export_ledger",
    "ledger_rows",
    "report",
    "summary_rows",
]

log = logging.getLogger(__name__)

FOLDER: Final = "ledger"
DIGITS: Final = 4


@dataclass(frozen=True, slots=True)
class LedgerRow:
    session_id: str
    take_id: int | None
    performer_id: str
    ts_us: int
    end_ts_us: int
    take_start_s: float | None
    media_start_s: float
    intended_label: str | None
    intended_intensity: str | None
    intended_source: str | None
    cue_id: str | None
    cue_kind: str | None
    cue_text: str | None
    cue_shown: bool | None
    arc_label: str | None
    targets: str
    self_tagged: str
    perceived_label: str | None
    observers: int
    agreed: bool
    disputed: bool
    consensus: str | None
    consensus_agreement: float | None
    model: str | None
    model_label: str | None
    model_probability: float | None
    f0_mean_hz: float | None
    loudness_mean_db: float | None
    face_present_fraction: float | None
    top_blendshape: str | None
    top_blendshape_value: float | None
    revision: int


@dataclass(frozen=True, slots=True)
class LedgerSummaryRow:
    session_id: str
    take_id: int | None
    performer_id: str
    label: str
    intended_s: float
    self_tagged_s: float
    perceived_s: float
    agreed_s: float
    hit_s: float
    disputed_s: float
    hit_rate: float | None
    hit_rate_where_perceived: float | None


_TEXT, _INT, _FLOAT, _BOOL = pa.string(), pa.int64(), pa.float64(), pa.bool_()
LEDGER_SCHEMA: Final = pa.schema(
    [
        pa.field("session_id", _TEXT, nullable=False),
        pa.field("take_id", _INT),
        pa.field("performer_id", _TEXT, nullable=False),
        pa.field("ts_us", _INT, nullable=False),
        pa.field("end_ts_us", _INT, nullable=False),
        pa.field("take_start_s", _FLOAT),
        pa.field("media_start_s", _FLOAT, nullable=False),
        pa.field("intended_label", _TEXT),
        pa.field("intended_intensity", _TEXT),
        pa.field("intended_source", _TEXT),
        pa.field("cue_id", _TEXT),
        pa.field("cue_kind", _TEXT),
        pa.field("cue_text", _TEXT),
        pa.field("cue_shown", _BOOL),
        pa.field("arc_label", _TEXT),
        pa.field("targets", _TEXT, nullable=False),
        pa.field("self_tagged", _TEXT, nullable=False),
        pa.field("perceived_label", _TEXT),
        pa.field("observers", _INT, nullable=False),
        pa.field("agreed", _BOOL, nullable=False),
        pa.field("disputed", _BOOL, nullable=False),
        pa.field("consensus", _TEXT),
        pa.field("consensus_agreement", _FLOAT),
        pa.field("model", _TEXT),
        pa.field("model_label", _TEXT),
        pa.field("model_probability", _FLOAT),
        pa.field("f0_mean_hz", _FLOAT),
        pa.field("loudness_mean_db", _FLOAT),
        pa.field("face_present_fraction", _FLOAT),
        pa.field("top_blendshape", _TEXT),
        pa.field("top_blendshape_value", _FLOAT),
        pa.field("revision", _INT, nullable=False),
    ]
)
SUMMARY_SCHEMA: Final = pa.schema(
    [
        pa.field("session_id", _TEXT, nullable=False),
        pa.field("take_id", _INT),
        pa.field("performer_id", _TEXT, nullable=False),
        pa.field("label", _TEXT, nullable=False),
        *(
            pa.field(name, _FLOAT, nullable=False)
            for name in (
                "intended_s",
                "self_tagged_s",
                "perceived_s",
                "agreed_s",
                "hit_s",
                "disputed_s",
            )
        ),
        pa.field("hit_rate", _FLOAT),
        pa.field("hit_rate_where_perceived", _FLOAT),
    ]
)


@dataclass(frozen=True, slots=True)
class TakeLedger:
    group: model_gap.Group
    windows: list[records.LabelWindow]
    rows: list[LedgerRow]
    summary: list[LedgerSummaryRow]
    coverage: dict[str, records.Coverage]  # per performer, over the group's windows


# ---------------------------------------------------------------- rows


def _measured(window: records.LabelWindow) -> tuple[str | None, str | None, float | None]:
    """The first model by name that read the window: its name, answer, and probability."""
    for estimate in sorted(window.models, key=lambda e: e.model):
        answer = model_gap.model_answer(estimate)
        if answer is not None:
            return estimate.model, answer, model_gap.model_answer_probability(estimate)
    return None, None, None


def ledger_rows(
    session_id: str,
    group: model_gap.Group,
    windows: Sequence[records.LabelWindow],
    *,
    t0_us: int,
    vocabulary: Sequence[str],
) -> list[LedgerRow]:
    """A row per window of the group (newest revisions), by performer and time."""
    rows = []
    for window in sorted(windows, key=lambda w: (w.performer_id, w.ts_us)):
        intent = window.intent
        cue = None if intent is None else intent.cue
        seen = ledger.perceived(window, vocabulary)
        model, answer, probability = _measured(window)
        features = window.features
        top = next(iter(features.top_blendshapes.items()), None)
        in_take = group.take_id is not None and group.start_us is not None
        rows.append(
            LedgerRow(
                session_id=session_id,
                take_id=group.take_id,
                performer_id=window.performer_id,
                ts_us=window.ts_us,
                end_ts_us=window.ts_us + window.window_us,
                take_start_s=_seconds(window.ts_us, group.start_us) if in_take else None,
                media_start_s=_seconds(window.ts_us, t0_us),
                intended_label=None if intent is None else intent.label,
                intended_intensity=None
                if intent is None or intent.label is None
                else intent.intensity,
                intended_source=None if intent is None else intent.source,
                cue_id=None if cue is None else cue.cue_id,
                cue_kind=None if cue is None else cue.kind,
                cue_text=None if cue is None or cue.kind != "text" else cue.text,
                cue_shown=None if cue is None else cue.shown,
                arc_label=None if intent is None else intent.arc_label,
                targets=",".join([] if intent is None else intent.targets),
                self_tagged=",".join(_ordered(ledger.self_tagged(window), vocabulary)),
                perceived_label=seen.label,
                observers=seen.observers,
                agreed=seen.agreed,
                disputed=seen.disputed,
                consensus=window.consensus,
                consensus_agreement=None
                if window.consensus_agreement is None
                else float(window.consensus_agreement),
                model=model,
                model_label=answer,
                model_probability=probability,
                f0_mean_hz=_float(features.f0_mean_hz),
                loudness_mean_db=_float(features.loudness_mean_db),
                face_present_fraction=_float(features.face_present_fraction),
                top_blendshape=None if top is None else top[0],
                top_blendshape_value=None if top is None else float(top[1]),
                revision=window.revision,
            )
        )
    return rows


def _float(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def _seconds(ts_us: int, origin_us: int | None) -> float:
    assert origin_us is not None
    return round((ts_us - origin_us) / 1e6, 6)


def _ordered(labels: set[str] | Sequence[str], vocabulary: Sequence[str]) -> list[str]:
    """Labels in the vocabulary's order, then any others alphabetically."""
    rank = {label: n for n, label in enumerate(vocabulary)}
    return sorted(set(labels), key=lambda label: (rank.get(label, len(rank)), label))


def summary_rows(
    session_id: str,
    group: model_gap.Group,
    coverage: dict[str, records.Coverage],
    vocabulary: Sequence[str],
) -> list[LedgerSummaryRow]:
    """Per performer, per emotion of the vocabulary (then any other they have seconds of)."""
    out = []
    for performer_id, found in sorted(coverage.items()):
        for label in _ordered([*vocabulary, *found.cells], vocabulary):
            cell = found.cells.get(label) or records.CoverageCell()
            out.append(
                LedgerSummaryRow(
                    session_id=session_id,
                    take_id=group.take_id,
                    performer_id=performer_id,
                    label=label,
                    intended_s=float(cell.intended_s),
                    self_tagged_s=float(cell.self_tagged_s),
                    perceived_s=float(cell.perceived_s),
                    agreed_s=float(cell.agreed_s),
                    hit_s=float(cell.hit_s),
                    disputed_s=float(cell.disputed_s),
                    hit_rate=ledger.hit_rate(found, label),
                    hit_rate_where_perceived=ledger.hit_rate_where_perceived(found, label),
                )
            )
    return out


def report(
    session: records.SessionRecord, windows: Sequence[records.LabelWindow], *, t0_us: int
) -> list[TakeLedger]:
    """The ledger of every take (each one, even without windows) and of the windows
    outside takes (only when there are some), from the newest revision of each window."""
    vocabulary = [entry.label for entry in session.vocabulary]
    out = []
    for group, mine in model_gap.by_group(session, store.latest_labels(windows)).items():
        book = ledger.CoverageBook(session.session_id, vocabulary)
        for window in mine:
            book.add(window)
        coverage = {performer: book.coverage(performer) for performer in book.performers()}
        out.append(
            TakeLedger(
                group=group,
                windows=mine,
                rows=ledger_rows(
                    session.session_id, group, mine, t0_us=t0_us, vocabulary=vocabulary
                ),
                summary=summary_rows(session.session_id, group, coverage, vocabulary),
                coverage=coverage,
            )
        )
    return out


def confusion(take: TakeLedger) -> dict[str, dict[str, int]]:
    """Windows by intended emotion, then by what observers perceived, every performer
    of the take together."""
    total: dict[str, dict[str, int]] = {}
    for found in take.coverage.values():
        for intended, row in found.confusion.items():
            into = total.setdefault(intended, {})
            for answer, n in row.items():
                into[answer] = into.get(answer, 0) + n
    return total


# ---------------------------------------------------------------- files


def _markdown(session: records.SessionRecord, take: TakeLedger, picture: str | None) -> str:
    group = take.group
    vocabulary = [entry.label for entry in session.vocabulary]
    lines = [f"# Ledger of {session.session_id}, {group.name}", ""]
    if group.take_id is not None and group.start_us is not None:
        span = (
            "still running"
            if group.end_us is None
            else f"{(group.end_us - group.start_us) / 1e6:.1f} s"
        )
        lines.append(f"Take {group.take_id}: {span}.")
    else:
        lines.append("The windows outside every take.")
    performers = sorted({row.performer_id for row in take.rows})
    intended = sum(1 for row in take.rows if row.intended_label is not None)
    lines += [
        f"Performers: {', '.join(performers) or 'none'}; {len(take.rows)} label windows, "
        f"{intended} of them with an intended emotion.",
        "",
        "Seconds per performer and emotion (only emotions with any):",
        "",
        "| performer | emotion | intended | self-tagged | perceived | agreed | hit | disputed "
        "| hit rate |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in take.summary:
        values = (row.intended_s, row.self_tagged_s, row.perceived_s, row.agreed_s)
        if not any(values) and not row.disputed_s:
            continue
        rate = "" if row.hit_rate is None else f"{row.hit_rate:.0%}"
        lines.append(
            f"| {row.performer_id} | {row.label} | {row.intended_s:g} | {row.self_tagged_s:g} "
            f"| {row.perceived_s:g} | {row.agreed_s:g} | {row.hit_s:g} | {row.disputed_s:g} "
            f"| {rate} |"
        )
    lines += ["", "Intended emotion -> what observers perceived (windows):", ""]
    matrix = confusion(take)
    if not matrix:
        lines.append("No window had an intended emotion.")
    for label in _ordered(list(matrix), vocabulary):
        answers = matrix[label]
        parts = ", ".join(
            f"{answer} {n}"
            for answer, n in sorted(answers.items(), key=lambda item: (-item[1], item[0]))
        )
        lines.append(f"- {label}: {parts}")
    lines.append("")
    if picture is None:
        lines.append("No picture: matplotlib is not installed (pip install 'livetag[report]').")
    else:
        lines.append(f"Picture: [{picture}]({picture}) (confusion matrix and the four lanes).")
    lines.append("")
    return "\n".join(lines)


def export_ledger(
    folder: Path, out_dir: Path, progress: Callable[[str, int, int], None]
) -> list[Path]:
    """Write the ledger of the session archived in ``folder`` into ``out_dir/ledger``; the
    paths written. Pictures need matplotlib (the ``report`` extra): without it they are
    skipped with a warning, the tables and reports are written all the same."""
    manifest = store.read_manifest(folder)
    session = store.manifest_session(folder, manifest)
    t0_us = manifest.get("t0_us")
    if not isinstance(t0_us, int) or isinstance(t0_us, bool):
        raise store.ArchiveError(f"{folder / store.MANIFEST}: t0_us is not an integer")
    takes = report(session, store.read_records(folder, "labels"), t0_us=t0_us)
    if not any(row.intended_label for take in takes for row in take.rows):
        log.warning(
            "%s: no label window has an intended emotion (no cue or scenario arc): the "
            "ledger shows what was tagged and perceived only",
            session.session_id,
        )
    target = out_dir / FOLDER
    target.mkdir(parents=True, exist_ok=True)
    plotter = model_gap.optional_plotter("streams.archive.ledger_plot", "ledger plots")
    written: list[Path] = []
    for done, take in enumerate(takes):
        progress("writing the ledger", done, len(takes))
        name = take.group.name
        for rows, schema, stem in (
            (take.rows, LEDGER_SCHEMA, name),
            (take.summary, SUMMARY_SCHEMA, f"{name}.summary"),
        ):
            parquet, text = target / f"{stem}.parquet", target / f"{stem}.csv"
            model_gap.write_table(rows, schema, parquet, text)
            written += [parquet, text]
        picture = None
        if plotter is not None:
            picture = target / f"{name}.png"
            plotter(session, take, t0_us, picture)
            written.append(picture)
        notes = target / f"{name}.md"
        notes.write_text(
            _markdown(session, take, None if picture is None else picture.name), encoding="utf-8"
        )
        written.append(notes)
    progress("writing the ledger", len(takes), len(takes))
    return written
