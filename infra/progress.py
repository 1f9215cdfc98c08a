"""Progress of long commands (``livetag replay``) on the terminal.

Only a terminal gets it: when stderr is a pipe or a file, nothing extra is written, so a
script reading the command's output sees what it saw before.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

import click

#: At most this often a bar is redrawn (a replay as fast as possible reports every record).
REDRAW_S = 0.1


class TerminalProgress:
    """Shows ``(step, done, total)`` reports as one progress bar per step (click's), on a
    terminal; ``close`` finishes the last one."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._step: str | None = None
        self._bar: Any = None
        self._drawn_at = 0.0

    def __call__(self, step: str, done: int, total: int) -> None:
        if step != self._step:
            self.close()
            self._step = step
            self._bar = click.progressbar(
                length=max(total, 1), label=step, file=self._stream, show_pos=True
            )
            self._bar.__enter__()
            self._drawn_at = 0.0
        bar = self._bar
        now = time.monotonic()
        if done < total and now - self._drawn_at < REDRAW_S:
            return
        self._drawn_at = now
        bar.length = max(total, 1)
        if done > bar.pos:
            bar.update(done - bar.pos)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None
            self._step = None


def terminal_progress(stream: TextIO | None = None) -> TerminalProgress | None:
    """A progress display on ``stream`` (stderr by default) if it is a terminal, else None."""
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    if isatty is None or not isatty():
        return None
    return TerminalProgress(stream)
