"""What each node asks of the image's file (issue #24 item 4's measurement): on the local 3-node
Slurm (tests/slurm.py), a job of one step `srun -N 3 -n 64 shimrun IMG.sif APP` and a job of 10
such steps, for each serve mode the build has (io_ways.py probes them), with `strace -f` attached
to each node's slurmd (it follows slurmstepd, the tasks, shimrun, squashfuse, an unpacker, a kept
mount's holder). Counted per node, for the image file only (a path argument or a descriptor that
`strace -y` shows as the image): opens, stats (stat/statx/fstat/access...), read calls
(read/pread64/readv/preadv, sendfile/copy_file_range), bytes read, mmaps. Then the projection to
1,000 and 10,000 nodes: N times the per-node mean (the shared file system sees every node's).

The emulated nodes share this machine's disk: each gets a node-local cache of its own
(SHIMRUN_CACHE=BASE/$SLURMD_NODENAME, fresh for every job), as real nodes would have.

Usage (as root, after scripts/install.sh):
    /opt/shim/venv/bin/python benchmarks/io_nodes.py [--image scipy|base] [--ranks 64] [--steps 10]
        [--serve-modes mount,unpack,kept,mount+stage,unpack+stage] [--app "python3 -c 'import numpy'"]
Writes results/io_nodes.md; `bench_io.py --nodes` puts the same sections into results/io.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import io_ways
from common import RESULTS, bench_account, git_revision, load_note, shimrun_path, write_results
from io_ways import Way

NODES = 3
PROJECT = (1_000, 10_000)
OPENS = frozenset({"open", "openat", "openat2", "creat"})
STATS = frozenset({"stat", "lstat", "fstat", "newfstatat", "statx", "access", "faccessat", "faccessat2", "statfs",
                   "fstatfs"})
READS = frozenset({"read", "pread64", "readv", "preadv", "preadv2", "sendfile", "copy_file_range", "splice"})
MAPS = frozenset({"mmap"})
LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)\)\s+=\s+(-?\d+|\?)")
UNFINISHED = re.compile(r"^(\d+)\s+(.*) <unfinished \.\.\.>$")
RESUMED = re.compile(r"^(\d+)\s+<\.\.\. (\w+) resumed>(.*)$")
DEFAULT_APP = {"scipy": "python3 -c 'import numpy'",
               "base": "find /usr/lib -name '*.so*' -type f -exec cat {} + > /dev/null"}


class Counts(NamedTuple):
    opens: int = 0
    stats: int = 0
    reads: int = 0
    bytes: int = 0
    maps: int = 0
    back: int = 0       # positioned reads before the end of the previous one on that descriptor: not sequential

    def __add__(self, other: object) -> Counts:  # type: ignore[override]
        assert isinstance(other, Counts)
        return Counts(*(a + b for a, b in zip(self, other, strict=True)))


def calls(text: str) -> Iterator[tuple[str, str, str, str]]:
    """(pid, syscall, arguments, result) of each finished call in `strace -f` output, joining the halves
    of a call another process interrupted (`<unfinished ...>` / `<... NAME resumed>`)."""
    pending: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw
        if m := UNFINISHED.match(raw):
            pending[m.group(1)] = m.group(2)
            continue
        if m := RESUMED.match(raw):
            head = pending.pop(m.group(1), None)
            if head is None:
                continue
            line = f"{m.group(1)} {head}{m.group(3)}"
        if m := LINE.match(line):
            yield m.group(1), m.group(2), m.group(3), m.group(4)


def count(text: str, image: str) -> Counts:
    """What the calls in `text` asked of the file `image` (a path argument or a descriptor on it)."""
    needles = (f'"{image}"', f"<{image}>")
    c = Counts()
    ends: dict[tuple[str, str], int] = {}   # (pid, fd) -> where its last positioned read ended
    for pid, name, args, result in calls(text):
        if not any(n in args for n in needles) and not (name in OPENS and f"<{image}>" in result):
            continue
        got = int(result) if result.lstrip("-").isdigit() else 0
        if name in OPENS:
            c = c._replace(opens=c.opens + 1)
        elif name in STATS:
            c = c._replace(stats=c.stats + 1)
        elif name in READS:
            c = c._replace(reads=c.reads + 1, bytes=c.bytes + max(0, got))
            if name in ("pread64", "preadv", "preadv2") and (offset := args.rpartition(",")[2].strip()).isdigit():
                key = (pid, args.partition("<")[0])
                if int(offset) < ends.get(key, 0):
                    c = c._replace(back=c.back + 1)
                ends[key] = int(offset) + max(0, got)
        elif name in MAPS:
            c = c._replace(maps=c.maps + 1)
    return c


@contextlib.contextmanager
def traced(pids: dict[str, int], out: Path) -> Iterator[dict[str, Path]]:
    """`strace -f -y` attached to each node's slurmd for the block; the output file of each node.
    Stopped with SIGINT (strace detaches from every tracee, which goes on)."""
    files = {node: out / f"{node}.strace" for node in pids}
    procs = [subprocess.Popen(["strace", "-f", "-qq", "-y", "-s", "1", "-o", str(files[node]), "-p", str(pid)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for node, pid in pids.items()]
    try:
        time.sleep(1.0)  # attached (strace -p attaches to slurmd's threads before it returns to tracing)
        yield files
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


class JobResult(NamedTuple):
    per_node: dict[str, Counts]
    seconds: float
    failure: str


def run_job(cluster, user, way: Way, steps: int, ranks: int, app: str, work: Path, image: str) -> JobResult:
    """One job (salloc) of `steps` consecutive steps on every node, traced; per-node counts."""
    caches = work / "cache"
    for node in cluster.node_names:
        (caches / node).mkdir(parents=True, mode=0o700)
        os.chown(caches / node, user.uid, user.gid)
    os.chown(caches, user.uid, user.gid)
    launch = " ".join(shlex.quote(w) for w in (*way.prefix, "sh", "-c", app))
    # Each node's own cache: the emulated nodes share this machine's disk.
    task = f"SHIMRUN_CACHE={shlex.quote(str(caches))}/$SLURMD_NODENAME exec {launch}"
    # Cyclic: the ranks spread evenly (22/21/21 of 64); by block, one node would take nearly all.
    step = f"srun -N {NODES} -n {ranks} -m cyclic --mpi=none sh -c {shlex.quote(task)}"
    script = f"for i in $(seq {steps}); do {step} || exit $?; done"
    tasks_per_node = -(-ranks // NODES)
    # A kept mount keeps the site's idle time here (bench_io's 2 s is for its cold runs): under
    # Slurm the job's end is what ends it.
    env = cluster.env(user.env({k: v for k, v in way.env.items() if k != "SHIMRUN_KEPT_IDLE"}))
    pids = {node: cluster._procs[f"slurmd.{node}"].pid for node in cluster.node_names}
    with traced(pids, work) as files:
        start = time.monotonic()
        r = cluster.run(["salloc", "-N", str(NODES), f"--ntasks-per-node={tasks_per_node}", "sh", "-c", script],
                        user=user, env=env, timeout=1800)
        took = time.monotonic() - start
        io_ways.wait_no_processes(user.uid, timeout=60)  # a kept mount's holder ends with the job
    last = " / ".join(r.stderr.strip().splitlines()[-4:])[:400].replace("|", "/")
    failure = "" if r.returncode == 0 else f"failed (exit {r.returncode}): {last}"
    per_node = {node: count(files[node].read_text(errors="replace"), image) for node in cluster.node_names}
    return JobResult(per_node, took, failure)


def fmt_bytes(n: float) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def sections(results: dict[tuple[str, int], JobResult], ways: list[Way], image_size: int, ranks: int,
             app: str) -> list[tuple[str, list[str]]]:
    rows = [("| way | job | node | opens | stats | read calls | bytes read | × the image | backward reads | mmaps "
            "| job wall (s) |"), "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    proj = ["| way | job | per node (mean): opens / stats / reads / bytes | "
            + " | ".join(f"projection, {n:,} nodes: opens / stats / reads / bytes" for n in PROJECT) + " |",
            "|---|---|---|" + "---|" * len(PROJECT)]
    for way in ways:
        if not way.available:
            rows.append(f"| {way.name} | | {way.why} | | | | | | | | |")
            continue
        for (name, steps), res in results.items():
            if name != way.name:
                continue
            job = f"{steps} step{'s' if steps > 1 else ''} × {ranks} ranks"
            if res.failure:
                rows.append(f"| {way.name} | {job} | {res.failure} | | | | | | | | |")
                continue
            for node, c in res.per_node.items():
                rows.append(f"| {way.name} | {job} | {node} | {c.opens} | {c.stats} | {c.reads} | {fmt_bytes(c.bytes)} "
                            f"| {c.bytes / image_size:.2f} | {c.back} | {c.maps} | {res.seconds:.1f} |")
            n = len(res.per_node)
            total = sum(res.per_node.values(), Counts())
            mean = [v / n for v in total]
            cells = [" / ".join([f"{mean[0] * k:,.0f}", f"{mean[1] * k:,.0f}", f"{mean[2] * k:,.0f}",
                                 fmt_bytes(mean[3] * k)]) for k in PROJECT]
            proj.append(f"| {way.name} | {job} | {mean[0]:.1f} / {mean[1]:.1f} / {mean[2]:.1f} / "
                        f"{fmt_bytes(mean[3])} | " + " | ".join(cells) + " |")
    notes = [(f"App of every rank: `{app}`; steps `srun -N {NODES} -n {ranks} -m cyclic --mpi=none` inside one "
              f"`salloc -N {NODES} --ntasks-per-node={-(-ranks // NODES)}` job: the ranks spread evenly."),
             ("Counted: the calls of every process below each node's slurmd (`strace -f -y -p`) whose path argument "
             "or descriptor is the image file: what that node's client of the shared file system is asked. Reads "
             "that the node's page cache answers are counted too (a Lustre/GPFS client would answer some locally "
             "as well); `× the image`: bytes read / the SIF's size; `backward reads`: positioned reads (pread64) "
             "starting before the end of the previous one on the same descriptor (0: read once, in order)."),
             ("Each node starts every job with an empty node-local cache (SHIMRUN_CACHE of its own): no record, no "
             "unpacked copy. A per-launch mount keeps nothing between steps; the projection assumes every node "
             "behaves as these three on average."),
             ("The projection is arithmetic, not a measurement: N × the per-node mean, what the shared file system "
             "serves for one job on N nodes.")]
    return [("Per node: what is asked of the image's file (measured)", rows),
            ("Projection to 1,000 and 10,000 nodes (projection: N × the per-node mean)", proj),
            ("Notes on the per-node measurement", notes)]


def measure_nodes(shimrun: str, sif: Path, modes: Sequence[str], ranks: int, steps: int, app: str,
                  user) -> list[tuple[str, list[str]]]:
    """Start the local Slurm, run the 1-step and the `steps`-step job for each available mode."""
    from slurm import LocalSlurm  # tests/slurm.py (common.py puts tests/ on sys.path)

    ways = io_ways.serve_ways(shimrun, modes, sif, user)
    results: dict[tuple[str, int], JobResult] = {}
    image = os.path.realpath(sif)
    with LocalSlurm(nodes=NODES) as cluster, tempfile.TemporaryDirectory(prefix="shim-bench-nodes.",
                                                                          dir="/var/tmp") as tmp:
        os.chmod(tmp, 0o755)
        for way in ways:
            if not way.available:
                continue
            for n in sorted({1, steps}):
                res = None
                for attempt in range(2):  # a job that fails at once on this shared machine gets one more try
                    work = Path(tmp) / f"{way.name.split()[2]}-{n}-{attempt}"
                    work.mkdir()
                    res = run_job(cluster, user, way, n, ranks, app, work, image)
                    shutil.rmtree(work, ignore_errors=True)
                    if not res.failure:
                        break
                    print(f"  nodes: {way.name}, {n} step(s): {res.failure}; once more", file=sys.stderr)
                assert res is not None
                results[(way.name, n)] = res
                print(f"  nodes: {way.name}, {n} step(s): {res.seconds:.1f} s {res.failure}", file=sys.stderr,
                      flush=True)
    return sections(results, ways, sif.stat().st_size, ranks, app)


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", choices=("scipy", "base"), default="scipy")
    p.add_argument("--ranks", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--serve-modes",
                   default=os.environ.get("SHIM_BENCH_SERVE", "mount,unpack,kept,mount+stage,unpack+stage"))
    p.add_argument("--app", default="")
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="where io_nodes.md goes")
    args = p.parse_args(argv)
    if os.getuid() != 0:
        raise SystemExit("io_nodes.py: run as root (the local Slurm and strace of its daemons need it)")
    import bench_io

    user = bench_account()
    _, sif, _ = bench_io.prepare(args.image)
    before = load_note()
    secs = measure_nodes(shimrun_path(), sif, [m for m in args.serve_modes.split(",") if m], args.ranks, args.steps,
                         args.app or DEFAULT_APP[args.image], user)
    secs[-1][1].append(f"Image: {sif} ({fmt_bytes(sif.stat().st_size)}). Load: before {before}; after "
                       f"{load_note()}. shimrun `{shimrun_path()}` (git {git_revision()}).")
    out = write_results("io_nodes", "What each node asks of the image's file under Slurm", secs, args.results_dir)
    print(out.read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
