from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.broker import EmbeddedBroker, answers_kafka
from infra.settings import Settings
from streams import topics
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
