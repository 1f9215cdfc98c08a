"""The processors process masks tokens in its logs like every livetag process: before its
faust worker starts and after the worker has put its own log handlers in place."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import faust
import pytest

from streams.features import processors
from streams.runtime.redaction import MASK
from taggers import tokens


@contextlib.contextmanager
def bare_root_logger() -> Iterator[logging.Logger]:
    """The root logger without handlers (as a process starts: pytest's own are put on it
    for each test's call), restored afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    root.handlers.clear()
    try:
        yield root
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def _token() -> str:
    return tokens.issue(b"k" * 48, session_id="s-1", role="director", participant_id="d", ttl_s=60)


def test_tokens_are_masked_before_the_worker_starts(capsys: pytest.CaptureFixture[str]) -> None:
    token = _token()
    with bare_root_logger() as root:
        # Reading the session record and evicting dead members log through these handlers.
        processors.setup_logging("INFO")
        assert root.handlers
        logging.getLogger("streams.kafka.sessions").warning("refused /ws/tag?token=%s", token)
    written = capsys.readouterr().err
    assert token not in written
    assert f"/ws/tag?token={MASK}" in written


def test_tokens_are_masked_in_the_faust_workers_logs(capsys: pytest.CaptureFixture[str]) -> None:
    token = _token()
    app = faust.App("livetag-test-logging", broker="kafka://127.0.0.1:9")
    # stdout stays the test's: the worker would send it to the log.
    worker = processors.ProcessorWorker(app, loglevel="INFO", quiet=True, redirect_stdouts=False)
    with bare_root_logger() as root:
        processors.setup_logging("INFO")
        # What the worker does first when it starts: its own handlers replace the root's.
        worker._setup_logging()
        assert root.handlers
        logging.getLogger("streams.features.processors").warning("refused /ws/tag?token=%s", token)
    written = capsys.readouterr()
    assert token not in written.out + written.err
    assert f"/ws/tag?token={MASK}" in written.out + written.err
