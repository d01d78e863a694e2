"""Kill-at-random stress: SIGKILL one of shim's processes at a random moment of a launch, again and
again, and count what is left behind afterwards.

Targets (each a real process of a real launch, run as an ordinary user):
  frontend  the shimrun process of a single launch, from its first instant (the native front-end,
            then the Python planner in the same process, then the app it becomes);
  squashfuse the squashfuse_ll serving a single launch;
  extract   the shimrun process while it extracts the image (SHIMRUN_NO_FUSE=1);
  holder    the process holding a shared container (SHIMRUN_SHARE=1, three ranks);
  rank      one joining rank of a shared container;
  kept-holder, kept-squashfuse, kept-launch
            with a kept mount (SHIMRUN_SERVE=kept, SHIMRUN_KEPT_IDLE=1; two launches, the second
            joining the first's mount at a random moment): its holder, the squashfuse it holds,
            or one of the launches.
After each kill: every process of the launch must be gone within 10 s (counted, then killed; a
kept mount's holder within its idle second after its last app), no FUSE mount may remain, the
staging directory must hold only its README, no partial extraction of a dead process may remain
after the next launch, no shimrun socket (a shared container's, a kept mount's) may stay bound,
and a launch right after (per-launch mount, extraction, kept mount) must work.

    /opt/shim/venv/bin/python scripts/kill_stress.py [KILLS] [--seed N] [--report benchmarks/results/kill_stress.md]

Run as root (the launches run as the user SHIM_TEST_USER, default shimtest), after
scripts/install.sh. The suite runs a few kills of each target (tests/test_kill_stress.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from shim.record.runtime_env import KEPT_SOCKET

TARGETS = ("frontend", "squashfuse", "extract", "holder", "rank", "kept-holder", "kept-squashfuse", "kept-launch")
KEPT_HOLDER = KEPT_SOCKET  # csrc/kepthold.c names its process as its socket
KEPT_ENV = {"SHIMRUN_SERVE": "kept", "SHIMRUN_KEPT_IDLE": "1"}
SHIMRUN = os.environ.get("SHIMRUN") or shutil.which("shimrun") or "/usr/local/bin/shimrun"


@dataclass
class Tally:
    kills: Counter = field(default_factory=Counter)      # target -> kills done
    missed: Counter = field(default_factory=Counter)     # target -> the process was gone before the kill
    leftovers: Counter = field(default_factory=Counter)  # what -> count
    next_launch_failed: int = 0

    def clean(self) -> bool:
        return not self.leftovers and not self.next_launch_failed


@dataclass(frozen=True)
class Who:
    uid: int
    gid: int
    home: str


def _user(name: str) -> Who:
    pw = pwd.getpwnam(name)
    return Who(pw.pw_uid, pw.pw_gid, pw.pw_dir)


def _procs(uid: int) -> dict[int, str]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    out[int(entry.name)] = (entry / "comm").read_text().strip()
            except OSError:
                continue
    return out


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _fuse_mounts() -> int:
    return sum(1 for line in Path("/proc/self/mountinfo").read_text().splitlines() if " - fuse" in line)


def _shim_sockets(uid: int) -> int:
    """The node's shared-container and kept-mount sockets of `uid` (another user's, of a concurrent
    run, do not count)."""
    names = (f"@shimrun/{uid}/", f"@{KEPT_SOCKET}/{uid}/")
    return sum(1 for line in Path("/proc/net/unix").read_text().splitlines() if any(n in line for n in names))


def _stage_dir() -> Path:
    out = subprocess.run([sys.executable, "-c", "import shim, os; print(os.path.dirname(shim.__file__))"],
                         capture_output=True, text=True, check=True, cwd="/")
    return Path(out.stdout.strip()) / "stage"


class Stress:
    def __init__(self, image: Path, who: Who, work: Path, rng: random.Random) -> None:
        self.image, self.who, self.work, self.rng = image, who, work, rng
        self.cache = work / "cache"
        self.stage = _stage_dir()
        self.tally = Tally()

    def _env(self, **extra: str) -> dict[str, str]:
        return {"HOME": self.who.home, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                "SHIMRUN_CACHE": str(self.cache), **extra}

    def _start(self, args: list[str], **extra: str) -> subprocess.Popen:
        return subprocess.Popen([SHIMRUN, *args], cwd=self.work, env=self._env(**extra), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, user=self.who.uid,
                                group=self.who.gid, extra_groups=[], start_new_session=True)

    def _kill(self, target: str, pid: int | None) -> None:
        self.tally.kills[target] += 1
        if pid is None:
            self.tally.missed[target] += 1
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            self.tally.missed[target] += 1

    def _wait_for(self, find, timeout: float) -> int | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            pid = find()
            if pid:
                return pid
            time.sleep(0.002)
        return None

    def one(self, target: str) -> None:
        app = ["/bin/busybox", "sh", "-c", "sleep 0.6"]
        procs: list[subprocess.Popen] = []
        if target in ("frontend", "squashfuse", "extract"):
            extra = {"SHIMRUN_NO_FUSE": "1"} if target == "extract" else {}
            if target == "extract" and self.rng.random() < 0.7:
                shutil.rmtree(self.cache / "rootfs", ignore_errors=True)  # make it extract again
            p = self._start([str(self.image), *app], **extra)
            procs.append(p)
            if target == "squashfuse":
                pid = self._wait_for(lambda: next((c for c in _children(p.pid) if self._comm(c) == "squashfuse_ll"),
                                                  None), 5)
                time.sleep(self.rng.uniform(0, 0.3))
            else:
                time.sleep(self.rng.uniform(0, 0.5))
                pid = p.pid
            self._kill(target, pid)
        elif target.startswith("kept-"):
            procs = self._kept(target, app)
        else:
            share = {"SHIMRUN_SHARE": f"stress{self.rng.randrange(1 << 30)}"}
            procs = [self._start([str(self.image), *app], **share) for _ in range(3)]
            time.sleep(self.rng.uniform(0, 0.4))
            ranks = {p.pid for p in procs}
            if target == "holder":
                # the native holder: a shimrun process that is none of the ranks
                pid = next((q for q, comm in _procs(self.who.uid).items() if q not in ranks and comm == "shimrun"),
                           None)
            else:
                pid = self.rng.choice(procs).pid
            self._kill(target, pid)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._check()

    def _kept(self, target: str, app: list[str]) -> list[subprocess.Popen]:
        """Two launches of a kept mount, the second at a random moment of the first; one kill."""
        procs = [self._start([str(self.image), *app], **KEPT_ENV)]
        time.sleep(self.rng.uniform(0, 0.3))
        procs.append(self._start([str(self.image), *app], **KEPT_ENV))
        if target == "kept-launch":
            time.sleep(self.rng.uniform(0, 0.4))
            self._kill(target, self.rng.choice(procs).pid)
            return procs
        holder = self._wait_for(lambda: next((q for q, comm in _procs(self.who.uid).items() if comm == KEPT_HOLDER),
                                             None), 5)
        if target == "kept-squashfuse" and holder:
            pid = self._wait_for(lambda: next((c for c in _children(holder) if self._comm(c) == "squashfuse_ll"),
                                              None), 5)
        else:
            pid = holder
        time.sleep(self.rng.uniform(0, 0.3))
        self._kill(target, pid)
        return procs

    def _comm(self, pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return ""

    def _check(self) -> None:
        end = time.monotonic() + 10
        while time.monotonic() < end and (_procs(self.who.uid) or _shim_sockets(self.who.uid)):
            time.sleep(0.05)
        left = _procs(self.who.uid)
        if left:
            self.tally.leftovers["processes"] += len(left)
            for pid in left:
                with_suppress(os.kill, pid, signal.SIGKILL)
        if _shim_sockets(self.who.uid):
            self.tally.leftovers["sockets"] += _shim_sockets(self.who.uid)
        mounts = _fuse_mounts() - self.fuse_before
        if mounts > 0:
            self.tally.leftovers["mounts"] += mounts
        if sorted(os.listdir(self.stage)) != ["README"]:
            self.tally.leftovers["stage entries"] += 1

    def next_launch(self) -> None:
        for extra in ({}, {"SHIMRUN_NO_FUSE": "1"}, {**KEPT_ENV, "SHIMRUN_KEPT_IDLE": "0"}):
            r = subprocess.run([SHIMRUN, str(self.image), "/bin/busybox", "true"], check=False, cwd=self.work,
                               env=self._env(**extra), capture_output=True, text=True, user=self.who.uid,
                               group=self.who.gid, extra_groups=[], timeout=60)
            if r.returncode != 0:
                self.tally.next_launch_failed += 1
        rootfs = self.cache / "rootfs"
        partials = [n for n in os.listdir(rootfs) if ".partial." in n] if rootfs.is_dir() else []
        if partials:
            self.tally.leftovers["partial extractions"] += len(partials)

    def run(self, kills: int) -> Tally:
        self.fuse_before = _fuse_mounts()
        order = [TARGETS[i % len(TARGETS)] for i in range(kills)]
        self.rng.shuffle(order)
        for target in order:
            self.one(target)
        self.next_launch()
        return self.tally


def with_suppress(fn, *args) -> None:
    with contextlib.suppress(OSError):
        fn(*args)


def stress(kills: int, image: Path, user: str, seed: int) -> Tally:
    who = _user(user)
    work = Path(tempfile.mkdtemp(prefix="shim-kill-stress.", dir="/var/tmp"))
    try:
        work.chmod(0o755)
        copy = work / "image.sif"
        shutil.copyfile(image, copy)
        copy.chmod(0o644)
        os.chown(work, who.uid, who.gid)
        return Stress(copy, who, work, random.Random(seed)).run(kills)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(tally: Tally, seed: int, seconds: float) -> str:
    rows = [f"| {t} | {tally.kills[t]} | {tally.missed[t]} |" for t in TARGETS]
    left = ", ".join(f"{k}: {v}" for k, v in sorted(tally.leftovers.items())) or "none"
    return "\n".join([
        "# Kill-at-random stress (scripts/kill_stress.py)", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}; seed {seed}; {seconds:.0f} s", "",
        "| target | SIGKILLs | already gone when the kill came |", "|---|---:|---:|", *rows,
        f"| **all** | **{sum(tally.kills.values())}** | {sum(tally.missed.values())} |", "",
        (f"Left behind after the kills: {left}. Launches right after (FUSE, extraction, kept mount) that failed: "
         f"{tally.next_launch_failed}."), ""])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kills", nargs="?", type=int, default=200)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--image", default=str(Path(__file__).resolve().parents[2] / "shared" / "sif-golden" /
                                           "apptainer" / "busybox_amd64.sif"))
    ap.add_argument("--report", default=str(Path(__file__).resolve().parents[1] / "benchmarks" / "results" /
                                            "kill_stress.md"))
    args = ap.parse_args()
    start = time.monotonic()
    tally = stress(args.kills, Path(args.image), os.environ.get("SHIM_TEST_USER", "shimtest"), args.seed)
    text = report(tally, args.seed, time.monotonic() - start)
    Path(args.report).write_text(text)
    print(text)
    print(json.dumps({"clean": tally.clean()}))
    return 0 if tally.clean() else 1


if __name__ == "__main__":
    sys.exit(main())
