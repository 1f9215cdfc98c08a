"""The documented consumer example (docs/consumers.md, "Subscribe to the labeled stream")
runs as written and prints labeled records."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import pytest

from streams import records
from streams.kafka import clients, topics
from streams.settings import Settings
from tests.documentation import marked_block
from tests.tag_client import wall_us

pytestmark = pytest.mark.integration


def readme_example() -> str:
    return marked_block("consumer-example")


def window(
    session_id: str, ts_us: int, revision: int, consensus: str | None
) -> records.LabelWindow:
    return records.LabelWindow(
        ts_us=ts_us,
        session_id=session_id,
        performer_id="alice",
        window_us=100_000,
        features=records.WindowFeatures(f0_mean_hz=210.5, loudness_mean_db=-22.0),
        raters=[]
        if consensus is None
        else [
            records.RaterLabels(
                rater_id="director",
                rater_role="director",
                labels=[
                    records.ActiveLabel(label=consensus, intensity="normal", tag_id="readme-tag-1")
                ],
            )
        ],
        consensus=consensus,
        correction=revision > 0,
        revision=revision,
    )


async def test_the_readme_consumer_prints_the_labeled_stream(
    settings: Settings, tmp_path: Path
) -> None:
    sid = f"readme-{uuid.uuid4().hex[:8]}"
    t0 = wall_us() // 100_000 * 100_000
    sent = [
        window(sid, t0, 0, None),
        window(sid, t0 + 100_000, 0, None),
        window(sid, t0 + 100_000, 1, "laughter"),  # a late tag's correction
        window(sid, t0 + 100_000, 1, "laughter"),  # delivered twice
        window(sid, t0 + 100_000, 0, None),  # an older revision, late
    ]
    async with clients.admin_client(settings) as admin:
        await topics.ensure_shared_topics(admin, settings)
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        for record in sent:
            message = records.encode(record)
            await producer.send_and_wait(
                topics.LABELS, message.value, key=message.key, headers=message.headers
            )
            # Whatever else is on the shared topic (a buggy producer's record) is skipped.
            await producer.send_and_wait(topics.LABELS, b'{"ts_us": 1}', key=message.key)
    finally:
        await producer.stop()
    script = tmp_path / "subscribe_labels.py"
    script.write_text(readme_example(), encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        env={
            **os.environ,
            "LIVETAG_BOOTSTRAP": settings.bootstrap_servers,
            "CONSUMER_GROUP": f"readme-{sid}",
        },
        stdout=asyncio.subprocess.PIPE,
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            while len(lines) < 3:
                line = (await process.stdout.readline()).decode()
                if line.startswith(sid):
                    lines.append(line.strip())
        # Nothing more of ours comes: the duplicate and the old revision are dropped.
        try:
            async with asyncio.timeout(2):
                while True:
                    line = (await process.stdout.readline()).decode()
                    if line.startswith(sid):
                        lines.append(line.strip())
        except TimeoutError:
            pass
    finally:
        process.kill()
        await process.wait()
    assert lines == [
        f"{sid} alice {t0} None [] 210.5",
        f"{sid} alice {t0 + 100_000} None [] 210.5",
        f"{sid} alice {t0 + 100_000} laughter [('director', 'laughter')] 210.5",
    ]
