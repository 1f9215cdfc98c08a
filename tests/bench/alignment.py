"""Alignment benchmark: simulated raters -> tag service -> livetag.tags -> aligner -> labels.

Each rater is a scripted client (tests.tag_client) over a real websocket, with its own clock
offset (up to +-2.5 s), drift (up to +-50 ppm) and an asymmetric, jittery path: every
message to the server waits 5-80 ms, every message back 5-20 ms, in order. Raters connect,
let clock sync settle (as a rater's page is open before the scene starts), then press point
tags at random instants whose true time is known. The tag service and the session's
processors (with the aligner) run for real on a fresh embedded broker.

Last line: {"alignment_error_ms_p50", "alignment_error_ms_p95", "alignment_error_ms_max",
"tag_ack_ms_p99", "tag_to_label_ms_p99", "tags_sent", "tags_in_labels"}:
- alignment error: the tag's ts_us on livetag.tags minus the true press instant;
- tag ack: tag written to the socket -> ack read from the socket (service + broker, the
  simulated network excluded);
- tag to label: true press -> the first label window holding the tag read from
  livetag.labels, minus the window's length.
Options: --raters, --performers, --seconds, --rate (tags per rater per second), --settle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from typing import Any

from infra.worker import ProcessorWorker
from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session
from streams.settings import Settings
from taggers.vocabulary import load_vocabulary
from tests.bench.common import fresh_bench_broker, percentile
from tests.tag_client import SimulatedClock, TagClient, serve_tags, wall_us


class LabelReader:
    """First arrival of each tag_id in each label window that holds it."""

    def __init__(self, settings: Settings, session_id: str) -> None:
        self.consumer = clients.make_consumer(settings, topics.LABELS, auto_offset_reset="latest")
        self.prefix = f"{session_id}/".encode()
        self.first_seen_us: dict[str, int] = {}  # in any window
        self.seen_in_window_us: dict[tuple[str, int], int] = {}  # (tag_id, window start)
        self.window_us = 0
        self.progress = asyncio.Event()

    async def run(self) -> None:
        while True:
            batches = await self.consumer.getmany(timeout_ms=100)
            read_us = wall_us()
            for batch in batches.values():
                for message in batch:
                    if not (message.key or b"").startswith(self.prefix):
                        continue
                    window = records.decode(records.LabelWindow, message.value, message.headers)
                    self.window_us = window.window_us
                    self.progress.set()
                    for rater in window.raters:
                        for active in rater.labels:
                            self.first_seen_us.setdefault(active.tag_id, read_us)
                            self.seen_in_window_us.setdefault(
                                (active.tag_id, window.ts_us), read_us
                            )


async def rater(
    client: TagClient,
    performers: list[str],
    labels: list[str],
    *,
    seconds: float,
    rate: float,
    rng: random.Random,
    presses: dict[str, int],
) -> None:
    end = asyncio.get_running_loop().time() + seconds
    while True:
        await asyncio.sleep(rng.expovariate(rate))
        if asyncio.get_running_loop().time() >= end:
            return
        press_us = wall_us()
        tag_id = await client.tag(rng.choice(performers), rng.choice(labels), press_us=press_us)
        presses[tag_id] = press_us


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with fresh_bench_broker() as bench:
        settings = bench.settings
        performers = [f"p{n}" for n in range(args.performers)]
        session = await create_session(
            settings,
            prompt="alignment benchmark",
            performer_names=performers,
            vocabulary=load_vocabulary(None),
        )
        performers = [p.performer_id for p in session.roster]
        labels = [entry.label for entry in session.vocabulary]
        stop = asyncio.Event()
        worker = asyncio.create_task(
            ProcessorWorker(settings, only_sessions={session.session_id}).run(stop)
        )
        reader = LabelReader(settings, session.session_id)
        await reader.consumer.start()
        reading = asyncio.create_task(reader.run())
        presses: dict[str, int] = {}
        tag_clients: list[TagClient] = []
        try:
            async with serve_tags(settings, session) as served:
                rng = random.Random(args.seed)
                for n in range(args.raters):
                    path = random.Random(f"{args.seed}/{n}")
                    tag_clients.append(
                        served.client(
                            participant=f"rater{n}",
                            role="observer",
                            clock=SimulatedClock(
                                offset_us=rng.randint(-2_500_000, 2_500_000),
                                drift_ppm=rng.uniform(-50.0, 50.0),
                            ),
                            uplink=lambda path=path: path.uniform(0.005, 0.080),
                            downlink=lambda path=path: path.uniform(0.005, 0.020),
                        )
                    )
                await asyncio.gather(*(client.connect() for client in tag_clients))
                print(f"raters connected; clock sync settling {args.settle} s", file=sys.stderr)
                await asyncio.sleep(args.settle)
                await asyncio.gather(
                    *(
                        rater(
                            client,
                            performers,
                            labels,
                            seconds=args.seconds,
                            rate=args.rate,
                            rng=random.Random(f"{args.seed}/press/{n}"),
                            presses=presses,
                        )
                        for n, client in enumerate(tag_clients)
                    )
                )
                for client in tag_clients:
                    await client.wait_acked(list(client.unacked), timeout_s=30)
                async with asyncio.timeout(30):
                    while len(reader.first_seen_us) < len(presses):
                        await reader.progress.wait()
                        reader.progress.clear()
        except TimeoutError:
            print("timed out waiting for acks or labels", file=sys.stderr)
        finally:
            for client in tag_clients:
                await client.close()
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            await reader.consumer.stop()
            stop.set()
            await worker

    errors_ms: list[float] = []
    ack_ms: list[float] = []
    to_label_ms: list[float] = []
    window = reader.window_us
    for client in tag_clients:
        for tag_id, ack in client.acks.items():
            if tag_id not in presses:
                continue
            errors_ms.append(abs(ack["ts_us"] - presses[tag_id]) / 1000)
            ack_ms.append((client.ack_times_us[tag_id] - client.written_us[tag_id]) / 1000)
            # Its label window: the one holding the tag's instant (a tap's span also
            # reaches into earlier windows, which come out sooner as corrections).
            if window:
                start = ack["ts_us"] // window * window
                seen_us = reader.seen_in_window_us.get((tag_id, start))
                if seen_us is not None:
                    to_label_ms.append((seen_us - presses[tag_id] - window) / 1000)
    if to_label_ms:
        print(
            "tag_to_label ms p0/p50/p90/p100:",
            [percentile(to_label_ms, q) for q in (0.0, 0.5, 0.9, 1.0)],
            file=sys.stderr,
        )
    return {
        "alignment_error_ms_p50": percentile(errors_ms, 0.50),
        "alignment_error_ms_p95": percentile(errors_ms, 0.95),
        "alignment_error_ms_max": round(max(errors_ms), 2) if errors_ms else None,
        "tag_ack_ms_p99": percentile(ack_ms, 0.99),
        "tag_to_label_ms_p99": percentile(to_label_ms, 0.99),
        "tags_sent": len(presses),
        "tags_in_labels": len(set(reader.first_seen_us) & set(presses)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raters", type=int, default=8)
    parser.add_argument("--performers", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=1.0, help="tags per rater per second")
    parser.add_argument("--settle", type=float, default=10.0, help="clock sync before tagging")
    parser.add_argument("--seed", type=int, default=7)
    result = asyncio.run(run(parser.parse_args()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
