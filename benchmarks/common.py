"""Shared helpers for benchmarks: timing as a non-root user, statistics, machine facts, tables."""

from __future__ import annotations

import os
import platform
import pwd
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


def timed_runs(commands: dict[str, Sequence[str]], runs: int, warmup: int = 3,
               check: Callable[[str, subprocess.CompletedProcess], None] | None = None) -> list[Sample]:
    """Run each command `runs` times, interleaved so drift hits all alike; wall time per launch."""
    uid, gid, home, name = bench_user()
    env = {"HOME": home, "USER": name, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    ids = {"user": uid, "group": gid, "extra_groups": []} if os.getuid() == 0 else {}
    times: dict[str, list[float]] = {k: [] for k in commands}
    for i in range(warmup + runs):
        for key, cmd in commands.items():
            start = time.perf_counter()
            r = subprocess.run(cmd, env=env, cwd="/tmp", stdin=subprocess.DEVNULL, capture_output=True, check=False,
                               **ids)
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


def write_results(name: str, title: str, sections: list[tuple[str, list[str]]]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.md"
    lines = [f"# {title}", "", *[f"- {f}" for f in machine_facts()], ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", *body, ""]
    out.write_text("\n".join(lines))
    return out
