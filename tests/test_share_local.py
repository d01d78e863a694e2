"""Sharing outside Slurm (ranks started by mpiexec): SHIMRUN_SHARE=1 groups the processes of one
parent, SHIMRUN_SHARE=TAG by tag; off by default. And the node's task count from Slurm's variables."""

from __future__ import annotations

import shutil

import pytest
from leftovers import user_processes, wait_until

from shim.native import group_name, local_tasks

NS = "readlink /proc/self/ns/mnt; sleep 0.3"


def namespaces(shim, busybox_sif, share: str | None, n: int = 4) -> list[str]:
    env = f"SHIMRUN_SHARE={share} " if share is not None else ""
    line = " & ".join([f"{env}{shim.shimrun} {busybox_sif} sh -c '{NS}'"] * n) + " & wait"
    r = shim.sh(line)
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def test_share_by_parent(shim, busybox_sif):
    got = namespaces(shim, busybox_sif, "1")
    assert len(got) == 4 and len(set(got)) == 1
    assert wait_until(lambda: "squashfuse_ll" not in user_processes(shim.user.uid).values(), timeout=5)


def test_no_sharing_by_default_outside_slurm(shim, busybox_sif):
    got = namespaces(shim, busybox_sif, None, n=3)
    assert len(set(got)) == 3


@pytest.mark.parametrize(("spec", "node", "want"), [
    ("4(x2)", "1", 4), ("3,2(x3)", "0", 3), ("3,2(x3)", "3", 2), ("8", "0", 8), ("2(x2)", "5", 0),
    ("", "0", 0), ("garbage", "0", 0)])
def test_local_tasks(spec, node, want):
    assert local_tasks({"SLURM_STEP_TASKS_PER_NODE": spec, "SLURM_NODEID": node}) == want


def test_group_names_differ_by_step_node_options_and_command(tmp_path):
    img = str(tmp_path / "img.sif")
    (tmp_path / "img.sif").write_bytes(b"x")
    base = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURMD_NODENAME": "n1"}

    def name(args, env):
        return group_name(["shimrun", *args], "/tmp", env, 1001)

    a = name([img, "app"], base)
    assert a is not None and a.startswith(b"\0shimrun/1001/slurm-7.0@n1/")
    assert name([img, "app"], base) == a
    assert name([img, "app"], {**base, "SLURM_STEP_ID": "1"}) != a
    assert name([img, "app"], {**base, "SLURMD_NODENAME": "n2"}) != a
    assert name(["--fakeroot", img, "app"], base) != a
    assert name([img, "other"], base) != a  # another program: its own plan, its own container
    assert name([img, "app", "1"], base) == name([img, "app", "2"], base)  # its arguments: each rank's own
    assert name([img, "app"], {**base, "SHIMRUN_BIND": "/x"}) != a
    assert name([img, "app"], {**base, "UNRELATED": "1"}) == a
    assert name([img, "app"], {**base, "SHIMRUN_SHARE": "0"}) is None
    assert name([img, "app"], {}) is None  # outside Slurm: only when asked


def test_joining_rank_needs_few_file_syscalls(shim, busybox_sif, user_dir):
    """Issue #5's budget: a rank joining its node's container makes at most 200 file-system
    syscalls (the native front-end, not Python), the app's own included."""
    if not shutil.which("strace"):
        pytest.skip("strace is not installed")
    counts = user_dir / "strace.txt"
    line = (f"SHIMRUN_SHARE=t {shim.shimrun} {busybox_sif} sleep 1 & sleep 0.5; "
            f"SHIMRUN_SHARE=t strace -f -c -e trace=%file -o {counts} {shim.shimrun} {busybox_sif} sleep 1; wait")
    r = shim.sh(line, cwd=user_dir)
    assert r.returncode == 0, r.stderr
    total = next(ln for ln in counts.read_text().splitlines() if ln.rstrip().endswith("total"))
    calls = int(total.split()[3])  # % time, seconds, usecs/call, calls, [errors], "total"
    assert 0 < calls <= 200, counts.read_text()
    assert "openat2" not in counts.read_text()  # no mount set-up: it joined


def test_ranks_started_by_mpiexec_share_one_container(shim, user):
    """Outside Slurm, when asked (SHIMRUN_SHARE=1): the host's mpiexec (hydra) starts 2 ranks of
    shimrun on this node; they share one container and still form one MPI world (PMI through
    the environment and fds hydra hands each rank)."""
    import hostmpi
    import images

    mpi = hostmpi.build_host_mpi()
    if mpi.mpiexec is None:
        pytest.skip("the host MPI has no mpiexec")
    image = images.build_sif(images.DEBIAN_MPICH)
    script = "echo ns $(readlink /proc/self/ns/mnt); exec /opt/app/hello"
    r = shim.sh(f"SHIMRUN_SHARE=1 {mpi.mpiexec} -n 2 {shim.shimrun} --no-profiles {image} sh -c '{script}'",
                timeout=120)
    assert r.returncode == 0, r.stderr
    namespaces = {ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("ns ")}
    assert len(namespaces) == 1, r.stdout
    assert "rank 0 of 2" in r.stdout and "rank 1 of 2" in r.stdout and "sum=3 expected=3 ok" in r.stdout


def test_a_squatted_group_socket_gets_nothing(shim, user, busybox_sif):
    """Abstract socket names are not private: another user (root here) binds the name a rank
    would use. The rank must tell it nothing (not even its environment) and run on its own."""
    import os
    import socket
    import threading

    if os.getuid() != 0:
        pytest.skip("needs a second user (root) to squat the name")
    env = shim.env({"SHIMRUN_SHARE": "squat", "SECRET_TOKEN": "hunter2"})
    args = [str(busybox_sif), "echo", "ok"]
    name = group_name(["shimrun", *args], "/tmp", env, user.uid)
    assert name is not None
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(name)
    squatter.listen(8)
    received: list[bytes] = []

    def serve() -> None:
        squatter.settimeout(15)
        try:
            conn, _ = squatter.accept()
            conn.settimeout(5)
            received.append(conn.recv(1 << 16))
        except OSError:
            pass

    t = threading.Thread(target=serve)
    t.start()
    try:
        r = shim.run(args, env={"SHIMRUN_SHARE": "squat", "SECRET_TOKEN": "hunter2"})
    finally:
        t.join(20)
        squatter.close()
    assert r.returncode == 0 and r.stdout == "ok\n", r.stderr
    assert "belongs to another user" in r.stderr
    assert received in ([], [b""]), received  # connected at most, and was sent nothing
