"""Broker memory benchmark: back-to-back sessions, archived and dropped, on the embedded broker.

A fresh embedded broker and the recorder in its own process (`livetag recorder`, as
`livetag up` runs it). Sessions of `--session-minutes` (5) with 4 performer-equivalent
media streams (640x360 JPEG from real face video at 15 fps, 16 kHz audio in 20 ms chunks)
are produced faster than real time, one after the other; each is marked ended when its
media is out, and the recorder archives it and deletes its topics. The broker's resident
memory is sampled throughout.

Last line: {"hours_simulated", "broker_rss_mb_max", "broker_rss_mb_end", "records_archived",
"records_produced"}. Options: --hours (2.0), --session-minutes, --performers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av

from capture.fork import JpegEncoder
from streams import records
from streams.archive import store
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session, publish
from streams.settings import Settings, load_settings, to_environment
from taggers.vocabulary import load_vocabulary
from tests import media as test_media
from tests.bench.common import bench_broker


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def face_jpegs(count: int = 30) -> list[bytes]:
    media = test_media.prepare(test_media.default_dir())
    encoder = JpegEncoder(quality=80)
    frames = []
    with av.open(str(media.single_face_mp4)) as container:
        for frame in container.decode(video=0):
            frames.append(encoder.encode(frame, 640, 360))
            if len(frames) == count:
                break
    return frames


async def produce_session(
    settings: Settings, producer: Any, performers: int, seconds: float, jpegs: list[bytes]
) -> tuple[records.SessionRecord, int]:
    session = await create_session(
        settings,
        prompt="broker memory benchmark",
        performer_names=[f"p{n}" for n in range(performers)],
        vocabulary=load_vocabulary(None),
    )
    t0 = time.time_ns() // 1000
    pcm = bytes(640)
    produced = 0
    pending = []
    for tick in range(int(seconds * 50)):  # 20 ms steps
        ts = t0 + tick * 20_000
        for performer in session.roster:
            common = {
                "session_id": session.session_id,
                "performer_id": performer.performer_id,
                "timing": "sender_report",
            }
            items: list[records.AudioChunk | records.VideoFrame] = [
                records.AudioChunk(
                    records.AudioChunkHeader(ts_us=ts, seq=tick, sample_count=320, **common), pcm
                )
            ]
            if tick % 10 in (0, 3, 7):  # 15 of every 50 steps: 15 fps
                frame = tick // 10 * 3 + (0, 3, 7).index(tick % 10)
                items.append(
                    records.VideoFrame(
                        records.VideoFrameHeader(
                            ts_us=ts, seq=frame, width=640, height=360, **common
                        ),
                        jpegs[frame % len(jpegs)],
                    )
                )
            for item in items:
                topic = (
                    session.topics.audio
                    if isinstance(item, records.AudioChunk)
                    else session.topics.video
                )
                message = records.encode(item)
                pending.append(
                    await producer.send(
                        topic, message.value, key=message.key, headers=message.headers
                    )
                )
                produced += 1
        if len(pending) > 2000:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    await publish(
        producer,
        session.model_copy(update={"state": "ended", "ts_us": time.time_ns() // 1000}),
    )
    return session, produced


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="livetag-bench-") as tmp:
        state = Path(tmp)
        base = load_settings().model_copy(
            update={
                "state_dir": state,
                "data_dir": state / "archive",
                "archive_quiet_s": 1.0,
                "archive_release_s": 1.0,
                "label_grace_s": 1.0,
                # Below the grace: the last windows go out before the archive is built.
                "label_feature_wait_ms": 500,
            }
        )
        with bench_broker(base, state) as bench:
            settings = bench.settings
            assert bench.pid is not None, "this benchmark measures the embedded broker"
            async with clients.admin_client(settings) as admin:
                await topics.ensure_shared_topics(admin, settings)
            recorder = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "infra",
                "recorder",
                env={**os.environ, **to_environment(settings)},
            )
            samples: list[float] = []

            async def sample() -> None:
                while True:
                    samples.append(rss_mb(bench.pid))  # type: ignore[arg-type]
                    await asyncio.sleep(0.5)

            sampler = asyncio.create_task(sample())
            jpegs = await asyncio.to_thread(face_jpegs)
            producer = clients.make_producer(settings, linger_ms=50)
            await producer.start()
            sessions: list[records.SessionRecord] = []
            produced = 0
            started = time.monotonic()
            session_s = args.session_minutes * 60
            count = max(1, round(args.hours * 3600 / session_s))
            try:
                for index in range(count):
                    session, made = await produce_session(
                        settings, producer, args.performers, session_s, jpegs
                    )
                    sessions.append(session)
                    produced += made
                    print(
                        f"session {index + 1}/{count} produced ({made} records) after "
                        f"{time.monotonic() - started:.0f} s; broker {samples[-1]:.0f} MB",
                        file=sys.stderr,
                    )
                archived = 0
                deadline = time.monotonic() + 600
                for session in sessions:
                    manifest_path = (
                        store.session_dir(settings, session.session_id) / "manifest.json"
                    )
                    while not manifest_path.is_file() and time.monotonic() < deadline:  # noqa: ASYNC110
                        await asyncio.sleep(0.5)
                    if manifest_path.is_file():
                        counts = json.loads(manifest_path.read_text())["counts"]
                        archived += counts["audio"] + counts["video"]
                await asyncio.sleep(2 * settings.archive_release_s + 2)
                end_rss = rss_mb(bench.pid)
            finally:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
                await producer.stop()
                recorder.terminate()
                await recorder.wait()
    return {
        "hours_simulated": round(count * session_s / 3600, 3),
        "broker_rss_mb_max": round(max(samples), 1),
        "broker_rss_mb_end": round(end_rss, 1),
        "records_archived": archived,
        "records_produced": produced,
        "wall_s": round(time.monotonic() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=float, default=2.0)
    parser.add_argument("--session-minutes", type=float, default=5.0)
    parser.add_argument("--performers", type=int, default=4)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
