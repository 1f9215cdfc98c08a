"""Micro-batches for stream agents: what arrives while one batch is handled forms the next.

At 4 performers a session's audio topic carries 200 chunks/s and its prosody topic 400
hops/s. Handled one record at a time, every record paid an executor round trip or an
aligner step of its own, and the event loop (shared with the face lanes and faust's
consumer) could not keep up. A :class:`BatchLane` takes records as they come and hands
them to its handler in arrival order, as many at once as have gathered while the previous
call ran: one record when the stream is quiet (no added latency), bigger batches when it
is busy (less work per record). It holds at most ``limit`` records waiting plus the batch
being handled, so a slow handler holds its stream back instead of filling memory.

A lane can also be paced (``interval_s``): a batch starts no sooner than that after the
previous one, and what arrives meanwhile joins it. The prosody lane is when
``prosody_batch_ms`` is set: its hops then go out as one produce per pacing interval
instead of one per 20 ms audio chunk (the embedded broker's cost of serving a partition
grows with the number of batches stored in it). Off by default: with the embedded broker
the audio already arrives in 100 ms batches.

A handler acks what it finished. When it fails, the records it did not ack stay unacked,
and the consumer (which never commits past an unacked record) cannot commit past them;
they are not read again while the process lives. So the lane reports the failure to
``on_failure``, whose job is to stop the process: its worker starts it again and it reads
from the last commit (at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class BatchLane(Generic[T]):
    """One ordered lane: ``put`` records, ``handler`` gets them batched, in order."""

    def __init__(
        self,
        name: str,
        handler: Callable[[list[T]], Awaitable[None]],
        limit: int,
        on_failure: Callable[[BaseException], None] | None = None,
        interval_s: float = 0.0,
    ):
        if limit < 1:
            raise ValueError("a batch lane must hold at least one record")
        if interval_s < 0:
            raise ValueError("a batch lane's interval cannot be negative")
        self._interval_s = interval_s
        self._last_start = float("-inf")
        self.name = name
        self._handler = handler
        self._limit = limit
        self._on_failure = on_failure
        self._queue: asyncio.Queue[T] = asyncio.Queue(maxsize=limit)
        self._task: asyncio.Task[None] | None = None
        #: Batches handled and records in them (for logs and tests).
        self.batches = 0
        self.records = 0

    async def put(self, item: T) -> None:
        """Queue a record; waits while the lane is full (backpressure)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"batch-lane-{self.name}")
        await self._queue.put(item)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            # Paced: a record that comes soon after the previous batch waits for the rest.
            wait = self._last_start + self._interval_s - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self._last_start = loop.time()
            while len(batch) < self._limit and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._handler(batch)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # close()
                # Something inside the handler was cancelled (an executor shut down).
                self._failed(exc, len(batch))
            except Exception as exc:
                self._failed(exc, len(batch))
            self.batches += 1
            self.records += len(batch)

    def _failed(self, exc: BaseException, size: int) -> None:
        # The lane itself goes on (if it died, its stream would block on put); what the
        # failed batch left unacked is the owner's to handle (module doc).
        log.error("batch lane %s: a batch of %d failed: %r", self.name, size, exc, exc_info=exc)
        if self._on_failure is not None:
            self._on_failure(exc)

    async def close(self) -> None:
        """Stop handling; records still queued are dropped unacked (redone on restart)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
