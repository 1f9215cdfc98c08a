"""The processors' agents without a broker: what they send, dead-letter and ack, in which
order (streams.features.processors)."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from streams import records
from streams.features import processors
from streams.features.face_errors import FaceAnalysisError
from streams.features.face_pool import FacePoolStopped, FaceResult
from streams.features.model_rater import FrameReading, ModelOutcome, RaterChoice, Unread
from streams.features.processors import (
    FACE_BUSY_FRAMES,
    PROSODY_IDLE_FLUSH_S,
    FaceAgent,
    ModelLane,
    ProsodyAgent,
    SessionOutput,
    UnfinishedChunks,
    skip_face,
)
from streams.kafka import topics
from streams.session_clock import now_us
from streams.settings import Settings

SID = "s-1"
T0 = 1_764_115_200_000_000
CHUNK_US = 20_000  # 320 samples at 16 kHz
JPEG = b"\xff\xd8 not really a picture"

Journal = list[tuple[str, ...]]


class FakeEvent:
    """A faust event as the agents see it: its message, and an ack the journal records."""

    def __init__(self, journal: Journal, name: str, offset: int = 0, timestamp: Any = None):
        self.name = name
        self.acked = False
        self._journal = journal
        self.message = SimpleNamespace(
            key=b"s-1/alice", value=b"payload", partition=3, offset=offset, timestamp=timestamp
        )

    def ack(self) -> bool:
        self.acked = True
        self._journal.append(("ack", self.name))
        return True


class FakeTopic:
    def __init__(self, journal: Journal, name: str) -> None:
        self._journal = journal
        self.name = name

    async def send(self, *, key: bytes, value: bytes, headers: Any) -> None:
        self._journal.append(("send", self.name, value.decode(errors="replace")))


class FakeApp:
    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def topic(self, name: str, **_: Any) -> FakeTopic:
        return FakeTopic(self._journal, name)


class RecordingOutput(SessionOutput):
    """The real output on fake topics; a stop for restart is recorded, not signalled."""

    def __init__(self, journal: Journal) -> None:
        super().__init__(FakeApp(journal), session())
        self.stops: list[BaseException] = []

    def stop_for_restart(self, exc: BaseException) -> None:
        self.stops.append(exc)


def session() -> records.SessionRecord:
    return records.SessionRecord(
        ts_us=T0,
        session_id=SID,
        created_ts_us=T0,
        prompt="",
        roster=[
            records.Performer(performer_id="alice", display_name="Alice"),
            records.Performer(performer_id="bob", display_name="Bob"),
        ],
        vocabulary=[],
        state="live",
        topics=topics.session_topic_names(SID),
    )


def audio_header(n: int, performer: str = "alice") -> records.AudioChunkHeader:
    return records.AudioChunkHeader(
        ts_us=T0 + n * CHUNK_US,
        session_id=SID,
        performer_id=performer,
        seq=n,
        timing="sender_report",
        sample_count=320,
    )


def chunk(n: int, performer: str = "alice") -> records.AudioChunk:
    return records.AudioChunk(audio_header(n, performer), bytes(640))


def video_frame(n: int, performer: str = "alice") -> records.VideoFrame:
    header = records.VideoFrameHeader(
        ts_us=T0 + n * 66_667,
        session_id=SID,
        performer_id=performer,
        seq=n,
        timing="sender_report",
        width=64,
        height=36,
    )
    return records.VideoFrame(header, JPEG)


def message(text: str) -> records.KafkaMessage:
    return records.KafkaMessage(key=b"s-1/alice", value=text.encode(), headers=[])


def face_result(text: str) -> FaceResult:
    return FaceResult(message(text))


def dead_letters(journal: Journal) -> list[records.DeadLetter]:
    return [
        records.DeadLetter.model_validate_json(entry[2])
        for entry in journal
        if entry[0] == "send" and entry[1] == topics.DEADLETTER
    ]


# ---------------------------------------------------------------- prosody


def test_a_chunk_is_acked_only_once_all_its_hops_are_out() -> None:
    journal: Journal = []
    unfinished = UnfinishedChunks()
    first, second, bobs = (FakeEvent(journal, name) for name in ("a0", "a1", "b0"))
    # The hops out end 5 ms before the first chunk does: its last hop needs the next chunk.
    unfinished.analysed(first, audio_header(0), T0 + CHUNK_US - 5_000)
    assert not first.acked
    # Bob's chunk with all its hops out is acked at once, whatever Alice's wait for.
    unfinished.analysed(bobs, audio_header(0, "bob"), None)
    assert bobs.acked
    unfinished.analysed(second, audio_header(1), T0 + CHUNK_US)
    assert first.acked
    assert not second.acked
    assert len(unfinished) == 1
    assert journal == [("ack", "b0"), ("ack", "a0")]


def test_a_performer_whose_audio_stopped_is_flushed_and_acked() -> None:
    journal: Journal = []
    unfinished = UnfinishedChunks()
    held = FakeEvent(journal, "a0")
    unfinished.heard("alice", 100.0)
    unfinished.analysed(held, audio_header(0), T0)
    unfinished.heard("bob", 100.0)  # bob's chunk failed: nothing of his is held
    assert unfinished.idle(100.0 + PROSODY_IDLE_FLUSH_S / 2) == []
    assert unfinished.idle(100.0 + PROSODY_IDLE_FLUSH_S) == ["alice"]
    unfinished.flushed("alice")
    assert held.acked
    assert len(unfinished) == 0
    assert unfinished.idle(200.0) == [], "nothing left to flush"


async def test_prosody_hops_go_out_before_the_acks_and_a_failed_chunk_is_dead_lettered() -> None:
    journal: Journal = []
    output = RecordingOutput(journal)
    agent = ProsodyAgent(cast(Any, None), output, batch_interval_s=0)
    events = [FakeEvent(journal, f"a{n}", offset=10 + n) for n in range(3)]
    batch = [(event, chunk(n)) for n, event in enumerate(events)]
    progress: list[int | str | None] = [T0 + CHUNK_US, "analysis failed: boom", T0 + 2 * CHUNK_US]
    await agent.hand_over(batch, ([message("hops of alice")], progress))

    prosody_topic = session().topics.prosody
    assert journal[0] == ("send", prosody_topic, "hops of alice")
    assert journal[1] == ("ack", "a0")
    assert journal[2][:2] == ("send", topics.DEADLETTER)
    assert journal[3:] == [("ack", "a1")], "the last chunk's hops are not all out"
    [letter] = dead_letters(journal)
    assert letter.reason == "analysis failed: boom"
    assert letter.source_topic == session().topics.audio
    assert (letter.source_partition, letter.source_offset) == (3, 11)
    assert len(agent.unfinished) == 1


async def test_prosody_of_an_idle_performer_is_flushed_then_acked() -> None:
    journal: Journal = []
    flushed: list[str] = []

    def flush_prosody(performer_id: str) -> list[records.KafkaMessage]:
        flushed.append(performer_id)
        return [message(f"last hops of {performer_id}")]

    with ThreadPoolExecutor(max_workers=1) as pool:
        state = SimpleNamespace(prosody_pool=pool, flush_prosody=flush_prosody)
        agent = ProsodyAgent(cast(Any, state), RecordingOutput(journal), batch_interval_s=0)
        alice, bob = FakeEvent(journal, "a0"), FakeEvent(journal, "b0")
        await agent.hand_over([(alice, chunk(0)), (bob, chunk(0, "bob"))], ([], [T0, T0]))
        agent.unfinished.heard("alice", time.monotonic() - PROSODY_IDLE_FLUSH_S)
        await agent.flush_stopped_performers()

    assert flushed == ["alice"], "bob's audio has not stopped"
    assert journal == [("send", session().topics.prosody, "last hops of alice"), ("ack", "a0")]
    assert not bob.acked


# ---------------------------------------------------------------- face


def test_frames_are_skipped_only_when_a_lag_budget_is_set_and_exceeded() -> None:
    budget = 500_000
    assert not skip_face(FACE_BUSY_FRAMES + 5, 10 * budget, 0), "no budget: every frame analysed"
    assert not skip_face(FACE_BUSY_FRAMES - 1, budget, budget)
    assert skip_face(FACE_BUSY_FRAMES, 0, budget), "the performer's worker is behind"
    assert skip_face(0, budget + 1, budget), "the frame waited in Kafka too long"


class FakeFaces:
    """A face pool whose analyses the test finishes, one future per video seq; it notes
    which frames the model was due to read."""

    def __init__(self) -> None:
        self.closed = False
        self.results: dict[int, asyncio.Future[FaceResult]] = {}
        self.read_model: dict[int, bool] = {}

    async def analyse(self, frame: records.VideoFrame, *, read_model: bool = False) -> FaceResult:
        result = asyncio.get_running_loop().create_future()
        self.results[frame.header.seq] = result
        self.read_model[frame.header.seq] = read_model
        return await result


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_face_records_go_out_in_capture_order_whatever_order_they_finish_in() -> None:
    journal: Journal = []
    output = RecordingOutput(journal)
    faces = FakeFaces()
    agent = FaceAgent(cast(Any, faces), output, max_lag_us=0)
    events = [FakeEvent(journal, f"f{n}", offset=n) for n in range(4)]
    for n, event in enumerate(events):
        await agent.take(event, video_frame(n))
    await settle()
    assert sorted(faces.results) == [0, 1, 2, 3], "every frame goes to its worker at once"
    faces.results[3].set_result(face_result("face 3"))
    faces.results[2].set_exception(RuntimeError("worker died"))
    faces.results[1].set_exception(FaceAnalysisError("not a JPEG"))
    await settle()
    assert journal == [], "frame 0 holds the lane"
    faces.results[0].set_result(face_result("face 0"))
    await settle()
    await agent.stop()

    face_topic = session().topics.face
    steps = [entry[:2] for entry in journal]
    assert steps == [
        ("send", face_topic),
        ("ack", "f0"),
        ("send", topics.DEADLETTER),
        ("ack", "f1"),
        ("send", topics.DEADLETTER),
        ("ack", "f2"),
        ("send", face_topic),
        ("ack", "f3"),
    ]
    assert [letter.reason for letter in dead_letters(journal)] == [
        "not a JPEG",
        "analysis failed: worker died",
    ]
    assert [letter.source_offset for letter in dead_letters(journal)] == [1, 2]
    assert output.stops == []


async def test_a_busy_performers_frames_are_skipped_in_their_place() -> None:
    journal: Journal = []
    faces = FakeFaces()
    agent = FaceAgent(cast(Any, faces), RecordingOutput(journal), max_lag_us=500_000)
    for n in range(FACE_BUSY_FRAMES + 1):
        await agent.take(FakeEvent(journal, f"f{n}"), video_frame(n))
    # Bob's worker is not behind: his frame is analysed.
    await agent.take(FakeEvent(journal, "bob0"), video_frame(FACE_BUSY_FRAMES + 1, "bob"))
    # One that waited in Kafka past the budget is skipped, busy or not.
    stale = FakeEvent(journal, "bob1", timestamp=(now_us() - 2_000_000) / 1e6)
    await agent.take(stale, video_frame(FACE_BUSY_FRAMES + 2, "bob"))
    await settle()
    assert sorted(faces.results) == [*range(FACE_BUSY_FRAMES), FACE_BUSY_FRAMES + 1]
    for n in range(FACE_BUSY_FRAMES):
        faces.results[n].set_result(face_result(f"face {n}"))
    faces.results[FACE_BUSY_FRAMES + 1].set_result(face_result("bob's face"))
    await settle()
    await agent.stop()

    sent = [entry[2] for entry in journal if entry[0] == "send"]
    alices_skip = records.FaceFrame.model_validate_json(sent[FACE_BUSY_FRAMES])
    assert alices_skip.video_seq == FACE_BUSY_FRAMES
    assert alices_skip.skipped == "late"
    assert alices_skip.face_present is None
    assert sent[FACE_BUSY_FRAMES + 1] == "bob's face"
    bobs_skip = records.FaceFrame.model_validate_json(sent[FACE_BUSY_FRAMES + 2])
    assert (bobs_skip.performer_id, bobs_skip.skipped) == ("bob", "late")
    assert len([entry for entry in journal if entry[0] == "ack"]) == FACE_BUSY_FRAMES + 3


@pytest.mark.parametrize("closed", [False, True])
async def test_a_stopped_face_pool_leaves_its_frame_unacked(closed: bool) -> None:
    journal: Journal = []
    output = RecordingOutput(journal)
    faces = FakeFaces()
    agent = FaceAgent(cast(Any, faces), output, max_lag_us=0)
    event = FakeEvent(journal, "f0")
    await agent.take(event, video_frame(0))
    await settle()
    faces.closed = closed
    faces.results[0].set_exception(FacePoolStopped("closed" if closed else "workers died"))
    await settle()
    await agent.stop()
    assert journal == [], "not acked: the next processor redoes it"
    # A pool closed means the processors are stopping anyway; otherwise they must restart.
    assert len(output.stops) == (0 if closed else 1)


async def test_stopping_drops_the_frames_still_in_the_lanes_unacked() -> None:
    journal: Journal = []
    faces = FakeFaces()
    agent = FaceAgent(cast(Any, faces), RecordingOutput(journal), max_lag_us=0)
    for n in range(3):
        await agent.take(FakeEvent(journal, f"f{n}"), video_frame(n))
    await settle()
    futures = list(faces.results.values())
    await agent.stop()
    await settle()
    assert journal == []
    assert all(result.cancelled() for result in futures), "their analyses are dropped"


def test_a_skipped_face_record_names_its_frame() -> None:
    skipped = processors.skipped_face(video_frame(7, "bob"), "late")
    assert (skipped.performer_id, skipped.video_seq, skipped.ts_us) == ("bob", 7, T0 + 7 * 66_667)
    assert skipped.face_present is None


# ---------------------------------------------------------------- the model lane


def model_lane(rate_hz: float = 10.0) -> processors.ModelLane:
    return processors.ModelLane(SID, RaterChoice("builtin", "/nowhere"), rate_hz, 100_000)


def fer_reading(happy: float) -> FrameReading:
    return FrameReading("fer", {"happy": happy, "neutral": 1 - happy}, {"amusement": happy})


def model_readings(journal: Journal) -> list[records.ModelReading]:
    return [
        records.ModelReading.model_validate_json(entry[2])
        for entry in journal
        if entry[0] == "send" and entry[1] == session().topics.model
    ]


async def test_the_model_is_not_due_while_the_face_worker_is_behind() -> None:
    faces = FakeFaces()
    agent = FaceAgent(cast(Any, faces), RecordingOutput([]), max_lag_us=0, model=model_lane())
    # T0 is on the 100 ms grid: frames 0 and 1 share a slot, frame 2 starts the next one,
    # but frames 0 and 1 are still in the worker when it comes.
    for n in range(3):
        await agent.take(FakeEvent([], f"f{n}"), video_frame(n))
    await settle()
    assert faces.read_model == {0: True, 1: False, 2: False}
    await agent.stop()


async def test_a_windows_model_reading_goes_out_before_its_frames_are_acked() -> None:
    journal: Journal = []
    faces = FakeFaces()
    output = RecordingOutput(journal)
    agent = FaceAgent(cast(Any, faces), output, max_lag_us=0, model=model_lane())
    outcomes: list[ModelOutcome] = [fer_reading(0.8), Unread("thinned", "fer"), fer_reading(0.2)]
    for n, outcome in enumerate(outcomes):
        await agent.take(FakeEvent(journal, f"f{n}"), video_frame(n))
        await settle()
        faces.results[n].set_result(FaceResult(message(f"face {n}"), outcome))
        await settle()
    assert faces.read_model == {0: True, 1: False, 2: True}, "one frame per 100 ms slot"
    await agent.stop()

    model_topic = session().topics.model
    face_topic = session().topics.face
    assert [entry[:2] for entry in journal] == [
        ("send", face_topic),
        ("send", face_topic),
        ("send", face_topic),
        ("send", model_topic),  # frame 2 is in the next window: window 0 goes out
        ("ack", "f0"),
        ("ack", "f1"),
    ], "frame 2 stays unacked: its window was still open when the agent stopped"
    [window] = model_readings(journal)
    assert (window.ts_us, window.window_us, window.model) == (T0, 100_000, "fer")
    assert (window.frames_read, window.frames_thinned) == (1, 1)
    assert window.probabilities == {"amusement": 0.8}


async def test_a_performer_whose_frames_stop_gets_their_last_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(processors, "MODEL_IDLE_FLUSH_S", 0.05)
    journal: Journal = []
    faces = FakeFaces()
    agent = FaceAgent(
        cast(Any, faces), RecordingOutput(journal), max_lag_us=500_000, model=model_lane()
    )
    await agent.take(FakeEvent(journal, "f0"), video_frame(0))
    await settle()
    faces.results[0].set_result(FaceResult(message("face 0"), Unread("no_face", "fer")))
    # Read long after it reached Kafka: skipped for the face analysis, thinned for the model.
    stale = FakeEvent(journal, "f1", timestamp=(now_us() - 2_000_000) / 1e6)
    await agent.take(stale, video_frame(1))
    await asyncio.sleep(0.3)
    await agent.stop()
    [window] = model_readings(journal)
    assert (window.frames_read, window.frames_thinned, window.unread) == (0, 1, "thinned")
    assert [entry[1] for entry in journal if entry[0] == "ack"] == ["f0", "f1"]


async def test_a_model_reading_that_cannot_be_produced_leaves_its_frames_unacked() -> None:
    journal: Journal = []
    faces = FakeFaces()
    output = RecordingOutput(journal)

    class Refusing(FakeTopic):
        async def send(self, *, key: bytes, value: bytes, headers: Any) -> None:
            raise RuntimeError("broker gone")

    output.model = Refusing(journal, "model")
    agent = FaceAgent(cast(Any, faces), output, max_lag_us=0, model=model_lane())
    for n in (0, 2):  # two windows
        await agent.take(FakeEvent(journal, f"f{n}"), video_frame(n))
        await settle()
        faces.results[n].set_result(FaceResult(message(f"face {n}"), fer_reading(0.5)))
        await settle()
    await agent.stop()
    assert [entry for entry in journal if entry[0] == "ack"] == []
    assert [str(exc) for exc in output.stops] == ["broker gone"]


def test_a_session_from_before_the_model_lane_gets_no_model_rater(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # No model file in this cache: the rater is never chosen, so nothing is said.
    settings = Settings(cache_dir=tmp_path)
    old = session().model_copy(
        update={"topics": session().topics.model_copy(update={"model": None})}
    )
    with caplog.at_level(logging.WARNING, logger=processors.__name__):
        assert processors.model_rater_of(settings, old) is None
        assert processors.model_rater_of(Settings(model_rater="none"), session()) is None
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("model_rater", "reason"),
    [("fer-mini-xception", "livetag models fetch"), ("frowns", "is no model rater")],
)
def test_a_rater_that_cannot_be_chosen_costs_the_model_lane_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, model_rater: str, reason: str
) -> None:
    # An install upgraded without `livetag models fetch`: no expression model in the cache.
    settings = Settings(cache_dir=tmp_path, model_rater=model_rater)
    with caplog.at_level(logging.WARNING, logger=processors.__name__):
        rater = processors.model_rater_of(settings, session())
    assert rater is None
    assert ModelLane.of(settings, "s-1", rater) is None
    [said] = [r for r in caplog.records if r.name == processors.__name__]
    assert said.levelno == logging.ERROR
    assert "the model lane is off" in said.getMessage()
    assert reason in said.getMessage()
