"""The aligner's ledger agents without a broker: cues into the windows' intent (acks, late
cues dead-lettered), the coverage published when it changed, and rebuilt after an
assignment before it is published again (streams.labels.aligner)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from typing import Any

import pytest

from streams import records
from streams.kafka import health, topics
from streams.labels import aligner as aligner_module
from streams.labels.aligner import AlignerStep, CounterPublisher, CoveragePublisher, CueAgent
from streams.labels.aligner_core import SessionAligner
from streams.settings import Settings
from tests.unit.test_aligner_agents import (
    LABELS,
    PROSODY_ONLY,
    SID,
    T0,
    TAG_WAIT,
    Clock,
    FakeEvent,
    Journal,
    W,
    emitted_windows,
    feeding,
    hops,
    recorder,
    session,
)
from tests.unit.test_ledger import cue

COVERAGE = "coverage-topic"
HEALTH = "health-topic"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def cue_event(journal: Journal, name: str, given: records.Cue) -> FakeEvent:
    encoded = records.encode(given)
    event = FakeEvent(journal, name, key=encoded.key, value=encoded.value)
    event.headers = encoded.headers
    return event


def observed(window: records.LabelWindow, *labels: str) -> records.LabelWindow:
    """The window with two observers holding these labels (agreeing if one label)."""
    raters = [
        records.RaterLabels(
            rater_id=rater,
            rater_role="observer",
            labels=[
                records.ActiveLabel(label=label, intensity="normal", tag_id=f"tag-{rater}-{label}")
            ],
        )
        for rater, label in zip(("o1", "o2"), labels * 2, strict=False)
    ]
    agreed = len(set(labels)) == 1
    return window.model_copy(
        update={
            "raters": raters,
            "consensus": labels[0] if agreed else None,
            "consensus_agreement": 1.0 if agreed else None,
        }
    )


async def wait_rebuilt(publisher: CoveragePublisher) -> None:
    """Until the rebuild (read, then counted in a thread) is merged."""
    async with asyncio.timeout(10):
        while publisher.rebuilding:  # noqa: ASYNC110 (a flag another task sets)
            await asyncio.sleep(0.01)


def coverages(journal: Journal) -> list[records.Coverage]:
    return [entry[2] for entry in journal if entry[0] == "emit" and entry[1] == COVERAGE]


async def test_cues_give_the_windows_intent_and_are_acked_once_one_is_out(clock: Clock) -> None:
    journal: Journal = []
    emit, dead_letter = recorder(journal)
    aligner = SessionAligner(SID, PROSODY_ONLY)
    step = AlignerStep(aligner, emit, LABELS)
    agent = CueAgent(SID, step, dead_letter)
    await agent.take(FakeEvent(journal, "other", key=b"s-10/alice", value=b"not read"))
    await agent.take(FakeEvent(journal, "garbage", value=b"{}"))
    assert journal[0] == ("ack", "other")
    assert journal[1][:3] == ("dead_letter", "garbage", topics.CUES)
    assert journal[2] == ("ack", "garbage")
    journal.clear()

    sent = cue("cue-00000001", T0 + 2 * W)
    await agent.take(cue_event(journal, "sent", sent))
    assert journal == [], "held until a window under it went out"
    clock.now_us = T0 + 5 * W + TAG_WAIT
    await step.run(feeding(aligner, hops(T0, T0 + 5 * W)))
    await step.tick()
    assert ("ack", "sent") in journal
    windows = [e[2] for e in journal if e[0] == "emit"]
    assert [w.intent.label if w.intent else None for w in windows] == [
        None,
        None,
        "laughter",
        "laughter",
    ]
    # The shown record revises the windows it moves, at once.
    journal.clear()
    await agent.take(
        cue_event(journal, "shown", cue("cue-00000001", T0 + 2 * W, shown_us=T0 + 3 * W))
    )
    assert emitted_windows(journal) == [2, 3]
    counts, _, _ = aligner.performer_counters()["alice"]
    assert counts["cues"] == 2


async def test_a_cue_too_late_for_any_window_is_dead_lettered_and_counted(clock: Clock) -> None:
    journal: Journal = []
    emit, dead_letter = recorder(journal)
    aligner = SessionAligner(SID, replace(PROSODY_ONLY, grace_us=1_000_000))
    step = AlignerStep(aligner, emit, LABELS)
    await step.run(feeding(aligner, hops(T0, T0 + 40 * W)))
    clock.now_us = T0 + 40 * W + TAG_WAIT
    await step.tick()
    agent = CueAgent(SID, step, dead_letter)
    await agent.take(cue_event(journal, "clear", cue("cue-00000002", T0 + 5 * W, "clear")))
    await agent.take(cue_event(journal, "late", cue("cue-00000001", T0 + 2 * W)))
    [letter] = [entry for entry in journal if entry[0] == "dead_letter"]
    assert letter[1:3] == ("late", topics.CUES)
    assert "before now" in letter[3]
    assert ("ack", "late") in journal
    counts, _, _ = aligner.performer_counters()["alice"]
    assert counts["late_cues"] == 1


async def test_coverage_goes_out_when_it_changed(clock: Clock) -> None:
    journal: Journal = []
    emit, _ = recorder(journal)
    aligner = SessionAligner(SID, PROSODY_ONLY)
    step = AlignerStep(aligner, emit, LABELS)
    publisher = CoveragePublisher(Settings(), session(), step, emit, COVERAGE)
    aligner.add_cue(cue("cue-00000001", T0), T0)
    clock.now_us = T0 + 5 * W + TAG_WAIT
    await step.run(feeding(aligner, hops(T0, T0 + 5 * W)))
    await publisher.publish()
    await publisher.publish()
    [first] = coverages(journal)
    assert first.performer_id == "alice"
    assert first.windows == 4
    assert first.cells["laughter"].intended_s == 0.4
    assert first.confusion == {"laughter": {"(none)": 4}}
    assert first.ts_us == T0 + 4 * W


async def test_coverage_is_rebuilt_from_the_windows_before_it_goes_out_again(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings()
    partition = health.performer_partition(settings, SID, "alice")
    # What an earlier instance emitted: windows 0-1 (window 1 in two revisions).
    base = records.LabelWindow(
        ts_us=T0,
        session_id=SID,
        performer_id="alice",
        window_us=W,
        features=records.WindowFeatures(),
        raters=[],
        consensus=None,
        final_after_us=T0 + W + 30_000_000,
    )
    earlier = [
        observed(base, "anger"),
        observed(base.model_copy(update={"ts_us": T0 + W}), "anger", "laughter"),
        observed(base.model_copy(update={"ts_us": T0 + W, "revision": 1}), "anger"),
    ]
    release = asyncio.Event()
    reads: list[tuple[set[int], int]] = []

    async def label_records(
        settings: Settings, session_id: str, partitions: Iterable[int], since_ms: int
    ) -> AsyncIterator[list[Any]]:
        reads.append((set(partitions), since_ms))
        await release.wait()
        garbled = replace(records.encode(earlier[0]), value=b"{not a window")
        yield [*(records.encode(window) for window in earlier), garbled]

    monkeypatch.setattr(aligner_module, "label_records", label_records)
    # One window at a time: the merge gives the event loop back between windows.
    monkeypatch.setattr(aligner_module, "COVERAGE_MERGE_CHUNK", 1)
    journal: Journal = []
    emit, _ = recorder(journal)
    aligner = SessionAligner(SID, PROSODY_ONLY)
    step = AlignerStep(aligner, emit, LABELS)
    counters = CounterPublisher(settings, SID, step, emit, HEALTH)
    publisher = CoveragePublisher(settings, session(), step, emit, COVERAGE, counters)
    merged: list[int] = []
    merge_open = publisher.book.merge_open

    def merge_in_chunks(entries: Any) -> None:
        merged.append(len(entries))
        merge_open(entries)

    monkeypatch.setattr(publisher.book, "merge_open", merge_in_chunks)
    publisher.assign({partition})
    # Meanwhile this instance revises window 1 again (the newer revision) and emits 2.
    newer = observed(base.model_copy(update={"ts_us": T0 + W, "revision": 2}), "laughter")
    await step.run(
        lambda now: [newer, observed(base.model_copy(update={"ts_us": T0 + 2 * W}), "laughter")]
    )
    await publisher.publish()
    assert coverages(journal) == [], "not rebuilt yet: it would start again from nothing"
    assert publisher.rebuilding
    release.set()
    await wait_rebuilt(publisher)
    await publisher.publish()
    [rebuilt] = coverages(journal)
    assert reads == [({partition}, T0 // 1000 - 10_000)]
    assert rebuilt.windows == 3
    assert rebuilt.cells["anger"].agreed_s == 0.1
    assert rebuilt.cells["laughter"].agreed_s == 0.2
    # The two windows read back were taken in one by one (window 1 was kept: newer here).
    assert merged == [1, 1]
    # The rebuild's counts go out with the aligner's counters.
    await counters.publish()
    [health_record] = [e[2] for e in journal if e[0] == "emit" and e[1] == HEALTH]
    assert health_record.performer_id == "alice"
    assert health_record.counters["coverage_rebuilt_windows"] == 3
    assert health_record.counters["coverage_undecodable_windows"] == 1
    assert publisher.undecodable == 1
    await publisher.stop()


async def test_a_failed_rebuild_is_tried_again(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[int] = []

    async def label_records(*_: Any, **__: Any) -> AsyncIterator[list[Any]]:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("broker unreachable")
        return
        yield []

    monkeypatch.setattr(aligner_module, "label_records", label_records)
    monkeypatch.setattr(aligner_module, "COVERAGE_RETRY_S", 0.0)
    journal: Journal = []
    emit, _ = recorder(journal)
    step = AlignerStep(SessionAligner(SID, PROSODY_ONLY), emit, LABELS)
    counters = CounterPublisher(Settings(), SID, step, emit, HEALTH)
    publisher = CoveragePublisher(Settings(), session(), step, emit, COVERAGE, counters)
    partition = health.performer_partition(Settings(), SID, "alice")
    publisher.assign({partition})
    await wait_rebuilt(publisher)
    assert len(attempts) == 2
    assert publisher.rebuild_failures == 1
    await counters.publish()
    failures = {
        e[2].performer_id: e[2].counters.get("coverage_rebuild_failures")
        for e in journal
        if e[0] == "emit" and e[1] == HEALTH
    }
    assert failures == {"alice": 1}, "counted for the roster's performers on the partition"
