"""What a launch may leave behind on the host: processes, mount namespaces, mounts, temp files."""

from __future__ import annotations

import os
import time
from pathlib import Path


def user_processes(uid: int) -> dict[int, str]:
    procs = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid == uid:
                procs[int(entry.name)] = (entry / "comm").read_text().strip()
        except OSError:
            continue
    return procs


def mount_ns_members(ns_link: str) -> list[int]:
    """Processes still inside the mount namespace `ns_link` (e.g. 'mnt:[4026532300]')."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "ns" / "mnt") == ns_link:
                    members.append(int(entry.name))
            except OSError:
                continue
    return members


def host_fuse_mounts() -> list[str]:
    return [line for line in Path("/proc/self/mountinfo").read_text().splitlines() if " - fuse" in line]


def wait_until(predicate, timeout: float = 5.0, step: float = 0.02) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def stage_dir_entries() -> list[str]:
    """The launch's staging mount point on the host must only ever hold its README."""
    from shim.pipeline.stage import STAGE_DIR

    return sorted(os.listdir(STAGE_DIR))
