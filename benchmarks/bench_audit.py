"""What the audit of loaded objects costs (issue #25 item 5): warm launches with and without
`--report-loaded`, interleaved, in one run:

- an app that maps ~300 objects: python3 importing numpy, scipy (linalg, sparse, optimize, stats,
  signal, integrate) and mpi4py's MPI (the image's MPICH, initialised as a singleton), from
  tests/images.py DEBIAN_MPI4PY; target: ≤ 2 % slower with the audit;
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

IMPORTS = ("import numpy, scipy.linalg, scipy.sparse.linalg, scipy.optimize, scipy.stats, scipy.signal, "
           "scipy.integrate; from mpi4py import MPI")
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
    """A shim.toml that binds nothing of the host and no profile: the image's own libraries run."""
    conf = work / "conf-audit"
    (conf / "profiles").mkdir(parents=True, exist_ok=True)
    (conf / "shim.toml").write_text("[launch]\nbinds = []\n")
    for p in (conf, conf / "profiles", conf / "shim.toml"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return conf


def as_user(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    who = bench_account()
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


def target_rows(by_name: dict[str, float], audited: bool, reference: str) -> list[str]:
    rows = ["| target (issue #25) | without | with | ratio | result |", "|---|---:|---:|---:|---|"]
    for name, limit, what in ((APP, APP_TARGET, f"{APP}: ≤ 2 % slower with the audit"),
                              (TRUE, TRUE_TARGET, f"warm `{TRUE}` with the audit ≤ 1.05× without")):
        off = by_name[OFF.format(name)]
        if not audited:
            rows.append(f"| {what} | {off:.1f} ms | — | — | {NA} |")
            continue
        on = by_name[ON.format(name)]
        rows.append(f"| {what} | {off:.1f} ms | {on:.1f} ms | {on / off:.3f}× | {target_cell(on / off, limit)} |")
    for name in (TRUE, APP):
        what = f"{name} without the audit unchanged against the reference (≤ 1.05×)"
        if not reference:
            rows.append(f"| {what} | — | — | — | no reference build (SHIM_REFERENCE) |")
            continue
        ref, now = by_name[REF.format(OFF.format(name))], by_name[OFF.format(name)]
        rows.append(f"| {what} | {ref:.1f} ms (reference) | {now:.1f} ms | {now / ref:.3f}× "
                    f"| {target_cell(now / ref, SAME_TARGET)} |")
    return rows


def main() -> None:
    runs = argv_int(1, 30)
    work = work_dir()
    _rootfs, base, _sqfs = prepare(work)
    app = mpi4py_image()
    shimrun = shimrun_path()
    conf = site_conf(work)
    audited, probe = audits(shimrun, conf, base)
    reference = reference_build(shimrun)
    maps, listed = object_counts(shimrun, conf, app, audited, work)
    home = bench_account().home
    todo = commands(shimrun, conf, base, app, audited, reference)
    envs = {k: {"SHIMRUN_CACHE": f"{home}/.cache/shim-reference"} for k in todo if k.startswith("reference: ")}
    quiet = wait_quiet()
    samples = timed_runs(todo, runs, envs=envs)
    by_name = {s.name: s.median * 1e3 for s in samples}
    objects = [f"| objects the app mapped (its /proc/self/maps after the imports) | {maps} |",
               f"| entries of the provenance record's \"loaded\" list (every process) | {listed} |"]
    notes = [(f"{runs} warm launches of each case (after 3 warm-up rounds), interleaved, as an ordinary user; wall "
              "time from fork to exit of `shimrun`. Images: SIFs built by `shimrun build` of tests/images.py's "
              f"DEBIAN_BASE and DEBIAN_MPI4PY; `--conf` with no binds and no profiles. The app: `python3 -c "
              f"'{IMPORTS}'` (mpi4py 3.1.6 built against the image's MPICH 4.0.2, MPI initialised as a singleton)."),
             f"This build: `{shimrun}` ({git_revision()}): {probe}.",
             (f"Reference: `{reference}`, measured in this run (its own cache: SHIMRUN_CACHE=~/.cache/"
              "shim-reference)." if reference else "No reference build: set SHIM_REFERENCE=FRONT-END."), quiet]
    sections = [("Warm launches", table(samples, OFF.format(TRUE))), ("Targets", target_rows(by_name, audited,
                reference)), ("The app's objects", ["| what | count |", "|---|---:|", *objects]), ("Notes", notes)]
    out = write_results("audit", "What the audit of loaded objects costs", sections)
    print(out.read_text())


if __name__ == "__main__":
    main()
