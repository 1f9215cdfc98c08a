"""Directing benchmark: a director cues a live scene, measured from the outside.

Run: ``.venv/bin/python -m tests.bench.directing [--cues 200] [--pace-ms 250 400]``.

It starts ``python -m infra up`` as users run it (the scene benchmark's set-up:
tests/bench/scene.py), creates a session of two performers and opens one headless Chromium
per performer on their own join link (publishing the real test clips as camera and
microphone, watching each other) and one on the director's dashboard. Once both call pages
play their partner and the aligner labels both performers, the director's page sends
``--cues`` cues through its own controls' entry point (``window.livetagDashboard.cue``), one
every 250-400 ms: to one performer or to both at random, an emotion of the vocabulary
(normal or strong), a line of text, now and then a clear. Then it ends the session and
waits for the archive, so every label window is in its final revision.

Measured (plain aiokafka readers on ``livetag.cues`` and ``livetag.labels``):
- ``cue_shown_ms_p50`` / ``_p95`` / ``_max``: ``shown_ts_us - ts_us`` of every cue (sent,
  on the dashboard's session clock, to painted, the performer's page on its synced clock);
- ``cues_sent``: every cue record the director asked for (one per performer a cue was
  for: the ids the dashboard acknowledged, and the performers of requests it refused,
  took only in part or did not answer); ``cues_lost``: those never shown, broken down in
  ``cues_lost_by`` as ``refused`` (no record made), ``never_on_topic`` (acknowledged,
  never read on livetag.cues) and ``never_shown`` (on the topic, no shown record within
  SHOWN_WITHIN_S of being sent);
- ``cues_dead_lettered_late``: cue records the aligner dead-lettered as too late for the
  windows they change (read on livetag.deadletter: the aligner's counters are not served),
  next to the ledger figures it explains;
- ``ledger_windows_with_intent``: final label windows whose ``intent.label`` is set;
  ``ledger_windows_expected``: the windows the shown emotion cues cover, computed here from
  the cue records by the ledger's rule (docs/directing.md): a window is under a cue when
  its midpoint is at or after the cue's start (shown, else sent) and before the start of
  the performer's next cue of any kind (of cues shown in the same frame, the one sent
  last is the one on screen); ``ledger_windows_mismatched``: windows whose
  intended label is not the one the cues say.

WebRTC stays on loopback: started outside a loopback-only network namespace, it prepares
the media and re-executes itself inside ``unshare -n``. The last stdout line is one JSON
object; ``result.json`` and ``up``'s log go to ``--results``
(default ``test-artifacts/bench/directing-<timestamp>/``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import Page, async_playwright

from capture.cues import SERVICE as CAPTURE_SERVICE
from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import SessionDirectory, create_session, publish
from streams.session_clock import now_us
from streams.settings import Settings, load_settings
from taggers.tokens import join_links, load_secret
from taggers.vocabulary import load_vocabulary
from tests import media as test_media
from tests.bench.capture import BenchError, free_port
from tests.bench.common import ROOT, percentile, reexec_in_netns
from tests.bench.scene import (
    ARCHIVE_TIMEOUT_S,
    DRAIN_TIMEOUT_S,
    LABEL_FETCH_WAIT_MS,
    WARM_UP_TIMEOUT_S,
    LabelLog,
    LivetagUp,
    TopicReader,
)
from tests.browser import only_loopback, open_page

IN_NETNS_ENV = "BENCH_DIRECTING_IN_NETNS"  # set on the re-exec (not LIVETAG_*: see settings)
CUE_FETCH_WAIT_MS = 20
SHOWN_WITHIN_S = 10.0  # a cue not shown by then is lost
AFTER_LAST_CUE_S = 3.0  # the scene goes on a little after the last cue
TEXT_LINES = (
    "Slower",
    "Look at your partner",
    "Ask a question you already know the answer to",
    "Whisper the next line",
    "You just remembered something embarrassing",
)
CUE_HOOK = "window.livetagDashboard && typeof window.livetagDashboard.cue === 'function'"
PARTNER_PLAYS = """
async (partner) => {
  const stats = (await window.livetag.receiveStats())[partner];
  return Boolean(stats && stats.framesDecoded > 10);
}
"""


@dataclass
class CueLog:
    """Every cue record of the session on livetag.cues: sent and shown, by cue_id, with
    when the shown one reached this reader."""

    session_id: str
    sent: dict[str, records.Cue] = field(default_factory=dict)
    shown: dict[str, records.Cue] = field(default_factory=dict)
    shown_read_us: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    undecodable: int = 0

    def handle(self, message: Any, arrived_us: int) -> None:
        if not (message.key or b"").startswith(f"{self.session_id}/".encode()):
            return
        try:
            cue = records.decode(records.Cue, message.value, message.headers)
        except records.RecordError:
            # Counted (the capture server dead-letters it too); the reader goes on.
            self.undecodable += 1
            return
        book = self.sent if cue.shown_ts_us is None else self.shown
        if cue.cue_id in book:
            self.duplicates += 1
            return
        book[cue.cue_id] = cue
        if cue.shown_ts_us is not None:
            self.shown_read_us[cue.cue_id] = arrived_us

    def unshown(self) -> set[str]:
        return set(self.sent) - set(self.shown)


@dataclass
class Requests:
    """What the director asked for, by the dashboard's replies: the cue ids it
    acknowledged, and the performers of the records it did not make."""

    performers: list[str]
    acknowledged: set[str] = field(default_factory=set)
    refused: Counter[str] = field(default_factory=Counter)  # by reply code
    replies: Counter[str] = field(default_factory=Counter)

    def take(self, asked: dict[str, Any], reply: Any) -> None:
        targets = self.performers if asked["to"] == "all" else [asked["to"]]
        if not isinstance(reply, dict):
            reply = {"type": "error", "code": "no_reply"}
        self.replies[reply.get("code") or reply.get("type", "?")] += 1
        if reply.get("type") == "cue_sent":
            ids = reply.get("cue_ids") or {}
            self.acknowledged.update(ids.values())
            missing = [p for p in targets if p not in ids]
            if missing:
                self.refused["partial"] += len(missing)
            return
        self.refused[str(reply.get("code", "?"))] += len(targets)

    def unsettled(self, cue_log: CueLog) -> bool:
        """Whether some acknowledged cue is not on the topic, or not shown, yet."""
        return any(cue_id not in cue_log.shown for cue_id in self.acknowledged)


def next_cue(rng: random.Random, performers: list[str], labels: list[str]) -> dict[str, Any]:
    """A director's cue as a casting director sends them: mostly emotions."""
    to = rng.choice([*performers, "all"])
    roll = rng.random()
    if roll < 0.7:
        intensity = "strong" if rng.random() < 0.3 else "normal"
        return {"to": to, "kind": "emotion", "label": rng.choice(labels), "intensity": intensity}
    if roll < 0.9:
        return {"to": to, "kind": "text", "text": rng.choice(TEXT_LINES)}
    return {"to": to, "kind": "clear"}


def expected_intent(
    cues: list[records.Cue], windows: list[records.LabelWindow]
) -> dict[tuple[str, int], str]:
    """(performer, window ts_us) -> the label the cues intend there, by the ledger's rule:
    a cue starts when shown (else when sent) and stands until the performer's next cue of
    any kind starts; a window is under the cue in force at its midpoint."""
    starts: dict[str, list[tuple[int, records.Cue]]] = {}
    for cue in cues:
        start = cue.ts_us if cue.shown_ts_us is None else cue.shown_ts_us
        starts.setdefault(cue.performer_id, []).append((start, cue))
    for timeline in starts.values():
        # Cues shown in one frame (a busy page paints the ones that queued up at once)
        # start together: the one sent last is the one on screen.
        timeline.sort(key=lambda item: (item[0], item[1].ts_us))
    expected: dict[tuple[str, int], str] = {}
    for window in windows:
        timeline = starts.get(window.performer_id, [])
        middle = window.ts_us + window.window_us // 2
        in_force = None
        for start, cue in timeline:
            if start > middle:
                break
            in_force = cue
        if in_force is not None and in_force.kind == "emotion" and in_force.label is not None:
            expected[(window.performer_id, window.ts_us)] = in_force.label
    return expected


async def wait_until(page: Page, script: str, arg: Any, timeout_s: float) -> bool:
    with contextlib.suppress(Exception):
        await page.wait_for_function(script, arg=arg, timeout=timeout_s * 1000, polling=500)
        return True
    return False


async def run(
    cue_count: int, pace_ms: tuple[float, float], seed: int, results: Path
) -> dict[str, Any]:
    media = test_media.prepare()
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="livetag-bench-directing-") as tmp:
        work = Path(tmp)
        settings = load_settings(
            broker_port=free_port(),
            capture_port=free_port(),
            dashboard_port=free_port(),
            state_dir=work / "state",
            data_dir=work / "data",
        )
        up = LivetagUp(settings, results / "livetag-up.log")
        async with contextlib.AsyncExitStack() as stack:
            stack.push_async_callback(up.stop, {})
            await up.start()
            print(f"directing: livetag up; log {up.log_path}", file=sys.stderr)
            session = await create_session(
                settings,
                prompt="Two strangers share the last umbrella at a bus stop.",
                performer_names=["alice", "bob"],
                vocabulary=load_vocabulary(None),
            )
            sid = session.session_id
            performers = [p.performer_id for p in session.roster]
            labels = [entry.label for entry in session.vocabulary]
            cue_log = CueLog(sid)
            label_log = LabelLog(sid)
            late_cues = LateCues(sid)

            def labels_and_late_cues(message: Any, arrived_us: int) -> None:
                label_log.handle(message, arrived_us)
                late_cues.handle(message)

            readers = [
                TopicReader(settings, [topics.CUES], CUE_FETCH_WAIT_MS, cue_log.handle),
                TopicReader(
                    settings,
                    [topics.LABELS, topics.DEADLETTER, topics.TAGS],
                    LABEL_FETCH_WAIT_MS,
                    labels_and_late_cues,
                ),
            ]
            for reader in readers:
                stack.push_async_callback(reader.stop)
                await reader.start()
            directory = SessionDirectory(settings)
            await directory.start()
            stack.push_async_callback(directory.stop)

            links = join_links(settings, session, load_secret(settings))
            calls = {
                link.participant_id: link.url
                for link in links
                if link.role == "performer" and link.page == "call"
            }
            dashboard = next(link.url for link in links if link.page == "dashboard")
            playwright = await stack.enter_async_context(async_playwright())
            browsers = await stack.enter_async_context(contextlib.AsyncExitStack())
            pages: dict[str, Page] = {}
            for index, performer in enumerate(performers):
                video, audio = media.performer(index)
                pages[performer] = await browsers.enter_async_context(
                    open_page(
                        calls[performer],
                        video_file=video,
                        audio_file=audio,
                        user_data_dir=work / f"chromium-{performer}",
                        playwright=playwright,
                    )
                )
            director = await browsers.enter_async_context(
                open_page(
                    dashboard, user_data_dir=work / "chromium-director", playwright=playwright
                )
            )

            # ---- warm: both pages play their partner, the director can cue, both labelled
            warm_started = time.monotonic()
            notes: list[str] = []
            if not await wait_until(
                director, f"{CUE_HOOK} && window.livetagDashboard.connected", None, 60
            ):
                raise BenchError("the director's dashboard has no window.livetagDashboard.cue")
            for performer, page in pages.items():
                partner = next(p for p in performers if p != performer)
                if not await wait_until(page, PARTNER_PLAYS, partner, WARM_UP_TIMEOUT_S):
                    notes.append(f"{performer} did not play {partner} before the cues")
            deadline = time.monotonic() + WARM_UP_TIMEOUT_S
            while {w.performer_id for w in label_log.windows.values()} != set(performers):
                up.check()
                if time.monotonic() > deadline:
                    notes.append("not every performer labelled before the cues")
                    break
                await asyncio.sleep(0.5)
            warm_up_s = time.monotonic() - warm_started
            print(f"directing: warm after {warm_up_s:.1f} s; cueing", file=sys.stderr)

            # ---- the cues, at a director's pace
            requests = Requests(performers)
            started_us = now_us()
            next_at = time.monotonic()
            for _ in range(cue_count):
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                next_at = time.monotonic() + rng.uniform(*pace_ms) / 1000
                asked = next_cue(rng, performers, labels)
                reply = await director.evaluate("(c) => window.livetagDashboard.cue(c)", asked)
                requests.take(asked, reply)
            last_sent = time.monotonic()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SHOWN_WITHIN_S):
                    while requests.unsettled(cue_log):
                        up.check()
                        await asyncio.sleep(0.2)
            await asyncio.sleep(max(0.0, AFTER_LAST_CUE_S - (time.monotonic() - last_sent)))
            shown_on_pages = {
                name: await page.evaluate(
                    "({shown: window.livetagCall.cuesShown, paints: window.livetagCall.paints})"
                )
                for name, page in pages.items()
            }
            capture_counts = await capture_cue_counts(settings)
            capture_counts["dashboard"] = await dashboard_cue_counts(settings)

            # ---- the end: every label window in its final revision once archived
            await end_session(settings, directory.get(sid) or session)
            await browsers.aclose()
            archived = await wait_state(directory, sid, "archived", ARCHIVE_TIMEOUT_S, up)
            if not archived:
                notes.append(f"not archived within {ARCHIVE_TIMEOUT_S:g} s")
            for reader in readers:
                await reader.drain(DRAIN_TIMEOUT_S)
    # Every cue record, for a closer look at a run (the ledger's mismatches, the slow ones).
    with (results / "cues.jsonl").open("w") as out:
        for cue in [*cue_log.sent.values(), *cue_log.shown.values()]:
            out.write(cue.model_dump_json() + "\n")
    return summarise(
        cue_log,
        label_log,
        started_us=started_us,
        requests=requests,
        late_cues=late_cues.count,
        shown_on_pages=shown_on_pages,
        capture_counts=capture_counts,
        warm_up_s=warm_up_s,
        notes=notes,
    )


async def capture_cue_counts(settings: Settings) -> dict[str, Any]:
    """The capture server's cue counters (pushed, shown, refused...), from /metrics/cues,
    and its event loop's lag, from /metrics/loop."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{settings.capture_base_url}/metrics/cues") as got:
                counts: dict[str, Any] = await got.json()
            async with http.get(f"{settings.capture_base_url}/metrics/loop") as got:
                counts["loop_lag_ms_p99"] = (await got.json()).get("lag_ms_p99")
            return counts
    return {}


async def dashboard_cue_counts(settings: Settings) -> dict[str, Any]:
    """The dashboard's cue figures (published, how long the broker took), /metrics/clients."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{settings.dashboard_base_url}/metrics/clients") as got,
        ):
            body = await got.json()
            counts: dict[str, Any] = body.get("cues") or {}
            return counts
    return {}


async def end_session(settings: Settings, latest: records.SessionRecord) -> None:
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        stamp = max(now_us(), latest.ts_us + 1)
        await publish(producer, latest.model_copy(update={"state": "ended", "ts_us": stamp}))
    finally:
        await producer.stop()


async def wait_state(
    directory: SessionDirectory, sid: str, state: str, timeout_s: float, up: LivetagUp
) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        current = directory.get(sid)
        if current is not None and current.state == state:
            return True
        if time.monotonic() > deadline:
            return False
        up.check()
        await directory.changed(timeout_s=2.0)


class LateCues:
    """Cue records of the session the aligner dead-lettered (too late for their windows)."""

    def __init__(self, session_id: str) -> None:
        self._prefix = f"{session_id}/"
        self.count = 0

    def handle(self, message: Any) -> None:
        if message.topic != topics.DEADLETTER:
            return
        with contextlib.suppress(records.RecordError):
            letter = records.decode(records.DeadLetter, message.value, message.headers)
            if (
                letter.source_topic == topics.CUES
                and (letter.source_key or "").startswith(self._prefix)
                # The capture server dead-letters undecodable cues: not late ones.
                and letter.service != CAPTURE_SERVICE
            ):
                self.count += 1


def summarise(
    cue_log: CueLog,
    label_log: LabelLog,
    *,
    started_us: int,
    requests: Requests,
    late_cues: int,
    shown_on_pages: dict[str, Any],
    capture_counts: dict[str, Any],
    warm_up_s: float,
    notes: list[str],
) -> dict[str, Any]:
    delays_ms = [
        (cue_log.shown[cue_id].shown_ts_us or 0) / 1000 - sent.ts_us / 1000
        for cue_id, sent in cue_log.sent.items()
        if cue_id in cue_log.shown
    ]
    slowest = slowest_cues(cue_log, shown_on_pages, started_us)
    never_shown = [
        cue_id
        for cue_id, sent in cue_log.sent.items()
        if cue_id in requests.acknowledged
        and cue_log.shown_read_us.get(cue_id, sent.ts_us + 10**12)
        > sent.ts_us + SHOWN_WITHIN_S * 1_000_000
    ]
    never_on_topic = sorted(requests.acknowledged - set(cue_log.sent))
    refused = sum(requests.refused.values())
    lost_by = {
        "refused": refused,
        "never_on_topic": len(never_on_topic),
        "never_shown": len(never_shown),
    }
    cues = [cue_log.shown.get(cue_id, sent) for cue_id, sent in cue_log.sent.items()]
    cued = {cue.performer_id for cue in cues}
    windows = [w for w in label_log.windows.values() if w.performer_id in cued]
    expected = expected_intent(cues, windows)
    with_intent = {
        (w.performer_id, w.ts_us): w.intent.label
        for w in windows
        if w.intent is not None and w.intent.label is not None
    }
    # Windows after the first cue only: before it nothing was intended.
    after_first = [w for w in windows if w.ts_us + w.window_us // 2 >= started_us]
    mismatched = [
        (w.performer_id, w.ts_us, with_intent.get(key), expected.get(key))
        for w in after_first
        if with_intent.get(key := (w.performer_id, w.ts_us)) != expected.get(key)
    ]
    kinds = Counter(cue.kind for cue in cue_log.sent.values())
    return {
        "cue_shown_ms_p50": percentile(delays_ms, 0.50),
        "cue_shown_ms_p95": percentile(delays_ms, 0.95),
        "cue_shown_ms_max": round(max(delays_ms), 2) if delays_ms else None,
        "cues_sent": len(requests.acknowledged) + refused,
        "cues_lost": sum(lost_by.values()),
        "cues_lost_by": lost_by,
        "ledger_windows_with_intent": len(with_intent),
        "ledger_windows_expected": len(expected),
        "cues_dead_lettered_late": late_cues,
        "ledger_windows_mismatched": len(mismatched),
        "cue_requests": sum(requests.replies.values()),
        "cue_replies": dict(requests.replies),
        "cues_refused_by": dict(requests.refused),
        "cue_kinds": dict(kinds),
        "label_windows": len(windows),
        "details": {
            "lost_cue_ids": (never_on_topic + never_shown)[:20],
            # (performer, window ts_us, intended label on the window, by the cues)
            "mismatched_windows": mismatched[:20],
            "shown_on_pages": {
                name: {
                    "shown": page["shown"],
                    "paint_ms_p50": percentile([p["ms"] for p in page["paints"]], 0.5),
                    "paint_ms_p95": percentile([p["ms"] for p in page["paints"]], 0.95),
                }
                for name, page in shown_on_pages.items()
            },
            "slowest_cues": slowest,
            "capture_cues": capture_counts,
            "duplicate_records": cue_log.duplicates,
            "undecodable_records": cue_log.undecodable,
            "dead_letters": label_log.dead_letters[:10],
            "warm_up_s": round(warm_up_s, 1),
            "notes": notes,
        },
    }


def slowest_cues(
    cue_log: CueLog, shown_on_pages: dict[str, Any], started_us: int
) -> dict[str, Any]:
    """Where the slowest twentieth of the cues lost their time: on the page (its message
    to its paint, the page's own measure) or before it (the dashboard's publish, the
    capture server's read and push, the websocket), and when in the run they were sent
    (bursts of load show as clusters)."""
    page_ms = {
        paint["cue_id"]: paint["ms"] for page in shown_on_pages.values() for paint in page["paints"]
    }
    delays = sorted(
        (
            ((shown.shown_ts_us or 0) - sent.ts_us) / 1000,
            cue_id,
            (sent.ts_us - started_us) / 1e6,
        )
        for cue_id, sent in cue_log.sent.items()
        if (shown := cue_log.shown.get(cue_id)) is not None
    )
    tail = delays[len(delays) - max(1, len(delays) // 20) :] if delays else []
    on_page = [page_ms[cue_id] for _, cue_id, _ in tail if cue_id in page_ms]
    before_page = [total - page_ms[cue_id] for total, cue_id, _ in tail if cue_id in page_ms]
    return {
        "count": len(tail),
        "first_cue_unix_s": started_us / 1e6,
        "on_page_ms_p50": percentile(on_page, 0.5),
        "before_page_ms_p50": percentile(before_page, 0.5),
        # (seconds after the first cue, ms sent to shown, ms of it on the page)
        "cues": [
            (round(at_s, 1), round(total, 1), round(page_ms.get(cue_id, -1.0), 1))
            for total, cue_id, at_s in tail[-10:]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--cues", type=int, default=200, help="cues the director sends")
    parser.add_argument(
        "--pace-ms", type=float, nargs=2, default=(250.0, 400.0), help="between two cues"
    )
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--results", type=Path, default=None)
    args = parser.parse_args()
    if args.cues < 1 or min(args.pace_ms) <= 0:
        parser.error("need --cues >= 1 and a positive pace")
    test_media.prepare()  # outside the namespace: building it may need `pip download`
    if not only_loopback():
        reexec_in_netns("tests.bench.directing", IN_NETNS_ENV)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: Path = args.results or ROOT / "test-artifacts" / "bench" / f"directing-{stamp}"
    results.mkdir(parents=True, exist_ok=True)

    async def play() -> dict[str, Any]:
        task = asyncio.current_task()
        assert task is not None
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
        return await run(args.cues, (min(args.pace_ms), max(args.pace_ms)), args.seed, results)

    try:
        result = asyncio.run(play())
    except BenchError as exc:
        raise SystemExit(f"error: {exc}") from None
    except asyncio.CancelledError:
        raise SystemExit("error: stopped by a signal") from None
    (results / "result.json").write_text(json.dumps(result, indent=2))
    print(
        f"directing: {result['cues_lost']} of {result['cues_sent']} cues lost "
        f"{result['cues_lost_by']}; windows with intent {result['ledger_windows_with_intent']}"
        f" of {result['ledger_windows_expected']} expected "
        f"({result['cues_dead_lettered_late']} cues dead-lettered late by the aligner)",
        file=sys.stderr,
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
