"""Let a restarted consumer take its group over without waiting out its dead predecessor.

A consumer killed without leaving its group stays a member until its session times out
(10 s here), and the group's next rebalance waits for it: a restarted processor or recorder
would stand still that long. So each live member notes its member id in a file under
``state_dir/group-members/GROUP/`` and holds an exclusive lock on it for as long as its
process lives. A process that starts a consumer in that group first looks there: a file
whose lock it can take belongs to a process that is gone, and that member is removed from
the group at once (a LeaveGroup request naming it), as if it had left.

Only members started with the same ``state_dir`` on the same machine are known this way;
others are still found by their session timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaClient
from aiokafka.client import CoordinationType
from aiokafka.protocol.group import LeaveGroupRequest

from streams.kafka import clients
from streams.settings import Settings

log = logging.getLogger(__name__)

FOLDER = "group-members"


def _group_folder(settings: Settings, group_id: str) -> Path:
    return settings.state_dir / FOLDER / group_id.replace("/", "_")


def consumer_member_id(consumer: Any) -> str | None:
    """The member id an aiokafka consumer holds in its group (None before it joined).

    aiokafka keeps it on its group coordinator, which has no public accessor;
    tests/integration/test_group_members.py fails if that changes.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    member_id = getattr(coordinator, "member_id", None)
    return member_id or None


class MemberNote:
    """The locked file saying "member M of group G is alive in this process"."""

    def __init__(self, settings: Settings, group_id: str) -> None:
        self._folder = _group_folder(settings, group_id)
        self._member_id: str | None = None
        self._descriptor: int | None = None

    def note(self, member_id: str | None) -> None:
        """Record the member id this process holds now (a rejoin may change it)."""
        if member_id is None or member_id == self._member_id:
            return
        self.forget()
        self._folder.mkdir(parents=True, exist_ok=True)
        # Locked under a private name, then renamed into place: another process never
        # sees the note unlocked (it would take its member for dead).
        private = self._folder / f".{member_id}.{os.getpid()}"
        descriptor = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(private, self._folder / member_id)
        except OSError:
            os.close(descriptor)
            private.unlink(missing_ok=True)
            return
        self._member_id, self._descriptor = member_id, descriptor

    def forget(self) -> None:
        """This process left the group (or holds another member id now)."""
        if self._descriptor is None or self._member_id is None:
            return
        with contextlib.suppress(FileNotFoundError):
            (self._folder / self._member_id).unlink()
        os.close(self._descriptor)
        self._member_id, self._descriptor = None, None


def dead_members(settings: Settings, group_id: str) -> list[str]:
    """Member ids noted for the group by processes that no longer hold their lock."""
    folder = _group_folder(settings, group_id)
    if not folder.is_dir():
        return []
    dead = []
    for path in folder.iterdir():
        if path.name.startswith("."):
            continue  # being written
        try:
            descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # alive
        else:
            dead.append(path.name)
        finally:
            os.close(descriptor)
    return dead


async def evict_dead_members(
    settings: Settings, group_id: str, *, timeout_s: float = 10.0
) -> list[str]:
    """Remove from the group every member a dead process of this machine left; the ids.

    Best effort: on any failure the dead members are left to their session timeout.
    """
    dead = dead_members(settings, group_id)
    if not dead:
        return []
    try:
        async with asyncio.timeout(timeout_s):
            return await _evict(settings, group_id, dead)
    except Exception as exc:
        log.warning("could not remove the dead members of %s: %r", group_id, exc)
        return []


async def _evict(settings: Settings, group_id: str, dead: list[str]) -> list[str]:
    client = AIOKafkaClient(**clients.client_options(settings))
    evicted = []
    try:
        await client.bootstrap()
        coordinator = await client.coordinator_lookup(CoordinationType.GROUP, group_id)
        for member_id in dead:
            try:
                response = await client.send(coordinator, LeaveGroupRequest(group_id, member_id))
            except Exception as exc:  # the session timeout still removes it
                log.warning("could not remove dead member %s of %s: %s", member_id, group_id, exc)
                continue
            # 0: removed; 25 (UNKNOWN_MEMBER_ID): already gone. Either way the note goes.
            if response.error_code not in (0, 25):
                log.warning(
                    "removing dead member %s of %s: error %s",
                    member_id,
                    group_id,
                    response.error_code,
                )
                continue
            with contextlib.suppress(FileNotFoundError):
                (_group_folder(settings, group_id) / member_id).unlink()
            evicted.append(member_id)
    finally:
        await client.close()
    if evicted:
        log.info("removed %d member(s) a dead process left in %s", len(evicted), group_id)
    return evicted
