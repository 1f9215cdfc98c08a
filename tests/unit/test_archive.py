"""The archive built from recorder parts: exactly-once records, playable media, manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import av

from streams import records
from streams.archive import store
from tests.archive_samples import SID, T0, carried, session, write_sample_archive


def test_every_record_once_and_exactly_as_it_was(tmp_path: Path) -> None:
    made = write_sample_archive(tmp_path)
    for kind in store.KINDS:
        stored = store.read_records(tmp_path, kind)
        assert len(stored) == len(made[kind]), kind
        assert sorted(r.model_dump_json() for r in stored) == sorted(
            r.model_dump_json() for r in made[kind]
        ), kind
    assert not (tmp_path / "parts").exists()


def test_media_plays_and_maps_back_to_capture_time(tmp_path: Path) -> None:
    made = write_sample_archive(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["t0_us"] == T0
    assert manifest["counts"]["video"] == len(made["video"])
    assert manifest["counts"]["audio"] == len(made["audio"])
    with av.open(str(tmp_path / "media" / "ana.mkv")) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == 30
    # Media time = capture time - t0 (to the millisecond Matroska keeps).
    assert abs(frames[-1].time - 29 * 0.066667) < 0.002
    with av.open(str(tmp_path / "media" / "ana.mkv")) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
    assert samples == 100 * 320
    back = store.read_media(tmp_path, "ana")
    originals = [m for m in made["audio"] + made["video"] if m.header.performer_id == "ana"]
    assert sorted((type(m).__name__, m.header.ts_us, m.header.seq) for m in back) == sorted(
        (type(m).__name__, m.header.ts_us, m.header.seq) for m in originals
    )
    first_frame = next(m for m in back if isinstance(m, records.VideoFrame))
    assert first_frame.header.session_id == SID
    assert first_frame.jpeg == next(m for m in originals if isinstance(m, records.VideoFrame)).jpeg


def test_manifest_has_raters_takes_and_checksums(tmp_path: Path) -> None:
    write_sample_archive(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["session"]["session_id"] == SID
    assert [t["take_id"] for t in manifest["takes"]] == [1]
    raters = {r["rater_id"]: r for r in manifest["raters"]}
    assert set(raters) == {"r1", "r2", "r3"}  # r3 only rated continuously
    assert raters["r1"]["clock_offset_us_median"] == 1_500
    assert (raters["r1"]["tags"], raters["r1"]["rating_samples"]) == (2, 80)
    assert (raters["r3"]["tags"], raters["r3"]["rating_samples"]) == (0, 80)
    assert raters["r1"]["reaction_lag_us"] == [0, 300_000]
    assert raters["r3"]["rtt_us_median"] is None  # only tags carry a round trip
    assert raters["r1"]["lag_applied"]["lag_us"] == 420_000
    assert raters["r2"]["lag_applied"] is None
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((tmp_path / name).read_bytes()).hexdigest() == digest
    assert "media/ana.mkv" in manifest["files"]
    assert "tags.parquet" in manifest["files"]


def test_undecodable_records_are_counted_and_the_rest_archived(tmp_path: Path) -> None:
    made = write_sample_archive(tmp_path / "reference", duplicate=False)
    folder = tmp_path / "archive"
    garbage = store.RawMessage(0, 10_000, b"s-archive/ana", b"\xff not a record", [])
    for kind, items in made.items():
        messages = []
        for offset, item in enumerate(carried(kind, items)):
            encoded = records.encode(item)
            messages.append(
                store.RawMessage(0, offset, encoded.key, encoded.value, list(encoded.headers))
            )
        store.write_part(folder, kind, 0, [*messages, garbage])
    manifest = store.build_archive(folder, session(), software={})
    assert manifest["counts"]["undecodable"] == len(made)  # one bad record per kind
    for kind in store.KINDS:
        assert len(store.read_records(folder, kind)) == len(made[kind])
    assert manifest["counts"]["video"] == len(made["video"])
