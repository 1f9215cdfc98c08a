"""Continuous ratings, rater lags and model readings in the archive: one row per rating
sample, the newest lag per rater, every model's reading; the session's own records only,
undecodable ones counted; and the label windows' perception fields through every export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from streams import records
from streams.archive import store
from streams.archive.export import export_session, read_csv, read_jsonl
from tests.archive_samples import (
    SID,
    T0,
    carried,
    rating_batch,
    rating_rows,
    sample_records,
    session,
    write_sample_archive,
)


def messages_of(kind: str, items: list[Any]) -> list[store.RawMessage]:
    out = []
    for offset, item in enumerate(carried(kind, items)):
        encoded = records.encode(item)
        out.append(store.RawMessage(0, offset, encoded.key, encoded.value, list(encoded.headers)))
    return out


def lag(rater: str, ts_us: int, lag_us: int, session_id: str = SID) -> records.RaterLag:
    return records.RaterLag(
        ts_us=ts_us,
        session_id=session_id,
        rater_id=rater,
        rater_role="observer",
        applied=records.LagCorrection(method="consensus", lag_us=lag_us, confidence=0.6),
    )


def test_ratings_are_one_row_per_sample_with_the_batch_fields(tmp_path: Path) -> None:
    made = write_sample_archive(tmp_path)
    rows = store.read_records(tmp_path, "ratings")
    assert len(rows) == len(made["ratings"]) == 2 * 2 * 2 * 20  # performers, raters, 1 s batches
    assert sorted(r.model_dump_json() for r in rows) == sorted(
        r.model_dump_json() for r in made["ratings"]
    )
    table = pq.read_table(tmp_path / "ratings.parquet")
    # Typed columns a reader filters on directly.
    assert str(table.schema.field("valence").type) == "double"
    assert str(table.schema.field("ts_us").type) == "int64"
    assert str(table.schema.field("label").type) == "string"
    first = next(r for r in rows if r.rater_id == "r3")
    assert (first.mode, first.label, first.intensity, first.valence) == (
        "intensity",
        "laughter",
        0.0,
        None,
    )
    # The batches come back whole from their rows.
    batches = {row.batch_id for row in rows}
    assert len(batches) == 8
    manifest = store.read_manifest(tmp_path)
    assert manifest["counts"]["rating_batches"] == 8
    assert manifest["counts"]["ratings"] == len(rows)
    originals = {batch.batch_id: batch for batch in carried("ratings", made["ratings"])}
    for batch_id in batches:
        mine = sorted((r for r in rows if r.batch_id == batch_id), key=lambda r: r.sample_index)
        assert rating_batch(mine) == originals[batch_id]


def test_a_batch_counts_once_by_its_id_and_other_sessions_are_left_out(tmp_path: Path) -> None:
    made = sample_records()
    ours = carried("ratings", made["ratings"])
    first = ours[0]
    # The same batch id again with other samples (a client bug): the first one counts
    # whole, nothing of the second mixes in.
    clash = first.model_copy(update={"samples": first.samples[:3], "rate_hz": 10})
    theirs = [
        rating_batch(
            [
                row.model_copy(update={"session_id": "s-other", "batch_id": "batch-other-0001"})
                for row in rating_rows("ana", 1.0)[:20]
            ]
        )
    ]
    # The same batch received again (a re-publish stamps it anew): not a conflict.
    resent = first.model_copy(update={"received_ts_us": first.received_ts_us + 5_000_000})
    items = [*ours, clash, resent, *theirs]
    encoded = [records.encode(item) for item in items]
    raw = [store.RawMessage(0, n, e.key, e.value, list(e.headers)) for n, e in enumerate(encoded)]
    raw.append(store.RawMessage(0, len(raw), b"s-archive/ana", b"{not json", []))
    store.write_part(tmp_path, "ratings", 0, raw)
    manifest = store.build_archive(tmp_path, session(), software={})
    rows = store.read_records(tmp_path, "ratings")
    assert len(rows) == len(made["ratings"])
    assert {row.session_id for row in rows} == {SID}
    assert {row.rate_hz for row in rows if row.batch_id == first.batch_id} == {20}
    assert manifest["counts"]["undecodable"] == 1
    assert manifest["counts"]["rating_batches"] == len(ours)
    assert manifest["counts"]["rating_batches_conflicting"] == 1  # the clash, not the resend


def test_the_newest_lag_of_each_rater_is_archived(tmp_path: Path) -> None:
    items = [
        lag("r1", T0 + 1_000_000, 300_000),
        lag("r2", T0 + 1_000_000, 500_000),
        lag("r1", T0 + 3_000_000, 420_000),  # newer: counts
        lag("r1", T0 + 2_000_000, 999_000),  # older, arriving late: does not
        lag("r2", T0 + 1_000_000, 510_000),  # the same instant, later offset: counts
        lag("r1", T0 + 9_000_000, 1_000, session_id="s-other"),
    ]
    store.write_part(tmp_path, "rater_lags", 0, messages_of("rater_lags", items))
    store.build_archive(tmp_path, session(), software={})
    archived = {row.rater_id: row for row in store.read_records(tmp_path, "rater_lags")}
    assert {rater: row.applied.lag_us for rater, row in archived.items()} == {
        "r1": 420_000,
        "r2": 510_000,
    }


def test_every_model_reading_of_a_window_is_kept(tmp_path: Path) -> None:
    made = sample_records()
    readings = made["model"]
    other = [reading.model_copy(update={"model": "other-model"}) for reading in readings[:5]]
    items = [*readings, *other, readings[1]]  # and one re-delivered
    store.write_part(tmp_path, "model", 0, messages_of("model", items))
    manifest = store.build_archive(tmp_path, session(), software={})
    stored = store.read_records(tmp_path, "model")
    assert len(stored) == len(readings) + len(other)
    assert manifest["counts"]["model"] == len(stored)
    unread = [r for r in stored if r.frames_read == 0]
    assert unread
    assert {r.unread for r in unread} == {"no_face"}
    # Nested fields as JSON text, as the other kinds have them.
    rows = pq.read_table(tmp_path / "model.parquet").to_pylist()
    row = next(
        r
        for r in rows
        if (r["performer_id"], r["ts_us"], r["model"])
        == (readings[1].performer_id, readings[1].ts_us, readings[1].model)
    )
    assert json.loads(row["class_probabilities"]) == readings[1].class_probabilities
    assert json.loads(row["probabilities"]) == readings[1].probabilities
    assert row["top_label"] == "laughter"


def perception_windows(folder: Path) -> list[records.LabelWindow]:
    return [
        w
        for w in store.read_records(folder, "labels")
        if isinstance(w, records.LabelWindow) and w.ratings and w.models
    ]


def test_the_label_windows_perception_fields_survive_every_export(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    write_sample_archive(folder)
    archived = perception_windows(folder)
    # What must come back: traces with their lag correction and the model's estimate.
    assert archived
    assert all(w.ratings[0].lag is not None for w in archived)
    assert all(w.models[0].probabilities for w in archived)
    made = {w.model_dump_json() for w in sample_records()["labels"] if w.ratings and w.models}
    assert {w.model_dump_json() for w in archived} == made
    export_session(folder, tmp_path / "jsonl", "jsonl")
    export_session(folder, tmp_path / "csv", "csv")
    export_session(folder, tmp_path / "parquet", "parquet")
    from_jsonl = read_jsonl(tmp_path / "jsonl" / "labels.jsonl", "labels")
    from_csv = read_csv(tmp_path / "csv" / "labels.csv", "labels")
    from_parquet = store.table_records(
        records.LabelWindow, pq.read_table(tmp_path / "parquet" / "labels.parquet")
    )
    for back in (from_jsonl, from_csv, from_parquet):
        again = [w for w in back if isinstance(w, records.LabelWindow) and w.ratings and w.models]
        assert [w.model_dump_json() for w in again] == [w.model_dump_json() for w in archived]


def test_a_lag_correction_on_a_raters_labels_survives(tmp_path: Path) -> None:
    made = sample_records()
    correction = records.LagCorrection(
        method="onsets", lag_us=380_000, spread_us=90_000, confidence=0.4, relative=False
    )
    windows = [
        made["labels"][0].model_copy(
            update={
                "raters": [
                    records.RaterLabels(
                        rater_id="r1",
                        rater_role="observer",
                        labels=[
                            records.ActiveLabel(
                                label="laughter", intensity="strong", tag_id="tag-ana-r1"
                            )
                        ],
                        lag=correction,
                    )
                ],
                "consensus": "laughter",
                "consensus_agreement": 1.0,
            }
        )
    ]
    store.write_part(tmp_path / "archive", "labels", 0, messages_of("labels", windows))
    store.build_archive(tmp_path / "archive", session(), software={})
    export_session(tmp_path / "archive", tmp_path / "csv", "csv")
    export_session(tmp_path / "archive", tmp_path / "jsonl", "jsonl")
    for back in (
        store.read_records(tmp_path / "archive", "labels"),
        read_csv(tmp_path / "csv" / "labels.csv", "labels"),
        read_jsonl(tmp_path / "jsonl" / "labels.jsonl", "labels"),
    ):
        assert back == windows
        assert isinstance(back[0], records.LabelWindow)
        assert back[0].raters[0].lag == correction


def test_the_new_kinds_export_as_files_of_their_own(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    made = write_sample_archive(folder)
    export_session(folder, tmp_path / "csv", "csv")
    export_session(folder, tmp_path / "jsonl", "jsonl")
    for kind in ("ratings", "rater_lags", "model"):
        stored = store.read_records(folder, kind)
        assert len(stored) == len(made[kind]), kind
        assert read_csv(tmp_path / "csv" / f"{kind}.csv", kind) == stored, kind
        assert read_jsonl(tmp_path / "jsonl" / f"{kind}.jsonl", kind) == stored, kind
    header = (tmp_path / "csv" / "ratings.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header.split(",")[:8] == [
        "schema_version",
        "ts_us",
        "session_id",
        "performer_id",
        "rater_id",
        "rater_role",
        "mode",
        "label",
    ]


def test_two_readings_of_one_window_are_folded_as_the_aligner_folds_them(
    tmp_path: Path,
) -> None:
    """A model lane that paused (or restarted) mid-window sends two readings of it: the
    archive keeps one, weighted by the frames each read, not the first alone."""
    made = sample_records()
    readings = made["model"]
    first = readings[1]  # 2 frames, laughter 0.52
    assert first.frames_read == 2
    second = first.model_copy(
        update={
            "frames_read": 6,
            "frames_thinned": 0,
            "frames_failed": 1,
            "class_probabilities": {"happy": 0.1, "neutral": 0.9},
            "probabilities": {"laughter": 0.1},
            "top_label": None,  # a neutral face outweighs it
            "valence": -0.1,
            "arousal": 0.05,
        }
    )
    # The second reading, then a re-delivery of it: the re-delivered one counts once.
    items = [*readings, second, second]
    store.write_part(tmp_path, "model", 0, messages_of("model", items))
    manifest = store.build_archive(tmp_path, session(), software={})
    stored = store.read_records(tmp_path, "model")
    assert len(stored) == len(readings)
    assert manifest["counts"]["model_readings_merged"] == 1
    [folded] = [r for r in stored if (r.performer_id, r.ts_us) == (first.performer_id, first.ts_us)]
    assert isinstance(folded, records.ModelReading)
    # By hand: (0.52 * 2 + 0.1 * 6) / 8 = 0.205; neutral (0.48 * 2 + 0.9 * 6) / 8 = 0.795.
    assert folded.frames_read == 8
    assert folded.frames_failed == 1
    assert folded.frames_thinned == first.frames_thinned
    assert folded.probabilities == {"laughter": 0.205}
    assert folded.class_probabilities == {"happy": 0.205, "neutral": 0.795}
    assert folded.top_label is None  # 0.205 against 0.795 outside the vocabulary
    assert folded.valence == round((0.5 * 2 - 0.1 * 6) / 8, 4)
    assert folded.arousal == round((0.25 * 2 + 0.05 * 6) / 8, 4)
    assert folded == records.merge_model_readings(first, second)
    # The windows of the other readings are as they were.
    others = {(r.performer_id, r.ts_us): r for r in stored if r is not folded}
    assert all(others[(r.performer_id, r.ts_us)] == r for r in readings if r is not first)
