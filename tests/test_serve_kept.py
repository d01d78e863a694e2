"""Kept mounts (README "Kept mounts", issue #24 item 3): with SHIMRUN_SERVE=kept a user's squashfuse
mount of an image stays up on the node across that user's launches, held by a native holder with
an idle timeout; each launch joins it with binds of its own. What the user sees: the second
launch runs on the first one's mount (the same holder and squashfuse, the same device at "/"),
binds stay each launch's own, the holder goes after its idle time or with the Slurm job, a
killed holder or squashfuse costs nothing but a new mount, and another user squatting the
holder's socket name gets nothing (the launch mounts the image for itself)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import as_user
from error_line import one_error_line
from leftovers import host_fuse_mounts, wait_until
from slurm import local_slurm_fixture

from shim.errors import ExitCode, UsageError
from shim.launch.kept import kept_idle
from shim.record.format import NO_RECORD_CACHE
from shim.record.runtime_env import KEPT_REQUEST, KEPT_SOCKET

KEPT = {"SHIMRUN_SERVE": "kept"}
JOINED = re.compile(r"kept mount of \S+: joined holder pid (\d+) \(squashfuse pid (\d+)\)")
STARTING = re.compile(r"kept mount of \S+: no holder at @(\S+): starting one")
HOLDER = KEPT_SOCKET  # the holder's process is named as its socket

slurm1 = local_slurm_fixture(1)


def _live(uid: int, comm: str) -> list[int]:
    """Live (not zombie) processes of `uid` named `comm`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid or (entry / "comm").read_text().strip() != comm:
                continue
            if (entry / "stat").read_text().rpartition(")")[2].split()[0] != "Z":
                out.append(int(entry.name))
        except OSError:
            continue
    return sorted(out)


def holders(uid: int) -> list[int]:
    return _live(uid, HOLDER)


def kept_sockets(uid: int) -> list[str]:
    return [ln.split()[-1] for ln in Path("/proc/net/unix").read_text().splitlines()
            if f"@{KEPT_SOCKET}/{uid}/" in ln]


def nothing_kept(uid: int) -> bool:
    return not holders(uid) and not kept_sockets(uid) and not _live(uid, "squashfuse_ll")


@pytest.fixture(autouse=True)
def no_holder_left(user):
    """Each test starts and ends without a holder of the test user (killed by pid: another file's
    test may have left one to its idle time)."""
    _kill_holders(user.uid)
    yield
    _kill_holders(user.uid)


def _kill_holders(uid: int) -> None:
    for pid in holders(uid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: nothing_kept(uid), timeout=10)


def joined(r: subprocess.CompletedProcess) -> tuple[int, int]:
    m = JOINED.search(r.stderr)
    assert m, r.stderr
    return int(m.group(1)), int(m.group(2))


def kept_run(shim, image, command: str, *opts: str, env: dict[str, str] | None = None, cwd: str = "/tmp"):
    return shim.run([*opts, "--debug", image, "sh", "-c", command], env={**KEPT, **(env or {})}, cwd=cwd)


def test_second_launch_joins_the_first_ones_mount(shim, user, busybox_sif):
    first = kept_run(shim, busybox_sif, "stat -c %d /")
    assert first.returncode == 0, first.stderr
    assert STARTING.search(first.stderr), first.stderr
    holder, fuse = joined(first)
    assert holders(user.uid) == [holder]
    # the holder outlives the launch, in a session of its own (a Ctrl-C of a launch does not reach it),
    # and is the native front-end's fork, never a copy of Python (also when the launch was planned)
    assert os.getsid(holder) == holder
    assert os.readlink(f"/proc/{holder}/exe").endswith("/libexec/shimrun")
    second = kept_run(shim, busybox_sif, "stat -c %d /")
    assert second.returncode == 0, second.stderr
    assert joined(second) == (holder, fuse)
    assert not STARTING.search(second.stderr)
    assert first.stdout == second.stdout  # "/" is the same squashfuse mount
    if not os.environ.get(NO_RECORD_CACHE):
        assert "launch record from the cache (no Python)" in second.stderr
    # the mount is the holder's, never the host's
    assert not [m for m in host_fuse_mounts() if "squashfuse" in m and f"user_id={user.uid}" in m]


def test_each_launch_has_its_own_binds(shim, user, busybox_sif, user_dir):
    mine = user_dir / "one"
    mine.mkdir()
    (mine / "mark").write_text("launch one\n")
    os.chown(mine / "mark", user.uid, user.gid)
    os.chown(mine, user.uid, user.gid)
    first = shim.popen(["--debug", "-B", f"{mine}:/mnt/one", "--writable-tmpfs", busybox_sif, "sh", "-c",
                        "cat /mnt/one/mark; touch /made-by-one; sleep 2"], env=KEPT)
    assert wait_until(lambda: holders(user.uid), timeout=20)
    second = kept_run(shim, busybox_sif, "ls /mnt/one || ls /made-by-one || echo neither")
    out, err = first.communicate(timeout=30)
    assert first.returncode == 0, err
    assert out == "launch one\n"
    assert second.returncode == 0, second.stderr
    assert second.stdout == "neither\n"  # neither the bind nor the file of launch one is there
    assert JOINED.search(err).groups() == JOINED.search(second.stderr).groups()


def test_idle_timeout_ends_holder_and_mount(shim, user, busybox_sif):
    r = kept_run(shim, busybox_sif, "true", env={"SHIMRUN_KEPT_IDLE": "2"})
    assert r.returncode == 0, r.stderr
    holder, fuse = joined(r)
    ended = time.monotonic()
    time.sleep(1)
    assert holders(user.uid) == [holder]  # idle, not yet gone
    assert wait_until(lambda: nothing_kept(user.uid), timeout=6)
    assert 1.5 < time.monotonic() - ended < 4.5
    assert not _live(user.uid, "squashfuse_ll") and fuse not in _live(user.uid, "squashfuse_ll")


def test_holder_stays_while_an_app_runs(shim, user, busybox_sif):
    """The idle time counts from the last app's end: a long app keeps its mount."""
    p = shim.popen([busybox_sif, "sleep", "3"], env={**KEPT, "SHIMRUN_KEPT_IDLE": "0"})
    assert wait_until(lambda: holders(user.uid), timeout=20)
    time.sleep(1.5)
    assert holders(user.uid) and p.poll() is None
    p.communicate(timeout=30)
    assert p.returncode == 0
    assert wait_until(lambda: nothing_kept(user.uid), timeout=5)


@pytest.mark.parametrize("victim", ["holder", "squashfuse"])
def test_killed_holder_or_squashfuse_leaves_nothing_and_next_launch_works(shim, user, busybox_sif, victim):
    r = kept_run(shim, busybox_sif, "true")
    assert r.returncode == 0, r.stderr
    holder, fuse = joined(r)
    os.kill(holder if victim == "holder" else fuse, signal.SIGKILL)
    assert wait_until(lambda: nothing_kept(user.uid), timeout=10)
    again = kept_run(shim, busybox_sif, "cat /etc/os-release >/dev/null; echo ok")
    assert again.returncode == 0 and again.stdout == "ok\n", again.stderr
    assert joined(again)[0] != holder


def test_concurrent_first_launches_start_one_holder(shim, user, busybox_sif):
    n = 6
    line = " & ".join([f"{shim.shimrun} --debug {busybox_sif} true 2>&1"] * n) + " & wait"
    r = shim.sh(line, env=KEPT, timeout=120)
    assert r.returncode == 0, r.stdout
    pids = {m.group(1) for m in JOINED.finditer(r.stdout)}
    assert len(JOINED.findall(r.stdout)) == n, r.stdout
    assert len(pids) == 1, r.stdout
    assert len(STARTING.findall(r.stdout)) == 1, r.stdout
    assert len(holders(user.uid)) == 1


def test_another_image_gets_another_holder(shim, user, busybox_sif, user_dir):
    other = user_dir / "other.sif"
    shutil.copyfile(busybox_sif, other)
    other.chmod(0o644)
    a = kept_run(shim, busybox_sif, "stat -c %d /")
    b = kept_run(shim, other, "stat -c %d /")
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert joined(a) != joined(b) and a.stdout != b.stdout
    assert len(holders(user.uid)) == 2


def test_bad_idle_value_is_one_line(shim, busybox_sif):
    r = shim.run([busybox_sif, "true"], env={**KEPT, "SHIMRUN_KEPT_IDLE": "ten"})
    one_error_line(r, ExitCode.USAGE, "SHIMRUN_KEPT_IDLE", "seconds")


SQUATTER = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(b"\\0" + sys.argv[1].encode())
if sys.argv[2] == "listen":
    s.listen(16)
print("ready", flush=True)
if sys.argv[2] == "listen":
    c, _ = s.accept()
    c.settimeout(5)
    got = b""
    try:
        while chunk := c.recv(4096):
            got += chunk
    except OSError:
        pass
    print("connection:" + repr(got), flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("how", ["listen", "bind-only"])
def test_another_users_socket_is_refused(shim, user, other_user, busybox_sif, how):
    """An abstract socket's name is not private: another user who binds the holder's name first
    (it is predictable: the image's identity is public) never gets this user's request, nor is
    joined; the launch mounts the image for itself, with a warning, and works."""
    r = kept_run(shim, busybox_sif, "true", env={"SHIMRUN_KEPT_IDLE": "0"})
    name = STARTING.search(r.stderr).group(1)
    assert wait_until(lambda: nothing_kept(user.uid), timeout=10)
    squatter = subprocess.Popen([sys.executable, "-c", SQUATTER, name, how], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, user=other_user.uid, group=other_user.gid,
                                extra_groups=[], cwd="/")
    try:
        assert squatter.stdout.readline() == "ready\n"
        got = kept_run(shim, busybox_sif, "echo ran")
        assert got.returncode == 0, got.stderr
        assert got.stdout == "ran\n"
        warning = "belongs to another user" if how == "listen" else "is bound but does not answer"
        assert f"shimrun: warning: the kept mount's socket for {busybox_sif} {warning}" in got.stderr
        assert not JOINED.search(got.stderr) and not holders(user.uid)
        assert "squashfuse (pid" in got.stderr  # mounted for this launch
        if how == "listen":
            assert squatter.stdout.readline() == "connection:b''\n"  # not a byte of the request
    finally:
        squatter.kill()
        squatter.wait()
    assert as_user(other_user, ["true"]).returncode == 0


INTRUDER = """
import array, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(b"\\0" + sys.argv[1].encode())
data, anc = b"", []
try:  # the holder may hang up before the request is written: that is the answer too
    s.sendall(sys.argv[2].encode() + b"\\0" + b"600\\0")
    s.shutdown(socket.SHUT_WR)
    data, anc, _, _ = s.recvmsg(4096, socket.CMSG_SPACE(2 * array.array("i").itemsize))
except (BrokenPipeError, ConnectionResetError):
    pass
print(repr(data), len(anc), flush=True)
"""


def test_another_user_gets_nothing_from_a_holder(shim, user, other_user, busybox_sif):
    """The other way round: another user who connects to this user's holder and asks as a launch
    would gets no namespace and not a byte; the holder serves its user on."""
    r = kept_run(shim, busybox_sif, "true", env={"SHIMRUN_KEPT_IDLE": "30"})
    name = STARTING.search(r.stderr).group(1)
    holder = joined(r)[0]
    got = as_user(other_user, [sys.executable, "-c", INTRUDER, name, KEPT_REQUEST], cwd="/", timeout=30)
    assert got.returncode == 0, got.stderr
    assert got.stdout == "b'' 0\n"
    again = kept_run(shim, busybox_sif, "true")
    assert again.returncode == 0 and joined(again)[0] == holder, again.stderr


def test_holder_ends_with_the_slurm_job(shim, slurm1, user, busybox_sif, user_dir):
    """Under Slurm the holder watches the job step's slurmstepd it was started under: the batch
    script's launches share it, and it is gone when the job ends, long before its idle time."""
    script = user_dir / "job.sh"
    script.write_text("#!/bin/sh\n"
                      f"{shim.shimrun} --debug {busybox_sif} stat -c %d / 2>&1\n"
                      f"{shim.shimrun} --debug {busybox_sif} stat -c %d / 2>&1\n"
                      "sleep 1\n")
    script.chmod(0o755)
    out = user_dir / "job.out"
    env = slurm1.env(shim.env({**KEPT, "SHIMRUN_KEPT_IDLE": "600"}))
    r = slurm1.run(["sbatch", "--wait", "-o", out, script], user=user, env=env, timeout=120, cwd=user_dir)
    assert r.returncode == 0, r.stderr + slurm1.logs()
    text = out.read_text()
    pairs = JOINED.findall(text)
    assert len(pairs) == 2 and pairs[0] == pairs[1], text
    assert wait_until(lambda: nothing_kept(user.uid), timeout=15), (holders(user.uid), text)
    # and a kept mount bound to a step ends with the step
    r = slurm1.srun(["-n", "1", shim.shimrun, "--debug", busybox_sif, "true"], user=user, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert JOINED.search(r.stderr), r.stderr
    assert wait_until(lambda: nothing_kept(user.uid), timeout=15), holders(user.uid)
    # a step with several tasks on the node shares one container, which mounts the image itself
    r = slurm1.srun(["-n", "2", shim.shimrun, "--debug", busybox_sif, "stat", "-c", "%d", "/"], user=user, env=env,
                    timeout=120)
    assert r.returncode == 0, r.stderr
    assert len(set(r.stdout.split())) == 1 and not JOINED.search(r.stderr), r.stderr
    assert nothing_kept(user.uid)


def test_kept_name_is_the_users_and_the_images(shim, user, busybox_sif):
    r = kept_run(shim, busybox_sif, "true", env={"SHIMRUN_KEPT_IDLE": "0"})
    name = STARTING.search(r.stderr).group(1)
    prefix, uid, node, job, digest = name.split("/")
    assert (prefix, uid, node, job) == (KEPT_SOCKET, str(user.uid), socket.gethostname()[:24], "-")
    assert re.fullmatch(r"[0-9a-f]{32}", digest)


@pytest.mark.parametrize(("value", "want"), [(None, 600), ("", 600), ("0", 0), (" 5 ", 5), ("604800", 604800)])
def test_idle_values(value, want):
    assert kept_idle({} if value is None else {"SHIMRUN_KEPT_IDLE": value}) == want
    assert kept_idle({}, site_default=60) == 60


@pytest.mark.parametrize("value", ["-1", "1e3", "604801", "10m", "\u0663", "0x10"])
def test_bad_idle_values(value):
    with pytest.raises(UsageError, match="SHIMRUN_KEPT_IDLE"):
        kept_idle({"SHIMRUN_KEPT_IDLE": value})
