"""Serving a SIF from a node-local unpacked copy (issue #24 item 2), as the ordinary user sees it:
the choice said by `check`, one unpack then reuse, one unpack for many launches at once, the cap's
least-recently-used clean-up that never takes a root in use, the network file system rule, a
squatted /tmp/shim-UID refused before anything is made in it, a killed unpack's leftover removed,
`cache list|clean`, `--serve mount` as before, and an image the policy refuses never unpacked."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import VENV_PYTHON, as_user
from dirimage import marked_sif
from policy import make_conf

from shim.errors import ExitCode
from shim.launch.serve import (
    KEPT,
    MOUNT,
    UNPACK,
    ServeFacts,
    Target,
    decide_serve,
    fs_type_at,
    fs_type_of,
    is_network_fs,
)

UNPACKED = "later launches reuse it"


def _env(user_dir: Path, **more: str) -> dict[str, str]:
    return {"SHIMRUN_CACHE": str(user_dir / "cache"), **more}


def _roots(user_dir: Path) -> list[Path]:
    d = user_dir / "cache" / "rootfs"
    return sorted(p for p in d.iterdir() if p.is_dir()) if d.is_dir() else []


def _listed(shim, user_dir: Path) -> list[dict]:
    """`cache list --json`'s unpacked images in this test's cache (it lists /tmp/shim-UID's too)."""
    r = shim.run(["cache", "list", "--json"], env=_env(user_dir))
    return [u for u in json.loads(r.stdout)["unpacked"] if u["path"].startswith(f"{user_dir}/")]


def _conf(user_dir: Path, serve: str) -> Path:
    return make_conf(user_dir / "conf", f"\n[serve]\n{serve}\n")


def test_auto_unpacks_a_small_image_once_then_reuses_it(shim, busybox_sif, user_dir):
    env = _env(user_dir)
    check = shim.run(["check", busybox_sif], env=env)
    assert check.returncode == 0, check.stderr
    served = [ln for ln in check.stdout.splitlines() if ln.startswith("served: ")]
    assert len(served) == 1 and served[0].startswith("served: unpack (its copy (~") and "fits" in served[0], served
    assert _roots(user_dir) == []  # check decides, unpacks nothing
    first = shim.run([busybox_sif, "/bin/busybox", "cat", "/proc/self/mountinfo"], env=env)
    assert first.returncode == 0 and first.stderr.count(UNPACKED) == 1, first.stderr
    (root,) = _roots(user_dir)
    assert f"to {root} in " in first.stderr and len(root.name) == 64
    assert "squashfuse" not in first.stdout.splitlines()[0]
    second = shim.run(["--debug", busybox_sif, "/bin/busybox", "readlink", "/proc/self/fd/1000"], env=env)
    assert second.returncode == 0 and UNPACKED not in second.stderr, second.stderr
    assert f"shimrun: served: unpack (unpacked here already): {root.parent}" in second.stderr
    assert second.stdout.strip().endswith(f"{root.name}.lock")  # the app holds the root in use
    assert _roots(user_dir) == [root]
    quiet = shim.run(["--quiet", "--serve", "unpack", busybox_sif, "/bin/busybox", "true"], env=env)
    assert (quiet.returncode, quiet.stderr) == (0, "")
    meta = json.loads((root.parent / f"{root.name}.json").read_text())
    assert meta["image"] == str(busybox_sif) and meta["size"] > 0


def test_sixteen_launches_at_once_unpack_once(shim, busybox_sif, user_dir):
    procs = [shim.popen([busybox_sif, "/bin/busybox", "true"], env=_env(user_dir))
             for _ in range(16)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert all(rc == 0 for rc, _ in results), results
    assert sum(err.count(UNPACKED) for _, err in results) == 1, results
    assert len(_roots(user_dir)) == 1
    assert not [p for p in (user_dir / "cache" / "rootfs").iterdir() if ".partial." in p.name]


def test_the_cap_removes_the_least_recently_used_root_never_one_in_use(shim, busybox_sif, user_dir):
    conf = _conf(user_dir, 'unpack_cap = "2M"')
    a, b, c = (marked_sif(shim.shimrun, user_dir, m) for m in ("aaa", "bbb", "ccc"))
    env = _env(user_dir)
    held = shim.popen(["--conf", conf, "--serve", "unpack", a, "/bin/busybox", "sleep", "6"], env=env)
    try:
        for _ in range(100):  # until A is unpacked and its app runs
            if _roots(user_dir) and shim.run(["cache", "list", "--json"], env=env).stdout.count('"in_use": true'):
                break
            subprocess.run(["sleep", "0.1"], check=False)
        r = shim.run(["--conf", conf, "--serve", "unpack", b, "/bin/busybox", "cat", "/marker"], env=env)
        assert (r.returncode, r.stdout) == (0, "bbb\n"), r.stderr
        assert len(_roots(user_dir)) == 2  # over the cap, but A is in use and B was just made
    finally:
        assert held.wait(timeout=60) == 0, held.stderr.read()
        held.stdout.close()
        held.stderr.close()
    listed = _listed(shim, user_dir)
    older = min(listed, key=lambda r: r["last_used"])
    assert older["image"] == str(a) and not any(r["in_use"] for r in listed)
    r = shim.run(["--conf", conf, "--serve", "unpack", c, "/bin/busybox", "cat", "/marker"], env=env)
    assert (r.returncode, r.stdout) == (0, "ccc\n"), r.stderr
    now = _listed(shim, user_dir)
    assert str(a) not in [r["image"] for r in now] and str(c) in [r["image"] for r in now]
    # A's record names its removed root: the next launch of A plans again and unpacks it anew
    again = shim.run(["--conf", conf, "--serve", "unpack", a, "/bin/busybox", "cat", "/marker"], env=env)
    assert (again.returncode, again.stdout) == (0, "aaa\n") and UNPACKED in again.stderr, again.stderr


def test_an_image_rewritten_in_place_is_unpacked_anew_and_its_old_root_collected(shim, user_dir):
    """The same path and inode, new bytes (a rebuild written over the file): another digest, another
    unpack; the old root, no longer used, is what the cap's clean-up takes."""
    conf = _conf(user_dir, 'unpack_cap = "2M"')
    old, new = marked_sif(shim.shimrun, user_dir, "old"), marked_sif(shim.shimrun, user_dir, "new")
    image = user_dir / "image.sif"
    shutil.copyfile(old, image)
    image.chmod(0o644)
    inode = image.stat().st_ino
    env = _env(user_dir)
    first = shim.run(["--conf", conf, "--serve", "unpack", image, "/bin/busybox", "cat", "/marker"], env=env)
    assert (first.returncode, first.stdout) == (0, "old\n") and UNPACKED in first.stderr, first.stderr
    (old_root,) = _roots(user_dir)
    with open(new, "rb") as src, open(image, "r+b") as dst:  # in place: same inode, truncated and rewritten
        dst.truncate(0)
        shutil.copyfileobj(src, dst)
    assert image.stat().st_ino == inode
    second = shim.run(["--conf", conf, "--serve", "unpack", image, "/bin/busybox", "cat", "/marker"], env=env)
    assert (second.returncode, second.stdout) == (0, "new\n") and UNPACKED in second.stderr, second.stderr
    (new_root,) = _roots(user_dir)  # the old one collected under the cap (2 MiB: room for one)
    assert new_root.name != old_root.name and not old_root.exists()


def test_auto_keeps_a_mount_when_the_copy_would_exceed_the_cap(shim, busybox_sif, user_dir):
    conf = _conf(user_dir, 'unpack_cap = "1M"')
    r = shim.run(["check", "--conf", conf, busybox_sif], env=_env(user_dir))
    assert "served: kept (its copy (~" in r.stdout and "larger than the cap (1 MiB)" in r.stdout, r.stdout
    # kept, so a holder serves it: told to leave as soon as its app has ended (nothing stays behind)
    run = shim.run(["--conf", conf, busybox_sif, "/bin/busybox", "true"], env={**_env(user_dir),
                                                                                "SHIMRUN_KEPT_IDLE": "0"})
    assert (run.returncode, run.stderr) == (0, "") and _roots(user_dir) == []


MOUNTINFO = r"""22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:40 / /home rw,relatime shared:20 - nfs4 fs:/export/home rw,vers=4.2
31 22 0:41 / /lustre rw shared:21 - lustre 10.0.0.1@o2ib:/scratch rw
32 22 0:42 / /tmp rw,nosuid,nodev shared:22 - tmpfs tmpfs rw
33 30 0:43 / /home/ann/my\040data rw shared:23 - fuse.sshfs ann@host:/data rw
34 22 0:44 / /mnt/usb rw shared:24 - fuseblk /dev/sdb1 rw
35 22 0:45 / /gpfs/proj rw shared:25 - gpfs proj rw
"""


@pytest.mark.parametrize(("path", "kind", "network"), [
    ("/home/ann/.cache/shim", "nfs4", True), ("/lustre/ann", "lustre", True), ("/tmp/shim-1000", "tmpfs", False),
    ("/home/ann/my data/x", "fuse.sshfs", True), ("/mnt/usb/x", "fuseblk", False), ("/gpfs/proj/a", "gpfs", True),
    ("/var/tmp", "ext4", False), ("/homework", "ext4", False)])
def test_the_file_system_under_a_path_from_mountinfo(path, kind, network):
    assert fs_type_at(path, MOUNTINFO) == kind
    assert is_network_fs(kind) is network


def test_the_file_system_of_an_opened_image_by_its_device():
    """Staging's `auto` asks where the image lies by the opened file's st_dev, never its path again."""
    assert fs_type_of(os.makedev(0, 41), MOUNTINFO) == "lustre" and fs_type_of(os.makedev(254, 0), MOUNTINFO) == "ext4"
    assert fs_type_of(os.makedev(7, 7), MOUNTINFO) == ""


def _facts(target: Target, **more) -> ServeFacts:
    base = dict(image_kind="squashfs", asked="auto", asked_by="the default", bytes_used=100 << 20, inodes=1000,
                fuse_problem=None, target=target, cap=10 << 30, unpacked=False)
    return ServeFacts(**{**base, **more})


def test_the_decision_over_facts():
    local = Target("/var/tmp/c/rootfs", "ext4", free=100 << 30, total=200 << 30)
    assert decide_serve(_facts(local)).mode == UNPACK
    assert decide_serve(_facts(local, cap=300 << 20)).mode == KEPT  # 400 MiB + 4 MiB > 300 MiB
    assert decide_serve(_facts(local._replace(free=700 << 20))).mode == KEPT  # more than half the free space
    assert decide_serve(_facts(local, cap=1, unpacked=True)).mode == UNPACK  # there already: reused
    assert decide_serve(_facts(local, asked="mount", asked_by="--serve"))[:3] == (MOUNT, "asked by --serve", "")
    nowhere = Target("", problem="/home is on a network file system (nfs4), and /tmp is on one too")
    d = decide_serve(_facts(nowhere))
    assert d.mode == MOUNT and "nfs4" in d.reason
    assert decide_serve(_facts(nowhere, asked="unpack")).mode == MOUNT
    d = decide_serve(_facts(local, asked="mount", fuse_problem="/dev/fuse does not exist"))
    assert d.mode == UNPACK and "FUSE is unusable" in d.reason
    assert decide_serve(_facts(local, image_kind="dir")).mode == "dir"


def test_a_cache_on_a_network_file_system_gives_way_to_tmp(user, user_dir, tmp_private):
    """local_target over a node whose /var/tmp (where the test user's cache is) is NFS: the copy goes
    to /tmp/shim-UID, made 0700 by the user."""
    cache = user_dir / "cache"
    cache.mkdir(mode=0o700)
    os.chown(cache, user.uid, user.gid)
    info = MOUNTINFO + "36 22 0:46 / /var/tmp rw shared:26 - nfs fs:/vartmp rw\n"
    code = ("import sys; from shim.launch.serve import local_target; "
            f"print(tuple(local_target('', {str(cache)!r}, '', sys.stdin.read())))")
    r = as_user(user, [VENV_PYTHON, "-c", code], input=info)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"('{tmp_private}/rootfs', 'tmpfs'"), r.stdout
    assert tmp_private.stat().st_uid == user.uid and tmp_private.stat().st_mode & 0o777 == 0o700
    assert not (cache / "rootfs").exists()


def test_a_squatted_tmp_directory_is_refused_before_anything_is_made_in_it(shim, busybox_sif, user_dir, other_user,
                                                                           tmp_private):
    assert as_user(other_user, ["mkdir", "-m", "0777", tmp_private]).returncode == 0
    conf = _conf(user_dir, 'local_dir = "/tmp"')
    check = shim.run(["check", "--conf", conf, busybox_sif], env=_env(user_dir))
    line = next(ln for ln in check.stdout.splitlines() if ln.startswith("served: "))
    assert line.startswith("served: mount (no local directory to unpack into: ") and \
        f"{tmp_private} belongs to uid {other_user.uid}, not to you: refused" in line, line
    r = shim.run(["--conf", conf, busybox_sif, "/bin/busybox", "echo", "ran"], env=_env(user_dir))
    assert (r.returncode, r.stdout, r.stderr) == (0, "ran\n", "")
    no_fuse = shim.run(["--conf", conf, busybox_sif, "/bin/busybox", "true"], env=_env(user_dir, SHIMRUN_NO_FUSE="1"))
    assert no_fuse.returncode == ExitCode.HOST and no_fuse.stderr.count("\n") <= 2, no_fuse.stderr
    assert "no local directory to unpack the image into" in no_fuse.stderr and "refused" in no_fuse.stderr
    assert os.listdir(tmp_private) == []


def test_a_killed_unpacks_leftover_is_gone_after_the_next_launch(shim, busybox_sif, user_dir):
    env = _env(user_dir)
    assert shim.run([busybox_sif, "/bin/busybox", "true"], env=env).returncode == 0
    (root,) = _roots(user_dir)
    assert shim.run(["cache", "clean"], env=env).returncode == 0
    assert _roots(user_dir) == []
    # what a SIGKILLed unpack leaves: a partial tree with the image's read-only directories
    partial = root.parent / f"{root.name}.partial.999999"
    made = f"mkdir -p {partial}/usr/bin && touch {partial}/usr/bin/x && chmod 0555 {partial}/usr/bin {partial}/usr"
    r = as_user(shim.user, ["sh", "-c", made])
    assert r.returncode == 0, r.stderr
    again = shim.run([busybox_sif, "/bin/busybox", "true"], env=env)
    assert again.returncode == 0 and UNPACKED in again.stderr, again.stderr
    assert not partial.exists() and _roots(user_dir) == [root]


def test_cache_list_and_clean_show_and_keep_a_root_in_use(shim, busybox_sif, user_dir):
    env = _env(user_dir)
    held = shim.popen([busybox_sif, "/bin/busybox", "sleep", "3"], env=env)
    try:
        for _ in range(100):
            if shim.run(["cache", "list", "--json"], env=env).stdout.count('"in_use": true'):
                break
            subprocess.run(["sleep", "0.1"], check=False)
        listed = shim.run(["cache", "list"], env=env)
        assert listed.returncode == 0 and "in use" in listed.stdout and str(busybox_sif) in listed.stdout
        busy = shim.run(["cache", "clean"], env=env)
        assert "removed 0 unpacked images" in busy.stdout and "kept 1 in use" in busy.stdout, busy.stdout
    finally:
        assert held.wait(timeout=60) == 0
        held.stdout.close()
        held.stderr.close()
    kept = shim.run(["cache", "clean", "--keep-recent", "1"], env=env)
    assert "removed 0 unpacked images" in kept.stdout and len(_roots(user_dir)) == 1
    done = shim.run(["cache", "clean"], env=env)
    assert "removed 1 unpacked images" in done.stdout and _roots(user_dir) == []
    assert not [p for p in (user_dir / "cache" / "rootfs").iterdir()]  # its lock and sidecar too
    bad = shim.run(["cache", "clean", "--keep-recent", "-1"], env=env)
    assert bad.returncode == ExitCode.USAGE and bad.stderr.count("\n") == 1


def test_serve_mount_mounts_per_launch_as_before(shim, busybox_sif, user_dir):
    for how in (["--serve", "mount"], []):
        env = _env(user_dir, **({} if how else {"SHIMRUN_SERVE": "mount"}))
        r = shim.run([*how, busybox_sif, "/bin/busybox", "head", "-1", "/proc/self/mountinfo"], env=env)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert " - fuse.squashfuse" in r.stdout, r.stdout
    assert _roots(user_dir) == []
    bad = shim.run(["--serve", "copy", busybox_sif, "/bin/busybox", "true"], env=_env(user_dir))
    assert bad.returncode == ExitCode.USAGE and bad.stderr.count("\n") == 1
    assert "auto, unpack, kept, mount" in bad.stderr


def test_an_image_the_policy_refuses_is_never_unpacked(shim, busybox_sif, user_dir):
    conf = make_conf(user_dir / "conf", "allow_unsigned = false")
    for serve in ("unpack", "auto"):
        r = shim.run(["--conf", conf, "--serve", serve, busybox_sif, "/bin/busybox", "true"], env=_env(user_dir))
        assert r.returncode == ExitCode.UNTRUSTED, r.stderr
        assert UNPACKED not in r.stderr
    assert _roots(user_dir) == []
    assert not (user_dir / "cache" / "rootfs").exists() or not os.listdir(user_dir / "cache" / "rootfs")


@pytest.mark.parametrize(("line", "said"), [
    ('mode = "copy"', "serve.mode = 'copy' is not one of auto, unpack, kept, mount"),
    ('local_dir = "scratch"', "serve.local_dir = 'scratch' is not an absolute path"),
    ('unpack_cap = "lots"', "serve.unpack_cap = 'lots' is not a size"),
    ('unpack_cap = "150%"', "serve.unpack_cap = '150%' is not a size"),
    ("kept_idle = -1", "serve.kept_idle = -1 is not a number of seconds"),
    ("kept_idle = 1.5", "serve.kept_idle must be a int"),
    ("stage = 1", "serve.stage must be a string"),
    ('stage = "yes"', "serve.stage = 'yes' is not one of auto, always, never"),
    ("unpack = true", "unknown key serve.unpack")])
def test_a_bad_serve_setting_is_one_line(shim, busybox_sif, user_dir, line, said):
    conf = _conf(user_dir, line)
    r = shim.run(["--conf", conf, busybox_sif, "/bin/busybox", "true"], env=_env(user_dir))
    assert r.returncode == ExitCode.CONFIG and said in r.stderr, r.stderr
    assert r.stderr.count("\n") <= 2 and "Traceback" not in r.stderr and _roots(user_dir) == []
