"""The aligner's counters on the session's health record stay true across a performer's
leave and rejoin and a processor worker killed mid-scene (SIGKILL, then started again)."""

from __future__ import annotations

import asyncio
import signal

import pytest

from streams import records
from streams.kafka import health
from streams.kafka.sessions import create_session
from streams.settings import Settings
from taggers.vocabulary import load_vocabulary
from tests.bench.lag import (
    Burst,
    PerformerFeed,
    count_from_labels,
    produce,
    read_labels,
    tally,
)
from tests.integration.test_processor_takeover import start_processor

pytestmark = pytest.mark.integration

SECONDS = 34.0
# After the rejoin (8-11 s), while features keep coming, and once the first windows are
# older than the grace: their counts are carried over, the rest counted again.
KILL_AT_S = 26.0
GRACE_S = 11.0  # the least the waits allow: label_feature_wait_ms + label_tag_wait_ms
# A successor reads back the windows of the last grace + max hold + 10 s (23 s here): the
# first ones it must take from the carried counts.
MAX_HOLD_MS = 2000
WARM_UP_S = 8.0


def missing_windows(
    feeds: dict[str, PerformerFeed],
    windows: list[records.LabelWindow],
    window_us: int,
    started_us: int,
) -> dict[str, list[tuple[float, float]]]:
    """Per performer, the stretches (seconds into the run) with no label window."""
    seen = {(w.performer_id, w.ts_us // window_us) for w in windows}
    stretches: dict[str, list[tuple[float, float]]] = {}
    for performer_id, feed in feeds.items():
        if feed.first_us is None:
            continue
        gone = [
            index
            for index in range(feed.first_us // window_us, feed.last_us // window_us + 1)
            if (performer_id, index) not in seen
        ]
        runs: list[tuple[float, float]] = []
        for index in gone:
            at = round((index * window_us - started_us) / 1e6, 1)
            if runs and round(runs[-1][1] + window_us / 1e6, 1) >= at:
                runs[-1] = (runs[-1][0], at)
            else:
                runs.append((at, at))
        stretches[performer_id] = runs
    return stretches


async def test_counters_equal_what_the_labels_show_after_a_rejoin_and_a_killed_worker(
    settings: Settings,
) -> None:
    settings = settings.model_copy(
        update={"label_grace_s": GRACE_S, "tag_max_hold_ms": MAX_HOLD_MS}
    )
    session = await create_session(
        settings,
        prompt="counters",
        performer_names=["held", "rejoining"],
        vocabulary=load_vocabulary(None),
    )
    worker = await start_processor(settings, session)
    replacement = None
    try:
        await asyncio.sleep(WARM_UP_S)
        writing = asyncio.create_task(
            produce(settings, session, SECONDS, [Burst(4.0, 1.0)], rejoin_at_s=8.0)
        )
        await asyncio.sleep(KILL_AT_S)
        worker.send_signal(signal.SIGKILL)
        await worker.wait()
        replacement = await start_processor(settings, session)
        feeds, notes = await writing
        windows = await read_labels(settings, session.session_id)
        exported = await health.read_counters(settings, session.session_id)
    finally:
        for process in (worker, replacement):
            if process is not None and process.returncode is None:
                process.terminate()
                await process.wait()
    window_us = settings.label_window_ms * 1000
    figures = tally(feeds, windows, window_us, [Burst(4.0, 1.0)], notes["started_us"])
    # Every window of both performers is there, once in its final revision.
    assert figures["label_windows_final"] == figures["label_windows_expected"], (
        figures,
        missing_windows(feeds, windows, window_us, notes["started_us"]),
    )
    assert figures["details"]["windows_outside_written_range"] == 0, figures
    # The rejoin's gap is there too, saying there was no media.
    gap = figures["details"]["incomplete_by_where_stream_reason"]
    assert gap.get("reconnect_gap/prosody:no_media", 0) >= 20, gap
    counted = count_from_labels(feeds, windows, window_us)
    for performer_id, expected in counted.items():
        record = exported.get((session.session_id, performer_id, "aligner"))
        assert record is not None, f"no counters for {performer_id}"
        got = {name: record.counters.get(name, 0) for name in expected}
        assert got == expected, performer_id
