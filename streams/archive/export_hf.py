"""Export archived sessions as a Hugging Face dataset folder (``livetag export --format hf``).

Written with pyarrow only (``datasets`` is not a livetag dependency); the folder loads with
``datasets.load_dataset("parquet", data_dir=OUT)`` and with ``load_dataset(OUT)``::

    OUT/README.md                               dataset card: YAML front matter + sections
    OUT/data/train-00000-of-0000N-DIGEST.parquet
                                                one shard per session (with label windows),
                                                one row group per performer
    OUT/media/SESSION/PERFORMER.mkv             the archived media (hard link, copy,
                                                symlink, or left out: ``media``)

One row per label window, the newest revision of each (:func:`store.latest_labels`).
The shard names follow the ``data/{split}-NNNNN-of-NNNNN*`` convention, which ``datasets``
tries first, so nothing else in the folder (the media, whatever their names) is ever taken
for data; the card's ``configs`` section lists the same files for ``load_dataset(OUT)``.

The four lanes of the ledger are columns: the intended lane (``intended_*``: the director's
cue in force and the scenario's arc, from the window's ``intent``), the self lane
(``self_labels``), the perceived lane (``perceived_labels``) and the measured one (the
feature columns).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from pydantic import ValidationError

from streams import records
from streams.archive import store
from streams.archive.export import ExportError, Progress, _latest, _max_hold_us, _media_files
from streams.runtime.private_files import private_dir, private_file

__all__ = [
    "COLUMNS",
    "DEFAULT_CONSENT_SCOPE",
    "MEDIA_MODES",
    "SCHEMA",
    "MediaMode",
    "export_dataset",
    "sessions_started_on",
]

MediaMode = Literal["link", "copy", "symlink", "none"]
MEDIA_MODES: Final[tuple[str, ...]] = ("link", "copy", "symlink", "none")
DEFAULT_LICENSE: Final = "other"
DEFAULT_CONSENT_SCOPE: Final = (
    "NOT FILLED IN. The dataset owner must state here what the performers and raters "
    "consented to: who may use their faces, voices and tags, for which purposes, for how "
    "long, and whether this dataset may be shared beyond the team that recorded it. "
    "Do not share the dataset before this is filled in (livetag export --consent-scope)."
)
# A Hugging Face license id (lowercase, like cc-by-4.0, apache-2.0, other).
log = logging.getLogger(__name__)

_LICENSE_ID: Final = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,63}$")
_SPLIT: Final = "train"

_LABEL = pa.struct([("label", pa.string()), ("intensity", pa.string()), ("tag_id", pa.string())])
_RATER = pa.struct(
    [("rater_id", pa.string()), ("rater_role", pa.string()), ("labels", pa.list_(_LABEL))]
)
_BLENDSHAPE = pa.struct([("name", pa.string()), ("score", pa.float64())])
_DIMENSIONS: Final[tuple[records.RatingDimension, ...]] = get_args(records.RatingDimension)
_RATING_TRACE = pa.struct(
    [
        ("rater_id", pa.string()),
        ("rater_role", pa.string()),
        ("mode", pa.string()),
        ("label", pa.string()),
        *((f"{dim}_mean", pa.float64()) for dim in _DIMENSIONS),
        *((f"{dim}_last", pa.float64()) for dim in _DIMENSIONS),
        ("coverage", pa.float64()),
        ("samples", pa.int64()),
        ("lag_us", pa.int64()),
        ("lag_method", pa.string()),
    ]
)
_PROBABILITY = pa.struct([("label", pa.string()), ("probability", pa.float64())])
_MODEL_READING = pa.struct(
    [
        ("model", pa.string()),
        ("top_label", pa.string()),
        ("probabilities", pa.list_(_PROBABILITY)),
        ("valence", pa.float64()),
        ("arousal", pa.float64()),
        ("frames_read", pa.int64()),
    ]
)
_CUE = pa.struct(
    [
        ("cue_id", pa.string()),
        ("kind", pa.string()),
        ("label", pa.string()),
        ("intensity", pa.string()),
        ("text", pa.string()),
        ("since_ts_us", pa.int64()),
        ("shown", pa.bool_()),
    ]
)

#: Every column: name, Arrow type, meaning (the card's column table is made from this).
COLUMNS: Final[tuple[tuple[str, pa.DataType, str], ...]] = (
    ("session_id", pa.string(), "The session (its archive folder's name)."),
    ("performer_id", pa.string(), "The performer the window is about."),
    (
        "take_id",
        pa.int64(),
        "The take whose span holds the window's start (the manifest's takes; a take "
        "without an end runs to the end of the session); null outside takes.",
    ),
    (
        "start_ts_us",
        pa.int64(),
        "Window start, integer µs on the session clock (the capture server's wall clock, "
        "µs since the Unix epoch).",
    ),
    ("end_ts_us", pa.int64(), "Window end (exclusive), µs on the session clock."),
    ("window_us", pa.int64(), "Window length, µs (end_ts_us - start_ts_us)."),
    (
        "t0_us",
        pa.int64(),
        "The session's media start on the session clock: media time 0 of every "
        "performer's media file of the session.",
    ),
    (
        "media_file",
        pa.string(),
        "The performer's archived video+audio (Matroska: MJPEG at the analysis size, 16 kHz "
        "PCM), relative to the dataset folder: media/SESSION/PERFORMER.mkv; null when the "
        "performer has no archived media.",
    ),
    (
        "media_start_s",
        pa.float64(),
        "Window start in seconds of media time: (start_ts_us - t0_us) / 1e6. Slightly "
        "negative for a window that starts before the first captured instant.",
    ),
    ("media_end_s", pa.float64(), "Window end in seconds of media time."),
    ("f0_mean_hz", pa.float64(), "Mean fundamental frequency of the voiced prosody hops, Hz."),
    ("loudness_mean_db", pa.float64(), "Mean loudness of the window's prosody hops, dB."),
    ("voiced_fraction", pa.float64(), "Share of the prosody hops that are voiced, 0-1."),
    ("face_present_fraction", pa.float64(), "Share of analysed frames with a face, 0-1."),
    (
        "top_blendshapes",
        pa.list_(_BLENDSHAPE),
        "The strongest mean face blendshapes of the window (MediaPipe names), score 0-1.",
    ),
    ("head_yaw_deg", pa.float64(), "Mean head yaw, degrees."),
    ("head_pitch_deg", pa.float64(), "Mean head pitch, degrees."),
    ("head_roll_deg", pa.float64(), "Mean head roll, degrees."),
    ("prosody_hops", pa.int64(), "10 ms prosody hops the prosody fields summarise."),
    ("face_frames", pa.int64(), "Analysed video frames the face fields summarise."),
    (
        "face_frames_skipped",
        pa.int64(),
        "Video frames of the window the processors knowingly left unanalysed.",
    ),
    (
        "intended_label",
        pa.string(),
        "Intended lane: the emotion the scene meant the performer to show over the window, "
        "the director's emotion cue in force, else the scenario arc's step; null: none.",
    ),
    (
        "intended_intensity",
        pa.string(),
        "Intensity of the intended label (normal|strong); null without one.",
    ),
    (
        "intended_source",
        pa.string(),
        "Where the intended label comes from: cue or arc; null without one.",
    ),
    (
        "intended_cue",
        _CUE,
        "The director's cue on the performer's page over the window (an emotion or a line "
        "of text): cue_id, kind, label, intensity, text, since_ts_us (when the page showed "
        "it, or when it was sent while the page had not said so), shown; null: no cue.",
    ),
    (
        "intended_arc_label",
        pa.string(),
        "The scenario arc's emotion at the window; null: the scenario has no arc there.",
    ),
    (
        "intended_targets",
        pa.list_(pa.string()),
        "The target emotions of the performer's part in the scenario; empty: none.",
    ),
    (
        "self_labels",
        pa.list_(_LABEL),
        "Portrayal / self lane: the performer's own tags active in the window (label, "
        "intensity normal|strong, tag_id).",
    ),
    (
        "perceived_labels",
        pa.list_(_RATER),
        "Perceived lane: per observer or director who holds a tag in the window, their "
        "rater_id, rater_role and active tags.",
    ),
    (
        "rating_traces",
        pa.list_(_RATING_TRACE),
        "Perceived lane, continuous: per rater who rated the performer over the window "
        "(valence/arousal pad or one emotion's intensity slider), the mean and last value "
        "of each rated dimension (-1 to 1; null: not rated in this mode), coverage (share "
        "of the window's sample slots with a sample), samples, and the reaction-lag "
        "correction applied (lag_us, lag_method; null: none).",
    ),
    (
        "model_readings",
        pa.list_(_MODEL_READING),
        "Measured lane, a model's reading of the window: per model, its top label, its "
        "probability per label, valence and arousal where it gives them, and the frames "
        "it read.",
    ),
    (
        "consensus",
        pa.string(),
        "The label most raters hold in the window (self and perceived lanes together, a "
        "rater counted once per label); null on a tie or when nobody holds one.",
    ),
    (
        "consensus_agreement",
        pa.float64(),
        "Share of the raters holding any label in the window who hold the consensus, 0-1.",
    ),
    *(
        (
            f"missing_{stream}",
            pa.string(),
            f"Why the window lacks {stream} features (late, ended, no_media, absent); null: "
            f"the {stream} stream is in it.",
        )
        for stream in records.FEATURE_STREAMS
    ),
    ("complete", pa.bool_(), "The window lacks no feature stream."),
    ("revision", pa.int64(), "The window's revision (0 first; each late tag or feature +1)."),
    ("correction", pa.bool_(), "This revision was made by a tag that came late."),
    (
        "final_after_us",
        pa.int64(),
        "Session-clock instant after which no revision of the window comes (its end + the "
        "grace); null in archives made before it was recorded.",
    ),
)
SCHEMA: Final = pa.schema([(name, arrow) for name, arrow, _ in COLUMNS])


def _window_row(
    window: records.LabelWindow,
    *,
    t0_us: int,
    media_file: str | None,
    takes: Sequence[records.Take],
) -> dict[str, Any]:
    features = window.features
    pose = features.head_pose
    end_us = window.ts_us + window.window_us
    self_labels: list[dict[str, str]] = []
    perceived: list[dict[str, Any]] = []
    for rater in window.raters:
        labels = [label.model_dump() for label in rater.labels]
        # A performer may tag only themself (the tag service refuses anything else): a
        # performer's tags on their own windows are the portrayal, everyone else perceives.
        if rater.rater_role == "performer" and rater.rater_id == window.performer_id:
            self_labels.extend(labels)
        else:
            perceived.append(
                {"rater_id": rater.rater_id, "rater_role": rater.rater_role, "labels": labels}
            )
    intent = window.intent
    row: dict[str, Any] = {
        "session_id": window.session_id,
        "performer_id": window.performer_id,
        "take_id": _take_of(window.ts_us, takes),
        "start_ts_us": window.ts_us,
        "end_ts_us": end_us,
        "window_us": window.window_us,
        "t0_us": t0_us,
        "media_file": media_file,
        "media_start_s": (window.ts_us - t0_us) / 1e6,
        "media_end_s": (end_us - t0_us) / 1e6,
        "f0_mean_hz": features.f0_mean_hz,
        "loudness_mean_db": features.loudness_mean_db,
        "voiced_fraction": features.voiced_fraction,
        "face_present_fraction": features.face_present_fraction,
        "top_blendshapes": [
            {"name": name, "score": float(score)}
            for name, score in features.top_blendshapes.items()
        ],
        "head_yaw_deg": None if pose is None else pose.yaw_deg,
        "head_pitch_deg": None if pose is None else pose.pitch_deg,
        "head_roll_deg": None if pose is None else pose.roll_deg,
        "prosody_hops": features.prosody_hops,
        "face_frames": features.face_frames,
        "face_frames_skipped": features.face_frames_skipped,
        "intended_label": None if intent is None else intent.label,
        "intended_intensity": None if intent is None or intent.label is None else intent.intensity,
        "intended_source": None if intent is None else intent.source,
        "intended_cue": None if intent is None or intent.cue is None else intent.cue.model_dump(),
        "intended_arc_label": None if intent is None else intent.arc_label,
        "intended_targets": [] if intent is None else list(intent.targets),
        "self_labels": self_labels,
        "perceived_labels": perceived,
        "rating_traces": [_rating_trace(trace) for trace in window.ratings],
        "model_readings": [_model_reading(model) for model in window.models],
        "consensus": window.consensus,
        "consensus_agreement": window.consensus_agreement,
        "complete": not window.missing,
        "revision": window.revision,
        "correction": window.correction,
        "final_after_us": window.final_after_us,
    }
    for stream in records.FEATURE_STREAMS:
        row[f"missing_{stream}"] = window.missing.get(stream)
    # Number fields may hold an int (180 rather than 180.0): the columns are float64.
    for name, arrow, _ in COLUMNS:
        if arrow == pa.float64() and isinstance(row[name], int):
            row[name] = float(row[name])
    return row


def _rating_trace(trace: records.RaterTrace) -> dict[str, Any]:
    row: dict[str, Any] = {
        "rater_id": trace.rater_id,
        "rater_role": trace.rater_role,
        "mode": trace.mode,
        "label": trace.label,
        "coverage": float(trace.coverage),
        "samples": trace.samples,
        "lag_us": None if trace.lag is None else trace.lag.lag_us,
        "lag_method": None if trace.lag is None else trace.lag.method,
    }
    for dim in _DIMENSIONS:
        for kind, values in (("mean", trace.mean), ("last", trace.last)):
            value = values.get(dim)
            row[f"{dim}_{kind}"] = None if value is None else float(value)
    return row


def _model_reading(model: records.ModelEstimate) -> dict[str, Any]:
    return {
        "model": model.model,
        "top_label": model.top_label,
        "probabilities": [
            {"label": label, "probability": float(probability)}
            for label, probability in model.probabilities.items()
        ],
        "valence": None if model.valence is None else float(model.valence),
        "arousal": None if model.arousal is None else float(model.arousal),
        "frames_read": model.frames_read,
    }


def _take_of(ts_us: int, takes: Sequence[records.Take]) -> int | None:
    running = [
        take
        for take in takes
        if take.start_ts_us <= ts_us and (take.end_ts_us is None or ts_us < take.end_ts_us)
    ]
    if not running:
        return None
    # Overlapping takes (not made by livetag, but possible in a manifest): the one started
    # last is the one running.
    return max(running, key=lambda take: take.start_ts_us).take_id


# ---------------------------------------------------------------- one session


@dataclass(slots=True)
class _SessionFigures:
    """What the card says about one session."""

    folder: Path
    session: records.SessionRecord
    manifest: dict[str, Any]
    t0_us: int
    media_files: dict[str, str | None]
    takes: list[records.Take]
    windows: int = 0
    incomplete: int = 0
    missing: Counter[str] = field(default_factory=Counter)
    without_media: int = 0
    window_lengths: set[int] = field(default_factory=set)
    grace_us: set[int] = field(default_factory=set)
    last_us: int = 0
    performers_with_windows: set[str] = field(default_factory=set)

    @property
    def session_id(self) -> str:
        return self.session.session_id


def _open_session(folder: Path) -> _SessionFigures:
    if not (folder / store.MANIFEST).is_file():
        raise ExportError(f"{folder} is not a session archive (it has no {store.MANIFEST})")
    manifest = store.read_manifest(folder)
    session = store.manifest_session(folder, manifest)
    t0_us = manifest.get("t0_us")
    if not isinstance(t0_us, int) or isinstance(t0_us, bool):
        raise store.ArchiveError(f"{folder / store.MANIFEST}: t0_us is not an integer")
    media_files = _media_files(folder, manifest)
    documents = manifest.get("takes", [take.model_dump() for take in session.takes])
    try:
        if not isinstance(documents, list):
            raise TypeError("not a list")
        takes = [records.Take.model_validate(document) for document in documents]
    except (ValidationError, TypeError) as exc:
        raise store.ArchiveError(f"{folder / store.MANIFEST}: takes are malformed: {exc}") from None
    last = [
        entry["last_ts_us"]
        for entry in manifest.get("performers", {}).values()
        if isinstance(entry.get("last_ts_us"), int)
    ]
    return _SessionFigures(
        folder=folder,
        session=session,
        manifest=manifest,
        t0_us=t0_us,
        media_files=media_files,
        takes=takes,
        last_us=max(last, default=t0_us),
    )


def _write_shard(figures: _SessionFigures, path: Path) -> bool:
    """The session's windows, one row group per performer (only one performer's rows are
    ever held as Arrow data at once); False when it has none (no file is written)."""
    windows = _latest(figures.folder)
    if not windows:
        return False
    by_performer: dict[str, list[records.LabelWindow]] = {}
    for window in windows:  # latest_labels sorts by performer, then ts_us
        by_performer.setdefault(window.performer_id, []).append(window)
    with pq.ParquetWriter(path, SCHEMA) as writer:
        for performer_id, items in by_performer.items():
            media = figures.media_files.get(performer_id)
            media_file = None if media is None else _dataset_media_path(figures, performer_id)
            rows = [
                _window_row(w, t0_us=figures.t0_us, media_file=media_file, takes=figures.takes)
                for w in items
            ]
            writer.write_table(pa.Table.from_pylist(rows, schema=SCHEMA))
            figures.performers_with_windows.add(performer_id)
            for window in items:
                figures.windows += 1
                figures.window_lengths.add(window.window_us)
                end_us = window.ts_us + window.window_us
                figures.last_us = max(figures.last_us, end_us)
                if window.final_after_us is not None:
                    figures.grace_us.add(window.final_after_us - end_us)
                if window.missing:
                    figures.incomplete += 1
                    figures.missing.update(window.missing.values())
                if media_file is None:
                    figures.without_media += 1
    return True


def _dataset_media_path(figures: _SessionFigures, performer_id: str) -> str:
    return f"media/{figures.session_id}/{performer_id}.mkv"


def _place_media(figures: _SessionFigures, out_dir: Path, mode: MediaMode) -> None:
    if mode == "none":
        return
    for performer_id, media in sorted(figures.media_files.items()):
        if media is None:
            continue
        source = figures.folder / media
        if not source.is_file():
            raise store.ArchiveError(f"{source} is named in the manifest but missing")
        target = out_dir / _dataset_media_path(figures, performer_id)
        # Media are people's faces and voices: owner-only, as in the archive.
        private_dir(target.parent)
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.unlink(missing_ok=True)
        if mode == "symlink":
            temporary.symlink_to(source.resolve())
        elif mode == "copy" or not _hard_link(source, temporary):
            shutil.copyfile(source, temporary)
            private_file(temporary)
        temporary.replace(target)


def _remove_other_media(out_dir: Path, session_ids: set[str]) -> None:
    """Remove the media of sessions an earlier export into ``out_dir`` had and this one
    has not: the card no longer names them, and a session left out (its consent withdrawn)
    must not stay behind in the folder."""
    media_dir = out_dir / "media"
    if not media_dir.is_dir():
        return
    for folder in media_dir.iterdir():
        if folder.name not in session_ids and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)


def _hard_link(source: Path, target: Path) -> bool:
    try:
        os.link(source, target)
    except OSError:  # another file system, or one without hard links: copy instead
        return False
    return True


# ---------------------------------------------------------------- the dataset


def export_dataset(
    folders: Sequence[Path],
    out_dir: Path,
    *,
    media: MediaMode = "link",
    license_id: str = DEFAULT_LICENSE,
    consent_scope: str | None = None,
    progress: Progress | None = None,
) -> list[Path]:
    """Write the archived sessions in ``folders`` as one Hugging Face dataset folder in
    ``out_dir``; the paths written (card, shards, media). ``progress`` hears of every
    session done."""
    if not folders:
        raise ExportError("no session to export")
    if media not in MEDIA_MODES:
        raise ExportError(f"unknown media mode {media!r}; expected one of {', '.join(MEDIA_MODES)}")
    if not _LICENSE_ID.match(license_id):
        raise ExportError(
            f"license {license_id!r} is not a Hugging Face license id (like cc-by-4.0, "
            "apache-2.0 or other)"
        )
    try:
        sessions = sorted(
            (_open_session(folder) for folder in folders), key=lambda s: (s.t0_us, s.session_id)
        )
        ids = Counter(s.session_id for s in sessions)
        if twice := sorted(sid for sid, n in ids.items() if n > 1):
            raise ExportError(f"session {twice[0]} is given twice")
        data_dir = out_dir / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        staged: list[Path] = []
        try:
            for done, figures in enumerate(sessions):
                if progress is not None:
                    progress("exporting sessions", done, len(sessions))
                temporary = data_dir / f".{_SPLIT}-{figures.session_id}.parquet.tmp"
                # A session without label windows gets no shard: datasets cannot read an
                # empty one (it sizes its batches by the first row group). The card lists it.
                if _write_shard(figures, temporary):
                    staged.append(temporary)
                _place_media(figures, out_dir, media)
            _remove_other_media(out_dir, {figures.session_id for figures in sessions})
            if progress is not None:
                progress("exporting sessions", len(sessions), len(sessions))
            if not staged:
                raise ExportError(
                    f"{', '.join(s.session_id for s in sessions)}: no label windows archived, "
                    "nothing to make a dataset of"
                )
            shards = _publish_shards(data_dir, staged)
        finally:
            for temporary in staged:
                temporary.unlink(missing_ok=True)
        card = out_dir / "README.md"
        card.write_text(
            _card(
                sessions,
                shards=[shard.relative_to(out_dir).as_posix() for shard in shards],
                media=media,
                license_id=license_id,
                consent_scope=consent_scope,
            ),
            encoding="utf-8",
        )
        written: list[Path] = list(shards)
        if media != "none":
            written += [
                out_dir / _dataset_media_path(s, performer)
                for s in sessions
                for performer, file in sorted(s.media_files.items())
                if file is not None
            ]
        return [card, *written]
    except store.ArchiveError as exc:
        raise ExportError(str(exc)) from None
    except OSError as exc:  # an output folder that cannot be written, a full disk
        raise ExportError(f"cannot write the dataset into {out_dir}: {exc}") from None


def _publish_shards(data_dir: Path, staged: Sequence[Path]) -> list[Path]:
    """Give the written shards their names, ``train-NNNNN-of-NNNNN-DIGEST.parquet``, and
    remove the shards of an earlier export into the folder (they would be loaded too).

    The digest (of the shard's bytes) is in the name because ``load_dataset(OUT)`` keys
    its cache on the card's ``configs``, not on the files' times: listing content-named
    files there makes a re-export with other data load anew rather than from the cache
    of the earlier one."""
    names = []
    for n, temporary in enumerate(staged):
        digest = hashlib.sha256()
        with temporary.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        names.append(f"{_SPLIT}-{n:05d}-of-{len(staged):05d}-{digest.hexdigest()[:16]}.parquet")
    for old in data_dir.glob(f"{_SPLIT}-*.parquet"):
        if old.name not in names:
            old.unlink()
    shards = []
    for temporary, name in zip(staged, names, strict=True):
        temporary.replace(data_dir / name)
        shards.append(data_dir / name)
    return shards


def sessions_started_on(data_dir: Path, day: dt.date) -> list[Path]:
    """The archived sessions in ``data_dir`` whose media start (``t0_us``) falls on
    ``day`` in UTC: the session clock is UTC wall time and livetag's settings carry no
    time zone, so a day means a UTC day."""
    start = dt.datetime.combine(day, dt.time(), tzinfo=dt.UTC)
    first_us = int(start.timestamp()) * 1_000_000
    end_us = first_us + 86_400 * 1_000_000
    found = []
    if not data_dir.is_dir():
        raise ExportError(f"the data folder {data_dir} does not exist")
    for folder in sorted(data_dir.iterdir()):
        # A folder without a manifest is a session still being recorded: not archived.
        if not (folder / store.MANIFEST).is_file():
            continue
        # One damaged archive must not stop the export of every other day: it is told and
        # left out (an export of that session alone says what is wrong with it).
        try:
            t0_us = store.read_manifest(folder).get("t0_us")
        except store.ArchiveError as exc:
            log.warning("skipped %s: %s", folder, exc)
            continue
        if not isinstance(t0_us, int) or isinstance(t0_us, bool):
            log.warning("skipped %s: its manifest's t0_us is not an integer", folder)
            continue
        if first_us <= t0_us < end_us:
            found.append(folder)
    if not found:
        raise ExportError(f"no archived session in {data_dir} started on {day.isoformat()} (UTC)")
    return found


# ---------------------------------------------------------------- the card


def _size_category(rows: int) -> str:
    for limit, name in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
        (1_000_000_000, "100M<n<1B"),
    ):
        if rows < limit:
            return name
    return "1B<n<10B"


def _cell(value: object) -> str:
    """Text for a Markdown table cell."""
    return " ".join(str(value).split()).replace("|", "\\|") or " "


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return lines


def _utc(ts_us: int) -> str:
    instant = dt.datetime.fromtimestamp(ts_us // 1_000_000, tz=dt.UTC)
    return instant.strftime("%Y-%m-%d %H:%M:%S UTC")


def _ms(values: Iterable[int]) -> str:
    return ", ".join(f"{value / 1000:g}" for value in sorted(set(values))) or "n/a"


def _card(
    sessions: Sequence[_SessionFigures],
    *,
    shards: Sequence[str],
    media: MediaMode,
    license_id: str,
    consent_scope: str | None,
) -> str:
    rows = sum(s.windows for s in sessions)
    if len(sessions) == 1:
        title = f"livetag session {sessions[0].session_id}"
    else:
        title = f"livetag sessions of {', '.join(sorted({_utc(s.t0_us)[:10] for s in sessions}))}"
    metadata = {
        "license": license_id,
        "pretty_name": title,
        "task_categories": ["video-classification", "audio-classification"],
        "tags": ["emotion", "affective-computing", "prosody", "facial-expression", "livetag"],
        "size_categories": [_size_category(rows)],
        "configs": [
            {
                "config_name": "default",
                "data_files": [{"split": _SPLIT, "path": list(shards)}],
            }
        ],
    }
    front_matter = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).splitlines()
    out = ["---", *front_matter, "---", "", f"# {title}", ""]

    out += [
        "## What it is",
        "",
        "Emotion labels of improvised scenes, recorded live with livetag: performers in a "
        "video call, their voice and face analysed frame by frame, and emotion tags pressed "
        "by the performers themselves (portrayal / self) and by observers and the director "
        "(perceived), all placed on one session clock. Each row is one label window of one "
        "performer: the window's feature summary, every rater's active labels, the "
        "consensus, how complete the window is, and where it is in the performer's media "
        "file.",
        "",
        f"{len(sessions)} session(s), {rows} label windows (split `{_SPLIT}`, one Parquet "
        "shard per session).",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        'windows = load_dataset("parquet", data_dir="PATH/TO/THIS/FOLDER")["train"]',
        '# or, with this card\'s configs: load_dataset("PATH/TO/THIS/FOLDER")["train"]',
        "```",
        "",
        "Not recorded by this version: the *intended* lane (the director's cues of what a "
        "performer should portray) and continuous ratings; there are no columns for them.",
        "",
    ]
    if license_id == DEFAULT_LICENSE:
        out += [
            "**License: not set.** The dataset owner must set `license:` in the front matter "
            "above (`livetag export --license ID`) before sharing it.",
            "",
        ]
    out += ["## Consent scope", "", (consent_scope or DEFAULT_CONSENT_SCOPE).strip(), ""]

    out += _vocabulary_section(sessions)
    out += _raters_section(sessions)
    out += _alignment_section(sessions)
    out += _sessions_section(sessions, media)

    out += ["## Columns", "", *_table(["column", "type", "meaning"], _column_rows()), ""]
    return "\n".join(out)


def _column_rows() -> list[tuple[str, str, str]]:
    return [(f"`{name}`", str(arrow), meaning) for name, arrow, meaning in COLUMNS]


def _vocabulary_section(sessions: Sequence[_SessionFigures]) -> list[str]:
    users: dict[str, list[str]] = {}
    entries: dict[str, records.VocabularyEntry] = {}
    for s in sessions:
        for entry in s.session.vocabulary:
            entries.setdefault(entry.label, entry)
            users.setdefault(entry.label, []).append(s.session_id)
    everyone = [s.session_id for s in sessions]
    rows = [
        (
            f"`{label}`",
            entry.description,
            "yes" if entry.intensity else "no",
            "all" if users[label] == everyone else ", ".join(users[label]),
        )
        for label, entry in entries.items()
    ]
    return [
        "## Label vocabulary",
        "",
        "The labels raters could press (the sessions' vocabularies, from their manifests). "
        "`strong` is the intensity a rater gives with Shift.",
        "",
        *_table(["label", "description", "strong allowed", "sessions"], rows),
        "",
    ]


def _raters_section(sessions: Sequence[_SessionFigures]) -> list[str]:
    rows = []
    for s in sessions:
        for rater in s.manifest.get("raters", []):
            if not isinstance(rater, dict):
                continue
            lane = "self" if rater.get("role") == "performer" else "perceived"
            lags = rater.get("reaction_lag_us", [])
            rows.append(
                (
                    s.session_id,
                    rater.get("rater_id"),
                    rater.get("role"),
                    lane,
                    rater.get("tags"),
                    _ms(lags) if isinstance(lags, list) else "n/a",
                    _ms([rater["clock_offset_us_median"]])
                    if isinstance(rater.get("clock_offset_us_median"), int)
                    else "n/a",
                    _ms([rater["rtt_us_median"]])
                    if isinstance(rater.get("rtt_us_median"), int)
                    else "n/a",
                )
            )
    header = [
        "session",
        "rater",
        "role",
        "lane",
        "tags",
        "reaction lag ms",
        "median clock offset ms",
        "median rtt ms",
    ]
    return [
        "## Raters",
        "",
        "Everyone who tagged, from the manifests: tags counts every tag event (presses, "
        "key-ups, undos). The reaction lag (measured or set per rater) was subtracted from "
        "their tags; the clock offset (session clock minus the rater's clock) and round "
        "trip are the medians of their tags' clock sync. Performers tag only themselves "
        "(the self lane); observers and the director make the perceived lane.",
        "",
        *(_table(header, rows) if rows else ["Nobody tagged in these sessions."]),
        "",
    ]


def _alignment_section(sessions: Sequence[_SessionFigures]) -> list[str]:
    lengths = {length for s in sessions for length in s.window_lengths}
    grace = {value for s in sessions for value in s.grace_us}
    holds = {_max_hold_us(s.manifest) for s in sessions}
    # The grace is not in the manifest; each window's final_after_us is its end + grace.
    grace_text = f"{_ms(grace)} ms" if grace else "label_grace_s, not recorded in these archives"
    return [
        "## How labels were aligned",
        "",
        f"- **Windows.** Per performer, back-to-back windows of {_ms(lengths)} ms on the "
        "session clock, from their first to their last captured instant. A window holds "
        "every tag that covers any instant of it, per rater, with the feature summary of "
        "the prosody hops and analysed video frames in it.",
        "- **Session clock.** Every time is integer µs on the capture server's wall clock. "
        "Tags were converted from the rater's own clock by NTP-style clock sync; a tag "
        "from someone watching a performer lands on the capture instant of the frame on "
        "their screen; the rater's reaction lag is subtracted.",
        "- **What a tag covers** (one rule for the windows, the ELAN export and the "
        "dashboard): a tap covers its span centred on the press; a hold runs from key-down "
        "to the same rater's key-up, at most the limit on a hold "
        f"({_ms(holds)} ms; a hold without a key-up runs the whole limit); an undo from the "
        "rater who made a tag removes it (a hold whole).",
        "- **Revisions and grace.** A tag or features that come late, within the grace "
        f"({grace_text} after a window's end), re-emit the window as a new revision; "
        "this dataset holds the newest revision of each window (`revision`). The archive is "
        "built only after the grace has passed, so these are the final revisions.",
        "- **Completeness.** `missing_prosody` / `missing_face` say why a window lacks a "
        "stream: `late` (given up on), `ended` (the performer had left), `no_media` (nothing "
        "captured then), `absent` (the performer never had it). Their feature columns are "
        "null then.",
        "- **Agreement.** Each window carries its consensus and the share of raters "
        "holding it; no other agreement figure (such as Krippendorff's alpha) is computed "
        "by this export.",
        "",
    ]


def _sessions_section(sessions: Sequence[_SessionFigures], media: MediaMode) -> list[str]:
    rows = []
    for s in sessions:
        counts = s.manifest.get("counts", {})
        performers = sorted({p.performer_id for p in s.session.roster} | s.performers_with_windows)
        missing = ", ".join(f"{reason} {n}" for reason, n in sorted(s.missing.items()))
        rows.append(
            (
                s.session_id,
                _utc(s.t0_us),
                f"{(s.last_us - s.t0_us) / 1e6:.1f}",
                ", ".join(performers),
                len(s.takes),
                s.windows,
                f"{s.incomplete} ({missing})" if missing else s.incomplete,
                s.without_media,
                ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                if isinstance(counts, dict)
                else "n/a",
            )
        )
    header = [
        "session",
        "media start (t0)",
        "duration s",
        "performers",
        "takes",
        "windows",
        "incomplete",
        "without media file",
        "archive counts",
    ]
    where = {
        "link": "hard links to the archive's files (no extra space; owner-only, as in the "
        "archive), or copies where a hard link is not possible",
        "copy": "copies of the archive's files (owner-only, as in the archive)",
        "symlink": "symbolic links to the archive's files: the folder is not self-contained",
        "none": "not included: they are in the archive, data_dir/SESSION/media/PERFORMER.mkv",
    }[media]
    lines = [
        "## Sessions",
        "",
        "Duration: from the media start to the last captured instant or window end. "
        "Archive counts: records archived per kind, media frames and chunks, and records "
        "that could not be decoded (from the manifest).",
        "",
        *_table(header, rows),
        "",
        f"Media (`media/SESSION/PERFORMER.mkv`): {where}. Media time 0 is `t0_us` for "
        "every file of a session; frames keep their capture instants.",
        "",
    ]
    for s in sessions:
        lines += [f"Prompt of `{s.session_id}`: {_cell(s.session.prompt)}", ""]
    return lines
