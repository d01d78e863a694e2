"""One container per node per job step, under a real local Slurm with three emulated nodes:
ranks on one node share one image mount and one mount namespace, ranks on other nodes get their
own, diagnostics print once per node, scancel reaches every app, and nothing is left behind."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import compat_bin_dir
from leftovers import wait_until
from slurm import local_slurm_fixture

from shim.record.format import NO_RECORD_CACHE

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="a local Slurm needs root")

slurm3 = local_slurm_fixture(3)

# Each rank: node, rank, its mount namespace, the device of "/" (the image's FUSE mount), job id.
REPORT = ('echo "$SLURMD_NODENAME $SLURM_PROCID $(readlink /proc/self/ns/mnt) $(stat -c %d /) $SLURM_JOB_ID"')


def env_for(shim, slurm, mark: str, **extra: str) -> dict[str, str]:
    return slurm.env(shim.env({"SHIM_TEST_MARK": mark, **extra}))


def marked(mark: str) -> dict[int, str]:
    """Live processes carrying this test's marker in their environment (ranks, holders,
    squashfuse): a concurrent run's processes of the same user do not count."""
    found = {}
    needle = f"SHIM_TEST_MARK={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                stat = (entry / "stat").read_text()
                if stat.rpartition(")")[2].split()[0] != "Z":
                    found[int(entry.name)] = (entry / "comm").read_text().strip()
        except OSError:
            continue
    return found


def socket_job(name: str) -> str:
    """The job id in a group's socket name: @shimrun/UID/slurm-JOB.STEP@NODE/KEY."""
    return name.split("/")[2].removeprefix("slurm-").split(".")[0]


def shim_sockets(uid: int, job_ids: set[str]) -> list[str]:
    """Listening shimrun group sockets of these jobs (the holder's: gone when it is)."""
    names = [ln.split()[-1] for ln in Path("/proc/net/unix").read_text().splitlines()
             if f"@shimrun/{uid}/slurm-" in ln]
    return [n for n in names if socket_job(n) in job_ids]


def nothing_left(mark: str, uid: int, job_ids: set[str]) -> bool:
    return not marked(mark) and not shim_sockets(uid, job_ids)


def reports(stdout: str) -> list[tuple[str, int, str, str, str]]:
    out = []
    for line in stdout.splitlines():
        node, rank, ns, dev, job = line.split()
        out.append((node, int(rank), ns, dev, job))
    return out


@contextlib.contextmanager
def reporting_at_a_barrier(user, tmp_path, ranks: int) -> Iterator[str]:
    """A rank script: REPORT, then wait until all `ranks` have reported. The barrier is in the
    user's (bound) home: no rank ends before all have reported, so every container of the step
    exists at once; a namespace's inode number and a FUSE mount's device are reused once they are
    gone, and two containers one after the other could read as one."""
    barrier = Path(user.home) / f".shim-barrier-{tmp_path.name}"
    barrier.mkdir()
    os.chown(barrier, user.uid, user.gid)
    try:
        yield (f'{REPORT}; touch {barrier}/$SLURM_PROCID; n=0; '
               f'while [ "$(ls {barrier} | wc -l)" -lt {ranks} ] && [ $n -lt 60 ]; do sleep 1; n=$((n+1)); done')
    finally:
        shutil.rmtree(barrier, ignore_errors=True)


def test_two_nodes_eight_ranks_two_containers(shim, slurm3, user, busybox_sif, tmp_path):
    with reporting_at_a_barrier(user, tmp_path, 8) as wait:
        r = slurm3.srun(["-N", "2", "-n", "8", "--mpi=none", shim.shimrun, busybox_sif, "sh", "-c", wait],
                        user=user, env=env_for(shim, slurm3, "two-nodes"), timeout=120)
    assert r.returncode == 0, r.stderr + slurm3.logs()
    got = reports(r.stdout)
    assert sorted(g[1] for g in got) == list(range(8))
    by_node: dict[str, set[tuple[str, str]]] = {}
    for node, _rank, ns, dev, _job in got:
        by_node.setdefault(node, set()).add((ns, dev))
    assert len(by_node) == 2, got
    assert all(len(v) == 1 for v in by_node.values()), by_node      # one container per node...
    assert len(set().union(*by_node.values())) == 2, by_node          # ...and two in all
    jobs = {g[4] for g in got}
    assert wait_until(lambda: nothing_left("two-nodes", user.uid, jobs), timeout=10), marked("two-nodes")


def test_64_ranks_on_one_node_mount_the_image_once(shim, slurm3, user, busybox_sif):
    # Rank 0 stays a little longer, so the sampling below sees the whole step.
    script = f'{REPORT}; sleep 2'
    # --serve mount: what is counted is the per-launch squashfuse (an unpacked root has none)
    proc = subprocess.Popen(["srun", "-N", "1", "-n", "64", "--mpi=none", shim.shimrun, "--serve", "mount",
                             str(busybox_sif), "sh", "-c", script], env=env_for(shim, slurm3, "sixty-four"), cwd="/tmp",
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, user=user.uid, group=user.gid,
                            extra_groups=[])
    counts = []
    deadline = time.monotonic() + 90
    while proc.poll() is None and time.monotonic() < deadline:
        counts.append(sum(1 for c in marked("sixty-four").values() if c == "squashfuse_ll"))
        time.sleep(0.05)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err + slurm3.logs()
    got = reports(out)
    assert sorted(g[1] for g in got) == list(range(64))
    assert len({(g[2], g[3]) for g in got}) == 1
    assert max(counts) == 1, Counter(counts)
    jobs = {g[4] for g in got}
    assert wait_until(lambda: nothing_left("sixty-four", user.uid, jobs), timeout=10), marked("sixty-four")


def test_scancel_reaches_every_rank_and_nothing_remains(shim, slurm3, user, busybox_sif, user_dir):
    got = user_dir / "got"
    script = (f'trap "echo term $SLURM_PROCID >> {got}; exit 143" TERM; '
              f'echo up $SLURM_PROCID $SLURM_JOB_ID >> {got}; while :; do sleep 0.1; done')
    proc = subprocess.Popen(["srun", "-N", "2", "-n", "4", "--mpi=none", "-J", "shim-scancel", shim.shimrun,
                             str(busybox_sif), "sh", "-c", script], env=env_for(shim, slurm3, "scancel"), cwd="/tmp",
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, user=user.uid,
                            group=user.gid, extra_groups=[])
    assert wait_until(lambda: got.exists() and got.read_text().count("up") == 4, timeout=30), slurm3.logs()
    jobs = set(re.findall(r"up \d+ (\d+)", got.read_text()))
    r = slurm3.run(["scancel", "--name", "shim-scancel"], user=user, env=shim.env())
    assert r.returncode == 0, r.stderr
    proc.communicate(timeout=60)
    assert wait_until(lambda: got.read_text().count("term") == 4, timeout=10), got.read_text()
    assert sorted(re.findall(r"term (\d)", got.read_text())) == ["0", "1", "2", "3"]
    assert wait_until(lambda: nothing_left("scancel", user.uid, jobs), timeout=15), marked("scancel")


def test_a_warm_step_runs_no_python_on_the_node(shim, slurm3, user, busybox_sif):
    """The step's second run finds the launch record: no Python process at any time on the node;
    the container's holder is the native front-end (one per node), besides squashfuse and the apps."""
    if os.environ.get(NO_RECORD_CACHE):
        pytest.skip("SHIMRUN_NO_RECORD_CACHE: every launch is planned")
    # -w n1: both steps on one node (a record is the node's: another node plans its own)
    args = ["-N", "1", "-n", "4", "-w", "n1", "--mpi=none", shim.shimrun, "--serve", "mount", busybox_sif, "sh", "-c",
            "sleep 1"]
    r = slurm3.srun(args, user=user, env=env_for(shim, slurm3, "warm-step"), timeout=120)
    assert r.returncode == 0, r.stderr + slurm3.logs()
    proc = subprocess.Popen(["srun", *map(str, args)], env=env_for(shim, slurm3, "warm-step"), cwd="/tmp", text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, user=user.uid, group=user.gid,
                            extra_groups=[])
    seen: Counter = Counter()
    while_running: list[Counter] = []  # the processes besides srun's when all four apps run
    while proc.poll() is None:
        now = Counter(marked("warm-step").values())
        seen.update(set(now))
        if now["sleep"] == 4:
            while_running.append(now)
        time.sleep(0.02)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert not [c for c in seen if c.startswith("python")], seen
    assert while_running, seen
    assert all(c["shimrun"] == 1 and c["squashfuse_ll"] == 1 for c in while_running), while_running


def test_socket_job_parses_group_names():
    assert socket_job("@shimrun/1001/slurm-4711.0@n2/0123abcd") == "4711"


def test_exit_status_of_each_rank_is_what_slurm_reports(shim, slurm3, user, busybox_sif):
    r = slurm3.srun(["-N", "1", "-n", "3", "--mpi=none", shim.shimrun, busybox_sif, "sh", "-c",
                     'exit $((SLURM_PROCID + 3))'], user=user, env=env_for(shim, slurm3, "exit"), timeout=60)
    assert r.returncode == 5, r.stderr  # srun exits with the highest task exit code
    assert re.search(r"task 2: Exited with exit code 5", r.stderr), r.stderr


def test_share_off_gives_each_rank_its_own_container(shim, slurm3, user, busybox_sif):
    # Each rank stays a second: a namespace's inode number is reused once it is gone, so ranks
    # that did not overlap could show the same number for different namespaces.
    r = slurm3.srun(["-N", "1", "-n", "3", "--mpi=none", shim.shimrun, busybox_sif, "sh", "-c", f"{REPORT}; sleep 1"],
                    user=user, env=env_for(shim, slurm3, "off", SHIMRUN_SHARE="0"), timeout=60)
    assert r.returncode == 0, r.stderr
    assert len({g[2] for g in reports(r.stdout)}) == 3


def test_pmi_mismatch_is_reported_once_per_node(shim, slurm3, user):
    import images

    image = images.build_sif(images.DEBIAN_MPICH)
    r = slurm3.srun(["-N", "2", "-n", "4", "--mpi=none", shim.shimrun, image, "/opt/app/hello"], user=user,
                    env=env_for(shim, slurm3, "pmi-none"), timeout=120)
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "MPI-PMI-MISMATCH" in ln]
    # once per node, for the two nodes Slurm chose (not always n1 and n2: a node still finishing
    # an earlier step is passed over)
    nodes = [ln.split("]")[0].removeprefix("shimrun: [") for ln in lines]
    assert len(nodes) == 2 and len(set(nodes)) == 2 and set(nodes) <= {"n1", "n2", "n3"}, r.stderr
    assert "4 tasks" in lines[0] and "rank 0 of a 1-rank world" in lines[0] and "--mpi=pmi2" in lines[0]
    assert r.stdout.count("rank 0 of 1") == 4  # what the line predicted
    ok = slurm3.srun(["-N", "1", "-n", "2", "--mpi=pmi2", shim.shimrun, image, "/opt/app/hello"], user=user,
                     env=env_for(shim, slurm3, "pmi-two"), timeout=120)
    assert ok.returncode == 0 and "MPI-PMI-MISMATCH" not in ok.stderr, ok.stderr
    assert "sum=3 expected=3 ok" in ok.stdout


def test_step_time_limit_reaches_every_rank_as_sigterm(shim, slurm3, user, busybox_sif, user_dir):
    """A step that runs out of time (srun -t 1: Slurm's smallest limit, one minute) ends the way
    scancel does: every app gets SIGTERM, and nothing remains."""
    got = user_dir / "got"
    script = (f'trap "echo term $SLURM_PROCID >> {got}; exit 143" TERM; '
              f'echo up $SLURM_PROCID $SLURM_JOB_ID >> {got}; while :; do sleep 0.2; done')
    r = slurm3.srun(["-N", "1", "-n", "2", "-t", "1", "--mpi=none", shim.shimrun, busybox_sif, "sh", "-c", script],
                    user=user, env=env_for(shim, slurm3, "time-limit"), timeout=240)
    assert r.returncode != 0
    assert "DUE TO TIME LIMIT" in r.stderr, r.stderr
    assert sorted(re.findall(r"term (\d)", got.read_text())) == ["0", "1"], got.read_text()
    jobs = set(re.findall(r"up \d+ (\d+)", got.read_text()))
    # The step's end is slurmd's: SIGTERM, then SIGKILL KillWait (5 s) later, each a message that a
    # loaded 2-core node (the suite beside a fuzzing run) delivers late: 45 s, not 15.
    assert wait_until(lambda: nothing_left("time-limit", user.uid, jobs), timeout=45), marked("time-limit")


def test_apptainer_exec_ranks_share_one_container(shim, slurm3, user, busybox_sif, tmp_path):
    """Through the compatibility command, as a workflow engine's task under srun runs it."""
    with reporting_at_a_barrier(user, tmp_path, 3) as wait:
        r = slurm3.srun(["-N", "1", "-n", "3", "--mpi=none", str(compat_bin_dir() / "apptainer"), "exec",
                         busybox_sif, "sh", "-c", wait], user=user, env=env_for(shim, slurm3, "compat"), timeout=120)
    assert r.returncode == 0, r.stderr + slurm3.logs()
    got = reports(r.stdout)
    assert sorted(g[1] for g in got) == [0, 1, 2]
    assert len({(g[2], g[3]) for g in got}) == 1, got


def test_env_minus_apptainer_exec_under_srun(shim, slurm3, user, busybox_sif):
    """Nextflow runs each task as `env - PATH="$PATH" apptainer exec ...`: no SLURM_* variable is
    left, so each task is a container of its own, and it still runs."""
    r = slurm3.srun(["-N", "1", "-n", "2", "--mpi=none", "env", "-", "PATH=/usr/bin:/bin",
                     str(compat_bin_dir() / "apptainer"), "exec", busybox_sif, "sh", "-c",
                     'echo "task ${SLURM_PROCID:-none} $(readlink /proc/self/ns/mnt)"'],
                    user=user, env=env_for(shim, slurm3, "env-minus"), timeout=120)
    assert r.returncode == 0, r.stderr + slurm3.logs()
    lines = sorted(r.stdout.splitlines())
    assert len(lines) == 2 and all(ln.startswith("task none mnt:[") for ln in lines), r.stdout


@pytest.mark.parametrize("isolation", [["--network", "none"], ["--containall"], ["--writable-tmpfs"]])
def test_options_of_a_container_of_its_own_under_srun(shim, slurm3, user, busybox_sif, isolation):
    """New namespaces and a writable root are never a node's shared container: each rank gets
    its own, and what it asked for holds in each."""
    r = slurm3.srun(["-N", "1", "-n", "2", "--mpi=none", str(compat_bin_dir() / "apptainer"), "exec", *isolation,
                     busybox_sif, "sh", "-c", 'echo "$(ip -o link | wc -l) links"'],
                    user=user, env=env_for(shim, slurm3, "alone"), timeout=120)
    assert r.returncode == 0, r.stderr + slurm3.logs()
    lines = r.stdout.splitlines()
    assert len(lines) == 2, r.stdout
    if "--network" in isolation:
        assert all(ln.split()[0] == "1" for ln in lines), r.stdout  # only lo, in each rank
