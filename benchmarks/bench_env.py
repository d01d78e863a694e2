"""Launch time of an image whose OCI config has 10,000 and 100,000 Env entries (issue #21: 100,000
took 43 s of CPU per launch). Target: a launch with 100k entries ≤ 10× one with 10k, warm (from
the launch record) and planned (SHIMRUN_NO_RECORD_CACHE=1: Python plans every launch).

The images: busybox plus Env entries `E<i>=1` (short, so that 100,000 of them fit in what exec(2)
takes), written as OCI layouts by tests/hostile.py and built into SIFs by `shimrun build`. The app
is busybox's `echo`, which does not read its environment: what is timed is shim's part (reading
the config, composing the environment, exec). With SHIMRUN_BEFORE=PATH (another build's
shimrun), the same launches with it too, a few times (it may take tens of seconds each).

Usage (as root, after scripts/install.sh): /opt/shim/venv/bin/python benchmarks/bench_env.py [RUNS]   # 10
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from common import (
    Sample,
    argv_int,
    bench_account,
    fmt_ms,
    git_revision,
    shimrun_path,
    target_cell,
    timed_runs,
    wait_quiet,
    work_dir,
    write_results,
)

COUNTS = (10_000, 100_000)
TARGET = 10.0


def build_images(shimrun: str) -> dict[int, str]:
    import hostile  # tests/hostile.py (common.py puts tests/ on sys.path)

    user = bench_account()
    base = work_dir() / "env-bench"
    shutil.rmtree(base, ignore_errors=True)
    base.mkdir(mode=0o755)
    os.chown(base, user.uid, user.gid)
    sifs = {}
    for n in COUNTS:
        image = hostile.Image.make([hostile.busybox_tar()], Env=["PATH=/bin", *(f"E{i}=1" for i in range(n))])
        hostile.write_layout(base / f"layout{n}", [image], [hostile.tagged(image, "1")])
        sif = base / f"env{n}.sif"
        subprocess.run([shimrun, "build", str(sif), f"oci:{base}/layout{n}:1"], check=True, capture_output=True,
                       env=user.env({"SHIMRUN_CACHE": str(base / "cache")}), cwd=base, user=user.uid,
                       group=user.gid, extra_groups=[])
        sifs[n] = str(sif)
    return sifs


def commands(shimrun: str, sifs: dict[int, str], label: str) -> dict[str, list[str]]:
    out = {}
    for n, sif in sifs.items():
        out[f"{label} warm, {n:,} Env"] = [shimrun, sif, "/bin/echo"]
        out[f"{label} planned, {n:,} Env"] = ["env", "SHIMRUN_NO_RECORD_CACHE=1", shimrun, sif, "/bin/echo"]
    return out


def rows(samples: list[Sample]) -> list[str]:
    out = ["| case | median (ms) | min–max (ms) |", "|---|---:|---:|"]
    for s in samples:
        median, spread = fmt_ms(s.seconds)
        out.append(f"| {s.name} | {median} | {spread} |")
    return out


def targets(samples: list[Sample], label: str) -> list[str]:
    by_name = {s.name: s.median for s in samples}
    out = []
    for kind in ("warm", "planned"):
        small, big = by_name[f"{label} {kind}, 10,000 Env"], by_name[f"{label} {kind}, 100,000 Env"]
        out.append(f"| {label} {kind}: 100,000 Env ≤ {TARGET:g}× 10,000 | {small * 1e3:.1f} ms | {big * 1e3:.1f} ms | "
                   f"{target_cell(big / small, TARGET)} |")
    return out


def main() -> None:
    runs = argv_int(1, 10)
    shimrun = shimrun_path()
    sifs = build_images(shimrun)
    quiet = wait_quiet()
    samples = timed_runs(commands(shimrun, sifs, "shimrun"), runs)
    before = os.environ.get("SHIMRUN_BEFORE", "")
    old = timed_runs(commands(before, sifs, "before"), 1, warmup=1) if before else []
    sections = [
        ("Launch of /bin/echo in an image with N Env entries", rows(samples + old)),
        ("Target", ["| target (issue #21) | 10,000 Env | 100,000 Env | result |", "|---|---:|---:|---|",
                    *targets(samples, "shimrun"), *(targets(old, "before") if old else [])]),
        ("Notes", [f"{runs} launches each (after 3 warm-up rounds), interleaved, as an ordinary user; wall time "
                   "from fork to exit. The Env is applied as data (csrc/envcompose.c composes the environment "
                   "with a hash index; the image's env script, the only one, is not sourced by its shell: a shell "
                   "holding 100,000 variables takes seconds). " + quiet,
                   f"Revision: {git_revision()}; shimrun: {shimrun}"
                   + (f"; before: {before}, 1 launch each after 1 warm-up" if before else "")]),
    ]
    print(write_results("env", "Launch with a large OCI Env", sections), file=sys.stderr)


if __name__ == "__main__":
    main()
