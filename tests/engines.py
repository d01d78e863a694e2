"""The workflow engines the compatibility tests drive (tests/test_engines.py): cwltool, Snakemake
and miniwdl from PyPI, as tests/requirements-engines.txt pins them, in a venv of their own under
the test cache (CACHE/engines-<hash of that file>), made once and shared by later runs. Engines
run as `VENV/bin/python -m MODULE` (the venv is built beside its final place and renamed, which
leaves console scripts' #! lines pointing at the old path)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import images

REQUIREMENTS = Path(__file__).with_name("requirements-engines.txt")
PIP_TIMEOUT = 900
MODULES = {"cwltool": "cwltool", "snakemake": "snakemake", "miniwdl": "WDL"}


def _make(dest: Path) -> None:
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(dest)], check=True, timeout=120)
    done = subprocess.run([str(dest / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                           "-r", str(REQUIREMENTS)], capture_output=True, text=True, timeout=PIP_TIMEOUT,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pip install -r {REQUIREMENTS} failed:\n{done.stderr[-3000:]}")
    subprocess.run(["chmod", "-R", "a+rX", str(dest)], check=True)


def engines_venv() -> Path:
    key = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()[:12]
    return images.cached(images.cache_root() / f"engines-{key}", _make)


def engine_command(venv: Path, engine: str) -> list[str]:
    return [str(venv / "bin" / "python"), "-m", MODULES[engine]]
