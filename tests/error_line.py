"""What a refused run looks like to the user (README, "Exit codes"): its exit code, and one line on
stderr, `shimrun: error: ...`, holding what went wrong; no traceback, and no control character of
the input reaching the terminal. A pull or build may print the lines of the steps it finished
(`shimrun: wrote ...`) before failing: `error_line_after_steps` lets those through."""

from __future__ import annotations

import re
import subprocess

from shim.errors import ExitCode

PREFIX = "shimrun: error: "
# A step's line (README: stderr not a terminal, one line per finished step); not part of an error.
PROGRESS = re.compile(r"shimrun: (?!error: |internal error: |warning: )")


def _the_line(r: subprocess.CompletedProcess, code: ExitCode, lines: list[str], words: tuple[str, ...]) -> str:
    assert r.returncode == int(code), (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith(PREFIX), r.stderr
    assert "Traceback" not in r.stderr
    assert not any(c in r.stderr for c in "\x1b\x07\r\x00\x9b"), repr(r.stderr)
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def one_error_line(r: subprocess.CompletedProcess, code: ExitCode, *words: str) -> str:
    """The run failed with `code` and stderr is one line holding `words`; returns that line."""
    assert r.stderr.endswith("\n") and r.stderr.count("\n") == 1, r.stderr
    return _the_line(r, code, r.stderr.splitlines(), words)


def error_line_after_steps(r: subprocess.CompletedProcess, code: ExitCode, *words: str) -> str:
    """The run failed with `code` and said so in one line holding `words`, besides the lines of
    the steps it finished; returns that line."""
    return _the_line(r, code, [ln for ln in r.stderr.splitlines() if ln.strip() and not PROGRESS.match(ln)], words)
