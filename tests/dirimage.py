"""Small directory images for launch tests: a static busybox as /bin/sh and the directories a
launch binds over, plus whatever a test needs (an environment script, symlinks, a passwd)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

BUSYBOX = Path("/bin/busybox")
BOUND = ("etc", "proc", "sys", "dev", "tmp", "home")


@dataclass(frozen=True)
class Extras:
    env: str | None = None                    # an environment script's text
    env_name: str = "10-docker2singularity.sh"
    links: dict[str, str] = field(default_factory=dict)   # top-level name -> symlink target
    passwd: str | None = None                 # /etc/passwd's text


def busybox_dir(root: Path, extras: Extras = Extras()) -> Path:
    """The image at `root`, world-readable (launches run as the test user)."""
    (root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin/busybox")
    (root / "bin/sh").symlink_to("busybox")
    for d in BOUND:
        if d not in extras.links:
            (root / d).mkdir()
    for name, target in extras.links.items():
        (root / name).symlink_to(target)
    if extras.env is not None:
        (root / ".singularity.d/env").mkdir(parents=True)
        (root / ".singularity.d/env" / extras.env_name).write_text(extras.env)
    if extras.passwd is not None:
        (root / "etc/passwd").write_text(extras.passwd)
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return root


def marked_sif(shimrun: str, root: Path, marker: str) -> Path:
    """A small SIF built by `shimrun build` from a busybox tree whose /marker says `marker` (each
    marker another partition, another digest), readable by the test user."""
    tree = busybox_dir(root / f"tree-{marker}")
    (tree / "marker").write_text(marker + "\n")
    (tree / "marker").chmod(0o644)
    sif = root / f"{marker}.sif"
    r = subprocess.run([shimrun, "build", sif, tree], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    sif.chmod(0o644)
    return sif
