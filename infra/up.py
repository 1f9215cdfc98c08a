"""``livetag up``: the embedded broker (unless a cluster is configured), the shared topics
and every livetag service, in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable

from infra.broker import EmbeddedBroker
from infra.settings import Settings
from streams import face_model, kafka, topics

log = logging.getLogger(__name__)

Say = Callable[[str], None]


async def _wait_for_stop_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def run_up(settings: Settings, *, say: Say = print) -> None:
    broker: EmbeddedBroker | None = None
    try:
        if settings.uses_embedded_broker:
            broker = EmbeddedBroker.from_settings(settings)
            broker.start()
            settings = settings.model_copy(update={"broker_port": broker.port})
            say(f"embedded broker  {settings.bootstrap_servers}  (log: {broker.log_path})")
        else:
            say(f"Kafka cluster    {settings.bootstrap_servers}")
        async with kafka.admin_client(settings) as admin:
            created = await topics.ensure_shared_topics(admin, settings)
        say(f"shared topics    {', '.join(t.name for t in topics.shared_topics(settings))}"
            + (f"  (created {len(created)})" if created else ""))
        try:
            say(f"face model       {face_model.resolve(settings)}")
        except face_model.FaceModelError as exc:
            say(f"face model       MISSING: {exc}")
        say("livetag is up; press Ctrl-C to stop.")
        await _wait_for_stop_signal()
        say("stopping...")
    finally:
        if broker is not None:
            with contextlib.suppress(Exception):
                broker.stop()
        say("stopped.")
