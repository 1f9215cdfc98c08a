"""``livetag worker``: runs the feature processors of every live session.

It follows livetag.sessions and keeps one processor process (streams.features.processors) per
session that is created, live or ended (its tail still to process), and stops it when the
session is archived. Every worker runs every session: the processes of one session form one
Kafka consumer group, so N workers split each session's partitions, and a worker that dies
has its partitions taken over.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass

from infra.broker import die_with_parent
from streams import records
from streams.features import face_model, model_rater
from streams.kafka import topics
from streams.kafka.sessions import SessionDirectory
from streams.settings import Settings, to_environment

log = logging.getLogger(__name__)
#: What an operator follows on livetag up's terminal (streams.runtime.service_logs.MILESTONES).
milestones = logging.getLogger("livetag.session")

# An ended session keeps its processors until it is archived: the recorder waits for them
# to finish the tail of the scene before it builds the archive.
ACTIVE_STATES = ("created", "live", "ended")
_RESTART_BACKOFF_S = (1.0, 2.0, 5.0, 10.0, 30.0)


def processor_command(session_id: str) -> list[str]:
    """How a session's processors are started: by the session's id, which they look up
    on livetag.sessions. Never the record itself: it grows with the session (takes,
    presence) and a command line has a size limit (128 KiB per argument on Linux)."""
    return [
        sys.executable,
        "-m",
        "streams.features.processors",
        topics.check_session_id(session_id),
    ]


class ModelLaneCheck:
    """Warns, once per session, when its model lane cannot run (its model file missing, a
    setting that names no rater). Not a refusal, as for the face model: the lane is
    optional, and the session's processors run without it."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._warned: set[str] = set()

    def check(self, session: records.SessionRecord) -> None:
        if session.topics.model is None or session.session_id in self._warned:
            return
        try:
            model_rater.choose_rater(self._settings)
        except model_rater.UNUSABLE as exc:
            self._warned.add(session.session_id)
            log.warning(
                "session %s is processed without the model lane: %s", session.session_id, exc
            )


@dataclass
class _Child:
    process: asyncio.subprocess.Process
    started: float


class ProcessorWorker:
    """Starts and stops session processor processes as sessions come and go."""

    def __init__(self, settings: Settings, *, only_sessions: set[str] | None = None) -> None:
        self.settings = settings
        self._only = only_sessions
        self._directory = SessionDirectory(settings)
        self.children: dict[str, _Child] = {}
        self._not_before: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._model_lane = ModelLaneCheck(settings)

    async def run(self, stop: asyncio.Event) -> None:
        await self._directory.start()
        try:
            while not stop.is_set():
                await self._reconcile()
                await self._directory.changed_or_stopped(stop, timeout_s=1.0)
        finally:
            await asyncio.gather(*(self._stop_child(sid) for sid in list(self.children)))
            await self._directory.stop()

    async def _reconcile(self) -> None:
        for session in self._directory.sessions():
            if self._only is not None and session.session_id not in self._only:
                continue
            running = self.children.get(session.session_id)
            if running is not None and running.process.returncode is not None:
                # Died: count it, and restart with a growing delay; a child that ran for a
                # minute starts the count again.
                del self.children[session.session_id]
                if time.monotonic() - running.started > 60.0:
                    self._failures[session.session_id] = 0
                failures = self._failures.get(session.session_id, 0) + 1
                self._failures[session.session_id] = failures
                delay = _RESTART_BACKOFF_S[min(failures, len(_RESTART_BACKOFF_S)) - 1]
                self._not_before[session.session_id] = time.monotonic() + delay
                log.error(
                    "processors of session %s exited with %s; restarting in %.0f s",
                    session.session_id,
                    running.process.returncode,
                    delay,
                )
                running = None
            if session.state in ACTIVE_STATES and running is None:
                if time.monotonic() >= self._not_before.get(session.session_id, 0.0):
                    await self._start_child(session)
            elif session.state not in ACTIVE_STATES and running is not None:
                milestones.info("session %s is %s: releasing it", session.session_id, session.state)
                await self._stop_child(session.session_id)

    async def _start_child(self, session: records.SessionRecord) -> None:
        try:
            face_model.resolve(self.settings)
        except face_model.FaceModelError as exc:
            # Restarting cannot fix a missing model: say so, and look again later.
            self._not_before[session.session_id] = time.monotonic() + 60.0
            log.error("cannot process session %s: %s", session.session_id, exc)
            return
        self._model_lane.check(session)
        try:
            process = await asyncio.create_subprocess_exec(
                *processor_command(session.session_id),
                env={**os.environ, **to_environment(self.settings)},
                # A processor must not outlive its worker (killed or not): it would go on
                # consuming for a session nobody manages.
                preexec_fn=die_with_parent,
            )
        except OSError as exc:
            # No process for this session now (out of processes or memory): the others
            # keep theirs, and this one is tried again later.
            self._not_before[session.session_id] = time.monotonic() + 30.0
            log.error("cannot start the processors of session %s: %s", session.session_id, exc)
            return
        self.children[session.session_id] = _Child(process, time.monotonic())
        milestones.info("processing session %s (pid %s)", session.session_id, process.pid)

    async def _stop_child(self, session_id: str) -> None:
        child = self.children.pop(session_id, None)
        if child is None or child.process.returncode is not None:
            return
        child.process.terminate()
        try:
            async with asyncio.timeout(15):
                await child.process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            await child.process.wait()
