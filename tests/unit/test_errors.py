"""One error family: every livetag error class derives from LivetagError through the kind
that says whose the failure is, and the command line turns each kind into one line on
stderr and its own exit status (a bug: 70, with its traceback in the log)."""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from capture.rtp_hooks import AiortcChangedError
from infra import cli
from infra.broker import BrokerError
from infra.cli import LivetagGroup, main
from streams.archive.store import MANIFEST, ArchiveError
from streams.errors import (
    BadInputError,
    InternalError,
    LivetagError,
    RefusedError,
    UnavailableError,
)
from streams.kafka.sessions import SessionActionError
from streams.records import RecordError
from taggers.tokens import TokenError
from tests.archive_samples import SID

PACKAGES = ("capture", "streams", "taggers", "dashboard", "infra")
KINDS = (BadInputError, RefusedError, UnavailableError, InternalError)
# `livetag up` gives up on a service that keeps dying: that says nothing of whose the
# failure is (a bug, the machine, a setting), so it has no kind and keeps exit status 1.
WITHOUT_KIND = {"infra.up.ServiceFailedError"}


def _error_classes() -> Iterator[tuple[str, type[BaseException]]]:
    """Every exception class named ``...Error`` defined in livetag's packages."""
    for package in PACKAGES:
        root = importlib.import_module(package)
        for module_info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
            if module_info.name == "infra.__main__":
                continue  # it runs the command line when imported
            module = importlib.import_module(module_info.name)
            for name, value in vars(module).items():
                if (
                    inspect.isclass(value)
                    and issubclass(value, BaseException)
                    and value.__module__ == module.__name__
                    and name.endswith("Error")
                ):
                    yield f"{module.__name__}.{name}", value


def test_every_error_class_of_livetag_is_a_livetag_error_of_one_kind() -> None:
    found = dict(_error_classes())
    # The walk reaches every package (a walk that found nothing would pass anything).
    for expected in (
        "capture.rtp_hooks.AiortcChangedError",
        "streams.records.RecordError",
        "taggers.tokens.TokenError",
        "dashboard.server.ActionError",
        "streams.settings.TLSSettingsError",
    ):
        assert expected in found
    concrete = {name: cls for name, cls in found.items() if cls.__module__ != "streams.errors"}
    assert len(concrete) >= 25, sorted(concrete)
    for name, cls in concrete.items():
        assert issubclass(cls, LivetagError), name
        kinds = [kind.__name__ for kind in KINDS if issubclass(cls, kind)]
        assert len(kinds) == (0 if name in WITHOUT_KIND else 1), (name, kinds)


def test_an_error_is_still_caught_as_the_builtin_it_was() -> None:
    # Callers catch ``except ValueError`` / ``except RuntimeError``: the kind is added, the
    # builtin base stays.
    assert issubclass(RecordError, ValueError)
    assert issubclass(SessionActionError, ValueError)
    assert issubclass(TokenError, ValueError)
    assert issubclass(ArchiveError, RuntimeError)
    assert issubclass(BrokerError, RuntimeError)
    assert issubclass(AiortcChangedError, RuntimeError)
    with pytest.raises(ValueError, match="take 1 is still running"):
        raise SessionActionError("take_open", "take 1 is still running")
    caught = SessionActionError("take_open", "take 1 is still running")
    assert (caught.code, caught.message) == ("take_open", "take 1 is still running")


def test_the_kinds_are_no_builtin_errors() -> None:
    # A kind that were a ValueError would let ``except ValueError`` catch the RuntimeError
    # ones (TLS settings, the broker, an archive) where nothing caught them before.
    assert LivetagError.__mro__ == (LivetagError, Exception, BaseException, object)
    for kind in KINDS:
        assert kind.__mro__ == (kind, LivetagError, Exception, BaseException, object)


def _group_raising(exc: BaseException, command_name: str = "act") -> click.Group:
    """A livetag command group with one command that fails with ``exc``."""

    @click.group(cls=LivetagGroup)
    def group() -> None:
        pass

    @group.command(name=command_name)
    def act() -> None:
        raise exc

    return group


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (BadInputError("the vocabulary has no [[label]] tables"), 2),
        (RefusedError("take 1 is still running"), 3),
        (UnavailableError("cannot reach the broker"), 4),
        (InternalError("aiortc changed: RTCRtpReceiver has no packet handler"), 70),
        (LivetagError("livetag up stopped: dashboard died 3 times in a row"), 1),
    ],
)
def test_each_kind_is_one_line_and_its_exit_status(exc: LivetagError, status: int) -> None:
    result = CliRunner().invoke(_group_raising(exc), ["act"])
    assert result.exit_code == status, result.output
    assert result.stderr == f"Error: {exc}\n"
    assert result.stdout == ""


def test_livetag_itself_turns_its_commands_errors_into_their_kinds_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Export of a folder that is no archive fails with ExportError (bad input), which the
    # export command leaves to the group: the same line as before, now exit 2.
    monkeypatch.setenv("LIVETAG_DATA_DIR", str(tmp_path))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["export", SID, "--format", "csv", "--out", str(out)])
    assert result.exit_code == 2, result.output
    folder = tmp_path / SID
    assert result.stderr == f"Error: {folder} is not a session archive (it has no {MANIFEST})\n"
    # A vocabulary that is no TOML is VocabularyError, bad input too (no broker needed: the
    # file is read before Kafka is).
    vocabulary = tmp_path / "labels.toml"
    vocabulary.write_text("[[label]\n", encoding="utf-8")
    result = CliRunner().invoke(
        main,
        [
            "session",
            "create",
            "--prompt",
            "p",
            "--performers",
            "a",
            "--vocabulary",
            str(vocabulary),
        ],
    )
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: {vocabulary}: ")
    assert len(result.stderr.splitlines()) == 1


def test_an_unexpected_exception_is_exit_70_and_one_line_with_the_traceback_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="infra.cli")
    result = CliRunner().invoke(_group_raising(KeyError("performer_id")), ["act"])
    assert result.exit_code == 70
    assert result.stderr == (
        "Error: livetag broke: KeyError: 'performer_id' (a bug; the log has the traceback)\n"
    )
    assert "Traceback" not in result.output
    [record] = [r for r in caplog.records if r.name == "infra.cli"]
    # A one-shot command's stderr is its answer: the traceback only at DEBUG.
    assert record.levelno == logging.DEBUG
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], KeyError)


def test_a_bug_says_how_to_see_its_traceback_when_the_log_would_drop_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="infra.cli")
    result = CliRunner().invoke(_group_raising(RuntimeError("loop\nclosed")), ["act"])
    assert result.exit_code == 70
    assert result.stderr == (
        "Error: livetag broke: RuntimeError: loop closed "
        "(a bug; LIVETAG_LOG_LEVEL=DEBUG logs its traceback)\n"
    )


def test_a_service_that_breaks_logs_its_traceback_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A service's log (up keeps it in state_dir/logs) is where its operator looks.
    caplog.set_level(logging.INFO, logger="infra.cli")
    group = _group_raising(AttributeError("'NoneType' object has no attribute 'ts_us'"), "worker")
    result = CliRunner().invoke(group, ["worker"])
    assert result.exit_code == 70
    assert result.stderr.startswith("Error: livetag broke: AttributeError: ")
    assert result.stderr.endswith("(a bug; the log has the traceback)\n")
    [record] = [r for r in caplog.records if r.name == "infra.cli"]
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None


def test_a_bug_line_never_shows_a_token() -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzZXNzaW9uX2lkIjoiYSJ9.c2lnbmF0dXJl"
    result = CliRunner().invoke(_group_raising(ValueError(f"bad link ?token={token}")), ["act"])
    assert result.exit_code == 70
    assert token not in result.output
    assert "?token=[token]" in result.stderr


def test_clicks_own_exits_pass_through_unchanged() -> None:
    usage = CliRunner().invoke(_group_raising(click.UsageError("give --out DIR")), ["act"])
    assert usage.exit_code == 2
    assert "Error: give --out DIR" in usage.stderr
    assert "livetag broke" not in usage.stderr
    assert CliRunner().invoke(_group_raising(click.exceptions.Exit(5)), ["act"]).exit_code == 5
    aborted = CliRunner().invoke(_group_raising(click.Abort()), ["act"])
    assert (aborted.exit_code, aborted.stderr) == (1, "Aborted!\n")


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (BadInputError("x"), 2),
        (RefusedError("x"), 3),
        (UnavailableError("x"), 4),
        (InternalError("x"), 70),
        (LivetagError("x"), 1),
        # A plain ValueError a command catches is about what it was given.
        (ValueError("invalid session id 'Not A Session!'"), 2),
        (RuntimeError("the dashboard cannot listen on 127.0.0.1:1"), 1),
    ],
)
def test_a_failure_a_command_catches_gets_the_status_of_its_kind(
    exc: Exception, status: int
) -> None:
    failure = cli.command_failure(exc)
    assert (failure.exit_code, failure.message) == (status, str(exc))
    assert cli.command_failure(exc, "s1: no take is running").message == "s1: no take is running"
