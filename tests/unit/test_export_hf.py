"""`livetag export --format hf`: a dataset folder that Hugging Face `datasets` loads, one
row per newest label window, with its card."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from infra.cli import main
from streams import records
from streams.archive import store
from streams.archive.export import ExportError, export_session
from streams.archive.export_hf import COLUMNS, export_dataset
from streams.kafka import topics
from tests.archive_samples import SID, T0, carried, sample_records, session
from tests.documentation import marked_block

HOUR_US = 3_600_000_000
DAY_US = 24 * HOUR_US
_TIMING = records.TagTiming(
    client_press_ts_us=T0, clock_offset_us=2_500, rtt_us=1_200, clock_uncertainty_us=600
)


@pytest.fixture
def load_dataset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """datasets.load_dataset, offline, caching under tmp_path."""
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import datasets  # type: ignore[import-untyped]
    import huggingface_hub.constants

    # Read from the environment when first imported: also right if imported before.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    def load(path: Path, *, as_parquet: bool = False) -> Any:
        if as_parquet:
            return datasets.load_dataset("parquet", data_dir=str(path), cache_dir=str(cache))
        return datasets.load_dataset(str(path), cache_dir=str(cache))

    return load


def _tag(
    sid: str, shift: int, tag_id: str, performer: str, rater: str, role: records.Role
) -> records.TagEvent:
    return records.TagEvent(
        ts_us=T0 + shift + 400_000,
        session_id=sid,
        performer_id=performer,
        tag_id=tag_id,
        rater_id=rater,
        rater_role=role,
        action="point",
        label="laughter",
        span_us=300_000,
        timing=_TIMING,
        received_ts_us=T0 + shift + 450_000,
    )


def _window(sid: str, shift: int, performer: str, k: int, **fields: Any) -> records.LabelWindow:
    values: dict[str, Any] = {
        "features": records.WindowFeatures(),
        "raters": [],
        "consensus": None,
    }
    values.update(fields)
    return records.LabelWindow(
        ts_us=T0 + shift + k * 100_000,
        session_id=sid,
        performer_id=performer,
        window_us=100_000,
        **values,
    )


def _labelled(sid: str, shift: int) -> dict[str, list[Any]]:
    """What a tagged scene adds to the sample: self, observer and director tags, and
    newer revisions of some windows carrying them (one revised twice)."""
    laughter_self = records.ActiveLabel(label="laughter", intensity="strong", tag_id="self-ana-1")
    laughter_r1 = records.ActiveLabel(label="laughter", intensity="normal", tag_id="obs-r1-ana")
    amusement = records.ActiveLabel(label="amusement", intensity="normal", tag_id="dir-ana-1")
    raters = [
        records.RaterLabels(rater_id="ana", rater_role="performer", labels=[laughter_self]),
        records.RaterLabels(rater_id="r1", rater_role="observer", labels=[laughter_r1]),
        records.RaterLabels(rater_id="dir1", rater_role="director", labels=[amusement]),
    ]
    features = records.WindowFeatures(
        f0_mean_hz=180,  # an int: the column is float64 all the same
        loudness_mean_db=-21.25,
        voiced_fraction=0.7,
        face_present_fraction=1.0,
        top_blendshapes={"mouthSmileLeft": 0.7, "jawOpen": 0.25},
        head_pose=records.HeadPose(yaw_deg=1.5, pitch_deg=-2.0, roll_deg=0.5),
        prosody_hops=10,
        face_frames=2,
        face_frames_skipped=1,
    )
    labels = [
        _window(
            sid,
            shift,
            "ana",
            k,
            features=features,
            raters=raters,
            consensus="laughter",
            consensus_agreement=0.6667,
            revision=1,
            correction=True,
            final_after_us=T0 + shift + (k + 1) * 100_000 + 30_000_000,
            missing={"face": "late"},
            intent=records.Intent(
                label="laughter",
                intensity="strong",
                source="cue",
                cue=records.CueInForce(
                    cue_id="cue-ana-1",
                    kind="emotion",
                    label="laughter",
                    intensity="strong",
                    since_ts_us=T0 + shift + 250_000,
                    shown=True,
                ),
                arc_label="amusement",
                targets=["amusement", "laughter"],
            ),
            ratings=[
                records.RaterTrace(
                    rater_id="r1",
                    rater_role="observer",
                    mode="valence_arousal",
                    mean={"valence": 0.5, "arousal": 0.25},
                    last={"valence": 0.625, "arousal": 0.25},
                    coverage=1.0,
                    samples=2,
                    lag=records.LagCorrection(method="calibration", lag_us=310_000),
                ),
                records.RaterTrace(
                    rater_id="dir1",
                    rater_role="director",
                    mode="intensity",
                    label="laughter",
                    mean={"intensity": 0.75},
                    last={"intensity": 1},  # an int: the field is float64 all the same
                    coverage=0.5,
                    samples=1,
                ),
            ],
            models=[
                records.ModelEstimate(
                    model="model-face",
                    probabilities={"laughter": 0.625, "amusement": 0.25},
                    top_label="laughter",
                    valence=0.5,
                    frames_read=2,
                )
            ],
        )
        for k in (3, 4, 5)
    ]
    # ben's window 2: revision 1 says anger, revision 2 fear; only revision 2 counts. A
    # line of text is on ben's page, so the arc's step is what is intended.
    arc_under_text = records.Intent(
        label="fear",
        source="arc",
        cue=records.CueInForce(
            cue_id="cue-ben-1",
            kind="text",
            text="you hear a noise",
            since_ts_us=T0 + shift + 150_000,
            shown=False,
        ),
        arc_label="fear",
    )
    labels.append(_window(sid, shift, "ben", 2, consensus="anger", revision=1))
    labels.append(
        _window(sid, shift, "ben", 2, consensus="fear", revision=2, intent=arc_under_text)
    )
    # Before the media start and after the take: negative media time, no take.
    labels.append(_window(sid, shift, "ben", -1))
    labels.append(_window(sid, shift, "ana", 20))
    tags = [
        _tag(sid, shift, "self-ana-1", "ana", "ana", "performer"),
        _tag(sid, shift, "dir-ana-1", "ana", "dir1", "director"),
    ]
    return {"labels": labels, "tags": tags}


def _shifted(item: Any, sid: str, shift: int) -> Any:
    if isinstance(item, records.AudioChunk):
        update = {"session_id": sid, "ts_us": item.header.ts_us + shift}
        return records.AudioChunk(item.header.model_copy(update=update), item.pcm)
    if isinstance(item, records.VideoFrame):
        update = {"session_id": sid, "ts_us": item.header.ts_us + shift}
        return records.VideoFrame(item.header.model_copy(update=update), item.jpeg)
    return item.model_copy(update={"session_id": sid, "ts_us": item.ts_us + shift})


def write_archive(data_dir: Path, sid: str = SID, shift: int = 0, *, labels: bool = True) -> Path:
    """The sample session (tests/archive_samples.py) as session ``sid``, ``shift`` µs
    later, built into ``data_dir/sid`` from recorder parts."""
    folder = data_dir / sid
    made = {
        kind: [_shifted(item, sid, shift) for item in items]
        for kind, items in sample_records().items()
    }
    if labels:
        for kind, items in _labelled(sid, shift).items():
            made[kind] += items
    else:
        made["labels"] = []
    for kind, items in made.items():
        messages = []
        for offset, item in enumerate(carried(kind, items)):
            encoded = records.encode(item)
            messages.append(
                store.RawMessage(0, offset, encoded.key, encoded.value, list(encoded.headers))
            )
        if messages:
            store.write_part(folder, kind, 0, messages)
    record = session().model_copy(
        update={
            "session_id": sid,
            "ts_us": T0 + shift,
            "created_ts_us": T0 + shift - 5_000_000,
            "takes": [
                records.Take(take_id=1, start_ts_us=T0 + shift, end_ts_us=T0 + shift + 2_000_000)
            ],
            "topics": topics.session_topic_names(sid),
        }
    )
    store.build_archive(folder, record, software={"livetag": "test"})
    return folder


def _latest(folder: Path) -> list[records.LabelWindow]:
    return store.latest_labels(store.read_records(folder, "labels"))


def _shards(out: Path) -> list[str]:
    """The shard files, as n-of-N (their names end in a digest of their bytes)."""
    names = sorted(p.name for p in (out / "data").iterdir())
    found = []
    for name in names:
        match = re.fullmatch(r"train-(\d{5}-of-\d{5})-[0-9a-f]{16}\.parquet", name)
        assert match, name
        found.append(match[1])
    return found


def _front_matter(card: Path) -> tuple[dict[str, Any], str]:
    text = card.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    head, body = text[4:].split("\n---\n", 1)
    metadata = yaml.safe_load(head)
    assert isinstance(metadata, dict)
    return metadata, body


def test_one_session_loads_with_a_row_per_newest_window(tmp_path: Path, load_dataset: Any) -> None:
    folder = write_archive(tmp_path / "data")
    out = tmp_path / "dataset"
    written = export_session(folder, out, "hf")
    assert out / "README.md" in written
    assert _shards(out) == ["00000-of-00001"]

    latest = _latest(folder)
    by_data_dir = load_dataset(out, as_parquet=True)["train"]
    by_folder = load_dataset(out)["train"]
    assert by_data_dir.num_rows == by_folder.num_rows == len(latest)
    assert by_data_dir.to_list() == by_folder.to_list()
    assert by_folder.column_names == [name for name, _, _ in COLUMNS]
    assert by_folder.features["start_ts_us"].dtype == "int64"
    assert by_folder.features["consensus"].dtype == "string"

    t0 = store.read_manifest(folder)["t0_us"]
    assert t0 == T0
    rows = {(row["performer_id"], row["start_ts_us"]): row for row in by_folder}
    assert set(rows) == {(w.performer_id, w.ts_us) for w in latest}
    for window in latest:
        row = rows[(window.performer_id, window.ts_us)]
        for name in ("start_ts_us", "end_ts_us", "window_us", "t0_us", "revision"):
            assert type(row[name]) is int, name
        assert row["end_ts_us"] == window.ts_us + window.window_us
        assert row["media_start_s"] == pytest.approx((window.ts_us - t0) / 1e6, abs=1e-9)
        assert row["media_end_s"] == pytest.approx((row["end_ts_us"] - t0) / 1e6, abs=1e-9)
        assert row["session_id"] == SID
        assert row["consensus"] == window.consensus
        assert row["revision"] == window.revision
        assert row["complete"] == (not window.missing)

    # A window with every lane: the performer's own tag, an observer's and the director's.
    tagged = rows[("ana", T0 + 400_000)]
    assert tagged["self_labels"] == [
        {"label": "laughter", "intensity": "strong", "tag_id": "self-ana-1"}
    ]
    assert tagged["perceived_labels"] == [
        {
            "rater_id": "r1",
            "rater_role": "observer",
            "labels": [{"label": "laughter", "intensity": "normal", "tag_id": "obs-r1-ana"}],
        },
        {
            "rater_id": "dir1",
            "rater_role": "director",
            "labels": [{"label": "amusement", "intensity": "normal", "tag_id": "dir-ana-1"}],
        },
    ]
    assert tagged["consensus"] == "laughter"
    assert tagged["consensus_agreement"] == pytest.approx(0.6667)
    assert (tagged["revision"], tagged["correction"]) == (1, True)
    assert tagged["final_after_us"] == T0 + 500_000 + 30_000_000
    assert (tagged["missing_face"], tagged["missing_prosody"], tagged["complete"]) == (
        "late",
        None,
        False,
    )
    assert tagged["f0_mean_hz"] == 180.0
    assert isinstance(tagged["f0_mean_hz"], float)
    assert tagged["top_blendshapes"] == [
        {"name": "mouthSmileLeft", "score": 0.7},
        {"name": "jawOpen", "score": 0.25},
    ]
    assert (tagged["head_yaw_deg"], tagged["head_pitch_deg"], tagged["head_roll_deg"]) == (
        1.5,
        -2.0,
        0.5,
    )
    assert (tagged["prosody_hops"], tagged["face_frames"], tagged["face_frames_skipped"]) == (
        10,
        2,
        1,
    )
    # The newest revision counts, not an older one saying otherwise.
    assert rows[("ben", T0 + 200_000)]["consensus"] == "fear"
    assert rows[("ben", T0 + 200_000)]["revision"] == 2
    # An untagged window: empty lanes, no consensus.
    plain = rows[("ben", T0 + 1_000_000)]
    assert (plain["self_labels"], plain["perceived_labels"], plain["consensus"]) == ([], [], None)

    # Continuous ratings and the model's reading, typed.
    assert tagged["rating_traces"] == [
        {
            "rater_id": "r1",
            "rater_role": "observer",
            "mode": "valence_arousal",
            "label": None,
            "valence_mean": 0.5,
            "arousal_mean": 0.25,
            "intensity_mean": None,
            "valence_last": 0.625,
            "arousal_last": 0.25,
            "intensity_last": None,
            "coverage": 1.0,
            "samples": 2,
            "lag_us": 310_000,
            "lag_method": "calibration",
        },
        {
            "rater_id": "dir1",
            "rater_role": "director",
            "mode": "intensity",
            "label": "laughter",
            "valence_mean": None,
            "arousal_mean": None,
            "intensity_mean": 0.75,
            "valence_last": None,
            "arousal_last": None,
            "intensity_last": 1.0,
            "coverage": 0.5,
            "samples": 1,
            "lag_us": None,
            "lag_method": None,
        },
    ]
    assert tagged["model_readings"] == [
        {
            "model": "model-face",
            "top_label": "laughter",
            "probabilities": [
                {"label": "laughter", "probability": 0.625},
                {"label": "amusement", "probability": 0.25},
            ],
            "valence": 0.5,
            "arousal": None,
            "frames_read": 2,
        }
    ]
    assert (plain["rating_traces"], plain["model_readings"]) == ([], [])

    # The intended lane: an emotion cue in force, a text cue over the arc, nothing.
    assert (
        tagged["intended_label"],
        tagged["intended_intensity"],
        tagged["intended_source"],
        tagged["intended_arc_label"],
        tagged["intended_targets"],
    ) == ("laughter", "strong", "cue", "amusement", ["amusement", "laughter"])
    assert tagged["intended_cue"] == {
        "cue_id": "cue-ana-1",
        "kind": "emotion",
        "label": "laughter",
        "intensity": "strong",
        "text": "",
        "since_ts_us": T0 + 250_000,
        "shown": True,
    }
    under_text = rows[("ben", T0 + 200_000)]
    assert (
        under_text["intended_label"],
        under_text["intended_intensity"],
        under_text["intended_source"],
    ) == ("fear", "normal", "arc")
    assert under_text["intended_cue"] == {
        "cue_id": "cue-ben-1",
        "kind": "text",
        "label": None,
        "intensity": "normal",
        "text": "you hear a noise",
        "since_ts_us": T0 + 150_000,
        "shown": False,
    }
    assert (
        plain["intended_label"],
        plain["intended_intensity"],
        plain["intended_source"],
        plain["intended_cue"],
        plain["intended_arc_label"],
        plain["intended_targets"],
    ) == (None, None, None, None, None, [])

    # Takes: inside the take, before it, after it.
    assert tagged["take_id"] == 1
    before = rows[("ben", T0 - 100_000)]
    assert before["take_id"] is None
    assert before["media_start_s"] == pytest.approx(-0.1)
    assert rows[("ana", T0 + 2_000_000)]["take_id"] is None

    # Media: referenced relative to the dataset folder, hard-linked from the archive.
    assert tagged["media_file"] == f"media/{SID}/ana.mkv"
    assert os.path.samefile(out / tagged["media_file"], folder / "media" / "ana.mkv")
    assert (out / f"media/{SID}/ben.mkv").is_file()


def test_one_row_group_per_performer(tmp_path: Path) -> None:
    folder = write_archive(tmp_path / "data")
    out = tmp_path / "dataset"
    export_session(folder, out, "hf")
    [path] = (out / "data").iterdir()
    shard = pq.ParquetFile(path)
    latest = _latest(folder)
    assert shard.metadata.num_row_groups == 2
    sizes = [shard.metadata.row_group(n).num_rows for n in range(2)]
    assert sizes == [
        sum(1 for w in latest if w.performer_id == performer) for performer in ("ana", "ben")
    ]


def test_every_window_feature_has_its_columns() -> None:
    # A feature added to the label window must be given a column here too.
    assert set(records.WindowFeatures.model_fields) == {
        "f0_mean_hz",
        "loudness_mean_db",
        "voiced_fraction",
        "face_present_fraction",
        "top_blendshapes",
        "head_pose",
        "face_frames_skipped",
        "prosody_hops",
        "face_frames",
    }
    names = {name for name, _, _ in COLUMNS}
    assert {f"missing_{stream}" for stream in records.FEATURE_STREAMS} <= names
    assert {"head_yaw_deg", "head_pitch_deg", "head_roll_deg"} <= names
    # ...and a field added to the window, the intent (the intended lane), a rating trace
    # or a model's reading too.
    assert set(records.LabelWindow.model_fields) == {
        "schema_version",
        "ts_us",
        "session_id",
        "performer_id",
        "window_us",
        "features",
        "raters",
        "consensus",
        "consensus_agreement",
        "correction",
        "revision",
        "final_after_us",
        "missing",
        "ratings",
        "models",
        "intent",
    }
    assert set(records.RaterTrace.model_fields) == {
        "rater_id",
        "rater_role",
        "mode",
        "label",
        "mean",
        "last",
        "coverage",
        "samples",
        "lag",
    }
    assert set(records.ModelEstimate.model_fields) == {
        "model",
        "probabilities",
        "top_label",
        "valence",
        "arousal",
        "frames_read",
    }
    assert {"rating_traces", "model_readings"} <= names
    assert set(records.Intent.model_fields) == {
        "label",
        "intensity",
        "source",
        "cue",
        "arc_label",
        "targets",
    }
    assert {
        "intended_label",
        "intended_intensity",
        "intended_source",
        "intended_cue",
        "intended_arc_label",
        "intended_targets",
    } <= names


def test_the_card_parses_and_names_vocabulary_and_raters(tmp_path: Path) -> None:
    folder = write_archive(tmp_path / "data")
    out = tmp_path / "dataset"
    export_session(folder, out, "hf")
    metadata, body = _front_matter(out / "README.md")
    assert metadata["license"] == "other"
    assert metadata["pretty_name"] == f"livetag session {SID}"
    assert metadata["task_categories"] == ["video-classification", "audio-classification"]
    assert {"emotion", "affective-computing", "prosody", "facial-expression"} <= set(
        metadata["tags"]
    )
    assert metadata["size_categories"] == ["n<1K"]
    [shard] = (out / "data").iterdir()
    assert metadata["configs"] == [
        {
            "config_name": "default",
            "data_files": [{"split": "train", "path": [f"data/{shard.name}"]}],
        }
    ]
    manifest = store.read_manifest(folder)
    for entry in manifest["session"]["vocabulary"]:
        assert f"| `{entry['label']}` | {entry['description']} |" in body
    raters = {r["rater_id"]: r for r in manifest["raters"]}
    assert set(raters) == {"ana", "dir1", "r1", "r2", "r3"}  # r3 only rated continuously
    assert f"| {SID} | ana | performer | self | {raters['ana']['tags']} | 0 | 2.5 | 1.2 |" in body
    assert f"| {SID} | dir1 | director | perceived | 1 |" in body
    # r1's pages sent no lag with their tags and 300 ms with their ratings.
    assert f"| {SID} | r1 | observer | perceived | 2 | 0, 300 | 1.5 | 0.9 |" in body
    assert f"| {SID} | r3 | observer | perceived | 0 | 300 | 1.5 | n/a |" in body
    assert "The dataset owner must set `license:`" in body
    assert "NOT FILLED IN" in body
    assert "Not recorded by this version: the *intended* lane" in body
    # The grace is read back from the windows that record it (final_after_us).
    assert "within the grace (30000 ms after a window's end)" in body
    latest = _latest(folder)
    incomplete = sum(1 for w in latest if w.missing)
    assert incomplete == 3
    assert f"| {len(latest)} | {incomplete} (late 3) | 0 |" in body
    for name, _, _ in COLUMNS:
        assert f"| `{name}` |" in body


def test_cli_exports_a_day_in_one_dataset(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    load_dataset: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    data = tmp_path / "data"
    morning = write_archive(data, "s-morning", 0)
    later = write_archive(data, "s-later", HOUR_US)
    next_day = write_archive(data, "s-next-day", DAY_US)
    (data / "s-recording").mkdir()  # a session still being recorded: no manifest yet
    damaged = data / "s-damaged"  # told and left out, not a reason to export nothing
    damaged.mkdir()
    (damaged / "manifest.json").write_text('{"t0_us": "soon"}')
    monkeypatch.setenv("LIVETAG_DATA_DIR", str(data))
    day = dt.datetime.fromtimestamp(T0 // 1_000_000, tz=dt.UTC).date()
    assert dt.datetime.fromtimestamp((T0 + HOUR_US) // 1_000_000, tz=dt.UTC).date() == day
    out = tmp_path / "day"
    result = CliRunner().invoke(
        main,
        [
            "export",
            "--format",
            "hf",
            "--day",
            day.isoformat(),
            "--out",
            str(out),
            "--license",
            "cc-by-nc-4.0",
            "--consent-scope",
            "Research on improv emotion only; no redistribution.",
            "--media",
            "copy",
        ],
    )
    assert result.exit_code == 0, result.output
    assert all(Path(line).is_file() for line in result.stdout.split())
    assert f"skipped {damaged}: its manifest's t0_us is not an integer" in caplog.text
    assert _shards(out) == ["00000-of-00002", "00001-of-00002"]
    for loaded in (load_dataset(out, as_parquet=True)["train"], load_dataset(out)["train"]):
        per_session: dict[str, int] = {}
        for sid in loaded["session_id"]:
            per_session[sid] = per_session.get(sid, 0) + 1
        assert per_session == {"s-morning": len(_latest(morning)), "s-later": len(_latest(later))}
    assert len(_latest(next_day)) > 0
    copied = out / "media" / "s-later" / "ana.mkv"
    assert copied.read_bytes() == (later / "media" / "ana.mkv").read_bytes()
    assert not os.path.samefile(copied, later / "media" / "ana.mkv")
    metadata, body = _front_matter(out / "README.md")
    assert metadata["license"] == "cc-by-nc-4.0"
    assert metadata["pretty_name"] == f"livetag sessions of {day.isoformat()}"
    assert "Research on improv emotion only; no redistribution." in body
    assert "NOT FILLED IN" not in body
    assert "must set `license:`" not in body
    assert "| s-morning |" in body
    assert "| s-later |" in body
    assert "s-next-day" not in body

    # Again into the same folder, one session: the earlier shards do not stay behind.
    result = CliRunner().invoke(
        main, ["export", "s-next-day", "--format", "hf", "--out", str(out), "--media", "none"]
    )
    assert result.exit_code == 0, result.output
    assert _shards(out) == ["00000-of-00001"]
    loaded = load_dataset(out)["train"]
    assert set(loaded["session_id"]) == {"s-next-day"}
    assert loaded.num_rows == len(_latest(next_day))
    assert not (out / "media" / "s-next-day").exists()
    # Nor does the media of the sessions this export no longer has.
    assert not (out / "media" / "s-later").exists()
    assert not (out / "media" / "s-morning").exists()
    assert loaded[0]["media_file"] == f"media/s-next-day/{loaded[0]['performer_id']}.mkv"


def test_symlinked_media_point_into_the_archive(tmp_path: Path) -> None:
    folder = write_archive(tmp_path / "data")
    out = tmp_path / "dataset"
    export_dataset([folder], out, media="symlink")
    link = out / "media" / SID / "ben.mkv"
    assert link.is_symlink()
    assert link.resolve() == (folder / "media" / "ben.mkv").resolve()


def test_a_session_without_windows_is_in_the_card_but_has_no_shard(
    tmp_path: Path, load_dataset: Any
) -> None:
    data = tmp_path / "data"
    empty = write_archive(data, "s-empty", 0, labels=False)
    full = write_archive(data, "s-full", HOUR_US)
    out = tmp_path / "dataset"
    export_dataset([empty, full], out, media="none")
    assert _shards(out) == ["00000-of-00001"]
    assert load_dataset(out)["train"].num_rows == len(_latest(full))
    _, body = _front_matter(out / "README.md")
    assert "| s-empty |" in body
    with pytest.raises(ExportError, match=r"s-empty: no label windows archived"):
        export_dataset([empty], tmp_path / "nothing")


def _one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_cli_errors_are_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "data"
    write_archive(data)
    monkeypatch.setenv("LIVETAG_DATA_DIR", str(data))
    out = str(tmp_path / "out")
    day = dt.datetime.fromtimestamp(T0 // 1_000_000, tz=dt.UTC).date().isoformat()

    assert "not a session archive" in _one_line_error(
        ["export", "nope", "--format", "hf", "--out", out]
    )
    neither = _one_line_error(["export", "--format", "hf", "--out", out])
    assert "give a SESSION_ID or --day YYYY-MM-DD" in neither
    both = _one_line_error(["export", SID, "--format", "hf", "--day", day, "--out", out])
    assert "exactly one of them" in both
    assert "no archived session in" in _one_line_error(
        ["export", "--format", "hf", "--day", "2020-01-01", "--out", out]
    )
    assert "started on 2020-01-01 (UTC)" in _one_line_error(
        ["export", "--format", "hf", "--day", "2020-01-01", "--out", out]
    )
    assert "--day: for --format hf only" in _one_line_error(
        ["export", "--format", "csv", "--day", day, "--out", out]
    )
    assert "--media, --license: for --format hf only" in _one_line_error(
        ["export", SID, "--format", "jsonl", "--license", "mit", "--media", "copy"]
    )
    assert "not a Hugging Face license id" in _one_line_error(
        ["export", SID, "--format", "hf", "--license", "CC BY 4.0", "--out", out]
    )
    assert not Path(out).exists()


def test_the_readme_loading_lines_run_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    morning = write_archive(data, "s-morning", 0)
    later = write_archive(data, "s-later", HOUR_US)
    monkeypatch.setenv("LIVETAG_DATA_DIR", str(data))
    monkeypatch.chdir(tmp_path)
    day = dt.datetime.fromtimestamp(T0 // 1_000_000, tz=dt.UTC).date().isoformat()
    assert day == "2026-09-21", "the documented example (docs/consumers.md) names this day"
    # As the docs say: without --out, in the folder the example runs in.
    result = CliRunner().invoke(main, ["export", "--format", "hf", "--day", day])
    assert result.exit_code == 0, result.output
    assert (tmp_path / f"{day}-hf" / "README.md").is_file()
    env = {
        **os.environ,
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_DATASETS_CACHE": str(tmp_path / "hf-cache"),
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
    }
    run = subprocess.run(
        [sys.executable, "-c", marked_block("hf-example")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    rows, tagged, media_file, media_start_s = run.stdout.split()
    windows = _latest(morning) + _latest(later)
    assert int(rows) == len(windows)
    assert int(tagged) == sum(1 for w in windows if w.consensus is not None) > 0
    assert media_file == "media/s-morning/ana.mkv"
    first = min(w.ts_us for w in _latest(morning) if w.performer_id == "ana")
    assert float(media_start_s) == pytest.approx((first - T0) / 1e6)
