"""A session's archive: the durable copy of everything its topics carried.

Layout of ``data_dir/SESSION_ID/``::

    parts/KIND/PPP-FIRST-LAST.parquet   raw Kafka messages as the recorder read them
                                        (written while the session runs; removed once
                                        the archive is complete)
    prosody.parquet face.parquet        one row per record, deduplicated, sorted
    tags.parquet labels.parquet         (labels: every revision; the newest one counts)
    ratings.parquet                     one row per continuous-rating sample (its batch's
                                        fields repeated: rater, mode, label, clock...)
    rater_lags.parquet                  each rater's newest reaction-lag estimate
    model.parquet                       the model lane's readings, one row per window
                                        and model
    cues.parquet                        the director's cues, one row per cue (the record
                                        the performer's page showed, else the one sent)
    media/PERFORMER.mkv                 MJPEG video + 16 kHz PCM audio, media time 0 = t0_us
    media/PERFORMER.video.parquet       per frame: its ts_us, seq, timing, rtp_timestamp
    media/PERFORMER.audio.parquet       per 20 ms chunk: its ts_us, seq, sample_count
    manifest.json                       session, t0_us, performers, raters, takes, the
                                        limit on a hold (tag_max_hold_us), versions,
                                        counts and a sha256 of every file

Crash safety: a part is written to a temporary name, fsynced and renamed, and only then
are the Kafka offsets in it committed; a part's name is its partition and offset range.
After a crash the recorder re-reads from the last committed offset, so a part may be
written again with other bounds: parts are deduplicated by (partition, offset) when the
archive is built, and records by their identity (key + ts_us, tag_id, window + revision).

Typed Parquet columns: a record's scalar fields are columns of their own type; nested
fields (tag timing, voice quality, blendshapes, landmarks...) are JSON text columns, so a
row turns back into the exact record (:func:`read_records`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import types
import typing
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, ClassVar, Final, Literal, TypeVar

import av
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, StrictInt, ValidationError

from streams import records, strict_json
from streams.errors import BadInputError
from streams.labels import tag_rules
from streams.runtime.private_files import private_dir, private_file
from streams.settings import Settings

__all__ = [
    "KINDS",
    "MEDIA_KINDS",
    "RatingSampleRow",
    "RawMessage",
    "build_archive",
    "decode_rows",
    "manifest_session",
    "read_manifest",
    "read_media",
    "read_records",
    "session_dir",
    "write_part",
]

R = TypeVar("R", bound=records.Record)

log = logging.getLogger(__name__)


class RatingSampleRow(records.PerformerRecord):
    """One sample of a continuous rating as the archive keeps it (``ratings.parquet``): the
    sample's own fields beside its batch's, so one row is readable alone (rater, mode,
    label, value) and the batches can be rebuilt (rows of a ``batch_id`` in
    ``sample_index`` order). ``ts_us`` = the sample's, as rated: not lag-corrected
    (``rater_lags.parquet`` and the label windows hold the corrections)."""

    record_type: ClassVar[str] = "rating_sample"
    rater_id: records.ParticipantId
    rater_role: records.Role
    mode: records.RatingMode
    label: records.Label | None = None
    valence: records.Bipolar | None = None
    arousal: records.Bipolar | None = None
    intensity: records.Unit | None = None
    basis: Literal["key_press", "frame_on_screen"]
    client_ts_us: StrictInt
    batch_id: records.TagId
    sample_index: Annotated[StrictInt, Field(ge=0, lt=records.MAX_RATING_SAMPLES)]
    rate_hz: Annotated[StrictInt, Field(ge=1, le=60)]
    clock_offset_us: StrictInt
    clock_uncertainty_us: records.DurationUs
    reaction_lag_us: records.DurationUs
    received_ts_us: records.TimestampUs

    @classmethod
    def rows_of(cls, batch: records.RatingBatch) -> list[RatingSampleRow]:
        return [
            cls(
                ts_us=sample.ts_us,
                session_id=batch.session_id,
                performer_id=batch.performer_id,
                rater_id=batch.rater_id,
                rater_role=batch.rater_role,
                mode=batch.mode,
                label=batch.label,
                valence=sample.valence,
                arousal=sample.arousal,
                intensity=sample.intensity,
                basis=sample.basis,
                client_ts_us=sample.client_ts_us,
                batch_id=batch.batch_id,
                sample_index=index,
                rate_hz=batch.rate_hz,
                clock_offset_us=batch.clock_offset_us,
                clock_uncertainty_us=batch.clock_uncertainty_us,
                reaction_lag_us=batch.reaction_lag_us,
                received_ts_us=batch.received_ts_us,
            )
            for index, sample in enumerate(batch.samples)
        ]


#: Archived record kinds and their record types (the file is ``KIND.parquet``).
KINDS: Final[dict[str, type[records.Record]]] = {
    "prosody": records.ProsodyFrame,
    "face": records.FaceFrame,
    "tags": records.TagEvent,
    "labels": records.LabelWindow,
    "ratings": RatingSampleRow,
    "rater_lags": records.RaterLag,
    "model": records.ModelReading,
    "cues": records.Cue,
}
#: Kinds of which only the newest record per identity is archived (a compacted topic:
#: the newest record per key counts), newest by ``ts_us``, then by offset.
NEWEST_ONLY: Final = frozenset({"rater_lags"})
MEDIA_KINDS: Final = ("audio", "video")
MANIFEST = "manifest.json"
_VIDEO_TIME_BASE = Fraction(1, 1_000_000)
_AUDIO_TIME_BASE = Fraction(1, 16_000)


class ArchiveError(BadInputError, RuntimeError):
    """An archive cannot be built as asked, or its files are not what it wrote; the
    message says why."""


def session_dir(settings: Settings, session_id: str) -> Path:
    return settings.data_dir / session_id


# ---------------------------------------------------------------- raw parts


@dataclass(frozen=True, slots=True)
class RawMessage:
    partition: int
    offset: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


_PART_SCHEMA = pa.schema(
    [
        ("partition", pa.int32()),
        ("offset", pa.int64()),
        ("key", pa.binary()),
        ("value", pa.binary()),
        ("header_names", pa.list_(pa.string())),
        ("header_values", pa.list_(pa.binary())),
    ]
)


def write_part(folder: Path, kind: str, partition: int, messages: Sequence[RawMessage]) -> Path:
    """Write raw messages of one partition durably; the name says which offsets it holds."""
    if not messages:
        raise ValueError("a part holds at least one message")
    target = private_dir(folder / "parts" / kind)
    first, last = messages[0].offset, messages[-1].offset
    path = target / f"{partition:03d}-{first:012d}-{last:012d}.parquet"
    table = pa.table(
        {
            "partition": [m.partition for m in messages],
            "offset": [m.offset for m in messages],
            "key": [m.key for m in messages],
            "value": [m.value for m in messages],
            "header_names": [[name for name, _ in m.headers] for m in messages],
            "header_values": [[value for _, value in m.headers] for m in messages],
        },
        schema=_PART_SCHEMA,
    )
    _write_durably(path, lambda temporary: pq.write_table(table, temporary))
    return path


def read_parts(folder: Path, kind: str) -> Iterator[RawMessage]:
    """Every raw message of a kind once, in (partition, offset) order."""
    seen: set[tuple[int, int]] = set()
    found: list[RawMessage] = []
    for path in sorted((folder / "parts" / kind).glob("*.parquet")):
        for row in pq.read_table(path).to_pylist():
            identity = (row["partition"], row["offset"])
            if identity in seen:
                continue
            seen.add(identity)
            headers = list(zip(row["header_names"], row["header_values"], strict=True))
            found.append(
                RawMessage(row["partition"], row["offset"], row["key"], row["value"], headers)
            )
    found.sort(key=lambda m: (m.partition, m.offset))
    yield from found


def _write_durably(path: Path, write: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(str(temporary))
    private_file(temporary)  # before its final name: never readable by others there
    with temporary.open("rb") as handle:
        os.fsync(handle.fileno())
    temporary.replace(path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


# ---------------------------------------------------------------- typed tables


def _arrow_type(annotation: Any) -> pa.DataType | None:
    """The Arrow type of a scalar field, or None for a nested one (stored as JSON)."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        types_ = {_arrow_type(option) for option in options}
        if len(types_) == 1:
            return types_.pop()
        if types_ == {pa.int64(), pa.float64()}:
            return pa.float64()
        return None
    if origin is typing.Literal:
        values = typing.get_args(annotation)
        return pa.string() if all(isinstance(v, str) for v in values) else pa.int64()
    if annotation in (int,) or getattr(annotation, "__name__", "") == "StrictInt":
        return pa.int64()
    if annotation is float:
        return pa.float64()
    if annotation is bool:
        return pa.bool_()
    if annotation is str:
        return pa.string()
    return None


def _columns(model: type[records.Record]) -> list[tuple[str, pa.DataType | None]]:
    return [(name, _arrow_type(field.annotation)) for name, field in model.model_fields.items()]


def record_table(model: type[records.Record], rows: Sequence[records.Record]) -> pa.Table:
    """Records as a typed table: scalar fields typed, nested fields as JSON text."""
    columns = _columns(model)
    data: dict[str, list[Any]] = {name: [] for name, _ in columns}
    for record in rows:
        dumped = record.model_dump(mode="json")
        for name, arrow in columns:
            value = dumped.get(name)
            if arrow is None:
                value = None if value is None else json.dumps(value, separators=(",", ":"))
            elif arrow == pa.float64() and value is not None:
                value = float(value)
            data[name].append(value)
    schema = pa.schema([(name, arrow or pa.string()) for name, arrow in columns])
    return pa.table(data, schema=schema)


def table_records(model: type[R], table: pa.Table, *, source: str = "table") -> list[R]:
    """The records a :func:`record_table` holds, exactly as they were; a row that is not
    one raises :class:`ArchiveError` naming ``source``, the row and the reason."""
    nested = {name for name, arrow in _columns(model) if arrow is None}
    out = []
    for number, row in enumerate(table.to_pylist()):
        for name in nested:
            cell = row.get(name)
            if cell is None:
                continue
            if not isinstance(cell, str):
                raise ArchiveError(f"{source} row {number}, {name}: not JSON text")
            try:
                row[name] = strict_json.loads(cell, max_bytes=records.MAX_JSON_RECORD_BYTES)
            except strict_json.JsonInputError as exc:
                raise ArchiveError(f"{source} row {number}, {name}: {exc.reason}") from None
        try:
            out.append(model.model_validate(row))
        except ValidationError as exc:
            reason = records.RecordError.from_validation(exc, model.record_type).reason
            raise ArchiveError(f"{source} row {number}: {reason}") from None
    return out


def _read_table(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ArchiveError(f"{path} is not a readable Parquet file: {exc}") from None


def read_records(folder: Path, kind: str) -> list[Any]:
    """A consolidated kind of an archived session (prosody, face, tags, labels);
    :class:`ArchiveError` if its file is not what the archive wrote."""
    model = KINDS[kind]
    path = folder / f"{kind}.parquet"
    if not path.is_file():
        return []
    return table_records(model, _read_table(path), source=str(path))


#: A manifest holds a session record and a few lines per file: far below this.
MAX_MANIFEST_BYTES: Final = 16 * 1024 * 1024


def read_manifest(folder: Path) -> dict[str, Any]:
    """The archive's manifest.json, or :class:`ArchiveError` saying why it is none."""
    path = folder / MANIFEST
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ArchiveError(f"{path} cannot be read: {exc.strerror or exc}") from None
    try:
        return strict_json.loads_object(data, max_bytes=MAX_MANIFEST_BYTES)
    except strict_json.JsonInputError as exc:
        raise ArchiveError(f"{path} is not a manifest: {exc.reason}") from None


def manifest_session(folder: Path, manifest: dict[str, Any]) -> records.SessionRecord:
    """The session record a manifest holds, or :class:`ArchiveError`."""
    document = manifest.get("session")
    if not isinstance(document, dict):
        raise ArchiveError(f"{folder / MANIFEST} holds no session record")
    try:
        return records.SessionRecord.model_validate(document)
    except ValidationError as exc:
        reason = records.RecordError.from_validation(exc, "session").reason
        raise ArchiveError(f"{folder / MANIFEST}: invalid session record: {reason}") from None


def decode_rows(
    kind: str, value: bytes | None, headers: records.Headers | None
) -> Sequence[records.Record]:
    """The archive rows of one message of a kind's topic (a prosody record: one per hop;
    a rating batch: one per sample); raises :class:`records.RecordError`."""
    if kind == "prosody":
        return records.decode(records.ProsodyHops, value, headers).frames()
    if kind == "ratings":
        return RatingSampleRow.rows_of(records.decode(records.RatingBatch, value, headers))
    return [records.decode(KINDS[kind], value, headers)]  # type: ignore[type-var]


def identity(record: records.Record) -> tuple[Any, ...]:
    if isinstance(record, records.TagEvent):
        return (record.tag_id,)
    if isinstance(record, records.LabelWindow):
        return (record.performer_id, record.ts_us, record.revision)
    if isinstance(record, RatingSampleRow):
        return (record.batch_id, record.sample_index)
    if isinstance(record, records.RaterLag):
        return (record.rater_id,)
    if isinstance(record, records.ModelReading):
        return (record.performer_id, record.ts_us, record.model)
    if isinstance(record, records.Cue):
        return (record.cue_id,)
    assert isinstance(record, records.PerformerRecord)
    return (record.performer_id, record.ts_us)


def _rated(row: RatingSampleRow) -> tuple[Any, ...]:
    """What a rating sample says (not when the server received its batch)."""
    return (row.rater_id, row.mode, row.label, row.ts_us, row.valence, row.arousal, row.intensity)


def _fold_reading(
    unique: dict[tuple[Any, ...], records.Record],
    folded: list[records.ModelReading],
    key: tuple[Any, ...],
    reading: records.ModelReading,
    counts: dict[str, int],
) -> None:
    """A model's reading of a window, into the one the archive keeps of it: a second one
    (the window's frames read in two parts: a pause, a restart) folds in as the aligner
    folds it (``records.merge_model_readings``); one of those again (``folded``: every
    reading folded in so far) is a re-delivery and counts once."""
    if reading in folded:
        return
    folded.append(reading)
    known = unique.get(key)
    if known is None:
        unique[key] = reading
        return
    assert isinstance(known, records.ModelReading)
    unique[key] = records.merge_model_readings(known, reading)
    counts["model_readings_merged"] = counts.get("model_readings_merged", 0) + 1


def latest_labels(windows: Iterable[records.LabelWindow]) -> list[records.LabelWindow]:
    """The newest revision of each window (what a live consumer ends up with)."""
    newest: dict[tuple[str, int], records.LabelWindow] = {}
    for window in windows:
        key = (window.performer_id, window.ts_us)
        if key not in newest or window.revision > newest[key].revision:
            newest[key] = window
    return sorted(newest.values(), key=lambda w: (w.performer_id, w.ts_us))


# ---------------------------------------------------------------- building the archive


def build_archive(
    folder: Path,
    session: records.SessionRecord,
    *,
    software: dict[str, str],
    keep_parts: bool = False,
    tag_max_hold_us: int = tag_rules.DEFAULT_MAX_HOLD_US,
) -> dict[str, Any]:
    """Turn the raw parts into the archive's files and manifest (idempotent).

    ``tag_max_hold_us``: the limit on a hold the session was labelled with; the manifest
    keeps it so an export draws every tag as the label windows have it."""
    if not (folder / "parts").is_dir() and (folder / "tags.parquet").is_file():
        # Built before (a crash after the build, before the session was marked archived):
        # never rebuild from nothing over the good files.
        raise ArchiveError(f"{folder} was built already and has no parts to build from")
    counts: dict[str, int] = {"undecodable": 0}
    session_id = session.session_id
    parts = sorted((folder / "parts").rglob("*.parquet"))
    # A long scene's build takes a while: its progress is logged file by file.
    log.info(
        "archive of %s: building from %d parts (%s) in %s",
        session_id,
        len(parts),
        file_size(sum(part.stat().st_size for part in parts)),
        folder,
    )
    decoded: dict[str, list[Any]] = {}
    for kind, model in KINDS.items():
        unique: dict[tuple[Any, ...], records.Record] = {}
        batches: dict[str, list[tuple[Any, ...]]] = {}  # batch_id -> what it rated
        readings: dict[tuple[Any, ...], list[records.ModelReading]] = {}  # folded in unique
        for message in read_parts(folder, kind):
            try:
                found = decode_rows(kind, message.value, message.headers)
            except records.RecordError:
                # Dead-lettered by whoever consumed it for work; the archive counts it.
                counts["undecodable"] += 1
                continue
            found = [r for r in found if getattr(r, "session_id", None) == session_id]
            if found and isinstance(found[0], RatingSampleRow):
                # Idempotent by batch_id, as the tag service is: the first batch by an
                # id counts whole (a re-sent one rates the same; one that does not must
                # not mix its samples into it, and is counted).
                rated = [_rated(row) for row in found if isinstance(row, RatingSampleRow)]
                first = batches.setdefault(found[0].batch_id, rated)
                if first is not rated:
                    if first != rated:
                        counts["rating_batches_conflicting"] = (
                            counts.get("rating_batches_conflicting", 0) + 1
                        )
                    continue
            for record in found:
                key = identity(record)
                if kind in NEWEST_ONLY:
                    # In offset order: a later record of the same instant wins.
                    if key not in unique or record.ts_us >= unique[key].ts_us:
                        unique[key] = record
                elif isinstance(record, records.ModelReading):
                    _fold_reading(unique, readings.setdefault(key, []), key, record, counts)
                elif isinstance(record, records.Cue):
                    # Published twice: sent, then shown; the shown one supersedes.
                    known = unique.get(key)
                    if known is None or (
                        isinstance(known, records.Cue)
                        and known.shown_ts_us is None
                        and record.shown_ts_us is not None
                    ):
                        unique[key] = record
                else:
                    unique.setdefault(key, record)
        rows = sorted(
            unique.values(), key=lambda r: (getattr(r, "performer_id", ""), r.ts_us, identity(r))
        )
        decoded[kind] = rows
        table = record_table(model, rows)
        _write_durably(folder / f"{kind}.parquet", lambda t, table=table: pq.write_table(table, t))
        counts[kind] = len(rows)
        what = f"{len(rows)} records"
        if kind == "ratings":
            counts["rating_batches"] = len(batches)
            what = f"{len(rows)} samples of {len(batches)} batches"
        _log_written(folder, session_id, f"{kind}.parquet", what)

    media = _gather_media(folder, session_id, counts)
    starts = [chunk.header.ts_us for items in media.values() for chunk in items]
    t0_us = min(starts) if starts else session.created_ts_us
    performers: dict[str, Any] = {}
    private_dir(folder / "media")
    for performer_id, items in sorted(media.items()):
        performers[performer_id] = _write_media(folder, session_id, performer_id, items, t0_us)
    counts["video"] = sum(p["video_frames"] for p in performers.values())
    counts["audio"] = sum(p["audio_chunks"] for p in performers.values())

    manifest = {
        "session": session.model_dump(mode="json"),
        "t0_us": t0_us,
        "media_time": "media time 0 = t0_us; a frame at media time t was captured at t0_us + t",
        "performers": performers,
        "raters": _raters(decoded["tags"], decoded["ratings"], decoded["rater_lags"]),
        "takes": [take.model_dump() for take in session.takes],
        "tag_max_hold_us": tag_max_hold_us,
        "software": software,
        "counts": counts,
        "files": {},
    }
    manifest["files"] = {
        str(path.relative_to(folder)): _sha256(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and path.name != MANIFEST
        and not path.name.startswith(".")
        and "parts" not in path.relative_to(folder).parts
    }
    text = json.dumps(manifest, indent=2, sort_keys=True)
    _write_durably(folder / MANIFEST, lambda t: Path(t).write_text(text, encoding="utf-8"))
    listed = [folder / name for name in typing.cast(dict[str, str], manifest["files"])]
    _log_written(folder, session_id, MANIFEST, f"{len(listed)} files listed")
    log.info(
        "archive of %s: complete, %s in %d files",
        session_id,
        file_size(sum(path.stat().st_size for path in [*listed, folder / MANIFEST])),
        len(listed) + 1,
    )
    # Only now, with the manifest durable, may the raw parts go.
    if not keep_parts:
        shutil.rmtree(folder / "parts", ignore_errors=True)
    return manifest


def _gather_media(
    folder: Path, session_id: str, counts: dict[str, int]
) -> dict[str, list[records.AudioChunk | records.VideoFrame]]:
    by_performer: dict[str, dict[tuple[str, int], records.AudioChunk | records.VideoFrame]] = {}
    for kind in MEDIA_KINDS:
        for message in read_parts(folder, kind):
            item: records.AudioChunk | records.VideoFrame
            try:
                if kind == "audio":
                    item = records.decode(records.AudioChunk, message.value, message.headers)
                else:
                    item = records.decode(records.VideoFrame, message.value, message.headers)
            except records.RecordError:
                counts["undecodable"] += 1
                continue
            header = item.header
            if header.session_id != session_id:
                continue
            bucket = by_performer.setdefault(header.performer_id, {})
            bucket.setdefault((kind, header.ts_us), item)
    return {
        performer: sorted(items.values(), key=lambda i: i.header.ts_us)
        for performer, items in by_performer.items()
    }


def _write_media(
    folder: Path,
    session_id: str,
    performer_id: str,
    items: Sequence[records.AudioChunk | records.VideoFrame],
    t0_us: int,
) -> dict[str, Any]:
    frames = [i for i in items if isinstance(i, records.VideoFrame)]
    chunks = [i for i in items if isinstance(i, records.AudioChunk)]
    path = folder / "media" / f"{performer_id}.mkv"
    temporary = path.with_name(f".{path.name}.tmp")
    container = av.open(str(temporary), "w", format="matroska")
    video: Any = None
    audio: Any = None
    if frames:
        video = container.add_stream("mjpeg", rate=15)
        video.width, video.height = frames[0].header.width, frames[0].header.height
        video.pix_fmt = "yuvj420p"
        video.time_base = _VIDEO_TIME_BASE
    if chunks:
        audio = container.add_stream("pcm_s16le", rate=16_000, layout="mono")
        audio.time_base = _AUDIO_TIME_BASE
    for item in items:  # already in capture order
        if isinstance(item, records.VideoFrame):
            packet = av.Packet(item.jpeg)
            packet.stream = video
            packet.time_base = _VIDEO_TIME_BASE
            packet.pts = packet.dts = item.header.ts_us - t0_us
        else:
            packet = av.Packet(item.pcm)
            packet.stream = audio
            packet.time_base = _AUDIO_TIME_BASE
            packet.pts = packet.dts = round((item.header.ts_us - t0_us) * 16_000 / 1e6)
        container.mux(packet)
    container.close()
    private_file(temporary)
    with temporary.open("rb") as handle:
        os.fsync(handle.fileno())
    temporary.replace(path)
    _log_written(
        folder,
        session_id,
        f"media/{path.name}",
        f"{len(frames)} video frames, {len(chunks)} audio chunks",
    )
    index_columns = ("ts_us", "seq", "timing", "rtp_timestamp", "replayed")
    for name, rows, extra in (
        ("video", frames, ("width", "height")),
        ("audio", chunks, ("sample_count",)),
    ):
        table = pa.table(
            {
                column: [getattr(item.header, column) for item in rows]
                for column in (*index_columns, *extra)
            }
        )
        index = folder / "media" / f"{performer_id}.{name}.parquet"
        pq.write_table(table, index)
        private_file(index)
        _log_written(folder, session_id, f"media/{index.name}", f"{len(rows)} rows")
    return {
        "media": f"media/{performer_id}.mkv",
        "video_frames": len(frames),
        "audio_chunks": len(chunks),
        "first_ts_us": items[0].header.ts_us if items else None,
        "last_ts_us": items[-1].header.ts_us if items else None,
    }


def read_media(folder: Path, performer_id: str) -> list[records.AudioChunk | records.VideoFrame]:
    """A performer's archived media as records again, in capture order (for replay)."""
    session_id = manifest_session(folder, read_manifest(folder)).session_id
    index = {
        name: _read_table(folder / "media" / f"{performer_id}.{name}.parquet").to_pylist()
        for name in ("video", "audio")
    }
    payloads: dict[str, list[bytes]] = {"video": [], "audio": []}
    media = folder / "media" / f"{performer_id}.mkv"
    try:
        container = av.open(str(media))
        try:
            for packet in container.demux():
                if packet.size == 0:
                    continue
                kind = "video" if packet.stream.type == "video" else "audio"
                payloads[kind].append(bytes(packet))
        finally:
            container.close()
    except (OSError, av.FFmpegError) as exc:
        raise ArchiveError(f"{media} cannot be read: {exc}") from None
    out: list[records.AudioChunk | records.VideoFrame] = []
    for kind in ("video", "audio"):
        if len(index[kind]) != len(payloads[kind]):
            raise ArchiveError(
                f"{performer_id}: {len(index[kind])} {kind} rows in the index, "
                f"{len(payloads[kind])} in the media file"
            )
    try:
        for row, jpeg in zip(index["video"], payloads["video"], strict=True):
            frame = records.VideoFrameHeader(
                session_id=session_id, performer_id=performer_id, **row
            )
            out.append(records.VideoFrame(frame, jpeg))
        for row, pcm in zip(index["audio"], payloads["audio"], strict=True):
            chunk = records.AudioChunkHeader(
                session_id=session_id, performer_id=performer_id, **row
            )
            out.append(records.AudioChunk(chunk, pcm))
    except (ValidationError, records.RecordError, TypeError) as exc:
        raise ArchiveError(f"{performer_id}: a media index row is invalid: {exc}") from None
    out.sort(key=lambda item: item.header.ts_us)
    return out


def _raters(
    tags: Sequence[records.TagEvent],
    ratings: Sequence[RatingSampleRow],
    lags: Sequence[records.RaterLag],
) -> list[dict[str, Any]]:
    """Every rater who tagged or rated: their tags and rating samples, the reaction lags
    their pages sent, the median clock offset (and rtt, which only tags carry), and the
    lag correction the aligner applied last (null: none estimated)."""
    by_rater: dict[str, list[records.TagEvent | RatingSampleRow]] = {}
    everything: list[records.TagEvent | RatingSampleRow] = [*tags, *ratings]
    for item in everything:
        by_rater.setdefault(item.rater_id, []).append(item)
    applied = {lag.rater_id: lag for lag in lags}
    raters = []
    for rater_id, own in sorted(by_rater.items()):
        own_tags = [t for t in own if isinstance(t, records.TagEvent)]
        own_samples = [r for r in own if isinstance(r, RatingSampleRow)]
        offsets = sorted(
            [t.timing.clock_offset_us for t in own_tags] + [r.clock_offset_us for r in own_samples]
        )
        rtts = sorted(t.timing.rtt_us for t in own_tags)
        lag = applied.get(rater_id)
        raters.append(
            {
                "rater_id": rater_id,
                "role": own[0].rater_role,
                "tags": len(own_tags),
                "rating_samples": len(own_samples),
                "reaction_lag_us": sorted(
                    {t.timing.reaction_lag_us for t in own_tags}
                    | {r.reaction_lag_us for r in own_samples}
                ),
                "clock_offset_us_median": offsets[len(offsets) // 2],
                "rtt_us_median": rtts[len(rtts) // 2] if rtts else None,
                "lag_applied": None if lag is None else lag.applied.model_dump(mode="json"),
            }
        )
    return raters


def file_size(size: int) -> str:
    """A byte count as people read it (1000-based, as ``ls --si`` and file managers)."""
    if size < 1000:
        return f"{size} B"
    value = size / 1000
    for unit in ("kB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def _log_written(folder: Path, session_id: str, name: str, what: str) -> None:
    size = file_size((folder / name).stat().st_size)
    log.info("archive of %s: wrote %s (%s, %s)", session_id, name, what, size)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
