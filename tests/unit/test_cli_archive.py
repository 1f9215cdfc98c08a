"""`livetag export` and `livetag replay` on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from infra.cli import main
from streams.archive.export import read_eaf_tags
from tests.archive_samples import SID, write_sample_archive


def test_export_writes_each_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_sample_archive(tmp_path / "data" / SID)
    monkeypatch.setenv("LIVETAG_DATA_DIR", str(tmp_path / "data"))
    runner = CliRunner()
    for fmt in ("jsonl", "csv", "parquet", "eaf"):
        out = tmp_path / fmt
        result = runner.invoke(main, ["export", SID, "--format", fmt, "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert result.output.split(), fmt
        assert all(Path(line).is_file() for line in result.output.split())
    tiers = read_eaf_tags(tmp_path / "eaf" / f"{SID}.eaf")
    assert "ana/r1" in tiers


def test_export_and_replay_of_an_unknown_session_fail_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVETAG_DATA_DIR", str(tmp_path))
    runner = CliRunner()
    result = runner.invoke(
        main, ["export", "nope", "--format", "csv", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code != 0
    assert "not a session archive" in result.output
    result = runner.invoke(main, ["replay", "nope"])
    assert result.exit_code != 0
    assert "not an archived session" in result.output
