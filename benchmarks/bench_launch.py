"""Warm single launch: `shimrun IMG /bin/true` vs Charliecloud's `ch-run` on the same content,
as a SIF/squashfs image and as a directory, vs bubblewrap on the directory, and vs bare
/bin/true. Writes results/launch.md.

Usage (as root, after scripts/install.sh): /opt/shim/venv/bin/python benchmarks/bench_launch.py [RUNS]
$SHIMRUN: the build to measure (default: `shimrun` on PATH). SHIM_REFERENCE=FRONT-END: a build to
compare with (e.g. tests/refbuild.py's reference install, the build before a refactor): its warm and
planned launches are measured in the same run, each row with its ratio to the reference's.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import bench_user, shimrun_path, table, target_cell, timed_runs, write_results


def prepare(work: Path) -> tuple[Path, Path, Path]:
    import images  # tests/images.py (common.py puts tests/ on sys.path): cached mmdebstrap rootfs

    rootfs = images.build_rootfs(images.DEBIAN_BASE)
    sif = work / "debian.sif"
    sqfs = work / "debian.sqfs"
    shimrun = shimrun_path()
    if not sif.exists():
        subprocess.run([shimrun, "build", str(sif), str(rootfs)], check=True, stdout=subprocess.DEVNULL)
    if not sqfs.exists():
        subprocess.run(["mksquashfs", str(rootfs), str(sqfs), "-comp", "zstd", "-noappend", "-no-xattrs",
                        "-all-root", "-quiet", "-no-progress"], check=True, stdout=subprocess.DEVNULL)
    for p in (sif, sqfs):
        p.chmod(0o644)
    return rootfs, sif, sqfs


def golden_busybox(work: Path) -> tuple[Path, Path]:
    """The Apptainer-built busybox SIF of shared/sif-golden (environment scripts in
    /.singularity.d/env) and its squashfs partition as a file of its own, for ch-run."""
    from shim.image.open import locate_image

    sif = work / "busybox_amd64.sif"
    sqfs = work / "busybox_amd64.sqfs"
    if not sif.exists():
        shutil.copyfile(Path(__file__).resolve().parents[2] / "shared" / "sif-golden" / "apptainer" /
                        "busybox_amd64.sif", sif)
    if not sqfs.exists():
        image = locate_image(str(sif))
        with open(sif, "rb") as src, open(sqfs, "wb") as dst:
            src.seek(image.offset)
            dst.write(src.read(image.size))
    for p in (sif, sqfs):
        p.chmod(0o644)
    return sif, sqfs


# Issue #11's run, before launch records (the same machine and cases): a warm launch was planned
# by Python every time. With SHIM_BEFORE=PATH (the `shimrun` of a build before launch records,
# e.g. installed with SHIM_PREFIX=/opt/shim-before from commit 2b77a1e), it is measured in this
# run instead.
BEFORE = {"shimrun IMG.sif": 77.0, "ch-run IMG.sqfs": 15.5, "shimrun DIR": 58.0, "ch-run DIR": 4.0}
MOUNTED = "shimrun --serve mount IMG.sif (per-launch squashfuse)"
GOLDEN, GOLDEN_CH = "shimrun busybox_amd64.sif (golden, env scripts)", "ch-run busybox_amd64.sqfs"
# (case, peer, limit, issue): the SIF from the node-local cache (the default serve, #24) against
# ch-run on its squashfs; the per-launch mount as #11 asked; the golden image (#24).
TARGETS = (("shimrun IMG.sif", "ch-run IMG.sqfs", 0.5, "#24, from the cache"),
           (MOUNTED, "ch-run IMG.sqfs", 1.0, "#11"), ("shimrun DIR", "ch-run DIR", 1.5, "#11"),
           (GOLDEN, GOLDEN_CH, 1.0, "#24"))
# Issue #24's figures from before it (its text: this machine, one run).
BEFORE_24 = {GOLDEN: "1.65× (issue #24's run)"}
PLANNED = "shimrun IMG.sif, planned (SHIMRUN_NO_RECORD_CACHE=1)"
BEFORE_SIF, BEFORE_DIR = "shimrun before #11 IMG.sif", "shimrun before #11 DIR"
# With SHIM_REFERENCE: the reference build's row of each of these (same command line, its front-end).
AGAINST_REFERENCE = ("shimrun IMG.sif", "shimrun DIR", PLANNED)
REFERENCE_ROW = "reference: {}"


def reference_commands(commands: dict[str, list[str]], shimrun: str, reference: str) -> tuple[dict, dict]:
    """The reference's rows of AGAINST_REFERENCE, and their environment: a cache of its own (its
    plan and hardware-check caches must not be the other build's)."""
    home = bench_user()[2]
    rows = {REFERENCE_ROW.format(name): [reference if word == shimrun else word for word in commands[name]]
            for name in AGAINST_REFERENCE}
    return rows, dict.fromkeys(rows, {"SHIMRUN_CACHE": f"{home}/.cache/shim-reference"})


def reference_rows(by_name: dict[str, float]) -> list[str]:
    rows = ["| case | this build (ms) | reference (ms) | ratio to the reference |", "|---|---:|---:|---:|"]
    for name in AGAINST_REFERENCE:
        now, ref = by_name[name], by_name[REFERENCE_ROW.format(name)]
        rows.append(f"| {name} | {now:.2f} | {ref:.2f} | {now / ref:.2f}× |")
    return rows


def traced_launch(shimrun: str, sif: Path, work: Path) -> tuple[list[str], int]:
    """A warm launch under strace: the programs exec'd (every process), and the file-system
    syscalls of shimrun's own process before it execs the app."""
    uid, gid, home, name = bench_user()
    env = {"HOME": home, "USER": name, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    ids = {"user": uid, "group": gid, "extra_groups": []} if os.getuid() == 0 else {}
    out = Path(f"/tmp/shim-bench-launch-{os.getpid()}.strace")  # written by strace as the bench user
    cmd = ["strace", "-f", "-e", "trace=%file,execve", "-o", str(out), shimrun, str(sif), "/bin/true"]
    for _ in range(2):  # the first one (re)writes the record when needed
        subprocess.run(cmd, env=env, cwd="/tmp", check=True, capture_output=True, **ids)
    text = out.read_text()
    out.unlink()
    lines = [ln.split(None, 1) for ln in text.splitlines() if ln[:1].isdigit()]
    execs = [rest.split('"')[1] for pid, rest in lines if rest.startswith("execve(") and "= 0" in rest]
    front = lines[0][0]
    calls = 0
    for pid, rest in lines[1:]:
        if pid != front or rest.startswith(("+++", "---")):
            continue
        if rest.startswith("execve("):
            break  # the app (or the image's /bin/sh for its environment scripts)
        calls += 1
    return execs, calls


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    work = Path(os.environ.get("SHIM_BENCH_DIR", "/var/tmp/shim-bench"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    rootfs, sif, sqfs = prepare(work)
    shimrun = shimrun_path()
    commands = {
        "bare /bin/true": ["/bin/true"],
        "shimrun IMG.sif": [shimrun, str(sif), "/bin/true"],
        "shimrun IMG.sqfs": [shimrun, str(sqfs), "/bin/true"],
        "shimrun DIR": [shimrun, str(rootfs), "/bin/true"],
        MOUNTED: [shimrun, "--serve", "mount", str(sif), "/bin/true"],
        PLANNED: ["env", "SHIMRUN_NO_RECORD_CACHE=1", shimrun, str(sif), "/bin/true"],
    }
    golden_sif, golden_sqfs = golden_busybox(work)
    commands[GOLDEN] = [shimrun, str(golden_sif), "/bin/true"]
    before_exe = os.environ.get("SHIM_BEFORE", "")
    if before_exe:
        commands[BEFORE_SIF] = [before_exe, str(sif), "/bin/true"]
        commands[BEFORE_DIR] = [before_exe, str(rootfs), "/bin/true"]
    if shutil.which("bwrap"):
        # Bubblewrap over the same directory: namespaces and binds, no image mount.
        commands["bwrap DIR"] = ["bwrap", "--unshare-user", "--ro-bind", str(rootfs), "/", "--proc", "/proc",
                                 "--dev", "/dev", "/bin/true"]
    if shutil.which("ch-run"):
        commands["ch-run IMG.sqfs"] = ["ch-run", str(sqfs), "--", "/bin/true"]
        commands["ch-run DIR"] = ["ch-run", str(rootfs), "--", "/bin/true"]
        commands[GOLDEN_CH] = ["ch-run", str(golden_sqfs), "--", "/bin/true"]
    reference = os.environ.get("SHIM_REFERENCE", "")
    envs: dict[str, dict[str, str]] = {}
    if reference:
        more, envs = reference_commands(commands, shimrun, reference)
        commands.update(more)
    samples = timed_runs(commands, runs, envs=envs)
    baseline = "ch-run IMG.sqfs" if "ch-run IMG.sqfs" in commands else "bare /bin/true"
    notes = [(f"{runs} warm launches each (after 3 warm-up rounds), interleaved, as an ordinary user; "
              "wall time from fork to exit of `shimrun`/`ch-run`, same Debian bookworm minbase content. "
              "\"Warm\": the launch's record is in the cache (the warm-up wrote it); \"planned\": "
              "SHIMRUN_NO_RECORD_CACHE=1, so Python plans every launch (its plan and hardware-check caches "
              "warm) and execs the executor with the record (`env` starts it: one exec more)."),
             "FUSE: /dev/fuse " + ("usable" if os.access("/dev/fuse", os.W_OK) else "NOT usable (fallback)") + "."]
    sections = [("Launch of /bin/true", table(samples, baseline))]
    by_name = {x.name: x.median * 1e3 for x in samples}
    rows = ["| target | before | now | result |", "|---|---:|---:|---|"]
    before = dict(BEFORE)
    if before_exe:  # measured in this run
        before.update({"shimrun IMG.sif": by_name[BEFORE_SIF], "shimrun DIR": by_name[BEFORE_DIR]})
        before.update({k: by_name[k] for k in ("ch-run IMG.sqfs", "ch-run DIR") if k in by_name})
        notes.append(f"Before: `{before_exe}` (a build before launch records), measured in this run.")
    else:
        notes.append(f"Before: issue #11's figures, measured on this machine before launch records: {BEFORE}.")
    before.setdefault(MOUNTED, before["shimrun IMG.sif"])  # before #24 a SIF was mounted per launch
    for case, peer, limit, issue in TARGETS:
        if peer in by_name:
            if issue.startswith("#24") and case == "shimrun IMG.sif":  # before #24: the per-launch mount
                was = f"{by_name[MOUNTED] / by_name[peer]:.2f}× (the mount row, this run)"
            elif case in before:
                was = f"{before[case] / before[peer]:.2f}× ({before[case]:.1f} ms)"
            else:
                was = BEFORE_24.get(case, "")
            now = by_name[case] / by_name[peer]
            rows.append(f"| ({issue}) warm `{case}` ≤ {limit:g}× `{peer}` | {was} "
                        f"| {now:.2f}× ({by_name[case]:.1f} / {by_name[peer]:.1f} ms) | {target_cell(now, limit)} |")
    rows.append(f"| planned launch not slower than before | {before['shimrun IMG.sif']:.1f} ms "
                f"| {by_name[PLANNED]:.1f} ms | {target_cell(by_name[PLANNED] / before['shimrun IMG.sif'], 1.0)} |")
    if reference:
        was = by_name[REFERENCE_ROW.format(PLANNED)]
        rows.append(f"| planned launch not slower than the reference | {was:.1f} ms | {by_name[PLANNED]:.1f} ms "
                    f"| {target_cell(by_name[PLANNED] / was, 1.0)} |")
        sections.insert(1, ("Against the reference build", reference_rows(by_name)))
        notes.append(f"Reference: `{reference}`, measured in this run (its own cache: SHIMRUN_CACHE="
                     "~/.cache/shim-reference).")
    if shutil.which("strace"):
        execs, calls = traced_launch(shimrun, sif, work)
        python = [e for e in execs if "python" in os.path.basename(e)]
        rows.append(f"| a warm launch starts no Python | | {' → '.join(os.path.basename(e) for e in execs)} "
                    f"| {'met' if not python else 'missed: ' + ', '.join(python)} |")
        rows.append(f"| ≤ 100 file-system syscalls before the app's exec | | {calls} "
                    f"| {target_cell(calls, 100, '')} |")
        notes.append("Syscalls: `strace -f -e trace=%file,execve` of a warm launch; the file-system calls of "
                     "shimrun's own process (not squashfuse's) up to its exec of the app.")
    sections.append(("Targets", rows))
    sections.append(("Notes", notes))
    out = write_results("launch", "Warm single launch", sections)
    print(out.read_text())


if __name__ == "__main__":
    main()
