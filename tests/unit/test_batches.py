"""BatchLane: order, batching under load, backpressure, surviving a failed batch."""

from __future__ import annotations

import asyncio

import pytest

from streams.kafka.batches import BatchLane


async def test_records_arrive_in_order_batched_while_the_handler_is_busy() -> None:
    seen: list[list[int]] = []
    release, all_seen = asyncio.Event(), asyncio.Event()

    async def handle(batch: list[int]) -> None:
        seen.append(batch)
        if len(seen) == 1:
            await release.wait()  # the first batch is slow: the rest gathers meanwhile
        if sum(map(len, seen)) == 50:
            all_seen.set()

    lane = BatchLane("test", handle, limit=100)
    await lane.put(0)
    await asyncio.sleep(0)  # the lane takes record 0 alone: nothing else had come
    for n in range(1, 50):
        await lane.put(n)
    release.set()
    await asyncio.wait_for(all_seen.wait(), 1)
    await lane.close()
    assert seen[0] == [0]
    assert seen[1] == list(range(1, 50))  # gathered while the first batch ran: one batch
    assert [n for batch in seen for n in batch] == list(range(50))


async def test_a_full_lane_holds_the_producer_back() -> None:
    release, all_handled = asyncio.Event(), asyncio.Event()
    handled: list[int] = []

    async def handle(batch: list[int]) -> None:
        await release.wait()
        handled.extend(batch)
        if len(handled) == 6:
            all_handled.set()

    lane = BatchLane("test", handle, limit=4)
    await lane.put(0)
    await asyncio.sleep(0)  # record 0 is taken into the stuck batch
    for n in range(1, 5):  # these four fill the lane
        await lane.put(n)
    blocked = asyncio.create_task(lane.put(5))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    release.set()
    await asyncio.wait_for(blocked, 1)
    await asyncio.wait_for(all_handled.wait(), 1)
    await lane.close()
    assert handled == list(range(6))


async def test_a_failed_batch_does_not_stop_the_lane() -> None:
    handled: list[int] = []
    last_done = asyncio.Event()

    async def handle(batch: list[int]) -> None:
        if 1 in batch:
            raise RuntimeError("bad record")
        handled.extend(batch)
        if 2 in batch:
            last_done.set()

    lane = BatchLane("test", handle, limit=1)
    for n in range(3):
        await lane.put(n)
    await asyncio.wait_for(last_done.wait(), 1)
    await lane.close()
    assert handled == [0, 2]


def test_a_lane_must_hold_a_record() -> None:
    async def handle(batch: list[int]) -> None:
        return None

    with pytest.raises(ValueError, match="at least one"):
        BatchLane("test", handle, limit=0)


async def test_a_failure_is_reported_to_the_lanes_owner() -> None:
    reported: list[BaseException] = []
    done = asyncio.Event()

    async def handle(batch: list[int]) -> None:
        if batch == [0]:
            raise RuntimeError("produce failed")
        if batch == [1]:
            raise asyncio.CancelledError  # e.g. the executor it waited on was shut down
        done.set()

    lane = BatchLane("test", handle, limit=1, on_failure=reported.append)
    for n in range(3):
        await lane.put(n)
    await asyncio.wait_for(done.wait(), 1)  # the lane went on to record 2
    await lane.close()
    assert [type(exc) for exc in reported] == [RuntimeError, asyncio.CancelledError]


async def test_a_paced_lane_gathers_what_comes_within_its_interval() -> None:
    seen: list[tuple[float, list[int]]] = []
    loop = asyncio.get_running_loop()

    async def handle(batch: list[int]) -> None:
        seen.append((loop.time(), batch))

    lane = BatchLane("test", handle, limit=100, interval_s=0.5)
    await lane.put(0)
    await asyncio.sleep(0.01)  # a quiet lane takes its first record at once
    for n in range(1, 10):  # one every 10 ms, like audio chunks
        await lane.put(n)
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.6)
    await lane.close()
    assert seen[0][1] == [0]
    assert seen[1][1] == list(range(1, 10))  # one batch, not nine
    assert seen[1][0] - seen[0][0] >= 0.5


def test_a_lane_interval_cannot_be_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        BatchLane("test", _nothing, limit=1, interval_s=-1)


async def _nothing(batch: list[int]) -> None:
    pass
