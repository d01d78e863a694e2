"""The injection plan: a decision for every host library a profile offers, from ELF facts.

Pure over data: the container is a directory tree (the mounted image), the host is "/" (or a
host root for tests). Nothing here mounts or launches.

Rules (README, "Injection"):
- refuse when the ELF class/machine/byte order differs from the container's libc; when a
  required symbol version is not defined by what would provide it in the container; when
  GLIBC_PRIVATE is required; when a dependency is found neither in the container nor on the host;
  when the MPI family (or major) differs; when the app imports MPI_* symbols the host library
  does not export. A refusal refuses the whole profile: never a half-injected stack.
- skip glibc (unless the site opted in), identical files, and libraries nothing in the image uses.
- inject otherwise: the host file is bound over the file the container's loader finds for every
  name container binaries ask for; dependencies the container lacks (or has too old) go beside
  it; $ORIGIN-relative RUNPATH directories are bound beside it so the host build finds its own
  pieces (e.g. MPICH's bundled libfabric/UCX).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shim.plan.knowledge import is_glibc, mpi_abi
from shim.plan.model import INJECT, REFUSE, SKIP, WARNING, BindSpec, Decision, Diagnostic, Plan

INJECT_DIR = "/.shim/inject"  # injected host libraries: one directory per profile
LD_CACHE = "/etc/ld.so.cache"
MPI_SYMBOL = re.compile(r"^P?MPIX?_[A-Z]")
# The MPI library names a container may carry, probed to tell its MPI family.
MPI_PROBES = ("libmpi.so.12", "libmpich.so.12", "libmpi.so.40", "libmpi.so.20", "libmpi_abi.so.1", "libmpi_abi.so")


@dataclass
class _Work:
    """What one profile would inject, collected before it is accepted or refused as a whole."""

    decisions: list[Decision] = field(default_factory=list)
    binds: list[BindSpec] = field(default_factory=list)
    refusals: list[Diagnostic] = field(default_factory=list)
    cache: dict[str, str] = field(default_factory=dict)  # SONAME -> container path, for ld.so.cache


class Planner:
    def __init__(self, root: str, host_root: str = "/", app: str | None = None, path: str = "",
                 facts: Callable | None = None, symbols: Callable | None = None) -> None:
        from shim.elf.facts import dynamic_symbols, elf_facts
        from shim.elf.loader import Loader

        self.root = root
        self.host_root = host_root
        self._facts_fn = facts or elf_facts
        self._symbols_fn = symbols or dynamic_symbols
        self._facts: dict[str, object] = {}
        self.container = Loader(root, facts=self._cached)
        self.host = Loader(host_root, facts=self._cached)
        self.app = self._find_app(app, path) if app else None
        self.app_facts = self._container_facts(self.app) if self.app else None
        anchor = self.app if self.app_facts and self.app_facts.is_dynamic else self._first_existing(
            ("/bin/sh", "/usr/bin/env", "/bin/busybox"))
        self.anchor = anchor
        self.anchor_facts = self._container_facts(anchor) if anchor else None
        self.libc_path = self._find_in_container("libc.so.6")
        self.libc = self._container_facts(self.libc_path) if self.libc_path else None

    # --- facts -----------------------------------------------------------------------------
    def _cached(self, host_path: str):
        if host_path not in self._facts:
            self._facts[host_path] = self._facts_fn(host_path) if os.path.isfile(host_path) else None
        return self._facts[host_path]

    def _container_facts(self, path: str | None):
        return self._cached(self._in_root(path)) if path else None

    def _host_facts(self, path: str | None):
        return self._cached(os.path.join(self.host_root, path.lstrip("/"))) if path else None

    def _in_root(self, path: str) -> str:
        from shim.elf.rootpath import RootPaths

        resolved = RootPaths(self.root).resolve(path) or path
        return os.path.join(self.root, resolved.lstrip("/"))

    def _first_existing(self, paths: Iterable[str]) -> str | None:
        return next((p for p in paths if os.path.isfile(self._in_root(p))), None)

    def _find_app(self, name: str, path: str) -> str | None:
        if "/" in name:
            return name if os.path.isfile(self._in_root(name)) else None
        return self._first_existing(os.path.join(d or ".", name) for d in path.split(":"))

    def _find_in_container(self, name: str) -> str | None:
        if not self.anchor_facts:
            return None
        return self.container.find(name, self.anchor_facts, self.anchor)

    # --- the container's side --------------------------------------------------------------
    def container_sonames(self, names: Iterable[str]) -> set[str]:
        return {n for n in names if self._find_in_container(n)}

    def glibc_description(self) -> str:
        if not self.libc:
            return "no glibc found"
        versions = [v for v in self.libc.version_defs if v.startswith("GLIBC_2.")]
        newest = max(versions, key=lambda v: tuple(int(x) for x in re.findall(r"\d+", v)), default="?")
        # A release that adds no symbols has no version node of its own (2.31 defines up to
        # GLIBC_2.30): the release is in libc's banner string.
        release = _glibc_release(self._in_root(self.libc_path)) or newest.removeprefix("GLIBC_")
        return f"glibc {release} (defines GLIBC_2.2.5 … {newest})"

    # --- one profile -------------------------------------------------------------------------
    def plan_profile(self, profile) -> _Work:
        work = _Work()
        libs = [(spec, m) for spec in profile.provides.libraries for m in spec.matches]
        container_mpi = {n: self._find_in_container(n) for n in MPI_PROBES} if profile.kind == "mpi" else {}
        container_mpi = {n: p for n, p in container_mpi.items() if p}
        used_any = False
        for spec, host_path in libs:
            facts = self._host_facts(host_path)
            soname = (facts.soname if facts else None) or os.path.basename(host_path)
            key = f"{profile.file}: provides.libraries ({spec.entry})"
            if facts is None:
                self._refuse(work, profile, soname, host_path, "", "NOT-ELF", f"{host_path} is not an ELF file",
                             "fix the profile", key)
                continue
            if is_glibc(soname) and not profile.glibc_replacement:
                work.decisions.append(Decision(soname, host_path, "", SKIP, "part of glibc: the container's own "
                                               "C library is used", profile.name))
                continue
            if self.libc and (facts.elf_class, facts.machine, facts.byte_order) != (
                    self.libc.elf_class, self.libc.machine, self.libc.byte_order):
                self._refuse(work, profile, soname, host_path, "", "LIB-ARCH-MISMATCH",
                             f"{soname} is {facts.elf_class}-bit {facts.machine} {facts.byte_order}-endian, the "
                             f"container's libc is {self.libc.elf_class}-bit {self.libc.machine} "
                             f"{self.libc.byte_order}-endian", "use an image of the host's architecture", key)
                continue
            names = self._names_for(soname, profile)
            targets = {n: self._find_in_container(n) for n in names}
            targets = {n: p for n, p in targets.items() if p}
            host_abi = mpi_abi(soname)
            if profile.kind == "mpi" and host_abi and not targets and container_mpi:
                other, where = next(iter(container_mpi.items()))
                theirs = mpi_abi(other)
                self._refuse(work, profile, soname, host_path, where, "MPI-ABI-MISMATCH",
                             f"host MPI is {host_abi.describe(soname)}, the image's MPI is "
                             f"{theirs.describe(other) if theirs else other} at {where}: the ABIs differ",
                             f"rebuild the app against an {host_abi.label} MPI, or run with --no-profiles "
                             "to use the image's own MPI", key)
                continue
            if not targets:
                work.decisions.append(Decision(soname, host_path, "", SKIP,
                                               f"nothing in the image uses {' or '.join(names)}", profile.name))
                continue
            used_any = True
            for name, target in targets.items():
                self._inject_at(work, profile, key, soname, host_path, facts, name, target)
        if profile.kind == "mpi" and used_any and not work.refusals:
            self._check_mpi_symbols(work, profile, libs)
        self._profile_extras(work, profile)
        return work

    def _found_through_cache(self, name: str) -> bool:
        """Does the app (or /bin/sh) get `name` from ld.so.cache, as most distribution builds do?"""
        if not self.anchor_facts:
            return True
        found = self._find_in_container(name)
        cached = self.container.ld_cache.lookup(name)
        return found is not None and found == cached

    def cache_file(self, repoint: dict[str, str]) -> bytes:
        """The image's ld.so.cache with `repoint` (SONAME -> container path) applied."""
        from shim.elf.ldcache import CacheEntry
        from shim.elf.ldcache_write import write_ld_cache

        entries = list(self.container.ld_cache.entries)
        flags = next((e.flags for e in entries if e.key == "libc.so.6"), 0x303)
        kept = [e for e in entries if e.key not in repoint]
        for soname, path in repoint.items():
            same = [e for e in entries if e.key == soname]
            kept.append(CacheEntry(same[0].flags if same else flags, soname, path))
        return write_ld_cache(kept)

    def _names_for(self, soname: str, profile) -> list[str]:
        """Every name container binaries may ask for that this library stands in for
        (Debian's MPICH apps ask for libmpich.so.12, the host ships libmpi.so.12)."""
        names = [soname]
        mine = mpi_abi(soname)
        for r in profile.replaces:
            theirs = mpi_abi(r)
            if r != soname and mine and theirs and (theirs.family, theirs.major) == (mine.family, mine.major) \
                    and r.split(".so")[0] in ("libmpi", "libmpich"):
                names.append(r)
        return names

    def _inject_at(self, work: _Work, profile, key: str, soname: str, host_path: str, facts, name: str,
                   target: str) -> None:
        from shim.elf.rootpath import RootPaths

        real = RootPaths(self.root).resolve(target) or target
        container_facts = self._container_facts(real)
        if container_facts and container_facts.elf_class and mpi_abi(soname) and container_facts.soname:
            mine, theirs = mpi_abi(soname), mpi_abi(container_facts.soname)
            if theirs and mine and (theirs.family != mine.family or theirs.major != mine.major):
                self._refuse(work, profile, soname, host_path, real, "MPI-ABI-MISMATCH",
                             f"host MPI is {mine.describe(soname)}, the image's {name} is "
                             f"{theirs.describe(container_facts.soname)}", "use the image's own MPI "
                             "(--no-profiles)", key)
                return
        if _same_file(host_path, self._in_root(real)):
            work.decisions.append(Decision(name, host_path, real, SKIP, "the image already has an identical file",
                                           profile.name))
            return
        # Placed in a directory of its own, so that its $ORIGIN holds only what came with it;
        # the container's loader finds it there through the re-pointed ld.so.cache.
        placed_dir = f"{INJECT_DIR}/{profile.name}"
        placed = f"{placed_dir}/{os.path.basename(host_path)}"
        if not any(b.dst == placed for b in work.binds):
            origin_binds = self._origin_dirs(facts, host_path, placed_dir)
            provided = {os.path.basename(p) for p in _listdirs([b.src for b in origin_binds])}
            extra = self._closure(work, profile, key, host_path, facts, placed_dir, provided)
            if extra is None:
                return
            work.binds.append(BindSpec(host_path, placed))
            work.binds.extend(b for b in origin_binds if b not in work.binds)
        work.cache[name] = placed
        via_cache = self._found_through_cache(name)
        if not via_cache:
            # The app finds it through RPATH/RUNPATH/LD_LIBRARY_PATH, not the cache: the only
            # way in is over the file it finds (the host library's $ORIGIN is then that directory).
            work.binds.append(BindSpec(host_path, real))
        work.decisions.append(Decision(name, host_path, placed if via_cache else real, INJECT,
                                       f"stands in for the image's {name} ({real})", profile.name))

    def _origin_dirs(self, facts, host_path: str, placed_dir: str) -> list[BindSpec]:
        """RUNPATH/RPATH entries relative to $ORIGIN: the same directories beside the new place."""
        out = []
        for entry in (facts.runpath or facts.rpath):
            m = re.match(r"^\$(?:ORIGIN|\{ORIGIN\})(/.*)?$", entry)
            if not m:
                continue
            rel = (m.group(1) or "").strip("/")
            src = os.path.normpath(os.path.join(os.path.dirname(host_path), rel))
            if rel and os.path.isdir(src):
                out.append(BindSpec(src, os.path.normpath(os.path.join(placed_dir, rel))))
        return out

    def _closure(self, work: _Work, profile, key: str, host_path: str, facts, placed_dir: str,
                 provided: set[str]) -> list[str] | None:
        """Check every dependency of the library (transitively on the host side) against the
        container; put what the container lacks (or has too old) beside it. None: refused."""
        todo, seen, extra = [(host_path, facts)], {host_path}, []
        while todo:
            path, f = todo.pop()
            if not self._versions_ok(work, profile, key, path, f, provided):
                return None
            for dep in f.needed:
                if is_glibc(dep) or dep in provided:
                    continue
                inside = self._find_in_container(dep)
                host_dep = self.host.find(dep, f, path)
                if inside and (host_dep is None or self._provider_ok(f, dep, inside)):
                    continue  # the container's copy serves
                if host_dep is None:
                    self._refuse(work, profile, os.path.basename(host_path), host_path, "", "DEPENDENCY-MISSING",
                                 f"{dep} (needed by {os.path.basename(path)}) is found neither in the container "
                                 "nor on the host", "install it on the host or in the image", key)
                    return None
                real_dep = os.path.realpath(os.path.join(self.host_root, host_dep.lstrip("/")))
                if real_dep in seen:
                    continue
                seen.add(real_dep)
                dst = os.path.join(placed_dir, dep)
                work.cache[dep] = dst
                why = (f"the image's {dep} lacks a version {os.path.basename(path)} needs" if inside
                       else "the image has none")
                work.decisions.append(Decision(dep, real_dep, dst, INJECT, f"needed by {os.path.basename(path)}; "
                                               f"{why}", profile.name))
                work.binds.append(BindSpec(real_dep, dst))
                extra.append(dep)
                provided.add(dep)
                dep_facts = self._host_facts(host_dep)
                if dep_facts:
                    todo.append((real_dep, dep_facts))
        return extra

    def _provider_ok(self, requester, dep: str, inside: str) -> bool:
        need = next((n for n in requester.version_needs if n.file == dep), None)
        if need is None:
            return True
        have = self._container_facts(inside)
        defined = set(have.version_defs) if have else set()
        return all(weak or v in defined for v, weak in need.versions)

    def _versions_ok(self, work: _Work, profile, key: str, path: str, f, provided: set[str]) -> bool:
        for need in f.version_needs:
            if need.file in provided:
                continue
            inside = self._find_in_container(need.file)
            if inside is None:
                if is_glibc(need.file):
                    self._refuse(work, profile, os.path.basename(path), path, "", "DEPENDENCY-MISSING",
                                 f"{need.file} (needed by {os.path.basename(path)}) is not in the container",
                                 "use an image with a complete glibc", key)
                    return False
                continue  # a non-glibc dependency: the closure walk injects the host's copy
            have = self._container_facts(inside)
            defined = set(have.version_defs) if have else set()
            for version, weak in need.versions:
                if weak or version in defined:
                    continue
                if not is_glibc(need.file):
                    continue  # the closure walk injects the host's newer copy instead
                if version == "GLIBC_PRIVATE":
                    self._refuse(work, profile, os.path.basename(path), path, "", "GLIBC-PRIVATE",
                                 f"{os.path.basename(path)} requires GLIBC_PRIVATE from {need.file}: it is tied to "
                                 "the host's exact glibc build", "only whole-glibc replacement could work", key)
                    return False
                self._refuse(work, profile, os.path.basename(path), path, "", "GLIBC-TOO-OLD",
                             f"version `{version}' not found (required by {os.path.basename(path)}): the "
                             f"container has {self.glibc_description()}",
                             "use an image with a newer glibc, or a host build for an older glibc", key)
                return False
        return True

    def _check_mpi_symbols(self, work: _Work, profile, libs) -> None:
        if not self.app_facts or not self.app_facts.is_dynamic:
            return
        app_syms = self._symbols_fn(self._in_root(self.app))
        wanted = {s for s in (app_syms.undefined if app_syms else ()) if MPI_SYMBOL.match(s)}
        if not wanted:
            return
        exported: set[str] = set()
        for _spec, host_path in libs:
            syms = self._symbols_fn(host_path)
            if syms:
                exported |= syms.defined
        missing = sorted(wanted - exported)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            self._refuse(work, profile, "MPI symbols", ", ".join(h for _s, h in libs[:1]), self.app,
                         "MPI-SYMBOLS-MISSING", f"{self.app} imports {shown}, which the host MPI does not export",
                         "use the image's own MPI (--no-profiles) or a host MPI exporting them",
                         f"{profile.file}: provides.libraries")

    def _profile_extras(self, work: _Work, profile) -> None:
        p = profile.provides
        for spec in (*p.plugin_dirs, *p.binaries, *p.config_files):
            for m in spec.matches:
                work.binds.append(BindSpec(m, m))
        for spec in p.devices:
            for m in spec.matches:
                work.binds.append(BindSpec(m, m, read_only=False, device=True))
        for b in p.binds:
            work.binds.append(BindSpec(b.src, b.dst, b.read_only))

    def _refuse(self, work: _Work, profile, library: str, host_path: str, container_path: str, code: str,
                message: str, hint: str, admin_key: str) -> None:
        work.decisions.append(Decision(library, host_path, container_path, REFUSE, f"{code}: {message}",
                                       profile.name))
        work.refusals.append(Diagnostic(code, WARNING, message, f"{hint}; the image's own libraries are used",
                                        admin_key))


def _glibc_release(libc: str) -> str | None:
    """The release in libc's banner ("... stable release version 2.31."), None if not found."""
    import mmap

    try:
        with open(libc, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            at = m.find(b"release version ")
            if at < 0:
                return None
            found = re.match(rb"release version (\d+\.\d+)", m[at:at + 32])
    except (OSError, ValueError):
        return None
    return found.group(1).decode() if found else None


def _same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    if sa.st_size != sb.st_size:
        return False
    return _digest(a) == _digest(b)


def _digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _listdirs(dirs: list[str]) -> list[str]:
    out = []
    for d in dirs:
        try:
            out += [os.path.join(d, n) for n in os.listdir(d)]
        except OSError:
            continue
    return out


def plan_for_image(root: str, image_label: str, profiles, requested: list[str], no_profiles: bool,
                   command: list[str], path: str, host_root: str = "/", scratch: str | None = None,
                   refusal_severity: str = WARNING, use_cache: bool = True, stats: dict | None = None) -> Plan:
    """The whole plan for one launch (or `check`), from the plan cache when nothing it depends
    on changed. The re-pointed ld.so.cache is written into `scratch` (the launch's private tmpfs)."""
    from shim.plan.cache import load_plan, plan_key, store_plan

    key = plan_key(image_label, profiles, requested, no_profiles, command, path, refusal_severity,
                   host_root) if use_cache and profiles is not None else None
    hit = load_plan(key) if key else None
    if hit:
        plan, ld_cache = hit
    else:
        plan, ld_cache = compute_plan(root, image_label, profiles, requested, no_profiles, command, path,
                                      host_root, refusal_severity)
        if key:
            store_plan(key, plan, ld_cache)
    if stats is not None:
        stats["plan_cache"] = "hit" if hit else ("miss" if key else "off")
    if ld_cache and scratch:
        cache_path = os.path.join(scratch, "ld.so.cache")
        with open(cache_path, "wb") as f:
            f.write(ld_cache)
        plan.binds.append(BindSpec(cache_path, LD_CACHE))
    return plan


def compute_plan(root: str, image_label: str, profiles, requested: list[str], no_profiles: bool,
                 command: list[str], path: str, host_root: str = "/",
                 refusal_severity: str = WARNING) -> tuple[Plan, bytes | None]:
    """Select profiles, then plan each: the plan and the re-pointed ld.so.cache (None: unchanged)."""
    from shim.elf.cache import FactsCache
    from shim.elf.facts import elf_facts

    plan = Plan(image=image_label)
    if profiles is None:
        return plan, None
    # Host files keep their identity between runs: their facts are cached per user. The image's
    # files get a new st_dev with every mount, so caching them would only churn the cache.
    host_facts = FactsCache()
    inside = os.path.join(os.path.realpath(root), "")

    def facts(p: str):
        return elf_facts(p) if os.path.realpath(p).startswith(inside) else host_facts.get(p)

    planner = Planner(root, host_root=host_root, app=command[0] if command else None, path=path, facts=facts)
    image_sonames = planner.container_sonames({r for p in profiles.profiles for r in p.replaces})
    repoint: dict[str, str] = {}
    for sel in profiles.select(requested, no_profiles, image_sonames):
        if not sel.applies:
            continue
        plan.profiles.append(sel.profile.name)
        work = planner.plan_profile(sel.profile)
        if work.refusals:
            # Never a half-injected stack: one refusal refuses the whole profile.
            first = work.refusals[0]
            for d in work.decisions:
                if d.decision == INJECT:
                    plan.decisions.append(Decision(d.library, d.host_path, d.container_path, REFUSE,
                                                   f"profile {sel.profile.name} refused: {first.code}", d.profile))
                else:
                    plan.decisions.append(d)
            plan.diagnostics.extend(dataclasses.replace(d, severity=refusal_severity) for d in work.refusals)
            continue
        plan.decisions.extend(work.decisions)
        plan.binds.extend(work.binds)
        repoint.update(work.cache)
        env = sel.profile.env
        plan.env_set.update(dict(env.set))
        plan.env_prepend.update(dict(env.prepend))
        plan.env_append.update(dict(env.append))
        plan.env_unset.extend(env.unset)
    host_facts.save()
    return plan, planner.cache_file(repoint) if repoint else None
