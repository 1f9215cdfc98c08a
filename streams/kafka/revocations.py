"""Withdrawn join links: ``livetag.revocations``, written by ``livetag session revoke`` and
followed by every service that admits pages (capture server, tag service, dashboard).

A revocation names one link's token id (and so every credential made from it), or a
participant: then every link of theirs issued up to the revocation is withdrawn, and a
fresh link issued after it works. The list is read whole before a service admits anyone
(a service that cannot read it does not start), then followed: each new revocation wakes
the services' watchers, which close the open connections it covers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from streams import records, session_clock
from streams.kafka import clients, topics
from streams.runtime import background
from streams.settings import Settings

log = logging.getLogger(__name__)

Message = ConsumerRecord[bytes, bytes]
_RETRY_S = 2.0  # the broker away: follow again after this long
_READ_TIMEOUT_S = 30.0  # reading the list at start


@dataclass(frozen=True)
class Holder:
    """What a revocation is checked against: whose link, which one, issued when."""

    session_id: str
    participant_id: str
    token_id: str
    issued_at_us: int


class RevocationList:
    """Every revocation on ``livetag.revocations``, followed live."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._by_token: dict[tuple[str, str], records.TokenRevocation] = {}
        # The newest revocation of each participant: it covers every older one.
        self._by_participant: dict[tuple[str, str], records.TokenRevocation] = {}
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Condition()
        self.version = 0  # moves on every revocation taken in
        self.undecodable = 0

    def revoked(self, holder: Holder) -> records.TokenRevocation | None:
        """The revocation that withdraws this link, or None."""
        by_token = self._by_token.get((holder.session_id, holder.token_id))
        if by_token is not None:
            return by_token
        by_participant = self._by_participant.get((holder.session_id, holder.participant_id))
        # Two machines' clocks meet here (the link's issuer, the revoker's): a link issued
        # on a clock running ahead of the revoker's by more than the time between the two
        # survives. docs/operations.md says so; livetag's own commands run on one machine.
        if by_participant is not None and holder.issued_at_us <= by_participant.ts_us:
            return by_participant
        return None

    def add(self, revocation: records.TokenRevocation) -> None:
        """Take one revocation in (the follower does; tests may too)."""
        if revocation.token_id is not None:
            self._by_token[(revocation.session_id, revocation.token_id)] = revocation
        else:
            assert revocation.participant_id is not None
            identity = (revocation.session_id, revocation.participant_id)
            known = self._by_participant.get(identity)
            if known is None or known.ts_us < revocation.ts_us:
                self._by_participant[identity] = revocation
        self.version += 1

    async def changed(self, seen: int, timeout_s: float) -> int:
        """Return the version once it moved past ``seen``, or after ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s), self._changed:
                await self._changed.wait_for(lambda: self.version > seen)
        return self.version

    async def start(self) -> None:
        """Read every revocation there is, then follow the topic (idempotent)."""
        if self._task is not None:
            return
        consumer = clients.make_consumer(self._settings)
        await consumer.start()
        partition = TopicPartition(topics.REVOCATIONS, 0)
        try:
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            end = (await consumer.end_offsets([partition]))[partition]
            # Whole or not at all: a service that admitted pages before it knew every
            # revocation would let a revoked link in.
            async with asyncio.timeout(_READ_TIMEOUT_S):
                while await consumer.position(partition) < end:
                    await self._take(await consumer.getmany(partition, timeout_ms=1000))
        except TimeoutError:
            await consumer.stop()
            raise RuntimeError(
                f"could not read {topics.REVOCATIONS} to its end within {_READ_TIMEOUT_S:.0f} s"
            ) from None
        except BaseException:
            await consumer.stop()
            raise
        self._task = asyncio.create_task(self._follow(consumer, partition), name="revocations")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await background.cancel(task)

    async def _follow(self, consumer: AIOKafkaConsumer, partition: TopicPartition) -> None:
        try:
            while True:
                try:
                    await self._take(await consumer.getmany(partition, timeout_ms=500))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the broker away: what is known stays in force
                    log.warning("revocations not followed (%s); retrying", exc)
                    await asyncio.sleep(_RETRY_S)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()

    async def _take(
        self, batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
    ) -> None:
        taken = 0
        for messages in batches.values():
            for message in messages:
                try:
                    revocation = records.decode(
                        records.TokenRevocation, message.value, message.headers
                    )
                except records.RecordError as exc:
                    # Someone else's bad record: skipped and counted (revoke validates
                    # what it writes, so livetag's own are never here).
                    self.undecodable += 1
                    log.warning("skipping an undecodable revocation at %s: %s", message.offset, exc)
                    continue
                self.add(revocation)
                taken += 1
        if taken:
            async with self._changed:
                self._changed.notify_all()


def revocation(
    session_id: str,
    *,
    token_id: str | None = None,
    participant_id: str | None = None,
    reason: str = "",
    now_us: int | None = None,
) -> records.TokenRevocation:
    return records.TokenRevocation(
        ts_us=session_clock.now_us() if now_us is None else now_us,
        session_id=session_id,
        token_id=token_id,
        participant_id=participant_id,
        reason=reason,
    )


async def publish(producer: AIOKafkaProducer, revocation: records.TokenRevocation) -> None:
    message = records.encode(revocation)
    await producer.send_and_wait(
        topics.REVOCATIONS, message.value, key=message.key, headers=message.headers
    )
