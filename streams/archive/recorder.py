"""The recorder: a session's topics -> its archive (streams.archive.store), then the topics go.

One :class:`SessionRecorder` per session, in the consumer group ``livetag-recorder-SID``:
start several recorders (``livetag recorder``) and Kafka shares the session's partitions
between them (the archive folder must then be shared too). Messages are kept as they came
and written every ``archive_flush_s`` as one part file per partition, durably, *before* the
offsets are committed: a recorder killed at any moment restarts from the last commit and
rewrites what it had not committed (the archive dedupes by offset), so nothing is lost and
nothing doubled.

When the session has ended, every partition is recorded to its end (by any member of the
group) and nothing new arrived for ``archive_quiet_s`` (the processors and the aligner have
finished the tail), the archive is built once (a file lock decides who builds it), the
session is marked ``archived`` on ``livetag.sessions`` and, once workers had
``archive_release_s`` to let go of it, its topics are deleted (unless the settings keep them
under retention on a real cluster): deleting a topic under a live faust agent would silence
it, and the embedded broker keeps everything in memory until then.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections import defaultdict
from importlib import metadata
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition

from streams import records
from streams.archive import store
from streams.features import expression_model, face_model
from streams.kafka import clients, group_members, topics
from streams.kafka.sessions import SessionDirectory, archived, is_over, publish
from streams.labels.aligner import offset_at_time
from streams.runtime.private_files import open_private, private_dir
from streams.session_clock import now_us
from streams.settings import Settings

log = logging.getLogger(__name__)
#: What an operator follows on livetag up's terminal (streams.runtime.service_logs.MILESTONES).
milestones = logging.getLogger("livetag.session")

SERVICE = "livetag-recorder"
#: Kinds whose topic is shared by every session: only this session's keys are recorded.
SHARED_KINDS = frozenset({"tags", "labels", "ratings", "rater_lags", "cues"})
#: Kinds that, once the label grace has passed, no longer hold up the archive.
UNAWAITED_KINDS = frozenset({"tags", "ratings", "rater_lags", "cues"})
#: Shared kinds read from the session's start by record timestamp (a partition the group
#: has no committed offset of), not from offset 0 through every earlier session's records.
SEEK_BY_TIME_KINDS = frozenset({"cues"})
#: Record timestamps are the producing machine's clock: read from this much earlier.
SEEK_MARGIN_S = 10.0


def software_versions() -> dict[str, str]:
    """What made the archive's features: package versions, and the face model's and the
    default model rater's checksums (readings of another rater carry its own name)."""
    names = (
        "livetag",
        "aiokafka",
        "faust-streaming",
        "mediapipe",
        "ai-edge-litert",
        "av",
        "pyarrow",
        "aiortc",
    )
    versions = {}
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    versions["face_model"] = f"{face_model.SOURCE_PACKAGE}:{face_model.FILE_NAME}"
    versions["face_model_sha256"] = face_model.SHA256
    versions["expression_model"] = (
        f"{expression_model.SOURCE_PACKAGE}:{expression_model.FILE_NAME} ({expression_model.NAME})"
    )
    versions["expression_model_sha256"] = expression_model.SHA256
    return versions


class _Assigned(ConsumerRebalanceListener):
    """Notes the partitions assigned to the recorder (no I/O in the rebalance itself)."""

    def __init__(self, note: set[TopicPartition]) -> None:
        self._note = note

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._note.difference_update(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._note.update(assigned)


class SessionRecorder:
    """Records one session until its archive is built."""

    def __init__(
        self,
        settings: Settings,
        session: records.SessionRecord,
        directory: SessionDirectory,
        producer: AIOKafkaProducer,
    ) -> None:
        self.settings = settings
        self.session_id = session.session_id
        self.folder = store.session_dir(settings, session.session_id)
        self._directory = directory
        self._producer = producer
        names = session.topics
        self.kinds = {
            names.audio: "audio",
            names.video: "video",
            names.prosody: "prosody",
            names.face: "face",
            topics.TAGS: "tags",
            topics.LABELS: "labels",
            topics.RATINGS: "ratings",
            topics.RATERS: "rater_lags",
            topics.CUES: "cues",
        }
        if names.model is not None:  # sessions from before the model lane have none
            self.kinds[names.model] = "model"
        shared = {spec.name: spec.partitions for spec in topics.shared_topics(settings)}
        self._partition_counts = {
            topic: shared.get(topic, settings.partitions) for topic in self.kinds
        }
        self._consumer: AIOKafkaConsumer | None = None
        self._buffers: dict[TopicPartition, list[store.RawMessage]] = defaultdict(list)
        self._positions: dict[TopicPartition, int] = {}  # next offset to commit
        self._last_message = time.monotonic()
        self.parts_written = 0
        self.archived = False
        self._ended_at: float | None = None
        self._stop: asyncio.Event | None = None
        self._since_ms = session.created_ts_us // 1000 - round(SEEK_MARGIN_S * 1000)
        # Partitions of SEEK_BY_TIME_KINDS assigned and not positioned yet.
        self._to_position: set[TopicPartition] = set()

    async def run(self, stop: asyncio.Event) -> None:
        self._stop = stop
        # People's faces and voices: the data folder and each archive are the service
        # user's alone (whatever the umask livetag was started with).
        private_dir(self.settings.data_dir)
        private_dir(self.folder)
        consumer = clients.make_consumer(
            self.settings,
            group_id=topics.recorder_group(self.session_id),
            auto_offset_reset="earliest",
            max_poll_records=2000,
            fetch_max_wait_ms=self.settings.archive_fetch_wait_ms,
        )
        consumer.subscribe(list(self.kinds), listener=_Assigned(self._to_position))
        self._consumer = consumer
        # A recorder killed before us is not waited for (its session timeout).
        await group_members.evict_dead_members(
            self.settings, topics.recorder_group(self.session_id)
        )
        member = group_members.MemberNote(self.settings, topics.recorder_group(self.session_id))
        await consumer.start()
        prefix = f"{self.session_id}/".encode()
        last_flush = last_check = time.monotonic()
        built = False
        try:
            while not stop.is_set():
                batches = await consumer.getmany(timeout_ms=500)
                member.note(group_members.consumer_member_id(consumer))
                unpositioned = await self._position()
                for partition, messages in batches.items():
                    if partition in unpositioned:
                        continue  # fetched from 0 before it was positioned: read again
                    kind = self.kinds[partition.topic]
                    shared = kind in SHARED_KINDS
                    for message in messages:
                        self._positions[partition] = message.offset + 1
                        if shared and not (message.key or b"").startswith(prefix):
                            continue  # another session's record on a shared topic
                        self._buffers[partition].append(
                            store.RawMessage(
                                partition.partition,
                                message.offset,
                                message.key or b"",
                                message.value or b"",
                                [(name, bytes(value)) for name, value in message.headers or ()],
                            )
                        )
                        if not (kind in UNAWAITED_KINDS and self._past_grace()):
                            # A tag or rating past the grace changes no label (the aligner
                            # sets it aside), nor does a lag estimate of it: recorded if
                            # it comes in time, never waited for.
                            self._last_message = time.monotonic()
                now = time.monotonic()
                if now - last_flush >= self.settings.archive_flush_s:
                    await self._flush()
                    last_flush = now
                if now - last_check >= 1.0:
                    last_check = now
                    if await self._ready_to_archive():
                        await self._flush()
                        built = await self._build()
                        break
            else:
                return
        finally:
            if not self.archived:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(10):
                        await self._flush()
            try:
                await consumer.stop()
            finally:
                member.forget()
        # The consumer is gone before the topics are: nothing of ours touches them now.
        await self._release(built)

    async def _position(self) -> set[TopicPartition]:
        """Start the newly assigned partitions of SEEK_BY_TIME_KINDS that the group has no
        committed offset of at the session's start (by record timestamp); the partitions
        moved by this call (what was fetched of them before is read again)."""
        assert self._consumer is not None
        consumer = self._consumer
        positioned: set[TopicPartition] = set()
        while self._to_position:
            partition = self._to_position.pop()
            if self.kinds.get(partition.topic) not in SEEK_BY_TIME_KINDS:
                continue
            if await consumer.committed(partition) is not None:
                continue  # carried on from where the group got to
            offset = await offset_at_time(consumer, partition, self._since_ms)
            consumer.seek(partition, offset)
            positioned.add(partition)
            # Nothing before it is this session's: that far, the partition is recorded.
            self._positions[partition] = offset
        return positioned

    async def _flush(self) -> None:
        """Write each partition's buffered messages as a part, then commit past them."""
        assert self._consumer is not None
        for partition, messages in list(self._buffers.items()):
            if messages:
                kind = self.kinds[partition.topic]
                await asyncio.to_thread(
                    store.write_part, self.folder, kind, partition.partition, list(messages)
                )
                self.parts_written += 1
            self._buffers[partition] = []
        # Only what this member holds now (a rebalance may have moved partitions away: the
        # parts are written, so the new owner re-reading them only costs a dedupe).
        assigned = self._consumer.assignment()
        for partition in [p for p in self._positions if p not in assigned]:
            del self._positions[partition]
        if self._positions:
            try:
                await self._consumer.commit(dict(self._positions))
            except Exception as exc:  # rebalancing: the next flush commits
                log.info("recorder commit deferred (%s)", exc)

    def _grace_s(self) -> float:
        # Late tags (a rater's page re-sending after a reconnect) still correct label windows
        # for label_grace_s: they are waited for before the archive is final.
        return self.settings.label_grace_s + self.settings.label_tag_wait_ms / 1000

    def _past_grace(self) -> bool:
        ended = self._ended_at
        return ended is not None and time.monotonic() - ended >= self._grace_s()

    async def _ready_to_archive(self) -> bool:
        session = self._directory.get(self.session_id)
        if session is None or not is_over(session):
            return False
        if self._ended_at is None:
            self._ended_at = time.monotonic()
        if not self._past_grace():
            return False
        if time.monotonic() - self._last_message < self.settings.archive_quiet_s:
            return False
        assert self._consumer is not None
        partitions = [
            TopicPartition(topic, n)
            for topic, count in self._partition_counts.items()
            for n in range(count)
        ]
        ends = await self._consumer.end_offsets(partitions)
        for partition in partitions:
            # Ours in memory, or what another member of the group committed.
            done = self._positions.get(partition)
            if done is None or done < ends[partition]:
                committed = await self._consumer.committed(partition) or 0
                if max(done or 0, committed) < ends[partition]:
                    return False
        return True

    async def _build(self) -> bool:
        session = self._directory.get(self.session_id)
        assert session is not None
        built = await asyncio.to_thread(self._build_once, session)
        self.archived = True
        return built

    async def _release(self, built: bool) -> None:
        """Mark the session archived, then (after workers let go) delete its topics.

        Also when the archive was built before (by this group, before a crash): marking it
        archived and deleting its topics are idempotent, and a session must not stay ended
        forever because its builder died between the manifest and the mark."""
        if built:
            milestones.info("session %s archived in %s", self.session_id, self.folder)
        session = self._directory.get(self.session_id)
        assert session is not None
        if session.state != "archived":
            await publish(self._producer, archived(session, stamp_us=now_us()))
        if self.settings.session_topic_retention_days is None:
            # Workers stop the session's processors when it is archived: give them time
            # to let go before its topics disappear under them (cut short by a stop: the
            # next start deletes them, as the session is archived but its topics remain).
            if self._stop is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.settings.archive_release_s)
            async with clients.admin_client(self.settings) as admin:
                await topics.delete_session_topics(admin, self.session_id)
            log.info("session %s topics deleted", self.session_id)

    def _build_once(self, session: records.SessionRecord) -> bool:
        lock_path = self.folder / ".archive.lock"
        with os.fdopen(open_private(lock_path, os.O_WRONLY | os.O_CREAT), "w") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                if (self.folder / store.MANIFEST).is_file():
                    return False  # another recorder of the group built it
                store.build_archive(
                    self.folder,
                    session,
                    software=software_versions(),
                    tag_max_hold_us=self.settings.tag_max_hold_ms * 1000,
                )
                return True
            finally:
                # A finished archive keeps no lock file. Removed only once the manifest
                # is durable, still holding the lock: whoever locks after that (this
                # file, or a new one by the same name) finds the manifest and builds
                # nothing. Without a manifest (the build failed) it stays: removing it
                # would let two recorders lock two files and build at once.
                if (self.folder / store.MANIFEST).is_file():
                    lock_path.unlink(missing_ok=True)


class RecorderWorker:
    """Runs a :class:`SessionRecorder` for every session that is not archived yet."""

    def __init__(self, settings: Settings, *, only_sessions: set[str] | None = None) -> None:
        self.settings = settings
        self._only = only_sessions
        self._producer = clients.make_producer(settings)
        self._directory = SessionDirectory(settings, dead_letters=self._producer, service=SERVICE)
        self.recorders: dict[str, tuple[SessionRecorder, asyncio.Task[None]]] = {}
        self._cleaned: set[str] = set()
        self._cleanups: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        await self._producer.start()
        await self._directory.start()
        try:
            while not stop.is_set():
                self._reconcile(stop)
                await self._directory.changed_or_stopped(stop, timeout_s=1.0)
        finally:
            tasks = [task for _, task in self.recorders.values()]
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._directory.stop()
            await self._producer.stop()

    def _reconcile(self, stop: asyncio.Event) -> None:
        for session in self._directory.sessions():
            sid = session.session_id
            if self._only is not None and sid not in self._only:
                continue
            running = self.recorders.get(sid)
            if running is not None and running[1].done():
                recorder, task = running
                if recorder.archived:
                    continue
                error = None if task.cancelled() else task.exception()
                if error is not None:
                    log.error("recorder of session %s failed: %s; restarting", sid, error)
                running = None
            if running is None and session.state != "archived":
                recorder = SessionRecorder(self.settings, session, self._directory, self._producer)
                task = asyncio.create_task(recorder.run(stop), name=f"recorder-{sid}")
                self.recorders[sid] = (recorder, task)
            elif session.state == "archived" and sid not in self._cleaned:
                # Archived, but its recorder stopped before deleting the topics: do it now.
                self._cleaned.add(sid)
                if self.settings.session_topic_retention_days is None:
                    cleanup = asyncio.create_task(self._delete_topics(sid))
                    self._cleanups.add(cleanup)
                    cleanup.add_done_callback(self._cleanups.discard)

    async def _delete_topics(self, session_id: str) -> None:
        try:
            async with clients.admin_client(self.settings) as admin:
                if await topics.delete_session_topics(admin, session_id):
                    log.info("deleted the topics left by archived session %s", session_id)
        except Exception as exc:
            log.warning("could not delete topics of archived session %s: %s", session_id, exc)
