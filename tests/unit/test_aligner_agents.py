"""The aligner's agents without a broker: the step's emits and acks, tags, feature batches,
presence, counters, the read-back on assignment, rating batches, model readings and the
raters' lag corrections (streams.labels.aligner)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from aiokafka import TopicPartition

from streams import records
from streams.kafka import health, topics
from streams.labels import aligner as aligner_module
from streams.labels.aligner import (
    AlignerStep,
    CounterPublisher,
    FeatureAgent,
    HeldEvents,
    ModelAgent,
    PresenceFollower,
    RaterLagPublisher,
    RatingAgent,
    RestoreOnAssignment,
    TagAgent,
    presence_of,
)
from streams.labels.aligner_core import AlignerConfig, LateTag, SessionAligner
from streams.labels.rater_lags import HEARTBEAT_US, LagEvidence
from streams.settings import Settings
from tests.tag_cases import tag

SID = "s-1"
W = 100_000
T0 = 1_700_000_000_000_000  # a multiple of W: window k starts at T0 + k*W
# A performer with a microphone only: windows need not wait for a face stream to appear.
PROSODY_ONLY = AlignerConfig(awaited_streams=("prosody",))
TAG_WAIT = PROSODY_ONLY.tag_wait_us
LABELS = "labels-topic"
HEALTH = "health-topic"

Journal = list[tuple[Any, ...]]


class Clock:
    """The session clock the aligner module reads, set by the test."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now_us = T0
        monkeypatch.setattr(aligner_module, "now_us", lambda: self.now_us)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


class FakeEvent:
    def __init__(
        self, journal: Journal, name: str, key: bytes = b"s-1/alice", value: bytes = b""
    ) -> None:
        self.name = name
        self.key = key
        self.value = value
        self.headers: list[tuple[str, bytes]] = []
        self.acked = False
        self._journal = journal

    def ack(self) -> bool:
        self.acked = True
        self._journal.append(("ack", self.name))
        return True


def tag_event(journal: Journal, name: str, tagged: records.TagEvent) -> FakeEvent:
    encoded = records.encode(tagged)
    event = FakeEvent(journal, name, key=encoded.key, value=encoded.value)
    event.headers = encoded.headers
    return event


def recorder(journal: Journal) -> tuple[Any, Any]:
    """An emit and a dead-letter sink that write to the journal."""

    async def emit(topic: Any, record: records.AnyRecord) -> None:
        journal.append(("emit", topic, record))

    async def dead_letter(event: Any, source: str, reason: str) -> None:
        journal.append(("dead_letter", event.name, source, reason))

    return emit, dead_letter


def hop(ts_us: int, performer: str = "alice") -> records.ProsodyFrame:
    return records.ProsodyFrame(
        ts_us=ts_us,
        session_id=SID,
        performer_id=performer,
        f0_hz=200.0,
        voicing_probability=0.9,
        voiced=True,
        loudness_db=-20.0,
    )


def hops(start_us: int, end_us: int, performer: str = "alice") -> list[records.ProsodyFrame]:
    """One hop every 10 ms in [start_us, end_us)."""
    return [hop(ts, performer) for ts in range(start_us, end_us, 10_000)]


def emitted_windows(journal: Journal) -> list[int]:
    return [
        (entry[2].ts_us - T0) // W
        for entry in journal
        if entry[0] == "emit" and isinstance(entry[2], records.LabelWindow)
    ]


def feeding(
    aligner: SessionAligner, frames: list[records.ProsodyFrame]
) -> Callable[[int], list[records.LabelWindow]]:
    """An aligner call taking ``frames`` in."""
    return lambda now_us: [w for frame in frames for w in aligner.add_prosody(frame, now_us)]


def session(
    presence: list[records.Presence] | None = None, state: str = "live", ts_us: int = T0
) -> records.SessionRecord:
    return records.SessionRecord.model_validate(
        {
            "ts_us": ts_us,
            "session_id": SID,
            "created_ts_us": T0,
            "prompt": "",
            "roster": [
                {"performer_id": "alice", "display_name": "Alice"},
                {"performer_id": "bob", "display_name": "Bob"},
            ],
            "vocabulary": [],
            "state": state,
            "topics": topics.session_topic_names(SID),
            "presence": presence or [],
        }
    )


def presence(who: str, connected: bool, since_us: int, role: str = "performer") -> records.Presence:
    return records.Presence.model_validate(
        {"participant_id": who, "role": role, "connected": connected, "since_ts_us": since_us}
    )


def prosody_agent(step: AlignerStep, dead_letter: Any) -> FeatureAgent[Any, Any]:
    return FeatureAgent(
        "prosody",
        session().topics.prosody,
        records.ProsodyHops,
        frames_of=records.ProsodyHops.frames,
        add=step.aligner.add_prosody,
        step=step,
        dead_letter=dead_letter,
        on_failure=None,
    )


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


# ---------------------------------------------------------------- the step


async def test_a_feature_record_is_acked_once_the_windows_of_its_last_frame_are_out(
    clock: Clock,
) -> None:
    journal: Journal = []
    emit, dead_letter = recorder(journal)
    step = AlignerStep(SessionAligner(SID, PROSODY_ONLY), emit, LABELS)
    agent = prosody_agent(step, dead_letter)
    events = [FakeEvent(journal, f"hops{k}") for k in range(3)]
    # Each record straddles two windows: 0-1, 1-2, 2-3.
    start = T0 + W // 2
    await agent.align_batch(
        [(event, hops(start + k * W, start + (k + 1) * W)) for k, event in enumerate(events)]
    )
    assert journal == [], "no window waited its tags yet"
    clock.now_us = T0 + W + TAG_WAIT
    await step.tick()
    assert emitted_windows(journal) == [0]
    assert not any(event.acked for event in events), "the first record reaches into window 1"
    clock.now_us = T0 + 2 * W + TAG_WAIT
    await step.tick()
    # Window 1 out first, then the ack it allows; the second record reaches into window 2.
    assert [entry[:2] for entry in journal] == [
        ("emit", LABELS),
        ("emit", LABELS),
        ("ack", "hops0"),
    ]
    assert emitted_windows(journal) == [0, 1]
    assert len(step.held) == 2


async def test_nothing_is_aligned_while_windows_are_read_back(clock: Clock) -> None:
    journal: Journal = []
    emit, _ = recorder(journal)
    step = AlignerStep(SessionAligner(SID, PROSODY_ONLY), emit, LABELS)
    calls: list[int] = []

    def call(now_us: int) -> list[Any]:
        calls.append(now_us)
        return []

    step.restored.clear()
    waiting = asyncio.create_task(step.run(call))
    await settle()
    assert calls == []
    step.restored.set()
    assert await waiting == []
    assert calls == [T0]


# ---------------------------------------------------------------- tags


async def test_tags_of_other_sessions_and_undecodable_ones_are_acked_without_aligning(
    clock: Clock,
) -> None:
    journal: Journal = []
    emit, dead_letter = recorder(journal)
    aligner = SessionAligner(SID, PROSODY_ONLY)
    agent = TagAgent(SID, AlignerStep(aligner, emit, LABELS), dead_letter)
    # "s-10/alice" shares the prefix "s-1" but is another session's key.
    await agent.take(FakeEvent(journal, "other", key=b"s-10/alice", value=b"not read"))
    await agent.take(FakeEvent(journal, "garbage", value=b"not json"))
    assert journal[0] == ("ack", "other")
    assert journal[1][:3] == ("dead_letter", "garbage", topics.TAGS)
    assert journal[2] == ("ack", "garbage")
    assert len(journal) == 3
    assert aligner.stats["tags"] == 0


async def test_a_tag_too_late_to_correct_anything_is_dead_lettered_and_counted(
    clock: Clock,
) -> None:
    journal: Journal = []
    emit, dead_letter = recorder(journal)
    aligner = SessionAligner(SID, replace(PROSODY_ONLY, grace_us=1_000_000))
    step = AlignerStep(aligner, emit, LABELS)
    await prosody_agent(step, dead_letter).align_batch(
        [(FakeEvent(journal, "hops"), hops(T0, T0 + 5 * W))]
    )
    clock.now_us = T0 + 10 * W
    await step.tick()
    clock.now_us = T0 + 5_000_000
    late = tag("tag-late", "point", T0 + 50_000, span_us=W)
    await TagAgent(SID, step, dead_letter).take(tag_event(journal, "late", late))

    [letter] = [entry for entry in journal if entry[0] == "dead_letter"]
    assert letter[1:3] == ("late", topics.TAGS)
    assert "before now" in letter[3]
    assert ("ack", "late") in journal, "nothing it could change is still to go out"
    counts, _, _ = aligner.performer_counters()["alice"]
    assert counts["late_tags"] == 1


async def test_the_step_returns_the_late_tags_it_did_not_emit(clock: Clock) -> None:
    journal: Journal = []
    emit, _ = recorder(journal)
    aligner = SessionAligner(SID, replace(PROSODY_ONLY, grace_us=1_000_000))
    step = AlignerStep(aligner, emit, LABELS)
    await step.run(feeding(aligner, hops(T0, T0 + 5 * W)))
    clock.now_us = T0 + 10 * W
    await step.tick()
    before = len(journal)
    clock.now_us = T0 + 5_000_000
    late = tag("tag-late", "point", T0 + 50_000, span_us=W)
    [returned] = await step.run(lambda now: aligner.add_tag(late, now))
    assert isinstance(returned, LateTag)
    assert returned.tag == late
    assert len(journal) == before, "a late tag is not emitted as a window"


# ---------------------------------------------------------------- held events


class Passed:
    """An aligner stand-in: an instant has passed once the test says so."""

    def __init__(self) -> None:
        self.until: dict[str, int] = {}

    def passed(self, performer_id: str, ts_us: int) -> bool:
        return ts_us <= self.until.get(performer_id, -1)


def test_held_events_of_a_performer_whose_partition_moved_are_never_acked() -> None:
    journal: Journal = []
    passed = Passed()
    held = HeldEvents(passed)  # type: ignore[arg-type]
    alice, bob, later = (FakeEvent(journal, name) for name in ("alice", "bob", "alice-later"))
    held.hold("alice", T0, alice)
    held.hold("alice", T0 + W, later)
    held.hold("bob", T0, bob)
    held.forget("bob")
    passed.until = {"alice": T0, "bob": T0 + W}
    assert held.release() == 1
    assert journal == [("ack", "alice")]
    assert len(held) == 1


# ---------------------------------------------------------------- presence


def test_presence_is_the_performers_and_an_ended_session_has_them_all_out() -> None:
    live = session(
        [
            presence("alice", True, T0 + 1),
            presence("bob", False, T0 + 2),
            presence("dora", True, T0 + 3, role="director"),
        ]
    )
    assert presence_of(live) == {"alice": (True, T0 + 1), "bob": (False, T0 + 2)}
    end = T0 + 60_000_000
    ended = session([presence("bob", False, T0 + 2)], state="ended", ts_us=end)
    # Alice never showed up in the record: out from the end, as one still connected is.
    assert presence_of(ended) == {"alice": (False, end), "bob": (False, T0 + 2)}


class PresenceRecorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool, int]] = []

    def set_presence(self, performer_id: str, connected: bool, since_us: int, now_us: int) -> None:
        self.calls.append((performer_id, connected, since_us))


def test_the_aligner_hears_of_each_presence_change_once(clock: Clock) -> None:
    aligner = PresenceRecorder()
    follower = PresenceFollower(Settings(), SID, aligner)  # type: ignore[arg-type]
    joined = session([presence("alice", True, T0)])
    follower.note(joined)
    follower.note(joined)
    assert aligner.calls == [("alice", True, T0)]
    follower.note(session([presence("alice", False, T0 + W)]))
    assert aligner.calls[1:] == [("alice", False, T0 + W)]


# ---------------------------------------------------------------- counters


async def test_counters_are_published_once_seeded_and_only_when_they_changed(
    clock: Clock,
) -> None:
    journal: Journal = []
    emit, _ = recorder(journal)
    aligner = SessionAligner(SID, PROSODY_ONLY)
    step = AlignerStep(aligner, emit, LABELS)
    counters = CounterPublisher(Settings(), SID, step, emit, HEALTH)
    aligner.count_for("alice", "late_tags")
    counters.seeded.clear()
    await counters.publish()
    assert journal == [], "counts not read back yet would restart from 0"
    counters.seeded.set()
    await counters.publish()
    await counters.publish()
    aligner.count_for("bob", "late_tags", 2)
    await counters.publish()

    published = [entry[2] for entry in journal]
    assert all(entry[1] == HEALTH for entry in journal)
    assert [(r.performer_id, r.counters["late_tags"]) for r in published] == [
        ("alice", 1),
        ("bob", 2),
    ]
    assert published[0].source == "aligner"
    assert published[0].session_id == SID


# ---------------------------------------------------------------- read back on assignment


def performers_on_two_partitions(settings: Settings) -> tuple[str, str]:
    here = health.performer_partition(settings, SID, "alice")
    for other in ("bob", "carol", "dave", "erin", "frank", "grace", "heidi"):
        if health.performer_partition(settings, SID, other) != here:
            return "alice", other
    raise AssertionError("every candidate performer is on alice's partition")


async def test_assignment_reads_back_the_emitted_windows_and_drops_moved_performers(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings()
    staying, moved = performers_on_two_partitions(settings)
    journal: Journal = []
    emit, dead_letter = recorder(journal)
    # What an earlier instance emitted for the performer who stays here.
    earlier = SessionAligner(SID, PROSODY_ONLY)
    emitted = feeding(earlier, hops(T0, T0 + 2 * W + 10_000, staying))(T0)
    emitted += earlier.tick(T0 + 2 * W + TAG_WAIT)
    assert len(emitted) == 2
    reads: list[set[int]] = []

    async def read_label_windows(
        settings: Settings, session_id: str, partitions: set[int], since_ms: int
    ) -> list[records.LabelWindow]:
        reads.append(set(partitions))
        return emitted

    async def read_counters(settings: Settings, session_id: str) -> dict[Any, Any]:
        return {}

    monkeypatch.setattr(aligner_module, "read_label_windows", read_label_windows)
    monkeypatch.setattr(health, "read_counters", read_counters)
    aligner = SessionAligner(SID, PROSODY_ONLY)
    step = AlignerStep(aligner, emit, LABELS)
    counters = CounterPublisher(settings, SID, step, emit, HEALTH)
    restore = RestoreOnAssignment(settings, session(), step, counters)
    held_for_moved = FakeEvent(journal, "moved")
    await prosody_agent(step, dead_letter).align_batch([(held_for_moved, [hop(T0, moved)])])
    assert moved in aligner.held_performers()

    partition = health.performer_partition(settings, SID, staying)
    await restore.restore(None, {TopicPartition("another.topic", partition)})
    assert reads == [], "no partition of this session's topics"
    assert moved in aligner.held_performers()

    await restore.restore(None, {TopicPartition(topics.TAGS, partition)})
    assert reads == [{partition}]
    assert moved not in aligner.held_performers(), "its new owner aligns it"
    assert step.restored.is_set()
    assert counters.seeded.is_set()
    # Windows 0-1 are known again: the re-read hops do not emit them anew.
    clock.now_us = T0 + 3 * W + TAG_WAIT
    await step.run(feeding(aligner, hops(T0, T0 + 3 * W + 10_000, staying)))
    await step.tick()
    assert emitted_windows(journal) == [2]
    assert not held_for_moved.acked


async def test_a_failed_read_back_holds_the_counters_back_but_not_the_agents(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def read_label_windows(*_: Any, **__: Any) -> list[records.LabelWindow]:
        raise OSError("broker unreachable")

    monkeypatch.setattr(aligner_module, "read_label_windows", read_label_windows)
    journal: Journal = []
    emit, _ = recorder(journal)
    aligner = SessionAligner(SID, PROSODY_ONLY)
    step = AlignerStep(aligner, emit, LABELS)
    counters = CounterPublisher(Settings(), SID, step, emit, HEALTH)
    restore = RestoreOnAssignment(Settings(), session(), step, counters)
    aligner.count_for("alice", "late_tags")
    await restore.restore(None, {TopicPartition(session().topics.prosody, 0)})
    assert step.restored.is_set()
    assert not counters.seeded.is_set()
    await counters.publish()
    assert journal == []


# ---------------------------------------------------------------- ratings


RATERS = "raters-topic"


def rating_batch(batch_id: str, times: list[int], session_id: str = SID) -> records.RatingBatch:
    return records.RatingBatch.model_validate(
        {
            "ts_us": times[0],
            "session_id": session_id,
            "performer_id": "alice",
            "batch_id": batch_id,
            "rater_id": "olga",
            "rater_role": "observer",
            "mode": "intensity",
            "label": "amusement",
            "rate_hz": 20,
            "samples": [{"ts_us": ts, "client_ts_us": ts, "intensity": 0.5} for ts in times],
            "clock_offset_us": 0,
            "clock_uncertainty_us": 500,
            "received_ts_us": times[-1],
        }
    )


def record_event(journal: Journal, name: str, record: records.AnyRecord) -> FakeEvent:
    encoded = records.encode(record)
    event = FakeEvent(journal, name, key=encoded.key, value=encoded.value)
    event.headers = encoded.headers
    return event


def emitted(journal: Journal, kind: type[Any]) -> list[Any]:
    return [entry[2] for entry in journal if entry[0] == "emit" and isinstance(entry[2], kind)]


async def test_a_rating_batch_is_acked_once_the_windows_of_its_samples_are_out(
    clock: Clock,
) -> None:
    journal: Journal = []
    emit, dead_letter = recorder(journal)
    step = AlignerStep(SessionAligner(SID, PROSODY_ONLY), emit, LABELS)
    await step.run(feeding(step.aligner, hops(T0, T0 + 3 * W)))
    agent = RatingAgent(SID, step, dead_letter)
    rated = record_event(journal, "batch", rating_batch("batch-0001", [T0 + 50_000, T0 + 150_000]))
    await agent.take(rated)
    clock.now_us = T0 + W + TAG_WAIT
    await step.tick()
    assert not rated.acked, "its second sample's window has not gone out"
    clock.now_us = T0 + 2 * W + PROSODY_ONLY.rating_wait_us
    await step.tick()
    assert rated.acked
    traces = [w.ratings[0].samples for w in emitted(journal, records.LabelWindow) if w.ratings]
    assert traces == [1, 1]


async def test_ratings_of_other_sessions_bad_ones_and_late_ones(clock: Clock) -> None:
    journal: Journal = []
    emit, dead_letter = recorder(journal)
    aligner = SessionAligner(SID, replace(PROSODY_ONLY, grace_us=1_000_000))
    step = AlignerStep(aligner, emit, LABELS)
    agent = RatingAgent(SID, step, dead_letter)
    await agent.take(FakeEvent(journal, "other", key=b"s-10/alice", value=b"not read"))
    await agent.take(FakeEvent(journal, "garbage", value=b'{"ts_us": 1}'))
    assert journal[0] == ("ack", "other")
    assert journal[1][:3] == ("dead_letter", "garbage", topics.RATINGS)
    assert "rating_batch" in journal[1][3]
    assert journal[2] == ("ack", "garbage")
    await step.run(feeding(aligner, hops(T0, T0 + 5 * W)))
    clock.now_us = T0 + 10 * W
    await step.tick()
    clock.now_us = T0 + 5_000_000
    late = record_event(journal, "late", rating_batch("batch-0002", [T0 + 50_000]))
    await agent.take(late)
    [letter] = [entry for entry in journal if entry[0] == "dead_letter" and entry[1] == "late"]
    assert letter[2] == topics.RATINGS
    assert "before now" in letter[3]
    assert late.acked
    counts, _, _ = aligner.performer_counters()["alice"]
    assert counts["late_ratings"] == 1
    assert counts["late_rating_samples"] == 1


# ---------------------------------------------------------------- model readings


def model_reading(ts_us: int, window_us: int = W) -> records.ModelReading:
    return records.ModelReading(
        ts_us=ts_us,
        session_id=SID,
        performer_id="alice",
        window_us=window_us,
        model="fer",
        frames_read=1,
        probabilities={"amusement": 0.7},
        top_label="amusement",
    )


async def test_model_readings_revise_their_windows_and_odd_ones_are_dead_lettered(
    clock: Clock,
) -> None:
    journal: Journal = []
    emit, dead_letter = recorder(journal)
    step = AlignerStep(SessionAligner(SID, PROSODY_ONLY), emit, LABELS)
    await step.run(feeding(step.aligner, hops(T0, T0 + 3 * W)))
    clock.now_us = T0 + 2 * W + TAG_WAIT
    await step.tick()
    agent = ModelAgent("model-topic", step, dead_letter, on_failure=None)
    good = FakeEvent(journal, "good")
    odd = FakeEvent(journal, "odd")
    await agent.align_batch([(good, model_reading(T0 + W)), (odd, model_reading(T0, 3 * W))])
    [revised] = [w for w in emitted(journal, records.LabelWindow) if w.revision]
    assert revised.ts_us == T0 + W
    assert [m.model for m in revised.models] == ["fer"]
    assert good.acked, "its window went out again with it"
    [letter] = [entry for entry in journal if entry[0] == "dead_letter"]
    assert letter[1:3] == ("odd", "model-topic")
    assert "one label window" in letter[3]
    assert odd.acked


# ---------------------------------------------------------------- reaction lags


def lag_record(rater: str, lag_us: int, ts_us: int = T0) -> records.RaterLag:
    correction = records.LagCorrection(method="calibration", lag_us=lag_us)
    return records.RaterLag(
        ts_us=ts_us,
        session_id=SID,
        rater_id=rater,
        rater_role="observer",
        applied=correction,
        estimates=[correction],
    )


async def test_estimated_lags_apply_to_the_rater_and_go_out_when_they_change(
    clock: Clock,
) -> None:
    journal: Journal = []
    emit, _ = recorder(journal)
    evidence = LagEvidence(60_000_000)
    aligner = SessionAligner(SID, PROSODY_ONLY, evidence)
    step = AlignerStep(aligner, emit, LABELS)
    publisher = RaterLagPublisher(Settings(), SID, step, evidence, emit, RATERS)
    pressed = tag("tap-0001", "point", T0, span_us=1, rater="olga")
    calibrated = pressed.model_copy(
        update={"timing": pressed.timing.model_copy(update={"reaction_lag_us": 250_000})}
    )
    await step.run(lambda now: aligner.add_tag(calibrated, now))
    await publisher.estimate()
    await publisher.estimate()
    [published] = emitted(journal, records.RaterLag)
    assert [entry[1] for entry in journal if entry[0] == "emit"] == [RATERS]
    assert published.rater_id == "olga"
    assert published.applied.method == "calibration"
    assert published.applied.lag_us == 250_000
    assert aligner.lag_of("olga") == published.applied
    # She calibrates again: a new correction, published once.
    later = tag("tap-0002", "point", T0 + W, span_us=1, rater="olga")
    recalibrated = later.model_copy(
        update={"timing": later.timing.model_copy(update={"reaction_lag_us": 400_000})}
    )
    await step.run(lambda now: aligner.add_tag(recalibrated, now))
    await publisher.estimate()
    assert [r.applied.lag_us for r in emitted(journal, records.RaterLag)] == [250_000, 400_000]


async def test_a_failed_estimate_keeps_the_corrections_in_force(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: Any, **__: Any) -> list[records.RaterLag]:
        raise FloatingPointError("numpy gave up")

    monkeypatch.setattr(aligner_module, "estimate_lags", broken)
    journal: Journal = []
    emit, _ = recorder(journal)
    evidence = LagEvidence(60_000_000)
    aligner = SessionAligner(SID, PROSODY_ONLY, evidence)
    step = AlignerStep(aligner, emit, LABELS)
    publisher = RaterLagPublisher(Settings(), SID, step, evidence, emit, RATERS)
    publisher.seed({"olga": lag_record("olga", 300_000)})
    await publisher.estimate()
    assert publisher.failures == 1
    assert journal == []
    assert aligner.lag_of("olga") == records.LagCorrection(method="calibration", lag_us=300_000)


async def test_assignment_takes_up_the_published_lags_before_anything_is_aligned(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def read_label_windows(*_: Any, **__: Any) -> list[records.LabelWindow]:
        return []

    async def read_counters(*_: Any, **__: Any) -> dict[Any, Any]:
        return {}

    since: list[int] = []

    async def read_rater_lags(settings: Settings, session_id: str, since_ms: int) -> dict[str, Any]:
        since.append(since_ms)
        return {"olga": lag_record("olga", 300_000), "pete": lag_record("pete", 500_000)}

    monkeypatch.setattr(aligner_module, "read_label_windows", read_label_windows)
    monkeypatch.setattr(aligner_module, "read_rater_lags", read_rater_lags)
    monkeypatch.setattr(health, "read_counters", read_counters)
    journal: Journal = []
    emit, _ = recorder(journal)
    evidence = LagEvidence(60_000_000)
    aligner = SessionAligner(SID, PROSODY_ONLY, evidence)
    step = AlignerStep(aligner, emit, LABELS)
    publisher = RaterLagPublisher(Settings(), SID, step, evidence, emit, RATERS)
    # pete's lag this instance estimated itself stays.
    own = records.LagCorrection(method="onsets", lag_us=450_000, confidence=0.9)
    publisher.seed({"pete": lag_record("pete", 0).model_copy(update={"applied": own})})
    counters = CounterPublisher(Settings(), SID, step, emit, HEALTH)
    restore = RestoreOnAssignment(Settings(), session(), step, counters, publisher)
    await restore.restore(None, {TopicPartition(topics.RATINGS, 0)})
    # From the session's creation (a margin for the producers' clocks) on, not from 0.
    assert since == [T0 // 1000 - round(aligner_module.RESTORE_MARGIN_S * 1000)]
    assert aligner.lag_of("olga") == records.LagCorrection(method="calibration", lag_us=300_000)
    assert aligner.lag_of("pete") == own
    assert step.restored.is_set()
    # Taken up, not news: not published again.
    await publisher.estimate()
    assert emitted(journal, records.RaterLag) == []


def scripted_rounds(monkeypatch: pytest.MonkeyPatch, rounds: list[records.LagCorrection]) -> None:
    """Each estimate round chooses the next of ``rounds`` for olga."""
    script = iter(rounds)

    def estimate_lags(_: Any, session_id: str, now_us: int, **__: Any) -> list[records.RaterLag]:
        chosen = next(script)
        record = lag_record("olga", chosen.lag_us, now_us)
        return [record.model_copy(update={"applied": chosen, "estimates": [chosen]})]

    monkeypatch.setattr(aligner_module, "estimate_lags", estimate_lags)


async def test_rounds_that_would_toggle_a_correction_keep_it_and_publish_nothing(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    consensus = records.LagCorrection(method="consensus", lag_us=600_000, confidence=0.41)
    calibration = records.LagCorrection(method="calibration", lag_us=0)
    scripted_rounds(
        monkeypatch,
        [
            consensus,
            calibration,  # its confidence fell to 0.39
            consensus.model_copy(update={"confidence": 0.4123, "lag_us": 610_000}),
            calibration,
            calibration,
            calibration,  # the third round in a row without it
        ],
    )
    journal: Journal = []
    emit, _ = recorder(journal)
    evidence = LagEvidence(60_000_000)
    aligner = SessionAligner(SID, PROSODY_ONLY, evidence)
    step = AlignerStep(aligner, emit, LABELS)
    publisher = RaterLagPublisher(Settings(), SID, step, evidence, emit, RATERS)
    applied = []
    for _ in range(5):
        await publisher.estimate()
        applied.append(aligner.lag_of("olga"))
        clock.now_us += 10_000_000
    assert applied == [consensus] * 5
    [published] = emitted(journal, records.RaterLag)
    assert published.applied == consensus
    await publisher.estimate()
    assert aligner.lag_of("olga") == calibration
    assert [r.applied for r in emitted(journal, records.RaterLag)] == [consensus, calibration]


async def test_an_unchanged_correction_is_published_again_as_a_heartbeat(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    consensus = records.LagCorrection(method="consensus", lag_us=600_000, confidence=0.6)
    scripted_rounds(monkeypatch, [consensus] * 3)
    journal: Journal = []
    emit, _ = recorder(journal)
    evidence = LagEvidence(60_000_000)
    step = AlignerStep(SessionAligner(SID, PROSODY_ONLY, evidence), emit, LABELS)
    publisher = RaterLagPublisher(Settings(), SID, step, evidence, emit, RATERS)
    await publisher.estimate()
    clock.now_us += HEARTBEAT_US - 1
    await publisher.estimate()
    clock.now_us += 1
    await publisher.estimate()
    assert [r.ts_us for r in emitted(journal, records.RaterLag)] == [T0, T0 + HEARTBEAT_US]


def lag_restore(
    monkeypatch: pytest.MonkeyPatch,
    read_rater_lags: Callable[..., Any],
    windows: list[records.LabelWindow] | Exception,
) -> tuple[SessionAligner, AlignerStep, CounterPublisher, RaterLagPublisher, RestoreOnAssignment]:
    async def read_label_windows(*_: Any, **__: Any) -> list[records.LabelWindow]:
        if isinstance(windows, Exception):
            raise windows
        return windows

    async def read_counters(*_: Any, **__: Any) -> dict[Any, Any]:
        return {}

    monkeypatch.setattr(aligner_module, "read_label_windows", read_label_windows)
    monkeypatch.setattr(aligner_module, "read_rater_lags", read_rater_lags)
    monkeypatch.setattr(health, "read_counters", read_counters)
    emit, _ = recorder([])
    evidence = LagEvidence(60_000_000)
    aligner = SessionAligner(SID, PROSODY_ONLY, evidence)
    step = AlignerStep(aligner, emit, LABELS)
    publisher = RaterLagPublisher(Settings(), SID, step, evidence, emit, RATERS)
    counters = CounterPublisher(Settings(), SID, step, emit, HEALTH)
    restore = RestoreOnAssignment(Settings(), session(), step, counters, publisher)
    return aligner, step, counters, publisher, restore


def two_windows() -> list[records.LabelWindow]:
    earlier = SessionAligner(SID, PROSODY_ONLY)
    emitted = feeding(earlier, hops(T0, T0 + 2 * W + 10_000))(T0)
    emitted += earlier.tick(T0 + 2 * W + TAG_WAIT)
    assert len(emitted) == 2
    return emitted


@pytest.mark.parametrize("failure", ["timeout", "error"])
async def test_a_failed_read_of_the_lags_leaves_the_windows_restored_and_is_counted(
    clock: Clock, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    async def read_rater_lags(*_: Any) -> dict[str, Any]:
        if failure == "error":
            raise OSError("broker unreachable")
        await asyncio.sleep(3600)
        return {}

    monkeypatch.setattr(aligner_module, "LAGS_RESTORE_TIMEOUT_S", 0.05)
    aligner, step, counters, publisher, restore = lag_restore(
        monkeypatch, read_rater_lags, two_windows()
    )
    await restore.restore(None, {TopicPartition(topics.RATINGS, 0)})
    assert aligner.stats["restored_windows"] == 2
    assert counters.seeded.is_set()
    assert step.restored.is_set()
    assert publisher.read_failures == 1
    assert aligner.lag_of("olga") is None


async def test_the_lags_are_taken_up_even_when_the_windows_could_not_be_read(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def read_rater_lags(*_: Any) -> dict[str, Any]:
        return {"olga": lag_record("olga", 300_000)}

    aligner, step, counters, publisher, restore = lag_restore(
        monkeypatch, read_rater_lags, OSError("broker unreachable")
    )
    await restore.restore(None, {TopicPartition(topics.RATINGS, 0)})
    assert not counters.seeded.is_set()
    assert step.restored.is_set()
    assert publisher.read_failures == 0
    assert aligner.lag_of("olga") == records.LagCorrection(method="calibration", lag_us=300_000)
