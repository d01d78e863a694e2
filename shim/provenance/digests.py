"""sha256 of a file, read in chunks (a host library; a bare squashfs image can be many GB)."""

from __future__ import annotations

import hashlib

CHUNK = 1 << 20


def sha256_file(path: str) -> str | None:
    """None when the file cannot be read (it is named as unreadable, not left out)."""
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(CHUNK):
                h.update(block)
    except OSError:
        return None
    return h.hexdigest()
