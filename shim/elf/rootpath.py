"""Paths of a root filesystem on disk, resolved the way a process chrooted into it sees them.

Symlinks inside a container root (absolute ones, or with "..") are followed relative to that
root and can never lead out of it; shim.image.arch.resolve_links does the walk.

Every read of a root goes through here, which is what makes a plan's inputs known: inside
`recording(root, ...)` each path a RootPaths of one of those roots resolves (and each symlink it
follows) is noted with its identity, absent ones too, so that a cached plan or hardware check can
be revalidated later by `changed()` with one lstat per path instead of trusting a directory
image's top-level mtime.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from contextvars import ContextVar

from shim.image.arch import resolve_links

Identity = tuple[int, int, int, int, int] | None   # (dev, ino, mode, size, mtime_ns) of lstat; None: absent


def identity(path: str) -> Identity:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns)


class ReadLog:
    """What was looked at under some roots: {root: {path relative to it: identity}}."""

    def __init__(self, roots: tuple[str, ...]) -> None:
        self.reads: dict[str, dict[str, Identity]] = {os.path.abspath(r): {} for r in roots}

    def note(self, root: str, rel: str) -> None:
        seen = self.reads.get(root)
        if seen is not None and rel not in seen:
            seen[rel] = identity(os.path.join(root, rel) if rel else root)


_active: ContextVar[ReadLog | None] = ContextVar("shim_read_log", default=None)


@contextlib.contextmanager
def recording(*roots: str) -> Iterator[ReadLog]:
    """Note every path read under `roots` (through RootPaths) while the block runs."""
    log = ReadLog(roots)
    token = _active.set(log)
    try:
        yield log
    finally:
        _active.reset(token)


def changed(reads: dict[str, dict[str, Identity]], rebase: dict[str, str] | None = None) -> str | None:
    """The first recorded path whose identity is not what it was ("" roots: none), None when all
    agree. `rebase` maps a recorded root to where that tree is now (the image directory itself,
    where the record was made through the launch's mount of it)."""
    for root, seen in reads.items():
        base = (rebase or {}).get(root, root)
        for rel, ident in seen.items():
            path = os.path.join(base, rel) if rel else base
            now = identity(path)
            if now != (tuple(ident) if ident is not None else None):
                return path
    return None


class RootPaths:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        # Memoised readlink: one loader run asks about the same directories many times, and
        # the tree is assumed not to change under it.
        self._links: dict[str, str | None] = {}
        self._log = _active.get()

    def _note(self, rel: str) -> None:
        if self._log is not None:
            self._log.note(self.root, rel.lstrip("/"))

    def _readlink(self, rel: str) -> str | None:
        try:
            return self._links[rel]
        except KeyError:
            pass
        self._note(rel)
        try:
            target: str | None = os.readlink(os.path.join(self.root, rel))
        except OSError:  # not a link, or missing
            target = None
        self._links[rel] = target
        return target

    def resolve(self, path: str) -> str | None:
        """The absolute container path `path` leads to with every link followed (the target
        need not exist); None on a symlink loop."""
        rel = resolve_links(path, self._readlink)
        return None if rel is None else "/" + rel

    def host(self, path: str) -> str | None:
        """Where the resolved `path` lies on this machine; None on a symlink loop."""
        resolved = self.resolve(path)
        if resolved is None:
            return None
        self._note(resolved)
        return resolved if self.root == "/" else self.root + resolved.rstrip("/")

    def regular_file(self, path: str) -> str | None:
        """The host path of `path` if it resolves to a regular file inside the root, else None."""
        host = self.host(path)
        if host is None:
            return None
        try:
            # lstat: the links were followed inside the root already; one swapped in since is
            # not followed out of it.
            return host if stat.S_ISREG(os.lstat(host).st_mode) else None
        except OSError:
            return None

    def is_dir(self, path: str) -> bool:
        host = self.host(path)
        try:
            return host is not None and stat.S_ISDIR(os.lstat(host).st_mode)
        except OSError:
            return False


# The PATH a container program runs with when nothing sets one (Apptainer's default too).
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def find_program(paths: RootPaths, name: str, path: str = "") -> str | None:
    """The container path execvp would run for `name` in the root: a name with "/" as it is
    (absolute only: the container's working directory is not known here), else the first
    executable regular file in `path` (default DEFAULT_PATH); relative and empty PATH entries
    (the working directory) are skipped."""
    if "/" in name:
        return name if name.startswith("/") and _executable(paths, name) else None
    for d in (path or DEFAULT_PATH).split(":"):
        if d.startswith("/"):
            candidate = d.rstrip("/") + "/" + name
            if _executable(paths, candidate):
                return candidate
    return None


def _executable(paths: RootPaths, path: str) -> bool:
    host = paths.regular_file(path)
    try:
        return host is not None and os.stat(host).st_mode & 0o111 != 0
    except OSError:
        return False
