"""The published contract: what ``livetag schema`` writes, as pure functions (no I/O).

- One JSON Schema (draft 2020-12) per record type (:data:`records.SCHEMA_MODELS`);
- ``topics.json``: the topic catalogue (name, kind, key, record type, partitions, configs);
- ``asyncapi.json``: an AsyncAPI 3.0.0 document of every topic, with its messages, keys,
  headers and which livetag service sends and receives it.

The files under ``streams/schemas/v<SCHEMA_VERSION>/`` are these, made with livetag's
default settings (:func:`default_settings`); a test keeps them equal to what the code makes.
"""

from __future__ import annotations

import importlib.metadata
import inspect
import json
import re
import typing
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter

from streams import records
from streams.kafka import topics
from streams.settings import Settings

ASYNCAPI_VERSION = "3.0.0"
#: The version of the AsyncAPI Kafka bindings used (channel binding, message binding).
KAFKA_BINDING_VERSION = "0.5.0"
#: Payload and header schemas are pydantic's JSON Schema, draft 2020-12: AsyncAPI 3 names the
#: format of a schema that is not its own dialect in a Multi Format Schema Object.
JSON_SCHEMA_FORMAT = "application/schema+json;version=draft-2020-12"
JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

PUBLISHED_FOLDER = f"schemas/v{records.SCHEMA_VERSION}"  # inside the streams package
TOPICS_FILE = "topics.json"
ASYNCAPI_FILE = "asyncapi.json"
SESSION_PARAMETER = "session_id"
SESSION_ID_EXAMPLE = "20251126-3fa9c1"  # what streams.kafka.sessions.new_session_id makes


def default_settings() -> Settings:
    """livetag's defaults, whatever the environment or a settings file say: the published
    files describe these (4 partitions, the embedded broker on 127.0.0.1:9092, ...)."""
    # model_construct, not Settings(): that would read LIVETAG_* variables and the TOML file.
    return Settings.model_construct()


def package_version() -> str:
    return importlib.metadata.version("livetag")


def dump(document: Any) -> str:
    """How every published file is written: stable, so the published folder can be compared
    byte for byte with what the code makes."""
    return json.dumps(document, indent=2) + "\n"


def published_files(settings: Settings, version: str) -> dict[str, str]:
    """Every file ``livetag schema --out DIR`` writes, by name."""
    files = {
        f"{model.record_type}.schema.json": dump(records.json_schema(model))
        for model in records.SCHEMA_MODELS
    }
    files[TOPICS_FILE] = dump(topic_catalogue(settings))
    files[ASYNCAPI_FILE] = dump(asyncapi_document(settings, version))
    return files


# ---------------------------------------------------------------- keys


def _id_pattern(id_type: Any) -> str:
    """The regular expression of an id type of the records, without its anchors."""
    pattern = TypeAdapter(id_type).json_schema()["pattern"]
    assert isinstance(pattern, str)
    return pattern.removeprefix("^").removesuffix("$")


_SESSION = _id_pattern(records.SessionId)
_PARTICIPANT = _id_pattern(records.ParticipantId)
_TOKEN = _id_pattern(records.TokenId)
_COUNTER_SOURCES = "|".join(typing.get_args(records.CounterSource))


@dataclass(frozen=True)
class TopicKey:
    """The Kafka key of a topic's messages: how topics.json names it, and its schema."""

    name: str
    pattern: str | None
    description: str

    def schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "description": self.description}
        if self.pattern is not None:
            schema["pattern"] = self.pattern
        return schema


_PERFORMER_KEY = TopicKey(
    "session_id/performer_id",
    f"^{_SESSION}/{_PARTICIPANT}$",
    "session_id/performer_id (UTF-8): one performer's records stay in one partition, "
    "the same partition number on every topic keyed this way.",
)
# Keyed otherwise than by performer: each record type's own ``key`` property says how.
_KEYS: dict[type[Any], TopicKey] = {
    records.SessionRecord: TopicKey(
        "session_id", f"^{_SESSION}$", "session_id (UTF-8): the newest record per key counts."
    ),
    records.DeadLetter: TopicKey(
        "source topic", None, "The topic the rejected message was read from (UTF-8)."
    ),
    records.PipelineCounters: TopicKey(
        "session_id/performer_id/source",
        f"^{_SESSION}/{_PARTICIPANT}/({_COUNTER_SOURCES})$",
        "session_id/performer_id/source (UTF-8): one service's counters of one performer; "
        "the newest record per key counts.",
    ),
    records.TokenRevocation: TopicKey(
        "session_id/token/TOKEN_ID or session_id/participant/PARTICIPANT_ID",
        f"^{_SESSION}/(token/{_TOKEN}|participant/{_PARTICIPANT})$",
        "session_id/token/TOKEN_ID or session_id/participant/PARTICIPANT_ID (UTF-8).",
    ),
    records.RaterLag: TopicKey(
        "session_id/rater_id",
        f"^{_SESSION}/{_PARTICIPANT}$",
        "session_id/rater_id (UTF-8): one rater's lag estimate; the newest record per key counts.",
    ),
    records.ScenarioRecord: TopicKey(
        "scenario_id",
        f"^{_id_pattern(records.ScenarioId)}$",
        "scenario_id (UTF-8): the newest record per key is the scenario.",
    ),
    records.CastingDay: TopicKey(
        "day_id", f"^{_SESSION}$", "day_id (UTF-8): the newest record per key is the day."
    ),
    records.LobbyPresence: TopicKey(
        "day_id/performer_id",
        f"^{_SESSION}/{_PARTICIPANT}$",
        "day_id/performer_id (UTF-8): the newest record per key says whether they wait.",
    ),
}


def topic_key(record_type: type[records.AnyRecord]) -> TopicKey:
    if record_type in _KEYS:
        return _KEYS[record_type]
    if issubclass(record_type, records.PerformerRecord) or record_type in (
        records.MEDIA_RECORD_TYPES
    ):
        return _PERFORMER_KEY
    # A new record type with a key of its own must be described above.
    raise ValueError(f"no key described for {record_type.record_type!r}")


# ---------------------------------------------------------------- the topic catalogue


def _catalogue(settings: Settings) -> list[tuple[str, topics.TopicSpec]]:
    return [
        *(("shared", spec) for spec in topics.shared_topics(settings)),
        *(("session", spec) for spec in topics.session_topic_templates(settings)),
    ]


def topic_catalogue(settings: Settings) -> list[dict[str, Any]]:
    """``topics.json``: every topic (per-session ones with ``{session_id}``)."""
    return [
        {
            "topic": spec.name,
            "kind": kind,
            "record_type": spec.record_type.record_type,
            "schema": f"{spec.record_type.record_type}.schema.json",
            "partitions": spec.partitions,
            "configs": spec.configs,
            "key": topic_key(spec.record_type).name,
        }
        for kind, spec in _catalogue(settings)
    ]


# ---------------------------------------------------------------- who sends, who receives


@dataclass(frozen=True)
class Service:
    name: str
    command: str  # the livetag command that runs it


CAPTURE = Service("capture server", "livetag capture")
TAG_SERVICE = Service("tag service", "livetag capture")  # the capture server's tag websocket
PROCESSORS = Service("processors", "livetag worker")  # one process per session
ALIGNER = Service("aligner", "livetag worker")  # agents in the session's processors app
WORKER = Service("worker", "livetag worker")
RECORDER = Service("recorder", "livetag recorder")
DASHBOARD = Service("dashboard", "livetag dashboard")
SESSION_COMMANDS = Service("session commands", "livetag session")
REPLAY = Service("replay", "livetag replay")
TAIL = Service("tail", "livetag tail")
LSL = Service("LSL bridge", "livetag lsl")


@dataclass(frozen=True)
class Use:
    """One service sending to or receiving from a topic: what for, and where in the code."""

    service: Service
    code: tuple[str, ...]
    what: str

    def extension(self) -> dict[str, Any]:
        return {
            "service": self.service.name,
            "command": self.service.command,
            "code": list(self.code),
            "what": self.what,
        }


# Read off the code (producers' sends and consumers' subscriptions of each topic name in
# streams/kafka/topics.py); keyed by record type, as each topic carries exactly one.
SENDERS: dict[type[Any], tuple[Use, ...]] = {
    records.SessionRecord: (
        Use(
            SESSION_COMMANDS,
            ("infra/cli.py", "streams/kafka/sessions.py"),
            "`session create` creates a session's topics, then its record; `session take` "
            "and `session end` publish the director's actions",
        ),
        Use(CAPTURE, ("capture/server.py",), "presence on every join and leave, live once joined"),
        Use(DASHBOARD, ("dashboard/server.py",), "the director's buttons: takes, end"),
        Use(
            DASHBOARD,
            ("dashboard/casting.py", "streams/kafka/sessions.py"),
            "a scene started from a casting day's casting page",
        ),
        Use(
            RECORDER,
            ("streams/archive/recorder.py",),
            "archived, once the session's archive is built",
        ),
        Use(REPLAY, ("streams/archive/replay.py",), "the replayed session, then its end"),
    ),
    records.TagEvent: (
        Use(
            TAG_SERVICE,
            ("taggers/service.py", "taggers/outbox.py"),
            "every rater's tag, acknowledged to the page once the broker has it",
        ),
        Use(
            LSL,
            ("streams/bridges/lsl.py", "taggers/outbox.py"),
            "markers of an external LSL stream (`--marker-inlet`), as a named rater's tags",
        ),
    ),
    records.LabelWindow: (
        Use(ALIGNER, ("streams/labels/aligner.py",), "every label window, and its revisions"),
    ),
    records.DeadLetter: (
        Use(PROCESSORS, ("streams/features/processors.py",), "media records it could not decode"),
        Use(
            ALIGNER,
            ("streams/labels/aligner.py",),
            "feature records and tags it could not decode, tags too late to correct a window",
        ),
        *(
            Use(service, (code, "streams/kafka/sessions.py"), "session records it could not decode")
            for service, code in (
                (CAPTURE, "capture/server.py"),
                (DASHBOARD, "dashboard/server.py"),
                (RECORDER, "streams/archive/recorder.py"),
            )
        ),
        Use(LSL, ("streams/bridges/lsl.py",), "LSL markers whose label is not in the vocabulary"),
    ),
    records.PipelineCounters: (
        Use(CAPTURE, ("capture/server.py",), "what it received and forked, per performer"),
        Use(ALIGNER, ("streams/labels/aligner.py",), "the label windows it made, per performer"),
    ),
    records.TokenRevocation: (
        Use(SESSION_COMMANDS, ("infra/cli.py", "streams/kafka/revocations.py"), "`session revoke`"),
    ),
    records.AudioChunk: (
        Use(CAPTURE, ("capture/fork.py",), "each performer's audio, stamped on the session clock"),
        Use(REPLAY, ("streams/archive/replay.py",), "an archived session's audio, again"),
    ),
    records.VideoFrame: (
        Use(CAPTURE, ("capture/fork.py",), "each performer's video frames at analysis size"),
        Use(REPLAY, ("streams/archive/replay.py",), "an archived session's video, again"),
    ),
    records.ProsodyHops: (
        Use(
            PROCESSORS,
            ("streams/features/processors.py", "streams/features/prosody.py"),
            "10 ms prosody hops",
        ),
    ),
    records.FaceFrame: (
        Use(
            PROCESSORS,
            ("streams/features/processors.py", "streams/features/face.py"),
            "one record per video frame: its face features, or why it was skipped",
        ),
    ),
    records.RatingBatch: (
        Use(
            TAG_SERVICE,
            ("taggers/service.py", "taggers/outbox.py"),
            "every rater's continuous rating in batches, acknowledged once the broker has them",
        ),
    ),
    records.RaterLag: (
        Use(ALIGNER, ("streams/labels/aligner.py",), "each rater's estimated reaction lag"),
    ),
    records.ModelReading: (
        Use(
            PROCESSORS,
            ("streams/features/processors.py", "streams/features/model_rater.py"),
            "the model rater's reading of each label window",
        ),
    ),
    records.Cue: (
        Use(DASHBOARD, ("dashboard/server.py", "dashboard/cues.py"), "the director's cues, sent"),
        Use(CAPTURE, ("capture/server.py", "capture/cues.py"), "each cue again, once shown"),
    ),
    records.Coverage: (
        Use(ALIGNER, ("streams/labels/aligner.py",), "each performer's ledger, every few seconds"),
    ),
    records.ScenarioRecord: (
        Use(
            SESSION_COMMANDS,
            ("infra/cli.py", "streams/kafka/scenarios.py"),
            "`scenarios load` publishes a folder of scenario files",
        ),
        Use(
            DASHBOARD,
            ("dashboard/server.py", "dashboard/scenarios.py"),
            "the director's scenario editor",
        ),
    ),
    records.CastingDay: (
        Use(SESSION_COMMANDS, ("infra/cli.py", "streams/kafka/casting.py"), "`day create`"),
        Use(DASHBOARD, ("dashboard/casting.py",), "the director's matching: each scene played"),
    ),
    records.LobbyPresence: (
        Use(CAPTURE, ("capture/lobby.py",), "who waits in the lobby, with their device check"),
    ),
}

_TAIL = Use(TAIL, ("infra/tail.py",), "prints the records as JSON lines")
_LSL = Use(LSL, ("streams/bridges/lsl.py",), "publishes them as Lab Streaming Layer streams")
RECEIVERS: dict[type[Any], tuple[Use, ...]] = {
    records.SessionRecord: (
        Use(
            CAPTURE,
            ("capture/server.py", "streams/kafka/sessions.py"),
            "which sessions admit joins",
        ),
        Use(
            DASHBOARD, ("dashboard/server.py", "streams/kafka/sessions.py"), "the sessions it shows"
        ),
        Use(
            WORKER,
            ("infra/worker.py",),
            "starts a session's processors when it is created, stops them once it is archived",
        ),
        Use(PROCESSORS, ("streams/features/processors.py",), "the session's topics, at start"),
        Use(
            ALIGNER,
            ("streams/labels/aligner.py",),
            "presence: a performer who left is not waited for",
        ),
        Use(
            RECORDER,
            ("streams/archive/recorder.py",),
            "which sessions to archive, and when they end",
        ),
        Use(
            SESSION_COMMANDS,
            ("infra/cli.py", "streams/kafka/sessions.py"),
            "`session invite`, `session take` and `session end` start from the newest record",
        ),
        Use(REPLAY, ("streams/archive/replay.py",), "the session ids taken, to pick a new one"),
        Use(LSL, ("streams/bridges/lsl.py",), "the roster (an outlet per performer), the end"),
        _TAIL,
    ),
    records.TagEvent: (
        Use(ALIGNER, ("streams/labels/aligner.py",), "joins the tags with the features"),
        Use(RECORDER, ("streams/archive/recorder.py",), "archives them (tags.parquet)"),
        Use(DASHBOARD, ("dashboard/server.py",), "the tag timeline"),
        _LSL,
        _TAIL,
    ),
    records.LabelWindow: (
        Use(
            ALIGNER, ("streams/labels/aligner.py",), "after a restart, the windows it already sent"
        ),
        Use(RECORDER, ("streams/archive/recorder.py",), "archives them (labels.parquet)"),
        Use(DASHBOARD, ("dashboard/server.py",), "consensus and agreement"),
        _LSL,
        _TAIL,
    ),
    records.DeadLetter: (_TAIL,),
    records.PipelineCounters: (
        Use(
            CAPTURE, ("capture/server.py", "streams/kafka/health.py"), "carries on after a restart"
        ),
        Use(
            ALIGNER,
            ("streams/labels/aligner.py", "streams/kafka/health.py"),
            "carries on after a restart",
        ),
        Use(DASHBOARD, ("dashboard/metrics.py",), "the counters it serves on /metrics"),
        _TAIL,
    ),
    records.TokenRevocation: (
        Use(
            CAPTURE,
            ("capture/server.py", "streams/kafka/revocations.py"),
            "refuses revoked links and closes their connections",
        ),
        Use(
            DASHBOARD,
            ("dashboard/server.py", "taggers/credentials.py", "streams/kafka/revocations.py"),
            "refuses revoked links and closes their connections",
        ),
        _TAIL,
    ),
    records.AudioChunk: (
        Use(PROCESSORS, ("streams/features/processors.py",), "prosody analysis"),
        Use(RECORDER, ("streams/archive/recorder.py",), "archives the audio"),
        _TAIL,
    ),
    records.VideoFrame: (
        Use(PROCESSORS, ("streams/features/processors.py",), "face analysis"),
        Use(RECORDER, ("streams/archive/recorder.py",), "archives the video"),
        _TAIL,
    ),
    records.ProsodyHops: (
        Use(ALIGNER, ("streams/labels/aligner.py",), "the prosody summary of each window"),
        Use(RECORDER, ("streams/archive/recorder.py",), "archives them (prosody.parquet)"),
        Use(DASHBOARD, ("dashboard/server.py",), "the pitch and loudness curves"),
        _LSL,
        _TAIL,
    ),
    records.FaceFrame: (
        Use(ALIGNER, ("streams/labels/aligner.py",), "the face summary of each window"),
        Use(RECORDER, ("streams/archive/recorder.py",), "archives them (face.parquet)"),
        Use(DASHBOARD, ("dashboard/server.py",), "face mesh and expression curves"),
        _LSL,
        _TAIL,
    ),
    records.RatingBatch: (
        Use(ALIGNER, ("streams/labels/aligner.py",), "each rater's trace in each window"),
        Use(RECORDER, ("streams/archive/recorder.py",), "archives them (ratings.parquet)"),
        Use(DASHBOARD, ("dashboard/server.py",), "each rater's trace, live, on the timeline"),
        _TAIL,
    ),
    records.RaterLag: (
        Use(DASHBOARD, ("dashboard/server.py",), "each rater's lag and its spread"),
        Use(RECORDER, ("streams/archive/recorder.py",), "archives them (rater_lags.parquet)"),
        _TAIL,
    ),
    records.ModelReading: (
        Use(ALIGNER, ("streams/labels/aligner.py",), "the model lane of each window"),
        Use(RECORDER, ("streams/archive/recorder.py",), "archives them (model.parquet)"),
        _TAIL,
    ),
    records.Cue: (
        Use(
            CAPTURE,
            ("capture/server.py", "capture/cues.py"),
            "shows each cue on its performer's page",
        ),
        Use(ALIGNER, ("streams/labels/aligner.py",), "the intent of each window"),
        Use(RECORDER, ("streams/archive/recorder.py",), "archives them (cues.parquet)"),
        Use(DASHBOARD, ("dashboard/server.py",), "the intent lane and each cue's state"),
        _TAIL,
    ),
    records.Coverage: (
        Use(DASHBOARD, ("dashboard/server.py",), "the coverage matrix and the next cue"),
        Use(DASHBOARD, ("dashboard/casting.py",), "the matcher's coverage across the day"),
        _TAIL,
    ),
    records.ScenarioRecord: (
        Use(
            DASHBOARD,
            ("dashboard/scenarios.py", "streams/kafka/scenarios.py"),
            "the library the editor and the casting page show",
        ),
        Use(SESSION_COMMANDS, ("infra/cli.py",), "`session create --scenario`"),
        _TAIL,
    ),
    records.CastingDay: (
        Use(DASHBOARD, ("dashboard/casting.py",), "the day's roster and scenes"),
        Use(CAPTURE, ("capture/lobby.py",), "who may wait, and which scene each goes to"),
        _TAIL,
    ),
    records.LobbyPresence: (
        Use(DASHBOARD, ("dashboard/casting.py",), "who waits, checked or not"),
        Use(CAPTURE, ("capture/lobby.py",), "after a restart: who waited, and since when"),
        _TAIL,
    ),
}

# What outside livetag reads, for the channel descriptions.
_DOWNSTREAM: dict[type[Any], str] = {
    records.SessionRecord: "Downstream consumers follow it to learn each session's topics.",
    records.LabelWindow: "The labeled stream downstream consumers subscribe to.",
}


# ---------------------------------------------------------------- the AsyncAPI document


def _summary(doc: str | None) -> str:
    """The first paragraph of a docstring, on one line."""
    first = inspect.cleandoc(doc or "").split("\n\n")[0]
    return " ".join(first.split()).replace("``", "`")


def _channel_id(topic: str) -> str:
    """``livetag.media.audio.{session_id}`` -> ``mediaAudio``."""
    words = topic.removeprefix(topics.PREFIX).removesuffix(f".{{{SESSION_PARAMETER}}}")
    first, *rest = words.split(".")
    return first + "".join(word.capitalize() for word in rest)


def _multi_format(schema: dict[str, Any]) -> dict[str, Any]:
    return {"schemaFormat": JSON_SCHEMA_FORMAT, "schema": schema}


def inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A record's JSON Schema with each ``$defs`` entry written out where it is used.

    Inside the AsyncAPI document a schema must not hold refs like ``#/$defs/HeadPose``:
    AsyncAPI tools (the reference parser among them) resolve them against the whole
    document, not against the schema's ``$id``. Written out, the schema means the same
    to every reader. The records' models are trees (no model contains itself)."""
    definitions: dict[str, Any] = schema.get("$defs", {})

    def resolve(node: Any, within: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [resolve(item, within) for item in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if ref is None:
            return {name: resolve(value, within) for name, value in node.items()}
        name = str(ref).removeprefix("#/$defs/")
        if name not in definitions or name in within:
            raise ValueError(f"cannot write out the reference {ref!r}")
        beside = {key: value for key, value in node.items() if key != "$ref"}
        return resolve({**definitions[name], **beside}, within | {name})

    return typing.cast(
        dict[str, Any],
        resolve({key: value for key, value in schema.items() if key != "$defs"}, frozenset()),
    )


def _type_header(record_type: str, *, required: bool) -> dict[str, Any]:
    value = f"{record_type}/{records.SCHEMA_VERSION}"
    note = "" if required else " Decoding accepts a message without it."
    return {
        "type": "string",
        "const": value,
        "description": f"Record type / schema version. Every message livetag sends has it.{note}",
    }


def _json_message(model: type[records.Record], key: TopicKey) -> dict[str, Any]:
    record_type = model.record_type
    return {
        "name": record_type,
        "title": model.__name__,
        "summary": _summary(model.__doc__),
        "contentType": "application/json",
        "headers": _multi_format(
            {
                "$schema": JSON_SCHEMA_DIALECT,
                "type": "object",
                "properties": {records.RECORD_HEADER: _type_header(record_type, required=False)},
            }
        ),
        "payload": {"$ref": f"#/components/schemas/{record_type}"},
        "bindings": {"kafka": {"key": key.schema(), "bindingVersion": KAFKA_BINDING_VERSION}},
    }


def _media_payload(
    media: type[records.AudioChunk] | type[records.VideoFrame],
) -> tuple[str, str, str]:
    """A media record's summary, the content type of its Kafka value, and what that is."""
    if media is records.AudioChunk:
        fields = records.AudioChunkHeader.model_fields
        rate, channels = fields["sample_rate"].default, fields["channels"].default
        sample_format = fields["sample_format"].default
        return (
            "A chunk of one performer's audio: raw PCM, with its header record.",
            "application/octet-stream",
            f"Raw PCM, {sample_format}, {channels} channel(s), {rate} Hz: the header's "
            "sample_count samples, 2 bytes each. Not JSON.",
        )
    encoding = records.VideoFrameHeader.model_fields["encoding"].default
    return (
        "One video frame of one performer: a JPEG image, with its header record.",
        f"image/{encoding}",
        "One JPEG image (width x height in the header). Not JSON.",
    )


def _media_message(
    media: type[records.AudioChunk] | type[records.VideoFrame], key: TopicKey
) -> dict[str, Any]:
    header_model = records.MEDIA_HEADER_TYPES[media.record_type]
    summary, content_type, payload = _media_payload(media)
    return {
        "name": media.record_type,
        "title": media.__name__,
        "summary": summary,
        "description": (
            f"The Kafka value is the raw media; the header record (`{media.record_type}`) is "
            f"JSON in the Kafka header `{records.MEDIA_HEADER}`. {_summary(header_model.__doc__)}"
        ),
        "contentType": content_type,
        "headers": _multi_format(
            {
                "$schema": JSON_SCHEMA_DIALECT,
                "type": "object",
                "required": [records.RECORD_HEADER, records.MEDIA_HEADER],
                "properties": {
                    records.RECORD_HEADER: _type_header(media.record_type, required=True),
                    records.MEDIA_HEADER: {
                        "type": "string",
                        "description": "The header record, as UTF-8 JSON.",
                        "contentMediaType": "application/json",
                        "contentSchema": inlined(records.json_schema(header_model)),
                    },
                },
            }
        ),
        "payload": _multi_format(
            {
                "$schema": JSON_SCHEMA_DIALECT,
                "description": payload,
                "contentMediaType": content_type,
            }
        ),
        "bindings": {"kafka": {"key": key.schema(), "bindingVersion": KAFKA_BINDING_VERSION}},
    }


def _topic_configuration(configs: dict[str, str]) -> dict[str, Any]:
    """Kafka's string configs as the AsyncAPI Kafka binding types them."""
    typed: dict[str, Any] = {}
    for name, value in configs.items():
        if name == "cleanup.policy":
            typed[name] = value.split(",")
        elif re.fullmatch(r"-?\d+", value):
            typed[name] = int(value)
        else:
            typed[name] = value
    return typed


def _servers(settings: Settings) -> dict[str, Any]:
    secure = settings.kafka_security_protocol in ("SSL", "SASL_SSL")
    security: list[dict[str, Any]] = []
    mechanism = settings.kafka_sasl_mechanism
    if settings.kafka_security_protocol.startswith("SASL") and mechanism is not None:
        scheme = {"PLAIN": "plain", "SCRAM-SHA-256": "scramSha256", "SCRAM-SHA-512": "scramSha512"}
        security.append({"type": scheme[mechanism], "description": f"SASL {mechanism}"})
    if secure and settings.kafka_ssl_certfile is not None:
        security.append({"type": "X509", "description": "TLS client certificate"})
    if settings.uses_embedded_broker:
        description = (
            "The embedded broker (tansu) that `livetag up` starts; set kafka_bootstrap to use "
            "a Kafka cluster instead."
        )
    else:
        description = "A Kafka cluster (kafka_bootstrap)."
    hosts = [host.strip() for host in settings.bootstrap_servers.split(",") if host.strip()]
    servers: dict[str, Any] = {}
    for number, host in enumerate(hosts, start=1):
        server: dict[str, Any] = {
            "host": host,
            "protocol": "kafka-secure" if secure else "kafka",
            "description": description,
        }
        if security:
            server["security"] = security
        servers["kafka" if len(hosts) == 1 else f"kafka-{number}"] = server
    return servers


def _operation(
    action: str, channel_id: str, record_type: str, uses: tuple[Use, ...]
) -> dict[str, Any]:
    verb = "Sent" if action == "send" else "Received"
    who = "; ".join(
        f"{use.service.name} (`{use.service.command}`, {', '.join(use.code)}): {use.what}"
        for use in uses
    )
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{channel_id}"},
        "messages": [{"$ref": f"#/channels/{channel_id}/messages/{record_type}"}],
        "summary": f"{verb} by " + ", ".join(dict.fromkeys(u.service.name for u in uses)),
        "description": f"{verb} by: {who}.",
        "x-livetag-services": [use.extension() for use in uses],
    }


_DESCRIPTION = f"""\
Every Kafka topic of livetag (live emotion labeling of performer sessions), its messages and
keys. The application is livetag as a whole: a `send` operation is a topic some livetag
service produces to, a `receive` operation one some livetag service consumes;
`x-livetag-services` names them, with the command that runs each and the code that does it.
Downstream consumers (any Kafka client) read the channels livetag sends to.

Wire format: a JSON record is the Kafka value as UTF-8 JSON. A media record (audio chunk,
video frame) is the raw PCM or JPEG as the value, with its header record as JSON in the
Kafka header `{records.MEDIA_HEADER}`. Every message livetag sends has the header
`{records.RECORD_HEADER}: <record type>/<schema version>` (schema version
{records.SCHEMA_VERSION}, also the `schema_version` field). Every record carries `ts_us`:
the instant the thing happened on the session clock (integer microseconds), never
processing time. livetag is at-least-once: a feature or label record's identity is its key
+ `ts_us`.

Per-session topics are named with the session id in place of `{{{SESSION_PARAMETER}}}`;
they are created with the session and deleted once it is archived (kept under retention
instead when session_topic_retention_days is set).

Payload and header schemas are JSON Schema draft 2020-12 (`$id`
urn:livetag:RECORD_TYPE:VERSION), self-contained: the same schemas are published one per
file beside this document, there with their nested definitions under `$defs`.
"""


def _paragraphs(text: str) -> str:
    """Source-wrapped paragraphs as one line each (CommonMark reads both alike)."""
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in text.split("\n\n"))


def asyncapi_document(settings: Settings, version: str) -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of livetag's topics, for these settings."""
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
    for kind, spec in _catalogue(settings):
        record_class = spec.record_type
        record_type = record_class.record_type
        if record_type in messages:
            raise ValueError(f"{record_type!r} is on two topics: its key may differ")
        key = topic_key(record_class)
        if record_class is records.AudioChunk or record_class is records.VideoFrame:
            messages[record_type] = _media_message(record_class, key)
            summary = _media_payload(record_class)[0]
        else:
            model = typing.cast(type[records.Record], record_class)
            messages[record_type] = _json_message(model, key)
            schemas[record_type] = _multi_format(inlined(records.json_schema(model)))
            summary = _summary(model.__doc__)
        channel_id = _channel_id(spec.name)
        if kind == "shared":
            lifetime = "Shared by every session."
        elif settings.session_topic_retention_days is None:
            lifetime = "One per session: created with the session, deleted once it is archived."
        else:
            lifetime = "One per session: created with the session, then kept under retention."
        channel: dict[str, Any] = {
            "address": spec.name,
            "title": spec.name,
            "summary": spec.description or summary,
            "description": " ".join(
                part
                for part in (lifetime, f"Key: {key.name}.", _DOWNSTREAM.get(record_class))
                if part
            ),
            "messages": {record_type: {"$ref": f"#/components/messages/{record_type}"}},
        }
        if kind == "session":
            channel["parameters"] = {
                SESSION_PARAMETER: {
                    "description": (
                        "The session id: 1-48 of a-z, 0-9 and '-', starting with a letter or "
                        "digit (regular expression in x-livetag-pattern)."
                    ),
                    "examples": [SESSION_ID_EXAMPLE],
                    # AsyncAPI 3.0 parameters have no schema: the rule goes in an extension.
                    "x-livetag-pattern": f"^{_SESSION}$",
                }
            }
        channel["tags"] = [{"name": kind}]
        channel["bindings"] = {
            "kafka": {
                "partitions": spec.partitions,
                "replicas": settings.replication_factor,
                "topicConfiguration": _topic_configuration(
                    topics.creation_configs(spec, settings.replication_factor)
                ),
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        }
        channels[channel_id] = channel
        suffix = channel_id[0].upper() + channel_id[1:]
        for action, table in (("send", SENDERS), ("receive", RECEIVERS)):
            uses = table.get(record_class, ())
            if uses:
                operations[action + suffix] = _operation(action, channel_id, record_type, uses)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "livetag",
            "version": version,
            "description": _paragraphs(_DESCRIPTION),
            "license": {"name": "Apache-2.0"},
            "x-livetag-schema-version": records.SCHEMA_VERSION,
        },
        "defaultContentType": "application/json",
        "servers": _servers(settings),
        "channels": channels,
        "operations": operations,
        "components": {"schemas": schemas, "messages": messages},
    }
