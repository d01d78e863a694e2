"""`shimrun pull` of a ~150 MB, 5-layer image from a local registry into a SIF, cold (empty blob
cache) and warm (blob cache filled), against the floor of the same steps done by the usual
tools: `skopeo copy docker://... oci:DIR` + `umoci unpack --rootless` + `mksquashfs` (with
shim's own mksquashfs flags), all in one run, interleaved. Peak RSS of the pull's processes.
Writes results/pull.md.

The image: a Debian bookworm minbase root with python3 (tests/images.py, cached by recipe
hash), split into 5 gzip layers by tests/oci.py's layout writer (cached too), pushed to a
CNCF distribution registry on 127.0.0.1 (plain HTTP) that lives for the run. The measured
commands run as the ordinary bench user (common.bench_user); the registry and the push as root.

RSS: every command is started by this script, which waits for it with wait4(2): its
ru_maxrss is the peak RSS of the largest single process of the command's tree (the command and
the children it reaped). Meanwhile a thread reads VmHWM (the peak RSS so far) of every process
of the tree from /proc every SAMPLE_S seconds, by process name, so shimrun's own process and its
mksquashfs get separate figures (what grows in a process's last SAMPLE_S before exit is missed).

Usage (as root, after scripts/install.sh): /opt/shim/venv/bin/python benchmarks/bench_pull.py [ROUNDS]   # 3
"""

from __future__ import annotations

import contextlib
import gzip
import os
import pty
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    argv_int,
    bench_account,
    command_line,
    git_revision,
    load_note,
    shimrun_path,
    target_cell,
    wait_quiet,
    write_results,
)

REPO_TAG = "bench/app:1"
SAMPLE_S = 0.02
MB = 1e6
TARGET_COLD, TARGET_WARM, TARGET_RSS_MB = 1.0, 0.5, 100.0
TOOL_TIMEOUT = 600

# The five layers: (name, Tree include, Tree exclude) over the one root filesystem.
LAYERS = (
    ("base (all but usr/bin, usr/lib, usr/share)", (), ("usr/bin", "usr/lib", "usr/share")),
    ("usr/bin", ("usr/bin",), ()),
    ("usr/lib/x86_64-linux-gnu", ("usr/lib/x86_64-linux-gnu",), ()),
    ("usr/lib (rest: python3.11, ...)", ("usr/lib",), ("usr/lib/x86_64-linux-gnu",)),
    ("usr/share", ("usr/share",), ()),
)


def recipe():
    import images  # tests/images.py (common.py puts tests/ on sys.path)

    return images.Recipe(name="bench-pull", suite="bookworm", variant="minbase", packages=("python3",),
                         customize=('echo "SHIM_TEST_IMAGE=bench-pull" >> "$1/etc/os-release"',))


def bench_layout():
    """The cached OCI layout (tests/oci.py) of the benchmark image, its root built if need be."""
    import images
    import oci

    r = recipe()
    rootfs = images.build_rootfs(r)
    layers = tuple(oci.Layer((oci.Tree(rootfs, r.slug, include=inc, exclude=exc),), "gzip")
                   for _, inc, exc in LAYERS)
    config = oci.ImageConfig(env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
                             cmd=("python3",), labels={"org.example.purpose": "shim pull benchmark"})
    spec = oci.LayoutSpec("bench-pull", "bench/app", (("1", oci.Image(layers, config)),))
    return oci.build_layout(spec)


def layer_sizes(layout) -> list[tuple[int, int]]:
    """(compressed, uncompressed) bytes of each layer blob."""
    sizes = []
    for desc in layout.manifest["layers"]:
        n = 0
        with gzip.open(layout.blob(desc["digest"]), "rb") as f:
            while chunk := f.read(1 << 20):
                n += len(chunk)
        sizes.append((desc["size"], n))
    return sizes


# ---------------------------------------------------------------------------------------------
# Running a command, with its time and peak RSS


@dataclass
class Run:
    seconds: float
    maxrss: int                                           # bytes: wait4 ru_maxrss (largest process of the tree)
    cpu: float                                            # seconds: wait4 user + system time (with reaped children)
    hwm: dict[str, int] = field(default_factory=dict)     # bytes: sampled VmHWM, per process name
    lines: list[tuple[float, str]] = field(default_factory=list)   # (seconds since start, stderr line) with a pty


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            continue
    return out


def _sample(pid: int, hwm: dict[str, int]) -> None:
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        if "VmHWM" in fields:  # absent for a zombie
            name = fields["Name"].strip()
            hwm[name] = max(hwm.get(name, 0), int(fields["VmHWM"].split()[0]) * 1024)


class Runner:
    def __init__(self, work: Path) -> None:
        self.user = bench_account()
        self.ids = ({"user": self.user.uid, "group": self.user.gid, "extra_groups": []} if os.getuid() == 0 else {})
        self.base_env = self.user.env({"TMPDIR": str(work), "no_proxy": "127.0.0.1,localhost",
                                       "NO_PROXY": "127.0.0.1,localhost"})
        self.work = work

    def chown(self, path: Path) -> Path:
        if os.getuid() == 0:
            os.chown(path, self.user.uid, self.user.gid)
        return path

    def mkdir(self, path: Path, mode: int = 0o755) -> Path:
        path.mkdir(mode=mode)
        path.chmod(mode)
        return self.chown(path)

    def run(self, cmd: list[str], env: dict[str, str] | None = None, tty: bool = False) -> Run:
        """Run `cmd` as the bench user; with `tty`, its stderr is a pty whose lines are timestamped."""
        hwm: dict[str, int] = {}
        lines: list[tuple[float, str]] = []
        stop = threading.Event()
        with tempfile.TemporaryFile(dir=self.work) as log:
            master = slave = -1
            if tty:
                master, slave = pty.openpty()
            start = time.perf_counter()
            proc = subprocess.Popen(cmd, env={**self.base_env, **(env or {})}, cwd=self.work,
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=slave if tty else log, **self.ids)
            if tty:
                os.close(slave)

            def sampler() -> None:
                while not stop.is_set():
                    _sample(proc.pid, hwm)
                    stop.wait(SAMPLE_S)

            def reader() -> None:
                buf = b""
                with contextlib.suppress(OSError):  # EIO once the pty's last writer is gone
                    while chunk := os.read(master, 4096):
                        buf += chunk
                        *done, buf = buf.replace(b"\r", b"\n").split(b"\n")
                        now = time.perf_counter() - start
                        lines.extend((now, d.decode(errors="replace")) for d in done if d.strip())

            threads = [threading.Thread(target=sampler, daemon=True)]
            if tty:
                threads.append(threading.Thread(target=reader, daemon=True))
            for t in threads:
                t.start()
            _, status, usage = os.wait4(proc.pid, 0)
            took = time.perf_counter() - start
            proc.returncode = os.waitstatus_to_exitcode(status)
            stop.set()
            for t in threads:
                t.join(timeout=10)
            if tty:
                os.close(master)
            if proc.returncode != 0:
                log.seek(0)
                tail = log.read()[-1500:].decode(errors="replace")
                raise SystemExit(f"bench_pull: failed ({proc.returncode}): {command_line(cmd)}\n{tail}")
        return Run(took, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime, hwm, lines)


# ---------------------------------------------------------------------------------------------
# The cases


@dataclass
class Cases:
    runner: Runner
    source: str          # docker://HOST/bench/app:1
    shimrun: str
    mksquashfs_flags: tuple[str, ...]
    round_no: int = 0

    def pull(self, cache: Path, out: Path, tty: bool = False) -> Run:
        return self.runner.run([self.shimrun, "pull", "--no-https", "--force", str(out), self.source],
                               env={"SHIMRUN_CACHE": str(cache)}, tty=tty)

    def shim_pair(self, tty: bool = False) -> tuple[Run, Run, int]:
        """A cold pull (fresh, empty blob cache), then a warm one (the same cache); the SIF's size."""
        self.round_no += 1
        w = self.runner.work
        cache = self.runner.mkdir(w / f"cache.{self.round_no}", 0o700)
        cold = self.pull(cache, w / f"cold.{self.round_no}.sif", tty)
        warm = self.pull(cache, w / f"warm.{self.round_no}.sif", tty)
        size = (w / f"warm.{self.round_no}.sif").stat().st_size
        for p in (w / f"cold.{self.round_no}.sif", w / f"warm.{self.round_no}.sif"):
            p.unlink()
        shutil.rmtree(cache)
        return cold, warm, size

    def floor(self) -> tuple[dict[str, Run], int]:
        """skopeo copy, umoci unpack, mksquashfs; the squashfs image's size."""
        self.round_no += 1
        d = self.runner.mkdir(self.runner.work / f"floor.{self.round_no}")
        layout, bundle, sqfs = d / "layout", d / "bundle", d / "out.sqfs"
        steps = {
            "skopeo copy": ["skopeo", "--insecure-policy", "copy", "-q", "--src-tls-verify=false", self.source,
                            f"oci:{layout}:1"],
            "umoci unpack": ["umoci", "unpack", "--rootless", "--image", f"{layout}:1", str(bundle)],
            "mksquashfs": ["mksquashfs", str(bundle / "rootfs"), str(sqfs), *self.mksquashfs_flags,
                           "-quiet", "-no-progress"],
        }
        runs = {name: self.runner.run(cmd) for name, cmd in steps.items()}
        size = sqfs.stat().st_size
        shutil.rmtree(d)
        return runs, size


def phases(run: Run) -> list[tuple[str, float]]:
    """(step, seconds from the previous step's line) from shimrun's progress lines on a terminal."""
    out, last, label = [], 0.0, "start, resolve the manifest"
    for at, line in run.lines:
        text = re.sub(r"\S+\.sif\b", "OUT.sif", line.removeprefix("shimrun: "))
        if text.startswith("wrote "):
            text = "wrote OUT.sif"
        if " MiB / " in text:  # a download's byte count updated in place: one step per layer
            text = text.split(" MiB / ")[0].rsplit(" ", 1)[0]
        if text == label:
            continue
        out.append((label, at - last))
        label, last = text, at
    out.append((label + " (to exit)", run.seconds - last))
    return out


def main() -> None:
    rounds = argv_int(1, 3)
    import images
    import oci

    from shim.image.build import MKSQUASHFS_BASE

    started = time.monotonic()
    layout = bench_layout()
    sizes = layer_sizes(layout)
    rootfs_files = sum(len(d) + len(f) for _, d, f in os.walk(images.build_rootfs(recipe())))
    var_tmp_before = set(os.listdir("/var/tmp"))
    work = Path(tempfile.mkdtemp(prefix="shim-bench-pull.", dir="/var/tmp"))
    reg = None
    try:
        runner = Runner(work)
        work.chmod(0o755)
        runner.chown(work)
        reg = oci.start_registry(work / "registry", tls=False)
        reg.push(layout, REPO_TAG)
        flags = (*MKSQUASHFS_BASE, "-comp", "zstd")
        cases = Cases(runner, f"docker://{reg.host}/{REPO_TAG}", shimrun_path(), flags)
        quiet = wait_quiet()
        cases.shim_pair()  # warm-up round, not counted: page cache, registry, first imports
        cases.floor()
        cold: list[Run] = []
        warm: list[Run] = []
        floor: list[dict[str, Run]] = []
        sif_size = sqfs_size = 0
        for _ in range(rounds):
            c, w, sif_size = cases.shim_pair()
            cold.append(c)
            warm.append(w)
            f, sqfs_size = cases.floor()
            floor.append(f)
        # One more pair, not counted, with stderr on a pty: shimrun's progress lines, timestamped.
        cold_tty, warm_tty, _ = cases.shim_pair(tty=True)
        load_after = load_note()
    finally:
        if reg is not None:
            oci.stop_registry(reg)
        shutil.rmtree(work, ignore_errors=True)
    left = sorted(set(os.listdir("/var/tmp")) - var_tmp_before)

    floor_total = [sum(r.seconds for r in f.values()) for f in floor]
    base = statistics.median(floor_total)

    def med(xs: list[float]) -> float:
        return statistics.median(xs)

    def mb(n: float) -> str:
        return f"{n / MB:.1f}"

    def hwm(runs: list[Run], name: str) -> float:
        return max(r.hwm.get(name, 0) for r in runs)

    shim_py = max(hwm(cold, "python3"), hwm(warm, "python3"))
    shim_mk = max(hwm(cold, "mksquashfs"), hwm(warm, "mksquashfs"))
    shim_tree = max(r.maxrss for r in cold + warm)

    def row(name: str, secs: list[float], cpu: list[float], target: float | None, rss: str) -> str:
        ratio = med(secs) / base
        result = target_cell(ratio, target) if target is not None else ""
        tgt = f"≤ {target:g}×" if target is not None else ""
        return (f"| {name} | {med(secs):.2f} | {min(secs):.2f}–{max(secs):.2f} | {med(cpu):.2f} | {ratio:.2f}× "
                f"| {tgt} | {result} | {rss} |")

    def shim_rss(runs: list[Run]) -> str:
        return (f"shimrun {mb(hwm(runs, 'python3'))}, mksquashfs {mb(hwm(runs, 'mksquashfs'))}; "
                f"largest {mb(max(r.maxrss for r in runs))}")

    main_rows = [("| case | median (s) | min–max (s) | CPU, median (s) | ratio to floor | target | result "
                 "| peak RSS (MB) |"), "|---|---:|---:|---:|---:|---|---|---|",
                 row("shimrun pull, cold (empty blob cache)", [r.seconds for r in cold], [r.cpu for r in cold],
                     TARGET_COLD, shim_rss(cold)),
                 row("shimrun pull, warm (blob cache filled)", [r.seconds for r in warm], [r.cpu for r in warm],
                     TARGET_WARM, shim_rss(warm)),
                 row("floor: skopeo + umoci + mksquashfs", floor_total, [sum(r.cpu for r in f.values()) for f in floor],
                     None, f"largest {mb(max(r.maxrss for f in floor for r in f.values()))}")]
    for part in floor[0]:
        runs = [f[part] for f in floor]
        main_rows.append(row(f"floor part: {part}", [r.seconds for r in runs], [r.cpu for r in runs], None,
                             mb(max(r.maxrss for r in runs))))

    cold_ratio, warm_ratio = med([r.seconds for r in cold]) / base, med([r.seconds for r in warm]) / base
    target_rows = ["| target (issue) | measured | result |", "|---|---:|---|"]
    for what, ratio, limit in (("cold pull", cold_ratio, TARGET_COLD), ("warm-cache pull", warm_ratio, TARGET_WARM)):
        target_rows.append(f"| {what} ≤ {limit:g}× floor | {ratio:.2f}× | {target_cell(ratio, limit)} |")
    for what, peak in (("shimrun's own process", shim_py), ("mksquashfs started by shimrun", shim_mk),
                       ("largest process of the pull (wait4)", shim_tree)):
        target_rows.append(f"| peak RSS ≤ {TARGET_RSS_MB:g} MB: {what} | {mb(peak)} MB "
                           f"| {target_cell(peak / MB, TARGET_RSS_MB, ' MB')} |")

    phase_rows = ["| step (shimrun's progress line) | cold (s) | warm (s) |", "|---|---:|---:|"]
    cold_ph, warm_ph = phases(cold_tty), dict(phases(warm_tty))
    for label, secs in cold_ph:
        w = warm_ph.pop(label, None)
        phase_rows.append(f"| {label} | {secs:.2f} | {'' if w is None else f'{w:.2f}'} |")
    phase_rows += [f"| {label} | | {secs:.2f} |" for label, secs in warm_ph.items()]
    phase_rows.append(f"| total (this pair) | {cold_tty.seconds:.2f} | {warm_tty.seconds:.2f} |")

    layer_rows = ["| layer | content | compressed (MB) | uncompressed (MB) |", "|---:|---|---:|---:|"]
    for i, ((name, _, _), (comp, raw)) in enumerate(zip(LAYERS, sizes, strict=True), 1):
        layer_rows.append(f"| {i} | {name} | {mb(comp)} | {mb(raw)} |")
    layer_rows.append(f"| | total | {mb(sum(c for c, _ in sizes))} | {mb(sum(u for _, u in sizes))} |")

    user = runner.user
    shim_cmd = command_line([cases.shimrun, "pull", "--no-https", "--force", "OUT.sif", "docker://HOST/" + REPO_TAG])
    floor_cmds = ["skopeo --insecure-policy copy -q --src-tls-verify=false docker://HOST/" + REPO_TAG + " oci:DIR:1",
                  "umoci unpack --rootless --image DIR:1 BUNDLE",
                  command_line(["mksquashfs", "BUNDLE/rootfs", "OUT.sqfs", *flags, "-quiet", "-no-progress"])]
    notes = [
        (f"Image: Debian bookworm minbase + python3 (tests/images.py recipe {recipe().slug}, {rootfs_files} "
         f"files and directories), in {len(sizes)} gzip layers written by tests/oci.py (layout "
         f"{layout.path.name}): {mb(sum(u for _, u in sizes))} MB uncompressed (the layers' tar streams), "
         f"{mb(sum(c for c, _ in sizes))} MB compressed, pushed to /usr/bin/docker-registry on "
         f"127.0.0.1 (plain HTTP), started for this run."),
        (f"{rounds} round(s), after 1 warm-up round that is not counted; each round: a cold shimrun pull "
         "(SHIMRUN_CACHE a new empty directory), a warm one (the same cache, a new OUT.sif), then the floor's "
         "three commands one after the other (a new DIR and BUNDLE). Medians; the floor's total is the "
         "median of each round's sum of its three parts."),
        f"shimrun: `{shim_cmd}` (shim as installed by scripts/install.sh; the tree: {git_revision()}).",
        "Floor: " + "; ".join(f"`{c}`" for c in floor_cmds) + " (the mksquashfs flags are shim's own: "
        "shim.image.build.MKSQUASHFS_BASE and its default -comp zstd).",
        (f"Every measured command ran as the ordinary user {user.name} (uid {user.uid}), with TMPDIR and all "
         "files in a temporary directory under /var/tmp on the same disk; the registry and the push ran as "
         "root. Wall time from fork to exit (wait4); CPU: wait4's user + system time of the command and the "
         "children it reaped (mksquashfs for shimrun)."),
        (f"Peak RSS: 'largest' is wait4's ru_maxrss for the command, the peak RSS of the largest single process "
         f"of its tree (itself and the children it reaped), exact; 'shimrun' (its Python process) and "
         f"'mksquashfs' (its child) are the highest VmHWM read from /proc every {SAMPLE_S * 1e3:.0f} ms while "
         "it ran (growth in a process's last interval before exit is not seen). Maximum over the counted "
         "cold and warm runs. MB = 10^6 bytes."),
        f"Output: SIF {mb(sif_size)} MB (shimrun), squashfs {mb(sqfs_size)} MB (floor).",
        ("The steps table: one further cold + warm pair, not counted, with shimrun's stderr on a pty so "
         "that it prints its progress lines; each line's time since the start, as read here (a step's time "
         "is from its line to the next one)."),
        f"Before: {quiet}. After: {load_after}. Whole benchmark {time.monotonic() - started:.0f} s.",
        "Left in /var/tmp by this run: " + (", ".join(left) if left else "nothing") + ".",
    ]
    notes = [f"- {n}" for n in notes]
    sections = [("Pull and build of a 5-layer image from a local registry", main_rows), ("Targets", target_rows),
                ("Image", layer_rows), ("Where shimrun pull's time goes (progress lines)", phase_rows),
                ("Notes", notes)]
    out = write_results("pull", "shimrun pull from a registry vs skopeo + umoci + mksquashfs", sections)
    print(out.read_text())


if __name__ == "__main__":
    sys.exit(main())
