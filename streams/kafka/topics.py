"""The topic catalogue: every livetag topic name and config lives here, and only here.

Shared topics hold what is small and long-lived. Session topics hold a session's bulk
(media and features): created with the session, deleted once it is archived, because the
embedded broker keeps every byte in memory and ignores retention.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams import records
from streams.errors import RefusedError
from streams.settings import Settings

log = logging.getLogger(__name__)

PREFIX = "livetag."
SESSIONS = "livetag.sessions"
TAGS = "livetag.tags"
LABELS = "livetag.labels"
DEADLETTER = "livetag.deadletter"
HEALTH = "livetag.health"
REVOCATIONS = "livetag.revocations"
RATINGS = "livetag.ratings"
RATERS = "livetag.raters"
CUES = "livetag.cues"
COVERAGE = "livetag.coverage"
SCENARIOS = "livetag.scenarios"
CASTING = "livetag.casting"
LOBBY = "livetag.lobby"

SessionStream = Literal["audio", "video", "prosody", "face", "model"]
SESSION_STREAMS: tuple[SessionStream, ...] = ("audio", "video", "prosody", "face", "model")
_SESSION_TOPIC_FORMATS: dict[SessionStream, str] = {
    "audio": "livetag.media.audio.{session_id}",
    "video": "livetag.media.video.{session_id}",
    "prosody": "livetag.features.prosody.{session_id}",
    "face": "livetag.features.face.{session_id}",
    "model": "livetag.features.model.{session_id}",
}
_SESSION_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,47}$")

DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True)
class TopicSpec:
    name: str
    record_type: type[records.AnyRecord]
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    description: str = ""


def shared_topics(settings: Settings) -> list[TopicSpec]:
    keyed = settings.partitions
    return [
        TopicSpec(
            SESSIONS,
            records.SessionRecord,
            # One partition: the session list is small and read whole, in order.
            1,
            {"cleanup.policy": "compact"},
            "session records keyed by session id; the latest per key is the state",
        ),
        TopicSpec(
            TAGS,
            records.TagEvent,
            keyed,
            {"cleanup.policy": "delete", "retention.ms": "-1"},
            "tag events keyed session/performer (the target), idempotent by tag_id",
        ),
        TopicSpec(
            LABELS,
            records.LabelWindow,
            keyed,
            {"cleanup.policy": "delete", "retention.ms": "-1"},
            "the labeled stream: feature window + active tags per rater",
        ),
        TopicSpec(
            DEADLETTER,
            records.DeadLetter,
            1,
            {"cleanup.policy": "delete", "retention.ms": str(30 * DAY_MS)},
            "what could not be decoded or validated, with the reason",
        ),
        TopicSpec(
            HEALTH,
            records.PipelineCounters,
            # Small and read whole by the exporters: the newest record per key counts.
            1,
            {"cleanup.policy": "compact"},
            "each service's cumulative counters per performer, keyed session/performer/source",
        ),
        TopicSpec(
            REVOCATIONS,
            records.TokenRevocation,
            # Tiny and read whole by every service at start, then followed.
            1,
            {"cleanup.policy": "compact"},
            "withdrawn join links, keyed session/token/ID or session/participant/ID",
        ),
        TopicSpec(
            RATINGS,
            records.RatingBatch,
            keyed,
            {"cleanup.policy": "delete", "retention.ms": "-1"},
            "continuous ratings in batches keyed session/performer (the target), "
            "idempotent by batch_id",
        ),
        TopicSpec(
            RATERS,
            records.RaterLag,
            # Small and read whole: the newest estimate per rater counts.
            1,
            {"cleanup.policy": "compact"},
            "each rater's reaction lag as the aligner estimates it, keyed session/rater",
        ),
        TopicSpec(
            CUES,
            records.Cue,
            keyed,
            {"cleanup.policy": "delete", "retention.ms": "-1"},
            "the director's cues keyed session/performer (who sees it): sent, then shown",
        ),
        TopicSpec(
            COVERAGE,
            records.Coverage,
            # Small and read whole: the newest ledger per performer counts.
            1,
            {"cleanup.policy": "compact"},
            "each performer's ledger so far per emotion, keyed session/performer",
        ),
        TopicSpec(
            SCENARIOS,
            records.ScenarioRecord,
            1,
            {"cleanup.policy": "compact"},
            "the scenario library keyed by scenario id; the latest per key is the scenario",
        ),
        TopicSpec(
            CASTING,
            records.CastingDay,
            1,
            {"cleanup.policy": "compact"},
            "casting days keyed by day id: roster, vocabulary, the scenes played",
        ),
        TopicSpec(
            LOBBY,
            records.LobbyPresence,
            1,
            {"cleanup.policy": "compact"},
            "who of a casting day waits in the lobby, with their device check, keyed day/performer",
        ),
    ]


def processors_group(session_id: str) -> str:
    """The consumer group of a session's processors (one faust app per session; the
    dashboard reads its offsets to show the processors' lag)."""
    return f"livetag-processors-{session_id}"


def recorder_group(session_id: str) -> str:
    """The consumer group of a session's recorders."""
    return f"livetag-recorder-{session_id}"


def check_session_id(session_id: str) -> str:
    if not _SESSION_ID.match(session_id):
        raise ValueError(
            f"invalid session id {session_id!r}: use 1-48 of a-z, 0-9 and '-', "
            "starting with a letter or digit"
        )
    return session_id


def session_topic(stream: SessionStream, session_id: str) -> str:
    return _SESSION_TOPIC_FORMATS[stream].format(session_id=check_session_id(session_id))


def session_topic_names(session_id: str) -> records.SessionTopics:
    return records.SessionTopics(
        **{stream: session_topic(stream, session_id) for stream in SESSION_STREAMS}
    )


_SESSION_RECORD_TYPES: dict[SessionStream, type[records.AnyRecord]] = {
    "audio": records.AudioChunk,
    "video": records.VideoFrame,
    "prosody": records.ProsodyHops,
    "face": records.FaceFrame,
    "model": records.ModelReading,
}


def session_topics(settings: Settings, session_id: str) -> list[TopicSpec]:
    check_session_id(session_id)
    return _session_specs(settings, session_id)


def session_topic_templates(settings: Settings) -> list[TopicSpec]:
    """The per-session topic set with ``{session_id}`` in place of the id, for docs."""
    return _session_specs(settings, "{session_id}")


def _session_specs(settings: Settings, session_id: str) -> list[TopicSpec]:
    configs = {"cleanup.policy": "delete"}
    if settings.session_topic_retention_days is not None:
        configs["retention.ms"] = str(int(settings.session_topic_retention_days * DAY_MS))
    return [
        TopicSpec(
            _SESSION_TOPIC_FORMATS[stream].format(session_id=session_id),
            _SESSION_RECORD_TYPES[stream],
            settings.partitions,
            dict(configs),
        )
        for stream in SESSION_STREAMS
    ]


def record_type_of(topic: str) -> type[records.AnyRecord]:
    """The record type a topic carries; raises ValueError for a non-livetag topic."""
    shared: dict[str, type[records.AnyRecord]] = {
        SESSIONS: records.SessionRecord,
        TAGS: records.TagEvent,
        LABELS: records.LabelWindow,
        DEADLETTER: records.DeadLetter,
        HEALTH: records.PipelineCounters,
        REVOCATIONS: records.TokenRevocation,
        RATINGS: records.RatingBatch,
        RATERS: records.RaterLag,
        CUES: records.Cue,
        COVERAGE: records.Coverage,
        SCENARIOS: records.ScenarioRecord,
        CASTING: records.CastingDay,
        LOBBY: records.LobbyPresence,
    }
    if topic in shared:
        return shared[topic]
    for stream, pattern in _SESSION_TOPIC_FORMATS.items():
        prefix = pattern.removesuffix("{session_id}")
        if topic.startswith(prefix) and _SESSION_ID.match(topic.removeprefix(prefix)):
            return _SESSION_RECORD_TYPES[stream]
    raise ValueError(f"{topic!r} is not a livetag topic")


def resolve_topic(name: str, session_id: str | None = None) -> str:
    """Accept a full topic name, or a short one: sessions, tags, labels, deadletter,
    health, revocations, ratings, raters, cues, coverage, scenarios, casting, lobby, or
    audio/video/prosody/face/model together with a session id."""
    short_shared = {
        "sessions": SESSIONS,
        "tags": TAGS,
        "labels": LABELS,
        "deadletter": DEADLETTER,
        "health": HEALTH,
        "revocations": REVOCATIONS,
        "ratings": RATINGS,
        "raters": RATERS,
        "cues": CUES,
        "coverage": COVERAGE,
        "scenarios": SCENARIOS,
        "casting": CASTING,
        "lobby": LOBBY,
    }
    if name in short_shared:
        return short_shared[name]
    if name in _SESSION_TOPIC_FORMATS:
        if session_id is None:
            raise ValueError(f"topic {name!r} is per session: give the session id")
        return session_topic(name, session_id)
    record_type_of(name)
    return name


# ---------------------------------------------------------------- administration


_TOPIC_ALREADY_EXISTS = 36
_UNKNOWN_TOPIC = 3


class TopicAdminError(RefusedError, RuntimeError):
    """The broker refused to create or delete a topic; the message has its reason."""


def min_insync_replicas(replication_factor: int) -> int:
    """Replicas that must hold a record before the broker acknowledges it (producers send
    with acks=all): one fewer than the replicas, at least one. With 3 replicas a record is
    acknowledged once 2 hold it: one broker may be down and writes go on, and no
    acknowledged record lives on one broker only."""
    return max(1, replication_factor - 1)


def creation_configs(spec: TopicSpec, replication_factor: int) -> dict[str, str]:
    """The configs a topic is created with: its own, plus ``min.insync.replicas`` for the
    replication factor (without it a cluster's default of 1 acknowledges a record that one
    broker holds, and a crash of that broker loses it; the embedded broker ignores it)."""
    return {
        **spec.configs,
        "min.insync.replicas": str(min_insync_replicas(replication_factor)),
    }


async def _create(admin: AIOKafkaAdminClient, specs: Iterable[TopicSpec], rf: int) -> list[str]:
    """Create the topics that do not exist yet; returns the names it created."""
    existing = set(await admin.list_topics())
    missing = [spec for spec in specs if spec.name not in existing]
    if not missing:
        return []
    response = await admin.create_topics(
        [
            NewTopic(spec.name, spec.partitions, rf, topic_configs=creation_configs(spec, rf))
            for spec in missing
        ]
    )
    created: list[str] = []
    failures: list[str] = []
    # aiokafka reports per-topic errors in the response instead of raising.
    for name, code, message in response.topic_errors:
        if code == 0:
            created.append(name)
        elif code == _TOPIC_ALREADY_EXISTS:
            log.debug("topic %s appeared concurrently", name)
        else:
            failures.append(f"{name}: error {code} {message or ''}".strip())
    if failures:
        raise TopicAdminError("could not create topics: " + "; ".join(failures))
    return created


async def ensure_shared_topics(admin: AIOKafkaAdminClient, settings: Settings) -> list[str]:
    """Create the shared topics that are missing; safe to call at every start."""
    return await _create(admin, shared_topics(settings), settings.replication_factor)


async def create_session_topics(
    admin: AIOKafkaAdminClient, settings: Settings, session_id: str
) -> records.SessionTopics:
    await _create(admin, session_topics(settings, session_id), settings.replication_factor)
    return session_topic_names(session_id)


async def delete_session_topics(admin: AIOKafkaAdminClient, session_id: str) -> list[str]:
    """Delete a session's topics (frees the embedded broker's memory); returns what went."""
    wanted = {session_topic(stream, session_id) for stream in SESSION_STREAMS}
    present = sorted(wanted & set(await admin.list_topics()))
    if not present:
        return []
    response = await admin.delete_topics(present)
    deleted, failures = [], []
    for name, code, *_ in response.topic_error_codes:
        if code in (0, _UNKNOWN_TOPIC):  # gone, or deleted concurrently
            deleted.append(name)
        else:
            failures.append(f"{name}: error {code}")
    if failures:
        raise TopicAdminError("could not delete topics: " + "; ".join(failures))
    return sorted(deleted)


async def list_livetag_topics(admin: AIOKafkaAdminClient) -> list[str]:
    return sorted(name for name in await admin.list_topics() if name.startswith(PREFIX))
