"""Progress on a terminal only: a pipe or a file gets nothing extra."""

from __future__ import annotations

import io

from infra.progress import TerminalProgress, terminal_progress


class Terminal(io.StringIO):
    """What a terminal looks like to the code that asks."""

    def isatty(self) -> bool:
        return True


def test_nothing_for_a_pipe_or_a_file() -> None:
    assert terminal_progress(io.StringIO()) is None


def test_one_bar_per_step_that_ends_at_its_total() -> None:
    terminal = Terminal()
    progress = terminal_progress(terminal)
    assert isinstance(progress, TerminalProgress)
    for done in range(2001):
        progress("publishing", done, 2000)
    progress("processing", 0, 2000)
    progress("processing", 1500, 2000)
    progress("processing", 2000, 2000)
    progress.close()
    shown = terminal.getvalue()
    # Drawn in place (carriage returns), each bar to its end.
    assert "\r" in shown
    assert shown.count("2000/2000") == 2
    assert 0 <= shown.index("publishing") < shown.index("processing")
    # Redrawn now and then, not for each of 2000 reports.
    assert shown.count("publishing") < 100
