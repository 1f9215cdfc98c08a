"""The model gap report: its rows and summaries on scripted windows, worked out by hand,
and the files `livetag export --format gap` writes."""

from __future__ import annotations

import csv
import logging
import math
import sys
from collections import Counter
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import streams.archive
from infra.cli import main
from streams import records
from streams.archive import model_gap, store
from streams.archive.export import export_session
from tests.archive_samples import SID, T0, carried, sample_records, session

MS = 1_000


def window(
    performer: str,
    start_ms: int,
    raters: dict[str, str],
    models: dict[str, dict[str, float]],
    *,
    unread: tuple[str, ...] = (),
    neutral: dict[str, dict[str, float]] | None = None,
    revision: int = 0,
) -> records.LabelWindow:
    """A 100 ms window: each rater holding one label, consensus and agreement as the
    aligner makes them (the label most raters hold, none on a tie), the models' readings
    (top label: the most probable one), the models that read a face without a top label
    (``neutral``: their classes outside the vocabulary outweigh these) and the models that
    saw no face."""
    holders: dict[str, int] = {}
    for label in raters.values():
        holders[label] = holders.get(label, 0) + 1
    most = max(holders.values(), default=0)
    leaders = [label for label, count in holders.items() if count == most]
    consensus = leaders[0] if len(leaders) == 1 else None
    return records.LabelWindow(
        ts_us=T0 + start_ms * MS,
        session_id=SID,
        performer_id=performer,
        window_us=100_000,
        features=records.WindowFeatures(),
        raters=[
            records.RaterLabels(
                rater_id=rater,
                rater_role="observer",
                labels=[
                    records.ActiveLabel(label=label, intensity="normal", tag_id=f"tag-{rater}-x")
                ],
            )
            for rater, label in raters.items()
        ],
        consensus=consensus,
        consensus_agreement=None if consensus is None else round(most / len(raters), 4),
        revision=revision,
        models=[
            records.ModelEstimate(
                model=model,
                probabilities=probabilities,
                top_label=max(probabilities, key=lambda label: probabilities[label]),
                frames_read=2,
            )
            for model, probabilities in models.items()
        ]
        + [
            records.ModelEstimate(model=model, probabilities=probabilities, frames_read=3)
            for model, probabilities in (neutral or {}).items()
        ]
        + [records.ModelEstimate(model=model, probabilities={}, frames_read=0) for model in unread],
    )


TWO = {"r1": "laughter", "r2": "laughter"}


def scripted_session(takes: list[records.Take] | None = None) -> records.SessionRecord:
    if takes is None:
        takes = [
            records.Take(take_id=1, start_ts_us=T0, end_ts_us=T0 + 1_000_000),
            records.Take(take_id=2, start_ts_us=T0 + 2_000_000),  # not ended
        ]
    return session().model_copy(update={"takes": takes})


def scripted_windows() -> list[records.LabelWindow]:
    return [
        # Take 1. Agreed on laughter, fer read surprise: a gap (0.7); a revision before it
        # had no model reading and must not count.
        window("ana", 0, TWO, {}, revision=0),
        window("ana", 0, TWO, {"fer": {"surprise": 0.6, "laughter": 0.3}}, revision=1),
        # Two of three raters: agreed (0.6667, Krippendorff's .667). fer agreed; "other"
        # read anger: a gap (0.8).
        window(
            "ana",
            100,
            {"r1": "laughter", "r2": "laughter", "r3": "anger"},
            {"fer": {"laughter": 0.8, "surprise": 0.2}, "other": {"anger": 0.5, "laughter": 0.2}},
        ),
        # One rater agrees with nobody: no row, although fer disagrees.
        window("ana", 200, {"r1": "laughter"}, {"fer": {"surprise": 0.9}}),
        # A tie: no consensus, no row.
        window("ben", 300, {"r1": "anger", "r2": "laughter"}, {"fer": {"surprise": 0.9}}),
        # Agreed on anger; fer saw no face and "other" has no estimate: unread, no row.
        window("ben", 400, {"r1": "anger", "r2": "anger"}, {}, unread=("fer",)),
        # Agreed on sadness, which fer's classes do not map to: a gap of 1.
        window(
            "ben", 500, {"r1": "sadness", "r2": "sadness"}, {"fer": {"laughter": 0.7, "fear": 0.3}}
        ),
        # Agreed on embarrassment; fer read the face and saw it neutral (0.7 outside the
        # vocabulary): its answer is (none), a miss like any other; "other": unread.
        window(
            "ben",
            600,
            {"r1": "embarrassment", "r2": "embarrassment"},
            {},
            neutral={"fer": {"sadness": 0.2, "fear": 0.1}},
        ),
        # Between the takes: the no-take group.
        window("ana", 1500, {"r1": "surprise", "r2": "surprise"}, {"fer": {"laughter": 0.55}}),
        # Take 2, which has not ended.
        window("ana", 2500, TWO, {"fer": {"surprise": 0.75, "laughter": 0.25}}),
    ]


def expected_row(**values: Any) -> model_gap.GapRow:
    common = {"session_id": SID, "frames_read": 2, "revision": 0}
    return model_gap.GapRow(**{**common, **values})


def test_gap_rows_are_the_windows_humans_agreed_on_and_a_model_did_not() -> None:
    t0 = T0 - 250_000  # the media started before the first take
    takes = model_gap.report(scripted_session(), scripted_windows(), t0_us=t0)
    by_name = {take.group.name: take for take in takes}
    assert list(by_name) == ["take-1", "take-2", "no-take"]
    assert by_name["take-1"].rows == [
        expected_row(
            take_id=1,
            performer_id="ana",
            start_ts_us=T0,
            end_ts_us=T0 + 100_000,
            take_start_s=0.0,
            take_end_s=0.1,
            media_start_s=0.25,
            media_end_s=0.35,
            human_label="laughter",
            human_agreement=1.0,
            raters=2,
            model="fer",
            model_label="surprise",
            model_probability=0.6,
            model_probability_of_human=0.3,
            model_has_label=True,
            gap=0.7,
            revision=1,
        ),
        expected_row(
            take_id=1,
            performer_id="ana",
            start_ts_us=T0 + 100_000,
            end_ts_us=T0 + 200_000,
            take_start_s=0.1,
            take_end_s=0.2,
            media_start_s=0.35,
            media_end_s=0.45,
            human_label="laughter",
            human_agreement=0.6667,
            raters=3,
            model="other",
            model_label="anger",
            model_probability=0.5,
            model_probability_of_human=0.2,
            model_has_label=True,
            gap=0.8,
        ),
        expected_row(
            take_id=1,
            performer_id="ben",
            start_ts_us=T0 + 500_000,
            end_ts_us=T0 + 600_000,
            take_start_s=0.5,
            take_end_s=0.6,
            media_start_s=0.75,
            media_end_s=0.85,
            human_label="sadness",
            human_agreement=1.0,
            raters=2,
            model="fer",
            model_label="laughter",
            model_probability=0.7,
            model_probability_of_human=0.0,
            model_has_label=False,
            gap=1.0,
        ),
        expected_row(
            take_id=1,
            performer_id="ben",
            start_ts_us=T0 + 600_000,
            end_ts_us=T0 + 700_000,
            take_start_s=0.6,
            take_end_s=0.7,
            media_start_s=0.85,
            media_end_s=0.95,
            human_label="embarrassment",
            human_agreement=1.0,
            raters=2,
            model="fer",
            model_label="(none)",
            model_probability=0.7,  # what outweighed sadness: 1 - 0.2 - 0.1
            model_probability_of_human=0.0,
            model_has_label=False,
            gap=1.0,
            frames_read=3,
        ),
    ]
    assert by_name["take-2"].rows == [
        expected_row(
            take_id=2,
            performer_id="ana",
            start_ts_us=T0 + 2_500_000,
            end_ts_us=T0 + 2_600_000,
            take_start_s=0.5,
            take_end_s=0.6,
            media_start_s=2.75,
            media_end_s=2.85,
            human_label="laughter",
            human_agreement=1.0,
            raters=2,
            model="fer",
            model_label="surprise",
            model_probability=0.75,
            model_probability_of_human=0.25,
            model_has_label=True,
            gap=0.75,
        )
    ]
    # Outside every take: no take-relative times, the media time places it.
    assert by_name["no-take"].rows == [
        expected_row(
            take_id=None,
            performer_id="ana",
            start_ts_us=T0 + 1_500_000,
            end_ts_us=T0 + 1_600_000,
            take_start_s=None,
            take_end_s=None,
            media_start_s=1.75,
            media_end_s=1.85,
            human_label="surprise",
            human_agreement=1.0,
            raters=2,
            model="fer",
            model_label="laughter",
            model_probability=0.55,
            model_probability_of_human=0.0,
            model_has_label=False,
            gap=1.0,
        )
    ]


def test_the_summary_per_emotion_by_hand() -> None:
    takes = model_gap.report(scripted_session(), scripted_windows(), t0_us=T0)
    take1 = next(take for take in takes if take.group.take_id == 1)
    summary = {(row.model, row.label): row for row in take1.summary}
    vocabulary = [entry.label for entry in session().vocabulary]
    # Every vocabulary label, (none) (a model answered it) and the totals, for both models.
    assert [row.label for row in take1.summary if row.model == "fer"] == [
        *vocabulary,
        "(none)",
        model_gap.ALL_LABELS,
    ]
    assert [row.model for row in take1.summary] == ["fer"] * 12 + ["other"] * 12

    def numbers(model: str, label: str) -> tuple[Any, ...]:
        row = summary[(model, label)]
        return (
            row.windows_agreed,
            row.windows_unread,
            row.model_agreed,
            row.model_agreement_rate,
            row.model_said,
            row.kappa,
            row.gap_windows,
            row.mean_gap,
        )

    # fer read four agreed windows of take 1: (laughter, surprise), (laughter, laughter),
    # (sadness, laughter), (embarrassment, (none)); the anger window it did not read.
    # All: p_o = 1/4, p_e = (2*2)/16 (laughter) -> kappa = (1/4 - 1/4) / (3/4) = 0;
    # gaps 0.7, 0.2, 1.0, 1.0.
    assert numbers("fer", model_gap.ALL_LABELS) == (4, 1, 1, 0.25, 4, 0.0, 3, 0.725)
    # Laughter vs the rest: (T,F), (T,T), (F,T), (F,F): p_o = 1/2, p_e = (2*2 + 2*2)/16
    # -> kappa 0.
    assert numbers("fer", "laughter") == (2, 0, 1, 0.5, 2, 0.0, 1, 0.45)
    # Sadness vs the rest: (F,F), (F,F), (T,F), (F,F): p_o = 3/4, p_e = (3*4)/16 -> 0.
    assert numbers("fer", "sadness") == (1, 0, 0, 0.0, 0, 0.0, 1, 1.0)
    # The neutral face: a miss of embarrassment, and fer said (none) once.
    assert numbers("fer", "embarrassment") == (1, 0, 0, 0.0, 0, 0.0, 1, 1.0)
    assert numbers("fer", "(none)") == (0, 0, 0, None, 1, 0.0, 0, None)
    # Anger: no window fer read; everyone said "not anger": kappa undefined.
    assert numbers("fer", "anger") == (0, 1, 0, None, 0, None, 0, None)
    # "other" read one agreed window (laughter -> anger) and none of the rest: p_o = 0 and
    # p_e = 0 (no label in common) -> kappa 0, for anger against the rest too.
    assert numbers("other", model_gap.ALL_LABELS) == (1, 4, 0, 0.0, 1, 0.0, 1, 0.8)
    assert numbers("other", "anger") == (0, 1, 0, None, 1, 0.0, 0, None)
    assert numbers("other", "(none)") == (0, 0, 0, None, 0, None, 0, None)


def test_cohen_kappa_of_a_textbook_table() -> None:
    # 50 items: both yes 20, A yes B no 5, A no B yes 10, both no 15: p_o = 0.7,
    # p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5 -> kappa 0.4.
    table = Counter({("yes", "yes"): 20, ("yes", "no"): 5, ("no", "yes"): 10, ("no", "no"): 15})
    kappa = model_gap.cohen_kappa(table)
    assert kappa is not None
    assert math.isclose(kappa, 0.4)
    # Straight from the counts: a thousand times the items, the same kappa, as fast.
    kappa = model_gap.cohen_kappa(Counter({pair: n * 1000 for pair, n in table.items()}))
    assert kappa is not None
    assert math.isclose(kappa, 0.4)
    assert model_gap.cohen_kappa(Counter({("a", "a"): 1, ("b", "b"): 1})) == 1.0
    assert model_gap.cohen_kappa(Counter({("a", "b"): 3, ("b", "a"): 3})) == -1.0
    assert model_gap.cohen_kappa(Counter()) is None
    assert model_gap.cohen_kappa(Counter({("a", "a"): 2})) is None  # chance agreement 1
    # Pairs counted down to nothing (a revision took them back) count nothing.
    assert model_gap.cohen_kappa(Counter({("a", "a"): 2, ("a", "b"): 0, ("b", "a"): -1})) is None


def test_read_is_frames_read_and_a_neutral_reading_answers_none() -> None:
    read = records.ModelEstimate(model="fer", probabilities={"fear": 0.1}, frames_read=1)
    assert model_gap.model_answer(read) == model_gap.NO_LABEL == "(none)"
    assert model_gap.model_answer_probability(read) == 0.9
    unread = records.ModelEstimate(model="fer", probabilities={}, frames_read=0)
    assert model_gap.model_answer(unread) is None
    assert model_gap.model_answer_probability(unread) is None
    said = records.ModelEstimate(
        model="fer", probabilities={"fear": 0.6}, top_label="fear", frames_read=2
    )
    assert (model_gap.model_answer(said), model_gap.model_answer_probability(said)) == (
        "fear",
        0.6,
    )


def test_a_session_without_takes_has_one_group_of_every_window() -> None:
    takes = model_gap.report(scripted_session([]), scripted_windows(), t0_us=T0)
    assert [take.group.name for take in takes] == ["no-take"]
    assert len(takes[0].rows) == 6
    assert all(row.take_start_s is None for row in takes[0].rows)


def test_a_take_without_windows_still_gets_its_tables() -> None:
    takes = model_gap.report(
        scripted_session([records.Take(take_id=7, start_ts_us=T0 + 9_000_000)]),
        scripted_windows(),
        t0_us=T0,
    )
    assert [take.group.name for take in takes] == ["take-7", "no-take"]
    assert takes[0].rows == []
    assert {row.windows_agreed for row in takes[0].summary} == {0}


def test_the_schemas_are_the_rows() -> None:
    assert model_gap.GAP_SCHEMA.names == [f.name for f in fields(model_gap.GapRow)]
    assert model_gap.SUMMARY_SCHEMA.names == [f.name for f in fields(model_gap.SummaryRow)]


# ---------------------------------------------------------------- files


def write_archive(folder: Path, labels: list[records.LabelWindow], **update: Any) -> None:
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
    record = scripted_session().model_copy(update=update)
    store.build_archive(folder, record, software={"livetag": "test"})


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def test_export_writes_tables_and_plots_per_take(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    write_archive(folder, scripted_windows())
    written = export_session(folder, tmp_path / "out", "gap")
    gap = tmp_path / "out" / "model_gap"
    names = sorted(path.relative_to(tmp_path / "out").as_posix() for path in written)
    assert names == sorted(
        f"model_gap/{group}{suffix}"
        for group in ("take-1", "take-2", "no-take")
        for suffix in (".parquet", ".csv", ".summary.parquet", ".summary.csv", ".png")
    )
    t0 = store.read_manifest(folder)["t0_us"]
    expected = {
        take.group.name: take
        for take in model_gap.report(scripted_session(), scripted_windows(), t0_us=t0)
    }
    for name, take in expected.items():
        table = pq.read_table(gap / f"{name}.parquet")
        assert table.schema == model_gap.GAP_SCHEMA
        assert table.to_pylist() == [asdict(row) for row in take.rows]
        summary = pq.read_table(gap / f"{name}.summary.parquet")
        assert summary.to_pylist() == [asdict(row) for row in take.summary]
        text = read_csv_rows(gap / f"{name}.csv")
        assert [row["start_ts_us"] for row in text] == [str(r.start_ts_us) for r in take.rows]
        assert [row["gap"] for row in text] == [str(r.gap) for r in take.rows]
    first = read_csv_rows(gap / "take-1.csv")[2]
    assert (first["human_label"], first["model_label"], first["model_has_label"]) == (
        "sadness",
        "laughter",
        "false",
    )
    assert read_csv_rows(gap / "no-take.csv")[0]["take_id"] == ""  # null: an empty cell
    picture = (gap / "take-1.png").read_bytes()
    assert picture.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = int.from_bytes(picture[16:20], "big"), int.from_bytes(picture[20:24], "big")
    assert (width, height) == (1400, round(100 * (0.8 + 3.8 * 2)))  # two models, two rows


def test_without_matplotlib_the_tables_are_written_and_the_plots_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "archive"
    write_archive(folder, scripted_windows())
    # Every import of matplotlib (or of a part of it) fails, as where it is not installed.
    for name in [n for n in sys.modules if n.split(".")[0] == "matplotlib"] + ["matplotlib"]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "streams.archive.model_gap_plot", raising=False)
    monkeypatch.delattr(streams.archive, "model_gap_plot", raising=False)
    with caplog.at_level(logging.WARNING, logger="streams.archive.model_gap"):
        written = export_session(folder, tmp_path / "out", "gap")
    assert not [path for path in written if path.suffix == ".png"]
    assert len(written) == 12
    assert any(
        "model gap plots skipped: matplotlib is not installed" in r.getMessage()
        and "livetag[report]" in r.getMessage()
        for r in caplog.records
    )


def test_a_session_without_model_readings_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "archive"
    write_archive(folder, [w.model_copy(update={"models": []}) for w in scripted_windows()])
    with caplog.at_level(logging.WARNING, logger="streams.archive.model_gap"):
        export_session(folder, tmp_path / "out", "gap")
    assert any("no label window has a model reading" in r.getMessage() for r in caplog.records)
    assert pq.read_table(tmp_path / "out" / "model_gap" / "take-1.parquet").num_rows == 0
    # No model: no summary rows either, but the file is there with its columns.
    summary = pq.read_table(tmp_path / "out" / "model_gap" / "take-1.summary.parquet")
    assert summary.num_rows == 0
    assert summary.schema == model_gap.SUMMARY_SCHEMA


def test_the_cli_exports_the_gap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_archive(tmp_path / "data" / SID, scripted_windows())
    monkeypatch.setenv("LIVETAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["export", SID, "--format", "gap"])
    assert result.exit_code == 0, result.output
    printed = result.output.split()
    assert f"{SID}-gap/model_gap/take-1.csv" in printed
    assert all((tmp_path / line).is_file() for line in printed)
