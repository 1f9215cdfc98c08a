"""The background loops a livetag server runs for its whole life (ending the calls of ended
sessions, closing revoked connections, sweeping the connection gate, publishing counters).

Such a loop that dies takes a duty with it while the server looks healthy: revoked links
would stay connected, ended sessions would keep forking. :func:`keep_running` logs the
failure with its traceback, counts it in :data:`RESTARTS` (served with the server's
metrics) and starts the loop again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger(__name__)

#: Restarts of each background loop in this process, by name; never reset.
RESTARTS: Counter[str] = Counter()


async def keep_running(
    loop: Callable[[], Awaitable[None]], name: str, *, restart_after_s: float = 1.0
) -> None:
    """Run ``loop()`` until cancelled; started again ``restart_after_s`` after it fails
    or returns."""
    while True:
        try:
            await loop()
            log.error("background loop %s returned: starting it again", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background loop %s failed: starting it again", name)
        RESTARTS[name] += 1
        await asyncio.sleep(restart_after_s)


def start(loop: Callable[[], Awaitable[None]], name: str) -> asyncio.Task[None]:
    """A task that keeps ``loop`` running (see :func:`keep_running`)."""
    return asyncio.create_task(keep_running(loop, name), name=name)


async def cancel(*tasks: asyncio.Task[Any] | None) -> None:
    """Cancel each task (None: none to cancel) and wait until it has ended, its own
    cleanup done: what a service's stop must do before it closes what the task uses."""
    for task in tasks:
        if task is not None:
            task.cancel()
    for task in tasks:
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task
