"""The ways of serving an image's files that benchmarks/bench_io.py and io_nodes.py compare, and
how to find out which of shim's serve modes the installed build has.

A serve mode is asked for with `shimrun --serve MODE` when the build's `exec --help` lists the
option, else with SHIMRUN_SERVE=MODE (a build with only the environment variable). Whether the
build really serves the image that way is then checked by a probe launch, not taken from the
option's acceptance: the container's "/" must be what the mode promises (a FUSE mount, or a
directory for an unpacked copy), and a kept mount must outlive the launch. A mode whose probe
fails is reported as "not available in this build", so the benchmark runs on any build.

Add a mode: one `ServeMode` row in SERVE_MODES (or name it in SHIM_BENCH_SERVE / --serve-modes:
an unknown name is probed with no promise but that the launch works).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from common import BenchUser

KERNEL = "kernel squashfs (loop + chroot)"


class ServeMode(NamedTuple):
    name: str
    root: str | None        # the container's "/" file system kind: "fuse", "dir" or None (not checked)
    outlives: bool | None   # a squashfuse of the user still alive after the launch (kept), None: not checked
    meaning: str
    env: tuple[tuple[str, str], ...] = ()   # more environment for its launches


# A kept mount idles out after 2 s here (the site's default is minutes), so that a cold run can
# start without one; a warm run follows its cold run at once and finds it.
KEPT_IDLE = 2
SERVE_MODES: dict[str, ServeMode] = {m.name: m for m in (
    ServeMode("mount", "fuse", False, "today's per-launch squashfuse mount"),
    ServeMode("unpack", "dir", None, "the node-local unpacked copy (unpacked once, then a directory)"),
    ServeMode("kept", "fuse", True, "a kept squashfuse mount joined by each launch",
              (("SHIMRUN_KEPT_IDLE", str(KEPT_IDLE)),)),
    # MODE+stage: the same, from the image's copy staged to the node first (SHIMRUN_STAGE=always:
    # what `auto` does for an image on a network file system)
    ServeMode("unpack+stage", "dir", None, "unpacked from a copy staged to the node in one read",
              (("SHIMRUN_STAGE", "always"),)),
    ServeMode("mount+stage", "fuse", False, "a per-launch mount of the copy staged to the node",
              (("SHIMRUN_STAGE", "always"),)),
)}


class Way(NamedTuple):
    """One way to run a workload: argv before the workload's own words, more environment, and
    whether the row is available (else `why`)."""

    name: str
    prefix: tuple[str, ...]
    env: dict[str, str]
    why: str = ""           # "" = available; else why not (shown in the table)
    served: str = ""        # what the probe saw ("fuse", "dir ext4", ...)
    as_root: bool = False   # started by root (chroot --userspec drops to the user itself)

    @property
    def available(self) -> bool:
        return not self.why


class Run(NamedTuple):
    seconds: float
    rc: int
    stdout: str
    stderr: str


def run_as(user: BenchUser, argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 900,
           as_root: bool = False) -> Run:
    """`argv` as the ordinary user (root runs it with the user's ids unless `as_root`), wall time."""
    ids = {"user": user.uid, "group": user.gid, "extra_groups": []} if os.getuid() == 0 and not as_root else {}
    start = time.perf_counter()
    try:
        r = subprocess.run(list(argv), env=user.env(env), cwd="/tmp", stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, errors="replace", timeout=timeout, check=False, **ids)
    except subprocess.TimeoutExpired:
        return Run(time.perf_counter() - start, 124, "", f"timed out after {timeout:.0f} s")
    return Run(time.perf_counter() - start, r.returncode, r.stdout, r.stderr)


def user_processes(uid: int, names: Sequence[str] = ()) -> list[int]:
    """Live processes of `uid` (whose comm starts with one of `names`, if given)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            stat = (entry / "stat").read_text()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            if stat.rpartition(")")[2].split()[0] != "Z" and (not names or comm.startswith(tuple(names))):
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def wait_no_processes(uid: int, timeout: float = 20.0) -> bool:
    """Until the user has no process left (a kept mount's holder idles out): a cold run starts bare."""
    deadline = time.monotonic() + timeout
    while user_processes(uid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not user_processes(uid)


def root_kind(mountinfo: str) -> str:
    """The file system type of the last mount at "/" in a /proc/self/mountinfo text: "fuse" for any
    FUSE mount (fuse.squashfuse_ll...), else "dir <fstype>" (a directory bound there)."""
    kind = ""
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == "/" and " - " in line:
            fstype = line.split(" - ", 1)[1].split()[0]
            kind = "fuse" if fstype == "fuse" or fstype.startswith("fuse.") else f"dir {fstype}"
    return kind


def shimrun_knows_serve(shimrun: str) -> bool:
    r = subprocess.run([shimrun, "exec", "--help"], capture_output=True, text=True, check=False)
    return "--serve" in r.stdout


def serve_way(shimrun: str, mode: ServeMode, image: Path, user: BenchUser, how: str,
              extra_env: dict[str, str]) -> Way:
    """The row `shimrun --serve MODE IMAGE`, probed: available only if a launch runs and serves the
    image as the mode promises. `how`: "option" (--serve MODE), "env" (SHIMRUN_SERVE=MODE) or
    "default" (neither: a build before --serve, whose only way is the per-launch mount). The probe
    also warms the mode up (an unpack happens here: the timed cold runs find the copy made)."""
    name = f"shimrun --serve {mode.name} IMG{image.suffix}"
    serve = mode.name.split("+")[0]  # MODE+stage: --serve MODE, staged by its environment
    prefix = (shimrun, "--serve", serve, str(image)) if how == "option" else (shimrun, str(image))
    env = {**extra_env, **dict(mode.env)}
    if how == "env":
        env["SHIMRUN_SERVE"] = serve
    probe = run_as(user, [*prefix, "cat", "/proc/self/mountinfo"], env)
    if probe.rc != 0:
        last = (probe.stderr.strip().splitlines() or [""])[-1][:160]
        return Way(name, prefix, env, f"not available in this build (probe exit {probe.rc}: {last})")
    served = root_kind(probe.stdout)
    # A per-launch squashfuse may take a moment to exit after its unmount: alive 1 s later = kept.
    time.sleep(1.0)
    outlives = bool(user_processes(user.uid, ("squashfuse",)))
    note = {"env": " (SHIMRUN_SERVE)", "default": " (the build has no --serve: its default)"}.get(how, "")
    if mode.root is not None and not served.startswith(mode.root):
        return Way(name, prefix, env, f"not available in this build (served as {served or '?'}{note})", served)
    if mode.outlives is not None and outlives != mode.outlives:
        said = "a squashfuse outlives the launch" if outlives else "nothing outlives the launch"
        return Way(name, prefix, env, f"not available in this build ({said}{note})", served)
    return Way(name, prefix, env, "", served + (", kept after the launch" if outlives else "") + note)


def serve_ways(shimrun: str, modes: Sequence[str], image: Path, user: BenchUser,
               extra_env: dict[str, str] | None = None) -> list[Way]:
    """A probed row per serve mode, in the order given."""
    option = shimrun_knows_serve(shimrun)
    ways = []
    for name in modes:
        mode = SERVE_MODES.get(name, ServeMode(name, None, None, "(a mode this benchmark does not know)"))
        how = "option" if option else "default" if name == "mount" else "env"
        wait_no_processes(user.uid)  # a kept mount of the previous probe must not pass for this one's
        ways.append(serve_way(shimrun, mode, image, user, how, dict(extra_env or {})))
    return ways


def squashfs_offset(shimrun: str, sif: Path) -> int:
    """The primary partition's offset in a SIF (`shimrun inspect --json`); 0 for a bare squashfs."""
    import json

    if sif.suffix != ".sif":
        return 0
    r = subprocess.run([shimrun, "inspect", str(sif), "--json"], capture_output=True, text=True, check=True)
    doc = json.loads(r.stdout)
    primary = next(d for d in doc["descriptors"] if d["id"] == doc["primary_partition"])
    return int(primary["offset"])


@contextlib.contextmanager
def kernel_mount(image: Path, offset: int) -> Iterator[Path]:
    """The image's squashfs mounted by the kernel (root: loop, read-only) for the whole run, the
    reference a setuid runtime gets, with the host's /dev and a /proc in it as the containers have;
    unmounted and removed afterwards, whatever happens."""
    mnt = Path(tempfile.mkdtemp(prefix="shim-bench-io-kernel."))
    mnt.chmod(0o755)
    steps = ((["mount", "-t", "squashfs", "-o", f"loop,ro,offset={offset}", str(image), str(mnt)], mnt),
             (["mount", "--bind", "/dev", str(mnt / "dev")], mnt / "dev"),
             (["mount", "-t", "proc", "proc", str(mnt / "proc")], mnt / "proc"))
    mounted: list[Path] = []
    try:
        for argv, where in steps:
            subprocess.run(argv, check=True, capture_output=True, text=True)
            mounted.append(where)
        yield mnt
    finally:
        for where in reversed(mounted):
            subprocess.run(["umount", str(where)], check=False, capture_output=True)
        with contextlib.suppress(OSError):
            mnt.rmdir()


def kernel_way(mnt: Path, user: BenchUser) -> Way:
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"
    return Way(KERNEL, (chroot, f"--userspec={user.uid}:{user.gid}", str(mnt)), {}, "", "squashfs (kernel)",
               as_root=True)


def drop_caches() -> None:
    """Cold: write back, then drop the page cache, dentries and inodes (root only)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")
