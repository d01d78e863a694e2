"""scripts/cwl_report.py, the CWL conformance table, on JUnit files and logs shaped as cwltest 2.7
writes them: every failure through shim gets a class, none is lost, the totals say what counts."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cwl_report.py"
_spec = importlib.util.spec_from_file_location("cwl_report", SCRIPT)
assert _spec is not None and _spec.loader is not None
cwl_report = importlib.util.module_from_spec(_spec)
sys.modules["cwl_report"] = cwl_report  # its dataclasses look their module up
_spec.loader.exec_module(cwl_report)

NEEDS = "ERROR --no-container, but this CommandLineTool has DockerRequirement under 'requirements'."


def _case(n: int, cid: str, err: str = "", failure: str | None = None, skipped: bool = False) -> str:
    inner = f"<system-err>{err}</system-err>"
    if failure is not None:
        inner += f'<failure message="{failure}" type="failure"/>'
    if skipped:
        inner += '<skipped type="skipped" message="Unsupported"/>'
    return (f'<testcase name="doc {n}" time="1" class="command_line_tool" file="{cid}" '
            f'url="cwltest:conformance_tests#{n}">{inner}</testcase>')


def _write(raw: Path, name: str, cases: list[str], log: str = "") -> None:
    body = "".join(cases)
    (raw / f"{name}.xml").write_text(f'<?xml version="1.0" ?><testsuites><testsuite name="c">{body}'
                                     "</testsuite></testsuites>")
    (raw / f"{name}.log").write_text(log)


def _table(tmp_path: Path, notes: str = "") -> str:
    (tmp_path / "notes.toml").write_text("[reasons]\n" + notes)
    (tmp_path / "meta.txt").write_text("date=D\nsuite_commit=C\n")
    out = tmp_path / "table.md"
    assert cwl_report.main(["--raw", str(tmp_path), "--notes", str(tmp_path / "notes.toml"), "--out", str(out)]) == 0
    return out.read_text()


def _row(table: str, cid: str) -> list[str]:
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| `{cid}` "))
    return [c.strip() for c in line.strip("|").split(" | ")]


def test_failures_are_classified_and_counted(tmp_path: Path) -> None:
    sing = "Already cached docker.io/debian:stable-slim with Singularity.\n"
    _write(tmp_path, "shim", [
        _case(1, "ok", sing),
        _case(2, "regressed", sing + "touch: cannot touch 'x': Read-only file system\nERROR boom", failure="Command x"),
        _case(3, "both_fail", "ERROR Invalid filename", failure="Command x"),
        _case(4, "needs_docker_feature", sing + "ERROR dockerImport is not currently supported", failure="Command x"),
        _case(5, "container_only", sing + "ERROR mount failed", failure="Command x"),
        _case(6, "noted", sing + "ERROR whatever", failure="Command x"),
    ])
    _write(tmp_path, "baseline", [
        _case(1, "ok"), _case(2, "regressed"), _case(3, "both_fail", failure="Command x"),
        _case(4, "needs_docker_feature", NEEDS, skipped=True), _case(5, "container_only", NEEDS, skipped=True),
        _case(6, "noted"),
    ])
    table = _table(tmp_path, 'noted = "shim: a known reason (issue #1)"\n')
    assert _row(table, "ok")[2:] == ["yes", "pass", "pass", ""]
    assert _row(table, "regressed")[5].startswith("shim: not yet investigated (ERROR boom")
    assert _row(table, "both_fail")[3:] == ["FAIL", "FAIL", "also fails without containers"]
    assert _row(table, "needs_docker_feature")[3:] == ["needs container", "FAIL",
                                                       "needs Docker-only feature (dockerImport)"]
    assert _row(table, "noted")[5] == "shim: a known reason (issue #1)"
    assert "pass without containers but fail through shim: **2** (`regressed`, `noted`)" in table
    assert "container-only tests failing for a reason of shim's: **1** (`container_only`)" in table


def test_a_failure_missing_from_the_junit_file_is_taken_from_the_log(tmp_path: Path) -> None:
    """cwltest writes no <failure> for a should_fail test that succeeded: its log says it failed."""
    _write(tmp_path, "shim", [_case(1, "a"), _case(2, "should_fail_test")],
           log="Test [2/2] should_fail_test: x\nTest 2 failed: cwltool --singularity t.cwl\n")
    _write(tmp_path, "baseline", [_case(1, "a"), _case(2, "should_fail_test")])
    table = _table(tmp_path)
    assert _row(table, "should_fail_test")[3:5] == ["pass", "FAIL"]
    assert _row(table, "a")[3:5] == ["pass", "pass"]
    assert "pass without containers but fail through shim: **1** (`should_fail_test`)" in table


def test_no_results_is_one_line_and_a_distinct_status(tmp_path: Path, capsys) -> None:
    assert cwl_report.main(["--raw", str(tmp_path), "--out", str(tmp_path / "t.md")]) == 66
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "run scripts/cwl_conformance.sh first" in err
    assert not (tmp_path / "t.md").exists()
