"""Warm single launch: `shimrun IMG /bin/true` vs Charliecloud's `ch-run` on the same content,
as a SIF/squashfs image and as a directory, vs bubblewrap on the directory, and vs bare
/bin/true. Writes results/launch.md.

Usage (as root, after scripts/install.sh): /opt/shim/venv/bin/python benchmarks/bench_launch.py [RUNS]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import table, timed_runs, write_results


def prepare(work: Path) -> tuple[Path, Path, Path]:
    import images  # tests/images.py (common.py puts tests/ on sys.path): cached mmdebstrap rootfs

    rootfs = images.build_rootfs(images.DEBIAN_BASE)
    sif = work / "debian.sif"
    sqfs = work / "debian.sqfs"
    shimrun = shutil.which("shimrun") or "/opt/shim/venv/bin/shimrun"
    if not sif.exists():
        subprocess.run([shimrun, "build", str(sif), str(rootfs)], check=True, stdout=subprocess.DEVNULL)
    if not sqfs.exists():
        subprocess.run(["mksquashfs", str(rootfs), str(sqfs), "-comp", "zstd", "-noappend", "-no-xattrs",
                        "-all-root", "-quiet", "-no-progress"], check=True, stdout=subprocess.DEVNULL)
    for p in (sif, sqfs):
        p.chmod(0o644)
    return rootfs, sif, sqfs


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    work = Path(os.environ.get("SHIM_BENCH_DIR", "/var/tmp/shim-bench"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    rootfs, sif, sqfs = prepare(work)
    shimrun = shutil.which("shimrun") or "/opt/shim/venv/bin/shimrun"
    commands = {
        "bare /bin/true": ["/bin/true"],
        "shimrun IMG.sif": [shimrun, str(sif), "/bin/true"],
        "shimrun IMG.sqfs": [shimrun, str(sqfs), "/bin/true"],
        "shimrun DIR": [shimrun, str(rootfs), "/bin/true"],
    }
    if shutil.which("bwrap"):
        # Bubblewrap over the same directory: namespaces and binds, no image mount.
        commands["bwrap DIR"] = ["bwrap", "--unshare-user", "--ro-bind", str(rootfs), "/", "--proc", "/proc",
                                 "--dev", "/dev", "/bin/true"]
    if shutil.which("ch-run"):
        commands["ch-run IMG.sqfs"] = ["ch-run", str(sqfs), "--", "/bin/true"]
        commands["ch-run DIR"] = ["ch-run", str(rootfs), "--", "/bin/true"]
    samples = timed_runs(commands, runs)
    baseline = "ch-run IMG.sqfs" if "ch-run IMG.sqfs" in commands else "bare /bin/true"
    notes = [(f"{runs} warm launches each (after 3 warm-up rounds), interleaved, as an ordinary user; "
              "wall time from fork to exit of `shimrun`/`ch-run`, same Debian bookworm minbase content."),
             "FUSE: /dev/fuse " + ("usable" if os.access("/dev/fuse", os.W_OK) else "NOT usable (fallback)") + "."]
    sections = [("Launch of /bin/true", table(samples, baseline))]
    by_name = {x.name: x.median for x in samples}
    if "ch-run IMG.sqfs" in by_name:
        ratio = by_name["shimrun IMG.sif"] / by_name["ch-run IMG.sqfs"]
        verdict = "met" if ratio <= 1.0 else f"missed by {ratio:.1f}× ({ratio:.2f}× > 1.0×)"
        sections.append(("Target (issue #5)", [
            "| target | shimrun IMG.sif | ch-run IMG.sqfs | ratio | result |", "|---|---:|---:|---:|---|",
            (f"| warm single launch ≤ 1.0× `ch-run IMG.sqfs` | {by_name['shimrun IMG.sif'] * 1e3:.1f} ms | "
            f"{by_name['ch-run IMG.sqfs'] * 1e3:.1f} ms | {ratio:.2f}× | {verdict} |"), "",
            ("Why: a single launch (not under srun) runs the Python implementation: interpreter start-up, "
            "imports (argparse, tomllib, dataclasses: about 45 ms), the site configuration, the cached "
            "hardware-check and plan lookups, then the C core. Under srun only the node's first rank does "
            "that; the others join through the native front-end (see srun.md).")]))
    sections.append(("Notes", notes))
    out = write_results("launch", "Warm single launch", sections)
    print(out.read_text())


if __name__ == "__main__":
    main()
