"""Face analysis in worker processes, each performer's frames always in the same one.

Measured on the processors benchmark (2 cores, 6 performers): with the landmarkers in a
thread pool of the processor process, the face lanes fell seconds behind while the
machine still had a third of a core free. mediapipe releases the GIL while its graph
runs, but its Python wrapper, the result conversion (478 landmarks to Python objects) and
the record encoding hold it, and so do the event loop and faust's consumer: every frame
waited for the GIL several times. In processes the landmarkers have a GIL each, the event
loop keeps its own, and a frame costs the processor process only its pickled JPEG going
out and its encoded record coming back.

A slot is one single-process executor: its calls run one at a time in submission order,
which keeps each performer's frames in capture order for its landmarker (VIDEO mode needs
increasing timestamps and tracks the face from frame to frame). Performers are spread
over the slots when first seen. A slot whose process died (a crash in native code) is
replaced at once and its frames are tried again there; its performers' landmarkers start
afresh. After five replacements within a minute the next death makes the pool give up
(:class:`FacePoolStopped`) and the processors stop, so that their worker starts them again.

The model lane's rater (streams.features.model_rater) runs in the same workers, right
after the face analysis of the frames it is due to read: the decoded frame and the
landmarks are at hand there, and only its small reading travels back with the face record.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import multiprocessing
import os
import signal
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from streams import records
from streams.features.model_rater import (
    BoundRater,
    FaceSample,
    ModelOutcome,
    RaterChoice,
    Unread,
)

if TYPE_CHECKING:
    # Imported in the workers only: the processor itself never runs mediapipe.
    from streams.features.face import AnalysedFrame, FaceAnalyzer

log = logging.getLogger(__name__)

# Set in each worker process by _start_worker.
_analyzers: dict[str, FaceAnalyzer] = {}
_worker_model: Path | None = None
_worker_session = ""
_worker_rater: BoundRater | None = None

_PR_SET_PDEATHSIG = 1
# Replacements allowed within the window; at the next death the pool gives up.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


def _start_worker(
    model_path: Path,
    session_id: str,
    performer_ids: list[str],
    parent_pid: int,
    rater: RaterChoice | None = None,
    vocabulary: Sequence[str] = (),
) -> None:
    global _worker_model, _worker_session, _worker_rater
    # A worker outlives nothing: if the processor is killed (SIGKILL gives it no chance
    # to shut its pool down), the kernel ends its workers too...
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        os._exit(0)  # ...and one whose processor died before that line ends here.
    # Ctrl-C reaches the whole process group: the processor shuts its workers down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_model, _worker_session = model_path, session_id
    # Landmarkers take 0.1-0.6 s to create: make them before the first frame.
    for performer_id in performer_ids:
        _analyzer(performer_id)
    if rater is not None:
        # A rater that cannot be made fails the frames it should read, not the worker.
        _worker_rater = BoundRater.load(rater, vocabulary)


def _analyzer(performer_id: str) -> FaceAnalyzer:
    from streams.features.face import FaceAnalyzer

    analyzer = _analyzers.get(performer_id)
    if analyzer is None:
        assert _worker_model is not None, "face worker not started"
        analyzer = FaceAnalyzer(_worker_model, _worker_session, performer_id)
        _analyzers[performer_id] = analyzer
    return analyzer


@dataclass(frozen=True)
class FaceResult:
    """A frame's encoded face record, and what the model lane made of it (None: no lane)."""

    message: records.KafkaMessage
    model: ModelOutcome | None = None


def _analyse(frame: records.VideoFrame, read_model: bool = False) -> FaceResult:
    analysed = _analyzer(frame.header.performer_id).analyze_with_image(frame)
    return FaceResult(records.encode(analysed.record), _model_outcome(analysed, read_model))


def _model_outcome(analysed: AnalysedFrame, read_model: bool) -> ModelOutcome | None:
    rater = _worker_rater
    if rater is None:
        return None
    if analysed.landmarks is None:
        return Unread("no_face", rater.name)
    if not read_model:
        return Unread("thinned", rater.name)
    record = analysed.record
    return rater.read(
        FaceSample(
            session_id=record.session_id,
            performer_id=record.performer_id,
            ts_us=record.ts_us,
            rgb=analysed.rgb,
            landmarks=analysed.landmarks,
            blendshapes=record.blendshapes,
        )
    )


def _ready() -> int:
    return len(_analyzers)


class FacePoolStopped(RuntimeError):
    """The pool was closed, or its workers kept dying: it analyses no more frames."""


class FacePool:
    """Face records of a session's frames, analysed in ``processes`` worker processes;
    with a ``rater``, the model lane's readings too (bound to the session's ``vocabulary``)."""

    def __init__(
        self,
        model_path: Path,
        session_id: str,
        performer_ids: list[str],
        processes: int,
        *,
        rater: RaterChoice | None = None,
        vocabulary: Sequence[str] = (),
    ) -> None:
        if processes < 1:
            raise ValueError("face analysis needs at least one process")
        self._model_path = model_path
        self._session_id = session_id
        self._rater = rater
        self._vocabulary = tuple(vocabulary)
        # spawn: the processor already runs threads (faust, pools), which fork would copy
        # in whatever state they were in.
        self._context = multiprocessing.get_context("spawn")
        self._slot_of: dict[str, int] = {}
        for index, performer_id in enumerate(performer_ids):
            self._slot_of[performer_id] = index % processes
        self._slots = [self._new_slot(index) for index in range(processes)]
        # An executor spawns its process at the first call: ask each for its readiness now
        # so that the workers import mediapipe and make their landmarkers (a few seconds)
        # while the processor starts and joins its group.
        self._starting = [executor.submit(_ready) for executor in self._slots]
        #: Worker processes replaced after they died.
        self.restarts = 0
        self._recent_restarts: deque[float] = deque(maxlen=MAX_RESTARTS)
        self.closed = False
        self.broken = False

    def _performers_of(self, slot: int) -> list[str]:
        return [p for p, s in self._slot_of.items() if s == slot]

    def _new_slot(self, slot: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=self._context,
            initializer=_start_worker,
            initargs=(
                self._model_path,
                self._session_id,
                self._performers_of(slot),
                os.getpid(),
                self._rater,
                self._vocabulary,
            ),
        )

    def _slot(self, performer_id: str) -> int:
        slot = self._slot_of.get(performer_id)
        if slot is None:
            # A performer not on the roster: the slot with the fewest performers.
            counts = [len(self._performers_of(s)) for s in range(len(self._slots))]
            slot = counts.index(min(counts))
            self._slot_of[performer_id] = slot
        return slot

    def worker_pids(self) -> list[int]:
        """The process id of each slot's worker, in slot order (blocks: tests and tools)."""
        return [executor.submit(os.getpid).result() for executor in self._slots]

    async def analyse(self, frame: records.VideoFrame, *, read_model: bool = False) -> FaceResult:
        """The encoded face record of ``frame`` and, with a rater, the model's outcome
        (``read_model``: the model is due to read it, if it has a face);
        :class:`FaceAnalysisError` if the frame cannot be analysed (not a JPEG, another
        session's), ``BrokenExecutor`` if its worker
        died twice while it was queued or running there (frames queued behind one that
        kills its worker share its fate), :class:`FacePoolStopped` once the pool is closed,
        gave up, or a worker could not start, any other error if analysis failed."""
        slot = self._slot(frame.header.performer_id)
        attempt = 0
        while True:
            if self.closed or self.broken:
                raise FacePoolStopped("closed" if self.closed else "its workers kept dying")
            executor, starting = self._slots[slot], self._starting[slot]
            if not starting.done():
                # A frame waits for its worker to have started (the processor reads frames
                # while its workers start); then everything is checked again. (A cancelled
                # wait leaves the start alone: asyncio.wait cancels nothing it waits for.)
                await asyncio.wait([asyncio.wrap_future(starting)])
                continue
            if starting.cancelled():
                raise FacePoolStopped("closed")
            if starting.exception() is not None:
                # A worker that cannot start (a broken install) fails no frame: the pool
                # stops, its frames stay unacked, and the processors stop for a restart.
                self.broken = True
                log.error("a face worker could not start: %r", starting.exception())
                continue
            try:
                future = executor.submit(_analyse, frame, read_model)
            except BrokenExecutor:
                # The executor saw its worker die before a frame of ours failed there:
                # replace it and submit again (no attempt of this frame was lost).
                if self._slots[slot] is executor:
                    self._replace(slot)
                continue
            except RuntimeError as exc:  # shut down meanwhile
                raise FacePoolStopped(str(exc)) from None
            try:
                return await asyncio.wrap_future(future)
            except BrokenExecutor:
                # Every frame that was queued in the dead worker lands here: the worker is
                # replaced once, and each frame is tried once more on the new one (a frame
                # that kills its worker twice is given up).
                if self._slots[slot] is executor:
                    self._replace(slot)
                attempt += 1
                if attempt == 2:
                    raise

    def _replace(self, slot: int) -> None:
        now = time.monotonic()
        if len(self._recent_restarts) == MAX_RESTARTS and now - self._recent_restarts[0] < (
            RESTART_WINDOW_S
        ):
            # A worker that cannot stay up (no memory, a broken model) would be spawned
            # for every frame: stop, and let the processor's owner deal with it.
            self.broken = True
            log.error("face workers of session %s keep dying; giving up", self._session_id)
            return
        self._recent_restarts.append(now)
        broken = self._slots[slot]
        self._slots[slot] = self._new_slot(slot)
        self._starting[slot] = self._slots[slot].submit(_ready)
        self.restarts += 1
        broken.shutdown(wait=False, cancel_futures=True)
        log.error(
            "face worker %d of session %s died; started a new one for %s",
            slot,
            self._session_id,
            ", ".join(self._performers_of(slot)) or "no performer yet",
        )

    def close(self) -> None:
        self.closed = True
        for executor in self._slots:
            executor.shutdown(wait=False, cancel_futures=True)
