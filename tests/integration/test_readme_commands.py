"""Every ``.venv/bin/livetag`` command line in the README's shell examples runs as written
(with the session and token ids it prints put in for ``SID`` and ``ID``), through the
installed entry point, against the real broker."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
from pathlib import Path

import pytest

from infra.settings import Settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.DOTALL):
        for line in block.splitlines():
            if line.startswith(".venv/bin/livetag "):
                commands.append(shlex.split(line, comments=True))
    return commands


async def _run(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_every_livetag_command_in_the_readme_runs_as_written(
    settings: Settings, tmp_path: Path
) -> None:
    commands = readme_commands()
    # The examples a first scene needs are there (a README without them passes nothing).
    assert [argv[1:3] for argv in commands[:2]] == [["session", "create"], ["session", "invite"]]
    env = {
        **os.environ,
        "LIVETAG_BROKER_PORT": str(settings.broker_port),
        "LIVETAG_STATE_DIR": str(tmp_path / "state"),
    }
    session_id: str | None = None
    token_id: str | None = None
    for argv in commands:
        if session_id is not None:
            argv = [session_id if arg == "SID" else arg for arg in argv]
        if token_id is not None:
            argv = [token_id if arg == "ID" else arg for arg in argv]
        assert not {"SID", "ID"} & set(argv), f"nothing printed an id for {argv}"
        code, out, err = await _run(argv, env)
        assert code == 0, f"{shlex.join(argv)} exited {code}: {err}"
        if argv[1:3] == ["session", "create"]:
            session_id = out.splitlines()[0].removeprefix("session ")
        if argv[1:3] == ["session", "invite"]:
            # role participant page token_id URL
            token_id = out.strip().split("\t")[3]
    assert session_id is not None
