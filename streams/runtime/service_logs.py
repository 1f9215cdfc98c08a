"""Where the output of ``livetag up`` goes.

``livetag up`` runs several processes (the capture server in its own, the dashboard,
recorder and processor worker as children, session processors and face workers under
the worker). Everything they log or print goes to one file per process in
``state_dir/logs`` (``up.log``, ``dashboard.log``, ``recorder.log``, ``worker.log``; the
broker writes ``broker.log`` itself). The terminal gets up's listing on stdout, and on
stderr only livetag's own warnings and errors, one line each: what libraries say at
length (faust's tables, aiokafka's group chatter, mediapipe's and TensorFlow Lite's
start-up notes, faust's timer warnings) is in the files. With ``livetag up -v`` every
line goes to the terminal as well.

A child's lines are read by a thread of ``livetag up`` (never its event loop, which
serves the call), written to the file with anything shaped like a token masked, and
classified by the line format every livetag process logs in (:data:`LOG_FORMAT`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import sys
import threading
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import TextIO

from streams.runtime.private_files import open_private
from streams.runtime.redaction import install_token_filter, mask_tokens

#: The format of every livetag process's log lines (the CLI's, the processors' under
#: faust): the terminal filter below reads the level and the logger's name from it.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

#: Top-level logger names of livetag's own code. ``__main__`` is a module run with
#: ``python -m`` (the session processors): every process livetag up starts is livetag's.
OWN_LOGGERS = frozenset(
    {"infra", "streams", "capture", "dashboard", "taggers", "livetag", "__main__"}
)

# One line of LOG_FORMAT at WARNING or above, with the logger's name.
_WARNING_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:WARNING|ERROR|CRITICAL) (?P<name>[\w.]+): "
)

UP_LOG = "up.log"


def log_path(settings_log_dir: Path, service: str) -> Path:
    """The log file of one of up's processes (``up`` for up's own)."""
    return settings_log_dir / f"{service}.log"


def is_own(logger_name: str) -> bool:
    return logger_name.split(".", 1)[0] in OWN_LOGGERS


def is_own_warning_line(line: str) -> bool:
    """True for a line another livetag process logged at WARNING or above from livetag's
    own code (its first line only: a traceback's lines follow in the file), or one of a
    session's milestones (:data:`MILESTONES`)."""
    if _MILESTONE_LINE.match(line):
        return True
    found = _WARNING_LINE.match(line)
    return found is not None and is_own(found["name"])


#: ``extra=`` of a record up's terminal shows whatever its level (a service back after a
#: restart: the end of what its warnings began).
TERMINAL = {"terminal": True}

#: The logger of a session's milestones (processing it, its call closed, archived): what
#: an operator follows on up's terminal, whichever process logs it.
MILESTONES = "livetag.session"

# One line of LOG_FORMAT from the milestones' logger, at any level.
_MILESTONE_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ " + re.escape(MILESTONES) + ": "
)


class OwnWarnings(logging.Filter):
    """Lets through livetag's own records at WARNING and above, and those marked
    :data:`TERMINAL`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "terminal", False) or record.name == MILESTONES:
            return True
        return record.levelno >= logging.WARNING and is_own(record.name)


class OneLineFormatter(logging.Formatter):
    """A record as one line: a traceback is left to the log file, the exception's type
    and text are kept."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            text = super().format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved
        exc = saved[0][1] if saved[0] else None
        if exc is not None:
            text = f"{text} ({type(exc).__name__}: {exc})"
        return mask_tokens(" ".join(text.splitlines()))


#: A log file is rolled over at this size, and this many older ones are kept
#: (``worker.log.1`` ...): a day of sessions, or a week of faust's timer warnings, must
#: not fill the disk.
LOG_MAX_BYTES = 50 * 1024 * 1024
LOG_BACKUPS = 3


def _rotating_file(path: Path, formatter: logging.Formatter) -> RotatingFileHandler:
    # Made private first (0600, narrowed if it was not); the rolled-over files are made
    # under livetag up's umask (restrict_new_files), private as well.
    os.close(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND))
    handler = RotatingFileHandler(
        path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS, encoding="utf-8", errors="replace"
    )
    handler.setFormatter(formatter)
    return handler


def configure_up_logging(log_dir: Path, *, verbose: bool, terminal: TextIO | None = None) -> Path:
    """Send this process's log records to ``log_dir/up.log``, and to the terminal
    (stderr) only livetag's own warnings and errors, one line each (every record when
    ``verbose``). Returns the file's path."""
    path = log_path(log_dir, "up")
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    to_file = _rotating_file(path, logging.Formatter(LOG_FORMAT))
    to_terminal = logging.StreamHandler(terminal or sys.stderr)
    if verbose:
        to_terminal.setFormatter(logging.Formatter(LOG_FORMAT))
    else:
        to_terminal.addFilter(OwnWarnings())
        to_terminal.setFormatter(OneLineFormatter(LOG_FORMAT))
    root.addHandler(to_file)
    root.addHandler(to_terminal)
    # Join links are bearer secrets: masked on both handlers.
    install_token_filter()
    return path


class ServiceOutput:
    """The output of one of up's child services (stdout and stderr, and those of the
    processes it starts): every line into the service's log file, tokens masked; to the
    terminal the lines that are livetag's own warnings and errors (every line when
    ``verbose``). One per service, used again by each restart."""

    def __init__(self, path: Path, *, verbose: bool, terminal: TextIO | None = None) -> None:
        self.path = path
        self._verbose = verbose
        self._terminal = terminal or sys.stderr
        # The child's lines, already formatted, through a rotating handler of their own.
        self._file = _rotating_file(path, logging.Formatter("%(message)s"))
        self._closed = False
        self._write_lock = threading.Lock()
        self._last: collections.deque[str] = collections.deque(maxlen=1)
        self._reader: threading.Thread | None = None

    def child_end(self) -> int:
        """A fresh pipe for the next start of the service: its write end (for the child's
        stdout and stderr; close it here once the child has it); a thread reads the other."""
        read_end, write_end = os.pipe()
        self._last.clear()
        with self._write_lock:
            # Runs are told apart in a file that every start appends to.
            self._write(f"--- livetag up: starting {self.path.stem}")
        self._reader = threading.Thread(
            target=self._pump, args=(read_end,), name=f"log {self.path.name}", daemon=True
        )
        self._reader.start()
        return write_end

    @property
    def last_line(self) -> str | None:
        """The last line the service wrote (its last words, when it died)."""
        return self._last[0] if self._last else None

    def wait_drained(self, timeout_s: float) -> None:
        """Blocks until everything the child wrote is read (it and its own children have
        closed the pipe), at most ``timeout_s``."""
        if self._reader is not None:
            self._reader.join(timeout_s)

    def close(self) -> None:
        with self._write_lock:
            self._closed = True
            self._file.close()

    def _write(self, line: str) -> None:
        """One line into the file (the caller holds the write lock)."""
        if not self._closed:
            self._file.emit(logging.makeLogRecord({"msg": line, "levelno": logging.INFO}))

    def _pump(self, read_end: int) -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for raw in pipe:
                line = mask_tokens(raw.decode("utf-8", "replace").rstrip("\r\n"))
                if line.strip():
                    self._last.append(line)
                with self._write_lock:
                    self._write(line)
                if self._verbose or is_own_warning_line(line):
                    # A terminal that went away must not stop the log file.
                    with contextlib.suppress(OSError, ValueError):
                        self._terminal.write(line + "\n")
                        self._terminal.flush()
