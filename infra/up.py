"""``livetag up``: the embedded broker (unless a cluster is configured), the shared topics
and every livetag service, in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from infra.broker import EmbeddedBroker, die_with_parent
from streams.errors import LivetagError
from streams.features import face_model, model_rater
from streams.kafka import clients, topics
from streams.runtime.private_files import private_dir, restrict_new_files
from streams.runtime.service_logs import TERMINAL, ServiceOutput, configure_up_logging, log_path
from streams.settings import Settings, to_environment

log = logging.getLogger(__name__)

Say = Callable[[str], None]


def say_line(text: str) -> None:
    # Flushed line by line: scripts read the listing from a pipe as it comes.
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Whoever read the listing has gone (`livetag up | grep -m1 ...`): livetag keeps
        # running, and what it would have said goes nowhere.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


# The niceness livetag was started with, and the one its services run at (set by
# prioritise_services): a service started by the capture server's process must not inherit
# the call's priority.
_BASE_NICENESS = os.getpriority(os.PRIO_PROCESS, 0)
_services_niceness = _BASE_NICENESS


def _renice(niceness: int) -> bool:
    """Set this thread's niceness (Linux: threads it starts inherit it); False when a
    lower niceness than now is refused (it needs root or CAP_SYS_NICE)."""
    try:
        os.setpriority(os.PRIO_PROCESS, 0, niceness)
    except PermissionError:
        return False
    return True


_AUTOGROUP_ENABLED = Path("/proc/sys/kernel/sched_autogroup_enabled")


def _renice_autogroup(niceness: int) -> bool:
    """With autogrouping (most desktop and many server kernels), the scheduler first
    shares the CPU between sessions, and a thread's niceness only counts within its own:
    three browsers in three sessions would get three shares to livetag's one, however
    nice livetag's threads are. The session's own niceness is what counts between them."""
    try:
        enabled = _AUTOGROUP_ENABLED.read_text().strip() == "1"
    except OSError:
        return True  # no autogrouping in this kernel: thread niceness is what counts
    if not enabled:
        return True
    try:
        Path("/proc/self/autogroup").write_text(str(niceness))
    except OSError:
        return False
    return True


def prioritise_services(settings: Settings) -> None:
    """Run livetag's services (the broker it starts, processors, dashboard, recorder) at
    ``services_nice``: on a machine they share with other work, browsers on a laptop
    included, the pipeline keeps its pace and the rest waits."""
    global _services_niceness
    # The autogroup holds the call too (and the broker): between sessions it is the
    # group's niceness that counts, so it carries the call's priority; inside it the
    # threads' own niceness puts the call before the services.
    group_niceness = min(settings.services_nice, settings.capture_nice)
    reniced = _renice(settings.services_nice) and _renice_autogroup(group_niceness)
    # What this thread now has (even after a partial failure): what children go back to.
    _services_niceness = os.getpriority(os.PRIO_PROCESS, 0)
    if not reniced:
        # A warning on stderr: stdout lists what is up, and scripts read it line by line.
        log.warning(
            "service priority unchanged (niceness %d): niceness %d needs root or "
            "CAP_SYS_NICE (LIVETAG_SERVICES_NICE=0 silences this)",
            _BASE_NICENESS,
            settings.services_nice,
        )


def prioritise_capture(settings: Settings) -> None:
    """Give this process (the capture server) the call's priority, ``capture_nice``.

    The capture server needs little CPU but needs it at once: a late event loop misses
    ICE consent checks (the connection drops after ~30 s of misses) and lets UDP receive
    buffers overflow. On a machine that is short of CPU everything else waits instead.
    """
    if not _renice(settings.capture_nice):
        log.warning(
            "capture priority unchanged (niceness %d): niceness %d needs root or "
            "CAP_SYS_NICE (LIVETAG_CAPTURE_NICE=0 silences this)",
            os.getpriority(os.PRIO_PROCESS, 0),
            settings.capture_nice,
        )


def _child_setup() -> None:
    # Runs in a child between fork and exec: the services' priority, not the call's
    # (raising niceness needs no privilege), and it dies with livetag.
    with contextlib.suppress(OSError):  # never worth failing to start a service over
        os.setpriority(os.PRIO_PROCESS, 0, _services_niceness)
    die_with_parent()


class ServiceFailedError(LivetagError, RuntimeError):
    """A service (or the embedded broker) kept dying: ``livetag up`` gave up and stopped
    everything; the message says which one and why."""


def _private_state(settings: Settings) -> None:
    """The services' files are their user's alone: the state folder (token key, spool,
    logs) 0700, and whatever they create from now on (umask 077)."""
    restrict_new_files()
    private_dir(settings.state_dir)
    private_dir(settings.log_dir)


def _exit_status(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name}"
        return f"signal {-code}"
    return f"exit code {code}"


class Supervisor:
    """Keeps ``livetag up``'s children running: one that dies is started again after a
    growing delay (``service_restart_backoff_s``, doubled each time, at most 30 s); one that
    dies more than ``service_restart_limit`` times in a row (a run of ``service_stable_s``
    starts the count again) makes ``livetag up`` stop everything and exit non-zero."""

    def __init__(self, settings: Settings, stop: asyncio.Event, *, verbose: bool = False) -> None:
        self.settings = settings
        self._stop = stop
        self._verbose = verbose
        self.failure: str | None = None
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self.outputs: dict[str, ServiceOutput] = {}
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def stopping(self) -> asyncio.Event:
        """Set when livetag stops (a signal, or a service given up on)."""
        return self._stop

    def give_up(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
            log.error("giving up: %s; stopping everything", reason)
        self._stop.set()

    def delay_s(self, failures: int) -> float:
        """The wait before restart number ``failures`` of a service."""
        return float(min(self.settings.service_restart_backoff_s * 2 ** (failures - 1), 30.0))

    async def sleep_unless_stopped(self, seconds: float) -> bool:
        """Wait ``seconds``; True if livetag is stopping meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    def supervise(self, name: str, run: Callable[[], Awaitable[str | None]]) -> None:
        """Run ``run`` (which returns why the thing it ran ended, or None when livetag is
        stopping) again and again under the restart policy."""
        self._tasks.append(asyncio.create_task(self._keep_running(name, run), name=name))

    def supervise_service(self, settings: Settings, command: str) -> None:
        """``python -m infra COMMAND`` as a supervised child process."""

        output = self.outputs.get(command)
        if output is None:
            output = ServiceOutput(log_path(settings.log_dir, command), verbose=self._verbose)
            self.outputs[command] = output

        async def run() -> str | None:
            process = await _start_service(settings, command, output)
            self.processes[command] = process
            exited = asyncio.ensure_future(process.wait())
            stopping = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait([exited, stopping], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not exited.done():
                exited.cancel()
                return None  # livetag stops it, in order, with the others
            # Its last words (why it died) are what the terminal needs of its log; its
            # processes may take a moment to close their end of the pipe.
            await asyncio.to_thread(output.wait_drained, 2.0)
            # A signal's victim said nothing about it: only an exit's last line tells why.
            last = ""
            if output.last_line and (process.returncode or 0) > 0:
                last = f"; its last line: {output.last_line}"
            return (
                f"pid {process.pid} exited with {_exit_status(process.returncode)}"
                f" (log: {output.path}{last})"
            )

        self.supervise(command, run)

    async def _keep_running(self, name: str, run: Callable[[], Awaitable[str | None]]) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        limit = self.settings.service_restart_limit
        while not self._stop.is_set():
            started = loop.time()
            try:
                ended = await run()
            except Exception as exc:  # could not even start it: as good as dead
                ended = f"could not start: {exc}"
            if ended is None or self._stop.is_set():
                return
            if loop.time() - started >= self.settings.service_stable_s:
                failures = 0
            failures += 1
            if failures > limit:
                self.give_up(f"{name} died {failures} times in a row ({ended})")
                return
            delay = self.delay_s(failures)
            log.error(
                "%s %s; restarting it in %.1f s (restart %d of at most %d in a row)",
                name,
                ended,
                delay,
                failures,
                limit,
            )
            if await self.sleep_unless_stopped(delay):
                return

    async def wait_stopped(self) -> None:
        """After ``stop`` is set: every supervision loop has returned (their children are
        left running, for livetag to stop in order)."""
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _watch_broker(broker: EmbeddedBroker) -> str:
    """Wait until the embedded broker dies; returns how."""
    # tansu is started by subprocess (synchronously), not as an asyncio child: its exit
    # is polled.
    while broker.running:  # noqa: ASYNC110 - no event to wait on
        await asyncio.sleep(0.5)
    return f"exited with {_exit_status(broker.returncode)} (log: {broker.log_path})"


async def _restart_broker(broker: EmbeddedBroker, settings: Settings) -> None:
    # It kept everything in memory: say what went with it before it comes back empty.
    shared = ", ".join(spec.name for spec in topics.shared_topics(settings))
    log.error(
        "the embedded broker is restarted EMPTY: it kept everything in memory, so every "
        "topic (%s, and every session's media and feature topics) and every consumer "
        "group's committed offsets are lost: open sessions are gone (create new ones), "
        "revoked links are no longer listed as revoked (revoke them again), and only tags "
        "still waiting in the tag spool reach the new broker. Run on a Kafka cluster "
        "(kafka_bootstrap) to keep data across a broker crash",
        shared,
    )
    await asyncio.to_thread(broker.start)
    async with clients.admin_client(settings) as admin:
        await topics.ensure_shared_topics(admin, settings)
    log.info(
        "embedded broker back on %s with the shared topics",
        broker.bootstrap_servers,
        extra=TERMINAL,
    )


def run_up(settings: Settings, *, verbose: bool = False, say: Say = say_line) -> None:
    """``livetag up`` until SIGINT/SIGTERM: its own log and its services' into ``log_dir``
    (and on the terminal with ``verbose``), livetag's own warnings and errors on stderr.
    Logging is in place before the event loop exists (which logs as it starts)."""
    _private_state(settings)
    configure_up_logging(settings.log_dir, verbose=verbose)
    log.info("livetag up starting (pid %d)", os.getpid())
    asyncio.run(
        run_services(
            settings, embedded_broker=settings.uses_embedded_broker, say=say, verbose=verbose
        )
    )


async def run_services(
    settings: Settings, *, embedded_broker: bool, say: Say = say_line, verbose: bool = False
) -> None:
    """Start the broker (if embedded), the shared topics and every service, supervise them
    (restarting one that dies), and stop them in reverse order on SIGINT/SIGTERM; raise
    :class:`ServiceFailedError` when one kept dying."""
    from capture.server import CaptureServer
    from taggers.tokens import load_secret

    stop = asyncio.Event()
    broker: EmbeddedBroker | None = None
    capture: CaptureServer | None = None
    supervisor = Supervisor(settings, stop, verbose=verbose)
    _private_state(settings)
    # Handlers first: a Ctrl-C while starting still stops what was started, in order.
    with _stop_on_signals(stop):
        try:
            # Before the broker starts: it inherits the services' priority.
            prioritise_services(settings)
            if embedded_broker:
                broker = EmbeddedBroker.from_settings(settings)
                broker.start()
                # A restart must come back where every service expects it.
                broker.requested_port = broker.port
                settings = settings.model_copy(update={"broker_port": broker.port})
                say(f"embedded broker  {settings.bootstrap_servers}  (log: {broker.log_path})")
            else:
                say(f"Kafka cluster    {settings.bootstrap_servers}")
            if not stop.is_set():
                async with clients.admin_client(settings) as admin:
                    created = await topics.ensure_shared_topics(admin, settings)
                names = ", ".join(spec.name for spec in topics.shared_topics(settings))
                note = f"  (created {len(created)})" if created else ""
                say(f"shared topics    {names}{note}")
                try:
                    say(f"face model       {face_model.resolve(settings)}")
                except face_model.FaceModelError as exc:
                    say(f"face model       MISSING: {exc}")
                say(f"model lane       {model_lane_line(settings)}")
                if settings.scenario_dir is not None:
                    say(f"scenarios        {await _load_scenarios(settings)}")
            if not stop.is_set():
                if broker is not None:
                    supervise_broker(supervisor, broker, settings)
                prioritise_capture(settings)
                capture = CaptureServer(settings, secret=load_secret(settings))
                await capture.start()
                say(f"capture server   {capture.url}  (join links: livetag session create)")
                settings = settings.model_copy(update={"capture_port": capture.port})
                supervisor.supervise_service(settings, "dashboard")
                say(f"dashboard        {settings.dashboard_base_url}  (the director's link)")
                supervisor.supervise_service(settings, "recorder")
                say(f"recorder         archives ended sessions into {settings.data_dir}")
                # The processors run in a process of their own: their Kafka consumers,
                # record decoding and faust bookkeeping never take time from the call's
                # event loop, which must answer ICE, RTCP and every forwarded packet.
                supervisor.supervise_service(settings, "worker")
                say("processor worker running (prosody, face) for every live session")
                if await _dashboard_answers(settings, supervisor):
                    for line in summary(settings, embedded_broker=embedded_broker, verbose=verbose):
                        say(line)
                    say("livetag is up; press Ctrl-C to stop.")
            await stop.wait()
            say("stopping...")
        finally:
            stop.set()
            try:
                await supervisor.wait_stopped()
                for name in ("worker", "dashboard", "recorder"):
                    service = supervisor.processes.get(name)
                    if service is not None:
                        await _stop_process(service)
            finally:
                try:
                    if capture is not None:
                        await capture.stop()
                finally:
                    if broker is not None:
                        broker.stop()
                    for output in supervisor.outputs.values():
                        await asyncio.to_thread(output.wait_drained, 2.0)
                        output.close()
                    say("stopped." if supervisor.failure is None else "stopped after a failure.")
    if supervisor.failure is not None:
        raise ServiceFailedError(f"livetag up stopped: {supervisor.failure}")


async def _load_scenarios(settings: Settings) -> str:
    """scenario_dir into the library; a bad file is logged and skipped, never fatal."""
    from streams.kafka.scenarios import load_folder
    from taggers.vocabulary import DEFAULT_VOCABULARY

    assert settings.scenario_dir is not None
    labels = [entry.label for entry in DEFAULT_VOCABULARY]
    try:
        return await load_folder(settings, settings.scenario_dir, vocabulary_labels=labels)
    except Exception as exc:  # the library is a convenience: livetag runs without it
        log.error("the scenarios of %s were not loaded: %s", settings.scenario_dir, exc)
        return f"NOT loaded from {settings.scenario_dir}: {exc}"


def model_lane_line(settings: Settings) -> str:
    """What the model lane will run, or why the processors will run without it (a
    warning, not a refusal: the lane is optional)."""
    try:
        choice = model_rater.choose_rater(settings)
    except model_rater.UNUSABLE as exc:
        return f"OFF (the processors run without it): {exc}"
    if choice is None:
        return "off (model_rater is none)"
    kind = {"builtin": "model file", "http": "endpoint", "entry_point": "entry point"}
    return f"{choice.fallback_name} ({kind[choice.kind]} {choice.target})"


def _livetag_command() -> str:
    """How to type ``livetag`` here: the bare name when it is on PATH as this install's,
    else this virtualenv's script (``.venv/bin/livetag`` from the checkout)."""
    script = Path(sys.executable).parent / "livetag"
    found = shutil.which("livetag")
    if not script.is_file() or (found is not None and Path(found).resolve() == script.resolve()):
        return "livetag"
    with contextlib.suppress(ValueError):
        return str(script.relative_to(Path.cwd()))
    return str(script)


def summary(settings: Settings, *, embedded_broker: bool, verbose: bool) -> list[str]:
    """What ``livetag up`` prints once everything answers: where each thing is, what to
    type next, where the logs are. Each line ``name  value``, for people and scripts."""
    broker = "embedded, in memory" if embedded_broker else "Kafka cluster"
    shown = "shown here too (-v)" if verbose else "livetag up -v shows them here too"
    return [
        "where things are:",
        f"  call pages  {settings.capture_base_url}/join?token=...  (performers' links;"
        " the director's: /direct?token=...)",
        f"  dashboard   {settings.dashboard_base_url}/dashboard?token=...  (the director's"
        " and observers' links)",
        f"  broker      {settings.bootstrap_servers}  ({broker})",
        f"  logs        {settings.log_dir}  (one file per service; {shown})",
        f'  next        {_livetag_command()} session create --prompt "Two strangers share'
        ' an umbrella" --performers alice,bob  (prints the join links)',
    ]


async def _dashboard_answers(settings: Settings, supervisor: Supervisor) -> bool:
    """Wait until the dashboard (the last service to listen) serves its page; False when
    livetag stops first (it kept dying, or Ctrl-C)."""
    import aiohttp

    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(
        settings.dashboard_host, settings.dashboard_host
    )
    netloc = f"[{host}]" if ":" in host else host
    # Its page, not just its port: something else listening there is not the dashboard.
    # Only whether it answers is read: no certificate check, nothing secret sent.
    page = f"{settings.web_scheme}://{netloc}:{settings.dashboard_port}/dashboard"
    loop = asyncio.get_running_loop()
    warn_at = loop.time() + 30.0
    timeout = aiohttp.ClientTimeout(total=2.0)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while not supervisor.stopping.is_set():
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.get(page, ssl=False) as response:
                    if response.status == 200:
                        return True
            if loop.time() >= warn_at:
                warn_at = float("inf")
                log.warning(
                    "the dashboard does not answer on %s after 30 s; still waiting (log: %s)",
                    page,
                    log_path(settings.log_dir, "dashboard"),
                )
            if await supervisor.sleep_unless_stopped(0.2):
                break
    return False


def supervise_broker(supervisor: Supervisor, broker: EmbeddedBroker, settings: Settings) -> None:
    """The embedded broker under the same restart policy as the services."""
    first = True

    async def run() -> str | None:
        nonlocal first
        if not first:
            await _restart_broker(broker, settings)
        first = False
        watching = asyncio.ensure_future(_watch_broker(broker))
        stopping = asyncio.ensure_future(supervisor.stopping.wait())
        await asyncio.wait([watching, stopping], return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not watching.done():
            watching.cancel()
            return None
        return watching.result()

    supervisor.supervise("embedded broker", run)


async def run_capture(settings: Settings) -> None:
    """``livetag capture``: the capture server (with the tag service) alone, until
    SIGINT/SIGTERM; the broker, workers, recorder and dashboard run elsewhere."""
    from capture.server import CaptureServer
    from taggers.tokens import load_secret

    stop = asyncio.Event()
    _private_state(settings)
    with _stop_on_signals(stop):
        async with clients.admin_client(settings) as admin:
            await topics.ensure_shared_topics(admin, settings)
        prioritise_capture(settings)
        server = CaptureServer(settings, secret=load_secret(settings))
        await server.start()
        print(f"capture server   {server.url}", flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()


async def run_dashboard(settings: Settings) -> None:
    """``livetag dashboard``: the dashboard server alone, until SIGINT/SIGTERM."""
    from dashboard.server import DashboardServer
    from taggers.tokens import load_secret

    stop = asyncio.Event()
    _private_state(settings)
    with _stop_on_signals(stop):
        server = DashboardServer(settings, secret=load_secret(settings))
        await server.start()
        print(f"dashboard        {server.url}/dashboard?token=...", flush=True)
        try:
            await stop.wait()
        finally:
            await server.stop()


async def run_recorder(settings: Settings, *, only_sessions: set[str] | None = None) -> None:
    """``livetag recorder``: archives sessions, until SIGINT/SIGTERM."""
    from streams.archive.recorder import RecorderWorker

    stop = asyncio.Event()
    _private_state(settings)
    with _stop_on_signals(stop):
        await RecorderWorker(settings, only_sessions=only_sessions).run(stop)


async def _start_service(
    settings: Settings, command: str, output: ServiceOutput | None = None
) -> asyncio.subprocess.Process:
    # Their own processes: fanning features out to browsers or writing archives never
    # takes time from the call's event loop. Their output (and that of the processes
    # they start) goes to their log file, read by a thread of ours.
    child_end = output.child_end() if output is not None else None
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "infra",
            command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=child_end,
            stderr=child_end,
            env={**os.environ, **to_environment(settings)},
            preexec_fn=_child_setup,
        )
    finally:
        if child_end is not None:
            os.close(child_end)  # the child has its own copy: EOF comes when it is gone


async def _stop_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout=10)
        except TimeoutError:
            process.kill()
            await process.wait()


async def run_worker(settings: Settings, *, only_sessions: set[str] | None = None) -> None:
    """``livetag worker``: the processor worker alone, until SIGINT/SIGTERM."""
    from infra.worker import ProcessorWorker

    stop = asyncio.Event()
    _private_state(settings)
    with _stop_on_signals(stop):
        await ProcessorWorker(settings, only_sessions=only_sessions).run(stop)
