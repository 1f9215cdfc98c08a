"""The published contract (streams/schemas/v1/) is exactly what the code makes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import streams
from infra.cli import main
from streams import records
from streams.kafka import contract
from streams.settings import Settings

PUBLISHED = Path(streams.__file__).resolve().parent / contract.PUBLISHED_FOLDER
REGENERATE = f"livetag schema --defaults --out streams/{contract.PUBLISHED_FOLDER}"


def test_the_published_folder_is_named_for_the_schema_version() -> None:
    assert PUBLISHED.name == f"v{records.SCHEMA_VERSION}"
    assert PUBLISHED.is_dir()


def test_the_published_files_are_what_livetag_schema_writes(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["schema", "--defaults", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    made = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    published = {path.name: path.read_bytes() for path in PUBLISHED.iterdir()}
    stale = sorted(name for name in made if made[name] != published.get(name))
    extra = sorted(set(published) - set(made))
    assert (stale, extra) == ([], []), (
        f"streams/{contract.PUBLISHED_FOLDER} differs from what the code makes "
        f"(differing or missing: {stale}; no longer made: {extra}): run `{REGENERATE}` "
        "and delete the files it no longer writes"
    )
    # One schema per record type, the topic catalogue and the AsyncAPI document.
    assert set(made) == {
        *(f"{model.record_type}.schema.json" for model in records.SCHEMA_MODELS),
        contract.TOPICS_FILE,
        contract.ASYNCAPI_FILE,
    }


def test_defaults_ignore_this_deployments_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LIVETAG_PARTITIONS", "12")
    runner = CliRunner()
    result = runner.invoke(main, ["schema", "--defaults", "--out", str(tmp_path / "defaults")])
    assert result.exit_code == 0, result.output
    for name in (contract.TOPICS_FILE, contract.ASYNCAPI_FILE):
        assert (tmp_path / "defaults" / name).read_bytes() == (PUBLISHED / name).read_bytes()
    # Without --defaults the files describe this deployment.
    result = runner.invoke(main, ["schema", "--out", str(tmp_path / "deployment")])
    assert result.exit_code == 0, result.output
    catalogue = json.loads((tmp_path / "deployment" / contract.TOPICS_FILE).read_text())
    tags = next(entry for entry in catalogue if entry["topic"] == "livetag.tags")
    assert tags["partitions"] == 12


def test_the_default_settings_are_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIVETAG_PARTITIONS", "12")
    defaults = contract.default_settings()
    # Given every field, Settings reads neither the environment nor a settings file.
    assert Settings(**defaults.model_dump()) == defaults
    assert defaults.partitions == Settings.model_fields["partitions"].default


def test_topic_keys_in_the_catalogue() -> None:
    catalogue = json.loads((PUBLISHED / contract.TOPICS_FILE).read_text())
    keys = {entry["topic"]: entry["key"] for entry in catalogue}
    assert keys["livetag.sessions"] == "session_id"
    assert keys["livetag.health"] == "session_id/performer_id/source"
    assert keys["livetag.media.audio.{session_id}"] == "session_id/performer_id"
