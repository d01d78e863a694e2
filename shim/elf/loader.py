"""Which files glibc's ld.so would load for a program, inside a root filesystem on disk.

The search for a needed name without "/" follows ld.so (glibc 2.36, elf/dl-load.c):
  1. DT_RPATH of the requesting object, then of the object that loaded it, and so on up to the
     program, only if the requester has no DT_RUNPATH (an object's DT_RPATH is ignored
     altogether when it also has a DT_RUNPATH);
  2. LD_LIBRARY_PATH (given explicitly: the container's, not this process's);
  3. DT_RUNPATH of the requester (never inherited);
  4. ROOT/etc/ld.so.cache, unless the requester is marked DF_1_NODEFLIB (then only entries
     outside the default directories);
  5. the default directories (layout.LibArch), unless DF_1_NODEFLIB.
Every directory of 1, 2, 3 and 5 is tried with its glibc-hwcaps subdirectories first, then its
legacy hwcap subdirectories (tls/, x86_64/, haswell/...), as the root's own glibc release does it
on the CPU given (hwcaps.py); $ORIGIN, ${ORIGIN}, $LIB, $PLATFORM are expanded ($PLATFORM as that
glibc computes it on that CPU); a candidate of another ELF class, machine or byte order than the
requester is skipped, as ld.so does. A name already loaded (as a needed name or a DT_SONAME),
or a file already loaded under another path, is reused. Paths are container paths, resolved
inside ROOT (rootpath.RootPaths); they are returned as ld.so names them (dir + "/" + name, ".."
kept), as ldd prints them.

Not emulated: relative search directories (relative to the process's working directory, which
is unknown here), LD_PRELOAD, DT_AUXILIARY/DT_FILTER, dlopen, and what hwcaps.py leaves out.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from shim.elf.facts import ElfFacts, elf_facts
from shim.elf.glibc import libc_release
from shim.elf.hwcaps import CpuFeatures, SearchRules, search_rules
from shim.elf.layout import LibArch, lib_arch
from shim.elf.ldcache import CACHE_FILE, LdCache, read_ld_cache
from shim.elf.rootpath import RootPaths
from shim.errors import ImageError, ShimError

FactsFn = Callable[[str], ElfFacts | None]

_DST = re.compile(r"\$(?:\{(ORIGIN|LIB|PLATFORM)\}|(ORIGIN|LIB|PLATFORM)(?![A-Za-z0-9_]))")


@dataclass(frozen=True)
class Closure:
    resolved: dict[str, str]                  # needed name -> container path of the file loaded
    missing: tuple[tuple[str, str], ...]      # (needed name, container path of who needs it)
    order: tuple[str, ...]                    # container paths in ld.so's search-list order (ldd's)


@dataclass(frozen=True)
class _Obj:
    path: str               # the container path it was loaded by (ld.so's l_name)
    facts: ElfFacts
    origin: str             # what $ORIGIN expands to in its dynamic section
    loader: _Obj | None     # the object whose DT_NEEDED loaded it; None for the program

    def chain(self) -> Iterator[_Obj]:
        obj: _Obj | None = self
        while obj is not None:
            yield obj
            obj = obj.loader


@dataclass(frozen=True)
class _Hit:
    path: str
    host: str
    facts: ElfFacts


class Loader:
    def __init__(self, root: str = "/", arch_dirs: Sequence[str] | None = None,
                 ld_library_path: str | Sequence[str] = (), cpu: CpuFeatures | None = None,
                 facts: FactsFn = elf_facts) -> None:
        """root: the root filesystem, "/" for the host. arch_dirs: the default directories,
        instead of the per-architecture table (layout.py). ld_library_path: the
        LD_LIBRARY_PATH the program will run with ("a:b" or a sequence). cpu: the CPU it will
        run on (hwcaps.host_cpu_features()); None: unknown, then no glibc-hwcaps subdirectory is
        searched and no CPU-dependent legacy name or platform applies. facts: host path ->
        ElfFacts (elf_facts, or a FactsCache)."""
        self.root = os.path.abspath(root)
        self.paths = RootPaths(self.root)
        self._arch_dirs = tuple(arch_dirs) if arch_dirs is not None else None
        if isinstance(ld_library_path, str):
            ld_library_path = re.split(r"[:;]", ld_library_path)  # ld.so splits on both
        self._ld_library_path = tuple(ld_library_path)
        self._cpu = cpu
        self._rules: dict[str, SearchRules] = {}
        self._subdirs: dict[tuple[str, tuple[str, ...]], list[str]] = {}
        self._facts = facts
        self._ld_cache: LdCache | None = None
        self._multiarch: dict[str, bool] = {}

    # ---- per-root facts ----

    @property
    def ld_cache(self) -> LdCache:
        """ROOT's /etc/ld.so.cache (read once)."""
        if self._ld_cache is None:
            host = self.paths.regular_file(CACHE_FILE)
            self._ld_cache = read_ld_cache(host) if host else LdCache(problem=f"no {CACHE_FILE}")
        return self._ld_cache

    def host_path(self, path: str) -> str | None:
        """Where the container path `path` (resolved inside ROOT) lies on this machine, if it
        is a regular file."""
        return self.paths.regular_file(path)

    def _is_multiarch(self, arch: LibArch) -> bool:
        # Debian-family ld.so searches /lib/<triplet> first; a root that has the directory was
        # built that way (other distributions have no such directory).
        if arch.go not in self._multiarch:
            self._multiarch[arch.go] = bool(arch.triplet) and (
                self.paths.is_dir(f"/usr/lib/{arch.triplet}") or self.paths.is_dir(f"/lib/{arch.triplet}"))
        return self._multiarch[arch.go]

    def rules(self, arch: LibArch) -> SearchRules:
        """The search rules of this root's glibc (its libc.so.6 in the default directories) on the CPU."""
        if arch.go not in self._rules:
            dirs = self._arch_dirs if self._arch_dirs is not None else arch.default_dirs(self._is_multiarch(arch))
            libc = next((h for d in dirs if (h := self.paths.regular_file(f"{d}/libc.so.6"))), None)
            self._rules[arch.go] = search_rules(arch.go, libc_release(libc) if libc else None, self._cpu)
        return self._rules[arch.go]

    def default_dirs(self, facts: ElfFacts) -> tuple[str, ...]:
        if self._arch_dirs is not None:
            return self._arch_dirs
        arch = lib_arch(facts.arch)
        return arch.default_dirs(self._is_multiarch(arch))

    # ---- the search ----

    def find(self, name: str, requester: ElfFacts, requester_path: str,
             loaders: Sequence[tuple[ElfFacts, str]] = ()) -> str | None:
        """Container path of the file ld.so loads for DT_NEEDED `name` of the object
        `requester` loaded from container path `requester_path`; None if it finds none.
        loaders: (facts, container path) of the object that loaded the requester, of the one
        that loaded that one, ... up to the program, for the inherited DT_RPATH."""
        obj = None
        for facts, path in reversed(((requester, requester_path), *loaders)):
            obj = _Obj(path, facts, posixpath.dirname(path), obj)
        assert obj is not None
        hit = self._search(name, obj)
        return hit.path if hit else None

    def _search(self, name: str, obj: _Obj) -> _Hit | None:
        want = obj.facts
        if "/" in name:
            path = self._expand(name, obj)
            return self._try(path, want) if path and path.startswith("/") else None
        chain = list(obj.chain())
        program = chain[-1]
        if not want.runpath:
            for o in chain:
                if o.facts.rpath and not o.facts.runpath:
                    hit = self._in_dirs(name, o.facts.rpath, o, want)
                    if hit:
                        return hit
        if self._ld_library_path:
            hit = self._in_dirs(name, self._ld_library_path, program, want)
            if hit:
                return hit
        if want.runpath:
            hit = self._in_dirs(name, want.runpath, obj, want)
            if hit:
                return hit
        arch = lib_arch(want.arch)
        defaults = self.default_dirs(want)
        cached = self.ld_cache.lookup(name, arch.cache_flags or None, self.rules(arch).hwcaps)
        if cached and want.nodeflib and any(cached.startswith(d.rstrip("/") + "/") for d in defaults):
            cached = None
        if cached:
            hit = self._try(cached, want)
            if hit:
                return hit
        if not want.nodeflib:
            return self._in_dirs(name, defaults, obj, want)
        return None

    def _in_dirs(self, name: str, dirs: Sequence[str], owner: _Obj, want: ElfFacts) -> _Hit | None:
        """Search `dirs` (DSTs expanded for `owner`, the object whose list it is)."""
        rules = self.rules(lib_arch(want.arch))
        subdirs = [f"glibc-hwcaps/{sub}/" for sub in rules.hwcaps] + [f"{sub}/" if sub else "" for sub in rules.legacy]
        for entry in dirs:
            d = self._expand(entry, owner)
            if not d or not d.startswith("/"):
                continue
            d = d.rstrip("/")  # ld.so drops trailing slashes, then joins with one
            for sub in self._existing(d, subdirs):
                hit = self._try(f"{d}/{sub}{name}", want)
                if hit:
                    return hit
        return None

    def _existing(self, d: str, subdirs: list[str]) -> list[str]:
        """The subdirectories of d that exist (ld.so, too, remembers which do not): most
        directories have none, and each name then costs one lookup instead of a dozen."""
        key = (d, tuple(subdirs))
        if key not in self._subdirs:
            self._subdirs[key] = [s for s in subdirs if not s or self.paths.is_dir(f"{d}/{s}")]
        return self._subdirs[key]

    def _expand(self, text: str, owner: _Obj) -> str | None:
        arch = lib_arch(owner.facts.arch)

        def token(m: re.Match[str]) -> str:
            which = m.group(1) or m.group(2)
            if which == "ORIGIN":
                return owner.origin
            if which == "LIB":
                return arch.lib_token(self._is_multiarch(arch))
            return self.rules(arch).platform

        return _DST.sub(token, text) if "$" in text else text

    def _try(self, path: str, want: ElfFacts) -> _Hit | None:
        host = self.paths.regular_file(path)
        if host is None:
            return None
        try:
            facts = self._facts(host)
        except ShimError:  # malformed ELF: ld.so would not load it either
            return None
        if facts is None or (facts.elf_class, facts.machine, facts.byte_order) != (
                want.elf_class, want.machine, want.byte_order):
            return None
        return _Hit(path, host, facts)

    # ---- the whole program ----

    def closure(self, path: str) -> Closure:
        """Every object ld.so loads for the program (or library) at container path `path`,
        following DT_NEEDED breadth-first with each object's own search rules.
        Raises ImageError if `path` is not an ELF file inside ROOT."""
        host = self.paths.regular_file(path)
        facts = self._load_facts(host, path)
        real = self.paths.resolve(path) or path
        # The kernel gives ld.so the program's resolved path: its $ORIGIN is where it really is.
        program = _Obj(path, facts, posixpath.dirname(real), None)
        by_name: dict[str, _Obj] = {}
        by_file: dict[tuple[int, int], _Obj] = {}
        if facts.soname:
            by_name[facts.soname] = program
        self._remember(by_file, host, program)

        missing: list[tuple[str, str]] = []
        interp: _Obj | None = None
        if facts.interp:
            # ld.so itself is loaded first, under the PT_INTERP path and its DT_SONAME.
            ihost = self.paths.regular_file(facts.interp)
            ifacts = self._safe_facts(ihost) if ihost else None
            if ihost and ifacts:
                interp = _Obj(facts.interp, ifacts, posixpath.dirname(facts.interp), None)
                by_name[facts.interp] = interp
                if ifacts.soname:
                    by_name.setdefault(ifacts.soname, interp)
                self._remember(by_file, ihost, interp)
            else:
                missing.append((facts.interp, path))

        resolved: dict[str, str] = {}
        order: list[str] = [path]
        seen: set[int] = {id(program)}
        queue = deque([program])
        while queue:
            obj = queue.popleft()
            for name in obj.facts.needed:
                known = by_name.get(name)
                if known is None:
                    hit = self._search(name, obj)
                    if hit is None:
                        if (name, obj.path) not in missing:
                            missing.append((name, obj.path))
                        continue
                    known = self._same_file(by_file, hit.host)
                    if known is None:
                        known = _Obj(hit.path, hit.facts, posixpath.dirname(hit.path), obj)
                        self._remember(by_file, hit.host, known)
                    by_name[name] = known
                    if known.facts.soname:
                        by_name.setdefault(known.facts.soname, known)
                resolved.setdefault(name, known.path)
                if id(known) not in seen:
                    seen.add(id(known))
                    order.append(known.path)
                    queue.append(known)
        # ld.so is in memory regardless, but like ldd the search list names it only where an
        # object needs it (libc does).
        return Closure(resolved, tuple(missing), tuple(order))

    def _load_facts(self, host: str | None, path: str) -> ElfFacts:
        if host is None:
            raise ImageError(f"{path} is not a file in {self.root}")
        facts = self._facts(host)
        if facts is None:
            raise ImageError(f"{path} in {self.root} is not an ELF file")
        return facts

    def _safe_facts(self, host: str) -> ElfFacts | None:
        try:
            return self._facts(host)
        except ShimError:
            return None

    @staticmethod
    def _remember(by_file: dict[tuple[int, int], _Obj], host: str | None, obj: _Obj) -> None:
        try:
            st = os.stat(host) if host else None
        except OSError:
            return
        if st is not None:
            by_file.setdefault((st.st_dev, st.st_ino), obj)

    @staticmethod
    def _same_file(by_file: dict[tuple[int, int], _Obj], host: str) -> _Obj | None:
        """The loaded object that is the file at `host`: ld.so compares device and inode."""
        try:
            st = os.stat(host)
        except OSError:
            return None
        return by_file.get((st.st_dev, st.st_ino))
