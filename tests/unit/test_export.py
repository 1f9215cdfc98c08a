"""Exports of an archived session: JSONL, Parquet and CSV round-trip, ELAN tiers line up."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from streams import records
from streams.archive import export, store
from streams.archive.export import ExportError, export_session, read_csv, read_eaf_tags, read_jsonl
from tests.archive_samples import (
    SID,
    T0,
    carried,
    sample_records,
    session,
    write_sample_archive,
)

_TIMING = records.TagTiming(
    client_press_ts_us=T0, clock_offset_us=1_500, rtt_us=900, clock_uncertainty_us=451
)


def _dumps(rows: list[Any]) -> list[str]:
    return [row.model_dump_json() for row in rows]


def test_jsonl_round_trips_every_kind(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    write_sample_archive(folder)
    out = tmp_path / "out" / "jsonl"
    paths = export_session(folder, out, "jsonl")
    assert sorted(p.name for p in paths) == sorted(
        [f"{kind}.jsonl" for kind in store.KINDS] + ["labels.latest.jsonl"]
    )
    for kind in store.KINDS:
        stored = store.read_records(folder, kind)
        assert stored, kind
        lines = (out / f"{kind}.jsonl").read_text(encoding="utf-8").splitlines()
        assert lines == _dumps(stored), kind
        assert read_jsonl(out / f"{kind}.jsonl", kind) == stored, kind
    latest = store.latest_labels(store.read_records(folder, "labels"))
    assert read_jsonl(out / "labels.latest.jsonl", "labels") == latest


def test_csv_round_trips_exactly(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    write_sample_archive(folder)
    paths = export_session(folder, tmp_path / "csv", "csv")
    assert sorted(p.name for p in paths) == sorted(f"{kind}.csv" for kind in store.KINDS)
    for kind, model in store.KINDS.items():
        stored = store.read_records(folder, kind)
        back = read_csv(tmp_path / "csv" / f"{kind}.csv", kind)
        assert back == stored, kind
        # Exactly: same JSON (so ints stay ints, floats floats, None None).
        assert _dumps(back) == _dumps(stored), kind
        header = (tmp_path / "csv" / f"{kind}.csv").read_text(encoding="utf-8").splitlines()[0]
        assert header.split(",") == list(model.model_fields), kind


def test_csv_keeps_ints_floats_bools_and_none(tmp_path: Path) -> None:
    frames = [
        records.ProsodyFrame(
            ts_us=T0,
            session_id=SID,
            performer_id="cat",
            f0_hz=180,
            voicing_probability=1,
            voiced=True,
            loudness_db=-25.0,
            voice_quality=records.VoiceQuality(hnr_db=12, jitter_local=0.01, shimmer_local=None),
        ),
        records.ProsodyFrame(
            ts_us=T0 + 10_000,
            session_id=SID,
            performer_id="cat",
            f0_hz=None,
            voicing_probability=0.0,
            voiced=False,
            loudness_db=-30,
        ),
    ]
    folder = tmp_path / "archive"
    _write_archive(folder, {"prosody": frames})
    export_session(folder, tmp_path / "csv", "csv")
    back = read_csv(tmp_path / "csv" / "prosody.csv", "prosody")
    assert [r.model_dump_json() for r in back] == [
        r.model_dump_json() for r in store.read_records(folder, "prosody")
    ]
    mine = [r for r in back if isinstance(r, records.ProsodyFrame) and r.performer_id == "cat"]
    assert mine == frames
    first = mine[0]
    assert first.voiced is True
    assert first.voice_quality is not None
    assert first.voice_quality.shimmer_local is None
    assert mine[1].f0_hz is None
    # The archive's Parquet keeps int-or-float fields as float64; the CSV itself keeps
    # ints ints and floats floats (records written directly, without the archive).
    export._write_csv(tmp_path / "direct.csv", records.ProsodyFrame, frames)
    direct = read_csv(tmp_path / "direct.csv", "prosody")
    assert [r.model_dump_json() for r in direct] == [r.model_dump_json() for r in frames]
    assert isinstance(direct[0], records.ProsodyFrame)
    assert isinstance(direct[1], records.ProsodyFrame)
    assert type(direct[0].f0_hz) is int
    assert type(direct[1].loudness_db) is int
    assert type(direct[0].loudness_db) is float


def test_parquet_export_is_readable_and_equal(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    write_sample_archive(folder)
    out = tmp_path / "parquet"
    paths = export_session(folder, out, "parquet")
    assert sorted(p.name for p in paths) == sorted(
        [f"{kind}.parquet" for kind in store.KINDS] + ["labels.latest.parquet"]
    )
    for kind, model in store.KINDS.items():
        table = pq.read_table(out / f"{kind}.parquet")
        assert store.table_records(model, table) == store.read_records(folder, kind), kind
    latest = store.table_records(records.LabelWindow, pq.read_table(out / "labels.latest.parquet"))
    assert latest == store.latest_labels(store.read_records(folder, "labels"))


def test_eaf_has_a_tier_per_performer_and_rater_at_the_right_times(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    made = write_sample_archive(folder)
    out = tmp_path / "elan"
    [path] = export_session(folder, out, "eaf")
    assert path == out / f"{SID}.eaf"
    tiers = read_eaf_tags(path)
    assert set(tiers) == {
        "ana/r1",
        "ana/r2",
        "ben/r1",
        "ben/r2",
        "ana/consensus",
        "ben/consensus",
    }
    for tag in made["tags"]:
        # Point tag at T0 + 500 ms, span 400 ms: [300, 700) ms of media time.
        assert tiers[f"{tag.performer_id}/{tag.rater_id}"] == [(300, 700, tag.label)]
    assert tiers["ben/r2"] == [(300, 700, "anger")]
    assert tiers["ana/consensus"] == []  # the sample windows have no consensus

    # Linked media: every performer's .mkv, found from the .eaf's folder.
    root = ET.parse(path).getroot()
    media = root.findall("HEADER/MEDIA_DESCRIPTOR")
    assert {m.get("MIME_TYPE") for m in media} == {"video/x-matroska"}
    for descriptor, performer in zip(media, ("ana", "ben"), strict=True):
        relative = descriptor.get("RELATIVE_MEDIA_URL")
        assert relative is not None
        assert (out / relative).resolve() == (folder / "media" / f"{performer}.mkv").resolve()
        assert descriptor.get("MEDIA_URL") == (folder / "media" / f"{performer}.mkv").as_uri()


def _tag(tag_id: str, ts_ms: int, action: str, **fields: Any) -> records.TagEvent:
    defaults: dict[str, Any] = {"performer_id": "ana", "rater_id": "r3"}
    defaults.update(fields)
    return records.TagEvent(
        ts_us=T0 + ts_ms * 1000,
        session_id=SID,
        tag_id=tag_id,
        rater_role="observer",
        action=action,
        timing=_TIMING,
        received_ts_us=T0 + ts_ms * 1000 + 40_000,
        **defaults,
    )


def _write_archive(folder: Path, extra: dict[str, list[Any]], **build: Any) -> dict[str, list[Any]]:
    made = sample_records()
    for kind, items in extra.items():
        made[kind] = made[kind] + items
    for kind, items in made.items():
        messages = []
        for offset, item in enumerate(carried(kind, items)):
            encoded = records.encode(item)
            messages.append(
                store.RawMessage(0, offset, encoded.key, encoded.value, list(encoded.headers))
            )
        store.write_part(folder, kind, 0, messages)
    store.build_archive(folder, session(), software={"livetag": "test"}, **build)
    return made


def test_eaf_holds_undos_intensity_and_consensus(tmp_path: Path) -> None:
    tags = [
        _tag("hold-laughter", 200, "onset", label="laughter"),
        _tag("hold-laughter-end", 800, "offset", label="laughter", onset_tag_id="hold-laughter"),
        _tag("point-strong", 1000, "point", label="surprise", intensity="strong", span_us=200_000),
        _tag("hold-anger", 1200, "onset", label="anger"),
        _tag("hold-anger-end", 1400, "offset", label="anger", onset_tag_id="hold-anger"),
        _tag("undo-anger-end", 1450, "undo", undoes_tag_id="hold-anger-end"),
        _tag("point-undone", 1500, "point", label="anger", span_us=200_000),
        _tag("undo-point", 1550, "undo", undoes_tag_id="point-undone"),
        _tag("hold-open", 1600, "onset", label="sadness"),
        _tag("hold-undone", 1700, "onset", label="joy"),
        _tag("undo-onset", 1750, "undo", undoes_tag_id="hold-undone"),
        # Before media start: clamped to 0.
        _tag("point-early", 50, "point", label="laughter", span_us=400_000, performer_id="ben"),
        # Overlapping tags of one rater: the later one goes to an overflow tier.
        _tag("point-joy", 1000, "point", label="joy", span_us=400_000, rater_id="r4"),
        _tag("point-anger", 1100, "point", label="anger", span_us=400_000, rater_id="r4"),
    ]
    windows = [
        records.LabelWindow(
            ts_us=T0 + k * 100_000,
            session_id=SID,
            performer_id="ana",
            window_us=100_000,
            features=records.WindowFeatures(),
            raters=[],
            consensus="laughter" if k < 6 else "anger",
            revision=2,
        )
        for k in range(2, 7)
    ] + [
        # An older revision saying otherwise must not count.
        records.LabelWindow(
            ts_us=T0 + 400_000,
            session_id=SID,
            performer_id="ana",
            window_us=100_000,
            features=records.WindowFeatures(),
            raters=[],
            consensus="joy",
            revision=1,
        )
    ]
    # The sample has revision 0 (no consensus) of every window; revision 2 of windows 2..6
    # and revision 1 of window 4 come on top.
    folder = tmp_path / "archive"
    _write_archive(folder, {"tags": tags, "labels": windows})
    [path] = export_session(folder, tmp_path / "elan", "eaf")
    tiers = read_eaf_tags(path)

    # The open hold runs the limit on a hold (30 s), as in the label windows, though the
    # session's last record is at T0 + 1990 ms.
    assert tiers["ana/r3"] == [
        (200, 800, "laughter"),
        (900, 1100, "surprise (strong)"),
        (1600, 31_600, "sadness"),
    ]
    values = {value for annotations in tiers.values() for _, _, value in annotations}
    assert "joy" not in {v for _, _, v in tiers["ana/r3"]}
    assert "anger" not in {v for _, _, v in tiers["ana/r3"]}
    assert "sadness" in values
    assert tiers["ben/r3"] == [(0, 250, "laughter")]
    assert tiers["ana/r4"] == [(800, 1200, "joy")]
    assert tiers["ana/r4~2"] == [(900, 1300, "anger")]
    assert tiers["ana/consensus"] == [(200, 600, "laughter"), (600, 700, "anger")]
    assert tiers["ben/consensus"] == []


def test_eaf_tiers_follow_the_tag_rules_with_the_sessions_limit_on_a_hold(
    tmp_path: Path,
) -> None:
    tags = [
        # A point's span is capped at the limit on a hold (5 s here).
        _tag("point-long", 10_000, "point", label="surprise", span_us=60_000_000),
        # A hold ends at most the limit after its onset.
        _tag("hold-long", 20_000, "onset", label="anger"),
        _tag("hold-long-end", 27_000, "offset", label="anger", onset_tag_id="hold-long"),
        # Another rater's offset does not end it: it runs the whole limit.
        _tag("hold-foreign", 30_000, "onset", label="sadness"),
        _tag(
            "hold-foreign-end",
            31_000,
            "offset",
            label="sadness",
            onset_tag_id="hold-foreign",
            rater_id="r4",
        ),
        # Of two offsets of the same rater, the earlier ends the hold.
        _tag("hold-twice", 40_000, "onset", label="fear"),
        _tag("hold-twice-end1", 41_500, "offset", label="fear", onset_tag_id="hold-twice"),
        _tag("hold-twice-end2", 41_000, "offset", label="fear", onset_tag_id="hold-twice"),
        # Another rater's undo changes nothing.
        _tag("point-kept", 50_000, "point", label="joy", span_us=200_000),
        _tag("undo-foreign", 50_500, "undo", undoes_tag_id="point-kept", rater_id="r4"),
        # Undoing the offset that did not end a hold still retracts the whole hold.
        _tag("hold-undone", 80_000, "onset", label="laughter"),
        _tag("hold-undone-end1", 81_000, "offset", label="laughter", onset_tag_id="hold-undone"),
        _tag("hold-undone-end2", 82_000, "offset", label="laughter", onset_tag_id="hold-undone"),
        _tag("undo-end2", 82_500, "undo", undoes_tag_id="hold-undone-end2"),
        # An offset stamped before its onset: the hold marks the instant of the onset.
        _tag("hold-back", 90_000, "onset", label="confusion"),
        _tag("hold-back-end", 89_000, "offset", label="confusion", onset_tag_id="hold-back"),
    ]
    folder = tmp_path / "archive"
    _write_archive(folder, {"tags": tags}, tag_max_hold_us=5_000_000)
    manifest = json.loads((folder / store.MANIFEST).read_text(encoding="utf-8"))
    assert manifest["tag_max_hold_us"] == 5_000_000
    [path] = export_session(folder, tmp_path / "elan", "eaf")
    tiers = read_eaf_tags(path)
    assert tiers["ana/r3"] == [
        (7_500, 12_500, "surprise"),
        (20_000, 25_000, "anger"),
        (30_000, 35_000, "sadness"),
        (40_000, 41_000, "fear"),
        (49_900, 50_100, "joy"),
        (90_000, 90_001, "confusion"),  # 1 µs, made 1 ms for ELAN
    ]
    assert tiers["ana/r4"] == [], "r4 tagged ana, though nothing of it counts"


def test_an_archive_that_does_not_record_the_limit_on_a_hold_has_the_default(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "archive"
    _write_archive(
        folder,
        {
            "tags": [_tag("hold-open", 100, "onset", label="laughter")],
            # A late record makes the session long.
            "labels": [
                records.LabelWindow(
                    ts_us=T0 + 60_000_000,
                    session_id=SID,
                    performer_id="ben",
                    window_us=100_000,
                    features=records.WindowFeatures(),
                    raters=[],
                    consensus=None,
                )
            ],
        },
    )
    manifest_path = folder / store.MANIFEST
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    del manifest["tag_max_hold_us"]  # as archives built before it was recorded
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    [path] = export_session(folder, tmp_path / "elan", "eaf")
    assert read_eaf_tags(path)["ana/r3"] == [(100, 30_100, "laughter")]


def test_reexport_overwrites_without_leftovers(tmp_path: Path) -> None:
    folder = tmp_path / "archive"
    write_sample_archive(folder)
    out = tmp_path / "elan"
    export_session(folder, out, "eaf")
    export_session(folder, out, "eaf")
    assert sorted(p.name for p in out.iterdir()) == [f"{SID}.eaf"]


def test_not_an_archive_or_unknown_format(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match=r"not a session archive"):
        export_session(tmp_path / "empty", tmp_path / "out", "jsonl")
    with pytest.raises(ExportError, match=r"not a session archive"):
        export_session(tmp_path / "missing", tmp_path / "out", "csv")
    folder = tmp_path / "archive"
    write_sample_archive(folder)
    with pytest.raises(ExportError, match=r"unknown export format 'xlsx'"):
        export_session(folder, tmp_path / "out", "xlsx")  # type: ignore[arg-type]
    assert issubclass(ExportError, ValueError)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["t0_us"] == T0


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "eaf", "hf", "gap"])
def test_an_export_reports_its_progress_up_to_every_file(tmp_path: Path, fmt: str) -> None:
    folder = tmp_path / SID
    write_sample_archive(folder)
    reports: list[tuple[str, int, int]] = []
    written = export_session(
        folder,
        tmp_path / "out",
        fmt,  # type: ignore[arg-type]
        progress=lambda step, done, total: reports.append((step, done, total)),
    )
    assert written
    steps = {step for step, _, _ in reports}
    assert len(steps) == 1
    done = [d for _, d, _ in reports]
    assert done == sorted(done)
    assert done[0] == 0
    assert done[-1] == reports[-1][2]  # finished: the last report is the whole
    if fmt in ("jsonl", "parquet", "csv"):
        # One report before each file and one at the end.
        assert len(reports) == reports[-1][2] + 1 == len(written) + 1
