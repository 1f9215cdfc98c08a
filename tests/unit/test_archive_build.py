"""Building a session's archive: it says what it writes as it goes (each file with its
size), and a finished build leaves no lock file in the archive."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, cast

import pytest

from streams import records
from streams.archive import store
from streams.archive.recorder import SessionRecorder
from streams.settings import Settings
from tests.archive_samples import SID, carried, sample_records, session


def write_parts(folder: Path) -> None:
    """The raw parts a recorder writes while the session runs (nothing built yet)."""
    for kind, items in sample_records().items():
        messages = []
        for offset, item in enumerate(carried(kind, items)):
            encoded = records.encode(item)
            messages.append(
                store.RawMessage(0, offset, encoded.key, encoded.value, list(encoded.headers))
            )
        store.write_part(folder, kind, 0, messages)


def test_the_build_logs_each_file_it_writes_with_its_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_parts(tmp_path)
    parts = list((tmp_path / "parts").rglob("*.parquet"))
    with caplog.at_level(logging.INFO, logger="streams.archive.store"):
        store.build_archive(tmp_path, session(), software={"livetag": "test"})
    lines = [r.getMessage() for r in caplog.records if r.name == "streams.archive.store"]
    assert lines[0].startswith(f"archive of {SID}: building from {len(parts)} parts (")
    manifest = json.loads((tmp_path / store.MANIFEST).read_text())
    written = {}
    for line in lines:
        found = re.fullmatch(rf"archive of {SID}: wrote (\S+) \((.+), ([\d.]+ k?M?G?B)\)", line)
        if found:
            written[found[1]] = (found[2], found[3])
    # Every file of the archive, and the manifest, each once with its size on disk.
    assert set(written) == {*manifest["files"], store.MANIFEST}
    for name, (_what, size) in written.items():
        assert size == store.file_size((tmp_path / name).stat().st_size), name
    assert written["tags.parquet"][0] == f"{manifest['counts']['tags']} records"
    assert written["media/ana.mkv"][0] == "30 video frames, 100 audio chunks"
    total = sum(path.stat().st_size for path in tmp_path.rglob("*") if path.is_file())
    files = len(manifest["files"]) + 1
    assert lines[-1] == f"archive of {SID}: complete, {store.file_size(total)} in {files} files"


def test_file_sizes_read_as_people_read_them() -> None:
    assert store.file_size(999) == "999 B"
    assert store.file_size(1_000) == "1.0 kB"
    assert store.file_size(2_345_678) == "2.3 MB"
    assert store.file_size(5_000_000_000) == "5.0 GB"
    assert store.file_size(12_000_000_000_000) == "12000.0 GB"


def test_a_finished_build_leaves_no_lock_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, state_dir=tmp_path / "state")
    folder = store.session_dir(settings, SID)
    write_parts(folder)
    # No broker in this test: building touches neither the directory nor the producer.
    recorder = SessionRecorder(settings, session(), cast(Any, None), cast(Any, None))
    assert recorder._build_once(session())
    assert (folder / store.MANIFEST).is_file()
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []
    # Another recorder of the group, later: nothing to build, and no lock left either.
    assert not recorder._build_once(session())
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_a_failed_build_keeps_its_lock_file(tmp_path: Path) -> None:
    # Without a manifest the lock stays: two recorders must never lock two files by one
    # name and build at once.
    settings = Settings(data_dir=tmp_path, state_dir=tmp_path / "state")
    folder = store.session_dir(settings, SID)
    folder.mkdir()
    (folder / "tags.parquet").write_bytes(b"built before, and no parts to build from")
    recorder = SessionRecorder(settings, session(), cast(Any, None), cast(Any, None))
    with pytest.raises(store.ArchiveError):
        recorder._build_once(session())
    assert (folder / ".archive.lock").is_file()
