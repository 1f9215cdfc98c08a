"""Export an archived session (:mod:`streams.archive.store`) for analysis tools.

:func:`export_session` writes one of seven formats into an output folder:

``jsonl``
    ``KIND.jsonl`` for every archived kind (``prosody``, ``face``, ``tags``, ``labels``,
    ``ratings``, ``rater_lags``, ``model``, ``cues``: :data:`streams.archive.store.KINDS`):
    one record per line, exactly ``record.model_dump_json()`` (the wire JSON).
    ``labels.jsonl`` holds every revision as archived; ``labels.latest.jsonl`` only the
    newest revision of each window (what a live consumer ends up with). Read back with
    :func:`read_jsonl`.
``parquet``
    The archive's own typed Parquet files, copied, plus ``labels.latest.parquet``.
``csv``
    One file per kind with a header row; the columns are the record's fields in
    declaration order. Text fields are written as they are; numbers, booleans and nested
    values (timing, features, raters, blendshapes, landmarks, head_pose, voice_quality)
    are compact JSON text, so ``180`` stays an int and ``180.0`` a float; an empty cell
    is ``None``. :func:`read_csv` rebuilds the exact records.
``eaf``
    ``SESSION.eaf`` for ELAN, linked to every performer's ``media/PERFORMER.mkv``
    (absolute ``file://`` URL plus a path relative to the output folder). ELAN time is
    milliseconds from media start: ``(ts_us - manifest["t0_us"]) / 1000``, rounded,
    negative times clamped to 0 and every annotation at least 1 ms long. Tiers:

    - ``PERFORMER/RATER`` for each rater who tagged that performer: each tag covers
      what it covers in the label windows, by the one rule of :mod:`streams.labels.tag_rules`
      with the session's ``tag_max_hold_us`` from the manifest (30 s for archives that
      do not record it): a point tag spans ``[ts - span // 2, ts - span // 2 + span)``
      (span capped at the limit on a hold, moved to start at 0 if it would start before
      the session clock's 0); a hold runs from its onset to the earliest offset of the
      same rater, at most the limit, and a hold without one runs the whole limit. The
      value is the label, plus ``" (strong)"`` for a strong tag. Undone tags are left
      out (an undo counts only from the rater who made the tag); undoing an onset or any
      offset of a hold removes the whole hold (there is no redo: an undo of an undo
      changes nothing). The result does not depend on the tags' order in the archive.
      ELAN does not allow annotations on one tier to overlap, so when a rater's tags
      overlap, the later ones go to overflow tiers ``PERFORMER/RATER~2``, ``~3``...
    - ``PERFORMER/consensus`` from the label windows (newest revision of each), with
      consecutive, contiguous windows of the same consensus label merged into one
      annotation; windows without a consensus are left out.

    :func:`read_eaf_tags` parses a file back (with pympi) into tier -> annotations.

``hf``
    A Hugging Face dataset folder (:mod:`streams.archive.export_hf`): ``data/train-*.parquet``
    with one row per label window (newest revision), its features as typed columns, the
    self and perceived label lanes, the consensus, completeness and the window's place in
    the performer's media; the media files under ``media/SESSION/``; and a dataset card
    (``README.md``). ``datasets.load_dataset("parquet", data_dir=OUT)`` and
    ``load_dataset(OUT)`` load it. :func:`streams.archive.export_hf.export_dataset` writes several
    sessions into one dataset.
``gap``
    The model gap report (:mod:`streams.archive.model_gap`): per take, ``model_gap/take-N``
    as Parquet and CSV (the windows where the human raters agreed and a model did not),
    ``take-N.summary`` (per model and emotion: agreement, Cohen's kappa) and ``take-N.png``
    (with matplotlib, the ``report`` extra; skipped with a warning without it).
``ledger``
    The intent -> perception ledger (:mod:`streams.archive.ledger_report`): per take,
    ``ledger/take-N`` as Parquet and CSV (a row per performer per label window: intended,
    self-tagged, perceived, measured), ``take-N.summary`` (per performer and emotion: the
    seconds of each, the hit rate), ``take-N.png`` (confusion matrix and the four lanes;
    with matplotlib) and ``take-N.md`` (a short report to read after the scene).

The ``parquet`` export keeps the record types as they are (nested fields as JSON text):
``datasets.load_dataset("parquet", data_files={"tags": "*/tags.parquet", "labels":
"*/labels.latest.parquet"})`` reads it too; ``hf`` is the one made for training.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

import pyarrow.parquet as pq
from pydantic import ValidationError
from pympi.Elan import Eaf

from streams import records, strict_json
from streams.archive import ledger_report, model_gap, store
from streams.errors import BadInputError
from streams.labels import tag_rules

__all__ = [
    "FORMATS",
    "ExportError",
    "export_session",
    "read_csv",
    "read_eaf_tags",
    "read_jsonl",
]

Format = Literal["jsonl", "parquet", "csv", "eaf", "hf", "gap", "ledger"]
FORMATS: Final[tuple[str, ...]] = ("jsonl", "parquet", "csv", "eaf", "hf", "gap", "ledger")
CONSENSUS_TIER: Final = "consensus"
_MKV_MIME: Final = "video/x-matroska"


class ExportError(BadInputError, ValueError):
    """The folder is not a session archive, or the format is unknown."""


#: ``(step, done, total)``: how far an export is (``livetag export`` draws it on a terminal).
Progress = Callable[[str, int, int], None]


def _no_progress(step: str, done: int, total: int) -> None:
    return None


def export_session(
    folder: Path, out_dir: Path, fmt: Format, *, progress: Progress | None = None
) -> list[Path]:
    """Write the session archived in ``folder`` as ``fmt`` into ``out_dir``; the paths.
    ``progress`` hears of every file written."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
    manifest_path = folder / store.MANIFEST
    if not manifest_path.is_file():
        raise ExportError(f"{folder} is not a session archive (it has no {store.MANIFEST})")
    if fmt == "hf":
        # Imported here: streams.archive.export_hf builds on this module's helpers.
        from streams.archive.export_hf import export_dataset

        return export_dataset([folder], out_dir, progress=progress)
    try:
        manifest = store.read_manifest(folder)
        out_dir.mkdir(parents=True, exist_ok=True)
        report = progress or _no_progress
        if fmt == "jsonl":
            return _export_jsonl(folder, out_dir, report)
        if fmt == "parquet":
            return _export_parquet(folder, out_dir, report)
        if fmt == "csv":
            return _export_csv(folder, out_dir, report)
        if fmt == "gap":
            return model_gap.export_gap(folder, out_dir, report)
        if fmt == "ledger":
            return ledger_report.export_ledger(folder, out_dir, report)
        report("writing ELAN tiers", 0, 1)
        written = [_export_eaf(folder, out_dir, manifest)]
        report("writing ELAN tiers", 1, 1)
        return written
    except store.ArchiveError as exc:
        raise ExportError(str(exc)) from None


def _latest(folder: Path) -> list[records.LabelWindow]:
    return store.latest_labels(store.read_records(folder, "labels"))


# ---------------------------------------------------------------- jsonl


def _write_jsonl(path: Path, rows: Iterable[records.Record]) -> Path:
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for record in rows:
            handle.write(record.model_dump_json())
            handle.write("\n")
    return path


def _export_jsonl(folder: Path, out_dir: Path, report: Progress) -> list[Path]:
    total = len(store.KINDS) + 1
    written: list[Path] = []
    for kind in store.KINDS:
        report("writing JSON lines", len(written), total)
        written.append(_write_jsonl(out_dir / f"{kind}.jsonl", store.read_records(folder, kind)))
    report("writing JSON lines", len(written), total)
    written.append(_write_jsonl(out_dir / "labels.latest.jsonl", _latest(folder)))
    report("writing JSON lines", len(written), total)
    return written


def read_jsonl(path: Path, kind: str) -> list[records.Record]:
    """The records of a JSONL export file of ``kind`` (prosody, face, tags, labels);
    :class:`ExportError` names the first line that is not one."""
    model = _model(kind)
    out = []
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                document = strict_json.loads_object(line, max_bytes=records.MAX_JSON_RECORD_BYTES)
                out.append(model.model_validate(document))
            except strict_json.JsonInputError as exc:
                raise ExportError(f"{path} line {number}: {exc.reason}") from None
            except ValidationError as exc:
                reason = records.RecordError.from_validation(exc, model.record_type).reason
                raise ExportError(f"{path} line {number}: {reason}") from None
    return out


def _model(kind: str) -> type[records.Record]:
    try:
        return store.KINDS[kind]
    except KeyError:
        raise ExportError(
            f"unknown record kind {kind!r}; expected one of {', '.join(store.KINDS)}"
        ) from None


# ---------------------------------------------------------------- parquet


def _export_parquet(folder: Path, out_dir: Path, report: Progress) -> list[Path]:
    total = len(store.KINDS) + 1
    written: list[Path] = []
    for kind, model in store.KINDS.items():
        report("writing Parquet", len(written), total)
        source, target = folder / f"{kind}.parquet", out_dir / f"{kind}.parquet"
        if source.is_file():
            shutil.copyfile(source, target)
        else:  # a kind nothing was recorded for: an empty table of the same schema
            pq.write_table(store.record_table(model, []), target)
        written.append(target)
    report("writing Parquet", len(written), total)
    target = out_dir / "labels.latest.parquet"
    pq.write_table(store.record_table(records.LabelWindow, _latest(folder)), target)
    written.append(target)
    report("writing Parquet", len(written), total)
    return written


# ---------------------------------------------------------------- csv


def _is_text(annotation: Any) -> bool:
    """Whether a field holds text (written as is); anything else is written as JSON."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(options) and all(_is_text(option) for option in options)
    if origin is typing.Literal:
        return all(isinstance(value, str) for value in typing.get_args(annotation))
    return annotation is str


def _nullable(model: type[records.Record], name: str) -> bool:
    annotation = model.model_fields[name].annotation
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    return type(None) in typing.get_args(annotation)


def _csv_columns(model: type[records.Record]) -> list[tuple[str, bool]]:
    """(field name, is text) in declaration order."""
    return [(name, _is_text(field.annotation)) for name, field in model.model_fields.items()]


def _export_csv(folder: Path, out_dir: Path, report: Progress) -> list[Path]:
    written: list[Path] = []
    for kind, model in store.KINDS.items():
        report("writing CSV", len(written), len(store.KINDS))
        path = out_dir / f"{kind}.csv"
        _write_csv(path, model, store.read_records(folder, kind))
        written.append(path)
    report("writing CSV", len(written), len(store.KINDS))
    return written


def _write_csv(path: Path, model: type[records.Record], rows: Sequence[records.Record]) -> None:
    columns = _csv_columns(model)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([name for name, _ in columns])
        for record in rows:
            dumped = record.model_dump(mode="json")
            cells = []
            for name, text in columns:
                value = dumped.get(name)
                if value is None:
                    cells.append("")
                elif text:
                    cells.append(str(value))
                else:
                    cells.append(json.dumps(value, separators=(",", ":"), ensure_ascii=False))
            writer.writerow(cells)


def read_csv(path: Path, kind: str) -> list[records.Record]:
    """The exact records of a CSV export file of ``kind`` (prosody, face, tags, labels)."""
    model = _model(kind)
    columns = _csv_columns(model)
    out = []
    number = 1
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            expected = [name for name, _ in columns]
            if header != expected:
                raise ExportError(f"{path}: header {header} is not the {kind} columns {expected}")
            for number, cells in enumerate(reader, start=2):
                out.append(_csv_record(model, columns, cells, f"{path} line {number}"))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ExportError(f"{path} after line {number}: {exc}") from None
    return out


def _csv_record(
    model: type[records.Record], columns: list[tuple[str, bool]], cells: list[str], where: str
) -> records.Record:
    if len(cells) != len(columns):
        raise ExportError(f"{where}: {len(cells)} cells, expected {len(columns)}")
    row: dict[str, Any] = {}
    for (name, text), cell in zip(columns, cells, strict=True):
        if cell == "":
            # An empty cell is None, but where a text field cannot be None: empty text
            # (a cue's text).
            row[name] = "" if text and not _nullable(model, name) else None
        elif text:
            row[name] = cell
        else:
            try:
                row[name] = strict_json.loads(cell, max_bytes=records.MAX_JSON_RECORD_BYTES)
            except strict_json.JsonInputError as exc:
                raise ExportError(f"{where}, {name}: {exc.reason}") from None
    try:
        return model.model_validate(row)
    except ValidationError as exc:
        reason = records.RecordError.from_validation(exc, model.record_type).reason
        raise ExportError(f"{where}: {reason}") from None


# ---------------------------------------------------------------- eaf


@dataclass(frozen=True, slots=True)
class _Span:
    start_us: int
    end_us: int
    value: str


def _tag_value(interval: tag_rules.TagInterval) -> str:
    label = interval.label
    return f"{label} (strong)" if interval.intensity == "strong" else label


def _tag_spans(
    tags: Sequence[records.TagEvent], max_hold_us: int
) -> dict[tuple[str, str], list[_Span]]:
    """Per (performer, rater): what their tags still standing cover, by the rule the
    label windows follow (streams.labels.tag_rules), so the tiers and the consensus agree."""
    # Every rater who tagged the performer keeps a tier, even if all of it was undone.
    spans: dict[tuple[str, str], list[_Span]] = {
        (tag.performer_id, tag.rater_id): [] for tag in tags
    }
    for interval in tag_rules.tag_intervals(tags, max_hold_us=max_hold_us):
        spans[(interval.performer_id, interval.rater_id)].append(
            _Span(interval.start_us, interval.end_us, _tag_value(interval))
        )
    return spans


def _max_hold_us(manifest: dict[str, Any]) -> int:
    """The limit on a hold the session's labels were made with (archives built before it
    was recorded: the default, which they were made with unless configured otherwise)."""
    value = manifest.get("tag_max_hold_us")
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return tag_rules.DEFAULT_MAX_HOLD_US


def _consensus_spans(windows: Sequence[records.LabelWindow]) -> dict[str, list[_Span]]:
    """Per performer: runs of contiguous windows with the same consensus label."""
    by_performer: dict[str, list[records.LabelWindow]] = {}
    for window in windows:
        by_performer.setdefault(window.performer_id, []).append(window)
    out: dict[str, list[_Span]] = {}
    for performer, items in by_performer.items():
        items.sort(key=lambda w: w.ts_us)
        runs: list[_Span] = []
        for n, window in enumerate(items):
            end = window.ts_us + window.window_us
            if n + 1 < len(items):  # overlapping windows: each one ends where the next starts
                end = min(end, items[n + 1].ts_us)
            if window.consensus is None:
                continue
            if runs and runs[-1].value == window.consensus and window.ts_us <= runs[-1].end_us:
                runs[-1] = _Span(runs[-1].start_us, max(end, runs[-1].end_us), window.consensus)
            else:
                runs.append(_Span(window.ts_us, end, window.consensus))
        out[performer] = runs
    return out


def _lanes(spans: Iterable[tuple[int, int, str]]) -> list[list[tuple[int, int, str]]]:
    """Spans laid out so that no lane holds overlapping ones (first lane first)."""
    lanes: list[list[tuple[int, int, str]]] = []
    for span in sorted(spans):
        for lane in lanes:
            if lane[-1][1] <= span[0]:
                lane.append(span)
                break
        else:
            lanes.append([span])
    return lanes


def _media_files(folder: Path, manifest: dict[str, Any]) -> dict[str, str | None]:
    """Each archived performer's media file (relative to the archive), from the manifest."""
    performers = manifest.get("performers", {})
    if not isinstance(performers, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("media"), str | None)
        for entry in performers.values()
    ):
        raise store.ArchiveError(f"{folder / store.MANIFEST}: performers are malformed")
    return {performer: entry.get("media") for performer, entry in performers.items()}


def _export_eaf(folder: Path, out_dir: Path, manifest: dict[str, Any]) -> Path:
    # Validated: the session id names the output file, the media are linked from it.
    session = store.manifest_session(folder, manifest)
    session_id = session.session_id
    t0_us = manifest.get("t0_us")
    if not isinstance(t0_us, int) or isinstance(t0_us, bool):
        raise store.ArchiveError(f"{folder / store.MANIFEST}: t0_us is not an integer")
    media_files = _media_files(folder, manifest)

    def ms(ts_us: int) -> int:
        return max(0, round((ts_us - t0_us) / 1000))

    def timed(spans: Iterable[_Span]) -> list[tuple[int, int, str]]:
        out = []
        for span in spans:
            start = ms(span.start_us)
            out.append((start, max(ms(span.end_us), start + 1), span.value))
        return out

    tags: list[records.TagEvent] = store.read_records(folder, "tags")
    tag_spans = _tag_spans(tags, _max_hold_us(manifest))
    consensus = _consensus_spans(_latest(folder))
    performers = {performer.performer_id for performer in session.roster}
    performers |= set(media_files)
    performers |= {performer for performer, _ in tag_spans} | set(consensus)

    eaf = Eaf(author="livetag")
    eaf.remove_tier("default")
    for _, media in sorted(media_files.items()):
        if not media:
            continue
        path = (folder / media).resolve()
        relative = Path(os.path.relpath(path, out_dir.resolve())).as_posix()
        if not relative.startswith("../"):
            relative = f"./{relative}"
        eaf.add_linked_file(path.as_uri(), relpath=relative, mimetype=_MKV_MIME)

    def add_tier(tier_id: str, performer: str, annotator: str, spans: list[_Span]) -> None:
        for n, lane in enumerate(_lanes(timed(spans))):
            name = tier_id if n == 0 else f"{tier_id}~{n + 1}"
            eaf.add_tier(name, part=performer, ann=annotator)
            for start, end, value in lane:
                eaf.add_annotation(name, start, end, value)
        if tier_id not in eaf.get_tier_names():  # nothing left on it: keep the tier anyway
            eaf.add_tier(tier_id, part=performer, ann=annotator)

    for performer in sorted(performers):
        raters = sorted(rater for p, rater in tag_spans if p == performer)
        for rater in raters:
            # A rater named "consensus" must not collide with the consensus tier.
            name = rater if rater != CONSENSUS_TIER else f"{rater} (rater)"
            add_tier(f"{performer}/{name}", performer, rater, tag_spans[(performer, rater)])
        add_tier(
            f"{performer}/{CONSENSUS_TIER}", performer, CONSENSUS_TIER, consensus.get(performer, [])
        )

    target = out_dir / f"{session_id}.eaf"
    temporary = out_dir / f".{session_id}.eaf.tmp"
    temporary.unlink(missing_ok=True)  # pympi would keep an existing file as .bak
    eaf.to_file(str(temporary))
    temporary.replace(target)
    return target


def read_eaf_tags(path: Path) -> dict[str, list[tuple[int, int, str]]]:
    """Every tier of an .eaf file and its annotations (start ms, end ms, value), in order."""
    eaf = Eaf(str(path))
    out: dict[str, list[tuple[int, int, str]]] = {}
    for tier in eaf.get_tier_names():
        out[str(tier)] = sorted(
            (int(start), int(end), str(value))
            for start, end, value, *_ in eaf.get_annotation_data_for_tier(tier)
        )
    return out
