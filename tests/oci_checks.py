"""What the OCI tests check after a pull, as the user would see it: nothing left behind, and the
blobs kept (the error line: tests/error_line.py)."""

from __future__ import annotations

from pathlib import Path


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
