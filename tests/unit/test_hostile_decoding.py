"""Every decode path against hostile JSON (issue 20): huge numbers, deep nesting, invalid
UTF-8, wrong types, at sizes up to the path's own limit. Each call either returns what the
path returns for valid input or raises exactly the path's own error, with a reason."""

from __future__ import annotations

import csv
import functools
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from capture import signaling
from dashboard.server import MAX_DASHBOARD_MESSAGE_BYTES, ActionError, parse_dashboard_message
from streams import records, strict_json
from streams.archive import export, replay, store
from streams.settings import Settings
from taggers.protocol import ProtocolError, parse_client_message
from tests.samples import all_records

# Each path is tried up to its own limit and just past it: hypothesis draws sizes near the
# limit in about a sixth of its examples, and the explicit cases at the end of this file
# check that the limit itself is accepted and one byte more is refused.
TAG_LIMIT = Settings.model_fields["tag_max_message_bytes"].default
SIGNALING_LIMIT = Settings.model_fields["max_message_bytes"].default
#: A Kafka record's value or media header, and a JSON cell or line of an archive or export.
RECORD_LIMIT = records.MAX_JSON_RECORD_BYTES
MANIFEST_LIMIT = store.MAX_MANIFEST_BYTES
#: A CSV export's cell: Python's csv reader refuses a longer field (its field_size_limit,
#: left at its default), before the cell's own JSON limit is reached.
CSV_CELL_LIMIT = csv.field_size_limit()

# ---------------------------------------------------------------- hostile JSON text

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=30,
)


def _digits(count: int, sign: str, first: str) -> str:
    return sign + first + "7" * (count - 1)


#: Integers around the int64 edge, around Python's 4300-digit limit, and far past it.
huge_ints = st.builds(
    _digits,
    st.one_of(st.integers(19, 21), st.integers(4290, 4310), st.integers(4301, 40_000)),
    st.sampled_from(["", "-"]),
    st.sampled_from(["1", "9"]),
)
int64_edges = st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**19]).map(str)
huge_floats = st.one_of(
    st.builds(lambda whole, part: f"{whole}.{part}", huge_ints, st.integers(0, 10**6)),
    st.builds(
        lambda mantissa, exponent: f"{mantissa}e{exponent}",
        st.sampled_from(["1", "-1", "9.99", "0.5"]),
        st.one_of(st.integers(300, 320), st.integers(10**5, 10**9), st.integers(-400, -300)),
    ),
    st.integers(300, 50_000).map(lambda zeros: "0." + "0" * zeros + "1"),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1E+999", "1.8e308"]),
)


def _nested(depth: int, opener: str, inner: str) -> str:
    if opener == "[":
        return "[" * depth + inner + "]" * depth
    return '{"k":' * depth + inner + "}" * depth


#: Nesting just under and over the limit, around Python's recursion limit, and far past.
deep = st.builds(
    _nested,
    st.one_of(
        st.integers(strict_json.MAX_DEPTH - 3, strict_json.MAX_DEPTH + 3),
        st.integers(990, 1010),
        st.just(100_000),
    ),
    st.sampled_from(["[", "{"]),
    st.sampled_from(["0", "1" * 5000, "[]", '"x"', "1e999"]),
)
oddities = st.sampled_from(
    [
        '"\\ud800"',
        '"a\\udfffb"',
        '"\\ud83d\\ude00"',
        '"\\\\ud800"',
        '{"a":1,"a":2}',
        "",
        " ",
        "[",
        '{"a":',
        "nul",
        "\ufeff{}",
        "1 2",
        '"' + '\\"' * 3000,
    ]
)
fragments = st.one_of(
    huge_ints, int64_edges, huge_floats, deep, oddities, json_values.map(json.dumps)
)
INVALID_UTF8 = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xc3",
    b"\xc0\xaf",
    b"\xe0\x80\xaf",
    b"\xed\xa0\x80",  # an encoded surrogate
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"\xe2\x82",
]
PLACEHOLDER = "@@hostile@@"


def _pad(data: bytes, size: int, inside: bool) -> bytes:
    """``data`` grown to ``size`` bytes: by a long string member if it is an object (so a
    big payload is still one object), else by trailing whitespace."""
    member = b'"pad":"",'
    if inside and data.startswith(b"{") and size >= len(data) + len(member):
        fill = size - len(data) - len(member)
        return b'{"pad":"' + b"x" * fill + b'",' + data[1:]
    return data + b" " * (size - len(data))


@st.composite
def hostile(draw: st.DrawFn, bases: Sequence[dict[str, Any]], limit: int) -> bytes:
    """A hostile payload for a path whose valid inputs look like ``bases``: one of them
    with a hostile value in one member (or hostile JSON alone), maybe invalid UTF-8
    spliced in, maybe grown to a size up to and just past ``limit``."""
    base = draw(st.sampled_from(bases))
    fragment = draw(fragments)
    if draw(st.integers(0, 3)) == 0:
        text = fragment
    else:
        key = draw(st.sampled_from([*sorted(base), "extra"]))
        text = json.dumps({**base, key: PLACEHOLDER}).replace(json.dumps(PLACEHOLDER), fragment)
    data = text.encode()
    if draw(st.integers(0, 3)) == 0:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from(INVALID_UTF8)) + data[at:]
    size = draw(
        st.one_of(
            st.none(),
            st.integers(0, limit + 16),
            st.sampled_from([limit - 1, limit, limit + 1]),
        )
    )
    if size is not None and size > len(data):
        data = _pad(data, size, draw(st.booleans()))
    return data


def outcome(call: Callable[[], Any], error: type[Exception], reason: Callable[[Any], str]) -> Any:
    """What ``call`` returned, or None when it raised exactly ``error`` with a reason; any
    other exception (ValueError, RecursionError, TypeError, ...) fails the test."""
    try:
        return call()
    except error as exc:
        refused = exc
    assert type(refused) is error, f"{type(refused).__name__} raised, not {error.__name__}"
    assert reason(refused), "refused without a reason"
    return None


hostile_settings = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# ---------------------------------------------------------------- the shared reader


@hostile_settings
@given(data=hostile([{"a": 1}], RECORD_LIMIT))
def test_strict_json_returns_json_or_refuses_with_a_reason(data: bytes) -> None:
    value = outcome(
        lambda: strict_json.loads(data, max_bytes=RECORD_LIMIT),
        strict_json.JsonInputError,
        lambda exc: exc.reason,
    )
    if value is not None:
        # What it returns is plain JSON again: finite, int64, unique keys, UTF-8 clean.
        json.dumps(value, allow_nan=False).encode()


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("1" * 5000, "outside the signed 64-bit range"),
        (str(2**63), "outside the signed 64-bit range"),
        ("1e999", "outside the 64-bit float range"),
        ("1" * 5000 + ".5", "outside the 64-bit float range"),
        ("[NaN]", "NaN is not a JSON number"),
        ("[" * 100_000, "nested too deeply"),
        ("[" * 33 + "]" * 33, "nested too deeply"),
        ('{"a":1,"a":2}', "given twice"),
        ('"\\udc00"', "lone surrogate"),
    ],
)
def test_what_json_allows_and_livetag_refuses(text: str, reason: str) -> None:
    with pytest.raises(strict_json.JsonInputError, match=reason):
        strict_json.loads(text)


def test_nesting_up_to_the_limit_and_escaped_pairs_are_fine() -> None:
    depth = strict_json.MAX_DEPTH
    assert strict_json.loads("[" * depth + "]" * depth) is not None
    assert strict_json.loads('"\\ud83d\\ude00 \\\\ud800 [[[["') == "\U0001f600 \\ud800 [[[["
    assert strict_json.loads(str(2**63 - 1)) == 2**63 - 1
    assert strict_json.loads(str(-(2**63))) == -(2**63)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 40 + '"\\' * 500_000,  # an unterminated string full of escaped quotes
        "[" * 40 + '"[' * 500_000,
        '"' + "\\u" * 500_000,
        "[" * 40 + "1" * 1_000_000,
    ],
)
def test_a_megabyte_of_anything_is_refused_in_linear_time(text: str) -> None:
    started = time.perf_counter()
    with pytest.raises(strict_json.JsonInputError):
        strict_json.loads(text)
    assert time.perf_counter() - started < 1.0


def test_a_megabyte_long_number_is_read_in_linear_time() -> None:
    started = time.perf_counter()
    assert strict_json.loads("0." + "1" * 1_000_000) == pytest.approx(1 / 9)
    with pytest.raises(strict_json.JsonInputError, match="signed 64-bit"):
        strict_json.loads("1" * 1_000_000)
    assert time.perf_counter() - started < 1.0


# ---------------------------------------------------------------- Kafka records

SAMPLES = all_records()
JSON_SAMPLES = [r for r in SAMPLES if not isinstance(r, records.AudioChunk | records.VideoFrame)]
MEDIA_SAMPLES = [r for r in SAMPLES if isinstance(r, records.AudioChunk | records.VideoFrame)]


def _value(record: records.AnyRecord) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(records.encode(record).value)
    return document


def _media_header(record: records.AnyRecord) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(
        dict(records.encode(record).headers)[records.MEDIA_HEADER]
    )
    return document


@hostile_settings
@given(
    sample=st.sampled_from(JSON_SAMPLES),
    data=st.data(),
)
def test_kafka_json_records_decode_or_raise_record_errors(
    sample: records.AnyRecord, data: st.DataObject
) -> None:
    value = data.draw(hostile([_value(sample)], RECORD_LIMIT))
    kind = type(sample)
    headers = records.encode(sample).headers
    decoded = outcome(
        lambda: records.decode(kind, value, headers), records.RecordError, lambda e: e.reason
    )
    assert decoded is None or isinstance(decoded, kind)


@hostile_settings
@given(sample=st.sampled_from(MEDIA_SAMPLES), data=st.data())
def test_kafka_media_headers_decode_or_raise_record_errors(
    sample: records.AudioChunk | records.VideoFrame, data: st.DataObject
) -> None:
    header = data.draw(hostile([_media_header(sample)], RECORD_LIMIT))
    message = records.encode(sample)
    headers = [(records.RECORD_HEADER, dict(message.headers)[records.RECORD_HEADER])]
    headers.append((records.MEDIA_HEADER, header))
    decoded = outcome(
        lambda: records.decode(type(sample), message.value, headers),
        records.RecordError,
        lambda e: e.reason,
    )
    assert decoded is None or isinstance(decoded, type(sample))


@hostile_settings
@given(data=hostile([_value(r) for r in JSON_SAMPLES], RECORD_LIMIT))
def test_archive_rows_of_kafka_parts_decode_or_raise_record_errors(data: bytes) -> None:
    # The recorder's parts are raw Kafka messages; the archive build decodes them so.
    for kind in store.KINDS:
        rows = outcome(
            functools.partial(store.decode_rows, kind, data, None),
            records.RecordError,
            lambda e: e.reason,
        )
        assert rows is None or all(isinstance(row, records.Record) for row in rows)


# ---------------------------------------------------------------- websocket messages

TAG_MESSAGES: list[dict[str, Any]] = [
    {"type": "hello", "token": "t" * 40, "reaction_lag_us": 150_000},
    {"type": "clock_reply", "probe_id": 3, "server_send_us": 10, "client_time_us": 12},
    {
        "type": "tag",
        "tag_id": "tag-0001",
        "action": "point",
        "performer_id": "ana",
        "label": "laughter",
        "client_press_us": 1_000_000,
        "span_us": 500_000,
        "frame": {"rtp_timestamp": 90_000},
    },
    {
        "type": "undo",
        "tag_id": "tag-0002",
        "undoes_tag_id": "tag-0001",
        "performer_id": "ana",
        "client_press_us": 1_000_100,
    },
    {"type": "reaction_lag", "samples_us": [200_000, 250_000]},
]


@hostile_settings
@given(data=hostile(TAG_MESSAGES, TAG_LIMIT), as_text=st.booleans())
def test_tag_messages_parse_or_raise_protocol_errors(data: bytes, as_text: bool) -> None:
    # A websocket text frame is a str; invalid UTF-8 reaches it as lone surrogates.
    raw: str | bytes = data.decode("utf-8", "surrogateescape") if as_text else data
    message = outcome(
        lambda: parse_client_message(raw, TAG_LIMIT), ProtocolError, lambda e: e.message
    )
    assert message is None or message.type in {m["type"] for m in TAG_MESSAGES}


SIGNALING_MESSAGES: list[dict[str, Any]] = [
    {"type": "publish", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\n"},
    {"type": "subscribe", "performer_id": "ana", "sdp": "v=0\r\n", "request_id": 7},
    {"type": "clock_reply", "probe_id": 3, "server_send_us": 10, "client_time_us": 12},
]


@hostile_settings
@given(data=hostile(SIGNALING_MESSAGES, SIGNALING_LIMIT), as_text=st.booleans())
def test_signaling_messages_parse_or_raise_signaling_errors(data: bytes, as_text: bool) -> None:
    raw: str | bytes = data.decode("utf-8", "surrogateescape") if as_text else data
    message = outcome(
        lambda: signaling.parse_page_message(raw, max_bytes=SIGNALING_LIMIT),
        signaling.SignalingError,
        lambda e: e.message,
    )
    assert message is None or message.type in {m["type"] for m in SIGNALING_MESSAGES}


@hostile_settings
@given(
    data=hostile([{"type": "take_start"}, {"type": "end_session"}], MAX_DASHBOARD_MESSAGE_BYTES),
    as_text=st.booleans(),
)
def test_dashboard_messages_parse_or_raise_action_errors(data: bytes, as_text: bool) -> None:
    raw: str | bytes = data.decode("utf-8", "surrogateescape") if as_text else data
    message = outcome(lambda: parse_dashboard_message(raw), ActionError, lambda e: e.message)
    assert message is None or isinstance(message["type"], str)


# ---------------------------------------------------------------- archive files


def _manifest() -> dict[str, Any]:
    session = next(r for r in SAMPLES if isinstance(r, records.SessionRecord))
    return {
        "session": session.model_dump(mode="json"),
        "t0_us": session.created_ts_us,
        "performers": {},
        "takes": [],
        "tag_max_hold_us": 30_000_000,
        "counts": {"undecodable": 0},
    }


@hostile_settings
@given(data=hostile([_manifest()], MANIFEST_LIMIT))
def test_archive_manifests_load_or_raise_archive_errors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        (folder / store.MANIFEST).write_bytes(data)
        loaded = outcome(lambda: replay.load_media(folder), store.ArchiveError, lambda e: str(e))
        assert loaded is None or isinstance(loaded[0], records.SessionRecord)
        written = outcome(
            lambda: export.export_session(folder, folder / "out", "eaf"),
            export.ExportError,
            lambda e: str(e),
        )
        assert written is None or all(path.is_file() for path in written)


NESTED_SAMPLES = [
    r for r in SAMPLES if isinstance(r, records.FaceFrame | records.TagEvent | records.LabelWindow)
]


def _nested_columns(model: type[records.Record]) -> list[str]:
    table = store.record_table(model, [])
    return [name for name in table.column_names if table.schema.field(name).type == pa.string()]


@hostile_settings
@given(sample=st.sampled_from(NESTED_SAMPLES), data=st.data())
def test_archive_tables_read_back_or_raise_archive_errors(
    sample: records.Record, data: st.DataObject
) -> None:
    model = type(sample)
    table = store.record_table(model, [sample])
    name = data.draw(st.sampled_from(_nested_columns(model)))
    cell = table.column(name)[0].as_py()
    base = json.loads(cell) if cell and cell.startswith(("{", "[")) else {"value": cell}
    if not isinstance(base, dict):
        base = {"value": base}
    # A Parquet string column holds UTF-8 only: the text, with invalid bytes replaced.
    text = data.draw(hostile([base], RECORD_LIMIT)).decode("utf-8", "replace")
    column = table.schema.get_field_index(name)
    hostile_table = table.set_column(column, name, pa.array([text], pa.string()))
    rows = outcome(lambda: store.table_records(model, hostile_table), store.ArchiveError, str)
    assert rows is None or all(isinstance(row, model) for row in rows)


def test_a_damaged_parquet_file_is_an_archive_error(tmp_path: Path) -> None:
    (tmp_path / "tags.parquet").write_bytes(b"PAR1" + b"\xff" * 100)
    with pytest.raises(store.ArchiveError, match="not a readable Parquet file"):
        store.read_records(tmp_path, "tags")


@hostile_settings
@given(data=hostile([_value(r) for r in NESTED_SAMPLES], RECORD_LIMIT))
def test_jsonl_exports_read_back_or_raise_export_errors(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as temporary:
        path = Path(temporary) / "tags.jsonl"
        path.write_bytes(data + b"\n")
        rows = outcome(lambda: export.read_jsonl(path, "tags"), export.ExportError, str)
        assert rows is None or all(isinstance(row, records.TagEvent) for row in rows)


@hostile_settings
@given(sample=st.sampled_from(NESTED_SAMPLES), data=st.data())
def test_csv_exports_read_back_or_raise_export_errors(
    sample: records.Record, data: st.DataObject
) -> None:
    kind = next(k for k, model in store.KINDS.items() if model is type(sample))
    with tempfile.TemporaryDirectory() as temporary:
        path = Path(temporary) / f"{kind}.csv"
        export._write_csv(path, type(sample), [sample])
        with path.open(encoding="utf-8", newline="") as handle:
            header, row = list(csv.reader(handle))
        column = data.draw(st.integers(0, len(header) - 1))
        hostile_cell = data.draw(hostile([{"value": row[column]}], CSV_CELL_LIMIT))
        with path.open("w", encoding="utf-8", newline="", errors="surrogateescape") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            row[column] = hostile_cell.decode("utf-8", "surrogateescape")
            writer.writerow(row)
        rows = outcome(lambda: export.read_csv(path, kind), export.ExportError, str)
        assert rows is None or all(isinstance(r, type(sample)) for r in rows)


# ---------------------------------------------------------------- each path at its limit
# A valid payload grown with whitespace (still the same JSON) to exactly the path's limit
# is read as it is, one byte more is refused with the path's own error; hostile values in a
# payload of the limit's size are refused as at any size.


def _grown(data: bytes, size: int) -> bytes:
    assert len(data) <= size
    return data + b" " * (size - len(data))


def _deep_and_huge(limit: int) -> list[tuple[bytes, str]]:
    """Hostile documents of exactly ``limit`` bytes, with the reason each is refused for:
    nesting far past the limit, and an integer int() would refuse with a bare ValueError."""
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    return [
        (_grown(deep, limit), "nested too deeply"),
        (_grown(b'{"a":' + b"7" * 5000 + b"}", limit), "outside the signed 64-bit range"),
    ]


def _refused(call: Callable[[], Any], error: type[Exception], reason: str) -> None:
    with pytest.raises(error) as refused:
        call()
    assert type(refused.value) is error
    assert reason in str(refused.value)


SIZE_REFUSED = "more than the"


def test_kafka_records_are_read_up_to_their_limit_and_refused_past_it() -> None:
    session = next(r for r in JSON_SAMPLES if isinstance(r, records.SessionRecord))
    message = records.encode(session)
    at_limit = _grown(message.value, RECORD_LIMIT)
    assert records.decode(records.SessionRecord, at_limit, message.headers) == session
    over = at_limit + b" "
    _refused(
        lambda: records.decode(records.SessionRecord, over, message.headers),
        records.RecordError,
        SIZE_REFUSED,
    )
    for hostile_value, reason in _deep_and_huge(RECORD_LIMIT):
        decode = functools.partial(
            records.decode, records.SessionRecord, hostile_value, message.headers
        )
        _refused(decode, records.RecordError, reason)


def test_kafka_media_headers_are_read_up_to_their_limit_and_refused_past_it() -> None:
    sample = next(r for r in MEDIA_SAMPLES if isinstance(r, records.VideoFrame))
    message = records.encode(sample)
    header = dict(message.headers)[records.MEDIA_HEADER]
    record_type = (records.RECORD_HEADER, dict(message.headers)[records.RECORD_HEADER])

    def decode(media_header: bytes) -> records.VideoFrame:
        headers = [record_type, (records.MEDIA_HEADER, media_header)]
        return records.decode(records.VideoFrame, message.value, headers)

    assert decode(_grown(header, RECORD_LIMIT)) == sample
    _refused(lambda: decode(_grown(header, RECORD_LIMIT + 1)), records.RecordError, SIZE_REFUSED)


def test_archive_rows_of_kafka_parts_are_read_up_to_their_limit_and_refused_past_it() -> None:
    hops = next(r for r in JSON_SAMPLES if isinstance(r, records.ProsodyHops))
    message = records.encode(hops)
    rows = store.decode_rows("prosody", _grown(message.value, RECORD_LIMIT), message.headers)
    assert list(rows) == hops.frames()
    over = _grown(message.value, RECORD_LIMIT + 1)
    _refused(
        lambda: store.decode_rows("prosody", over, message.headers),
        records.RecordError,
        SIZE_REFUSED,
    )


@pytest.mark.parametrize(
    ("parse", "message", "limit", "error"),
    [
        (
            lambda raw: parse_client_message(raw, TAG_LIMIT),
            TAG_MESSAGES[2],
            TAG_LIMIT,
            ProtocolError,
        ),
        (
            lambda raw: signaling.parse_page_message(raw, max_bytes=SIGNALING_LIMIT),
            SIGNALING_MESSAGES[0],
            SIGNALING_LIMIT,
            signaling.SignalingError,
        ),
        (
            parse_dashboard_message,
            {"type": "take_start"},
            MAX_DASHBOARD_MESSAGE_BYTES,
            ActionError,
        ),
    ],
    ids=["tag", "signaling", "dashboard"],
)
def test_websocket_messages_are_read_up_to_their_limit_and_refused_past_it(
    parse: Callable[[str], Any], message: dict[str, Any], limit: int, error: type[Exception]
) -> None:
    # As a browser sends them: text frames.
    text = json.dumps(message)
    assert parse(_grown(text.encode(), limit).decode()) is not None
    with pytest.raises(error):
        parse(_grown(text.encode(), limit + 1).decode())


def test_archive_manifests_are_read_up_to_their_limit_and_refused_past_it(
    tmp_path: Path,
) -> None:
    manifest = json.dumps(_manifest()).encode()
    (tmp_path / store.MANIFEST).write_bytes(_grown(manifest, MANIFEST_LIMIT))
    session, media = replay.load_media(tmp_path)
    assert session.model_dump(mode="json") == _manifest()["session"]
    assert media == []
    (tmp_path / store.MANIFEST).write_bytes(_grown(manifest, MANIFEST_LIMIT + 1))
    _refused(lambda: replay.load_media(tmp_path), store.ArchiveError, SIZE_REFUSED)
    for hostile_manifest, reason in _deep_and_huge(MANIFEST_LIMIT):
        (tmp_path / store.MANIFEST).write_bytes(hostile_manifest)
        _refused(lambda: replay.load_media(tmp_path), store.ArchiveError, reason)


def test_archive_table_cells_are_read_up_to_their_limit_and_refused_past_it() -> None:
    face = next(r for r in NESTED_SAMPLES if isinstance(r, records.FaceFrame))
    table = store.record_table(records.FaceFrame, [face])
    column = table.schema.get_field_index("landmarks")
    cell = table.column("landmarks")[0].as_py().encode()

    def read_with(text: bytes) -> list[records.FaceFrame]:
        cells = pa.array([text.decode()], pa.string())
        return store.table_records(records.FaceFrame, table.set_column(column, "landmarks", cells))

    assert read_with(_grown(cell, RECORD_LIMIT)) == [face]
    _refused(lambda: read_with(_grown(cell, RECORD_LIMIT + 1)), store.ArchiveError, SIZE_REFUSED)


def test_jsonl_export_lines_are_read_up_to_their_limit_and_refused_past_it(
    tmp_path: Path,
) -> None:
    tag = next(r for r in NESTED_SAMPLES if isinstance(r, records.TagEvent))
    path = tmp_path / "tags.jsonl"
    # The limit holds for the line as read, its newline included.
    path.write_bytes(_grown(records.encode(tag).value, RECORD_LIMIT - 1) + b"\n")
    assert export.read_jsonl(path, "tags") == [tag]
    path.write_bytes(_grown(records.encode(tag).value, RECORD_LIMIT) + b"\n")
    _refused(lambda: export.read_jsonl(path, "tags"), export.ExportError, SIZE_REFUSED)


def test_csv_export_cells_are_read_up_to_their_limit_and_refused_past_it(tmp_path: Path) -> None:
    tag = next(r for r in NESTED_SAMPLES if isinstance(r, records.TagEvent))
    path = tmp_path / "tags.csv"
    export._write_csv(path, records.TagEvent, [tag])
    with path.open(encoding="utf-8", newline="") as handle:
        header, row = list(csv.reader(handle))
    column = header.index("timing")  # a JSON cell

    def write_with(cell: str) -> None:
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerow([*row[:column], cell, *row[column + 1 :]])

    write_with(_grown(row[column].encode(), CSV_CELL_LIMIT).decode())
    assert export.read_csv(path, "tags") == [tag]
    write_with(_grown(row[column].encode(), CSV_CELL_LIMIT + 1).decode())
    _refused(lambda: export.read_csv(path, "tags"), export.ExportError, "field larger than")
