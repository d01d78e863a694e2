"""Where shim keeps its per-user caches, what of them it trusts, and how a cache file is written
so that concurrent shimrun processes (64 ranks of a step) never see a torn one.

A cache holds what later launches act on (extracted root filesystems, injection plans, ELF
facts, hardware verdicts): whoever can write there decides what runs. So everything read from a
cache is trusted only if it and every directory above it, up to the cache root, belong to this
user and are not writable by group or others (and a file has no other hard link); anything else
is ignored, with one notice naming it. A cache root that others may write (SHIMRUN_CACHE=/tmp/x,
mode 1777) is not used itself: a private directory .shim-UID inside it is, made 0700.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from functools import cache
from types import ModuleType


@dataclass(frozen=True)
class CacheRoot:
    path: str | None      # the directory to use; None: no trustworthy one (caching is off)
    problem: str = ""     # why `path` is not the configured one, or why there is none


_settings = {"quiet": False}
_said: set[str] = set()


def set_quiet(quiet: bool) -> None:
    """--quiet: notices are not printed."""
    _settings["quiet"] = quiet


def notice(message: str) -> None:
    """One line on stderr, once per process and message."""
    if message in _said or _settings["quiet"]:
        return
    _said.add(message)
    print(f"shimrun: notice: {message}", file=sys.stderr)


def cache_root() -> CacheRoot:
    """The cache root to use now (see the module docstring): $SHIMRUN_CACHE, else
    $XDG_CACHE_HOME/shim, else ~/.cache/shim, a relative one ignored (it would put the cache
    wherever the job happens to run). Decided by the C core (csrc/cache.c), which the native
    front-end asks too when it looks for a launch record."""
    from shim import native

    rc, path, problem = _cache_root(os.environ.get("SHIMRUN_CACHE", ""), os.environ.get("XDG_CACHE_HOME", ""),
                                    os.environ.get("HOME", ""), os.geteuid(), native)
    if rc < 0:
        return CacheRoot(None, problem)
    if rc == 1:
        notice(f"the cache {problem}: using {path}, a private directory in it")
        return CacheRoot(path, problem)
    return CacheRoot(path)


@cache
def _cache_root(_given: str, _xdg: str, _home: str, _uid: int, native: ModuleType) -> tuple[int, str, str]:
    """Memoised per setting: the arguments that change the answer are the key."""
    return native.cache_root(create=True)


def cache_path(*parts: str) -> str | None:
    """A path under the cache root; None when caching is off."""
    root = cache_root()
    if root.path is None:
        notice(f"caching is off: {root.problem} (set SHIMRUN_CACHE to a directory of your own)")
        return None
    return os.path.join(root.path, *parts)


def untrusted(path: str, leaf_is_file: bool = True) -> str:
    """Why `path` (in the cache) must not be trusted, "" if it may be (or does not exist).
    Checked from `path` up to the cache root (for a file given outside it, up to its own
    directory): no symlink, this user's, not writable by others; a file with no other hard link."""
    from shim import native

    return native.cache_untrusted(path, cache_root().path, leaf_is_file)


def read_trusted(path: str | None, limit: int = 64 << 20) -> bytes | None:
    """The bytes of a cache file, None when it is absent, unreadable or not to be trusted (then
    with one notice saying why)."""
    if path is None:
        return None
    problem = untrusted(path)
    if problem:
        notice(f"ignoring the cache entry {path}: {problem}")
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, limit)
    finally:
        os.close(fd)


def file_identity(path: str) -> list[int] | None:
    """(st_dev, st_ino, st_size, st_mtime_ns): a replaced or rewritten file is another one; None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def write_atomic(path: str | None, data: bytes) -> bool:
    """Write to a temporary name beside `path` and rename it into place: readers see the old
    file or the new one, whole. False when it cannot be written (caching off, read-only home,
    full disk, a directory others could write): a cache is an optimisation, never a reason to fail."""
    if path is None:
        return False
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if untrusted(directory, leaf_is_file=False):
            return False
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
