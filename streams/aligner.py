"""The aligner's faust agents: tags + prosody + face of one session -> ``livetag.labels``.

They live in the session's processor app (streams.processors), next to the agents that
make the features: one consumer group per session, so the worker that owns partition P of
the session's feature topics also owns partition P of ``livetag.tags``: every topic is
keyed by ``session/performer`` with one partition count, and faust assigns co-partitioned
topics together. The join itself is streams.aligner_core; this module feeds it records,
ticks it on a timer (a window goes out once its features and tags had time to arrive) and
produces what it returns.

``livetag.tags`` is shared by all sessions: each session's app reads it and skips other
sessions' keys before decoding. Undecodable records and tags too late to correct anything
go to ``livetag.deadletter`` with the reason (a late tag also stays on ``livetag.tags``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import faust

from infra.settings import Settings
from streams import records, topics
from streams.aligner_core import AlignerConfig, LateTag, SessionAligner
from streams.kafka import event_headers

log = logging.getLogger(__name__)

TICK_S = 0.02  # how often ready windows are looked for: small against the 100 ms windows

DeadLetterSink = Callable[[Any, str, str], Awaitable[None]]
Emit = Callable[[Any, records.AnyRecord], Awaitable[None]]


def config_of(settings: Settings) -> AlignerConfig:
    return AlignerConfig(
        window_us=settings.label_window_ms * 1000,
        tag_wait_us=settings.label_tag_wait_ms * 1000,
        feature_wait_us=settings.label_feature_wait_ms * 1000,
        grace_us=round(settings.label_grace_s * 1e6),
        max_hold_us=settings.tag_max_hold_ms * 1000,
    )


def _now_us() -> int:
    return time.time_ns() // 1000


def add_aligner(
    app: Any,
    settings: Settings,
    session: records.SessionRecord,
    *,
    emit: Emit,
    dead_letter: DeadLetterSink,
) -> SessionAligner:
    """Define the aligner agents of ``session`` on its processor ``app``."""
    aligner = SessionAligner(session.session_id, config_of(settings))
    raw: dict[str, Any] = {"key_type": bytes, "value_type": bytes, "value_serializer": "raw"}
    tags_topic = app.topic(topics.TAGS, **raw)
    prosody_topic = app.topic(session.topics.prosody, **raw)
    face_topic = app.topic(session.topics.face, **raw)
    labels_topic = app.topic(topics.LABELS, **raw)
    key_prefix = f"{session.session_id}/".encode()

    async def publish(windows: list[records.LabelWindow]) -> None:
        for window in windows:
            await emit(labels_topic, window)

    @app.agent(tags_topic, name=f"align-tags-{session.session_id}")
    async def align_tags(stream: faust.StreamT) -> AsyncIterator[None]:
        async for event in stream.events():
            if not (event.key or b"").startswith(key_prefix):
                yield None  # another session's tag
                continue
            try:
                tag = records.decode(records.TagEvent, event.value, event_headers(event.headers))
            except records.RecordError as exc:
                await dead_letter(event, topics.TAGS, str(exc))
                yield None
                continue
            windows: list[records.LabelWindow] = []
            for out in aligner.add_tag(tag, _now_us()):
                if isinstance(out, LateTag):
                    await dead_letter(event, topics.TAGS, out.reason)
                else:
                    windows.append(out)
            await publish(windows)
            yield None

    @app.agent(prosody_topic, name=f"align-prosody-{session.session_id}")
    async def align_prosody(stream: faust.StreamT) -> AsyncIterator[None]:
        async for event in stream.events():
            try:
                frame = records.decode(
                    records.ProsodyFrame, event.value, event_headers(event.headers)
                )
            except records.RecordError as exc:
                await dead_letter(event, session.topics.prosody, str(exc))
                yield None
                continue
            await publish(aligner.add_prosody(frame, _now_us()))
            yield None

    @app.agent(face_topic, name=f"align-face-{session.session_id}")
    async def align_face(stream: faust.StreamT) -> AsyncIterator[None]:
        async for event in stream.events():
            try:
                frame = records.decode(records.FaceFrame, event.value, event_headers(event.headers))
            except records.RecordError as exc:
                await dead_letter(event, session.topics.face, str(exc))
                yield None
                continue
            await publish(aligner.add_face(frame, _now_us()))
            yield None

    @app.timer(interval=TICK_S, name=f"align-tick-{session.session_id}")
    async def align_tick() -> None:
        await publish(aligner.tick(_now_us()))

    return aligner
