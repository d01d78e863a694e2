"""Paths of a root filesystem on disk, resolved the way a process chrooted into it sees them.

Symlinks inside a container root (absolute ones, or with "..") are followed relative to that
root and can never lead out of it; shim.image.arch.resolve_links does the walk.
"""

from __future__ import annotations

import os
import stat

from shim.image.arch import resolve_links


class RootPaths:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        # Memoised readlink: one loader run asks about the same directories many times, and
        # the tree is assumed not to change under it.
        self._links: dict[str, str | None] = {}

    def _readlink(self, rel: str) -> str | None:
        try:
            return self._links[rel]
        except KeyError:
            pass
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
