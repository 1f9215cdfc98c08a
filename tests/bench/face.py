"""Face analysis throughput: JPEG decode + landmarks + blendshapes + pose + record encode.

Run: ``.venv/bin/python -m tests.bench.face``. Feeds JPEG frames of the Wolfgang face video
(encoded as the capture server does) through :class:`streams.features.face.FaceAnalyzer`:

- one thread pinned to one core: per-frame time, p50/p99, frames/s per core;
- two threads, one analyzer each, on all allowed cores: total frames/s;
- two processes, one analyzer each, on all allowed cores: total frames/s (threads against
  processes for the processors' pool: mediapipe and PyAV release the GIL, so threads only
  lose what Python holds between inferences);
- bytes per face record (JSON), and what the landmarks would take as JSON float lists.

The last line is one JSON object (``frames_per_s_per_core``, ``ms_per_frame_p50``,
``ms_per_frame_p99`` and extras).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import av

from capture.fork import JpegEncoder
from streams import records
from streams.features import face, face_model
from streams.settings import Settings
from tests import media as test_media

SESSION = "bench"
PERFORMER = "alice"
WIDTH, HEIGHT = 640, 360
FRAME_US = 66_667  # the capture server's default 15 fps


def jpeg_frames(
    path: Path, *, every: int = 1, limit: int | None = None, quality: int = 80
) -> Iterator[bytes]:
    """JPEG frames of a video file, scaled to 640x360 and encoded like the capture server."""
    encoder = JpegEncoder(quality)
    taken = 0
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % every:
                continue
            yield encoder.encode(frame, WIDTH, HEIGHT)
            taken += 1
            if limit is not None and taken >= limit:
                return


def video_frame(jpeg: bytes, seq: int, ts_us: int) -> records.VideoFrame:
    header = records.VideoFrameHeader(
        ts_us=ts_us,
        session_id=SESSION,
        performer_id=PERFORMER,
        seq=seq,
        timing="sender_report",
        width=WIDTH,
        height=HEIGHT,
    )
    return records.VideoFrame(header=header, jpeg=jpeg)


def _run(model: Path, frames: list[records.VideoFrame], passes: int) -> list[float]:
    """Seconds per frame: analyse + encode the record, as a worker would."""
    times: list[float] = []
    with face.FaceAnalyzer(model, SESSION, PERFORMER) as analyzer:
        for p in range(passes):
            for i, frame in enumerate(frames):
                # Later passes continue the timeline, as a long stream would.
                ts = (p * len(frames) + i) * FRAME_US
                shifted = video_frame(frame.jpeg, frame.header.seq, ts)
                start = time.perf_counter()
                records.encode(analyzer.analyze(shifted))
                times.append(time.perf_counter() - start)
    return times


def _timed_run(
    model: Path, frames: list[records.VideoFrame], passes: int
) -> tuple[int, float, float]:
    _run(model, frames[:10], 1)  # warm-up outside the timed span
    start = time.time()
    done = len(_run(model, frames, passes))
    return done, start, time.time()


def _record_sizes(model: Path, frames: list[records.VideoFrame]) -> dict[str, float]:
    with face.FaceAnalyzer(model, SESSION, PERFORMER) as analyzer:
        out = [analyzer.analyze(f) for f in frames]
    present = [f for f in out if f.face_present and f.landmarks is not None]
    json_bytes = [len(records.encode(f).value) for f in present]
    zlib_bytes = [len(zlib.compress(records.encode(f).value)) for f in present]
    sample = present[len(present) // 2]
    assert sample.landmarks is not None
    xyz = sample.landmarks.xyz().astype(float)
    packed = len(sample.landmarks.model_dump_json())

    def as_list(decimals: int | None) -> int:
        values = xyz.tolist() if decimals is None else xyz.round(decimals).tolist()
        return len(json.dumps(values, separators=(",", ":")))

    absent = records.FaceFrame(
        ts_us=0, session_id=SESSION, performer_id=PERFORMER, video_seq=0, face_present=False
    )
    return {
        "record_bytes": round(statistics.mean(json_bytes)),
        "record_bytes_zlib": round(statistics.mean(zlib_bytes)),
        "record_bytes_no_face": len(records.encode(absent).value),
        "landmarks_f16_base64_bytes": packed,
        "landmarks_json_list_full_bytes": as_list(None),
        "landmarks_json_list_4dp_bytes": as_list(4),
        "landmarks_json_list_3dp_bytes": as_list(3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.face", description=__doc__)
    parser.add_argument("--frames", type=int, default=200, help="distinct frames (default 200)")
    parser.add_argument("--passes", type=int, default=2, help="passes over them (default 2)")
    args = parser.parse_args(argv)

    model = face_model.resolve(Settings())
    media = test_media.prepare()
    jpegs = list(jpeg_frames(media.wolfgang_mp4, every=2, limit=args.frames))
    frames = [video_frame(j, i, i * FRAME_US) for i, j in enumerate(jpegs)]
    print(f"{len(frames)} frames, mean JPEG {statistics.mean(map(len, jpegs)):,.0f} bytes")

    allowed = os.sched_getaffinity(0)
    # One thread on one core: pin, so mediapipe's or FFmpeg's helper threads (if any)
    # cannot borrow the other core and flatter the number.
    os.sched_setaffinity(0, {min(allowed)})
    try:
        _run(model, frames[:20], 1)  # warm-up: first inferences are slow
        times = sorted(_run(model, frames, args.passes))
    finally:
        os.sched_setaffinity(0, allowed)
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, round(0.99 * len(times)))]
    per_core = len(times) / sum(times)
    print(f"1 thread, 1 core: {per_core:.1f} frames/s, p50 {p50 * 1e3:.2f} ms, p99 {p99 * 1e3:.2f}")

    threads = 2
    results: list[tuple[int, float, float]] = [(0, 0.0, 0.0)] * threads

    def worker(slot: int) -> None:
        results[slot] = _timed_run(model, frames, args.passes)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    # Timed from the first frame to the last (warm-up and landmarker creation excluded).
    done = sum(count for count, _, _ in results)
    two_thread = done / (max(end for _, _, end in results) - min(s for _, s, _ in results))
    print(f"{threads} threads, {len(allowed)} cores: {two_thread:.1f} frames/s")

    # The same work in two processes (forkserver: a fresh interpreter, as a worker pool
    # would start one); timed from the first frame to the last, start-up excluded.
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=2, mp_context=context) as processes:
        spans = list(processes.map(_timed_run, [model] * 2, [frames] * 2, [args.passes] * 2))
    frames_done = sum(count for count, _, _ in spans)
    two_process = frames_done / (max(end for _, _, end in spans) - min(s for _, s, _ in spans))
    print(f"2 processes, {len(allowed)} cores: {two_process:.1f} frames/s")

    sizes = _record_sizes(model, frames[:50])
    print(json.dumps(sizes))
    summary = {
        "frames_per_s_per_core": round(per_core, 1),
        "ms_per_frame_p50": round(p50 * 1e3, 2),
        "ms_per_frame_p99": round(p99 * 1e3, 2),
        "frames_per_s_2_threads": round(two_thread, 1),
        "frames_per_s_2_processes": round(two_process, 1),
        "cores": len(allowed),
        "frames_measured": len(times),
        **sizes,
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
