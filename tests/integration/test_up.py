from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO
from urllib.parse import parse_qs, urlsplit

import pytest

from infra.broker import EmbeddedBroker, answers_kafka
from streams.kafka import topics
from streams.kafka.sessions import create_session
from streams.runtime.service_logs import is_own_warning_line
from streams.settings import Settings
from taggers.tokens import join_links, load_secret
from taggers.vocabulary import load_vocabulary
from tests.integration.test_topics import livetag

pytestmark = pytest.mark.integration


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_up_starts_the_broker_and_topics_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "LIVETAG_BROKER_PORT": str(port),
        "LIVETAG_STATE_DIR": str(tmp_path / "state"),
        "LIVETAG_CACHE_DIR": str(tmp_path / "cache"),
        "LIVETAG_CAPTURE_PORT": "0",
        "LIVETAG_DASHBOARD_PORT": str(_free_port()),
    }
    env.pop("LIVETAG_KAFKA_BOOTSTRAP", None)
    # `with`: the pipes are closed even when an assertion fails.
    with subprocess.Popen(
        [sys.executable, "-m", "infra", "up"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as process:
        _run_up_and_stop_on_ctrl_c(process, port)
    assert not answers_kafka("127.0.0.1", port, timeout_s=0.2), "the broker outlived up"


def _run_up_and_stop_on_ctrl_c(process: subprocess.Popen[str], port: int) -> None:
    try:
        assert process.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "press Ctrl-C to stop" in line or not line:
                break
        assert any(f"127.0.0.1:{port}" in line for line in lines), lines
        assert answers_kafka("127.0.0.1", port)
        listed = livetag(Settings(broker_port=port), "topics", "list")
        shared = [spec.name for spec in topics.shared_topics(Settings())]
        assert sorted(shared) == sorted(listed.stdout.split())
        assert any(line.startswith("dashboard") for line in lines), lines
        # No face model in this fresh cache: up says so instead of failing later.
        assert any("face model       MISSING" in line for line in lines), lines
        # Nor the expression model: the processors will run without the model lane.
        assert any(
            line.startswith("model lane       OFF") and "livetag models fetch" in line
            for line in lines
        ), lines
        _assert_broker_shares_the_priority(process.pid)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "stopped." in out


def _assert_broker_shares_the_priority(up_pid: int) -> None:
    # The scheduler shares the CPU between autogroups first: the broker's (it runs in a
    # session of its own) must have its niceness, or it competes with each browser as an
    # equal whatever priority livetag has.
    if not Path(f"/proc/{up_pid}/autogroup").exists():
        return  # a kernel without autogrouping
    children = Path(f"/proc/{up_pid}/task/{up_pid}/children").read_text().split()
    brokers = [pid for pid in children if b"tansu" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(brokers) == 1, children
    group = Path(f"/proc/{brokers[0]}/autogroup").read_text().split()
    assert int(group[-1]) == os.getpriority(os.PRIO_PROCESS, int(brokers[0])), group


def test_up_with_a_cluster_setting_never_starts_the_embedded_broker(tmp_path: Path) -> None:
    # A broker of its own: the session broker holds other tests' sessions, whose
    # processors `up` would start.
    cluster = EmbeddedBroker(port=0, log_path=tmp_path / "cluster.log")
    cluster.start()
    settings = Settings(broker_port=cluster.port)
    port = _free_port()
    env = {
        **os.environ,
        # The cluster is the session's broker; the embedded one would use `port`.
        "LIVETAG_KAFKA_BOOTSTRAP": settings.bootstrap_servers,
        "LIVETAG_BROKER_PORT": str(port),
        "LIVETAG_STATE_DIR": str(tmp_path / "state"),
        "LIVETAG_CAPTURE_PORT": "0",
        "LIVETAG_DASHBOARD_PORT": str(_free_port()),
    }
    # As in a container without CAP_SYS_NICE (CI's, docker's default): up cannot raise
    # its priority, warns on stderr, and its listing on stdout stays what scripts read.
    no_sys_nice = ["setpriv", "--bounding-set", "-sys_nice"] if os.getuid() == 0 else []
    try:
        with subprocess.Popen(
            [*no_sys_nice, sys.executable, "-m", "infra", "up"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        ) as process:
            try:
                assert process.stdout is not None
                first = process.stdout.readline()
                assert f"Kafka cluster    {settings.bootstrap_servers}" in first
                assert not answers_kafka("127.0.0.1", port, timeout_s=0.2)
                assert not (tmp_path / "state" / "logs" / "broker.log").exists()
                process.send_signal(signal.SIGTERM)
                out, err = process.communicate(timeout=30)
            finally:
                if process.poll() is None:
                    process.kill()  # before `with` waits for it
    finally:
        cluster.stop()
    assert process.returncode == 0, err
    assert "service priority unchanged" in err
    assert "priority" not in out


class Running:
    """``livetag up`` as a child, its stdout and stderr read as they come (no pipe fills).

    ``own_group``: up leads a process group of its own, as a command started from a
    terminal does, so that :meth:`ctrl_c` can signal the whole group like Ctrl-C."""

    def __init__(self, env: dict[str, str], *args: str, own_group: bool = False) -> None:
        self.lines: list[str] = []
        self.errors: list[str] = []
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "infra", "up", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=own_group,
        )
        self._readers = [
            threading.Thread(target=self._drain, args=(stream, into), daemon=True)
            for stream, into in (
                (self.process.stdout, self.lines),
                (self.process.stderr, self.errors),
            )
        ]
        for reader in self._readers:
            reader.start()

    def _drain(self, stream: IO[str] | None, into: list[str]) -> None:
        assert stream is not None
        for line in stream:
            with self._changed:
                into.append(line)
                self._changed.notify_all()

    def wait_for(self, what: Callable[[], bool], timeout_s: float) -> None:
        with self._changed:
            if not self._changed.wait_for(what, timeout=timeout_s):
                raise AssertionError(f"not seen in {timeout_s} s; stderr:\n{''.join(self.errors)}")

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines + self.errors)

    def children(self, marker: bytes) -> list[int]:
        """up's child processes whose command line holds ``marker``."""
        found = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            for pid in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                        found.append(int(pid))
        return found

    def ctrl_c(self) -> None:
        """SIGINT to up and every process of its group, as a terminal's Ctrl-C sends it."""
        os.killpg(self.process.pid, signal.SIGINT)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            for reader in self._readers:  # the pipes end with the process
                reader.join(timeout=10)
            for stream in (self.process.stdout, self.process.stderr):
                if stream is not None:
                    stream.close()


def up_env(tmp_path: Path, broker_port: int, **more: str) -> dict[str, str]:
    env = {
        **os.environ,
        "LIVETAG_BROKER_PORT": str(broker_port),
        "LIVETAG_STATE_DIR": str(tmp_path / "state"),
        "LIVETAG_CACHE_DIR": str(tmp_path / "cache"),
        "LIVETAG_DATA_DIR": str(tmp_path / "data"),
        "LIVETAG_CAPTURE_PORT": "0",
        "LIVETAG_DASHBOARD_PORT": str(_free_port()),
        "LIVETAG_SERVICE_RESTART_BACKOFF_S": "0.2",
        **more,
    }
    env.pop("LIVETAG_KAFKA_BOOTSTRAP", None)
    return env


def test_up_restarts_a_service_and_the_broker_that_die(tmp_path: Path) -> None:
    port = _free_port()
    up = Running(up_env(tmp_path, port))
    try:
        up.wait_for(lambda: up.said("press Ctrl-C to stop"), timeout_s=60)
        up.wait_for(lambda: len(up.children(b"\0recorder")) == 1, timeout_s=10)
        [recorder] = up.children(b"\0recorder")
        # Its state is private, and so is what its services create (umask 077).
        state = tmp_path / "state"
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
        assert stat.S_IMODE((state / "logs" / "broker.log").stat().st_mode) == 0o600
        status = Path(f"/proc/{recorder}/status").read_text()
        assert "Umask:\t0077" in status, status
        os.kill(recorder, signal.SIGKILL)
        up.wait_for(lambda: up.said(f"recorder pid {recorder} exited with signal SIGKILL"), 10)
        up.wait_for(lambda: len(up.children(b"\0recorder")) == 1, timeout_s=10)
        assert up.children(b"\0recorder") != [recorder]
        # The broker too: back on its port, empty, and up says what went with it.
        [broker] = up.children(b"tansu")
        os.kill(broker, signal.SIGKILL)
        up.wait_for(lambda: up.said("embedded broker back on"), timeout_s=30)
        assert up.said("restarted EMPTY")
        assert up.said("consumer group's committed offsets are lost")
        assert up.said("revoked links are no longer listed as revoked")
        assert answers_kafka("127.0.0.1", port)
        listed = livetag(Settings(broker_port=port), "topics", "list")
        shared = [spec.name for spec in topics.shared_topics(Settings())]
        assert sorted(shared) == sorted(listed.stdout.split())
        assert up.process.poll() is None, "up stopped"
    finally:
        code = up.stop()
    assert code == 0, "".join(up.errors)
    assert not answers_kafka("127.0.0.1", port, timeout_s=0.2), "the broker outlived up"


def test_up_gives_up_on_a_service_that_keeps_dying_with_a_non_zero_exit(tmp_path: Path) -> None:
    port = _free_port()
    # The dashboard's port is taken: it fails at every start.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        dashboard_port = taken.getsockname()[1]
        env = up_env(
            tmp_path,
            port,
            LIVETAG_DASHBOARD_PORT=str(dashboard_port),
            LIVETAG_SERVICE_RESTART_LIMIT="2",
        )
        up = Running(env)
        try:
            code = up.process.wait(timeout=120)
        finally:
            up.stop()
    errors = "".join(up.errors)
    assert code == 1, errors  # as documented: a service that keeps dying has no kind
    assert errors.count("restarting it in") == 2, errors
    assert "giving up: dashboard died 3 times in a row" in errors, errors
    assert "livetag up stopped" in errors, errors
    assert up.said("stopped after a failure.")
    assert not answers_kafka("127.0.0.1", port, timeout_s=0.2), "the broker outlived up"


def test_up_refuses_a_plaintext_dashboard_on_the_network_before_starting_anything(
    tmp_path: Path,
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "LIVETAG_BROKER_PORT": str(port),
        "LIVETAG_STATE_DIR": str(tmp_path / "state"),
        "LIVETAG_DASHBOARD_HOST": "0.0.0.0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "infra", "up"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3  # refused by the plaintext rule
    assert "the dashboard would listen on 0.0.0.0 without TLS" in done.stderr
    assert "LIVETAG_ALLOW_PLAINTEXT_NETWORK" in done.stderr
    # Refused before the broker: nothing listens on its port.
    assert not answers_kafka("127.0.0.1", port)
    assert "embedded broker" not in done.stdout


# What libraries say at length: faust's service notes, table dumps and timer warnings,
# aiokafka's group chatter, mediapipe's and TensorFlow Lite's start-up notes.
LIBRARY_NOISE = (
    "TensorFlow Lite",
    "XNNPACK",
    "W0000",
    "InitGoogle",
    "Requested Subscription",
    "is overlapping",
    "aiokafka",
    "faust",
    "[^",
)


def _summary(lines: list[str]) -> dict[str, str]:
    """The ``name  value`` lines under "where things are:"."""
    start = lines.index("where things are:\n") + 1
    found = {}
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        name, value = line.strip().split("  ", 1)
        found[name] = value.strip()
    return found


def _wait_for_text(path: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"{text!r} not in {path} within {timeout_s} s")


@pytest.mark.parametrize("verbose", [False, True], ids=["quiet", "verbose"])
def test_up_sums_up_keeps_library_noise_in_its_logs_and_leaves_nothing_behind(
    tmp_path: Path, verbose: bool
) -> None:
    port = _free_port()
    dashboard_port = _free_port()
    # DEBUG: the web servers log every request line (the links' tokens must not be in
    # them). The real cache folder: it holds the face model, so mediapipe starts.
    env = up_env(
        tmp_path, port, LIVETAG_LOG_LEVEL="DEBUG", LIVETAG_DASHBOARD_PORT=str(dashboard_port)
    )
    env.pop("LIVETAG_CACHE_DIR")
    # up flushes its listing line by line itself, as scripts read it from a pipe.
    env.pop("PYTHONUNBUFFERED", None)
    state, data = tmp_path / "state", tmp_path / "data"
    logs = state / "logs"
    up = Running(env, *(["-v"] if verbose else []), own_group=True)
    secrets: set[str] = set()
    try:
        up.wait_for(lambda: up.said("press Ctrl-C to stop"), timeout_s=90)
        summary = _summary(up.lines)
        assert summary["broker"].startswith(f"127.0.0.1:{port} "), summary
        assert summary["logs"].startswith(f"{logs} "), summary
        assert " session create --prompt " in summary["next"], summary
        dashboard = f"http://127.0.0.1:{dashboard_port}"
        assert summary["dashboard"].startswith(f"{dashboard}/dashboard?token=..."), summary
        capture = summary["call pages"].split("/join?token=...")[0]
        assert capture.startswith("http://127.0.0.1:"), summary
        # A session as `livetag session create` makes it: the worker starts its processors.
        settings = Settings(broker_port=port, state_dir=state)
        session = asyncio.run(
            create_session(
                settings,
                prompt="noise",
                performer_names=["alice"],
                vocabulary=load_vocabulary(None),
            )
        )
        linked = settings.model_copy(
            update={
                "capture_port": int(capture.rsplit(":", 1)[1]),
                "dashboard_port": dashboard_port,
            }
        )
        # Every link opened once: their tokens are in the request lines the servers see.
        for link in join_links(linked, session, load_secret(settings)):
            with urllib.request.urlopen(link.url, timeout=10) as response:
                assert response.status == 200, link.page
            secrets.add(parse_qs(urlsplit(link.url).query)["token"][0])
        # The face workers start (mediapipe notes it at length); the processors run a bit.
        _wait_for_text(logs / "worker.log", "XNNPACK", timeout_s=90)
        _wait_for_text(logs / "worker.log", "is overlapping", timeout_s=30)
        time.sleep(3)
        up.ctrl_c()
        code = up.process.wait(timeout=60)
    finally:
        up.stop()
    assert code == 0, "".join(up.errors)
    terminal = up.lines + up.errors
    noise = [line for line in terminal if any(marker in line for marker in LIBRARY_NOISE)]
    if verbose:
        for marker in ("XNNPACK", "W0000", "is overlapping", "aiokafka", "faust"):
            assert any(marker in line for line in noise), marker
    else:
        assert noise == []
        # stderr: livetag's own warnings only (a container without CAP_SYS_NICE has the
        # priority's), one line each.
        for line in up.errors:
            assert is_own_warning_line(line), line
    # The logs hold what the terminal was spared, each service's in its own file.
    written = {path.name: path.read_text(errors="replace") for path in logs.iterdir()}
    for marker in ("XNNPACK", "W0000", "is overlapping", " faust.", " aiokafka."):
        assert marker in written["worker.log"], marker
    assert "processing session " + session.session_id in written["worker.log"]
    assert "aiokafka.consumer" in written["recorder.log"]
    assert "capture server on" in written["up.log"]
    # ... the request lines of the links opened, and never a token.
    assert " GET /join 200 " in written["up.log"]
    assert " GET /dashboard 200 " in written["dashboard.log"]
    # alice's, and the director's (one token for their call page and dashboard).
    assert len(secrets) == 2
    for text in [*written.values(), *terminal]:
        for secret in secrets:
            assert secret not in text
            assert secret.split(".")[2] not in text
    # A clean stop (Ctrl-C to the whole group) leaves no lock, note or pid file: in the
    # state folder only the logs and the token key, in the data folder no hidden file.
    left = sorted(str(p.relative_to(state)) for p in state.rglob("*") if p.is_file())
    assert left == [f"logs/{name}" for name in sorted(written)] + ["token_secret"]
    assert sorted(written) == [
        "broker.log",
        "dashboard.log",
        "recorder.log",
        "up.log",
        "worker.log",
    ]
    assert list(data.rglob(".*")) == []
