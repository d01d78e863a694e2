"""sha256 of files and of byte ranges of them, read in chunks (a SIF partition can be many GB)."""

from __future__ import annotations

import hashlib

CHUNK = 1 << 20


def sha256_range(path: str, offset: int, size: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = size
        while left > 0:
            block = f.read(min(CHUNK, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h.hexdigest()


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
