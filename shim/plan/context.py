"""Both sides of one plan: the container (the mounted image, read through its own loader
rules) and the host (the profile's files, found through the host's loader rules), with the
facts of every ELF file either side reads, read once."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from shim.elf.facts import DynSymbols, ElfFacts, dynamic_symbols, elf_facts
from shim.elf.glibc import libc_release
from shim.elf.loader import Closure, Loader
from shim.elf.rootpath import RootPaths, find_program
from shim.errors import ShimError
from shim.expect.scan import scan_image
from shim.plan.request import PlanRequest

FactsFn = Callable[[str], ElfFacts | None]
# Programs that exist in nearly every image: what the container's search rules are read for
# when the app is static or not given.
_ANCHORS = ("/bin/sh", "/usr/bin/env", "/bin/busybox")


class PlanContext:
    def __init__(self, request: PlanRequest, facts: FactsFn = elf_facts) -> None:
        self.request = request
        self.root = os.path.abspath(request.root)
        self.host_root = request.host.root
        self._facts_fn = facts
        self._facts: dict[str, ElfFacts | None] = {}
        self._symbols: dict[str, DynSymbols | None] = {}
        self.paths = RootPaths(self.root)
        self.host_paths = RootPaths(self.host_root)
        self.container = Loader(self.root, cpu=request.host.cpu, facts=self.cached_facts)
        self.host = Loader(self.host_root, cpu=request.host.cpu, facts=self.cached_facts)
        self.app = find_program(self.paths, request.app, request.path) if request.app else None
        self.app_facts = self.container_facts(self.app) if self.app else None
        dynamic_app = self.app if self.app_facts and self.app_facts.is_dynamic else None
        self.anchor = dynamic_app or next((p for p in _ANCHORS if self.paths.regular_file(p)), None)
        self.anchor_facts = self.container_facts(self.anchor) if self.anchor else None
        self.libc_path = self.find_in_container("libc.so.6")
        self.libc = self.container_facts(self.libc_path) if self.libc_path else None
        self._expectations = None
        self._app_closure: Closure | None = None

    # --- facts -------------------------------------------------------------------------------
    def cached_facts(self, host_path: str) -> ElfFacts | None:
        if host_path not in self._facts:
            try:
                self._facts[host_path] = self._facts_fn(host_path) if os.path.isfile(host_path) else None
            except ShimError:  # malformed ELF: nothing the loader would load either
                self._facts[host_path] = None
        return self._facts[host_path]

    def symbols(self, host_path: str) -> DynSymbols | None:
        if host_path not in self._symbols:
            try:
                self._symbols[host_path] = dynamic_symbols(host_path)
            except (ShimError, OSError):
                self._symbols[host_path] = None
        return self._symbols[host_path]

    def container_facts(self, path: str | None) -> ElfFacts | None:
        return self.cached_facts(self.in_root(path)) if path else None

    def host_facts(self, path: str | None) -> ElfFacts | None:
        return self.cached_facts(self.on_host(path)) if path else None

    # --- paths -------------------------------------------------------------------------------
    def on_host(self, path: str) -> str:
        """This machine's path of a host path: profile paths are in host terms, dependencies
        found by the closure walk are already this machine's."""
        root = os.path.abspath(self.host_root)
        if root != "/" and (path == root or path.startswith(root + "/")):
            return path
        return os.path.join(self.host_root, path.lstrip("/"))

    def host_real(self, path: str) -> str:
        """The host file behind a host path, in host terms (links resolved inside the host root)."""
        return self.host_paths.resolve(path) or path

    def in_root(self, path: str) -> str:
        """This machine's path of a container path (links resolved inside the root)."""
        resolved = self.paths.resolve(path) or path
        return os.path.join(self.root, resolved.lstrip("/"))

    def real_in_root(self, path: str) -> str:
        return self.paths.resolve(path) or path

    # --- the container's loader -------------------------------------------------------------
    def find_in_container(self, name: str) -> str | None:
        """Where the container's loader finds `name` for the app (or /bin/sh)."""
        if not self.anchor_facts or not self.anchor:
            return None
        return self.container.find(name, self.anchor_facts, self.anchor)

    def found_through_cache(self, name: str) -> bool:
        """Does the app (or /bin/sh) get `name` from ld.so.cache, as most distribution builds do?"""
        if not self.anchor_facts:
            return True
        found = self.find_in_container(name)
        return found is not None and found == self.container.ld_cache.lookup(name)

    def container_sonames(self, names: Iterable[str]) -> set[str]:
        return {n for n in names if self.find_in_container(n)}

    def app_closure(self) -> Closure | None:
        """Every object the container's loader loads for the app, None without a dynamic app."""
        if self._app_closure is None and self.app and self.app_facts and self.app_facts.is_dynamic:
            try:
                self._app_closure = self.container.closure(self.app)
            except ShimError:
                return None
        return self._app_closure

    def glibc_description(self) -> str:
        if not self.libc or not self.libc_path:
            return "no glibc found"
        versions = [v for v in self.libc.version_defs if v.startswith("GLIBC_2.")]
        newest = max(versions, key=glibc_version_key, default="?")
        release = libc_release(self.in_root(self.libc_path))
        shown = f"{release[0]}.{release[1]}" if release else newest.removeprefix("GLIBC_")
        return f"glibc {shown} (defines GLIBC_2.2.5 … {newest})"

    def expectations(self):
        """What the image expects of the hardware (CUDA runtime, forward-compat libraries),
        scanned once and only for the rules that ask."""
        if self._expectations is None:
            self._expectations = scan_image(self.root)
        return self._expectations


def glibc_version_key(version: str) -> tuple[int, ...]:
    """GLIBC_2.34 -> (2, 34), for ordering symbol versions."""
    return tuple(int(x) for x in version.removeprefix("GLIBC_").split(".") if x.isdigit())
