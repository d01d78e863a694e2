"""The local Slurm harness (tests/slurm.py): a private slurmctld + slurmd(s) + munged, srun as the
ordinary test user, PMI-2 plugin wiring, three emulated nodes, and nothing left behind."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import slurm
from leftovers import user_processes, wait_until

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="a local Slurm needs root")

slurm1 = slurm.local_slurm_fixture(1)

DAEMONS = ("slurmctld", "slurmd", "slurmstepd", "munged")


def user_env(user) -> dict[str, str]:
    return {"HOME": user.home, "USER": user.name, "LOGNAME": user.name, "LANG": "C.UTF-8",
            "PATH": "/usr/local/bin:/usr/bin:/bin"}


def live_daemons() -> set[int]:
    """Running (not zombie) slurm/munge daemons on the machine, by pid."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm = (entry / "comm").read_text().strip()
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if comm in DAEMONS and state != "Z":
            found.add(int(entry.name))
    return found


def sleeps(user) -> list[int]:
    return [pid for pid, comm in user_processes(user.uid).items() if comm == "sleep" and slurm.alive(pid)]


def test_srun_hostname_as_user(slurm1, user):
    t0 = time.monotonic()
    r = slurm1.srun(["-n", "2", "sh", "-c", "echo $(hostname) $(id -u) $SLURMD_NODENAME"], user=user,
                    env=user_env(user))
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stderr + slurm1.logs()
    assert r.stdout.splitlines() == [f"{socket.gethostname()} {user.uid} n1"] * 2
    assert elapsed < 10, f"srun -n 2 took {elapsed:.1f}s"
    assert slurm1.start_seconds < slurm.START_TIMEOUT


def test_srun_pmi2_sets_ranks(slurm1, user):
    r = slurm1.srun(["--mpi=pmi2", "-n", "2", "env"], user=user, env=user_env(user))
    assert r.returncode == 0, r.stderr
    ranks = sorted(line for line in r.stdout.splitlines() if line.startswith("PMI_RANK="))
    assert ranks == ["PMI_RANK=0", "PMI_RANK=1"]
    assert r.stdout.count("PMI_FD=") == 2 and r.stdout.count("PMI_SIZE=2") == 2


def test_mpi_plugins(slurm1):
    plugins = slurm1.mpi_plugins()
    assert {"pmi2", "none"} <= set(plugins), plugins


def test_oversubscribed_64_tasks(slurm1, user):
    """64 declared CPUs on one node (SlurmdParameters=config_overrides): srun -n 64 runs at once."""
    r = slurm1.srun(["-n", "64", "printenv", "SLURM_PROCID"], user=user, env=user_env(user), timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(map(int, r.stdout.split())) == list(range(64))


def test_three_nodes_then_nothing_left(slurm1, user):
    """A second, 3-node cluster beside slurm1 (own ports, own munged); after stop() nothing of
    it runs any more and its directory is gone."""
    before = live_daemons()
    t0 = time.monotonic()
    with slurm.LocalSlurm(nodes=3) as s3:
        started = time.monotonic() - t0
        assert s3.base is not None and s3.base != slurm1.base
        assert s3.ctld_port != slurm1.ctld_port
        assert not set(s3.node_ports.values()) & set(slurm1.node_ports.values())
        r = s3.srun(["-N", "3", "-n", "3", "printenv", "SLURMD_NODENAME"], user=user, env=user_env(user))
        assert r.returncode == 0, r.stderr + s3.logs()
        assert sorted(r.stdout.split()) == ["n1", "n2", "n3"]
        # A step still running when the cluster stops is killed with it.
        sleeper = subprocess.Popen(["srun", "-N", "3", "-n", "3", "sleep", "300"], env=s3.env(user_env(user)),
                                   cwd="/tmp", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, user=user.uid, group=user.gid, extra_groups=[])
        assert wait_until(lambda: len(sleeps(user)) == 3, timeout=60), s3.logs()
        ours = set(s3.pids())
        base = s3.base
    stopped = time.monotonic() - t0
    sleeper.wait(timeout=30)
    assert len(ours) >= 1 + 1 + 3 + 3  # munged, slurmctld, 3 slurmd, 3 slurmstepd (+ slurmscriptd)
    assert not any(slurm.alive(p) for p in ours)
    assert not base.exists()
    assert slurm.procs_using(base) == []
    # No new daemon anywhere, except those of other clusters (a concurrent test run's).
    others = set().union(*(slurm.procs_using(b) for b in slurm.DEFAULT_PARENT.glob(slurm.BASE_PREFIX + "*")))
    assert live_daemons() - before - others == set()
    assert wait_until(lambda: not sleeps(user), timeout=5), sleeps(user)
    assert started < 15 and stopped < 40, (started, stopped)


def test_crashed_run_is_cleaned_up():
    """A test process killed with its cluster still up: the next start() kills the orphans and
    removes their directory (fresh ports mean the new one would start regardless)."""
    parent = Path("/var/tmp") / f"shim-slurm-crash.{os.getpid()}"
    parent.mkdir(mode=0o755)
    try:
        code = ("import os, sys, slurm\n"
                f"s = slurm.LocalSlurm(1, base_dir={str(parent)!r}).start()\n"
                "print(s.base, flush=True)\n"
                "os._exit(0)\n")
        r = subprocess.run([sys.executable, "-P", "-c", code], check=False, capture_output=True, text=True, timeout=60,
                           cwd=Path(__file__).parent, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)})
        assert r.returncode == 0, r.stderr
        stale = Path(r.stdout.strip())
        orphans = slurm.procs_using(stale)
        assert len(orphans) >= 3, orphans  # munged, slurmctld, slurmd (+ slurmscriptd)
        with slurm.LocalSlurm(1, base_dir=parent) as s:
            assert not stale.exists()
            assert not any(slurm.alive(p) for p in orphans)
            assert s.srun(["true"]).returncode == 0
        assert list(parent.iterdir()) == []
    finally:
        slurm.reap_stale(parent)
        parent.rmdir()
