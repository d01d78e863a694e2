"""What the app reads (issue #24 item 1): workloads that read an image's files, cold (page cache
dropped before the run) and warm (the same launch again right after), for each way shim can
serve an image (`--serve mount|unpack|kept`, as the installed build has them: io_ways.py probes
each), `shimrun DIR` (the same tree unpacked), `ch-run IMG.sqfs` (Charliecloud: squashfuse per
launch), and the kernel's squashfs as the reference (root loop-mounts the SIF's partition, the
workload runs as the ordinary user under `chroot --userspec`). Ratios to the kernel in the same
run. Also: the first launch's unpack (`--serve unpack` with an empty cache) against `unsquashfs
-p CPUS` alone on the same image. Writes results/io.md.

Usage (as root, after scripts/install.sh; the workloads run as the ordinary user):
    /opt/shim/venv/bin/python benchmarks/bench_io.py [--runs N | --quick] [--image scipy|base]
        [--serve-modes mount,unpack,kept] [--workloads import,tar,tar2,small] [--nodes [--ranks 64]]
$SHIMRUN: the build to measure. SHIM_BENCH_SERVE: the serve modes (as --serve-modes).
The scipy image (tests/images.py DEBIAN_SCIPY, ~1 GB unpacked) is built on first use (minutes).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import io_ways
from common import RESULTS, bench_account, git_revision, load_note, shimrun_path, target_cell, write_results
from io_ways import KERNEL, Run, Way, run_as


class Workload(NamedTuple):
    name: str
    argv: tuple[str, ...]
    what: str


PY_IMPORT = "import numpy, scipy.stats, scipy.optimize, scipy.signal, scipy.sparse.linalg, pandas"
WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("import", ("python3", "-c", PY_IMPORT), f"`python3 -c '{PY_IMPORT}'`"),
    Workload("tar", ("sh", "-c", "tar -cf - /usr | wc -c"), "`tar -cf - /usr | wc -c`"),
    Workload("tar2", ("sh", "-c", ("tar -cf - /usr/lib | wc -c & tar -cf - /usr/share | "
                      "wc -c & wait")), "two tars in parallel (`/usr/lib`, `/usr/share`)"),
    Workload("small", ("sh", "-c", "find /usr -type f -size -8k -print0 | xargs -0 cat | wc -c"),
             "many small files: `find /usr -type f -size -8k -print0 | xargs -0 cat | wc -c`"),
)}
# On the small image (debian-base, no Python) the import workload reads the shared libraries instead.
BASE_IMPORT = Workload("import", ("sh", "-c", "find /usr/lib -name '*.so*' -type f -exec cat {} + | wc -c"),
                       "(the base image has no Python) `find /usr/lib -name '*.so*' -type f -exec cat {} + | wc -c`")
SERVE_DEFAULT = "mount,unpack,kept"


class Cell(NamedTuple):
    cold: tuple[float, ...]
    warm: tuple[float, ...]
    failure: str = ""


def prepare(image: str) -> tuple[Path, Path, Path]:
    """(rootfs DIR, IMG.sif, IMG.sqfs) of the image, built and cached by recipe (tests/images.py)."""
    import images

    recipe = images.DEBIAN_SCIPY if image == "scipy" else images.DEBIAN_BASE
    return images.build_rootfs(recipe), images.build_sif(recipe), images.build_squashfs(recipe)


def measure(ways: list[Way], workloads: list[Workload], runs: int, user) -> tuple[dict, dict]:
    """Per (way, workload): the cold and warm seconds of `runs` rounds, interleaved (each round runs
    every way once: drift hits all alike); outputs per (way, workload) to compare with the kernel's."""
    cells: dict[tuple[str, str], Cell] = {}
    outputs: dict[tuple[str, str], str] = {}
    for _ in range(runs):
        for wl in workloads:
            for way in ways:
                key = (way.name, wl.name)
                cell = cells.get(key, Cell((), ()))
                if cell.failure:
                    continue
                io_ways.wait_no_processes(user.uid)   # a kept mount from the previous cell idles out first
                io_ways.drop_caches()
                cold = run_as(user, [*way.prefix, *wl.argv], way.env, as_root=way.as_root)
                warm = run_as(user, [*way.prefix, *wl.argv], way.env, as_root=way.as_root) if cold.rc == 0 else cold
                failure = next((failed(r) for r in (cold, warm) if r.rc != 0), "")
                cells[key] = Cell((*cell.cold, cold.seconds), (*cell.warm, warm.seconds), failure)
                outputs[key] = " ".join(sorted(cold.stdout.split()))  # tar2's two counts come in either order
                print(f"  {wl.name:6} {way.name:40} cold {cold.seconds:7.2f} s  warm {warm.seconds:7.2f} s"
                      + (f"  {failure}" if failure else ""), file=sys.stderr, flush=True)
    return cells, outputs


def failed(r: Run) -> str:
    last = (r.stderr.strip().splitlines() or [""])[-1][:200].replace("|", "/")
    return f"failed (exit {r.rc}): {last}"


def ms(values: tuple[float, ...]) -> float:
    return statistics.median(values) * 1e3


def workload_table(wl: Workload, ways: list[Way], cells: dict, outputs: dict) -> list[str]:
    base = cells.get((KERNEL, wl.name))
    rows = [("| way | served as | cold (ms) | cold min–max | cold ratio to the kernel | warm (ms) | warm min–max "
            "| warm ratio to the kernel |"), "|---|---|---:|---:|---:|---:|---:|---:|"]
    for way in ways:
        cell = cells.get((way.name, wl.name))
        if not way.available or cell is None:
            rows.append(f"| {way.name} | {way.why or 'not run'} | | | | | | |")
            continue
        if cell.failure:
            rows.append(f"| {way.name} | {way.served} | {cell.failure} | | | | | |")
            continue
        cols = []
        for state in ("cold", "warm"):
            values = getattr(cell, state)
            ref = getattr(base, state) if base and not base.failure else ()
            ratio = f"{ms(values) / ms(ref):.2f}×" if ref else "—"
            cols.append(f"{ms(values):.0f} | {min(values) * 1e3:.0f}–{max(values) * 1e3:.0f} | {ratio}")
        same = outputs.get((way.name, wl.name)) == outputs.get((KERNEL, wl.name))
        served = way.served + ("" if same else " (**output differs from the kernel's**)")
        rows.append(f"| {way.name} | {served} | {' | '.join(cols)} |")
    return rows


def summary_table(workloads: list[Workload], ways: list[Way], cells: dict) -> list[str]:
    """The issue's shape: a row per workload and state, a column per way, ms (ratio to the kernel)."""
    shown = [w for w in ways if w.available]
    rows = ["| workload | " + " | ".join(f"`{w.name}`" for w in shown) + " |", "|---|" + "---:|" * len(shown)]
    for wl in workloads:
        for state in ("cold", "warm"):
            base = cells.get((KERNEL, wl.name))
            ref = ms(getattr(base, state)) if base and not base.failure else 0.0
            out = []
            for w in shown:
                cell = cells.get((w.name, wl.name))
                if cell is None or cell.failure:
                    out.append("failed")
                    continue
                value = ms(getattr(cell, state))
                out.append(f"{value:.0f} ({value / ref:.2f}×)" if ref else f"{value:.0f}")
            rows.append(f"| {wl.name}, {state} | " + " | ".join(out) + " |")
    return rows


def unpack_timing(shimrun: str, sif: Path, offset: int, user, way: Way | None) -> list[str]:
    """The first launch with `--serve unpack` and an empty cache of its own, against `unsquashfs -p
    CPUS` of the same partition alone (both cold, as the user)."""
    if way is None or not way.available:
        return ["Not measured: `--serve unpack` is not available in this build."]
    cpus = os.cpu_count() or 1
    work = Path(tempfile.mkdtemp(prefix="shim-bench-io-unpack.", dir="/var/tmp"))
    try:
        os.chown(work, user.uid, user.gid)
        io_ways.drop_caches()
        alone = run_as(user, ["unsquashfs", "-n", "-no-xattrs", "-p", str(cpus), "-o", str(offset),
                              "-d", str(work / "alone"), str(sif)])
        cache = work / "cache"
        cache.mkdir(mode=0o700)
        os.chown(cache, user.uid, user.gid)
        io_ways.drop_caches()
        first = run_as(user, [*way.prefix, "/bin/true"], {**way.env, "SHIMRUN_CACHE": str(cache)})
        again = run_as(user, [*way.prefix, "/bin/true"], {**way.env, "SHIMRUN_CACHE": str(cache)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    said = next((ln for ln in first.stderr.splitlines() if "unpacked" in ln), "")
    took = re.search(r" in ([0-9.]+) s\b", said)
    rows = ["| case | wall (ms) | ratio to `unsquashfs` alone |", "|---|---:|---:|",
            f"| `unsquashfs -n -no-xattrs -p {cpus} -o {offset}` of the SIF, alone | {alone.seconds * 1e3:.0f} "
            f"| 1.00× |" if alone.rc == 0 else f"| unsquashfs alone | {failed(alone)} | |"]
    if first.rc == 0:
        rows.append(f"| first launch `{way.name} /bin/true`, empty cache (unpacks) | {first.seconds * 1e3:.0f} "
                    f"| {first.seconds / alone.seconds:.2f}× |")
        if took and alone.rc == 0:
            rows.append(f"| the unpack alone, as shimrun timed it (its line below) | {float(took.group(1)) * 1e3:.0f} "
                        f"| {float(took.group(1)) / alone.seconds:.2f}× |")
        rows.append(f"| second launch, same cache (reuses) | {again.seconds * 1e3:.0f} | |")
    else:
        rows.append(f"| first launch `{way.name} /bin/true` | {failed(first)} | |")
    rows.append("")
    rows.append(f"shimrun said: `{said}`" if said else "shimrun printed no \"unpacked\" line (did it unpack?).")
    return rows


def targets(workloads: list[Workload], cells: dict, ways: dict[str, Way]) -> list[str]:
    """Issue #24's read targets against the kernel, with today's per-launch mount beside each."""
    rows = ["| target (issue #24) | workload | today (`--serve mount`) | now | result |", "|---|---|---:|---:|---|"]
    wanted = (("unpack", "warm", 1.1), ("kept", "warm", 1.5), ("unpack", "cold", 1.2))
    mount = next((w for w in ways.values() if w.name.startswith("shimrun --serve mount")), None)
    for mode, state, limit in wanted:
        way = next((w for w in ways.values() if w.name.startswith(f"shimrun --serve {mode} ")), None)
        for wl in workloads:
            base = cells.get((KERNEL, wl.name))
            today = cells.get((mount.name, wl.name)) if mount else None
            ratio_today = (f"{ms(getattr(today, state)) / ms(getattr(base, state)):.2f}×"
                           if today and base and not today.failure else "—")
            cell = cells.get((way.name, wl.name)) if way and way.available else None
            if cell is None or cell.failure or base is None:
                now, result = "—", "not measured: " + (way.why if way and way.why else "no row")
            else:
                value = ms(getattr(cell, state)) / ms(getattr(base, state))
                now, result = f"{value:.2f}×", target_cell(value, limit)
            rows.append(f"| {state} from `{mode}` ≤ {limit:g}× kernel | {wl.name} | {ratio_today} | {now} "
                        f"| {result} |")
    return rows


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3, help="rounds (medians of this many; default 3)")
    p.add_argument("--quick", action="store_true", help="one round")
    p.add_argument("--image", choices=("scipy", "base"), default="scipy")
    p.add_argument("--serve-modes", default=os.environ.get("SHIM_BENCH_SERVE", SERVE_DEFAULT))
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--nodes", action="store_true", help="also the per-node reads under the local Slurm (io_nodes.py)")
    p.add_argument("--ranks", type=int, default=64, help="with --nodes: ranks per step (default 64)")
    p.add_argument("--output", default="io", help="results/NAME.md (default io)")
    p.add_argument("--results-dir", type=Path, default=RESULTS, help="where NAME.md goes (default benchmarks/results)")
    args = p.parse_args(argv)
    if args.quick:
        args.runs = 1
    unknown = [w for w in args.workloads.split(",") if w not in WORKLOADS]
    if unknown:
        p.error(f"unknown workload {unknown[0]!r}: choose from {', '.join(WORKLOADS)}")
    return args


def main(argv: list[str]) -> None:
    args = parse(argv)
    if os.getuid() != 0:
        raise SystemExit("bench_io.py: run as root (dropping the page cache and the kernel's mount need it)")
    user = bench_account()
    shimrun = shimrun_path()
    rootfs, sif, sqfs = prepare(args.image)
    workloads = [WORKLOADS[w] for w in args.workloads.split(",")]
    if args.image == "base":
        workloads = [BASE_IMPORT if w.name == "import" else w for w in workloads]
    load_before = load_note()
    offset = io_ways.squashfs_offset(shimrun, sif)
    ways = io_ways.serve_ways(shimrun, [m for m in args.serve_modes.split(",") if m], sif, user)
    ways.append(Way("shimrun DIR", (shimrun, str(rootfs)), {}, "", "dir (the same tree unpacked)"))
    if shutil.which("ch-run"):
        ways.append(Way("ch-run IMG.sqfs", ("ch-run", str(sqfs), "--"), {}, "", "fuse (squashfuse per launch)"))
    else:
        ways.append(Way("ch-run IMG.sqfs", (), {}, "not available: ch-run is not installed"))
    with io_ways.kernel_mount(sif, offset) as mnt:
        ways.append(io_ways.kernel_way(mnt, user))
        cells, outputs = measure([w for w in ways if w.available], workloads, args.runs, user)
    by_name = {w.name: w for w in ways}
    unpack_rows = unpack_timing(shimrun, sif, offset, user, by_name.get(f"shimrun --serve unpack IMG{sif.suffix}"))
    load_after = load_note()
    node_sections = []
    if args.nodes:
        import io_nodes

        modes = [m for m in args.serve_modes.split(",") if m]
        modes += [f"{m}+stage" for m in ("mount", "unpack") if m in modes]  # with and without staging
        node_sections = io_nodes.measure_nodes(shimrun, sif, modes,
                                               args.ranks, 10, io_nodes.DEFAULT_APP[args.image], user)
    size = sif.stat().st_size
    notes = [
        (f"Image: tests/images.py `{'DEBIAN_SCIPY' if args.image == 'scipy' else 'DEBIAN_BASE'}` ({rootfs}), "
        f"SIF {size / 2**20:.0f} MiB (zstd, `shimrun build`), partition at offset {offset}; `ch-run` reads "
        "the same tree's `mksquashfs -comp zstd`."),
        (f"{args.runs} round(s), medians; each round runs every way once per workload (interleaved). Cold: "
        "`sync; echo 3 > /proc/sys/vm/drop_caches` before the run, and the user's processes gone (a kept mount "
        "idled out); warm: the same launch again right after. Wall time of the whole launch, as the ordinary "
        "user, cwd /tmp."),
        ("The kernel's squashfs stays mounted for the whole run (loop, read-only; what a setuid runtime uses): "
        "its warm runs read from the page cache of that one mount. Its workload runs as the user under "
        "`chroot --userspec`, with the host's /dev bound and a /proc mounted in it as in the containers."),
        ("`served as`: what a probe launch saw (the file system at the container's `/`; for a kept mount, a "
        "squashfuse of the user still alive after the launch). A serve mode the build lacks, or serves "
        "otherwise than it promises, is marked \"not available in this build\"."),
        "The output of each workload (a byte count) is compared with the kernel's: a differing one is flagged.",
        (f"Load: before {load_before}; after {load_after}. This machine is shared with other sessions "
        f"({os.cpu_count()} CPUs): figures are noisy when the load is above ~1."),
        f"shimrun: `{shimrun}` (git {git_revision()}).",
    ]
    sections = [("Summary: ms (ratio to the kernel's squashfs, same run)", summary_table(workloads, ways, cells))]
    sections += [(f"{wl.what}", workload_table(wl, ways, cells, outputs)) for wl in workloads]
    sections += [("The first launch's unpack", unpack_rows), ("Targets", targets(workloads, cells, by_name)),
                 *node_sections, ("Notes", notes)]
    out = write_results(args.output, "What the app reads: cold and warm, each way of serving the image", sections,
                        args.results_dir)
    print(out.read_text())


if __name__ == "__main__":
    main(sys.argv[1:])
