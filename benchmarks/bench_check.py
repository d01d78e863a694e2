"""Cold and warm `shimrun check` for the MPICH profile: the ELF/ABI analysis time, and the whole
command. Host MPI: PyPI's MPICH 5.0 wheel (tests/hostmpi.py); image: Debian bookworm with MPICH 4.0.2
and /opt/app/hello (tests/images.py). Writes results/check.md.

- cold: an empty shim cache (no ELF facts, no plan): every host and image library is parsed;
- facts warm: the host libraries' ELF facts cached, the plan recomputed (SHIMRUN_NO_PLAN_CACHE=1);
- warm: the plan cached: no ELF file is opened and pyelftools is not imported.
"Analysis" is what `--debug` reports for the planning step alone (profile loading and the image
mount are outside it); the hardware check (image scan + host facts, cached separately, "facts warm"
reuses it) is shown beside it; "command" is the wall time of the whole `shimrun check` process.

Usage (as root, after scripts/install.sh): /opt/shim/venv/bin/python benchmarks/bench_check.py [RUNS]
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import bench_user, write_results

ANALYSIS = re.compile(r"analysis ([\d.]+) ms \(plan cache (\w+)\); hardware check ([\d.]+) ms")


def site_conf(work: Path) -> Path:
    import hostmpi

    mpi = hostmpi.build_host_mpi()
    conf = work / "conf-mpich"
    (conf / "profiles").mkdir(parents=True, exist_ok=True)
    (conf / "shim.toml").write_text("[launch]\nbinds = []\n")
    (conf / "profiles" / "site-mpich.toml").write_text(
        f'[profile]\nname = "site-mpich"\nkind = "mpi"\napplies = "when-used"\nabi = "mpich"\n'
        f'replaces = ["libmpi.so.12", "libmpich.so.12"]\n[provides]\nprefix = "{mpi.prefix}"\n'
        f'libraries = ["lib/libmpi.so.12"]\n')
    subprocess.run(["chmod", "-R", "a+rX", str(conf)], check=True)
    return conf


def one(cmd: list[str], cache: str, extra_env: dict[str, str]) -> tuple[float, float, str, float]:
    uid, gid, home, name = bench_user()
    env = {"HOME": home, "USER": name, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "SHIMRUN_CACHE": cache, **extra_env}
    ids = {"user": uid, "group": gid, "extra_groups": []} if os.getuid() == 0 else {}
    start = time.perf_counter()
    r = subprocess.run(cmd, env=env, cwd="/tmp", stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       check=False, **ids)
    took = time.perf_counter() - start
    m = ANALYSIS.search(r.stderr)
    if r.returncode != 0 or not m or '"decision": "inject"' not in r.stdout:
        raise SystemExit(f"check failed: {' '.join(cmd)}: {r.stderr[-400:]}")
    return float(m.group(1)), took * 1e3, m.group(2), float(m.group(3))


def main() -> None:
    import images

    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    work = Path(os.environ.get("SHIM_BENCH_DIR", "/var/tmp/shim-bench"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    conf = site_conf(work)
    sif = images.build_sif(images.DEBIAN_MPICH)
    shimrun = shutil.which("shimrun") or "/opt/shim/venv/bin/shimrun"
    cmd = [shimrun, "check", "--json", "--debug", "--conf", str(conf), str(sif), "/opt/app/hello"]
    uid, gid, _home, _name = bench_user()
    results: dict[str, list[tuple[float, float, float]]] = {"cold": [], "facts warm": [], "warm": []}
    for _ in range(runs):
        cache = tempfile.mkdtemp(prefix="shim-bench-cache.", dir="/var/tmp")
        os.chown(cache, uid, gid)
        try:
            a, c, state, hw = one(cmd, cache, {})
            assert state == "miss", state
            results["cold"].append((a, c, hw))
            a, c, state, hw = one(cmd, cache, {"SHIMRUN_NO_PLAN_CACHE": "1"})
            results["facts warm"].append((a, c, hw))
            one(cmd, cache, {})  # the plan is stored by the cold run already; one more as warm-up
            a, c, state, hw = one(cmd, cache, {})
            assert state == "hit", state
            results["warm"].append((a, c, hw))
        finally:
            shutil.rmtree(cache, ignore_errors=True)
    targets = {"cold": 100.0, "warm": 5.0}
    rows = [("| case | analysis median (ms) | analysis min–max (ms) | target | met | hardware check median (ms) "
            "| whole `check` median (ms) |"), "|---|---:|---:|---:|---|---:|---:|"]
    for name, vals in results.items():
        an = [v[0] for v in vals]
        whole = statistics.median(v[1] for v in vals)
        target = targets.get(name)
        met = "" if target is None else ("yes" if statistics.median(an) <= target else
                                         f"no (+{statistics.median(an) - target:.1f} ms)")
        hw = statistics.median(v[2] for v in vals)
        rows.append(f"| {name} | {statistics.median(an):.2f} | {min(an):.2f}–{max(an):.2f} | "
                    f"{'' if target is None else f'≤ {target:.0f}'} | {met} | {hw:.2f} | {whole:.1f} |")
    notes = [(f"{runs} rounds, each: a fresh empty cache directory, then cold, facts-warm and warm runs, as an "
              "ordinary user. Image: Debian bookworm + MPICH 4.0.2 (SIF, squashfuse). Host MPI: MPICH wheel 5.0."),
             ("The whole command includes Python start-up, profile loading and the image mount (squashfuse); "
              "the targets are for the analysis.")]
    out = write_results("check", "Cold and warm `shimrun check` (MPICH profile)",
                        [("ELF/ABI analysis", rows), ("Notes", notes)])
    print(out.read_text())


if __name__ == "__main__":
    main()
