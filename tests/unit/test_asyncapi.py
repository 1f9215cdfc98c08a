"""The AsyncAPI 3.0.0 document of livetag's topics (streams.kafka.contract).

It is checked against the official JSON Schema of AsyncAPI 3.0.0 documents, from the npm
package @asyncapi/specs: `python -m tests.media prepare` fetches it and checks its sha256
(`make pytest` runs that first), and against real records encoded as livetag sends them.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from infra.cli import main
from streams import records
from streams.kafka import contract, topics
from streams.settings import Settings
from tests import media as test_media
from tests.samples import all_records

REPO = Path(__file__).resolve().parents[2]
Document = dict[str, Any]


@pytest.fixture(scope="module")
def asyncapi_validator() -> jsonschema.Draft7Validator:
    try:
        path = test_media.asyncapi_schema(test_media.default_dir())
    except test_media.MediaError as exc:
        pytest.fail(str(exc))
    schema = json.loads(path.read_text())
    assert schema["properties"]["asyncapi"]["const"] == "3.0.0"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(
        schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
    )


def default_document() -> Document:
    return contract.asyncapi_document(contract.default_settings(), contract.package_version())


def cluster_document() -> Document:
    settings = Settings(
        kafka_bootstrap="kafka-a.example:9093,kafka-b.example:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="livetag",
        kafka_sasl_password="secret",
        partitions=12,
        replication_factor=3,
        session_topic_retention_days=7,
    )
    return contract.asyncapi_document(settings, "9.9.9")


def problems(validator: jsonschema.Draft7Validator, document: Document) -> list[str]:
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message[:300]}"
        for error in validator.iter_errors(document)
    ]


def pointer(document: Document, ref: str) -> Any:
    """What a local reference (``#/a/b``) points to in the document."""
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def message_schema(document: Document, message: Document, part: str) -> Document:
    """A message's payload or headers: the JSON Schema in its Multi Format Schema Object."""
    multi_format = message[part]
    if "$ref" in multi_format:
        multi_format = pointer(document, multi_format["$ref"])
    assert multi_format["schemaFormat"] == contract.JSON_SCHEMA_FORMAT
    schema = multi_format["schema"]
    assert isinstance(schema, dict)
    return schema


@pytest.mark.parametrize("make", [default_document, cluster_document])
def test_the_document_is_valid_asyncapi_3(
    asyncapi_validator: jsonschema.Draft7Validator, make: Callable[[], Document]
) -> None:
    document = make()
    assert problems(asyncapi_validator, document) == []
    assert document["asyncapi"] == "3.0.0"


def test_the_document_follows_the_settings() -> None:
    default, cluster = default_document(), cluster_document()
    assert default["info"]["version"] == contract.package_version()
    assert [server["host"] for server in default["servers"].values()] == ["127.0.0.1:9092"]
    assert cluster["servers"] == {
        name: {
            "host": host,
            "protocol": "kafka-secure",
            "description": "A Kafka cluster (kafka_bootstrap).",
            "security": [{"type": "scramSha512", "description": "SASL SCRAM-SHA-512"}],
        }
        for name, host in (
            ("kafka-1", "kafka-a.example:9093"),
            ("kafka-2", "kafka-b.example:9093"),
        )
    }
    audio = cluster["channels"]["mediaAudio"]["bindings"]["kafka"]
    assert audio["partitions"] == 12
    assert audio["replicas"] == 3
    assert audio["topicConfiguration"] == {
        "cleanup.policy": ["delete"],
        "retention.ms": 7 * 24 * 3600 * 1000,
        "min.insync.replicas": 2,
    }
    assert cluster["channels"]["sessions"]["bindings"]["kafka"]["partitions"] == 1


def _without_info(document: Document) -> None:
    del document["info"]


def _asyncapi_2(document: Document) -> None:
    document["asyncapi"] = "2.6.0"


def _publish_action(document: Document) -> None:
    # AsyncAPI 2's word: 3.0 has only send and receive.
    document["operations"]["sendTags"]["action"] = "publish"


def _no_partitions(document: Document) -> None:
    document["channels"]["tags"]["bindings"]["kafka"]["partitions"] = 0


def _cleanup_policy_as_kafka_writes_it(document: Document) -> None:
    document["channels"]["sessions"]["bindings"]["kafka"]["topicConfiguration"][
        "cleanup.policy"
    ] = "compact"


def _unknown_message_field(document: Document) -> None:
    document["components"]["messages"]["tag"]["key"] = "session_id/performer_id"


@pytest.mark.parametrize(
    "breaking",
    [
        _without_info,
        _asyncapi_2,
        _publish_action,
        _no_partitions,
        _cleanup_policy_as_kafka_writes_it,
        _unknown_message_field,
    ],
)
def test_a_broken_document_fails_validation(
    asyncapi_validator: jsonschema.Draft7Validator, breaking: Callable[[Document], None]
) -> None:
    document = copy.deepcopy(default_document())
    breaking(document)
    assert problems(asyncapi_validator, document) != []


def _topic_constants() -> set[str]:
    """Every topic name streams/kafka/topics.py spells out as a constant (SESSIONS, HEALTH, ...)."""
    return {
        value
        for name, value in vars(topics).items()
        if name.isupper()
        and isinstance(value, str)
        and value.startswith(topics.PREFIX)
        and value != topics.PREFIX
    }


def test_every_topic_of_the_code_is_a_channel() -> None:
    settings = contract.default_settings()
    document = default_document()
    addresses = {channel["address"] for channel in document["channels"].values()}
    catalogue = {
        spec.name
        for spec in [*topics.shared_topics(settings), *topics.session_topic_templates(settings)]
    }
    constants = _topic_constants()
    assert {topics.HEALTH, topics.REVOCATIONS, topics.DEADLETTER} <= constants
    assert addresses == catalogue | constants
    # A real session's topics are the per-session channels with the id filled in.
    session_id = "20251126-3fa9c1"
    for stream in topics.SESSION_STREAMS:
        name = topics.session_topic(stream, session_id)
        assert name in {
            address.replace("{" + contract.SESSION_PARAMETER + "}", session_id)
            for address in addresses
        }


def test_each_channel_carries_the_record_type_the_code_reads_from_it() -> None:
    document = default_document()
    for channel in document["channels"].values():
        (record_type,) = channel["messages"]
        topic = channel["address"].replace("{session_id}", "s-1")
        assert topics.record_type_of(topic).record_type == record_type


def test_payload_and_header_schemas_are_valid_self_contained_json_schemas() -> None:
    document = default_document()
    messages = document["components"]["messages"]
    assert set(messages) == {
        spec.record_type.record_type
        for spec in topics.shared_topics(contract.default_settings())
        + topics.session_topic_templates(contract.default_settings())
    }
    for message in messages.values():
        for part in ("payload", "headers"):
            schema = message_schema(document, message, part)
            jsonschema.Draft202012Validator.check_schema(schema)
            # AsyncAPI tools resolve a "$ref" against the whole document: there must be none.
            assert "$ref" not in json.dumps(schema), (message["name"], part)


SAMPLES = [
    *all_records(),
    records.TokenRevocation(ts_us=1, session_id="s-1", token_id="tok_12345678", reason="lost"),
]


@pytest.mark.parametrize("record", SAMPLES, ids=lambda r: type(r).__name__)
def test_real_records_match_their_message(record: records.AnyRecord) -> None:
    document = default_document()
    message = document["components"]["messages"][record.record_type]
    encoded = records.encode(record)

    key_schema = message["bindings"]["kafka"]["key"]
    jsonschema.Draft7Validator(key_schema).validate(encoded.key.decode())
    if "pattern" in key_schema:
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft7Validator(key_schema).validate("Not/A key/at all/!")

    headers = {name: value.decode() for name, value in encoded.headers}
    header_schema = message_schema(document, message, "headers")
    jsonschema.Draft202012Validator(header_schema).validate(headers)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(header_schema).validate(
            {**headers, records.RECORD_HEADER: f"{record.record_type}/2"}
        )

    if isinstance(record, records.AudioChunk | records.VideoFrame):
        # The value is the raw media; the header record travels in a Kafka header.
        assert message["contentType"] != "application/json"
        media_header = header_schema["properties"][records.MEDIA_HEADER]
        header_record = json.loads(headers[records.MEDIA_HEADER])
        jsonschema.Draft202012Validator(media_header["contentSchema"]).validate(header_record)
        assert records.MEDIA_HEADER in header_schema["required"]
    else:
        assert message.get("contentType", document["defaultContentType"]) == "application/json"
        payload_schema = message_schema(document, message, "payload")
        payload = json.loads(encoded.value)
        jsonschema.Draft202012Validator(payload_schema).validate(payload)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.Draft202012Validator(payload_schema).validate({**payload, "ts_us": -1})


@functools.cache
def _session_parameters() -> list[Document]:
    document = default_document()
    return [
        channel["parameters"][contract.SESSION_PARAMETER]
        for channel in document["channels"].values()
        if "parameters" in channel
    ]


def _accepted(session_id: str) -> bool:
    try:
        topics.check_session_id(session_id)
    except ValueError:
        return False
    return True


@given(
    st.one_of(
        st.text(alphabet="az09-_A./", max_size=50),
        st.sampled_from(["s-1", "a" * 48, "a" * 49, "-a", "a-", "Abc", "", "a\n"]),
    )
)
def test_the_session_parameter_follows_the_session_id_rule(session_id: str) -> None:
    parameters = _session_parameters()
    assert len(parameters) == len(topics.SESSION_STREAMS)
    for parameter in parameters:
        matches = re.search(parameter["x-livetag-pattern"], session_id) is not None
        assert matches == _accepted(session_id), session_id
        assert all(_accepted(example) for example in parameter["examples"])


def test_operations_send_and_receive_the_messages_of_their_channel() -> None:
    document = default_document()
    operations = document["operations"]
    for channel_id in document["channels"]:
        suffix = channel_id[0].upper() + channel_id[1:]
        # Every topic has a livetag service writing it and one reading it.
        assert {"send" + suffix, "receive" + suffix} <= set(operations)
    for operation in operations.values():
        channel = pointer(document, operation["channel"]["$ref"])
        for message in operation["messages"]:
            assert pointer(document, message["$ref"]) in channel["messages"].values()
        services = operation["x-livetag-services"]
        assert services
        for service in services:
            assert service["command"].startswith("livetag ")
            for code in service["code"]:
                assert (REPO / code).is_file(), f"{code} (named for {service['service']})"


def test_the_sessions_receivers_include_the_worker_and_tags_come_from_the_tag_service() -> None:
    operations = default_document()["operations"]

    def services(operation: str) -> set[str]:
        return {use["service"] for use in operations[operation]["x-livetag-services"]}

    assert {"worker", "recorder", "capture server", "tail"} <= services("receiveSessions")
    assert services("sendTags") == {"tag service", "LSL bridge"}
    assert services("sendLabels") == {"aligner"}
    assert services("sendMediaVideo") == {"capture server", "replay"}


def test_livetag_schema_asyncapi_prints_or_writes_the_document(tmp_path: Path) -> None:
    runner = CliRunner()
    printed = runner.invoke(main, ["schema", "--asyncapi", "--defaults"])
    assert printed.exit_code == 0, printed.output
    assert printed.output == contract.dump(default_document())
    target = tmp_path / "contract" / "asyncapi.json"
    written = runner.invoke(main, ["schema", "--asyncapi", "--defaults", "--out", str(target)])
    assert written.exit_code == 0, written.output
    assert target.read_text() == printed.output
    refused = runner.invoke(main, ["schema", "--out", "-"])
    assert refused.exit_code != 0
    assert "--asyncapi" in refused.output
