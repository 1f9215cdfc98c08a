"""A server's background loop that fails is logged, counted and started again."""

from __future__ import annotations

import asyncio

import pytest

from streams.runtime import background


async def test_a_failing_loop_is_started_again_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    runs: list[int] = []
    working = asyncio.Event()

    async def watcher() -> None:
        runs.append(len(runs))
        if len(runs) < 3:
            raise RuntimeError("the revocation list went away")
        working.set()
        await asyncio.Event().wait()  # then works for the server's life

    before = background.RESTARTS["test-watcher"]
    task = asyncio.create_task(background.keep_running(watcher, "test-watcher", restart_after_s=0))
    async with asyncio.timeout(5):
        await working.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert runs == [0, 1, 2]
    assert background.RESTARTS["test-watcher"] - before == 2
    failures = [r for r in caplog.records if "test-watcher failed" in r.getMessage()]
    assert len(failures) == 2
    assert failures[0].exc_info is not None  # the traceback says where


async def test_cancel_waits_for_each_task_to_finish_its_cleanup() -> None:
    cleaned: list[str] = []

    async def loop(name: str) -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            await asyncio.sleep(0)  # cleanup that itself awaits
            cleaned.append(name)

    first = asyncio.create_task(loop("first"))
    second = asyncio.create_task(loop("second"))
    await asyncio.sleep(0)
    await background.cancel(first, None, second)
    assert sorted(cleaned) == ["first", "second"]
    assert first.cancelled()
    assert second.cancelled()
    await background.cancel(first)  # an ended task: nothing to do, nothing raised
