"""Where livetag up's output goes: everything to the log files (tokens masked), and to the
terminal only livetag's own warnings and errors, one line each (everything with -v)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import faust
import pytest

from streams.features import processors
from streams.kafka import clients
from streams.runtime.redaction import MASK
from streams.runtime.service_logs import (
    LOG_FORMAT,
    TERMINAL,
    ServiceOutput,
    configure_up_logging,
    is_own_warning_line,
)
from taggers import tokens


def _token() -> str:
    return tokens.issue(b"k" * 48, session_id="s-1", role="director", participant_id="d", ttl_s=60)


def test_own_warnings_are_told_from_library_lines() -> None:
    stamp = "2026-12-07 14:17:00,567"
    own = [
        f"{stamp} WARNING infra.up: service priority unchanged (niceness 0)",
        f"{stamp} ERROR infra.worker: processors of session s exited with 1; restarting in 1 s",
        f"{stamp} CRITICAL streams.features.face_pool: no face worker could start",
        f"{stamp} WARNING __main__: cannot note this processor's group member id",
    ]
    libraries = [
        f"{stamp} WARNING mode.timers: Timer align-tick-s is overlapping (interval=0.02)",
        f"{stamp} WARNING faust.livetag: [^-LivetagFaustApp]: Missing sensor state",
        f"{stamp} ERROR aiokafka.consumer.group_coordinator: Heartbeat failed",
        f"{stamp} INFO infra.worker: processing session s (pid 12)",
        "W0000 00:00:1796653016.766840 8316 inference_feedback_manager.cc:121] Feedback",
        "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
        "WARNING: Logging before InitGoogle() is written to STDERR",
        "| livetag.tags                                           |",
        "Traceback (most recent call last):",
    ]
    assert [is_own_warning_line(line) for line in own] == [True] * len(own)
    assert [is_own_warning_line(line) for line in libraries] == [False] * len(libraries)


def test_faust_lines_from_livetags_subclasses_are_faust_lines() -> None:
    # faust names a service's logger after its class's module: livetag's subclasses would
    # log faust's own lines as streams.kafka.clients or __main__.
    for service in (clients.LivetagFaustApp, clients.HeldAckConsumer, processors.ProcessorWorker):
        assert service.logger.name == "faust.livetag", service
    app = faust.App("livetag-test-service-logs", broker="kafka://127.0.0.1:9")
    worker = processors.ProcessorWorker(app, loglevel="INFO", quiet=True, redirect_stdouts=False)
    with _bare_root_logger() as root:
        worker._setup_logging()
        formats = {handler.formatter._fmt for handler in root.handlers if handler.formatter}
    assert formats == {LOG_FORMAT}


@contextlib.contextmanager
def _bare_root_logger() -> Iterator[logging.Logger]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()
    root.setLevel(logging.INFO)
    try:
        yield root
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_ups_own_records_go_to_its_file_and_its_own_warnings_to_the_terminal(
    tmp_path: Path, verbose: bool
) -> None:
    token = _token()
    terminal = io.StringIO()
    with _bare_root_logger():
        path = configure_up_logging(tmp_path, verbose=verbose, terminal=terminal)
        logging.getLogger("infra.up").warning("refused /join?token=%s", token)
        logging.getLogger("aiokafka.conn").warning("Unable connect to node with id 1")
        logging.getLogger("capture.server").info("capture server on http://127.0.0.1:1")
        logging.getLogger("infra.up").info("embedded broker back on 127.0.0.1:9", extra=TERMINAL)
        try:
            raise ValueError("bad\nthing")
        except ValueError:
            logging.getLogger("infra.up").exception("dashboard failed")
        for handler in logging.getLogger().handlers:
            handler.flush()
    shown = terminal.getvalue()
    written = path.read_text()
    assert path == tmp_path / "up.log"
    for text in (shown, written):
        assert token not in text
        assert f"/join?token={MASK}" in text
    # The file has everything, tracebacks included.
    for line in ("Unable connect", "capture server on", "back on", "Traceback", "bad\nthing"):
        assert line in written
    if verbose:
        assert shown == written
        return
    # The terminal: livetag's own warnings and errors and the marked notice, a line each;
    # an exception as its type and text, its traceback in the file.
    lines = shown.splitlines()
    assert len(lines) == 3, lines
    assert lines[0].endswith(f"WARNING infra.up: refused /join?token={MASK}")
    assert lines[1].endswith("INFO infra.up: embedded broker back on 127.0.0.1:9")
    assert lines[2].endswith("ERROR infra.up: dashboard failed (ValueError: bad thing)")


CHILD = r"""
import logging, os, sys
logging.basicConfig(level="INFO", format=sys.argv[1])
print("dashboard        http://127.0.0.1:1/dashboard?token=...", flush=True)
logging.getLogger("dashboard.server").info("dashboard on http://127.0.0.1:1")
logging.getLogger("mode.timers").warning("Timer align-tick is overlapping")
logging.getLogger("infra.worker").error("processors of session s exited; token %s", sys.argv[2])
os.write(2, b"W0000 00:00:1.0 1 face_landmarker_graph.cc:181] Sets xnnpack by default.\n")
print("Error: the dashboard cannot listen on 127.0.0.1:1", file=sys.stderr)
"""


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_a_childs_output_goes_to_its_file_and_its_own_errors_to_the_terminal(
    tmp_path: Path, verbose: bool
) -> None:
    token = _token()
    terminal = io.StringIO()
    output = ServiceOutput(tmp_path / "dashboard.log", verbose=verbose, terminal=terminal)
    child_end = output.child_end()
    try:
        subprocess.run(
            [sys.executable, "-c", CHILD, LOG_FORMAT, token],
            stdout=child_end,
            stderr=child_end,
            check=True,
            timeout=30,
        )
    finally:
        os.close(child_end)
    output.wait_drained(10)
    output.close()
    written = (tmp_path / "dashboard.log").read_text()
    shown = terminal.getvalue()
    assert token not in written + shown
    assert written.startswith("--- livetag up: starting dashboard\n")
    for line in ("dashboard        http", "dashboard on", "is overlapping", "W0000", "Error: the"):
        assert line in written
    assert output.last_line == "Error: the dashboard cannot listen on 127.0.0.1:1"
    if verbose:
        assert shown == written.split("\n", 1)[1]
    else:
        [line] = shown.splitlines()
        assert line.endswith(f"ERROR infra.worker: processors of session s exited; token {MASK}")


def test_a_sessions_milestones_reach_the_terminal_at_info() -> None:
    from streams.runtime.service_logs import MILESTONES, OwnWarnings, is_own_warning_line

    line = f"2026-12-07 14:00:00,000 INFO {MILESTONES}: session s-1 archived in /data/s-1"
    assert is_own_warning_line(line)
    assert not is_own_warning_line(line.replace(MILESTONES, "streams.archive.recorder"))
    record = logging.LogRecord(MILESTONES, logging.INFO, __file__, 1, "archived", None, None)
    assert OwnWarnings().filter(record)
    record.name = "streams.archive.recorder"
    assert not OwnWarnings().filter(record)


def test_a_services_log_file_rolls_over_and_keeps_a_few(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.runtime import service_logs

    monkeypatch.setattr(service_logs, "LOG_MAX_BYTES", 1000)
    output = service_logs.ServiceOutput(tmp_path / "worker.log", verbose=False)
    write_end = output.child_end()
    with os.fdopen(write_end, "w") as child:
        for n in range(200):
            child.write(f"2026-12-07 14:00:00,000 INFO faust.livetag: line {n:04d}\n")
    output.wait_drained(5.0)
    output.close()
    files = sorted(path.name for path in tmp_path.iterdir())
    assert files == ["worker.log", "worker.log.1", "worker.log.2", "worker.log.3"]
    assert all((tmp_path / name).stat().st_size <= 1000 for name in files)
    # The newest lines are in the current file, nothing torn.
    assert (tmp_path / "worker.log").read_text().splitlines()[-1].endswith("line 0199")
