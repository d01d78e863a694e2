"""Finding libraries in an image root the cheap way: the root's ld.so.cache, then a few
directories (the default ones, the image's LD_LIBRARY_PATH, and where CUDA, ROCm and vendor
fabric stacks install). Names are looked up, never found by ELF-parsing the image's files."""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
from collections.abc import Iterable, Sequence

from shim.elf.layout import lib_arch
from shim.elf.ldcache import CACHE_FILE, LdCache, read_ld_cache
from shim.elf.rootpath import RootPaths
from shim.expect.model import LibFound

# Vendor install trees searched after the default directories (globs, inside the root).
VENDOR_DIRS: tuple[str, ...] = (
    "/usr/local/lib", "/usr/local/lib64",
    "/usr/local/cuda*/lib64", "/usr/local/cuda*/lib", "/usr/local/cuda*/targets/*/lib",
    # pip wheels (PyTorch, JAX) and conda carry their own CUDA runtime, NCCL, ...
    "/usr/local/lib/python3*/*-packages/nvidia/*/lib", "/usr/lib/python3*/*-packages/nvidia/*/lib",
    "/opt/conda/lib", "/opt/conda/lib/python3*/site-packages/nvidia/*/lib",
    "/usr/local/nvidia/lib64", "/usr/local/nvidia/lib",
    "/opt/rocm*/lib", "/opt/rocm*/lib64",
    "/opt/amazon/efa/lib", "/opt/amazon/efa/lib64",
)
_MAX_GLOB = 64  # an image with hundreds of /usr/local/cuda-* trees is not worth listing


def version_of(soname_or_prefix: str, real_name: str) -> str | None:
    """The version a library's real file name carries: ("libcudart.so.12",
    "libcudart.so.12.2.140") -> "12.2.140"; None when the name carries none."""
    base = posixpath.basename(real_name)
    stem = soname_or_prefix.split(".so", 1)[0] + ".so."
    if base.startswith(stem):
        rest = base[len(stem):]
        return rest if re.fullmatch(r"\d+(?:\.\d+)*", rest) else None
    return None


class LibFinder:
    def __init__(self, paths: RootPaths, arch: str | None = None, ld_library_path: str = "") -> None:
        self.paths = paths
        la = lib_arch(arch)
        self._flags = la.cache_flags or None
        host = paths.regular_file(CACHE_FILE)
        self.cache: LdCache = read_ld_cache(host) if host else LdCache(problem=f"no {CACHE_FILE}")
        self._listings: dict[str, list[str]] = {}
        self.ld_library_path = tuple(d for d in re.split(r"[:;]", ld_library_path) if d.startswith("/"))
        defaults = (f"/lib/{la.triplet}", f"/usr/lib/{la.triplet}") if la.triplet else ()
        defaults += ("/lib64", "/usr/lib64", "/lib", "/usr/lib")
        self.default_dirs = self.existing(defaults)
        self.dirs = self.existing((*self.ld_library_path, *defaults, *self.glob(VENDOR_DIRS)))

    # ---- directories ----

    def existing(self, dirs: Iterable[str]) -> tuple[str, ...]:
        """The directories that exist, each real directory once (merged /usr makes /lib and
        /usr/lib one), in the given order."""
        seen: set[str] = set()
        out: list[str] = []
        for d in dirs:
            real = self.paths.resolve(d)
            if real and real not in seen and self.paths.is_dir(d):
                seen.add(real)
                out.append(d.rstrip("/") or "/")
        return tuple(out)

    def listdir(self, path: str) -> list[str]:
        """Names in the directory `path` (sorted; [] if it is not one). Memoised: the big library
        directories are listed for several sonames."""
        host = self.paths.host(path)
        if host is None:
            return []
        if host not in self._listings:
            try:
                names = sorted(os.listdir(host)) if self.paths.is_dir(path) else []
            except OSError:
                names = []
            self._listings[host] = names
        return self._listings[host]

    def glob(self, patterns: Iterable[str]) -> list[str]:
        """Container paths matching each pattern (wildcards in any component), in order."""
        out: list[str] = []
        for pattern in patterns:
            found = ["/"]
            for part in [p for p in pattern.split("/") if p]:
                nxt: list[str] = []
                for base in found:
                    if any(c in part for c in "*?["):
                        names = [n for n in self.listdir(base) if fnmatch.fnmatchcase(n, part)]
                    else:
                        names = [part]
                    nxt.extend(posixpath.join(base, n) for n in names)
                found = nxt[:_MAX_GLOB]
            out.extend(p for p in found if self.paths.host(p) and os.path.lexists(self.paths.host(p) or ""))
        return out

    # ---- libraries ----

    def cached(self, soname: str) -> str | None:
        path = self.cache.lookup(soname, self._flags)
        return path if path and self.paths.regular_file(path) else None

    def found(self, soname: str, path: str) -> LibFound:
        real = self.paths.resolve(path) or path
        return LibFound(soname, path, real, version_of(soname, real))

    def find(self, soname: str, dirs: Sequence[str] | None = None) -> LibFound | None:
        """Where the image's loader finds `soname` (the cache first, then the directories)."""
        path = self.cached(soname)
        if path is None:
            for d in self.dirs if dirs is None else dirs:
                candidate = posixpath.join(d, soname)
                if self.paths.regular_file(candidate):
                    path = candidate
                    break
        return self.found(soname, path) if path else None

    def find_any(self, pattern: str) -> LibFound | None:
        """The highest-numbered soname matching `pattern` (a regex, e.g. r"libcudart\\.so\\.\\d+")
        in the cache or the directories; for libraries whose major number is not known."""
        rx = re.compile(pattern)
        names = {e.key for e in self.cache.entries if rx.fullmatch(e.key)}
        for d in self.dirs:
            names.update(n for n in self.listdir(d) if rx.fullmatch(n))

        def key(name: str) -> tuple[int, ...]:
            return tuple(int(x) for x in re.findall(r"\d+", name.split(".so", 1)[1]))

        for name in sorted(names, key=key, reverse=True):
            hit = self.find(name)
            if hit:
                return hit
        return None
