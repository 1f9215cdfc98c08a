"""The command line steers a session as the dashboard does (takes, the end), and
``livetag tail`` follows a live session's labels until the session is over."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from pathlib import Path

import pytest

from streams import records
from streams.kafka import clients, topics
from streams.kafka.sessions import publish, read_session
from streams.settings import Settings
from tests.commands import run_command
from tests.tag_client import wall_us

pytestmark = pytest.mark.integration


def _env(settings: Settings, state_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "LIVETAG_BROKER_PORT": str(settings.broker_port),
        "LIVETAG_STATE_DIR": str(state_dir),
    }


async def _livetag(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    return await run_command([sys.executable, "-m", "infra", *args], env)


def _window(session_id: str, ts_us: int) -> records.LabelWindow:
    return records.LabelWindow(
        ts_us=ts_us,
        session_id=session_id,
        performer_id="ana",
        window_us=100_000,
        features=records.WindowFeatures(f0_mean_hz=200.0),
        raters=[],
        consensus=None,
    )


async def _publish_windows(settings: Settings, windows: list[records.LabelWindow]) -> None:
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        for window in windows:
            message = records.encode(window)
            await producer.send_and_wait(
                topics.LABELS, message.value, key=message.key, headers=message.headers
            )
    finally:
        await producer.stop()


async def test_takes_and_the_end_from_the_command_line_and_a_tail_that_ends_with_the_session(
    settings: Settings, state_dir: Path
) -> None:
    env = _env(settings, state_dir)
    sid = f"cli-{uuid.uuid4().hex[:8]}"
    code, out, err = await _livetag(
        env, "session", "create", "--prompt", "a quarrel", "--performers", "ana,ben", "--id", sid
    )
    assert code == 0, err
    assert out.splitlines()[0] == f"session {sid}"

    follower = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "infra",
        "tail",
        "labels",
        "--session",
        sid,
        "--follow",
        "--from-beginning",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        code, out, err = await _livetag(env, "session", "take", "start", sid)
        assert code == 0, err
        fields = out.strip().split("\t")
        assert fields[:4] == ["take", sid, "1", "started"]
        started_us = int(fields[4])
        code, out, err = await _livetag(env, "session", "take", "start", sid)
        assert code == 3  # refused
        assert err.strip() == f"Error: {sid}: take 1 is still running", err

        t0 = wall_us() // 100_000 * 100_000
        ours = [_window(sid, t0), _window(sid, t0 + 100_000)]
        await _publish_windows(settings, [*ours, _window(f"{sid}-other", t0)])

        code, out, err = await _livetag(env, "session", "end", sid)
        assert code == 0, err
        ended_us = int(out.strip().split("\t")[2])
        assert ended_us > started_us

        # After the end the aligner may still send windows it waited for (a stalled
        # stream) or revise one (a late tag): the follower keeps reading...
        await asyncio.sleep(6.0)
        late = _window(sid, t0 + 200_000)
        ours.append(late)
        await _publish_windows(settings, [late])
        assert follower.returncode is None
        # ... until the recorder has archived the session: then every record is final.
        ended = await read_session(settings, sid, timeout_s=10)
        assert ended is not None
        assert ended.state == "ended"
        producer = clients.make_producer(settings)
        await producer.start()
        try:
            await publish(
                producer, ended.model_copy(update={"state": "archived", "ts_us": ended.ts_us + 1})
            )
        finally:
            await producer.stop()
        async with asyncio.timeout(30):
            followed, follower_err = await follower.communicate()
        assert follower.returncode == 0, follower_err.decode()
    finally:
        if follower.returncode is None:
            follower.kill()
            await follower.wait()
    printed = [json.loads(line) for line in followed.decode().splitlines()]
    assert [(line["session_id"], line["ts_us"]) for line in printed] == [
        (sid, window.ts_us) for window in ours
    ]

    record = await read_session(settings, sid, timeout_s=10)
    assert record is not None
    assert record.state == "archived"
    assert [(t.take_id, t.start_ts_us, t.end_ts_us) for t in record.takes] == [
        (1, started_us, ended_us)
    ]

    # What is stored now, then exit; --max stops sooner.
    code, out, err = await _livetag(env, "tail", "labels", "--session", sid)
    assert code == 0, err
    assert [json.loads(line)["ts_us"] for line in out.splitlines()] == [
        t0,
        t0 + 100_000,
        t0 + 200_000,
    ]
    code, out, err = await _livetag(env, "tail", "labels", "--session", sid, "--max", "1")
    assert code == 0, err
    assert [json.loads(line)["ts_us"] for line in out.splitlines()] == [t0]

    # Exit 3: refused by the session's state; 2: a session id that is wrong.
    for args, status, said in [
        (("session", "end", sid), 3, f"Error: {sid}: the session is archived"),
        (("session", "take", "end", sid), 3, f"Error: {sid}: the session is archived"),
        (("session", "end", "no-such-session"), 2, "Error: no-such-session: no session"),
        (("session", "take", "start", "Not A Session!"), 2, "Error: invalid session id"),
    ]:
        code, out, err = await _livetag(env, *args)
        assert code == status, (args, out, err)
        assert err.startswith(said), (args, err)
        assert len(err.strip().splitlines()) == 1, err  # one line, never a traceback
