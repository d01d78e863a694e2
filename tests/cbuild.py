"""Small C programs and shared libraries built with the host's gcc for tests, cached by a hash of
source and flags under CACHE/stubs (world-readable, so the test user can load them)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from images import cache_root


def stub_dir() -> Path:
    d = cache_root() / "stubs"
    d.mkdir(parents=True, exist_ok=True)
    d.chmod(0o755)
    return d


def build_c(name: str, source: str, flags: Sequence[str] = (), out_dir: Path | None = None) -> Path:
    """Compile `source` into `name` (an executable, or a shared library when flags hold -shared),
    once per (name, source, flags). Returns the built file's path; out_dir defaults to a cache
    directory of its own per build, so libraries built together can be placed side by side."""
    key = hashlib.sha256("\0".join([name, source, *flags]).encode()).hexdigest()[:16]
    target_dir = out_dir or stub_dir() / key
    target = target_dir / name
    if target.exists():
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(target_dir, 0o755)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src.c"
        src.write_text(source)
        tmp_out = Path(tmp) / name
        r = subprocess.run(["gcc", "-O1", "-o", str(tmp_out), str(src), *flags], capture_output=True, text=True,
                           check=False)
        if r.returncode != 0:
            raise RuntimeError(f"gcc failed for {name}: {r.stderr}")
        tmp_out.chmod(0o755)
        os.replace(tmp_out, target)
    return target
