"""The ledger through the real broker: cues on livetag.cues give the label windows their
intent, a shown record that comes after the windows revises them, and each performer's
coverage goes to livetag.coverage."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from infra.worker import ProcessorWorker
from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import create_session
from streams.settings import Settings
from taggers.vocabulary import load_vocabulary
from tests.integration.test_aligner import face_frames, prosody_hops, send, tag
from tests.samples import SCENARIO

pytestmark = pytest.mark.integration

W = 100_000


def cue(
    session_id: str,
    cue_id: str,
    sent_us: int,
    kind: records.CueKind = "emotion",
    label: str | None = None,
    *,
    shown_us: int | None = None,
    text: str = "",
) -> records.Cue:
    return records.Cue(
        ts_us=sent_us,
        session_id=session_id,
        performer_id="alice",
        cue_id=cue_id,
        kind=kind,
        label=label,
        text=text,
        sent_by="director",
        shown_ts_us=shown_us,
        shown=None
        if shown_us is None
        else records.CueShown(client_shown_ts_us=shown_us, clock_offset_us=0, rtt_us=3_000),
    )


def label_of(window: records.LabelWindow) -> str | None:
    return None if window.intent is None else window.intent.label


async def test_cues_become_the_intent_of_windows_and_coverage_is_published(
    settings: Settings,
) -> None:
    own = settings.model_copy(update={"coverage_interval_s": 0.5})
    async with clients.admin_client(own) as admin:
        await topics.ensure_shared_topics(admin, own)
    session = await create_session(
        own,
        prompt=SCENARIO.prompt,
        performer_names=["alice", "bob"],
        vocabulary=load_vocabulary(None),
        scenario=SCENARIO,
        roles={"alice": "the friend", "bob": "the widower"},
    )
    sid = session.session_id
    t0 = (time.time_ns() // 1000 // W) * W + 20_000_000  # as in tests/integration/test_aligner
    stop = asyncio.Event()
    worker = asyncio.create_task(ProcessorWorker(own, only_sessions={sid}).run(stop))
    producer = clients.make_producer(own)
    labels_consumer = clients.make_consumer(own, topics.LABELS, auto_offset_reset="earliest")
    coverage_consumer = clients.make_consumer(own, topics.COVERAGE, auto_offset_reset="earliest")
    latest: dict[int, records.LabelWindow] = {}
    revisions: list[records.LabelWindow] = []
    coverage: list[records.Coverage] = []
    await asyncio.gather(producer.start(), labels_consumer.start(), coverage_consumer.start())

    async def collect(condition: Any, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():
                for consumer in (labels_consumer, coverage_consumer):
                    batches = await consumer.getmany(timeout_ms=100)
                    for batch in batches.values():
                        for message in batch:
                            if not (message.key or b"").startswith(f"{sid}/".encode()):
                                continue
                            if consumer is coverage_consumer:
                                coverage.append(
                                    records.decode(records.Coverage, message.value, message.headers)
                                )
                                continue
                            window = records.decode(
                                records.LabelWindow, message.value, message.headers
                            )
                            revisions.append(window)
                            known = latest.get(window.ts_us)
                            if known is None or window.revision > known.revision:
                                latest[window.ts_us] = window

    try:
        # Laughter cued at 200 ms (the page has not said it showed it yet), a line of text
        # at 700 ms; two observers see laughter over 350-550 ms (a point tag's span is
        # centred on it).
        await send(
            producer, topics.CUES, cue(sid, "cue-laugh-0001", t0 + 200_000, label="laughter")
        )
        await send(
            producer, topics.CUES, cue(sid, "cue-text-00001", t0 + 700_000, "text", text="slower")
        )
        for rater in ("obs1", "obs2"):
            await send(
                producer,
                topics.TAGS,
                tag(
                    sid,
                    f"point-{rater}-1",
                    rater,
                    t0 + 450_000,
                    "point",
                    label="laughter",
                    span_us=200_000,
                ),
            )
        hops = prosody_hops(sid, t0, 101)
        for start in range(0, len(hops), 10):
            await send(
                producer, session.topics.prosody, records.ProsodyHops.of(hops[start : start + 10])
            )
        for frame in face_frames(sid, t0, 21):
            await send(producer, session.topics.face, frame)
        await producer.flush()
        await collect(lambda: {t0 + k * W for k in range(10)} <= set(latest), 90)
        first = {k: latest[t0 + k * W] for k in range(10)}
        # The page showed the laughter cue at 400 ms, after its windows went out.
        shown = cue(sid, "cue-laugh-0001", t0 + 200_000, label="laughter", shown_us=t0 + 400_000)
        await send(producer, topics.CUES, shown)
        await producer.flush()
        await collect(lambda: latest[t0 + 2 * W].revision >= 1, 30)
        await collect(
            lambda: any(
                c.performer_id == "alice"
                and c.windows >= 10
                and c.cells.get("laughter", records.CoverageCell()).intended_s == 0.3
                for c in coverage
            ),
            30,
        )
    finally:
        stop.set()
        await worker
        await asyncio.gather(producer.stop(), labels_consumer.stop(), coverage_consumer.stop())
        async with clients.admin_client(own) as admin:
            await topics.delete_session_topics(admin, sid)

    # As first sent: laughter from window 2 (its midpoint 250 ms is after 200 ms) to 6.
    intended = [label_of(first[k]) for k in range(10)]
    assert intended[:7] == [None, None, "laughter", "laughter", "laughter", "laughter", "laughter"]
    for k in range(10):
        intent = first[k].intent
        assert intent is not None, "the friend's targets stand over every window"
        assert intent.targets == ["hesitation", "laughter"]
    text = first[8].intent
    assert text is not None
    assert text.cue is not None
    assert (text.label, text.cue.kind, text.cue.text) == (None, "text", "slower")
    cued = first[3].intent
    assert cued is not None
    assert cued.cue is not None
    assert (cued.source, cued.cue.shown, cued.cue.since_ts_us) == ("cue", False, t0 + 200_000)
    # Once shown at 400 ms: windows 2-3 were not under it yet, 4-6 are, shown.
    final = {k: latest[t0 + k * W] for k in range(10)}
    assert [label_of(final[k]) for k in range(7)] == [
        None,
        None,
        None,
        None,
        "laughter",
        "laughter",
        "laughter",
    ]
    assert all(final[k].correction for k in range(2, 7))
    shown_cue = final[5].intent.cue if final[5].intent else None
    assert shown_cue is not None
    assert (shown_cue.shown, shown_cue.since_ts_us) == (True, t0 + 400_000)
    assert [w.ts_us for w in revisions if w.revision and w.ts_us < t0 + 2 * W] == []
    # The ledger: 300 ms intended, the observers agreed on laughter in windows 3-5 and
    # perceived what was intended in windows 4-5.
    ledger = next(
        c
        for c in reversed(coverage)
        if c.performer_id == "alice"
        and c.cells.get("laughter", records.CoverageCell()).intended_s == 0.3
    )
    laughter = ledger.cells["laughter"]
    assert (laughter.agreed_s, laughter.hit_s) == (0.3, 0.2)
    assert ledger.confusion["laughter"] == {"(none)": 1, "laughter": 2}
    assert ledger.window_us == W


async def test_a_restarted_worker_carries_the_ledger_on(settings: Settings) -> None:
    own = settings.model_copy(update={"coverage_interval_s": 0.5})
    async with clients.admin_client(own) as admin:
        await topics.ensure_shared_topics(admin, own)
    session = await create_session(
        own, prompt="restart", performer_names=["alice"], vocabulary=load_vocabulary(None)
    )
    sid = session.session_id
    t0 = (time.time_ns() // 1000 // W) * W + 20_000_000
    producer = clients.make_producer(own)
    consumer = clients.make_consumer(own, topics.COVERAGE, auto_offset_reset="earliest")
    coverage: list[records.Coverage] = []
    await asyncio.gather(producer.start(), consumer.start())

    async def collect(condition: Any, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():
                batches = await consumer.getmany(timeout_ms=200)
                for batch in batches.values():
                    for message in batch:
                        if (message.key or b"").startswith(f"{sid}/".encode()):
                            coverage.append(
                                records.decode(records.Coverage, message.value, message.headers)
                            )

    async def second(start_us: int) -> None:
        """One second of alice from ``start_us``, two observers seeing laughter in its
        windows 3-5."""
        for rater in ("obs1", "obs2"):
            tagged = tag(
                sid,
                f"point-{rater}-{start_us}",
                rater,
                start_us + 450_000,
                "point",
                label="laughter",
                span_us=200_000,
            )
            await send(producer, topics.TAGS, tagged)
        hops = prosody_hops(sid, start_us, 101)
        for start in range(0, len(hops), 10):
            await send(
                producer, session.topics.prosody, records.ProsodyHops.of(hops[start : start + 10])
            )
        for frame in face_frames(sid, start_us, 21):
            await send(producer, session.topics.face, frame)
        await producer.flush()

    def counted(windows: int) -> Any:
        return lambda: any(c.windows >= windows for c in coverage)

    try:
        await send(
            producer, topics.CUES, cue(sid, "cue-laugh-0001", t0 + 200_000, label="laughter")
        )
        for phase in (0, 1):
            stop = asyncio.Event()
            worker = asyncio.create_task(ProcessorWorker(own, only_sessions={sid}).run(stop))
            try:
                await second(t0 + phase * 1_000_000)
                await collect(counted(10 * (phase + 1)), 90)
            finally:
                stop.set()
                await worker
    finally:
        await asyncio.gather(producer.stop(), consumer.stop())
        async with clients.admin_client(own) as admin:
            await topics.delete_session_topics(admin, sid)

    # The second worker rebuilt what the first counted: never published from nothing.
    assert [c.windows for c in coverage] == sorted(c.windows for c in coverage)
    final = max(coverage, key=lambda c: (c.windows, c.ts_us))
    assert final.windows == 20
    laughter = final.cells["laughter"]
    # Cued from window 2 on, through the restart (the cue in force came back from the
    # windows); agreed and hit in windows 3-5 of each second.
    assert (laughter.intended_s, laughter.agreed_s, laughter.hit_s) == (1.8, 0.6, 0.6)
    assert final.confusion["laughter"] == {"(none)": 12, "laughter": 6}
