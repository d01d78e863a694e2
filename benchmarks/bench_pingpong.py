"""MPI ping-pong between 2 ranks on one node (tests/data/mpi_pingpong.c): 8-byte latency and 1 MiB
bandwidth, under `srun --mpi=pmi2 -n 2` of a real local Slurm (tests/slurm.py), as an ordinary user.
Writes results/pingpong.md (issue #5, item 6d).

- native: PyPI's MPICH 5.0 wheel (tests/hostmpi.py), the program built with its mpicc;
- injected: the Debian MPICH 4.0.2 image (tests/images.py DEBIAN_MPICH: /opt/app/pingpong built
  with the image's mpicc) run by `shimrun --conf CONF` whose site-mpich profile injects the wheel's
  libmpi.so.12 (the same profile as tests/test_inject_mpi.py and bench_check.py);
- container MPI: the same image and program with `--no-profiles` (the image's own MPICH 4.0.2).

Each run must print `check=ok` and the expected library (5.0 for native and injected, 4.0 for the
container's own). A run that fails (MPI_Init errors happen now and then, see the notes) is
counted and retried, up to 3 attempts per repeat.

Usage (as root, after scripts/install.sh):
    /opt/shim/venv/bin/python benchmarks/bench_pingpong.py [REPEATS [LAT_ITERS [BW_ITERS]]]   # 9, 100000, 2000
"""

from __future__ import annotations

import hashlib
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    argv_int,
    bench_account,
    command_line,
    git_revision,
    shimrun_path,
    wait_quiet,
    work_dir,
    write_results,
)

RESULT = re.compile(r"^pingpong: lat8_us=([\d.]+) bw1m_MBps=([\d.]+) .*check=(\w+)$", re.M)
LIBRARY = re.compile(r"^pingpong: library: (.*)$", re.M)
NATIVE, INJECTED, OWN = "native host MPI", "container, host MPI injected", "container, its own MPI"
EXPECTED_LIBRARY = {NATIVE: "MPICH Version: 5.0", INJECTED: "MPICH Version: 5.0", OWN: "MPICH Version: 4.0"}
LAT_LIMIT = 0.05  # issue #5: injected latency within 5 % of native
BW_LIMIT = 0.02  # and bandwidth within 2 %
ATTEMPTS = 3


@dataclass
class Case:
    lat_us: list[float] = field(default_factory=list)
    bw_mbps: list[float] = field(default_factory=list)
    library: str = ""
    failures: list[str] = field(default_factory=list)


def native_pingpong() -> Path:
    """tests/data/mpi_pingpong.c built with the wheel's mpicc (RUNPATH to its lib/), cached next to
    the prefix like hostmpi.host_mpi_hello()."""
    import hostmpi
    import images

    mpi = hostmpi.build_host_mpi()
    src = images.DATA / "mpi_pingpong.c"
    key = hashlib.sha256(src.read_bytes() + f"\0mpicc\0{mpi.prefix}".encode()).hexdigest()[:12]

    def make(tmp: Path) -> None:
        hostmpi._compile(mpi, src, tmp, use_wheel_mpicc=True)
        tmp.chmod(0o755)

    return images.cached(mpi.prefix.parent / f"{mpi.prefix.name}.apps" / f"mpi_pingpong-mpicc-{key}", make)


def first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        if any(w in line for w in ("Fatal error", "truncated", "ERROR", "error:")) and "srun: error" not in line:
            return re.sub(r"\(\d+\)|\d{6,}|\[[\d.]+\]|\[vm:\d+ *:\d+\]|0x[0-9a-f]+", "", line).strip()[:160]
    return stderr.strip().splitlines()[-1][:160] if stderr.strip() else "no output"


def pct(value: float, base: float) -> str:
    return f"{(value / base - 1) * 100:+.1f} %"


def pct_target(deviation: float, limit: float) -> str:
    """`deviation`: injected vs native in % (inj/nat − 1); `limit`: the bound in % — an upper bound when
    positive (latency: at most +5 %), a lower bound when negative (bandwidth: at least −2 %)."""
    met = deviation <= limit if limit > 0 else deviation >= limit
    cell = f"{deviation:+.1f} %, limit {limit:+g} %"
    return f"met ({cell})" if met else f"missed by {abs(deviation - limit):.1f} points ({cell})"


def main() -> None:
    import images
    import slurm
    from bench_check import site_conf

    repeats = argv_int(1, 9)
    lat_iters = argv_int(2, 100000)
    bw_iters = argv_int(3, 2000)
    conf = site_conf(work_dir())
    sif = images.build_sif(images.DEBIAN_MPICH)
    native = native_pingpong()
    shimrun = shimrun_path()
    iters = [str(lat_iters), str(bw_iters)]
    srun = ["--mpi=pmi2", "-N", "1", "-n", "2"]
    commands = {
        NATIVE: [*srun, str(native), *iters],
        INJECTED: [*srun, shimrun, "--conf", str(conf), str(sif), "/opt/app/pingpong", *iters],
        OWN: [*srun, shimrun, "--no-profiles", "--conf", str(conf), str(sif), "/opt/app/pingpong", *iters],
    }
    user = bench_account()
    env = user.env()
    cases = {k: Case() for k in commands}
    load_before = wait_quiet()
    t0 = time.monotonic()
    with slurm.LocalSlurm(1) as cluster:
        version = cluster.run(["srun", "--version"]).stdout.strip()
        for i in range(1 + repeats):  # round 0: warm-up (page cache, shim's plan cache), not counted
            for key, args in commands.items():
                case = cases[key]
                for _ in range(ATTEMPTS):
                    r = cluster.srun(args, user=user, env=env, timeout=300)
                    m = RESULT.search(r.stdout)
                    lib = LIBRARY.search(r.stdout)
                    library = " ".join(lib.group(1).split()) if lib else ""
                    if r.returncode == 0 and m and m.group(3) == "ok":
                        if not library.startswith(EXPECTED_LIBRARY[key]):
                            raise SystemExit(f"{key}: expected {EXPECTED_LIBRARY[key]}, got {library!r}")
                        case.library = library
                        if i > 0:
                            case.lat_us.append(float(m.group(1)))
                            case.bw_mbps.append(float(m.group(2)))
                        break
                    if i > 0:
                        case.failures.append(f"exit {r.returncode}: {first_error(r.stderr)}")
                else:
                    raise SystemExit(f"{key}: {ATTEMPTS} failed attempts in a row: {' '.join(args)}\n"
                                     f"{r.stdout[-500:]}\n{r.stderr[-1500:]}")
            print(f"round {i + 1}/{1 + repeats} done ({time.monotonic() - t0:.0f}s)", flush=True)

    med = {k: (statistics.median(c.lat_us), statistics.median(c.bw_mbps)) for k, c in cases.items()}
    nat_lat, nat_bw = med[NATIVE]
    rows = [("| case | library | latency 8 B median (µs) | min–max (µs) | vs native | bandwidth 1 MiB median (MB/s) "
            "| min–max (MB/s) | vs native | failed runs |"), "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for key, c in cases.items():
        lat, bw = med[key]
        rows.append(f"| {key} | {c.library} | {lat:.3f} | {min(c.lat_us):.3f}–{max(c.lat_us):.3f} | "
                    f"{'' if key == NATIVE else pct(lat, nat_lat)} | {bw:.0f} | "
                    f"{min(c.bw_mbps):.0f}–{max(c.bw_mbps):.0f} | {'' if key == NATIVE else pct(bw, nat_bw)} | "
                    f"{len(c.failures)} |")
    inj_lat, inj_bw = med[INJECTED]
    targets = ["| target (issue #5) | native | injected | result |", "|---|---:|---:|---|",
               (f"| latency: injected ≤ native + {LAT_LIMIT:.0%} | {nat_lat:.3f} µs | {inj_lat:.3f} µs "
               f"| {pct_target((inj_lat / nat_lat - 1) * 100, LAT_LIMIT * 100)} |"),
               (f"| bandwidth: injected ≥ native − {BW_LIMIT:.0%} | {nat_bw:.0f} MB/s | {inj_bw:.0f} MB/s "
               f"| {pct_target((inj_bw / nat_bw - 1) * 100, -BW_LIMIT * 100)} |")]
    failures = sorted({f"{k}: {f}" for k, c in cases.items() for f in c.failures})
    notes = [f"- {n}" for n in (
        (f"{repeats} repeats per case (after 1 warm-up round), interleaved; each run one `srun` job step of 2 "
         f"ranks on one node doing {lat_iters} 8-byte and {bw_iters} 1 MiB round trips (a tenth more as warm-up "
         "inside the program). Latency: half the mean round trip. Bandwidth: 1 MiB (2^20 bytes) / half the mean "
         "round trip, in MB/s (10^6 bytes/s). Every message is checked (`check=ok`)."),
        ("Targets are one-sided: the injected run may be faster than native. Deviations: injected median / "
         "native median − 1."),
        (f"Slurm: {version}, a private 1-node cluster from tests/slurm.py (tasks as an ordinary user, "
         "`--mpi=pmi2`). The machine may be shared with other work: " + load_before + "."),
        (f"shim {git_revision()}; image Debian bookworm + MPICH 4.0.2 (SIF, squashfuse); host MPI: PyPI's "
         "MPICH wheel, injected by the site-mpich profile (`replaces = [libmpi.so.12, libmpich.so.12]`)."),
        *([f"Failed runs (retried): {'; '.join(f'`{f}`' for f in failures)}."] if failures else
          ["No run failed."]),
        "Commands (with SLURM_CONF of the private cluster):",
    )]
    notes += ["", *[f"    srun {command_line(a)}" for a in commands.values()]]
    out = write_results("pingpong", "MPI ping-pong, 2 ranks on one node: native vs in the container",
                        [("Ping-pong", rows), ("Targets", targets), ("Notes", notes)])
    print(out.read_text())


if __name__ == "__main__":
    main()
