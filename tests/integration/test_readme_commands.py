"""Every ``.venv/bin/livetag`` command line in the shell examples of README.md and of every
docs/*.md page runs as written (with the session and token ids it prints put in for
``SID`` and ``ID``), through the installed entry point, against the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shlex
from pathlib import Path

import pytest

from streams import records
from streams.archive import store
from streams.archive.recorder import RecorderWorker
from streams.kafka import clients, topics
from streams.settings import Settings
from tests.commands import run_command
from tests.documentation import ROOT, documentation_files
from tests.tag_client import wall_us

pytestmark = pytest.mark.integration

ENTRY_POINT = ".venv/bin/livetag"


def documented_commands() -> list[tuple[str, list[str]]]:
    """(file, argv) of every livetag line in a ``sh`` block, README.md first."""
    commands = []
    for path in documentation_files():
        text = path.read_text(encoding="utf-8")
        for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
            for line in block.splitlines():
                if line.startswith(f"{ENTRY_POINT} "):
                    commands.append((path.name, shlex.split(line, comments=True)))
    return commands


async def _scene_played(settings: Settings, session_id: str, performer_id: str) -> None:
    """What a played scene leaves on ``livetag.labels``: a few of the performer's label
    windows, one of them tagged (the documented session has no media, so no aligner ran)."""
    start_us = wall_us() // 100_000 * 100_000 - 1_000_000
    producer = clients.make_producer(settings)
    await producer.start()
    try:
        for k in range(3):
            window = records.LabelWindow(
                ts_us=start_us + k * 100_000,
                session_id=session_id,
                performer_id=performer_id,
                window_us=100_000,
                features=records.WindowFeatures(loudness_mean_db=-20.0),
                raters=[
                    records.RaterLabels(
                        rater_id="director",
                        rater_role="director",
                        labels=[
                            records.ActiveLabel(
                                label="laughter", intensity="normal", tag_id=f"docs-tag-{k}"
                            )
                        ],
                    )
                ]
                if k == 1
                else [],
                consensus="laughter" if k == 1 else None,
            )
            message = records.encode(window)
            await producer.send_and_wait(
                topics.LABELS, message.value, key=message.key, headers=message.headers
            )
    finally:
        await producer.stop()


async def _archive(settings: Settings, session_id: str, timeout_s: float = 45) -> None:
    """Archive an ended session as the recorder ``livetag up`` runs would, so the documented
    export lines have an archive to read."""
    stop = asyncio.Event()
    running = asyncio.create_task(RecorderWorker(settings, only_sessions={session_id}).run(stop))
    manifest = store.session_dir(settings, session_id) / store.MANIFEST
    try:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not manifest.is_file():
                    assert not running.done(), running
                    await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.wait_for(running, 30)
    assert manifest.is_file(), f"the recorder did not archive {session_id}"


async def test_every_livetag_command_in_the_documentation_runs_as_written(
    settings: Settings, tmp_path: Path
) -> None:
    documented = documented_commands()
    commands = [argv for _, argv in documented]
    # The examples a first scene needs are there (a README without them passes nothing).
    assert [argv[1:3] for argv in commands[:2]] == [["session", "create"], ["session", "invite"]]
    assert documented[0][0] == "README.md"
    # ... and the docs pages are read too: taking a link back is documented only there.
    assert any(
        name != "README.md" and argv[1:3] == ["session", "revoke"] for name, argv in documented
    )
    # The recorder's waits, shortened: the session has no media, so nothing is late.
    recording = settings.model_copy(
        update={
            "data_dir": tmp_path / "sessions",
            "label_grace_s": 1.0,
            "label_feature_wait_ms": 500,
            "archive_flush_s": 0.5,
            "archive_quiet_s": 0.5,
            "archive_release_s": 0.0,
        }
    )
    env = {
        **os.environ,
        "LIVETAG_BROKER_PORT": str(settings.broker_port),
        "LIVETAG_STATE_DIR": str(tmp_path / "state"),
        "LIVETAG_DATA_DIR": str(recording.data_dir),
    }
    # Commands run from a folder of their own, so what they write (exports) stays there.
    workdir = tmp_path / "work"
    workdir.mkdir()
    session_id: str | None = None
    token_id: str | None = None
    archived: set[str] = set()
    performers: dict[str, list[str]] = {}
    for argv in commands:
        if session_id is not None:
            argv = [session_id if arg == "SID" else arg for arg in argv]
        if token_id is not None:
            argv = [token_id if arg == "ID" else arg for arg in argv]
        assert not {"SID", "ID"} & set(argv), f"nothing printed an id for {argv}"
        if argv[1] == "export" and session_id is not None and session_id not in archived:
            await _scene_played(settings, session_id, performers[session_id][0])
            await _archive(recording, session_id)
            archived.add(session_id)
        code, out, err = await run_command([str(ROOT / ENTRY_POINT), *argv[1:]], env, cwd=workdir)
        assert code == 0, f"{shlex.join(argv)} exited {code}: {err}"
        if argv[1] == "export" and "--out" not in argv:
            # Where the docs say it goes: ./SESSION-FORMAT in the folder it runs in.
            fmt = argv[argv.index("--format") + 1]
            assert any((workdir / f"{session_id}-{fmt}").iterdir()), f"{shlex.join(argv)}"
        if argv[1:3] == ["session", "create"]:
            session_id = out.splitlines()[0].removeprefix("session ")
            performers[session_id] = argv[argv.index("--performers") + 1].split(",")
        if argv[1:3] == ["session", "invite"]:
            # role participant page token_id URL
            token_id = out.strip().split("\t")[3]
    assert session_id is not None
