"""A one-agent faust worker that forwards every record of one topic to another.

Used by the broker benchmark and the faust integration test to measure and check one faust
hop on the configured broker: ``python -m tests.bench.faust_forwarder SOURCE SINK APP_ID``
(bootstrap from the LIVETAG_* settings).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any

import faust

from streams.kafka.clients import make_faust_app
from streams.settings import load_settings


def build(source: str, sink: str, app_id: str) -> Any:
    app = make_faust_app(load_settings(), app_id, broker_session_timeout=10)
    source_topic = app.topic(source, key_type=bytes, value_type=bytes, value_serializer="raw")
    sink_topic = app.topic(sink, key_type=bytes, value_type=bytes, value_serializer="raw")

    @app.agent(source_topic)
    async def forward(stream: faust.StreamT) -> AsyncIterator[None]:
        async for event in stream.events():
            await sink_topic.send(key=event.key, value=event.value, headers=event.headers)
            yield None

    return app


def main() -> None:
    source, sink, app_id = sys.argv[1:4]
    app = build(source, sink, app_id)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
