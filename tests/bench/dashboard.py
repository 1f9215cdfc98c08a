"""Dashboard benchmark: 10 dashboard clients on a 4-performer session, fed at real rates.

A fresh embedded broker; the dashboard server in its own process (`livetag dashboard`, as
`livetag up` runs it); a feeder producing what the processors and the aligner produce for 4
performers (prosody every 10 ms, a face record with 478 landmarks at 15 fps, a label window
every 100 ms, each stamped with the time it is produced); 10 websocket clients that read
every update. feature_to_screen is a face record's ts_us to the client receiving the update
that carries it (the client's JSON parse included, drawing not: the page draws on its next
animation frame).

Last line: {"clients", "update_hz", "feature_to_screen_ms_p95", "server_cpu_cores"}.
Options: --clients, --performers, --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

import aiohttp
import numpy as np

from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session
from streams.session_clock import now_us
from streams.settings import to_environment
from taggers import tokens
from taggers.vocabulary import load_vocabulary
from tests.bench.common import cpu_seconds, fresh_bench_broker, percentile

SECRET = "benchmark-secret-that-is-long-enough-for-signing-tokens"


async def feed(producer: Any, session: records.SessionRecord, seconds: float) -> None:
    rng = np.random.default_rng(3)
    landmarks = records.Landmarks.from_xyz(rng.random((478, 3), dtype=np.float32))
    performers = [p.performer_id for p in session.roster]
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < seconds:
        now = now_us()
        for n, performer in enumerate(performers):
            common = {"session_id": session.session_id, "performer_id": performer}
            batch: list[tuple[str, records.AnyRecord]] = []
            if tick % 10 == 9:  # the last 10 hops in one record, as the processors send
                batch.append(
                    (
                        session.topics.prosody,
                        records.ProsodyHops(
                            ts_us=now - 90_000,
                            hops=[
                                records.ProsodyHop(
                                    ts_us=now - (9 - hop) * 10_000,
                                    f0_hz=150.0 + 30 * np.sin((tick - 9 + hop) / 20 + n),
                                    voicing_probability=0.9,
                                    voiced=True,
                                    loudness_db=-30.0 + 5 * np.cos((tick - 9 + hop) / 15),
                                )
                                for hop in range(10)
                            ],
                            **common,
                        ),
                    )
                )
            if tick % 7 == 0:  # ~15 fps
                batch.append(
                    (
                        session.topics.face,
                        records.FaceFrame(
                            ts_us=now,
                            video_seq=tick,
                            face_present=True,
                            landmarks=landmarks,
                            blendshapes={
                                f"shape{k}": round(float(rng.random()), 3) for k in range(52)
                            },
                            head_pose=records.HeadPose(yaw_deg=1.0, pitch_deg=2.0, roll_deg=3.0),
                            **common,
                        ),
                    )
                )
            if tick % 10 == 0:
                batch.append(
                    (
                        topics.LABELS,
                        records.LabelWindow(
                            ts_us=now // 100_000 * 100_000,
                            window_us=100_000,
                            features=records.WindowFeatures(),
                            raters=[],
                            consensus=None,
                            **common,
                        ),
                    )
                )
            for topic, record in batch:
                message = records.encode(record)
                await producer.send(topic, message.value, key=message.key, headers=message.headers)
        tick += 1
        await asyncio.sleep(max(0.0, start + tick * 0.01 - time.monotonic()))


async def client(url: str, seconds: float, warmup: float, out: dict[str, list[float]]) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        begin = time.monotonic()
        async for message in ws:
            received = now_us()
            update = json.loads(message.data)
            elapsed = time.monotonic() - begin
            if elapsed > seconds:
                return
            if update.get("type") != "update" or elapsed < warmup:
                continue
            out["updates"].append(elapsed)
            for performer in update.get("performers", {}).values():
                face = performer.get("face")
                if face is not None:
                    out["latency_ms"].append((received - face["ts_us"]) / 1000)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with fresh_bench_broker(token_secret=SECRET, dashboard_port=0) as bench:
        settings = bench.settings
        session = await create_session(
            settings,
            prompt="dashboard benchmark",
            performer_names=[f"p{n}" for n in range(args.performers)],
            vocabulary=load_vocabulary(None),
        )
        server = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "infra",
            "dashboard",
            env={**os.environ, **to_environment(settings)},
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert server.stdout is not None
            line = (await asyncio.wait_for(server.stdout.readline(), 60)).decode()
            dashboard_url = line.split()[1].split("/dashboard")[0]
            token = tokens.issue(
                SECRET.encode(),
                session_id=session.session_id,
                role="director",
                participant_id="director",
                ttl_s=600,
                kind="session",  # a session credential, as the page holds
            )
            url = f"{dashboard_url.replace('http', 'ws')}/ws/dashboard?token={token}"
            producer = clients.make_producer(settings)
            await producer.start()
            results: list[dict[str, list[float]]] = [
                {"updates": [], "latency_ms": []} for _ in range(args.clients)
            ]
            warmup = 5.0
            feeding = asyncio.create_task(feed(producer, session, args.seconds + warmup + 2))
            readers = [
                asyncio.create_task(client(url, args.seconds + warmup, warmup, out))
                for out in results
            ]
            await asyncio.sleep(warmup)
            cpu_start, wall_start = cpu_seconds(server.pid), time.monotonic()
            await asyncio.gather(*readers)
            cpu = (cpu_seconds(server.pid) - cpu_start) / (time.monotonic() - wall_start)
            feeding.cancel()
            await asyncio.gather(feeding, return_exceptions=True)
            await producer.stop()
        finally:
            server.terminate()
            await server.wait()
    latencies = [value for out in results for value in out["latency_ms"]]
    rates = [len(out["updates"]) / args.seconds for out in results]
    return {
        "clients": args.clients,
        "update_hz": round(min(rates), 2) if rates else None,
        "feature_to_screen_ms_p95": percentile(latencies, 0.95),
        "server_cpu_cores": round(cpu, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--performers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=30.0)
    print(json.dumps(asyncio.run(run(parser.parse_args()))))


if __name__ == "__main__":
    main()
