"""Getting acknowledged tags onto ``livetag.tags`` (and continuous rating batches onto
``livetag.ratings``), even while the broker is away.

A tag is acknowledged to its rater only once it is safe: produced to the broker (acks=all),
or, when the broker does not answer within ``tag_produce_timeout_ms``, appended to a spool
file and fsynced. A background task delivers spooled tags when the broker is back and
deletes each spool file once every line in it is produced. Re-delivery can duplicate a tag
on the topic (a produce that timed out may still land); consumers dedupe on ``tag_id``.
Rating batches take the same path, in the same spool, one per line beside the tags (a
line is a tag or a batch by its fields); consumers dedupe them on ``batch_id``.

Each process spools into its own file under ``state_dir/tag-spool`` and holds an exclusive
lock on it, so a restarted service (or another one on the same state folder) delivers what
a dead one left behind without racing a live one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from pathlib import Path
from typing import IO

from aiokafka import AIOKafkaProducer

from streams import records
from streams.kafka import topics
from streams.runtime import background
from streams.runtime.private_files import open_private, private_dir

log = logging.getLogger(__name__)

SPOOL_FOLDER = "tag-spool"

#: What the outbox delivers, and where each goes.
Delivered = records.TagEvent | records.RatingBatch
_TOPICS: dict[type[Delivered], str] = {
    records.TagEvent: topics.TAGS,
    records.RatingBatch: topics.RATINGS,
}


def _name(record: Delivered) -> str:
    if isinstance(record, records.TagEvent):
        return f"tag {record.tag_id}"
    return f"rating batch {record.batch_id}"


def _spooled(line: bytes) -> Delivered:
    """The tag or rating batch of a spool line; ValueError if it is neither."""
    try:
        return records.TagEvent.model_validate_json(line)
    except ValueError:
        return records.RatingBatch.model_validate_json(line)


class TagOutbox:
    """Deliver tags to ``livetag.tags``; hold them durably when the broker is down."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        state_dir: Path,
        *,
        produce_timeout_s: float,
        retry_interval_s: float = 1.0,
    ) -> None:
        self._producer = producer
        self.folder = state_dir / SPOOL_FOLDER
        self.produce_timeout_s = produce_timeout_s
        self.retry_interval_s = retry_interval_s
        self._spool: IO[bytes] | None = None
        self._spool_path: Path | None = None
        self._spooled = 0  # tags in this process's current spool file
        self._files_to_deliver = 0  # spool files found undelivered by the last drain
        self._draining = False  # a swapped-out spool file is being delivered
        self._write_lock = asyncio.Lock()
        self._drainer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.delivered = 0
        self.held = 0

    @property
    def backlog(self) -> bool:
        """Tags are waiting in a spool file (ours or one left by a dead process)."""
        return self._spooled > 0 or self._files_to_deliver > 0 or self._draining

    async def start(self) -> None:
        # Who tagged whom, and when: for the service's user only.
        private_dir(self.folder)
        self._drainer = asyncio.create_task(self._drain_forever(), name="tag-spool-drainer")
        self._wake.set()  # deliver what an earlier run left

    async def stop(self) -> None:
        drainer, self._drainer = self._drainer, None
        await background.cancel(drainer)
        if self._spool is not None:
            self._spool.close()  # the file stays: the next start delivers it
            self._spool = None

    async def deliver(self, tag: Delivered) -> bool:
        """Make the tag (or rating batch) safe. Returns True if it was held in the spool,
        not produced."""
        if self._draining:  # the drainer is taking stock: wait for its answer (ms)
            async with self._write_lock:
                pass
        if not self.backlog:
            try:
                await asyncio.wait_for(self._produce(tag), self.produce_timeout_s)
            except Exception as exc:  # timeout, broker gone, anything: hold it instead
                log.warning("broker did not take %s (%r): holding it", _name(tag), exc)
            else:
                self.delivered += 1
                return False
        # While anything is spooled, new tags queue behind it rather than overtake it.
        await self._hold(tag)
        return True

    async def _produce(self, tag: Delivered) -> None:
        message = records.encode(tag)
        await self._producer.send_and_wait(
            _TOPICS[type(tag)], key=message.key, value=message.value, headers=message.headers
        )

    async def _hold(self, tag: Delivered) -> None:
        line = tag.model_dump_json().encode("utf-8") + b"\n"
        async with self._write_lock:
            if self._spool is None:
                self._spool = await asyncio.to_thread(self._open_spool)
            spool = self._spool
            await asyncio.to_thread(_append_durably, spool, line)
            self._spooled += 1
            self.held += 1
        self._wake.set()

    def _open_spool(self) -> IO[bytes]:
        private_dir(self.folder)
        path = self.folder / f"tags-{os.getpid()}-{time.time_ns()}.jsonl"
        spool = os.fdopen(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab")
        fcntl.flock(spool.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The new file's name must survive a power cut as well as its lines.
        folder = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        self._spool_path = path
        return spool

    def _orphans(self) -> list[Path]:
        """Spool files of this folder no live process holds (their writer died)."""
        orphans = []
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self.folder.glob("tags-*.jsonl")):
                if path == self._spool_path:
                    continue
                with path.open("rb") as handle:
                    try:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
                orphans.append(path)
        return orphans

    async def _drain_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._drain_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("tag spool not delivered yet (%s): retrying", exc)
            if self.backlog:
                await asyncio.sleep(self.retry_interval_s)
                self._wake.set()

    async def _drain_once(self) -> None:
        # Our own file: swap it for a fresh one under the write lock, then deliver the old
        # one; tags arriving meanwhile go to the new file, behind it.
        # Orphans are listed under the write lock too, so a spool file being opened (not
        # yet locked) is never mistaken for one a dead process left.
        async with self._write_lock:
            self._draining = True  # backlog holds while the counts below change hands
            mine = self._spool_path if self._spooled else None
            if mine is not None and self._spool is not None:
                self._spool.close()
                self._spool = None
                self._spool_path = None
                self._spooled = 0
            files = [path for path in await asyncio.to_thread(self._orphans) if path != mine]
            if mine is not None:
                files.append(mine)
            self._files_to_deliver = len(files)
            self._draining = False
        for path in files:
            await self._deliver_file(path)
            self._files_to_deliver -= 1

    async def _deliver_file(self, path: Path) -> None:
        # Locked while delivering, so two services on one state folder never both send it.
        reading = asyncio.ensure_future(asyncio.to_thread(_lock_and_read, path))
        try:
            locked = await asyncio.shield(reading)
        except asyncio.CancelledError:
            # Stopping: the thread still finishes; release what it opened.
            reading.add_done_callback(_close_read)
            raise
        if locked is None:
            return  # another live process holds it: it delivers it
        handle, lines = locked
        try:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    tag = _spooled(line)
                except ValueError:
                    if number == len(lines):
                        # A torn last line (crash mid-write, never acked): nothing to deliver.
                        log.warning("%s: torn last line skipped", path)
                        continue
                    # An acked tag this version cannot read: keep the file for a person.
                    aside = path.with_suffix(".unreadable")
                    await asyncio.to_thread(path.rename, aside)
                    log.error(
                        "%s line %d is neither a tag nor a rating batch: file kept as %s",
                        path,
                        number,
                        aside,
                    )
                    return
                await asyncio.wait_for(self._produce(tag), self.produce_timeout_s)
                self.delivered += 1
            await asyncio.to_thread(path.unlink)
        finally:
            handle.close()
        log.info("delivered %d held tags from %s", len(lines), path.name)


def _close_read(reading: asyncio.Future[tuple[IO[bytes], list[bytes]] | None]) -> None:
    if not reading.cancelled() and reading.exception() is None:
        locked = reading.result()
        if locked is not None:
            locked[0].close()


def _lock_and_read(path: Path) -> tuple[IO[bytes], list[bytes]] | None:
    try:
        handle = path.open("rb")
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle, handle.read().splitlines()


def _append_durably(spool: IO[bytes], line: bytes) -> None:
    spool.write(line)
    spool.flush()
    os.fsync(spool.fileno())
