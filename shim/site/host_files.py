"""The host's files a profile names, looked up under a host root (a simulated node in tests):
globs, the sort of entry each key wants (file, ELF file, executable, directory, anything), why a
path leads nowhere, and SONAMEs found through the host's ld.so.cache or read from ELF headers.

What is wrong comes back as (message, fix) pairs, all about this host, never about the profile's
text: the caller names the key and marks them host problems (the profile is unavailable here).
"""

from __future__ import annotations

import errno
import glob
import os
from functools import cache

from shim.elf.cache import FactsCache
from shim.elf.layout import lib_arch
from shim.elf.ldcache import CACHE_FILE, LdCache, read_ld_cache
from shim.elf.rootpath import RootPaths
from shim.errors import ShimError
from shim.image.arch import host_arch
from shim.site.profile_model import GLOB_CHARS

Issue = tuple[str, str]   # (message, fix)

_SORT_WORDS = {"file": "files", "elf": "files", "exec": "executables", "dir": "directories", "any": "entries"}
_SORT_ONE = {"file": "a file", "elf": "a file", "exec": "an executable file", "dir": "a directory", "any": "there"}


class HostFiles:
    """Paths in host terms (/opt/mpich/lib) against this machine's (ROOT/opt/mpich/lib)."""

    def __init__(self, host_root: str) -> None:
        self.root = os.path.abspath(host_root)

    def under(self, path: str) -> str:
        return path if self.root == "/" else self.root + path

    def strip(self, real: str) -> str:
        return real if self.root == "/" else real[len(self.root):]

    def matches(self, path: str, want: str) -> tuple[tuple[str, ...], list[Issue]]:
        """(host paths `path` names under the host root, of the wanted sort: file, elf, exec, dir,
        any; what is wrong when there are none or the one named is unsuitable)."""
        if any(c in path for c in GLOB_CHARS):
            return self._glob_matches(path, want)
        real = self.under(path)
        if not os.path.exists(real):
            return (), [missing(path, real)]
        if not is_a(real, want):
            fix = ("list directories in provides.plugin_dirs, or name the files with a glob such as DIR/lib*.so*"
                   if want == "elf" and os.path.isdir(real) else "fix the path")
            return (), [(f"{path} is not {_SORT_ONE[want]}", fix)]
        if want == "elf" and not is_elf(real):
            return (), [(f"{path} is not an ELF file (a linker script or text?)",
                         "name the shared library itself, e.g. libfoo.so.1")]
        return (path,), []

    def _glob_matches(self, path: str, want: str) -> tuple[tuple[str, ...], list[Issue]]:
        found = sorted(glob.glob(path if self.root == "/" else glob.escape(self.root) + path))
        if not found:
            return (), [(f"{path} matches nothing on this host", "install it, or fix the pattern")]
        good = [f for f in found if is_a(f, want)]
        if not good:
            return (), [(f"{path} matches {len(found)} entries but no {_SORT_WORDS[want]}", "fix the pattern")]
        issues = [(f"{self.strip(f)} (from {path}) is not an ELF file",
                   "narrow the pattern to shared libraries, e.g. lib*.so.*")
                  for f in good if want == "elf" and not is_elf(f)]
        return tuple(self.strip(f) for f in good), issues

    def cache_lookup(self, soname: str) -> str | None:
        """Where the host's ld.so takes `soname` from (its ld.so.cache, native entries only): the
        path in host terms (the real file, so the profile names what will be bound)."""
        path = os.path.join(self.root, CACHE_FILE.lstrip("/"))
        try:
            st = os.stat(path)
        except OSError:
            return None
        found = _read_host_cache(path, st.st_mtime_ns, st.st_size).lookup(soname, _native_cache_flags() or None)
        if found is None:
            return None
        # Symlinks inside a host root resolve within it.
        real = (os.path.realpath(found) if self.root == "/"
                else self.under(RootPaths(self.root).resolve(found) or found))
        return self.strip(real) if os.path.isfile(real) and is_elf(real) else None


def missing(path: str, real: str) -> Issue:
    """(message, fix) for a host path that does not lead to anything: absent, a dangling
    symlink, or a symlink loop."""
    if not os.path.lexists(real):
        return f"{path} does not exist on this host", "install it, or fix the path"
    try:
        os.stat(real)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{path} is a symlink loop (too many levels of symbolic links)", "fix the links, or the path"
    try:
        target = os.readlink(real)
    except OSError:
        target = "?"
    return f"{path} is a dangling symlink (to {target}, which does not exist)", "install its target, or fix the link"


def is_a(path: str, want: str) -> bool:
    if want in ("file", "elf"):
        return os.path.isfile(path)
    if want == "exec":
        return os.path.isfile(path) and os.stat(path).st_mode & 0o111 != 0
    if want == "dir":
        return os.path.isdir(path)
    return os.path.exists(path)


def is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def elf_soname(path: str) -> str | None:
    """The SONAME in a file's ELF header, through the per-user facts cache (a warm load reads no ELF)."""
    try:
        facts = FactsCache().get(path)
    except ShimError:
        return None
    return facts.soname if facts else None


@cache
def _read_host_cache(path: str, _mtime_ns: int, _size: int) -> LdCache:
    """Read once per load of several soname: entries (the stat values key the memo)."""
    return read_ld_cache(path)


def _native_cache_flags() -> tuple[int, ...]:
    return lib_arch(host_arch()).cache_flags
