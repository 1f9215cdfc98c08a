"""Running a command line as a user would, for the tests that check what it prints."""

from __future__ import annotations

import asyncio
from pathlib import Path


async def run_command(
    argv: list[str], env: dict[str, str], *, cwd: Path | None = None, timeout_s: float = 60.0
) -> tuple[int, str, str]:
    """``argv`` run to its end: (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(timeout_s):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
