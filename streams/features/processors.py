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
from streams.features.face_pool import FacePool, FacePoolStopped
from streams.features.prosody import SAMPLE_RATE, ProsodyTracker
from streams.kafka import group_members, topics
from streams.kafka.batches import BatchLane
from streams.kafka.clients import FAUST_LOG, decoded_events, make_faust_app
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
        self.faces = FacePool(
            face_model.resolve(settings),
            session.session_id,
            [performer.performer_id for performer in session.roster],
            settings.face_processes,
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
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "value_serializer": "raw"}
    audio_topic = app.topic(session.topics.audio, **raw)
    video_topic = app.topic(session.topics.video, **raw)
    prosody_topic = app.topic(session.topics.prosody, **raw)
    face_topic = app.topic(session.topics.face, **raw)
    deadletter_topic = app.topic(topics.DEADLETTER, **raw)

    async def dead_letter(event: Any, source: str, reason: str) -> None:
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
        encoded = records.encode(letter)
        await deadletter_topic.send(key=encoded.key, value=encoded.value, headers=encoded.headers)

    async def send(topic: Any, message: records.KafkaMessage) -> None:
        await topic.send(key=message.key, value=message.value, headers=message.headers)

    async def emit(topic: Any, record: records.AnyRecord) -> None:
        await send(topic, records.encode(record))

    def stop_for_restart(exc: BaseException) -> None:
        # Records left unacked by a failure are not read again while this process lives,
        # and commits cannot pass them: stop (gracefully, committing what was acked) so
        # that `livetag worker` starts the processors again from the last commit.
        log.critical(
            "processors of session %s stop after a failure (%r); their worker restarts them",
            session.session_id,
            exc,
        )
        os.kill(os.getpid(), signal.SIGTERM)

    # The agents are coroutines, not generators: faust formats a debug log line and looks
    # for reply headers for every value an agent yields, ~4% of this process's event loop
    # at hundreds of records a second, for results nobody reads.
    @app.agent(audio_topic)
    async def prosody(stream: faust.StreamT) -> None:
        loop = asyncio.get_running_loop()

        # Per performer, chunks whose hops are not all out yet: a hop needs audio 15.8 ms
        # past its end, so a chunk's last hops come with the next chunk. Acked only then:
        # a worker killed in between leaves the chunk uncommitted, for its successor.
        # When a performer's audio stops (they left, the session ended), the tracker is
        # flushed (its last hops zero-padded) after PROSODY_IDLE_FLUSH_S without a chunk,
        # so the stream's last chunks get their hops and their acks.
        unfinished: dict[str, deque[tuple[int, Any]]] = {}
        last_chunk_at: dict[str, float] = {}
        one_at_a_time = asyncio.Lock()  # the analysis of a batch, or a flush, with its sends

        async def analyse(batch: list[tuple[Any, records.AudioChunk]]) -> None:
            # One trip to the prosody thread per batch; each event is acked once all its
            # hops are handed to the producer.
            async with one_at_a_time:
                results = await loop.run_in_executor(
                    state.prosody_pool, state.prosody_messages, [chunk for _, chunk in batch]
                )
                await hand_over(batch, results)

        async def hand_over(
            batch: list[tuple[Any, records.AudioChunk]],
            results: tuple[list[records.KafkaMessage], list[int | str | None]],
        ) -> None:
            # The batch's hops first (one record per performer), then the acks they allow.
            messages, progress = results
            for message in messages:
                await send(prosody_topic, message)
            now = time.monotonic()
            for (event, chunk), emitted_until_us in zip(batch, progress, strict=True):
                last_chunk_at[chunk.header.performer_id] = now
                if isinstance(emitted_until_us, str):
                    await dead_letter(event, session.topics.audio, emitted_until_us)
                    event.ack()
                    continue
                header = chunk.header
                waiting = unfinished.setdefault(header.performer_id, deque())
                end_us = header.ts_us + header.sample_count * 1_000_000 // SAMPLE_RATE
                waiting.append((end_us, event))
                while waiting and (emitted_until_us is None or waiting[0][0] <= emitted_until_us):
                    waiting.popleft()[1].ack()

        async def flush_idle() -> None:
            while True:
                await asyncio.sleep(PROSODY_IDLE_FLUSH_S / 2)
                async with one_at_a_time:
                    now = time.monotonic()
                    for performer_id, waiting in unfinished.items():
                        if not waiting or now - last_chunk_at[performer_id] < (
                            PROSODY_IDLE_FLUSH_S
                        ):
                            continue
                        messages = await loop.run_in_executor(
                            state.prosody_pool, state.flush_prosody, performer_id
                        )
                        for message in messages:
                            await send(prosody_topic, message)
                        while waiting:
                            waiting.popleft()[1].ack()

        lane: BatchLane[tuple[Any, records.AudioChunk]] = BatchLane(
            "prosody",
            analyse,
            limit=AUDIO_BATCH,
            on_failure=stop_for_restart,
            interval_s=settings.prosody_batch_ms / 1000,
        )

        def flush_failed(task: asyncio.Task[None]) -> None:
            if not task.cancelled() and (exc := task.exception()) is not None:
                stop_for_restart(exc)

        flusher = asyncio.create_task(flush_idle(), name="prosody-idle-flush")
        flusher.add_done_callback(flush_failed)
        audio = decoded_events(stream, records.AudioChunk, session.topics.audio, dead_letter)
        try:
            async for event, chunk in audio:
                await lane.put((event, chunk))
        finally:
            flusher.cancel()
            await lane.close()

    @app.agent(video_topic)
    async def face(stream: faust.StreamT) -> None:
        # One lane per performer: frames of one performer stay in capture order (its
        # landmarker needs increasing timestamps), performers run in parallel in the face
        # worker processes. A frame goes to its worker as soon as it is read, and the lane
        # takes the results in order: with only one frame in flight per performer, a
        # worker idled while the processor's busy event loop got round to sending the next
        # one, and a backlog (after a restart) drained barely faster than real time.
        # Events are acked when their face record is out; faust commits an offset only
        # when everything before it is acked, so a crash never skips a frame.
        Analysis = asyncio.Future[records.KafkaMessage]
        loop = asyncio.get_running_loop()
        max_lag_us = settings.face_max_lag_ms * 1000
        lanes: dict[str, tuple[asyncio.Queue[tuple[Any, Analysis]], asyncio.Task[None]]] = {}
        analysing: dict[str, int] = {}  # per performer: frames sent to a worker, not done

        def analysed(performer_id: str, _: Analysis) -> None:
            analysing[performer_id] -= 1

        async def lane(queue: asyncio.Queue[tuple[Any, Analysis]]) -> None:
            # A lane must outlive any one bad frame: if it died, its performer's queue
            # would fill and hold the whole agent back.
            while True:
                event, analysis = await queue.get()
                reason = ""
                try:
                    message = await analysis
                except FacePoolStopped as exc:
                    # Not acked: the next processor redoes this frame. Closed = stopping.
                    if not state.faces.closed:
                        stop_for_restart(exc)
                    return
                except Exception as exc:
                    reason = str(exc)
                    if not isinstance(exc, FaceAnalysisError):  # mediapipe, a dead worker
                        log.exception("face analysis failed")
                        reason = f"analysis failed: {exc}"
                    message = None
                try:
                    if message is None:
                        await dead_letter(event, session.topics.video, reason)
                    else:
                        await send(face_topic, message)
                except Exception as exc:
                    # Not acked: the offset is not committed past it, and the restart
                    # redoes this frame (at-least-once).
                    log.exception("could not produce a face record or its dead letter")
                    stop_for_restart(exc)
                    return
                event.ack()

        video = decoded_events(stream, records.VideoFrame, session.topics.video, dead_letter)
        try:
            async for event, frame in video:
                performer_id = frame.header.performer_id
                if performer_id not in lanes:
                    queue: asyncio.Queue[tuple[Any, Analysis]] = asyncio.Queue(maxsize=LANE_FRAMES)
                    lanes[performer_id] = (queue, asyncio.create_task(lane(queue)))
                analysis: Analysis
                busy = analysing.get(performer_id, 0) >= FACE_BUSY_FRAMES
                if max_lag_us and (busy or _read_lag_us(event) > max_lag_us):
                    # The processors are behind: this frame waited in Kafka past the lag
                    # budget, or its performer's face worker still has frames queued.
                    # Analysing it would only add lag. Recorded as skipped, in its place in
                    # the lane (every frame gets one record, in order). The rule is the
                    # same for every performer, so an overloaded machine thins all of them
                    # alike, to the rate its workers manage. The lag is the processors'
                    # own (from the record's Kafka timestamp, set when the capture server
                    # produced it): a frame that reached Kafka late is not the processors'
                    # lag, and skipping it would not catch anything up (judged from the
                    # capture instant, a scene whose fork ran ~250 ms behind had every
                    # frame skipped).
                    analysis = loop.create_future()
                    analysis.set_result(records.encode(skipped_face(frame, "late")))
                else:
                    # Submitted now, in read order: each worker runs its calls in order.
                    analysis = asyncio.create_task(state.faces.analyse(frame))
                    analysing[performer_id] = analysing.get(performer_id, 0) + 1
                    analysis.add_done_callback(functools.partial(analysed, performer_id))
                try:
                    # A full lane holds the stream back: backpressure, not an unbounded queue.
                    await lanes[performer_id][0].put((event, analysis))
                except BaseException:
                    analysis.cancel()  # stopping while waiting: not queued, not awaited
                    raise
        finally:
            tasks = [task for _, task in lanes.values()]
            for task in tasks:
                task.cancel()
            # Wait for them: their unacked events stay uncommitted and are redone.
            await asyncio.gather(*tasks, return_exceptions=True)
            # Frames still waiting in the lanes are not acked either; their analyses are
            # dropped (retrieved, so none is reported as never awaited).
            waiting = []
            for queue, _ in lanes.values():
                while not queue.empty():
                    waiting.append(queue.get_nowait()[1])
            for dropped in waiting:
                dropped.cancel()
            await asyncio.gather(*waiting, return_exceptions=True)

    add_aligner(
        app, settings, session, emit=emit, dead_letter=dead_letter, on_failure=stop_for_restart
    )
    member = group_members.MemberNote(settings, topics.processors_group(session.session_id))

    @cast(Any, app).on_partitions_assigned.connect
    async def note_member(sender: Any, assigned: set[Any], **_: Any) -> None:
        # So that a processor started after this one is killed need not wait it out. faust
        # itself reads its aiokafka consumer this way (its driver's on_partitions_assigned).
        try:
            consumer = cast(Any, app.consumer)._thread._ensure_consumer()
        except AttributeError:
            log.warning("cannot note this processor's group member id (faust changed?)")
            return
        member.note(group_members.consumer_member_id(consumer))

    @cast(Any, app).on_before_shutdown.connect
    async def close_processors(sender: Any, **_: Any) -> None:
        state.close()
        # A clean stop leaves no note behind (only a killed processor's stays, for its
        # successor to find dead).
        member.forget()

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
