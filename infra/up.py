"""``livetag up``: the embedded broker (unless a cluster is configured), the shared topics
and every livetag service, in the foreground until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator

from infra.broker import EmbeddedBroker
from infra.settings import Settings
from streams import face_model, kafka, topics

log = logging.getLogger(__name__)

Say = Callable[[str], None]


@contextlib.contextmanager
def _stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        yield
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def run_up(settings: Settings, *, say: Say = print) -> None:
    stop = asyncio.Event()
    broker: EmbeddedBroker | None = None
    # Handlers first: a Ctrl-C while starting still stops what was started, in order.
    with _stop_on_signals(stop):
        try:
            if settings.uses_embedded_broker:
                broker = EmbeddedBroker.from_settings(settings)
                broker.start()
                settings = settings.model_copy(update={"broker_port": broker.port})
                say(f"embedded broker  {settings.bootstrap_servers}  (log: {broker.log_path})")
            else:
                say(f"Kafka cluster    {settings.bootstrap_servers}")
            if not stop.is_set():
                async with kafka.admin_client(settings) as admin:
                    created = await topics.ensure_shared_topics(admin, settings)
                names = ", ".join(spec.name for spec in topics.shared_topics(settings))
                say(
                    f"shared topics    {names}" + (f"  (created {len(created)})" if created else "")
                )
                try:
                    say(f"face model       {face_model.resolve(settings)}")
                except face_model.FaceModelError as exc:
                    say(f"face model       MISSING: {exc}")
                say("livetag is up; press Ctrl-C to stop.")
            await stop.wait()
            say("stopping...")
        finally:
            if broker is not None:
                broker.stop()
            say("stopped.")
