"""The processors of one session: a faust app with prosody and face agents and the aligner.

One app (one consumer group, ``livetag-processors-SID``) per session, bound to that
session's topics by name: faust binds topics when the app is defined and cannot follow
pattern topics. Every ``livetag worker`` runs one such process per live session, so N
workers share each session's partitions, and when one dies the group gives its partitions
to the others (at-least-once: a feature record's identity is its key + ``ts_us``).

Each agent handles its partitions in order, so each performer's tracker and landmarker see
their stream in capture order. The CPU work never runs on the event loop, so the group
heartbeat never waits for it: face analysis in worker processes (streams.features.face_pool),
prosody in a thread (numpy releases the GIL); both take records in batches when busy.
Undecodable records go to ``livetag.deadletter`` with the reason.

Each agent is a small class that writes through the session's :class:`SessionOutput`:
ProsodyAgent (its ack bookkeeping in UnfinishedChunks) and FaceAgent (its skip rule in
skip_face); build_app only wires them, and the aligner's (streams.labels.aligner), to the app.

The model lane rides on the face agent: the model rater reads the faces in the face workers
(at most ``model_rate_hz`` frames a second per performer, fewer when their worker is
behind), and the agent gathers its frame readings into one record per performer per label
window on the session's model topic (streams.features.model_windows, docs/model-lane.md).
The lane is optional: when its rater cannot be chosen (the model file missing, a setting
that names no rater), the processors say so once and run without it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import faust

from streams import records
from streams.features import face_model
from streams.features.face_errors import FaceAnalysisError
from streams.features.face_pool import FacePool, FacePoolStopped, FaceResult
from streams.features.model_rater import UNUSABLE, RaterChoice, Unread, choose_rater
from streams.features.model_windows import MODEL_IDLE_FLUSH_S, ModelThinning, ModelWindows
from streams.features.prosody import SAMPLE_RATE, ProsodyTracker
from streams.kafka import group_members, topics
from streams.kafka.batches import BatchLane
from streams.kafka.clients import FAUST_LOG, decoded_events, make_faust_app, raw_topic
from streams.kafka.sessions import read_session
from streams.labels.aligner import add_aligner
from streams.runtime.redaction import install_token_filter
from streams.runtime.service_logs import LOG_FORMAT
from streams.session_clock import now_us
from streams.settings import Settings, load_settings

log = logging.getLogger(__name__)

SERVICE = "livetag-processors"
LANE_FRAMES = 8  # video frames waiting per performer, each already sent to its face worker
# A performer's face worker is behind when it has this many of their frames to analyse (the
# one it is on and two waiting, ~130 ms at 15 fps): then their frames are skipped.
FACE_BUSY_FRAMES = 3
AUDIO_BATCH = 256  # audio chunks analysed in one trip to the prosody thread (at most)
PROSODY_IDLE_FLUSH_S = 1.0  # a performer's audio silent this long has ended: its hops out
PROCESSORS_COMMIT_INTERVAL_S = 1.0


class SessionProcessors:
    """Per-performer state of one session's processors (trackers, landmarkers)."""

    def __init__(self, settings: Settings, session: records.SessionRecord) -> None:
        self.session = session
        self.trackers: dict[str, ProsodyTracker] = {}
        self.rater = model_rater_of(settings, session)
        self.faces = FacePool(
            face_model.resolve(settings),
            session.session_id,
            [performer.performer_id for performer in session.roster],
            settings.face_processes,
            rater=self.rater,
            vocabulary=[entry.label for entry in session.vocabulary],
        )
        # The workers start now and make their landmarkers (0.3-0.6 s each) while the
        # processor starts and joins its group; frames wait for their worker's start.
        # Prosody (~0.2 ms a chunk) runs in a thread of its own, off the event loop.
        self.prosody_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prosody")

    def tracker(self, performer_id: str) -> ProsodyTracker:
        tracker = self.trackers.get(performer_id)
        if tracker is None:
            tracker = ProsodyTracker(self.session.session_id, performer_id)
            self.trackers[performer_id] = tracker
        return tracker

    def prosody_messages(
        self, chunks: list[records.AudioChunk]
    ) -> tuple[list[records.KafkaMessage], list[int | str | None]]:
        """The hops these chunks complete, as one encoded record per performer (or a few,
        MAX_PROSODY_HOPS each); and per chunk the instant before which its performer's hops
        are all out once those records are (None: all of them), or why the chunk failed.
        Runs in the prosody thread; each performer's tracker gets its chunks in order."""
        hops: dict[str, list[records.ProsodyFrame]] = {}
        progress: list[int | str | None] = []
        for chunk in chunks:
            try:
                tracker = self.tracker(chunk.header.performer_id)
                hops.setdefault(chunk.header.performer_id, []).extend(tracker.push(chunk))
                progress.append(tracker.emitted_until_us())
            except Exception as exc:  # one bad chunk must not cost its batch
                log.exception("prosody analysis failed")
                progress.append(f"analysis failed: {exc}")
        messages = [message for frames in hops.values() for message in prosody_records(frames)]
        return messages, progress

    def flush_prosody(self, performer_id: str) -> list[records.KafkaMessage]:
        """The last hops of a performer's audio that stopped, zero-padded, encoded (runs in
        the prosody thread); the next chunk starts a new segment."""
        tracker = self.trackers.get(performer_id)
        if tracker is None:
            return []
        return prosody_records(tracker.flush())

    def close(self) -> None:
        self.faces.close()
        self.prosody_pool.shutdown(wait=False, cancel_futures=True)


def model_rater_of(settings: Settings, session: records.SessionRecord) -> RaterChoice | None:
    """The session's model rater (None: no model lane), checked before any frame.

    A rater that cannot be chosen costs the model lane only, never the face features or
    the labels: an install upgraded without `livetag models fetch` keeps its labels. Its
    windows then get no model reading (the aligner's ``model_windows`` stays behind
    ``windows_emitted``), and why is said here, once per session's processor."""
    if session.topics.model is None:
        if settings.model_rater != "none":
            log.warning(
                "session %s was created before the model lane: it has no model topic, and "
                "its processors make no model readings",
                session.session_id,
            )
        return None
    try:
        return choose_rater(settings)
    except UNUSABLE as exc:
        log.error(
            "session %s: the model lane is off, its label windows get no model readings "
            "(face features and labels go on): %s",
            session.session_id,
            exc,
        )
        return None


def prosody_records(frames: list[records.ProsodyFrame]) -> list[records.KafkaMessage]:
    """Hops of one performer, in the order made, as encoded ProsodyHops records: a record
    holds a run of increasing ``ts_us`` (a stream whose time stepped back, a new timeline,
    starts a new record) of at most MAX_PROSODY_HOPS hops."""
    runs: list[list[records.ProsodyFrame]] = []
    for frame in frames:
        run = runs[-1] if runs else None
        if run is None or frame.ts_us <= run[-1].ts_us or len(run) >= records.MAX_PROSODY_HOPS:
            runs.append([frame])
        else:
            run.append(frame)
    return [records.encode(records.ProsodyHops.of(run)) for run in runs]


def _read_lag_us(event: Any) -> int:
    """How long a record waited in Kafka before the processors read it (0 if unknown)."""
    timestamp = getattr(event.message, "timestamp", None)
    if not timestamp:
        return 0
    return now_us() - round(timestamp * 1_000_000)


def skipped_face(frame: records.VideoFrame, reason: records.FaceSkipReason) -> records.FaceFrame:
    """The face record of a frame the processors chose not to analyse."""
    header = frame.header
    return records.FaceFrame(
        ts_us=header.ts_us,
        session_id=header.session_id,
        performer_id=header.performer_id,
        video_seq=header.seq,
        face_present=None,
        skipped=reason,
    )


class SessionOutput:
    """What every agent of one session's processors writes through: the session's feature
    topics, ``livetag.deadletter``, and the stop that hands a failure to ``livetag worker``."""

    def __init__(self, app: Any, session: records.SessionRecord) -> None:
        self.session = session
        self.prosody = raw_topic(app, session.topics.prosody)
        self.face = raw_topic(app, session.topics.face)
        self.model = raw_topic(app, session.topics.model) if session.topics.model else None
        self._deadletter = raw_topic(app, topics.DEADLETTER)

    async def dead_letter(self, event: Any, source: str, reason: str) -> None:
        """The event's record on ``livetag.deadletter``, with the reason and where it was
        read (its partition and offset on ``source``)."""
        message = event.message
        letter = records.DeadLetter.of(
            ts_us=now_us(),
            source_topic=source,
            service=SERVICE,
            reason=reason,
            payload=message.value or b"",
            key=message.key,
            partition=message.partition,
            offset=message.offset,
        )
        await self.send(self._deadletter, records.encode(letter))

    async def send(self, topic: Any, message: records.KafkaMessage) -> None:
        await topic.send(key=message.key, value=message.value, headers=message.headers)

    async def emit(self, topic: Any, record: records.AnyRecord) -> None:
        await self.send(topic, records.encode(record))

    def stop_for_restart(self, exc: BaseException) -> None:
        # Records left unacked by a failure are not read again while this process lives,
        # and commits cannot pass them: stop (gracefully, committing what was acked) so
        # that `livetag worker` starts the processors again from the last commit.
        log.critical(
            "processors of session %s stop after a failure (%r); their worker restarts them",
            self.session.session_id,
            exc,
        )
        os.kill(os.getpid(), signal.SIGTERM)


class UnfinishedChunks:
    """Per performer, the audio chunks whose hops are not all out yet, in arrival order.

    A hop needs audio 15.8 ms past its end, so a chunk's last hops come with the next
    chunk. Acked only then: a worker killed in between leaves the chunk uncommitted, for
    its successor. When a performer's audio stops (they left, the session ended), the
    tracker is flushed (its last hops zero-padded) after PROSODY_IDLE_FLUSH_S without a
    chunk, so the stream's last chunks get their hops and their acks.

    Sans I/O: the caller hands the hops to the producer first, then tells this what is out,
    with the instant (``time.monotonic()``) passed in.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, deque[tuple[int, Any]]] = {}
        self._last_chunk_at: dict[str, float] = {}

    def heard(self, performer_id: str, now: float) -> None:
        """A chunk of the performer came out of the prosody thread (analysed or failed)."""
        self._last_chunk_at[performer_id] = now

    def analysed(
        self, event: Any, header: records.AudioChunkHeader, emitted_until_us: int | None
    ) -> None:
        """Hold the chunk's event, then ack its performer's events whose hops are all out:
        those of chunks ending by ``emitted_until_us`` (None: all of them)."""
        waiting = self._waiting.setdefault(header.performer_id, deque())
        end_us = header.ts_us + header.sample_count * 1_000_000 // SAMPLE_RATE
        waiting.append((end_us, event))
        while waiting and (emitted_until_us is None or waiting[0][0] <= emitted_until_us):
            waiting.popleft()[1].ack()

    def idle(self, now: float) -> list[str]:
        """Performers with chunks held whose audio stopped: their trackers are due a flush."""
        return [
            performer_id
            for performer_id, waiting in self._waiting.items()
            if waiting and now - self._last_chunk_at[performer_id] >= PROSODY_IDLE_FLUSH_S
        ]

    def flushed(self, performer_id: str) -> None:
        """The performer's tracker was flushed and its last hops are out: ack the rest."""
        waiting = self._waiting.get(performer_id)
        while waiting:
            waiting.popleft()[1].ack()

    def __len__(self) -> int:
        return sum(len(waiting) for waiting in self._waiting.values())


class ProsodyAgent:
    """One run of the prosody agent: audio chunks in, hops out.

    Chunks go to the prosody thread in batches (one trip per batch); each chunk's event is
    acked once all its hops are handed to the producer (UnfinishedChunks).
    """

    def __init__(
        self, state: SessionProcessors, output: SessionOutput, batch_interval_s: float
    ) -> None:
        self._state = state
        self._output = output
        self._batch_interval_s = batch_interval_s
        self.unfinished = UnfinishedChunks()
        self._one_at_a_time = asyncio.Lock()  # the analysis of a batch, or a flush, with its sends

    async def run(self, stream: faust.StreamT) -> None:
        lane: BatchLane[tuple[Any, records.AudioChunk]] = BatchLane(
            "prosody",
            self.analyse,
            limit=AUDIO_BATCH,
            on_failure=self._output.stop_for_restart,
            interval_s=self._batch_interval_s,
        )
        flusher = asyncio.create_task(self.flush_idle(), name="prosody-idle-flush")
        flusher.add_done_callback(self._flush_failed)
        audio = decoded_events(
            stream, records.AudioChunk, self._output.session.topics.audio, self._output.dead_letter
        )
        try:
            async for event, chunk in audio:
                await lane.put((event, chunk))
        finally:
            flusher.cancel()
            await lane.close()

    async def analyse(self, batch: list[tuple[Any, records.AudioChunk]]) -> None:
        async with self._one_at_a_time:
            results = await asyncio.get_running_loop().run_in_executor(
                self._state.prosody_pool,
                self._state.prosody_messages,
                [chunk for _, chunk in batch],
            )
            await self.hand_over(batch, results)

    async def hand_over(
        self,
        batch: list[tuple[Any, records.AudioChunk]],
        results: tuple[list[records.KafkaMessage], list[int | str | None]],
    ) -> None:
        """The batch's hops first (one record per performer), then the acks they allow; a
        chunk whose analysis failed is dead-lettered (and acked)."""
        messages, progress = results
        for message in messages:
            await self._output.send(self._output.prosody, message)
        now = time.monotonic()
        for (event, chunk), emitted_until_us in zip(batch, progress, strict=True):
            self.unfinished.heard(chunk.header.performer_id, now)
            if isinstance(emitted_until_us, str):
                await self._output.dead_letter(
                    event, self._output.session.topics.audio, emitted_until_us
                )
                event.ack()
                continue
            self.unfinished.analysed(event, chunk.header, emitted_until_us)

    async def flush_idle(self) -> None:
        while True:
            await asyncio.sleep(PROSODY_IDLE_FLUSH_S / 2)
            await self.flush_stopped_performers()

    async def flush_stopped_performers(self) -> None:
        """The last hops of the performers whose audio stopped, out; then their acks."""
        async with self._one_at_a_time:
            for performer_id in self.unfinished.idle(time.monotonic()):
                messages = await asyncio.get_running_loop().run_in_executor(
                    self._state.prosody_pool, self._state.flush_prosody, performer_id
                )
                for message in messages:
                    await self._output.send(self._output.prosody, message)
                self.unfinished.flushed(performer_id)

    def _flush_failed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._output.stop_for_restart(exc)


Analysis = asyncio.Future[FaceResult]
# A frame in its performer's lane: its event, its capture instant, its analysis.
Waiting = tuple[Any, int, Analysis]


class ModelLane:
    """One face agent run's model lane: which frames the model reads, and its readings
    gathered per performer per label window (the events held until their window is out)."""

    def __init__(self, session_id: str, rater: RaterChoice, rate_hz: float, window_us: int):
        self.thinning = ModelThinning(rate_hz)
        self.windows: ModelWindows[Any] = ModelWindows(session_id, window_us, rater.fallback_name)

    @classmethod
    def of(cls, settings: Settings, session_id: str, rater: RaterChoice | None) -> ModelLane | None:
        """A new run's model lane, with the settings' rate and label window (None: no rater)."""
        if rater is None:
            return None
        return cls(session_id, rater, settings.model_rate_hz, settings.label_window_ms * 1000)


def skip_face(analysing: int, read_lag_us: int, max_lag_us: int) -> bool:
    """Whether a frame is recorded as skipped instead of analysed: its performer's face
    worker has ``analysing`` of their frames, the frame waited ``read_lag_us`` in Kafka,
    and ``max_lag_us`` is the lag budget (0: every frame is analysed, however late).

    The processors are behind when the frame waited in Kafka past the lag budget, or its
    performer's face worker still has frames queued: analysing it would only add lag. The
    rule is the same for every performer, so an overloaded machine thins all of them
    alike, to the rate its workers manage. The lag is the processors' own (from the
    record's Kafka timestamp, set when the capture server produced it): a frame that
    reached Kafka late is not the processors' lag, and skipping it would not catch anything
    up (judged from the capture instant, a scene whose fork ran ~250 ms behind had every
    frame skipped).
    """
    busy = analysing >= FACE_BUSY_FRAMES
    return bool(max_lag_us) and (busy or read_lag_us > max_lag_us)


class FaceAgent:
    """One run of the face agent: video frames in, face records out.

    One lane per performer: frames of one performer stay in capture order (its landmarker
    needs increasing timestamps), performers run in parallel in the face worker processes.
    A frame goes to its worker as soon as it is read, and the lane takes the results in
    order: with only one frame in flight per performer, a worker idled while the
    processor's busy event loop got round to sending the next one, and a backlog (after a
    restart) drained barely faster than real time. Events are acked when their face record
    is out (and with a model lane, the model reading of their label window); faust commits
    an offset only when everything before it is acked, so a crash never skips a frame.
    """

    def __init__(
        self,
        faces: FacePool,
        output: SessionOutput,
        max_lag_us: int,
        model: ModelLane | None = None,
    ) -> None:
        self._faces = faces
        self._output = output
        self._max_lag_us = max_lag_us
        self._model = model
        self._lanes: dict[str, tuple[asyncio.Queue[Waiting], asyncio.Task[None]]] = {}
        self._analysing: dict[str, int] = {}  # per performer: frames sent to a worker, not done

    async def run(self, stream: faust.StreamT) -> None:
        video = decoded_events(
            stream, records.VideoFrame, self._output.session.topics.video, self._output.dead_letter
        )
        try:
            async for event, frame in video:
                await self.take(event, frame)
        finally:
            await self.stop()

    async def take(self, event: Any, frame: records.VideoFrame) -> None:
        """Send the frame to its worker (or skip it) and queue it in its performer's lane."""
        performer_id = frame.header.performer_id
        if performer_id not in self._lanes:
            queue: asyncio.Queue[Waiting] = asyncio.Queue(maxsize=LANE_FRAMES)
            lane = asyncio.create_task(self._lane(performer_id, queue))
            self._lanes[performer_id] = (queue, lane)
        analysis = self._analysis(event, frame)
        try:
            # A full lane holds the stream back: backpressure, not an unbounded queue.
            await self._lanes[performer_id][0].put((event, frame.header.ts_us, analysis))
        except BaseException:
            analysis.cancel()  # stopping while waiting: not queued, not awaited
            raise

    def _analysis(self, event: Any, frame: records.VideoFrame) -> Analysis:
        performer_id = frame.header.performer_id
        analysing = self._analysing.get(performer_id, 0)
        if skip_face(analysing, _read_lag_us(event), self._max_lag_us):
            # Recorded as skipped, in its place in the lane (every frame gets one record,
            # in order).
            skipped = asyncio.get_running_loop().create_future()
            # Skipped for the model too: it thins what the face analysis thins.
            thinned = Unread("thinned") if self._model is not None else None
            skipped.set_result(FaceResult(records.encode(skipped_face(frame, "late")), thinned))
            return skipped
        read_model = self._model is not None and self._model.thinning.due(
            performer_id, frame.header.ts_us, analysing
        )
        # Submitted now, in read order: each worker runs its calls in order.
        analysis = asyncio.create_task(self._faces.analyse(frame, read_model=read_model))
        self._analysing[performer_id] = analysing + 1
        analysis.add_done_callback(functools.partial(self._analysed, performer_id))
        return analysis

    def _analysed(self, performer_id: str, _: Analysis) -> None:
        self._analysing[performer_id] -= 1

    async def _next(self, performer_id: str, queue: asyncio.Queue[Waiting]) -> Waiting:
        """The lane's next frame; TimeoutError if the performer has a model window open
        and no frame came for MODEL_IDLE_FLUSH_S (their frames stopped: it is due out)."""
        if self._model is not None and self._model.windows.is_open(performer_id):
            return await asyncio.wait_for(queue.get(), MODEL_IDLE_FLUSH_S)
        return await queue.get()

    async def _lane(self, performer_id: str, queue: asyncio.Queue[Waiting]) -> None:
        # A lane must outlive any one bad frame: if it died, its performer's queue would
        # fill and hold the whole agent back.
        while True:
            try:
                event, ts_us, analysis = await self._next(performer_id, queue)
            except TimeoutError:
                assert self._model is not None
                readings, done = self._model.windows.flush(performer_id)
                if not await self._hand_over(readings, done):
                    return
                continue
            reason = ""
            result: FaceResult | None
            try:
                result = await analysis
            except FacePoolStopped as exc:
                # Not acked: the next processor redoes this frame. Closed = stopping.
                if not self._faces.closed:
                    self._output.stop_for_restart(exc)
                return
            except Exception as exc:
                reason = str(exc)
                if not isinstance(exc, FaceAnalysisError):  # mediapipe, a dead worker
                    log.exception("face analysis failed")
                    reason = f"analysis failed: {exc}"
                result = None
            try:
                if result is None:
                    await self._output.dead_letter(event, self._output.session.topics.video, reason)
                else:
                    await self._output.send(self._output.face, result.message)
            except Exception as exc:
                # Not acked: the offset is not committed past it, and the restart redoes
                # this frame (at-least-once).
                log.exception("could not produce a face record or its dead letter")
                self._output.stop_for_restart(exc)
                return
            if self._model is None:
                event.ack()
                continue
            # A dead-lettered frame has no outcome: it only moves its window on.
            outcome = result.model if result is not None else None
            if not await self._hand_over(
                *self._model.windows.add(performer_id, ts_us, outcome, event)
            ):
                return

    async def _hand_over(self, readings: list[records.ModelReading], done: list[Any]) -> bool:
        """Closed windows' readings out, then their frames' acks; False if a reading could
        not be produced (the processors then stop: its frames, unacked, are redone)."""
        try:
            for reading in readings:
                assert self._output.model is not None
                await self._output.emit(self._output.model, reading)
        except Exception as exc:
            log.exception("could not produce a model reading")
            self._output.stop_for_restart(exc)
            return False
        for event in done:
            event.ack()
        return True

    async def stop(self) -> None:
        """Stop the lanes, leaving what they had not produced unacked (it is redone)."""
        tasks = [task for _, task in self._lanes.values()]
        for task in tasks:
            task.cancel()
        # Wait for them: their unacked events stay uncommitted and are redone.
        await asyncio.gather(*tasks, return_exceptions=True)
        # Frames still waiting in the lanes are not acked either; their analyses are
        # dropped (retrieved, so none is reported as never awaited).
        waiting = []
        for queue, _ in self._lanes.values():
            while not queue.empty():
                waiting.append(queue.get_nowait()[2])
        for dropped in waiting:
            dropped.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)


async def note_member(
    app: Any, member: group_members.MemberNote, sender: Any, assigned: set[Any], **_: Any
) -> None:
    """Note this processor's member id in its group (on each assignment: a rejoin may
    change it), so that a processor started after this one is killed need not wait it out.
    faust itself reads its aiokafka consumer this way (its driver's on_partitions_assigned)."""
    try:
        consumer = cast(Any, app.consumer)._thread._ensure_consumer()
    except AttributeError:
        log.warning("cannot note this processor's group member id (faust changed?)")
        return
    member.note(group_members.consumer_member_id(consumer))


async def close_processors(
    state: SessionProcessors, member: group_members.MemberNote, sender: Any, **_: Any
) -> None:
    state.close()
    # A clean stop leaves no note behind (only a killed processor's stays, for its
    # successor to find dead).
    member.forget()


def build_app(settings: Settings, session: records.SessionRecord) -> Any:
    """The faust app of one session's processors."""
    app = make_faust_app(
        settings,
        topics.processors_group(session.session_id),
        fetch_wait_ms=settings.stream_fetch_wait_ms,
        # A restarted worker must not wait a minute for its dead predecessor's session.
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        # What a killed worker's successor reads again is what was done since the last
        # commit: every second instead of faust's 2.8 s (cheap: one offset per partition).
        broker_commit_interval=PROCESSORS_COMMIT_INTERVAL_S,
        stream_wait_empty=False,
    )
    state = SessionProcessors(settings, session)
    output = SessionOutput(app, session)
    member = group_members.MemberNote(settings, topics.processors_group(session.session_id))

    # The agents are coroutines, not generators: faust formats a debug log line and looks
    # for reply headers for every value an agent yields, ~4% of this process's event loop
    # at hundreds of records a second, for results nobody reads. Each run of an agent has
    # state of its own: faust starts an agent anew when it crashed or a rebalance
    # cancelled it, and the new run must not take over what the old one held unacked.
    @app.agent(raw_topic(app, session.topics.audio))
    async def prosody(stream: faust.StreamT) -> None:
        await ProsodyAgent(state, output, settings.prosody_batch_ms / 1000).run(stream)

    @app.agent(raw_topic(app, session.topics.video))
    async def face(stream: faust.StreamT) -> None:
        model = ModelLane.of(settings, session.session_id, state.rater)
        await FaceAgent(state.faces, output, settings.face_max_lag_ms * 1000, model).run(stream)

    add_aligner(
        app,
        settings,
        session,
        emit=output.emit,
        dead_letter=output.dead_letter,
        on_failure=output.stop_for_restart,
    )
    signals = cast(Any, app)
    signals.on_partitions_assigned.connect(functools.partial(note_member, app, member))
    signals.on_before_shutdown.connect(functools.partial(close_processors, state, member))
    return app


def setup_logging(level: str) -> None:
    """Logging until the faust worker starts (it sets up its own: ProcessorWorker)."""
    logging.basicConfig(level=level, format=LOG_FORMAT)
    # Join links and credentials are bearer secrets: as in every livetag process, whatever
    # logs one by accident (an exception's text, a library's warning) prints a mask instead.
    install_token_filter()


class ProcessorWorker(faust.Worker):
    """faust's worker, with the token filter on the log handlers it puts in place of the
    root logger's when it starts (the ones setup_logging filtered are gone by then), and
    livetag's line format on them: it names each line's logger, which livetag up reads to
    keep libraries' lines off the terminal (faust's own format has no logger name)."""

    logger = FAUST_LOG

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        super().on_setup_root_logger(logger, level)
        for handler in logger.handlers:
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
        install_token_filter(logger)


def main() -> None:
    """``python -m streams.features.processors SESSION_ID``: run one session's processors, as its
    record on livetag.sessions describes it."""
    settings = load_settings()
    setup_logging(settings.log_level)
    if len(sys.argv) != 2:
        sys.exit("usage: python -m streams.features.processors SESSION_ID")
    try:
        session_id = topics.check_session_id(sys.argv[1])
    except ValueError as exc:
        sys.exit(str(exc))
    session = asyncio.run(read_session(settings, session_id))
    if session is None:
        sys.exit(f"no session {session_id!r} on {topics.SESSIONS}")
    app = build_app(settings, session)
    # A processor of this session killed before us (on this machine) is not waited for.
    asyncio.run(
        group_members.evict_dead_members(settings, topics.processors_group(session.session_id))
    )
    worker = ProcessorWorker(app, loglevel=settings.log_level, quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
