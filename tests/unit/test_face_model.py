from __future__ import annotations

from pathlib import Path

import pytest

from streams.features import face_model
from streams.settings import Settings


def test_missing_model_names_the_fix(tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path)
    with pytest.raises(face_model.FaceModelError, match="livetag models fetch"):
        face_model.resolve(settings)


def test_corrupt_model_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "face_landmarker.task"
    bogus.write_bytes(b"not a model")
    with pytest.raises(face_model.FaceModelError, match="corrupt"):
        face_model.resolve(Settings(face_model_path=bogus))
