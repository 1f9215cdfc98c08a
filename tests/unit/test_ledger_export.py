"""The archive's ledger: cues.parquet as recorded, and `livetag export --format ledger` (per
take: the rows, the summary, the picture and the short report) on scripted windows."""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

import streams.archive
from streams import records
from streams.archive import ledger_report, store
from streams.archive.export import export_session
from tests.archive_samples import SID, T0, carried, sample_records, session, write_sample_archive
from tests.unit.test_ledger import window as plain_window

W = 100_000


def cue_in_force(
    cue_id: str, kind: records.CueKind = "emotion", **fields: Any
) -> records.CueInForce:
    return records.CueInForce(cue_id=cue_id, kind=kind, since_ts_us=T0, shown=True, **fields)


def window(
    ts_us: int,
    held: dict[str, list[str]] | None = None,
    *,
    performer: str = "ana",
    intent: records.Intent | None = None,
    model: str | None = None,
    revision: int = 0,
) -> records.LabelWindow:
    """A window of the archived session: observers (and ana herself, "ana") holding labels."""
    made = plain_window(
        ts_us,
        held,
        performer=performer,
        roles={"ana": "performer", "ben": "performer"},
        revision=revision,
    )
    models = []
    if model is not None:
        top = None if model == "(none)" else model
        models.append(
            records.ModelEstimate(
                model="fer-mini",
                probabilities={} if top is None else {top: 0.7},
                top_label=top,
                frames_read=2,
            )
        )
    return made.model_copy(
        update={
            "session_id": SID,
            "intent": intent,
            "models": models,
            "features": records.WindowFeatures(
                f0_mean_hz=201.5,
                loudness_mean_db=-24.0,
                face_present_fraction=1.0,
                top_blendshapes={"mouthSmileLeft": 0.8, "jawOpen": 0.2},
            ),
        }
    )


LAUGH = records.Intent(
    label="laughter",
    intensity="strong",
    source="cue",
    cue=cue_in_force("cue-ana-laughter", label="laughter", intensity="strong"),
    arc_label="hesitation",
    targets=["hesitation", "laughter"],
)
ARC = records.Intent(
    label="hesitation", source="arc", arc_label="hesitation", targets=["hesitation"]
)
TEXT = records.Intent(
    cue=cue_in_force("cue-ana-text", "text", text="slower"), targets=["hesitation"]
)


def scripted_windows() -> list[records.LabelWindow]:
    """ana's take: laughter cued and agreed (she tagged it too); cued, observers split; the
    arc's hesitation, nobody tagged; a text cue, observers agreed on anger. ben: nothing
    intended. One window of ana after the take."""
    return [
        window(
            T0,
            {"r1": ["laughter"], "r2": ["laughter"], "ana": ["laughter"]},
            intent=LAUGH,
            model="laughter",
        ),
        window(T0 + W, {"r1": ["anger"], "r2": ["anger"]}, intent=LAUGH),  # revised below
        window(T0 + W, {"r1": ["laughter"], "r2": ["anger"]}, intent=LAUGH, revision=1),
        window(T0 + 2 * W, {}, intent=ARC),
        window(T0 + 3 * W, {"r1": ["anger"], "r2": ["anger"]}, intent=TEXT, model="(none)"),
        window(T0, {"r1": ["surprise"]}, performer="ben"),
        window(T0 + 3_000_000, {}, intent=ARC),
    ]


def write_archive(folder: Path, labels: list[records.LabelWindow]) -> None:
    made = sample_records()
    made["labels"] = labels
    for kind, items in made.items():
        messages = []
        for offset, item in enumerate(carried(kind, items)):
            encoded = records.encode(item)
            messages.append(
                store.RawMessage(0, offset, encoded.key, encoded.value, list(encoded.headers))
            )
        if messages:
            store.write_part(folder, kind, 0, messages)
    store.build_archive(folder, session(), software={"livetag": "test"})


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_cues_are_archived_one_row_per_cue_the_shown_record_kept(tmp_path: Path) -> None:
    made = write_sample_archive(tmp_path)
    archived = store.read_records(tmp_path, "cues")
    assert archived == sorted(made["cues"], key=lambda c: (c.performer_id, c.ts_us))
    table = pq.read_table(tmp_path / "cues.parquet")
    for column in (
        "ts_us",
        "shown_ts_us",
        "kind",
        "label",
        "intensity",
        "text",
        "sent_by",
        "group_id",
    ):
        assert column in table.column_names
    first = table.to_pylist()[0]
    assert (first["ts_us"], first["shown_ts_us"], first["kind"], first["group_id"]) == (
        T0 + 300_000,
        T0 + 380_000,
        "emotion",
        "group-laughter",
    )
    assert store.read_manifest(tmp_path)["counts"]["cues"] == 6


def test_the_ledger_rows_are_the_four_lanes_of_each_window() -> None:
    takes = ledger_report.report(session(), scripted_windows(), t0_us=T0)
    assert [take.group.name for take in takes] == ["take-1", "no-take"]
    rows = {(r.performer_id, r.ts_us): r for r in takes[0].rows}
    assert len(takes[0].rows) == 5
    first = rows[("ana", T0)]
    assert (first.intended_label, first.intended_intensity, first.intended_source) == (
        "laughter",
        "strong",
        "cue",
    )
    assert (first.cue_id, first.cue_kind, first.cue_shown, first.arc_label) == (
        "cue-ana-laughter",
        "emotion",
        True,
        "hesitation",
    )
    assert (first.targets, first.self_tagged) == ("hesitation,laughter", "laughter")
    assert (first.perceived_label, first.observers, first.agreed, first.disputed) == (
        "laughter",
        2,
        True,
        False,
    )
    assert (first.model, first.model_label, first.model_probability) == (
        "fer-mini",
        "laughter",
        0.7,
    )
    assert (first.f0_mean_hz, first.top_blendshape, first.top_blendshape_value) == (
        201.5,
        "mouthSmileLeft",
        0.8,
    )
    assert (first.take_start_s, first.media_start_s) == (0.0, 0.0)
    split = rows[("ana", T0 + W)]
    assert (split.revision, split.perceived_label, split.disputed) == (1, "laughter", True)
    text = rows[("ana", T0 + 3 * W)]
    assert (text.intended_label, text.cue_kind, text.cue_text, text.model_label) == (
        None,
        "text",
        "slower",
        "(none)",
    )
    ben = rows[("ben", T0)]
    assert (ben.intended_label, ben.targets, ben.perceived_label, ben.agreed) == (
        None,
        "",
        "surprise",
        False,
    )


def test_the_summary_counts_seconds_and_hit_rates_per_performer_and_emotion() -> None:
    [take, _] = ledger_report.report(session(), scripted_windows(), t0_us=T0)
    summary = {(r.performer_id, r.label): r for r in take.summary}
    labels = [entry.label for entry in session().vocabulary]
    assert [r.label for r in take.summary if r.performer_id == "ana"] == labels
    laughter = summary[("ana", "laughter")]
    assert (laughter.intended_s, laughter.self_tagged_s, laughter.perceived_s) == (0.2, 0.1, 0.2)
    assert (laughter.agreed_s, laughter.hit_s, laughter.disputed_s) == (0.1, 0.2, 0.1)
    assert (laughter.hit_rate, laughter.hit_rate_where_perceived) == (1.0, 1.0)
    hesitation = summary[("ana", "hesitation")]
    assert (hesitation.intended_s, hesitation.hit_rate, hesitation.hit_rate_where_perceived) == (
        0.1,
        0.0,
        None,
    )
    assert summary[("ana", "anger")].agreed_s == 0.1
    assert summary[("ben", "surprise")].perceived_s == 0.1
    assert ledger_report.confusion(take) == {
        "laughter": {"laughter": 2},
        "hesitation": {"(none)": 1},
    }


def test_export_writes_tables_pictures_and_reports_per_take(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    write_archive(folder, scripted_windows())
    written = export_session(folder, tmp_path / "out", "ledger")
    out = tmp_path / "out" / "ledger"
    names = sorted(path.relative_to(out).as_posix() for path in written)
    assert names == sorted(
        f"{group}{suffix}"
        for group in ("take-1", "no-take")
        for suffix in (".parquet", ".csv", ".summary.parquet", ".summary.csv", ".png", ".md")
    )
    table = pq.read_table(out / "take-1.parquet")
    assert table.schema == ledger_report.LEDGER_SCHEMA
    assert table.num_rows == 5
    text = read_csv_rows(out / "take-1.csv")
    assert [row["intended_label"] for row in text if row["performer_id"] == "ana"] == [
        "laughter",
        "laughter",
        "hesitation",
        "",
    ]
    summary = read_csv_rows(out / "take-1.summary.csv")
    assert {"performer_id": "ana", "label": "laughter", "hit_rate": "1.0"}.items() <= next(
        row for row in summary if row["performer_id"] == "ana" and row["label"] == "laughter"
    ).items()
    assert (out / "take-1.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    report = (out / "take-1.md").read_text(encoding="utf-8")
    assert report.startswith(f"# Ledger of {SID}, take-1")
    assert "| ana | laughter | 0.2 | 0.1 | 0.2 | 0.1 | 0.2 | 0.1 | 100% |" in report
    assert "- laughter: laughter 2" in report
    assert "- hesitation: (none) 1" in report
    assert "[take-1.png](take-1.png)" in report


def test_without_matplotlib_the_ledger_is_written_without_pictures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "archive"
    write_archive(folder, scripted_windows())
    for name in [n for n in sys.modules if n.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    for module in ("ledger_plot", "plotting"):
        monkeypatch.delitem(sys.modules, f"streams.archive.{module}", raising=False)
        monkeypatch.delattr(streams.archive, module, raising=False)
    with caplog.at_level(logging.WARNING, logger="streams.archive.model_gap"):
        written = export_session(folder, tmp_path / "out", "ledger")
    assert not [path for path in written if path.suffix == ".png"]
    assert len(written) == 10
    assert any(
        "ledger plots skipped: matplotlib is not installed" in r.getMessage()
        for r in caplog.records
    )
    report = (tmp_path / "out" / "ledger" / "take-1.md").read_text(encoding="utf-8")
    assert "No picture: matplotlib is not installed" in report


def test_a_session_without_intent_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "archive"
    write_archive(folder, [w.model_copy(update={"intent": None}) for w in scripted_windows()])
    with caplog.at_level(logging.WARNING, logger="streams.archive.ledger_report"):
        export_session(folder, tmp_path / "out", "ledger")
    assert any("no label window has an intended emotion" in r.getMessage() for r in caplog.records)
    report = (tmp_path / "out" / "ledger" / "take-1.md").read_text(encoding="utf-8")
    assert "No window had an intended emotion." in report
