"""The CWL conformance table (scripts/cwl_conformance.sh writes the raw results, this the table).

Reads the two JUnit files cwltest wrote (RAW/shim.xml: `cwltool --singularity` through shim's
compat commands; RAW/baseline.xml: `cwltool --no-container`), RAW/meta.txt (date, versions,
suite commit) and the notes of investigated failures (a TOML table: test id -> reason), and
writes a Markdown table: totals first, then one row per test with its id, tags, whether it ran
in a container, both results and, for each failure through shim, its class:

    also fails without containers        the baseline fails it too (not a container question)
    needs Docker-only feature (...)      dockerFile / dockerImport / dockerLoad /
                                         dockerOutputDirectory: cwltool has no Singularity path
    network                              needs a host this machine cannot reach
    shim: <reason>                       shim's: the reason from the notes, or "not yet
                                         investigated" with the engine's last error line

A test is "container-only" when the baseline refuses it because its DockerRequirement sits
under `requirements` (cwltool: "--no-container, but this CommandLineTool has DockerRequirement").
"""

from __future__ import annotations

import argparse
import re
import sys
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

NEEDS_DOCKER = "but this CommandLineTool has DockerRequirement under 'requirements'"
DOCKER_ONLY = ("dockerFile", "dockerImport", "dockerLoad", "dockerOutputDirectory")
NETWORK_HINTS = ("Temporary failure in name resolution", "Network is unreachable", "urlopen error")


@dataclass(frozen=True)
class Case:
    id: str
    tags: str
    status: str       # pass | FAIL | timeout | unsupported
    message: str
    stderr: str
    stdout: str


def failed_numbers(log: Path) -> dict[int, str]:
    """Test number -> FAIL/timeout from cwltest's log: its JUnit file drops a failure that has no
    message (a should_fail test that succeeded), the log does not."""
    found: dict[int, str] = {}
    if log.exists():
        for m in re.finditer(r"^Test (\d+) (failed|timed out)", log.read_text(errors="replace"), re.M):
            found[int(m.group(1))] = "timeout" if m.group(2) == "timed out" else "FAIL"
    return found


def read_junit(path: Path) -> dict[str, Case]:
    """cwltest's JUnit file (testcase `file`: the test id, `class`: its tags, `url`: ...#NUMBER),
    with the failures its log (NAME.log beside it) names."""
    if not path.exists():
        return {}
    from_log = failed_numbers(path.with_suffix(".log"))
    cases = {}
    for tc in ET.parse(path).getroot().iter("testcase"):
        failure, skipped = tc.find("failure"), tc.find("skipped")
        message = ""
        if failure is not None:
            message = failure.get("message") or failure.text or ""
            status = "timeout" if "timed out" in message else "FAIL"
        elif skipped is not None:
            status = "unsupported"
        else:
            status = "pass"
        number = int((tc.get("url") or "#0").rsplit("#", 1)[-1] or 0)
        if status == "pass" and number in from_log:
            status, message = from_log[number], "failed (cwltest's log; no message in its JUnit file)"
        err, out = tc.findtext("system-err") or "", tc.findtext("system-out") or ""
        cid = tc.get("file") or tc.get("name") or "?"
        cases[cid] = Case(cid, tc.get("class") or "", status, message, err, out)
    return cases


def read_meta(path: Path) -> dict[str, str]:
    meta: dict[str, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                meta[key.strip()] = value.strip()  # the last run's value wins
    return meta


def in_container(case: Case | None) -> bool:
    return case is not None and ("singularity" in case.stderr.lower() or "with Singularity" in case.stderr)


def _last_error(text: str) -> str:
    # cwltool's colours: ESC is dropped from the XML (not an XML character), "[1;30m" stays
    lines = [re.sub(r"\x1b?\[[0-9;]*m", "", ln).strip() for ln in text.splitlines()]
    picked = [ln for ln in lines if ln and ("ERROR" in ln or "rror" in ln or "FATAL" in ln or "shimrun" in ln)]
    line = (picked or [ln for ln in lines if ln] or [""])[-1]
    return line[:160]


def classify(shim: Case, base: Case | None, notes: dict[str, str]) -> str:
    if shim.id in notes:
        return notes[shim.id]
    if base is not None and base.status != "pass" and NEEDS_DOCKER not in base.stderr:
        return "also fails without containers"
    found = [f for f in DOCKER_ONLY if f in shim.stderr]
    if found:
        return f"needs Docker-only feature ({', '.join(found)})"
    if any(h in shim.stderr for h in NETWORK_HINTS):
        return "network"
    return f"shim: not yet investigated ({_last_error(shim.stderr) or shim.message[:120]})"


def base_status(base: Case | None) -> str:
    if base is None:
        return "-"
    if NEEDS_DOCKER in base.stderr:
        return "needs container"
    return base.status


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(shim: dict[str, Case], base: dict[str, Case], notes: dict[str, str], meta: dict[str, str]) -> str:
    ids = list(shim) or list(base)
    rows, counts = [], {"shim": {}, "base": {}}
    regressions, container_only_shim = [], []
    for cid in ids:
        s, b = shim.get(cid), base.get(cid)
        s_status = s.status if s else "-"
        b_status = base_status(b)
        counts["shim"][s_status] = counts["shim"].get(s_status, 0) + 1
        counts["base"][b_status] = counts["base"].get(b_status, 0) + 1
        reason = classify(s, b, notes) if s and s.status != "pass" else ""
        if s and s.status != "pass" and b_status == "pass":
            regressions.append(cid)
        if s and s.status != "pass" and b_status == "needs container" and reason.startswith("shim"):
            container_only_shim.append(cid)
        tags = (s or b).tags if (s or b) else ""
        cont = "yes" if in_container(s) else "no"
        rows.append(f"| `{cid}` | {_cell(tags)} | {cont} | {b_status} | {s_status} | {_cell(reason)} |")

    def fmt(c: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: -kv[1]))

    ran = sum(1 for cid in ids if in_container(shim.get(cid)))
    head = [
        "# CWL v1.2 conformance through shim",
        "",
        "Written by `scripts/cwl_conformance.sh` (table: `scripts/cwl_report.py`; raw JUnit XML and logs in",
        "`benchmarks/results/cwl_raw/`, not committed). `cwltest` runs `cwltool --singularity` with only shim's",
        "`apptainer`/`singularity` (shim/compat) on PATH, as an ordinary user, then `cwltool --no-container`",
        "as the baseline, on the same machine.",
        "",
        "**Images are offline stand-ins** (no Docker Hub here; tests/cwl_images.py): `debian:stable-slim` is",
        "Debian 12 minbase, `python:3-slim` Debian 12 minbase + python3 (`/usr/local/bin/python`), `bash:4.4`",
        "Debian 12 minbase with bash also at `/usr/local/bin/bash` and the image's `docker-entrypoint.sh`,",
        "`alpine:latest` a static busybox root; each with the runscript and Env script `singularity pull`",
        "writes, placed in cwltool's cache (`CWL_SINGULARITY_CACHE`) under the pulled names.",
        "",
        (f"- date: {meta.get('date', '?')}; suite: common-workflow-language/cwl-v1.2 at"
         f" `{meta.get('suite_commit', '?')}`"),
        (f"- shim {meta.get('shim', '?')} (compat `singularity --version`: {meta.get('apptainer_compat', '?')});"
         f" cwltool {meta.get('cwltool', '?')}; cwltest {meta.get('cwltest', '?')}; kernel {meta.get('kernel', '?')}"),
        (f"- cwltest -j{meta.get('jobs', '?')}, per-test timeout {meta.get('timeout', '?')} s, as user"
         f" `{meta.get('user', '?')}`; {meta.get('runs', '')}"),
        "- the baseline's PATH has `python` (-> /usr/bin/python3; the python:3-slim tools call it, Debian's host",
        "  has only python3); nothing else differs between the two passes but `--singularity`/`--no-container`",
        "",
        "## Totals",
        "",
        (f"- tests: {len(ids)}; through shim: {fmt(counts['shim'])}; of them in a container (cwltool's Singularity"
         f" path, through shim): {ran}"),
        (f"- without containers: {fmt(counts['base'])} (\"needs container\": the baseline refuses a tool whose"
         " DockerRequirement is under `requirements`)"),
        f"- pass without containers but fail through shim: **{len(regressions)}**"
        + (f" ({', '.join(f'`{r}`' for r in regressions)})" if regressions else ""),
        f"- container-only tests failing for a reason of shim's: **{len(container_only_shim)}**"
        + (f" ({', '.join(f'`{r}`' for r in container_only_shim)})" if container_only_shim else ""),
        "",
        "## Per test",
        "",
        "| id | tags | container | no-container | shim | reason (shim failures) |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join(head + rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--raw", type=Path, required=True, help="directory with shim.xml, baseline.xml, meta.txt")
    ap.add_argument("--suite", type=Path, help="the extracted suite (unused: ids and tags come from the XML)")
    ap.add_argument("--notes", type=Path, help="TOML: [reasons] test-id = \"reason\"")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    shim, base = read_junit(args.raw / "shim.xml"), read_junit(args.raw / "baseline.xml")
    if not shim and not base:
        print(f"cwl_report.py: no shim.xml or baseline.xml in {args.raw}: run scripts/cwl_conformance.sh first",
              file=sys.stderr)
        return 66
    notes: dict[str, str] = {}
    if args.notes and args.notes.exists():
        notes = {str(k): str(v) for k, v in tomllib.loads(args.notes.read_text()).get("reasons", {}).items()}
    meta = read_meta(args.raw / "meta.txt")
    runs = args.raw / "runs.txt"
    if runs.exists():  # "NAME rc=N seconds=S" per pass, appended by each run: the last of each name
        last = {line.split()[0]: line for line in runs.read_text().splitlines() if line.strip()}
        meta["runs"] = "; ".join(last.values())
    args.out.write_text(render(shim, base, notes, meta))
    print(f"cwl_report.py: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
