"""What the audit of loaded objects costs (issue #25 item 5): warm launches with and without
`--report-loaded`, interleaved, in one run:

- an app that maps ~200 objects (its count is in the table): python3 importing numpy, most of
  scipy's subpackages, a few of the standard library's extension modules and mpi4py's MPI, with
  the site's MPICH injected (its UCX and libfabric come with it; MPI initialised as a singleton),
  from tests/images.py DEBIAN_MPI4PY; target (issue #25, for ~300 objects): ≤ 2 % slower;
- `/bin/true` in the Debian base image: the warm launch with the audit ≤ 1.05× without;
- both without the audit against the build before (SHIM_REFERENCE=FRONT-END, default main's install
  /opt/shim/venv/bin/shimrun when it is another file than $SHIMRUN): unchanged (≤ 1.05×).

Whether the build audits is probed (`--report-loaded IMG sh -c 'echo "$LD_AUDIT"'` names shim's
audit library); a build without it gets its rows marked "not available in this build", so this
runs on any build. The number of objects is counted in the app (its /proc/self/maps after the
imports) and, where the build audits, from a provenance record's "loaded" list.

Usage (as root, after scripts/install.sh; the launches run as the ordinary user):
    /opt/shim/venv/bin/python benchmarks/bench_audit.py [RUNS]      (default 30)
$SHIMRUN: the build to measure. The mpi4py image is built on first use (minutes). Writes results/audit.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from bench_launch import prepare
from common import (
    argv_int,
    bench_account,
    git_revision,
    shimrun_path,
    table,
    target_cell,
    timed_runs,
    wait_quiet,
    work_dir,
    write_results,
)

IMPORTS = ("import numpy, scipy.linalg, scipy.sparse.linalg, scipy.sparse.csgraph, scipy.optimize, scipy.stats, "
           "scipy.signal, scipy.integrate, scipy.interpolate, scipy.ndimage, scipy.spatial, scipy.special, scipy.fft, "
           "scipy.io, scipy.cluster, scipy.odr, ssl, sqlite3, lzma, bz2, ctypes, decimal; from mpi4py import MPI")
# The objects this process mapped: each file of /proc/self/maps that is an ELF object (not data).
COUNT = ("maps = [ln.split(None, 5) for ln in open('/proc/self/maps')]; "
         "print(len({m[5].strip() for m in maps if len(m) == 6 and ('.so' in m[5] or "
         "m[5].strip().endswith('/python3.11'))}))")
NA = "not available in this build"
APP, TRUE = "python3 + numpy + scipy + mpi4py", "/bin/true"
OFF, ON = "{}, audit off", "{}, --report-loaded"
REF = "reference: {}"
APP_TARGET, TRUE_TARGET, SAME_TARGET = 1.02, 1.05, 1.05


def mpi4py_image() -> Path:
    import images  # tests/images.py (common.py puts tests/ on sys.path)

    return images.build_sif(images.DEBIAN_MPI4PY)


def site_conf(work: Path) -> Path:
    """The site's MPICH (tests/hostmpi.py: PyPI's MPICH 5 wheel, with its UCX and libfabric) as a
    profile that replaces the image's libmpich.so.12, as an HPC site injects its MPI; no binds."""
    import hostmpi  # tests/hostmpi.py

    return hostmpi.write_site_conf(work / "conf-audit", hostmpi.build_host_mpi().prefix)


def caches() -> tuple[str, str]:
    """Each build's own user cache (records, plans, unpacked images), emptied for this run, so
    neither finds what the other or an earlier run left there."""
    home = bench_account().home
    mine, theirs = f"{home}/.cache/shim-bench-audit", f"{home}/.cache/shim-bench-audit-reference"
    for path in (mine, theirs):
        shutil.rmtree(path, ignore_errors=True)
    return mine, theirs


CACHE: dict[str, str] = {}   # SHIMRUN_CACHE of the build under test (main() sets it)


def as_user(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    who = bench_account()
    env = {**CACHE, **(env or {})}
    ids = {"user": who.uid, "group": who.gid, "extra_groups": []} if os.getuid() == 0 else {}
    return subprocess.run(argv, env=who.env(env), cwd="/tmp", capture_output=True, text=True, check=False,
                          stdin=subprocess.DEVNULL, **ids)


def audits(shimrun: str, conf: Path, image: Path) -> tuple[bool, str]:
    """Whether this build audits: the app's LD_AUDIT names shim's library under --report-loaded."""
    r = as_user([shimrun, "--conf", str(conf), "--report-loaded", str(image), "/bin/sh", "-c",
                 'printf "%s" "$LD_AUDIT"'])
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1]
        return False, f"{NA} (probe exit {r.returncode}: {last})"
    if "shim_audit" not in r.stdout:
        return False, f"{NA} (--report-loaded is accepted but the app's LD_AUDIT is {r.stdout!r})"
    return True, f"audited (the app's LD_AUDIT: {r.stdout})"


def object_counts(shimrun: str, conf: Path, image: Path, audited: bool, work: Path) -> tuple[str, str]:
    """(objects in the app's maps after the imports, entries of a provenance record's "loaded" list)."""
    r = as_user([shimrun, "--conf", str(conf), str(image), "python3", "-c", f"{IMPORTS}; {COUNT}"])
    if r.returncode != 0:
        raise SystemExit(f"the app failed: {r.stderr[-400:]}")
    maps = r.stdout.strip().splitlines()[-1]
    if not audited:
        return maps, NA
    who = bench_account()
    records = work / "audit-records"
    shutil.rmtree(records, ignore_errors=True)
    records.mkdir()
    os.chown(records, who.uid, who.gid)
    record = records / "record.json"
    r = as_user([shimrun, "--conf", str(conf), "--provenance", str(record), str(image), "python3", "-c", IMPORTS])
    if r.returncode != 0 or not record.exists():
        return maps, f"no record ({r.returncode}: {r.stderr.strip()[-200:]})"
    doc = json.loads(record.read_text())
    found = doc.get("loaded")
    shutil.rmtree(records)
    return maps, str(len(found)) if isinstance(found, list) else "no \"loaded\" list in the record"


def reference_build(shimrun: str) -> str:
    """SHIM_REFERENCE, else main's install when it is not the build measured ("" for none)."""
    given = os.environ.get("SHIM_REFERENCE", "")
    if given:
        return given
    main = "/opt/shim/venv/bin/shimrun"
    if os.path.exists(main) and os.path.realpath(main) != os.path.realpath(shutil.which(shimrun) or shimrun):
        return main
    return ""


def commands(shimrun: str, conf: Path, base: Path, app: Path, audited: bool, reference: str) -> dict[str, list[str]]:
    cases = {TRUE: [str(base), "/bin/true"], APP: [str(app), "python3", "-c", IMPORTS]}
    out: dict[str, list[str]] = {}
    for name, tail in cases.items():
        out[OFF.format(name)] = [shimrun, "--conf", str(conf), *tail]
        if audited:
            out[ON.format(name)] = [shimrun, "--conf", str(conf), "--report-loaded", *tail]
        if reference:
            out[REF.format(OFF.format(name))] = [reference, "--conf", str(conf), *tail]
    return out


def target_rows(median: dict[str, float], fastest: dict[str, float], audited: bool, reference: str) -> list[str]:
    """The targets, judged on the medians; the fastest runs' ratio beside them (this machine is
    shared: the fastest of each case is the least disturbed)."""
    rows = ["| target (issue #25) | without (median) | with (median) | ratio | ratio of the fastest runs | result |",
            "|---|---:|---:|---:|---:|---|"]
    pairs = [(f"{APP}: ≤ 2 % slower with the audit", OFF.format(APP), ON.format(APP), APP_TARGET, audited, NA),
             (f"warm `{TRUE}` with the audit ≤ 1.05× without", OFF.format(TRUE), ON.format(TRUE), TRUE_TARGET,
              audited, NA)]
    pairs += [(f"{name} without the audit unchanged against the reference (≤ 1.05×)", REF.format(OFF.format(name)),
               OFF.format(name), SAME_TARGET, bool(reference), "no reference build (SHIM_REFERENCE)")
              for name in (TRUE, APP)]
    for what, before, after, limit, measured, missing in pairs:
        if not measured:
            shown = f"{median[before]:.1f} ms" if before in median else "—"
            rows.append(f"| {what} | {shown} | — | — | — | {missing} |")
            continue
        ratio = median[after] / median[before]
        rows.append(f"| {what} | {median[before]:.1f} ms | {median[after]:.1f} ms | {ratio:.3f}× "
                    f"| {fastest[after] / fastest[before]:.3f}× | {target_cell(ratio, limit)} |")
    return rows


def main() -> None:
    runs = argv_int(1, 30)
    work = work_dir()
    _rootfs, base, _sqfs = prepare(work)
    app = mpi4py_image()
    shimrun = shimrun_path()
    conf = site_conf(work)
    mine, theirs = caches()
    CACHE["SHIMRUN_CACHE"] = mine
    audited, probe = audits(shimrun, conf, base)
    reference = reference_build(shimrun)
    maps, listed = object_counts(shimrun, conf, app, audited, work)
    todo = commands(shimrun, conf, base, app, audited, reference)
    envs = {k: {"SHIMRUN_CACHE": theirs if k.startswith("reference: ") else mine} for k in todo}
    quiet = wait_quiet()
    # One group per program, each interleaved within itself: a launch right after the ~0.4 s app
    # measured ~0.4 ms slower than one after /bin/true (two identical builds differed by 20 %).
    samples = [sample for name in (TRUE, APP)
               for sample in timed_runs({k: v for k, v in todo.items() if name in k}, runs, envs=envs)]
    by_name = {s.name: s.median * 1e3 for s in samples}
    fastest = {s.name: min(s.seconds) * 1e3 for s in samples}
    objects = [f"| objects the app mapped (its /proc/self/maps after the imports) | {maps} |",
               f"| entries of the provenance record's \"loaded\" list (every process) | {listed} |"]
    notes = [(f"{runs} warm launches of each case (after 3 warm-up rounds), as an ordinary user, the cases of "
              "each program interleaved (the /bin/true ones, then the app's); wall time from fork to exit of "
              "`shimrun`. Images: SIFs built by `shimrun build` of tests/images.py's "
              f"DEBIAN_BASE and DEBIAN_MPI4PY; `--conf`: no binds, the site's MPICH 5 (tests/hostmpi.py) as a profile "
              "that replaces the image's libmpich.so.12 (so the app runs over it). The app: `python3 -c "
              f"'{IMPORTS}'` (mpi4py 3.1.6 built against the image's MPICH 4.0.2; MPI initialised as a singleton)."),
             f"This build: `{shimrun}` ({git_revision()}): {probe}.",
             (f"Reference: `{reference}`, measured in this run." if reference
              else "No reference build: set SHIM_REFERENCE=FRONT-END."),
             ("Each build has its own user cache (SHIMRUN_CACHE=~/.cache/shim-bench-audit, "
              "~/.cache/shim-bench-audit-reference), emptied at the start."), quiet]
    sections = [("Warm launches", table(samples, OFF.format(TRUE))),
                ("Targets", target_rows(by_name, fastest, audited, reference)),
                ("The app's objects", ["| what | count |", "|---|---:|", *objects]), ("Notes", notes)]
    out = write_results("audit", "What the audit of loaded objects costs", sections)
    print(out.read_text())


if __name__ == "__main__":
    main()
