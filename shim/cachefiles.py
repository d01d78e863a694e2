"""Where shim keeps its per-user caches, and how a cache file is written so that concurrent
shimrun processes (64 ranks of a step) never see a torn one."""

from __future__ import annotations

import contextlib
import os


def cache_base() -> str:
    """$SHIMRUN_CACHE, else $XDG_CACHE_HOME/shim, else ~/.cache/shim."""
    return os.environ.get("SHIMRUN_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "shim")


def file_identity(path: str) -> list[int] | None:
    """(st_dev, st_ino, st_size, st_mtime_ns): a replaced or rewritten file is another one; None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def write_atomic(path: str, data: bytes) -> bool:
    """Write to a temporary name beside `path` and rename it into place: readers see the old
    file or the new one, whole. False when it cannot be written (read-only home, full disk): a
    cache is an optimisation, never a reason to fail."""
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        return False
    return True
