"""Shared helpers for benchmarks: timing as a non-root user, statistics, machine facts, tables."""

from __future__ import annotations

import contextlib
import os
import platform
import pwd
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "tests"))


@dataclass(frozen=True)
class Sample:
    name: str
    seconds: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def bench_user() -> tuple[int, int, str, str]:
    """Benchmarks run as an ordinary user, like the tests (created when running as root)."""
    if os.getuid() != 0:
        pw = pwd.getpwuid(os.getuid())
    else:
        name = os.environ.get("SHIM_TEST_USER", "shimtest")
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
            pw = pwd.getpwnam(name)
    return pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_name


@dataclass(frozen=True)
class BenchUser:
    """The ordinary user of bench_user(), with what tests/slurm.py's run()/srun() need (uid, gid)."""

    uid: int
    gid: int
    home: str
    name: str

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A login-like environment (USER is needed by ch-run)."""
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name, "PATH": "/usr/local/bin:/usr/bin:/bin",
                "LANG": "C.UTF-8", **(extra or {})}


def bench_account() -> BenchUser:
    return BenchUser(*bench_user())


def work_dir() -> Path:
    """Where benchmarks keep their images and configuration (SHIM_BENCH_DIR, world-readable)."""
    work = Path(os.environ.get("SHIM_BENCH_DIR", "/var/tmp/shim-bench"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    return work


def shimrun_path() -> str:
    """$SHIMRUN (an install under another SHIM_PREFIX, as the tests take it), else the one on PATH."""
    return os.environ.get("SHIMRUN") or shutil.which("shimrun") or "/opt/shim/venv/bin/shimrun"


def argv_int(index: int, default: int) -> int:
    """sys.argv[index] as an int, else `default` (the benchmarks' optional RUNS argument)."""
    return int(sys.argv[index]) if len(sys.argv) > index else default


def fmt_ms(seconds: Sequence[float]) -> tuple[str, str]:
    """(median, min–max) of `seconds`, in ms with one decimal; ("—", "—") for none."""
    if not seconds:
        return "—", "—"
    return f"{statistics.median(seconds) * 1e3:.1f}", f"{min(seconds) * 1e3:.1f}–{max(seconds) * 1e3:.1f}"


def target_cell(value: float, limit: float, unit: str = "×") -> str:
    """'met (X ≤ L)' or 'missed by F× (X > L)' for an upper bound `limit`."""
    if value <= limit:
        return f"met ({value:.2f}{unit} ≤ {limit:g}{unit})"
    return f"missed by {value / limit:.1f}× ({value:.2f}{unit} > {limit:g}{unit})"


def load_note() -> str:
    """The load average now: this machine may be shared, so say how busy it was."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min)"


def cpu_busy(window: float = 2.0) -> float:
    """Fraction of all CPUs' time spent busy (not idle or iowait) over the next `window` seconds."""
    def sample() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]

    total0, idle0 = sample()
    time.sleep(window)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_quiet(busy_below: float = 0.15, timeout: float = 120.0) -> str:
    """Wait (at most `timeout` s) until the CPUs are mostly idle (busy < `busy_below` over 2 s): this
    machine may be shared, and a previous benchmark may still be winding down. A note for the table
    (the load average is given too, but it decays slowly after our own bursts of 64 tasks)."""
    start = time.monotonic()
    busy = cpu_busy()
    while busy >= busy_below and time.monotonic() - start < timeout:
        busy = cpu_busy()
    waited = time.monotonic() - start
    state = "quiet" if busy < busy_below else f"still busy after {waited:.0f} s"
    return f"CPUs {busy:.0%} busy over 2 s before the start ({state}); {load_note()}"


def git_revision() -> str:
    r = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True, text=True,
                       check=False)
    return r.stdout.strip() or "unknown"


def command_line(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(str(a)) for a in argv)


def timed_runs(commands: dict[str, Sequence[str]], runs: int, warmup: int = 3,
               check: Callable[[str, subprocess.CompletedProcess], None] | None = None,
               envs: dict[str, dict[str, str]] | None = None) -> list[Sample]:
    """Run each command `runs` times, interleaved so drift hits all alike; wall time per launch.
    `envs`: more environment for some commands (by name)."""
    uid, gid, home, name = bench_user()
    base = {"HOME": home, "USER": name, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    env_of = {key: {**base, **(envs or {}).get(key, {})} for key in commands}
    ids = {"user": uid, "group": gid, "extra_groups": []} if os.getuid() == 0 else {}
    times: dict[str, list[float]] = {k: [] for k in commands}
    for i in range(warmup + runs):
        for key, cmd in commands.items():
            start = time.perf_counter()
            r = subprocess.run(cmd, env=env_of[key], cwd="/tmp", stdin=subprocess.DEVNULL, capture_output=True,
                               check=False, **ids)
            took = time.perf_counter() - start
            if r.returncode != 0:
                raise SystemExit(f"benchmark command failed ({key}): {' '.join(cmd)}: {r.stderr.decode()[-300:]}")
            if i >= warmup:
                times[key].append(took)
    return [Sample(k, tuple(v)) for k, v in times.items()]


def machine_facts() -> list[str]:
    import psutil

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}", f"host: {platform.node()}",
            f"kernel: {platform.release()}", f"cpu: {cpu} ({os.cpu_count()} logical CPUs)",
            f"memory: {psutil.virtual_memory().total / 2**30:.1f} GiB", f"python: {platform.python_version()}"]


def table(samples: list[Sample], baseline: str, unit: float = 1e3, unit_name: str = "ms") -> list[str]:
    base = next(s for s in samples if s.name == baseline).median
    rows = [f"| case | median ({unit_name}) | min–max ({unit_name}) | ratio to {baseline} |", "|---|---:|---:|---:|"]
    for s in samples:
        rows.append(f"| {s.name} | {s.median * unit:.2f} | {min(s.seconds) * unit:.2f}–{max(s.seconds) * unit:.2f} "
                    f"| {s.median / base:.2f}× |")
    return rows


def write_results(name: str, title: str, sections: list[tuple[str, list[str]]], results: Path = RESULTS) -> Path:
    """results/NAME.md (`results`: another directory, e.g. a test's)."""
    results.mkdir(parents=True, exist_ok=True)
    out = results / f"{name}.md"
    lines = [f"# {title}", "", *[f"- {f}" for f in machine_facts()], ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", *body, ""]
    out.write_text("\n".join(lines))
    return out


def remove_join_leftovers(tag: str) -> None:
    """`ch-run --join` keeps its semaphore and shared memory in /dev/shm (sem.ch-run_sem-TAG ...);
    a failed run leaves them behind and they would poison the next run with the same tag."""
    for p in Path("/dev/shm").glob(f"*ch-run_*-{tag}"):
        with contextlib.suppress(OSError):
            p.unlink()
