"""benchmarks/results/fuzz.md from the output of `pytest --hypothesis-show-statistics` (scripts/fuzz.sh)."""

from __future__ import annotations

import platform
import re
import sys
import time


def main(log_path: str, rc: str, seconds: str, seed: str) -> None:
    with open(log_path, errors="replace") as f:
        text = f.read()
    rows, total, failing = [], 0, 0
    sections = re.findall(r"^tests/test_fuzz\w*\.py::(\w+):\n(.*?)(?=^tests/test_fuzz\w*\.py::|\Z)", text, re.M | re.S)
    for name, body in sections:
        passing = sum(int(n) for n in re.findall(r"(\d+) passing", body))
        fails = sum(int(n) for n in re.findall(r"(\d+) failing", body))
        runtime = re.search(r"Typical runtimes: ([^\n]+)", body)
        rows.append(f"| {name.removeprefix('test_')} | {passing + fails} | {fails} | "
                    f"{runtime.group(1) if runtime else '?'} |")
        total += passing + fails
        failing += fails
    tracebacks = text.count("Traceback")
    summary = re.findall(r"^=*\s*(\d+ (?:passed|failed).*?)\s*=*$", text, re.M)
    print("# Fuzzing (hypothesis, tests/test_fuzz.py and tests/test_fuzz_oci.py, profile \"fuzz\")\n")
    print(f"- date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    print(f"- host: {platform.node()}, python {platform.python_version()}")
    print(f"- pytest exit status: {rc}; wall time: {seconds} s; seed {seed} (FUZZ_SEED={seed} repeats it)")
    print("\n| target | cases | failing | typical runtime per case |\n|---|---:|---:|---|")
    print("\n".join(rows))
    print(f"| **all** | **{total}** | **{failing}** | |")
    print(f"\nA failing case is any exception other than shim's own error (what a user would see as a "
          f"traceback or exit 70) or a case over the 5 s deadline (a hang). Tracebacks in the log: {tracebacks}. "
          f"pytest: {summary[-1] if summary else 'no summary'}.")


if __name__ == "__main__":
    main(*sys.argv[1:5])
