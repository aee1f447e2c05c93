"""Helpers for the servers this project starts as child processes (tritonserver, a local Ray
cluster): a free loopback port, and stopping a process group for good."""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)


def free_port() -> int:
    """Returns a TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def kill_group(pgid: int, timeout_s: float = 5.0) -> None:
    """SIGKILLs what is left of a process group and waits until none of it is alive."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while group_alive(pgid):
        if time.monotonic() > deadline:
            logger.warning("process group %d still alive %.0f s after SIGKILL", pgid, timeout_s)
            return
        time.sleep(0.02)


def live_processes() -> Iterator[tuple[int, int, int]]:
    """(pid, parent pid, process group) of every process that is not a zombie (Linux /proc)."""
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, parent, group = stat_file.read_text().rsplit(")", 1)[1].split()[:3]
        except (OSError, IndexError):
            continue
        if state != "Z":
            yield int(stat_file.parent.name), int(parent), int(group)


def group_members(pgid: int) -> Iterator[int]:
    """The pids of a process group's members that are not zombies."""
    return (pid for pid, _, group in live_processes() if group == pgid)


def group_alive(pgid: int) -> bool:
    """Tells whether a process group has a member that is not a zombie."""
    return next(group_members(pgid), None) is not None
