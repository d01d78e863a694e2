"""FUSE unusable: the image is unpacked once with unsquashfs into a per-user cache and reused
(whatever --serve asks: nothing else can open it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def _cache(user_dir: Path) -> str:
    return str(user_dir / "cache")


def test_extracts_once_then_reuses(shim, busybox_sif, user_dir):
    env = {"SHIMRUN_NO_FUSE": "1", "SHIMRUN_CACHE": _cache(user_dir)}
    first = shim.run([busybox_sif, "/bin/busybox", "echo", "hello"], env=env)
    assert (first.returncode, first.stdout) == (0, "hello\n"), first.stderr
    assert first.stderr.count("\n") == 1 and "FUSE unusable (SHIMRUN_NO_FUSE is set); unpacked" in first.stderr
    rootfs_dir = Path(_cache(user_dir)) / "rootfs"
    (copy,) = [p for p in rootfs_dir.iterdir() if p.is_dir()]
    assert len(copy.name) == 64  # keyed by the partition's sha256
    assert (copy / "bin" / "busybox").is_file() and not list((copy / "dev").iterdir())
    stamp = copy.stat().st_mtime_ns
    second = shim.run(["--serve", "mount", busybox_sif, "/bin/busybox", "sh", "-c", "exit 5"], env=env)
    assert second.returncode == 5
    assert "using the copy" in second.stderr and "unpacked /" not in second.stderr
    assert copy.stat().st_mtime_ns == stamp
    assert [p.name for p in rootfs_dir.iterdir() if p.is_dir()] == [copy.name]


@pytest.mark.skipif(os.getuid() != 0 or not os.path.exists("/dev/fuse"), reason="needs root to chmod /dev/fuse")
def test_dev_fuse_mode_0600_falls_back(shim, busybox_sif, user_dir):
    saved = os.stat("/dev/fuse").st_mode & 0o7777
    os.chmod("/dev/fuse", 0o600)
    try:
        r = shim.run([busybox_sif, "/bin/busybox", "echo", "ok"], env={"SHIMRUN_CACHE": _cache(user_dir)})
    finally:
        os.chmod("/dev/fuse", saved)
    assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
    assert "/dev/fuse is not readable and writable by you" in r.stderr
