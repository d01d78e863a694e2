"""A cache another user can write is not trusted: whatever shim reads from its cache (extracted
root filesystems, hardware verdicts, plans, ELF facts) is used only if it and every directory
above it up to the cache root are the user's own and not writable by others. Another real user
plants files, symlinks and hard links; the launch ignores them (one notice) and stays correct."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import as_user

from shim.errors import ExitCode
from shim.image.sif import primary_partition, read_sif
from shim.record.format import NO_RECORD_CACHE

FORGED = {"code": "GPU-ABSENT", "severity": "error", "message": "forged by another user", "hint": "",
          "admin_hint": ""}


def partition_digest(sif: Path) -> str:
    part = primary_partition(read_sif(sif))
    with open(sif, "rb") as f:
        f.seek(part.offset)
        return hashlib.sha256(f.read(part.size)).hexdigest()


@pytest.fixture
def shared(world_dir: Path, request) -> Path:
    """A shared cache directory like /tmp: root's, mode 1777."""
    d = world_dir / f"shared-{request.node.name}"
    d.mkdir()
    d.chmod(0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_rootfs_planted_in_a_shared_cache_is_not_run(shim, busybox_sif, shared: Path, other_user) -> None:
    """SHIMRUN_CACHE in a 1777 directory: another user plants rootfs/<digest>/ (a copy of the image
    with a marker file); the extraction fallback runs the real image, from a private directory."""
    digest = partition_digest(busybox_sif)
    planted = shared / "rootfs" / digest
    assert as_user(other_user, ["mkdir", "-p", planted.parent]).returncode == 0
    assert as_user(other_user, ["unsquashfs", "-q", "-n", "-no-xattrs", "-d", planted, "-o",
                                str(primary_partition(read_sif(busybox_sif)).offset), busybox_sif]).returncode == 0
    assert as_user(other_user, ["touch", planted / "PLANTED"]).returncode == 0
    assert as_user(other_user, ["chmod", "-R", "a+rwX", shared / "rootfs"]).returncode == 0
    env = {"SHIMRUN_NO_FUSE": "1", "SHIMRUN_CACHE": str(shared)}
    r = shim.run([busybox_sif, "/bin/busybox", "sh", "-c", "ls /PLANTED || echo not-planted"], env=env)
    assert r.returncode == 0 and "not-planted" in r.stdout, (r.stdout, r.stderr)
    private = shared / f".shim-{shim.user.uid}"
    assert f"notice: the cache {shared} " in r.stderr and f": using {private}, a private directory in it" in r.stderr
    assert (private / "rootfs" / digest).is_dir() and (private.stat().st_mode & 0o777) == 0o700


@pytest.mark.parametrize("squat", ["directory", "symlink"])
def test_a_squatted_private_directory_is_not_used(shim, busybox_sif, shared: Path, other_user, squat: str) -> None:
    """Another user made .shim-UID first (a directory of theirs, or a link to one): not used, so
    the extraction has nowhere private to go: one line, exit 69; with FUSE, caching is off."""
    theirs = shared / "theirs"
    assert as_user(other_user, ["mkdir", "-m", "0777", theirs]).returncode == 0
    private = shared / f".shim-{shim.user.uid}"
    cmd = ["mkdir", "-m", "0777", private] if squat == "directory" else ["ln", "-s", theirs, private]
    assert as_user(other_user, cmd).returncode == 0
    r = shim.run([busybox_sif, "/bin/busybox", "true"], env={"SHIMRUN_NO_FUSE": "1", "SHIMRUN_CACHE": str(shared)})
    assert r.returncode == ExitCode.HOST and "no private cache" in r.stderr and "SHIMRUN_CACHE" in r.stderr, r.stderr
    r = shim.run([busybox_sif, "/bin/busybox", "true"], env={"SHIMRUN_CACHE": str(shared)})
    assert r.returncode == 0 and "caching is off" in r.stderr
    assert os.listdir(theirs) == []


@pytest.mark.parametrize("plant", ["file", "symlink", "hardlink"])
def test_planted_cache_entries_are_ignored(shim, busybox_sif, user_dir: Path, other_user, plant: str) -> None:
    """The user's own cache, one of its directories opened to others (or an entry with a second
    hard link): a forged hardware verdict there would refuse every launch; it is ignored. (The
    launch record would spare the second launch the hardware cache: records are off here;
    tests/test_records.py plants records.)"""
    cache = user_dir / "cache"
    env = {"SHIMRUN_CACHE": str(cache), NO_RECORD_CACHE: "1"}
    assert shim.run([busybox_sif, "/bin/busybox", "true"], env=env).returncode == 0
    (entry,) = (cache / "hw").glob("*.json")
    key = entry.stem
    forged = json.dumps({"key": key, "diagnostics": [FORGED], "reads": {}})
    if plant == "hardlink":
        # Root's doing (a backup tool, a careless admin): a second name for the user's own file.
        entry.write_text(forged)
        os.link(entry, cache / "hw" / "copy")
    else:
        cache.chmod(0o755)
        (cache / "hw").chmod(0o777)
        entry.unlink()
        if plant == "file":
            r = as_user(other_user, ["sh", "-c", f"cat > {entry}"], input=forged)
        else:
            elsewhere = Path(other_user.home) / "forged.json"
            as_user(other_user, ["sh", "-c", f"cat > {elsewhere}"], input=forged)
            r = as_user(other_user, ["ln", "-s", elsewhere, entry])
        assert r.returncode == 0, r.stderr
    r = shim.run([busybox_sif, "/bin/busybox", "true"], env=env)
    assert r.returncode == 0 and "forged" not in r.stderr, r.stderr
    assert f"notice: ignoring the cache entry {entry}" in r.stderr


def test_only_private_cache_files_are_written(shim, busybox_sif, user_dir: Path) -> None:
    """A cache directory opened to others is not written to either."""
    cache = user_dir / "cache"
    (cache / "hw").mkdir(parents=True)
    subprocess.run(["chown", "-R", f"{shim.user.uid}:{shim.user.gid}", str(cache)], check=True)
    (cache / "hw").chmod(0o777)
    assert shim.run([busybox_sif, "/bin/busybox", "true"], env={"SHIMRUN_CACHE": str(cache)}).returncode == 0
    assert list((cache / "hw").iterdir()) == []
