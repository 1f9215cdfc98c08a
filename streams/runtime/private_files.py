"""livetag's own files are readable by its own user only.

Archives hold people's faces and voices, the spool holds their tags, the state folder holds
the token key and the logs: folders are made 0700 and files 0600, whatever the umask of
the shell that started livetag. The services also run with umask 077, so files that
libraries create (faust's tables, pyarrow's and PyAV's outputs) start private too.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
SERVICE_UMASK = 0o077


def restrict_new_files() -> None:
    """Files and folders this process (and the children it starts) creates from now on
    are its user's only."""
    os.umask(SERVICE_UMASK)


def private_dir(path: Path) -> Path:
    """``path`` as a folder only its owner may enter (created with the folders above it
    that are missing, each private too; one made earlier with wider rights is narrowed)."""
    missing = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        # mkdir's mode is cut by the umask and not given to the folders above: one by one.
        folder.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
        _restrict(folder, PRIVATE_DIR_MODE)
    _restrict(path, PRIVATE_DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """Narrow an existing file to its owner (for files a library wrote)."""
    _restrict(path, PRIVATE_FILE_MODE)
    return path


def open_private(path: Path, flags: int) -> int:
    """``os.open`` of a file that is created 0600 (and narrowed if it existed)."""
    descriptor = os.open(path, flags | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        os.fchmod(descriptor, PRIVATE_FILE_MODE)
    except PermissionError:
        _warn_not_narrowed(path)
    return descriptor


def _restrict(path: Path, mode: int) -> None:
    if path.stat().st_mode & 0o777 == mode:
        return
    try:
        os.chmod(path, mode)
    except PermissionError:
        # Someone else's folder (a data folder shared by several recorders): its owner
        # decides who reads it.
        _warn_not_narrowed(path)


def _warn_not_narrowed(path: Path) -> None:
    log.warning("%s belongs to another user: its access rights are left as they are", path)
