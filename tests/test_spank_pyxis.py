"""pyxis's `srun --container-image` through shim's SPANK plugin (csrc/spank/), on a real local
Slurm of two nodes whose plugstack.conf loads the plugin this install built: each task runs as
`shimrun [options] IMAGE COMMAND`, one container per node per step, as an ordinary user. Steps
that must belong to one job run in an allocation held by a sleeping batch job (`srun --jobid`)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PREFIX, as_user
from leftovers import wait_until
from slurm import LocalSlurm

from shim.errors import ExitCode

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="a local Slurm needs root")

PLUGIN = PREFIX / "lib" / "shim_spank.so"
# Each task: node, rank, its mount namespace, the device of "/" (the image's mount), job id.
REPORT = 'echo "$SLURMD_NODENAME $SLURM_PROCID $(readlink /proc/self/ns/mnt) $(stat -c %d /) $SLURM_JOB_ID"'


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalSlurm]:
    if not PLUGIN.exists():
        pytest.skip(f"{PLUGIN} is not built: run scripts/install.sh")
    # allow_http: the test registry speaks plain HTTP (a site's setting, as enroot's ENROOT_ALLOW_HTTP)
    with LocalSlurm(2, plugstack=f"required {PLUGIN} allow_http=1\n") as c:
        yield c


def marked(mark: str) -> dict[int, str]:
    """Live processes carrying this test's marker in their environment (prefixed: other modules'
    tests, maybe running at the same time, use marks of the same words)."""
    found = {}
    needle = f"SHIM_TEST_MARK=pyxis-{mark}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (needle in (entry / "environ").read_bytes().split(b"\0")
                        and (entry / "stat").read_text().rpartition(")")[2].split()[0] != "Z"):
                    found[int(entry.name)] = (entry / "comm").read_text().strip()
            except OSError:
                continue
    return found


def env_for(cluster, shim, mark: str, **extra: str) -> dict[str, str]:
    return cluster.env(shim.env({"SHIM_TEST_MARK": f"pyxis-{mark}", **extra}))


def srun(cluster, shim, args, mark: str, timeout: float = 120, **extra: str) -> subprocess.CompletedProcess:
    return cluster.srun(["--mpi=none", *map(str, args)], user=shim.user, env=env_for(cluster, shim, mark, **extra),
                        timeout=timeout)


def shim_lines(stderr: str) -> list[str]:
    """The plugin's own lines (srun's, or slurmstepd's from a node)."""
    return [ln for ln in stderr.splitlines() if "shim: " in ln and "error" in ln]


@contextlib.contextmanager
def allocation(cluster, shim, nodes: int = 2) -> Iterator[str]:
    """A job holding `nodes` nodes (a sleeping batch script): its id, for `srun --jobid`."""
    r = cluster.run(["sbatch", "--parsable", "-N", str(nodes), "--ntasks-per-node=4", "-o", "/dev/null",
                     "--wrap", "sleep 600"], user=shim.user, env=shim.env())
    assert r.returncode == 0, r.stderr
    job = r.stdout.strip().split(";")[0]
    try:
        assert wait_until(lambda: cluster.run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip() == "RUNNING",
                          timeout=30), cluster.logs()
        yield job
    finally:
        cluster.run(["scancel", job])


def in_job(job: str, *args) -> list[str]:
    return [f"--jobid={job}", "--overlap", *map(str, args)]


def test_eight_tasks_on_two_nodes_run_in_two_containers(cluster, shim, busybox_sif):
    r = srun(cluster, shim, ["-N", "2", "-n", "8", f"--container-image={busybox_sif}", "sh", "-c",
                             f"{REPORT}; sleep 2"], "eight")
    assert r.returncode == 0, r.stderr + cluster.logs()
    rows = [line.split() for line in r.stdout.splitlines()]
    assert sorted(int(row[1]) for row in rows) == list(range(8))
    by_node: dict[str, set[tuple[str, str]]] = {}
    for node, _rank, ns, dev, _job in rows:
        by_node.setdefault(node, set()).add((ns, dev))
    assert len(by_node) == 2 and all(len(v) == 1 for v in by_node.values()), by_node  # one per node...
    containers = set().union(*by_node.values())
    assert len(containers) == 2, by_node                                               # ...two in all
    assert os.readlink("/proc/self/ns/mnt") not in {ns for ns, _ in containers}        # none the host's
    assert wait_until(lambda: not marked("eight"), timeout=10), marked("eight")


def test_exit_statuses_and_signals_pass_through(cluster, shim, busybox_sif):
    r = srun(cluster, shim, ["-N", "1", "-n", "3", f"--container-image={busybox_sif}", "sh", "-c",
                             "exit $((SLURM_PROCID + 3))"], "exit")
    assert r.returncode == 5, r.stderr
    assert re.search(r"task 2: Exited with exit code 5", r.stderr), r.stderr
    r = srun(cluster, shim, ["-N", "1", "-n", "1", f"--container-image={busybox_sif}", "sh", "-c", "kill -USR1 $$"],
             "signal")
    assert "task 0: User defined signal 1" in r.stderr, r.stderr


def test_multi_prog_runs_each_ranks_own_line_in_the_container(cluster, shim, busybox_sif, user_dir):
    """`srun --multi-prog CONF`: every task runs its own line of CONF inside its node's one
    container, with the arguments Slurm gives it without a container (ranks, %t/%o, quotes, a
    continued line, comments: the same run without --container-image is the oracle)."""
    conf = user_dir / "mp.conf"
    show = "$SLURMD_NODENAME $SHIMRUN_CONTAINER $(readlink /proc/self/ns/mnt)"
    conf.write_text("# rank 0 leads, the others work\n\n"
                    f"0 sh -c 'echo \"leader:[$0]\" {show}' %t\n"
                    f"1-3 sh -c 'echo \"worker:[$0]:[$1]:[$2]\" {show}' \\\n%t %o\n")
    args = ["-N", "2", "-n", "4", "--multi-prog", conf]
    r = srun(cluster, shim, [f"--container-image={busybox_sif}", *args], "mpmd")
    assert r.returncode == 0, r.stderr + cluster.logs()
    native = srun(cluster, shim, args, "mpmd-native")
    assert native.returncode == 0, native.stderr
    rows = sorted(line.split() for line in r.stdout.splitlines())
    assert [row[0] for row in rows] == sorted(line.split()[0] for line in native.stdout.splitlines()), r.stdout
    assert rows[0][0] == "leader:[0]" and all(f"[{t}]" in rows[t][0] for t in (1, 2, 3)), r.stdout
    assert {row[2] for row in rows} == {str(busybox_sif)}, r.stdout  # shimrun ran every task
    containers = {(row[1], row[3]) for row in rows}
    assert len({node for node, _ in containers}) == 2 and len(containers) == 2, r.stdout  # one per node
    assert os.readlink("/proc/self/ns/mnt") not in {ns for _, ns in containers}
    assert wait_until(lambda: not marked("mpmd"), timeout=10), marked("mpmd")
    # A second program on the node: a container of its own (shimrun plans each program), ranks of
    # one program together; the two holders leave with their ranks.
    conf.write_text("0,2 sh -c 'echo sh $(readlink /proc/self/ns/mnt)'\n"
                    "1,3 busybox sh -c 'echo busybox $(readlink /proc/self/ns/mnt)'\n")
    r = srun(cluster, shim, ["-N", "1", "-n", "4", f"--container-image={busybox_sif}", "--multi-prog", conf],
             "mpmd-two")
    assert r.returncode == 0, r.stderr
    pairs = {tuple(line.split()) for line in r.stdout.splitlines()}
    assert len(pairs) == 2 and {p for p, _ in pairs} == {"sh", "busybox"}, r.stdout
    assert wait_until(lambda: not marked("mpmd-two"), timeout=10), marked("mpmd-two")
    # An image that cannot be had: each task fails with shimrun's code, none runs its line on the host.
    conf.write_text("0-1 sh -c 'echo ran-outside'\n")
    r = srun(cluster, shim, ["-N", "1", "-n", "2", "--container-image=/no/such/image.sif", "--multi-prog", conf],
             "mpmd-bad")
    assert r.returncode == ExitCode.IMAGE and "ran-outside" not in r.stdout, r.stdout + r.stderr
    assert len(shim_lines(r.stderr)) == 1, r.stderr


def test_scancel_reaches_every_task_and_nothing_remains(cluster, shim, busybox_sif, user_dir):
    got = user_dir / "got"
    script = (f'trap "echo term $SLURM_PROCID >> {got}; exit 143" TERM; '
              f'echo up $SLURM_PROCID >> {got}; while :; do sleep 0.1; done')
    proc = subprocess.Popen(["srun", "--mpi=none", "-N", "2", "-n", "4", "-J", "pyxis-scancel",
                             f"--container-image={busybox_sif}", "sh", "-c", script],
                            env=env_for(cluster, shim, "scancel"), cwd="/tmp", text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, user=shim.user.uid, group=shim.user.gid, extra_groups=[])
    assert wait_until(lambda: got.exists() and got.read_text().count("up") == 4, timeout=60), cluster.logs()
    assert cluster.run(["scancel", "--name", "pyxis-scancel"], user=shim.user, env=shim.env()).returncode == 0
    proc.communicate(timeout=60)
    assert wait_until(lambda: got.read_text().count("term") == 4, timeout=15), got.read_text()
    assert wait_until(lambda: not marked("scancel"), timeout=20), marked("scancel")


def test_time_limit_ends_the_step_and_nothing_remains(cluster, shim, busybox_sif, user_dir):
    got = user_dir / "got"
    script = f'trap "echo term >> {got}; exit 143" TERM; while :; do sleep 0.2; done'
    r = srun(cluster, shim, ["-N", "1", "-n", "2", "-t", "1", f"--container-image={busybox_sif}", "sh", "-c", script],
             "time-limit", timeout=240)
    assert r.returncode != 0 and "DUE TO TIME LIMIT" in r.stderr, r.stderr
    assert got.read_text().count("term") == 2
    assert wait_until(lambda: not marked("time-limit"), timeout=45), marked("time-limit")


def test_mounts_workdir_env_and_remap_root(cluster, shim, busybox_sif, user_dir):
    data, out = user_dir / "data", user_dir / "out"
    for d in (data, out):
        d.mkdir()
        os.chown(d, shim.user.uid, shim.user.gid)
    (data / "in.txt").write_text("input\n")
    script = ('echo "pwd=$(pwd) uid=$(id -u) color=$COLOR"; cat in.txt; touch /data/new 2>/dev/null || echo ro; '
              'touch /out/made && echo rw')
    r = srun(cluster, shim, ["-N", "1", "-n", "1", f"--container-image={busybox_sif}",
                             f"--container-mounts={data}:/data:ro,{out}:/out", "--container-workdir=/data",
                             "--container-env=COLOR", "--container-remap-root", "sh", "-c", script], "mounts",
             COLOR="teal")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["pwd=/data uid=0 color=teal", "input", "ro", "rw"], r.stdout
    assert (out / "made").stat().st_uid == shim.user.uid  # root inside, the user outside
    assert not (data / "new").exists()
    r = srun(cluster, shim, ["-N", "1", "-n", "1", f"--container-image={busybox_sif}", "--no-container-mount-home",
                             "sh", "-c", f"ls -d {shim.user.home} 2>/dev/null || echo no-home"], "no-home")
    assert r.stdout.strip() == "no-home", r.stdout + r.stderr


def test_a_named_container_is_reused_by_a_later_step(cluster, shim, busybox_sif):
    with allocation(cluster, shim, 1) as job:
        first = srun(cluster, shim, in_job(job, "-n", "1", f"--container-image={busybox_sif}", "--container-name=box",
                                           "sh", "-c", "echo $SHIMRUN_CONTAINER"), "named-1")
        assert first.returncode == 0, first.stderr
        later = srun(cluster, shim, in_job(job, "-n", "1", "--container-name=box", "sh", "-c",
                                           "echo $SHIMRUN_CONTAINER"), "named-2")
        assert later.returncode == 0, later.stderr
        assert later.stdout == first.stdout and later.stdout.strip() == str(busybox_sif)
        again = srun(cluster, shim, in_job(job, "-n", "1", "--container-name=box:create", "true"), "named-3")
        assert again.returncode != 0 and "a container named box exists" in again.stderr, again.stderr
    unknown = srun(cluster, shim, ["-n", "1", "--container-name=nothing", "true"], "named-4")
    assert unknown.returncode != 0
    assert len(shim_lines(unknown.stderr)) == 1 and "no container named nothing" in unknown.stderr, unknown.stderr


@pytest.mark.parametrize("planted", ["directory", "symlink"])
def test_a_second_users_job_directory_is_never_used(cluster, shim, busybox_sif, other_user, planted):
    """/tmp/shim-pyxis.UID (the plugin's per-user directory, dir= default /tmp) made first by
    someone else, open to all or as a symlink to their own directory: the step fails with one line
    and nothing is written where the other user could read or swap it; once it is gone, it works."""
    mine = Path(f"/tmp/shim-pyxis.{shim.user.uid}")
    theirs = Path(f"/tmp/shim-pyxis-theirs.{other_user.uid}")
    subprocess.run(["rm", "-rf", str(mine), str(theirs)], check=True)
    try:
        assert as_user(other_user, ["mkdir", "-m", "0777", str(theirs)]).returncode == 0
        made = (["chmod", "0777", str(mine)] if planted == "directory" else ["ln", "-s", str(theirs), str(mine)])
        if planted == "directory":
            assert as_user(other_user, ["mkdir", str(mine)]).returncode == 0
        assert as_user(other_user, made).returncode == 0
        r = srun(cluster, shim, ["-n", "1", f"--container-image={busybox_sif}", "--container-name=box", "true"],
                 f"squat-{planted}")
        assert r.returncode != 0, r.stderr
        lines = shim_lines(r.stderr)
        assert len(lines) == 1 and f"{mine} is not a private directory of yours" in lines[0], r.stderr
        assert list(theirs.iterdir()) == [] and (planted == "symlink" or list(mine.iterdir()) == [])
    finally:
        subprocess.run(["rm", "-rf", str(mine), str(theirs)], check=True)
    ok = srun(cluster, shim, ["-n", "1", f"--container-image={busybox_sif}", "--container-name=box", "true"],
              f"squat-{planted}-gone")
    assert ok.returncode == 0, ok.stderr


def test_a_registry_image_is_pulled_once_per_node_and_job(cluster, shim, registry, app_layout):
    registry.push(app_layout, "sci/pyxis:1")
    ref = f"{registry.host}#sci/pyxis:1"  # pyxis's spelling: REGISTRY#IMAGE:TAG
    pulls = lambda: Path(registry.log).read_text().count("GET /v2/sci/pyxis/manifests/1")  # noqa: E731
    with allocation(cluster, shim, 2) as job:
        r = srun(cluster, shim, in_job(job, "-N", "2", "-n", "4", f"--container-image={ref}", "sh", "-c",
                                       "cat /etc/os-release 2>/dev/null | head -1; echo $SHIMRUN_CONTAINER"), "pull-1")
        assert r.returncode == 0, r.stderr + cluster.logs()
        sifs = {line for line in r.stdout.splitlines() if line.endswith(".sif")}
        assert len(sifs) == 1, r.stdout  # the two nodes of this machine share its directory
        (sif,) = sifs
        assert f"/shim-pyxis.{shim.user.uid}/{job}." in sif
        before, inode = pulls(), os.stat(sif).st_ino
        assert before >= 1
        r = srun(cluster, shim, in_job(job, "-N", "2", "-n", "2", f"--container-image={ref}", "sh", "-c", "exit 0"),
                 "pull-2")
        assert r.returncode == 0, r.stderr
        assert pulls() == before and os.stat(sif).st_ino == inode  # the job's second step pulls nothing
    assert wait_until(lambda: not Path(sif).parent.exists(), timeout=30), "the job's epilog left its directory"
    r = srun(cluster, shim, ["-n", "1", f"--container-image={registry.host}#sci/absent:1", "true"], "pull-3")
    assert r.returncode == ExitCode.NO_SUCH_IMAGE and len(shim_lines(r.stderr)) == 1, r.stderr
    assert "pulling docker://" in r.stderr


def test_container_entrypoint_runs_the_images_entrypoint(cluster, shim, registry, noshell_layout):
    """sci/noshell's Entrypoint is ["/bin/busybox", "env"]: with --container-entrypoint the task's
    command is its arguments (`env X=1` prints X=1); without, the command itself runs (there is
    no `X=1` program)."""
    registry.push(noshell_layout, "sci/noshell:1")
    image = f"--container-image=docker://{registry.host}/sci/noshell:1"
    r = srun(cluster, shim, ["-n", "1", image, "--container-entrypoint", "X=1"], "entrypoint")
    assert r.returncode == 0, r.stderr
    assert "X=1" in r.stdout.splitlines(), r.stdout
    r = srun(cluster, shim, ["-n", "1", image, "X=1"], "no-entrypoint")
    assert r.returncode == ExitCode.NOT_FOUND, r.stderr


def test_mpich_app_with_the_site_profile_under_pmi2(cluster, shim, world_dir):
    import hostmpi
    import images

    site_conf = hostmpi.write_site_conf(world_dir / "pyxis-site-conf", hostmpi.build_host_mpi().prefix)
    image = images.build_sif(images.DEBIAN_MPICH)
    r = cluster.srun(["--mpi=pmi2", "-N", "2", "-n", "4", f"--container-image={image}", "--container-check",
                      "--container-profile=site-mpich", "/opt/app/hello"], user=shim.user,
                     env=env_for(cluster, shim, "mpich", SHIMRUN_CONF=str(site_conf)), timeout=240)
    assert r.returncode == 0, r.stderr + cluster.logs()
    assert r.stdout.count("MPICH Version:      5.0") >= 1, r.stdout  # the host's MPI, injected
    assert "sum=10 expected=10 ok" in r.stdout
    decisions = [ln for ln in r.stdout.splitlines() if "libmpich.so.12" in ln and "inject" in ln]
    assert len(decisions) == 2, r.stdout  # the plan, once per node


def test_bad_values_and_unknown_images_fail_the_step_not_the_job(cluster, shim, busybox_sif):
    with allocation(cluster, shim, 2) as job:
        cases = [
            ([f"--container-image={busybox_sif}", "--container-mounts=/tmp:relative"], "destination 'relative'"),
            ([f"--container-image={busybox_sif}", "--container-mounts=/tmp:/t:noexec"], "mount flag 'noexec'"),
            ([f"--container-image={busybox_sif}", "--container-save=/tmp/x.sqsh"], "--container-save is not supported"),
            ([f"--container-image={busybox_sif}", "--container-unshare=uts"], "uts namespace is not supported"),
            (["--container-workdir=/x"], "need --container-image"),
        ]
        for args, words in cases:
            r = srun(cluster, shim, in_job(job, "-N", "1", "-n", "2", *args, "true"), "bad")
            assert r.returncode != 0, (args, r.stderr)
            assert len(shim_lines(r.stderr)) == 1 and words in r.stderr, (args, r.stderr)
        r = srun(cluster, shim, in_job(job, "-N", "2", "-n", "4", "--container-image=/no/such/image.sif", "true"),
                 "unknown")
        assert r.returncode == ExitCode.IMAGE, r.stderr  # shimrun's code for an image file that is not there
        lines = shim_lines(r.stderr)
        assert len(lines) == 2 and all("/no/such/image.sif: No such file or directory" in ln for ln in lines), lines
        ok = srun(cluster, shim, in_job(job, "-N", "2", "-n", "2", f"--container-image={busybox_sif}", "true"), "ok")
        assert ok.returncode == 0, ok.stderr  # the job goes on
        state = cluster.run(["squeue", "-h", "-j", job, "-o", "%T"]).stdout.strip()
        assert state == "RUNNING"


def test_sbatch_and_salloc_forms(cluster, shim, busybox_sif, user_dir):
    out = user_dir / "batch.out"
    script = user_dir / "job.sh"
    script.write_text(f"#!/bin/sh\n#SBATCH --container-image={busybox_sif}\n#SBATCH -o {out}\n"
                      'echo "in=$SHIMRUN_CONTAINER"\n')
    r = cluster.run(["sbatch", "--wait", str(script)], user=shim.user, env=shim.env(), cwd=user_dir, timeout=120)
    assert r.returncode == 0, r.stderr + (out.read_text() if out.exists() else "")
    assert out.read_text().strip() == f"in={busybox_sif}"
    r = cluster.run(["salloc", "-N", "1", f"--container-image={busybox_sif}", "srun", "--mpi=none", "sh", "-c",
                     'echo "in=$SHIMRUN_CONTAINER"'], user=shim.user, env=env_for(cluster, shim, "salloc"),
                    timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"in={busybox_sif}" in r.stdout


def test_the_options_are_in_srun_help(cluster, shim):
    r = cluster.run(["srun", "--help"], user=shim.user, env=shim.env())
    for name in ("container-image", "container-mounts", "container-workdir", "container-name", "container-env",
                 "container-remap-root", "container-writable", "container-entrypoint", "container-profile",
                 "container-check"):
        assert f"--{name}" in r.stdout, name
