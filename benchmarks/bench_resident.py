"""What stays resident on a node besides the application: while `srun -n 8 RUNTIME IMAGE sleep 5`
runs on one node of a real local Slurm (tests/slurm.py), sample the ordinary user's processes of
that step that are not the app (`sleep`) nor the launcher (`srun`): image servers (squashfuse_ll),
shim's per-node holder, Charliecloud's ch-run FUSE parents. Count, RSS and PSS. Then the same
right after `srun` returns and a few seconds later: it must be nothing. Writes
results/resident.md (issue #5, item 6e; issue #11's holder target).

A step's processes are recognised by a marker variable in srun's environment (inherited by every
task and what it starts), or by sharing a session with a marked process (in case something
clears its environment); the bench user may have unrelated processes running meanwhile.

Usage (as root, after scripts/install.sh):
    /opt/shim/venv/bin/python benchmarks/bench_resident.py [REPEATS [SLEEP_SECONDS]]   # 1, 5
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

from common import (
    argv_int,
    bench_account,
    command_line,
    git_revision,
    remove_join_leftovers,
    shimrun_path,
    target_cell,
    wait_quiet,
    work_dir,
    write_results,
)

TASKS = 8
APP = "sleep"
LAUNCHER = "srun"
MARK = "SHIM_BENCH_STEP"
AFTER_WAIT = 3.0  # seconds after srun returns for the second look (shim's holder may linger ~2 s)
KEPT = {"SHIMRUN_SERVE": "kept", "SHIMRUN_SHARE": "0"}  # the kept mount's holder ends with the step


@dataclass
class Proc:
    pid: int
    name: str
    rss: int
    pss: int
    cmdline: str


@dataclass
class Case:
    peak: list[Proc] = field(default_factory=list)  # the sample with the most resident processes
    apps_seen: int = 0
    left_at_exit: list[Proc] = field(default_factory=list)
    left_later: list[Proc] = field(default_factory=list)
    samples: int = 0


def step_processes(uid: int, mark: str, sids: set[int]) -> tuple[list[Proc], int]:
    """(the step's processes other than the app and srun, the number of app processes); adds the
    sessions of marked processes to `sids`."""
    import psutil

    found: list[Proc] = []
    apps = 0
    for p in psutil.process_iter(["pid", "name", "uids", "status"]):
        try:
            if p.info["uids"] is None or p.info["uids"].real != uid or p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            marked = p.environ().get(MARK) == mark
            sid = os.getsid(p.pid)
            if marked:
                sids.add(sid)
            elif sid not in sids:
                continue
            if p.info["name"] == LAUNCHER:
                continue
            if p.info["name"] == APP:
                apps += 1
                continue
            mem = p.memory_full_info()
            found.append(Proc(p.pid, p.info["name"], mem.rss, getattr(mem, "pss", 0), " ".join(p.cmdline())[:200]))
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return found, apps


def summary(procs: list[Proc]) -> str:
    if not procs:
        return "none"
    return ", ".join(f"{n}× {name}" for name, n in sorted(Counter(p.name for p in procs).items()))


def span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.1f}" if f"{lo:.1f}" == f"{hi:.1f}" else f"{lo:.1f}–{hi:.1f}"


def mib(procs: list[Proc], attr: str) -> str:
    return f"{sum(getattr(p, attr) for p in procs) / 2**20:.1f}"


def measure(cluster, user, args: list[str], extra_env: dict[str, str], sleep_s: int) -> Case:
    mark = uuid.uuid4().hex
    env = cluster.env(user.env({MARK: mark, **extra_env}))
    case = Case()
    sids: set[int] = set()
    proc = subprocess.Popen(["srun", *args], env=env, cwd="/tmp", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, user=user.uid, group=user.gid, extra_groups=[])
    try:
        deadline = time.monotonic() + sleep_s + 60
        started = None
        while proc.poll() is None and time.monotonic() < deadline:
            procs, apps = step_processes(user.uid, mark, sids)
            case.apps_seen = max(case.apps_seen, apps)
            if apps == TASKS and started is None:
                started = time.monotonic()
            # Sample while every app runs, leaving the last second alone (the apps start exiting).
            if started is not None and time.monotonic() - started < sleep_s - 1.5:
                case.samples += 1
                if len(procs) > len(case.peak) or (len(procs) == len(case.peak) and
                                                   sum(p.rss for p in procs) > sum(p.rss for p in case.peak)):
                    case.peak = procs
            time.sleep(0.1)
        out, err = proc.communicate(timeout=sleep_s + 120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        raise SystemExit(f"srun failed ({proc.returncode}): {command_line(args)}\n{err.decode()[-1500:]}")
    case.left_at_exit, _ = step_processes(user.uid, mark, sids)
    time.sleep(AFTER_WAIT)
    case.left_later, apps_later = step_processes(user.uid, mark, sids)
    if apps_later:
        case.left_later += [Proc(0, APP, 0, 0, "")] * apps_later
    return case


def main() -> None:
    import slurm
    from bench_launch import prepare

    repeats = argv_int(1, 1)
    sleep_s = argv_int(2, 5)
    rootfs, sif, sqfs = prepare(work_dir())
    shimrun = shimrun_path()
    srun = ["--mpi=none", "-O", "-N", "1", "-n", str(TASKS)]
    app = [APP, str(sleep_s)]
    tag = f"shimres{os.getpid()}"
    cases: dict[str, tuple[list[str], dict[str, str]]] = {
        "shimrun IMG.sif": ([*srun, shimrun, str(sif), *app], {}),
        "shimrun IMG.sif, SHIMRUN_SHARE=0": ([*srun, shimrun, str(sif), *app], {"SHIMRUN_SHARE": "0"}),
        # every task a single launch (no shared container), each joining the user's kept mount
        "shimrun IMG.sif, SHIMRUN_SERVE=kept, SHIMRUN_SHARE=0": ([*srun, shimrun, str(sif), *app], KEPT),
        "shimrun DIR": ([*srun, shimrun, str(rootfs), *app], {}),
        "ch-run IMG.sqfs": ([*srun, "ch-run", str(sqfs), "--", *app], {}),
        "ch-run --join IMG.sqfs": ([*srun, "ch-run", f"--join-ct={TASKS}", f"--join-tag={tag}", str(sqfs), "--",
                                    *app], {}),
        "ch-run DIR": ([*srun, "ch-run", str(rootfs), "--", *app], {}),
    }
    user = bench_account()
    load_before = wait_quiet()
    results: dict[str, list[Case]] = {k: [] for k in cases}
    with slurm.LocalSlurm(1) as cluster:
        version = cluster.run(["srun", "--version"]).stdout.strip()
        for i in range(repeats):
            for key, (args, extra) in cases.items():
                results[key].append(measure(cluster, user, args, extra, sleep_s))
                remove_join_leftovers(tag)
            print(f"round {i + 1}/{repeats} done", flush=True)

    rows = [("| case | apps seen | resident besides the app (peak) | RSS total (MiB) | PSS total (MiB) "
            f"| left when srun returns | left {AFTER_WAIT:g} s later | nothing left |"),
            "|---|---:|---|---:|---:|---|---|---|"]
    detail: list[str] = []
    for key, runs in results.items():
        peak = max(runs, key=lambda c: (len(c.peak), sum(p.rss for p in c.peak)))
        at_exit = max((c.left_at_exit for c in runs), key=len)
        later = max((c.left_later for c in runs), key=len)
        apps = min(c.apps_seen for c in runs)
        rows.append(f"| {key} | {apps}/{TASKS} | {summary(peak.peak)} | {mib(peak.peak, 'rss')} | "
                    f"{mib(peak.peak, 'pss')} | {summary(at_exit)} | {summary(later)} | "
                    f"{'yes' if not later else 'NO'} |")
        for name in sorted({p.name for p in peak.peak}):
            group = [p for p in peak.peak if p.name == name]
            rss = [p.rss / 2**20 for p in group]
            pss = [p.pss / 2**20 for p in group]
            detail.append(f"- {key}: {len(group)}× `{name}`, RSS {span(rss)} MiB, PSS {span(pss)} MiB each: "
                          f"`{group[0].cmdline}`")
    shared = max(results["shimrun IMG.sif"], key=lambda c: (len(c.peak), sum(p.rss for p in c.peak)))
    holder = [p for p in shared.peak if p.name != "squashfuse_ll"]
    holder_pss = sum(p.pss for p in holder) / 2**20
    targets = ["| target (issue #11) | before | now | result |", "|---|---:|---:|---|",
               (f"| `shimrun IMG.sif` under srun: resident besides the apps = squashfuse + a holder of ≤ 2 MiB PSS "
                f"| a Python holder, ~20 MiB PSS | {summary(shared.peak)}; holder PSS {holder_pss:.2f} MiB "
                f"| {target_cell(holder_pss, 2.0, ' MiB') if len(holder) == 1 else 'missed: ' + summary(holder)} |")]
    kept = max(results["shimrun IMG.sif, SHIMRUN_SERVE=kept, SHIMRUN_SHARE=0"],
               key=lambda c: (len(c.peak), sum(p.rss for p in c.peak)))
    kept_pss, kept_rss = (sum(getattr(p, a) for p in kept.peak) / 2**20 for a in ("pss", "rss"))
    per_launch = mib(results["shimrun IMG.sif, SHIMRUN_SHARE=0"][0].peak, "pss")
    targets.append(f"| a kept mount (issue #24): holder + squashfuse resident ≤ 8 MiB besides the page cache | "
                   f"one squashfuse per launch ({TASKS} tasks: {per_launch} MiB PSS) "
                   f"| {summary(kept.peak)}: PSS {kept_pss:.2f} MiB, RSS {kept_rss:.2f} MiB "
                   f"| {target_cell(kept_pss, 8.0, ' MiB')} |")
    notes = [f"- {n}" for n in (
        (f"{TASKS} tasks of `{APP} {sleep_s}` on one node, {repeats} run(s) per case; during each run the step's "
         f"processes are sampled every ~0.1 s while all {TASKS} apps run, and the sample with the most (then the "
         "largest) resident processes is shown; with several runs, the worst run. RSS counts shared pages in "
         "every process; PSS divides them among their users (psutil's memory_full_info, from smaps)."),
        (f"\"left\": the step's processes (app included) when `srun` has returned, and {AFTER_WAIT:g} s later. "
         "The launcher `srun` itself is not counted (it runs where the job was submitted, not per node)."),
        (f"Slurm: {version}, a private 1-node cluster from tests/slurm.py (declared 64 CPUs, "
         "ProctrackType=proctrack/linuxproc); tasks as an ordinary user. Images as in srun.md (Debian bookworm "
         f"minbase). shim {git_revision()}. {load_before}."),
        "Commands (with SLURM_CONF of the private cluster):",
    )]
    notes += ["", *[f"    {' '.join(f'{k}={v}' for k, v in extra.items())}{' ' if extra else ''}srun "
                    f"{command_line(args)}" for args, extra in cases.values()]]
    out = write_results("resident", f"Resident per node besides the app: `srun -n {TASKS} … {APP} {sleep_s}`",
                        [("Resident processes", rows), ("Target", targets), ("Notes", notes),
                         ("Resident processes at the peak", detail or ["none"])])
    print(out.read_text())


if __name__ == "__main__":
    main()
