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
# cwltest + cwltool for the CWL conformance run (scripts/cwl_conformance.sh, test_cwl_conformance_smoke.py)
CONFORMANCE_REQUIREMENTS = Path(__file__).resolve().parents[1] / "scripts" / "cwl_conformance.requirements.txt"
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


def _wheels(requirements: Path, dest: Path) -> None:
    done = subprocess.run(["/usr/bin/python3", "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "-w",
                           str(dest), "-r", str(requirements)], capture_output=True, text=True, timeout=PIP_TIMEOUT,
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"pip wheel -r {requirements} failed:\n{done.stderr[-3000:]}")


def conformance_venv() -> Path:
    """CACHE/cwl-conformance-<hash>: cwltest and cwltool, installed from their wheels, which are kept
    in CACHE/cwl-wheels-<hash> (a rebuilt venv needs no network)."""
    key = hashlib.sha256(CONFORMANCE_REQUIREMENTS.read_bytes()).hexdigest()[:12]
    wheels = images.cached(images.cache_root() / f"cwl-wheels-{key}", lambda d: _wheels(CONFORMANCE_REQUIREMENTS, d))

    def make(dest: Path) -> None:
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(dest)], check=True, timeout=120)
        done = subprocess.run([str(dest / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "--no-index",
                               "--find-links", str(wheels), "-r", str(CONFORMANCE_REQUIREMENTS)],
                              capture_output=True, text=True, timeout=PIP_TIMEOUT, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pip install from {wheels} failed:\n{done.stderr[-3000:]}")
        subprocess.run(["chmod", "-R", "a+rX", str(dest)], check=True)

    return images.cached(images.cache_root() / f"cwl-conformance-{key}", make)


# `python -m cwltool` and `python -m cwltest` exit 0 whatever the outcome (their __main__ drop the
# status main returns): where the status counts (cwltest's --tool, a test's verdict), run these.
CWLTOOL_MAIN = "import sys; from cwltool.main import run; sys.exit(run())"
CWLTEST_MAIN = "import sys; from cwltest.main import main; sys.exit(main())"


def engine_command(venv: Path, engine: str) -> list[str]:
    return [str(venv / "bin" / "python"), "-m", MODULES[engine]]
