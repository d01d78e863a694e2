"""The node-local unpacked copy under a real local Slurm (issue #24 item 2): the ranks of a step
that each plan at once (SHIMRUN_SHARE=0: a container per rank) make one unpack between them and all
run from that one root; the next step (sharing the node's container) reuses it, unpacking nothing.
Staged (issue #24 item 4), a job copies its image to each node once for all its steps."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from slurm import local_slurm_fixture

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="a local Slurm needs root")

slurm3 = local_slurm_fixture(3)

UNPACKED = "later launches reuse it"
# Each rank: its rank, the root's inode and device, the unpacked root's lock it holds (fd 1000).
REPORT = 'echo "$SLURM_PROCID $(stat -c %i:%d /) $(readlink /proc/self/fd/1000)"'


def test_sixteen_ranks_unpack_once_and_the_next_step_reuses_it(shim, slurm3, user, busybox_sif, user_dir):
    cache = user_dir / "cache"
    env = slurm3.env(shim.env({"SHIMRUN_CACHE": str(cache), "SHIMRUN_SHARE": "0"}))
    line = ["-N", "1", "-n", "16", "--mpi=none", shim.shimrun, busybox_sif, "sh", "-c", REPORT]
    first = slurm3.srun(line, user=user, env=env, timeout=180)
    assert first.returncode == 0, first.stderr + slurm3.logs()
    assert first.stderr.count(UNPACKED) == 1, first.stderr
    ranks = [ln.split() for ln in first.stdout.splitlines() if ln.strip()]
    assert sorted(int(r[0]) for r in ranks) == list(range(16)), first.stdout
    assert len({r[1] for r in ranks}) == 1 and len({r[2] for r in ranks}) == 1, ranks  # one root
    (root,) = [p for p in (cache / "rootfs").iterdir() if p.is_dir()]
    assert ranks[0][2] == f"{root}.lock"
    shared = slurm3.env(shim.env({"SHIMRUN_CACHE": str(cache)}))
    second = slurm3.srun(line, user=user, env=shared, timeout=180)
    assert second.returncode == 0, second.stderr + slurm3.logs()
    assert UNPACKED not in second.stderr, second.stderr
    again = [ln.split() for ln in second.stdout.splitlines() if ln.strip()]
    assert len(again) == 16 and {r[1] for r in again} == {ranks[0][1]}, again
    assert [p for p in (cache / "rootfs").iterdir() if p.is_dir()] == [root]
    assert not [p for p in Path(cache / "rootfs").iterdir() if ".partial." in p.name]


STAGED = re.compile(r"shimrun: staged \S+ \(\d+ MiB\) to (\S+)/staged/[0-9a-f]{64}\.sqfs in ")


def test_a_job_stages_its_image_once_per_node_for_all_its_steps(shim, slurm3, user, busybox_sif, user_dir):
    """Three nodes, two ranks each planning at once (SHIMRUN_SHARE=0), three steps: one copy per
    node in the first step, none after; each node's cache is its own (as on real nodes)."""
    caches = user_dir / "nodes"
    caches.mkdir()
    os.chown(caches, user.uid, user.gid)
    env = slurm3.env(shim.env({"SHIMRUN_STAGE": "always", "SHIMRUN_SHARE": "0"}))
    task = (f"SHIMRUN_CACHE={caches}/$SLURMD_NODENAME exec {shim.shimrun} --serve mount {busybox_sif} "
            '/bin/busybox sh -c "echo $SLURMD_NODENAME"')
    copies = []
    for _step in range(3):
        r = slurm3.srun(["-N", "3", "-n", "6", "--ntasks-per-node", "2", "--mpi=none", "sh", "-c", task],
                        user=user, env=env, timeout=180)
        assert r.returncode == 0, r.stderr + slurm3.logs()
        assert sorted(r.stdout.split()) == ["n1", "n1", "n2", "n2", "n3", "n3"], r.stdout
        copies.append(sorted(STAGED.findall(r.stderr)))
    assert copies[0] == [str(caches / n) for n in ("n1", "n2", "n3")], copies
    assert copies[1:] == [[], []], copies
    for n in ("n1", "n2", "n3"):
        assert len(list((caches / n / "staged").glob("*.sqfs"))) == 1
