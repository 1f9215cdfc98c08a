"""Lag benchmark: a lagging feature stream and a reconnect, and what the labels make of them.

The session's processors (with the aligner) run for real under ``livetag worker`` on a
fresh embedded broker. The benchmark is the feature producer: for 2 performers it writes
prosody records (10 hops of 10 ms each, every 100 ms) and face records (15 fps) to the
session's feature topics in real time, stamped on the session clock, with steady made-up
measures (the aligner summarises whatever they are). Meanwhile:
- performer 1's face stream is held back in bursts (0.5, 2, 5 and 15 s by default): its
  records are kept, then written all at once, late, as a stalled face analysis would;
- performer 2 leaves the call and rejoins 3 s later (presence on the session record), with
  no media in between;
- at the end the session is ended, so the last windows go out without the full wait.
Then every label window of the session is read from ``livetag.labels``.

Last line: {"label_windows_expected", "label_windows_final", "label_windows_incomplete_final",
"label_windows_duplicated", "late_features_lost", "counters_match", "details"}:
- expected: per performer, every window from their first to their last written instant;
- final: of those, the windows with at least one revision on the topic;
- incomplete_final: of those, the ones whose newest revision lacks a stream that had
  features written for it (``missing`` other than ``no_media``/``ended`` in a gap or after
  the leave); details break all incomplete ones down by reason and where they are;
- duplicated: label records with the same window and revision read more than once;
- late_features_lost: hops and face frames written whose window's newest revision does not
  count them (counted by the benchmark from ``features.prosody_hops``/``face_frames``);
- counters_match: 1 when the aligner's counters on the session's health record
  (``livetag.health``, what ``/metrics`` exports) equal what the benchmark counted from the
  label records for every performer (windows emitted, incomplete, without media,
  revisions, late features revised and lost, hops and face frames summarised), else 0;
  details.counters has both sides.
Options: --seconds, --bursts (seconds, comma-separated), --warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

from infra.worker import ProcessorWorker
from streams import records
from streams.kafka import clients, health, sessions, topics
from streams.kafka.sessions import create_session
from streams.session_clock import now_us
from streams.settings import Settings
from taggers.vocabulary import load_vocabulary
from tests.bench.common import fresh_bench_broker

STEP_US = 100_000  # the producer writes what was "captured" in each 100 ms
HOP_US = 10_000
FACE_US = 66_667
REJOIN_AFTER_S = 3.0
QUIET_S = 5.0  # labels are read until none came for this long after the session ended


@dataclass
class Burst:
    start_s: float
    length_s: float


@dataclass
class PerformerFeed:
    """What the benchmark wrote for one performer, by label window."""

    performer_id: str
    hops: Counter[int] = field(default_factory=Counter)  # window -> hops written
    faces: Counter[int] = field(default_factory=Counter)  # window -> face frames written
    first_us: int | None = None
    last_us: int = 0
    gaps: list[tuple[int, int]] = field(default_factory=list)  # no media in [start, end)

    def wrote(self, ts_us: int, face: bool, window_us: int) -> None:
        (self.faces if face else self.hops)[ts_us // window_us] += 1
        self.first_us = ts_us if self.first_us is None else min(self.first_us, ts_us)
        self.last_us = max(self.last_us, ts_us)


def prosody_record(session_id: str, performer_id: str, start_us: int) -> records.ProsodyHops:
    frames = [
        records.ProsodyFrame(
            ts_us=start_us + n * HOP_US,
            session_id=session_id,
            performer_id=performer_id,
            f0_hz=180.0 + n,
            voicing_probability=0.9,
            voiced=True,
            loudness_db=-25.0,
        )
        for n in range(STEP_US // HOP_US)
    ]
    return records.ProsodyHops.of(frames)


def face_record(session_id: str, performer_id: str, ts_us: int, seq: int) -> records.FaceFrame:
    return records.FaceFrame(
        ts_us=ts_us,
        session_id=session_id,
        performer_id=performer_id,
        video_seq=seq,
        face_present=True,
        blendshapes={"mouthSmileLeft": 0.4, "browInnerUp": 0.2},
        head_pose=records.HeadPose(yaw_deg=1.0, pitch_deg=-2.0, roll_deg=0.5),
    )


async def send(producer: AIOKafkaProducer, topic: str, record: records.AnyRecord) -> None:
    message = records.encode(record)
    await producer.send(topic, message.value, key=message.key, headers=message.headers)


async def set_presence(
    producer: AIOKafkaProducer,
    current: records.SessionRecord,
    performer_id: str,
    connected: bool,
) -> records.SessionRecord:
    """A join or leave on the session's record, as the capture server writes it."""
    stamp = max(now_us(), current.ts_us + 1)
    others = [p for p in current.presence if p.participant_id != performer_id]
    presence = records.Presence(
        participant_id=performer_id, role="performer", connected=connected, since_ts_us=stamp
    )
    updated = current.model_copy(
        update={"ts_us": stamp, "presence": [*others, presence], "state": "live"}
    )
    await sessions.publish(producer, updated)
    return updated


async def produce(
    settings: Settings,
    session: records.SessionRecord,
    seconds: float,
    bursts: list[Burst],
    rejoin_at_s: float,
) -> tuple[dict[str, PerformerFeed], dict[str, Any]]:
    window_us = settings.label_window_ms * 1000
    held_performer, rejoining = (p.performer_id for p in session.roster[:2])
    feeds = {p.performer_id: PerformerFeed(p.performer_id) for p in session.roster}
    producer = clients.make_producer(settings, linger_ms=5)
    await producer.start()
    current = session
    held: list[records.FaceFrame] = []
    face_seq: Counter[str] = Counter()
    next_face_us: dict[str, int] = {}
    notes: dict[str, Any] = {"releases": [], "leave_s": None, "rejoin_s": None}
    try:
        for performer_id in feeds:
            current = await set_presence(producer, current, performer_id, True)
        started_us = now_us() // STEP_US * STEP_US
        step_start = started_us
        away = False
        while step_start < started_us + round(seconds * 1e6):
            step_end = step_start + STEP_US
            # Written in real time: each step once the session clock is past it.
            await asyncio.sleep(max(0.0, (step_end - now_us()) / 1e6))
            elapsed_s = (step_start - started_us) / 1e6
            # The reconnect: performer 2 leaves, nothing is captured, they come back.
            if not away and rejoin_at_s <= elapsed_s < rejoin_at_s + REJOIN_AFTER_S:
                away = True
                notes["leave_s"] = elapsed_s
                current = await set_presence(producer, current, rejoining, False)
                feeds[rejoining].gaps.append((step_start, 0))
            elif away and elapsed_s >= rejoin_at_s + REJOIN_AFTER_S:
                away = False
                notes["rejoin_s"] = elapsed_s
                current = await set_presence(producer, current, rejoining, True)
                feeds[rejoining].gaps[-1] = (feeds[rejoining].gaps[-1][0], step_start)
            holding = any(b.start_s <= elapsed_s < b.start_s + b.length_s for b in bursts)
            if held and not holding:
                # The stalled analysis catches up: its backlog all at once (in order, before
                # what it analyses live), then live.
                for frame in held:
                    await send(producer, session.topics.face, frame)
                notes["releases"].append({"released_s": elapsed_s, "frames": len(held)})
                held.clear()
            for performer_id, feed in feeds.items():
                if performer_id == rejoining and away:
                    next_face_us[performer_id] = step_end
                    continue
                record = prosody_record(session.session_id, performer_id, step_start)
                await send(producer, session.topics.prosody, record)
                for hop in record.hops:
                    feed.wrote(hop.ts_us, False, window_us)
                ts = next_face_us.setdefault(performer_id, step_start)
                while ts < step_end:
                    face_seq[performer_id] += 1
                    seq = face_seq[performer_id]
                    frame = face_record(session.session_id, performer_id, ts, seq)
                    feed.wrote(ts, True, window_us)
                    if performer_id == held_performer and holding:
                        held.append(frame)
                    else:
                        await send(producer, session.topics.face, frame)
                    ts += FACE_US
                next_face_us[performer_id] = ts
            step_start = step_end
        for frame in held:
            await send(producer, session.topics.face, frame)
        await producer.flush()
        # The session ends: every performer out of the call, the last windows go out.
        ended = current.model_copy(
            update={"ts_us": max(now_us(), current.ts_us + 1), "state": "ended"}
        )
        await sessions.publish(producer, ended)
        notes["started_us"] = started_us
    finally:
        await producer.stop()
    return feeds, notes


async def read_labels(settings: Settings, session_id: str) -> list[records.LabelWindow]:
    """Every label window of the session, once none came for QUIET_S."""
    consumer = clients.make_consumer(settings)
    await consumer.start()
    prefix = f"{session_id}/".encode()
    windows: list[records.LabelWindow] = []
    try:
        partitions = [TopicPartition(topics.LABELS, n) for n in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        quiet_since = time.monotonic()
        while time.monotonic() - quiet_since < QUIET_S:
            batches = await consumer.getmany(timeout_ms=500)
            for batch in batches.values():
                for message in batch:
                    if (message.key or b"").startswith(prefix):
                        windows.append(
                            records.decode(records.LabelWindow, message.value, message.headers)
                        )
                        quiet_since = time.monotonic()
    finally:
        await consumer.stop()
    return windows


def count_from_labels(
    feeds: dict[str, PerformerFeed], windows: list[records.LabelWindow], window_us: int
) -> dict[str, dict[str, int]]:
    """What the aligner's counters should say, from its label records and what was
    written: nothing but feature revisions correct a window here (no tags)."""
    by_revision: dict[tuple[str, int], dict[int, records.LabelWindow]] = defaultdict(dict)
    for window in windows:
        by_revision[(window.performer_id, window.ts_us // window_us)].setdefault(
            window.revision, window
        )
    counted = {
        performer_id: dict.fromkeys(
            (
                "windows_emitted",
                "windows_incomplete",
                "windows_without_media",
                "window_revisions",
                "late_features_revised",
                "late_features_lost",
                "prosody_hops",
                "face_frames",
            ),
            0,
        )
        for performer_id in feeds
    }
    for (performer_id, index), revisions in by_revision.items():
        counts = counted[performer_id]
        first = revisions[min(revisions)]
        newest = revisions[max(revisions)]
        counts["windows_emitted"] += 1
        counts["window_revisions"] += len(revisions) - 1
        counts["prosody_hops"] += newest.features.prosody_hops
        counts["face_frames"] += newest.features.face_frames
        if first.missing:
            counts["windows_incomplete"] += 1
            features = first.features
            if len(first.missing) == 2 and not (
                features.prosody_hops or features.face_frames or features.face_frames_skipped
            ):
                counts["windows_without_media"] += 1

        def frames(window: records.LabelWindow) -> int:
            features = window.features
            return features.prosody_hops + features.face_frames + features.face_frames_skipped

        counts["late_features_revised"] += frames(newest) - frames(first)
        feed = feeds[performer_id]
        written = feed.hops[index] + feed.faces[index]
        counts["late_features_lost"] += max(0, written - frames(newest))
    return counted


def tally(
    feeds: dict[str, PerformerFeed],
    windows: list[records.LabelWindow],
    window_us: int,
    bursts: list[Burst],
    started_us: int,
) -> dict[str, Any]:
    newest: dict[tuple[str, int], records.LabelWindow] = {}
    copies: Counter[tuple[str, int, int]] = Counter()
    for window in windows:
        identity = (window.performer_id, window.ts_us // window_us)
        copies[(*identity, window.revision)] += 1
        known = newest.get(identity)
        if known is None or window.revision > known.revision:
            newest[identity] = window
    expected = 0
    final = 0
    outside = 0
    lost = 0
    incomplete: Counter[str] = Counter()
    lost_where: Counter[str] = Counter()
    incomplete_with_features = 0
    revised = sum(1 for window in newest.values() if window.revision > 0)
    longest = max((b for b in bursts), key=lambda b: b.length_s, default=None)
    for performer_id, feed in feeds.items():
        if feed.first_us is None:
            continue
        first, last = feed.first_us // window_us, feed.last_us // window_us
        expected += last - first + 1
        for who, index in newest:
            if who == performer_id and not first <= index <= last:
                outside += 1
        for index in range(first, last + 1):
            found = newest.get((performer_id, index))
            if found is None:
                continue
            window = found
            final += 1
            at_s = (index * window_us - started_us) / 1e6
            where = f"{performer_id}@{at_s:.1f}s"
            if longest is not None and longest.start_s <= at_s < longest.start_s + longest.length_s:
                where = f"burst_{longest.length_s:g}s"
            elif any(
                start <= (index + 1) * window_us and index * window_us < end
                for start, end in feed.gaps
            ):
                where = "reconnect_gap"
            elif index >= last - 1:
                where = "session_end"
            features = window.features
            window_lost = max(0, feed.hops[index] - features.prosody_hops) + max(
                0, feed.faces[index] - features.face_frames - features.face_frames_skipped
            )
            if window_lost:
                lost += window_lost
                lost_where[where] += window_lost
            if not window.missing:
                continue
            for stream, reason in window.missing.items():
                incomplete[f"{where}/{stream}:{reason}"] += 1
            written = {"prosody": feed.hops[index], "face": feed.faces[index]}
            if any(written[stream] for stream in window.missing):
                incomplete_with_features += 1
    return {
        "label_windows_expected": expected,
        "label_windows_final": final,
        "label_windows_incomplete_final": incomplete_with_features,
        "label_windows_duplicated": sum(count - 1 for count in copies.values() if count > 1),
        "late_features_lost": lost,
        "details": {
            "label_records": len(windows),
            "windows_revised": revised,
            "windows_outside_written_range": outside,
            "incomplete_by_where_stream_reason": dict(sorted(incomplete.items())),
            "late_features_lost_by_where": dict(sorted(lost_where.items())),
        },
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    bursts = []
    at_s = 10.0
    for length in args.bursts:
        bursts.append(Burst(at_s, length))
        at_s += length + 10.0
    rejoin_at_s = at_s
    if rejoin_at_s + REJOIN_AFTER_S + 5.0 > args.seconds:
        raise SystemExit(f"--seconds {args.seconds} leaves no room for the bursts and rejoin")
    async with fresh_bench_broker() as bench:
        settings = bench.settings
        session = await create_session(
            settings,
            prompt="lag benchmark",
            performer_names=["held", "rejoining"],
            vocabulary=load_vocabulary(None),
        )
        stop = asyncio.Event()
        worker = asyncio.create_task(
            ProcessorWorker(settings, only_sessions={session.session_id}).run(stop)
        )
        try:
            # The processors join their group before the first record is written.
            await asyncio.sleep(args.warm_up)
            print(f"lag: writing features for {args.seconds} s", file=sys.stderr)
            feeds, notes = await produce(settings, session, args.seconds, bursts, rejoin_at_s)
            print("lag: session ended; reading the labels", file=sys.stderr)
            windows = await read_labels(settings, session.session_id)
            exported = await health.read_counters(settings, session.session_id)
        finally:
            stop.set()
            await worker
    window_us = settings.label_window_ms * 1000
    session_id = session.session_id
    result = tally(feeds, windows, window_us, bursts, notes.pop("started_us"))
    counted = count_from_labels(feeds, windows, window_us)
    compared: dict[str, Any] = {}
    for performer_id, expected_counts in counted.items():
        record = exported.get((session_id, performer_id, "aligner"))
        have = {} if record is None else record.counters
        compared[performer_id] = {
            name: {"counted": value, "exported": have.get(name, 0)}
            for name, value in expected_counts.items()
        }
    result["counters_match"] = int(
        all(
            entry["counted"] == entry["exported"]
            for counts in compared.values()
            for entry in counts.values()
        )
    )
    result["details"]["counters"] = compared
    result["details"]["schedule"] = {
        "bursts": [{"start_s": b.start_s, "length_s": b.length_s} for b in bursts],
        **notes,
    }
    result["details"]["label_feature_wait_ms"] = settings.label_feature_wait_ms
    per_performer: defaultdict[str, int] = defaultdict(int)
    for window in windows:
        per_performer[window.performer_id] += 1
    result["details"]["label_records_by_performer"] = dict(per_performer)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument(
        "--bursts",
        type=lambda text: [float(part) for part in text.split(",") if part],
        default=[0.5, 2.0, 5.0, 15.0],
        help="lengths in seconds of the face stream's hold-backs",
    )
    parser.add_argument("--warm-up", type=float, default=8.0)
    result = asyncio.run(run(parser.parse_args()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
