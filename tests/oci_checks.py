"""What the OCI tests check after a pull, as the user would see it: one error line and its exit
code (control characters never reaching the terminal), and nothing left behind."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from shim.errors import ExitCode

# A step's line (README: stderr not a terminal, one line per finished step); not part of an error.
PROGRESS = re.compile(r"shimrun: (?!error: |internal error: |warning: )")


def one_error_line(r: subprocess.CompletedProcess, code: ExitCode, *words: str) -> str:
    """The run failed with `code` and said so in one line holding `words` (besides the lines of
    the steps it finished); returns that line."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not PROGRESS.match(ln)]
    assert r.returncode == int(code), r.stderr
    assert len(lines) == 1 and lines[0].startswith("shimrun: error: "), r.stderr
    assert "Traceback" not in r.stderr
    assert not any(c in r.stderr for c in "\x1b\x07\r\x00\x9b"), repr(r.stderr)
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def leftovers(user_dir: Path) -> list[str]:
    """Partial images, build directories, temporary blob caches, partial blobs and lock files."""
    found = []
    for path in user_dir.rglob("*"):
        name = path.name
        if name.startswith(".") and (".build." in name or name.endswith((".tmp", ".partial", ".lock"))
                                     or name.startswith(".shim-blobs.")):
            found.append(str(path))
    return found


def blobs(user_dir: Path) -> dict[str, int]:
    d = user_dir / "cache" / "blobs" / "sha256"
    return {p.name: p.stat().st_size for p in d.iterdir()} if d.is_dir() else {}
