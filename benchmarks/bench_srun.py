"""`srun -n N` of /bin/true on one node of a real local Slurm (tests/slurm.py), N = 1, 8, 32, 64:
bare, `shimrun IMG.sif`, Charliecloud's `ch-run IMG.sqfs` (one squashfuse mount per process),
`ch-run --join` (one container per node, shared by the N peers), `ch-run DIR`, and pyxis's spelling
`srun --container-image=IMG.sif` through shim's SPANK plugin (csrc/spank/), beside `srun shimrun
IMG.sif` with the ratio of the two. The whole
`srun` command's wall time, as an ordinary user. Writes results/srun.md (issue #11's targets).

The node declares 64 CPUs on this machine whatever it has (SlurmdParameters=config_overrides), so
the N tasks run at once, oversubscribed. `ch-run --join` fails now and then (a peer finds the
namespace holder gone): failed runs are counted and reported, their times left out.

Usage (as root, after scripts/install.sh):
    /opt/shim/venv/bin/python benchmarks/bench_srun.py [REPEATS [N,N,...]]   # 5, 1,8,32,64
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    argv_int,
    bench_account,
    command_line,
    fmt_ms,
    git_revision,
    load_note,
    remove_join_leftovers,
    shimrun_path,
    target_cell,
    wait_quiet,
    work_dir,
    write_results,
)

NS = (1, 8, 32, 64)
SQFS_PEER = "ch-run IMG.sqfs"
DIR_PEER = "ch-run DIR"
JOIN = "ch-run --join IMG.sqfs"
SHIMRUN = "shimrun IMG.sif"
PYXIS = "--container-image=IMG.sif"  # the SPANK plugin: each task run as `shimrun IMG.sif COMMAND`
UNSHARED = "shimrun IMG.sif, SHIMRUN_SHARE=0"  # one container per rank instead of one per node and step
# Issue #11's targets: (N, peer, limit of shimrun's ratio to it), and the ratio before launch records
# (issue #11's run on this machine: 197 / 41 ms at N=1, 415 / 284 ms at N=64).
TARGETS = ((1, SQFS_PEER, 1.1, 197 / 41), (64, DIR_PEER, 1.1, 415 / 284))
TASKS_RE = re.compile(r"n\d+: tasks? ([\d,-]+): ")
_tags = itertools.count()


@dataclass
class Case:
    times: list[float] = field(default_factory=list)
    failed_runs: int = 0
    failed_tasks: int = 0
    errors: list[str] = field(default_factory=list)


def failed_task_count(stderr: str, n: int) -> int:
    """Tasks srun reports as failed ("n1: tasks 0-18,20-63: Exited with exit code 1"); n if unparsable."""
    count = 0
    for m in TASKS_RE.finditer(stderr):
        for part in m.group(1).split(","):
            lo, _, hi = part.partition("-")
            count += int(hi or lo) - int(lo) + 1
    return min(count, n) or n


def task_errors(stderr: str) -> list[str]:
    """The tasks' own error lines (not srun's), pids and line numbers dropped, for the notes."""
    lines = [ln for ln in stderr.splitlines() if "error" in ln.lower() and not ln.startswith(("srun:", "slurmstepd"))]
    plain = (re.sub(r"\[\d+\]|\(ch_\w+\.c:\d+( \d+)?\)", "", ln) for ln in lines)
    return sorted({re.sub(r"(PID |/proc/)\d+", r"\1N", ln).strip() for ln in plain})


def commands(n: int, sif: Path, sqfs: Path, rootfs: Path) -> dict[str, list[str]]:
    """The srun arguments of each case; JOIN's tag is filled in per run (see join_tag)."""
    srun = ["--mpi=none", "-O", "-N", "1", "-n", str(n)]
    return {
        "bare /bin/true": [*srun, "/bin/true"],
        SHIMRUN: [*srun, shimrun_path(), str(sif), "/bin/true"],
        PYXIS: [*srun, f"--container-image={sif}", "/bin/true"],
        UNSHARED: [*srun, "--export=ALL,SHIMRUN_SHARE=0", shimrun_path(), str(sif), "/bin/true"],
        SQFS_PEER: [*srun, "ch-run", str(sqfs), "--", "/bin/true"],
        JOIN: [*srun, "ch-run", f"--join-ct={n}", "--join-tag=TAG", str(sqfs), "--", "/bin/true"],
        DIR_PEER: [*srun, "ch-run", str(rootfs), "--", "/bin/true"],
    }


def spank_plugin() -> Path:
    """The SPANK plugin of the install whose shimrun is measured ($SHIM_PREFIX/lib/shim_spank.so)."""
    return Path(os.environ.get("SHIM_PREFIX", "/opt/shim")) / "lib" / "shim_spank.so"


def charliecloud_version() -> str:
    r = subprocess.run(["ch-run", "--version"], capture_output=True, text=True, check=False,
                       env={"USER": "root", "PATH": "/usr/bin:/bin"})
    return (r.stdout + r.stderr).strip() or "?"


def join_tag() -> str:
    """A fresh --join-tag per srun: ch-run names its shared memory after it (/dev/shm/ch-run_shm-TAG,
    sem.ch-run_sem-TAG), and a failed run leaves them behind, which would poison the next run."""
    return f"shimbench{os.getpid()}x{next(_tags)}"


def main() -> None:
    import slurm  # tests/slurm.py (common.py puts tests/ on sys.path)
    from bench_launch import prepare

    repeats = argv_int(1, 5)
    ns = tuple(int(x) for x in sys.argv[2].split(",")) if len(sys.argv) > 2 else NS
    warmup = 1
    if shutil.which("ch-run") is None:
        raise SystemExit("ch-run (Charliecloud) is not installed: see requirements-apt.txt")
    if not spank_plugin().exists():
        raise SystemExit(f"{spank_plugin()} is not installed: run scripts/install.sh (SHIM_PREFIX as for SHIMRUN)")
    rootfs, sif, sqfs = prepare(work_dir())
    user = bench_account()
    env = user.env()
    results: dict[int, dict[str, Case]] = {n: {k: Case() for k in commands(n, sif, sqfs, rootfs)} for n in ns}
    t_start = time.monotonic()
    load_before = wait_quiet()
    with slurm.LocalSlurm(1, cpus=max(64, *ns), plugstack=f"required {spank_plugin()}\n") as cluster:
        conf = cluster.conf.read_text()
        node_line = next(line for line in conf.splitlines() if line.startswith("NodeName="))
        part_line = next(line for line in conf.splitlines() if line.startswith("PartitionName="))
        version = cluster.run(["srun", "--version"]).stdout.strip()
        for i in range(warmup + repeats):
            for n in ns:
                for key, template in commands(n, sif, sqfs, rootfs).items():
                    tag = join_tag()
                    args = [a.replace("--join-tag=TAG", f"--join-tag={tag}") for a in template]
                    start = time.perf_counter()
                    r = cluster.srun(args, user=user, env=env, timeout=600)
                    took = time.perf_counter() - start
                    remove_join_leftovers(tag)
                    if i < warmup:
                        continue
                    case = results[n][key]
                    if r.returncode == 0:
                        case.times.append(took)
                        continue
                    case.failed_runs += 1
                    case.failed_tasks += failed_task_count(r.stderr, n)
                    case.errors += task_errors(r.stderr)
            print(f"round {i + 1}/{warmup + repeats} done ({time.monotonic() - t_start:.0f}s)", flush=True)

    never = [f"{key} at N={n}: {'; '.join(c.errors[:3])}" for n in ns for key, c in results[n].items() if not c.times]
    if never:
        raise SystemExit("every run failed: " + " | ".join(never))
    sections: list[tuple[str, list[str]]] = []
    for n in ns:
        cases = results[n]
        sqfs_med = statistics.median(cases[SQFS_PEER].times)
        dir_med = statistics.median(cases[DIR_PEER].times)
        bare_med = statistics.median(cases["bare /bin/true"].times)
        rows = [("| case | median (ms) | min–max (ms) | per task over bare (ms) | failed runs (tasks) "
                 f"| ratio to {SQFS_PEER} | ratio to {DIR_PEER} |"), "|---|---:|---:|---:|---:|---:|---:|"]
        for key, case in cases.items():
            med, rng = fmt_ms(case.times)
            failed = f"{case.failed_runs}/{repeats} ({case.failed_tasks}/{repeats * n})" if case.failed_runs else "0"
            if case.times:
                m = statistics.median(case.times)
                per_task = f"{(m - bare_med) / n * 1e3:.1f}" if key != "bare /bin/true" else ""
                rows.append(f"| {key} | {med} | {rng} | {per_task} | {failed} | {m / sqfs_med:.2f}× "
                            f"| {m / dir_med:.2f}× |")
            else:
                rows.append(f"| {key} | — | — | | {failed} | — | — |")
        sections.append((f"srun -n {n} (1 node)", rows))

    rows = [f"| N | `srun {SHIMRUN}` median (ms) | `srun {PYXIS}` median (ms) | ratio |", "|---:|---:|---:|---:|"]
    for n in ns:
        if results[n][SHIMRUN].times and results[n][PYXIS].times:
            plain, pyxis = statistics.median(results[n][SHIMRUN].times), statistics.median(results[n][PYXIS].times)
            rows.append(f"| {n} | {plain * 1e3:.1f} | {pyxis * 1e3:.1f} | {pyxis / plain:.2f}× |")
    sections.append(("pyxis's spelling (SPANK plugin) against `srun shimrun`", rows))

    n_top = max(ns)
    rows = ["| target (issue #11) | before | shimrun median (ms) | peer median (ms) | now | result |",
            "|---|---:|---:|---:|---:|---|"]
    for n, peer, limit, before in TARGETS:
        if n not in results:
            continue
        shim_med = statistics.median(results[n][SHIMRUN].times)
        peer_med = statistics.median(results[n][peer].times)
        ratio = shim_med / peer_med
        rows.append(f"| `srun -n {n} shimrun` ≤ {limit:g}× `srun -n {n} {peer}` | {before:.2f}× | {shim_med * 1e3:.1f} "
                    f"| {peer_med * 1e3:.1f} | {ratio:.2f}× | {target_cell(ratio, limit)} |")
    sections.append(("Targets", rows))

    errors = {key: sorted({e for n in ns for e in results[n][key].errors}) for key in results[ns[0]]}
    load_after = load_note()
    example = commands(n_top, sif, sqfs, rootfs)
    notes = [f"- {note}" for note in (
        (f"{repeats} repeats per case and N (after {warmup} warm-up round), interleaved (every case and N once "
         "per round); wall time of the whole `srun` command as an ordinary user, from fork to exit: job "
         "allocation, step launch by slurmd/slurmstepd, the N tasks, their exit and the step's teardown. "
         "\"per task over bare\" = (median − bare median) / N."),
        (f"Slurm: {version}, a private cluster from tests/slurm.py on this machine: 1 node, `{node_line}` "
         f"(declared, not real: SlurmdParameters=config_overrides), `{part_line}`, TaskPlugin=task/none, "
         "ProctrackType=proctrack/linuxproc. The tasks are oversubscribed on the real CPUs. The machine may be "
         f"shared with other work: {load_before}; {load_after} at the end."),
        ("Images: the same Debian bookworm minbase content (tests/images.py DEBIAN_BASE) as a SIF built with "
         "`shimrun build`, a zstd squashfs (mksquashfs) and the extracted directory; "
         f"{'FUSE usable' if os.access('/dev/fuse', os.W_OK) else 'FUSE NOT usable (shimrun falls back)'}; "
         f"Charliecloud {charliecloud_version()}."),
        (f"shim {git_revision()}: under srun, `shimrun` ranks share one container per node and job step "
         "(the native holder sets it up from the launch record, ranks join it; a step with one task on the "
         "node runs a single launch); `SHIMRUN_SHARE=0` gives each rank its own (for comparison, not a "
         "target case). The records are warm (the warm-up round wrote them)."),
        (f"`{PYXIS}`: shim's SPANK plugin (`required {spank_plugin()}` in the cluster's plugstack.conf, loaded "
         "for every case) settles the image once per node before the tasks start and makes each task "
         "`shim-pyxis-exec`, which execs `shimrun IMG.sif /bin/true`: the same launch as the shimrun row plus "
         "the plugin's work in srun and slurmstepd and one more exec per task."),
        ("`ch-run --join`: one peer (the first to take ch-run's semaphore) sets up the container, the others "
         "join its namespaces; a unique `--join-tag` per srun (its shared-memory segment is removed after "
         "each run). Failed runs are counted, not timed."),
        *[f"`{key}`: errors of failed runs: {'; '.join(f'`{e}`' for e in errs)}." for key, errs in errors.items()
          if errs],
        (f"Commands at N={n_top} (with SLURM_CONF of the private cluster; the same for "
         f"N = {', '.join(str(n) for n in ns if n != n_top)}):"),
    )]
    notes += ["", *[f"    srun {command_line(args)}" for args in example.values()]]
    sections.append(("Notes", notes))
    out = write_results("srun", "`srun -n N` of /bin/true on one node: shimrun vs Charliecloud", sections)
    print(out.read_text())


if __name__ == "__main__":
    main()
