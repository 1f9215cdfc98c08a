"""Reading the session health records: undecodable ones are skipped and counted."""

from __future__ import annotations

from dataclasses import dataclass

from streams import records
from streams.kafka.health import decode_counters, newest_counters
from tests.samples import TS_US


@dataclass
class Message:
    value: bytes
    headers: list[tuple[str, bytes]]


def counters(ts_us: int, windows: int) -> records.PipelineCounters:
    return records.PipelineCounters(
        ts_us=ts_us,
        session_id="s-1",
        performer_id="alice",
        source="aligner",
        counters={"windows_emitted": windows},
    )


def test_bad_counters_records_are_skipped_and_counted() -> None:
    good = records.encode(counters(TS_US, 10))
    bad = [
        Message(b"\\xff not json", good.headers),
        Message(b'{"ts_us": 1}', good.headers),
        Message(good.value.replace(b'"aligner"', b'"nobody"'), good.headers),
        Message(good.value.replace(b"10", b"-1"), good.headers),
    ]
    found, undecodable = decode_counters([*bad, Message(good.value, good.headers)])
    assert found == [counters(TS_US, 10)]
    assert undecodable == len(bad)


def test_the_newest_record_per_performer_and_source_counts() -> None:
    newest = newest_counters([counters(TS_US + 5, 12), counters(TS_US, 10)])
    assert newest[("s-1", "alice", "aligner")].counters == {"windows_emitted": 12}
