"""Staging (issue #24 item 4) as the ordinary user sees it, on this machine (no network file system
here: SHIMRUN_STAGE=always asks for what `auto` does for an image on NFS/Lustre/GPFS): the image's
squashfs is copied to the node once, read in order, and hashed on the way, so an unpack reads the
image once instead of twice; a mount serves the local copy, and a warm launch reads nothing of the
image; launches at once make one copy; `cache list|clean` shows and removes the copies; a bad
SHIMRUN_STAGE is one line. Counts of what is read come from strace of the launch."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Runner

from shim.errors import ExitCode
from shim.record.format import NO_RECORD_CACHE

STAGED = re.compile(r"shimrun: staged (\S+) \(\d+ MiB\) to (\S+) in [\d.]+ s; later launches on this node use it")
UNPACKED = "later launches reuse it"

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="strace counts what a launch reads")


def _env(user_dir: Path, **more: str) -> dict[str, str]:
    return {"SHIMRUN_CACHE": str(user_dir / "cache"), "SHIMRUN_STAGE": "always", **more}


def _image(user_dir: Path, busybox_sif: Path) -> Path:
    """A copy of the test SIF of this test's own (its path is what strace's reads are counted on)."""
    sif = user_dir / "image.sif"
    shutil.copyfile(busybox_sif, sif)
    sif.chmod(0o644)
    return sif


def _traced(shim, user_dir: Path, args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, Path]:
    """The launch run under strace (as the user: they trace their own launch), and its log."""
    log = user_dir / f"strace.{len(list(user_dir.glob('strace.*')))}"
    tracer = Runner(shim.user, str(shutil.which("strace")))
    r = tracer.run(["-f", "-qq", "-y", "-e", "trace=read,pread64", "-e", "signal=none", "-o", log, shim.shimrun,
                    *args], env=env, timeout=120)
    return r, log


def _read_of(log: Path, image: Path) -> tuple[int, int, int]:
    """(read calls, bytes, positioned reads that went back before the previous one's end) on
    `image`, by every process of the launch."""
    calls = total = backward = 0
    last_end = -1
    fd = r"\(\d+<" + re.escape(str(image)) + r">, "
    pread = re.compile(r"pread64" + fd + r".*, (\d+)\)\s+=\s+(\d+)$")
    read = re.compile(r"(?<!p)read" + fd + r".*\)\s+=\s+(\d+)$")
    for line in log.read_text().splitlines():
        if m := pread.search(line):
            start, got = int(m.group(1)), int(m.group(2))
            backward += start < last_end
            last_end = start + got
        elif m := read.search(line):
            got = int(m.group(1))
        else:
            continue
        calls += 1
        total += got
    return calls, total, backward


def test_an_unpack_reads_the_image_once_in_order_when_staged(shim, busybox_sif, user_dir):
    sif = _image(user_dir, busybox_sif)
    size = sif.stat().st_size
    r, log = _traced(shim, user_dir, ["--serve", "unpack", str(sif), "/bin/busybox", "true"], _env(user_dir))
    assert r.returncode == 0, r.stderr
    (m,) = STAGED.findall(r.stderr)
    assert m[0] == str(sif) and r.stderr.count(UNPACKED) == 1, r.stderr
    calls, total, backward = _read_of(log, sif)
    # the partition once (its header and superblock read by the planner besides), in order
    assert size * 0.9 < total <= size + (64 << 10), (total, size)
    assert backward <= 3, backward
    assert not Path(m[1]).exists()  # an unpack's copy goes once it is unpacked
    # without staging the same first unpack reads the image twice: its sha256, then unsquashfs
    other = user_dir / "other"
    other.mkdir()
    r2, log2 = _traced(shim, user_dir, ["--serve", "unpack", str(sif), "/bin/busybox", "true"],
                       {"SHIMRUN_CACHE": str(other / "cache"), "SHIMRUN_STAGE": "never"})
    assert r2.returncode == 0 and not STAGED.search(r2.stderr), r2.stderr
    assert _read_of(log2, sif)[1] > 1.8 * size


def test_a_mount_serves_the_staged_copy_and_a_warm_launch_reads_nothing_of_the_image(shim, busybox_sif, user_dir):
    sif = _image(user_dir, busybox_sif)
    env = _env(user_dir)
    first = shim.run(["--debug", "--serve", "mount", sif, "/bin/busybox", "true"], env=env)
    assert first.returncode == 0, first.stderr
    (m,) = STAGED.findall(first.stderr)
    copy = Path(m[1])
    assert "squashfuse (pid" in first.stderr and f"mounted {copy} at offset 0" in first.stderr, first.stderr
    assert f"; staged to {copy.parent} (asked by SHIMRUN_STAGE)" in first.stderr
    assert 0.9 * sif.stat().st_size < copy.stat().st_size < sif.stat().st_size  # the partition, not the SIF
    line = ["--serve", "mount", str(sif), "/bin/busybox", "md5sum", "/bin/busybox"]
    assert shim.run(line, env=env).returncode == 0  # planned: the record is kept
    r, log = _traced(shim, user_dir, line, env)
    assert r.returncode == 0 and not STAGED.search(r.stderr), r.stderr
    # warm: nothing of the image is read (only the local copy); planned (the suite's second pass),
    # the planner's look at its header and superblock
    assert _read_of(log, sif)[1] <= (64 << 10 if os.environ.get(NO_RECORD_CACHE) else 0)
    check = shim.run(["check", "--serve", "mount", sif], env=env)
    assert f"served: mount (asked by --serve); staged to {copy.parent} (asked by SHIMRUN_STAGE)" in check.stdout


def test_launches_at_once_make_one_copy(shim, busybox_sif, user_dir):
    sif = _image(user_dir, busybox_sif)
    env = _env(user_dir, SHIMRUN_NO_RECORD_CACHE="1")
    procs = [shim.popen(["--serve", "mount", sif, "/bin/busybox", "true"], env=env) for _ in range(6)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum(len(STAGED.findall(err)) for _out, err in outs) == 1, outs
    staged = user_dir / "cache" / "staged"
    assert len(list(staged.glob("*.sqfs"))) == 1 and not list(staged.glob("*.partial.*"))


def test_cache_list_and_clean_show_and_remove_the_copies(shim, busybox_sif, user_dir):
    sif = _image(user_dir, busybox_sif)
    env = _env(user_dir)
    assert shim.run(["--serve", "mount", sif, "/bin/busybox", "true"], env=env).returncode == 0
    listed = json.loads(shim.run(["cache", "list", "--json"], env=env).stdout)["staged"]
    (copy,) = [c for c in listed if c["path"].startswith(f"{user_dir}/")]
    assert copy["size"] == Path(copy["path"]).stat().st_size and not copy["in_use"]
    # a running app holds its copy: clean keeps it
    busy = shim.popen(["--serve", "mount", sif, "/bin/busybox", "sleep", "30"], env=env)
    try:
        deadline = time.monotonic() + 20
        while not json.loads(shim.run(["cache", "list", "--json"], env=env).stdout)["staged"][0]["in_use"]:
            assert time.monotonic() < deadline
        kept = shim.run(["cache", "clean"], env=env)
        assert "removed 0 staged images" in kept.stdout and "kept 1 in use" in kept.stdout, kept.stdout
    finally:
        busy.kill()
        busy.wait()
    gone = shim.run(["cache", "clean"], env=env)
    assert "removed 1 staged images" in gone.stdout and not Path(copy["path"]).exists(), gone.stdout
    # the record names the copy: the next launch plans again and stages it anew
    again = shim.run(["--serve", "mount", sif, "/bin/busybox", "true"], env=env)
    assert again.returncode == 0 and len(STAGED.findall(again.stderr)) == 1, again.stderr


def test_a_bad_stage_value_is_one_line(shim, busybox_sif, user_dir):
    r = shim.run([busybox_sif, "/bin/busybox", "true"], env=_env(user_dir, SHIMRUN_STAGE="sometimes"))
    assert r.returncode == ExitCode.USAGE, r.stderr
    assert r.stderr.count("\n") == 1 and "SHIMRUN_STAGE='sometimes' is not one of auto, always, never" in r.stderr
