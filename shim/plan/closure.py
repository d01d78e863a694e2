"""A host library's dependencies against the container: every DT_NEEDED of it (and of what it
brings, transitively) is served by the container's copy when that copy defines the symbol
versions asked for; otherwise the host's copy goes beside the library. Requirements on glibc
cannot be met that way (glibc is never injected): every glibc version the whole closure needs
and the container's glibc lacks is collected, and the profile refused with the newest one named."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from shim.elf.facts import ElfFacts
from shim.knowledge.abi import is_glibc
from shim.plan.context import glibc_version_key
from shim.plan.job import OfferedLib, ProfileJob, subject
from shim.plan.model import BindSpec

SHOWN = 3  # libraries named besides the one needing the newest version


@dataclass
class _Walk:
    lib: OfferedLib
    provided: set[str]                                   # names found beside the library ($ORIGIN dirs, injected)
    seen: set[str] = field(default_factory=set)          # host files walked (real paths, host terms)
    too_old: dict[str, list[str]] = field(default_factory=dict)   # object -> glibc versions the container lacks


def inject_dependencies(job: ProfileJob, lib: OfferedLib, provided: set[str]) -> bool:
    """Check and complete the closure of `lib`; False when the profile is refused."""
    assert lib.facts is not None
    walk = _Walk(lib, provided, {job.ctx.host_real(lib.host_path)})
    todo: list[tuple[str, ElfFacts]] = [(lib.host_path, lib.facts)]
    while todo:
        path, facts = todo.pop()
        if not _glibc_versions(job, walk, path, facts):
            return False
        for dep in facts.needed:
            found = _dependency(job, walk, (path, facts), dep)
            if found is False:
                return False
            if found is not None:
                todo.append(found)
    if walk.too_old:
        _refuse_too_old(job, walk)
        return False
    return True


def _dependency(job: ProfileJob, walk: _Walk, requester: tuple[str, ElfFacts], dep: str):
    """None: served (by the container, or already beside the library); (host path, facts) of a
    host copy put beside it, to walk next; False: refused."""
    ctx = job.ctx
    path, facts = requester
    if is_glibc(dep) or dep in walk.provided or job.offered(dep):
        return None  # the profile's own libraries are planned (and injected when needed) by core.py
    inside = ctx.find_in_container(dep)
    host_dep = ctx.host.find(dep, facts, path)
    if inside and (host_dep is None or _serves(job, facts, dep, inside)):
        return None  # the container's copy serves
    if host_dep is None:
        job.refuse("DEPENDENCY-MISSING", subject(walk.lib),
                   f"{dep} (needed by {os.path.basename(path)}) is found neither in the container nor on the host",
                   "install it on the host or in the image", job.key(walk.lib))
        return False
    real = ctx.host_real(host_dep)
    if real in walk.seen:
        return None
    walk.seen.add(real)
    dst = f"{job.placed_dir}/{dep}"
    job.work.cache[dep] = dst
    job.work.injected[dst] = real
    why = f"the image's {dep} lacks a version {os.path.basename(path)} needs" if inside else "the image has none"
    job.inject(dep, real, dst, f"needed by {os.path.basename(path)}; {why}")
    job.work.binds.append(BindSpec(real, dst))
    walk.provided.add(dep)
    dep_facts = ctx.host_facts(host_dep)
    return (real, dep_facts) if dep_facts else None


def _serves(job: ProfileJob, requester: ElfFacts, dep: str, inside: str) -> bool:
    """Does the container's copy of `dep` define every version `requester` asks of it?"""
    need = next((n for n in requester.version_needs if n.file == dep), None)
    if need is None:
        return True
    have = job.ctx.container_facts(inside)
    defined = set(have.version_defs) if have else set()
    return all(weak or v in defined for v, weak in need.versions)


def _glibc_versions(job: ProfileJob, walk: _Walk, path: str, facts: ElfFacts) -> bool:
    """Note the glibc versions `facts` needs that the container lacks; False when refused outright."""
    ctx, name = job.ctx, facts.soname or os.path.basename(path)
    for need in facts.version_needs:
        if need.file in walk.provided or not is_glibc(need.file):
            continue  # a non-glibc dependency: the closure walk injects the host's copy if needed
        inside = ctx.find_in_container(need.file)
        if inside is None:
            job.refuse("DEPENDENCY-MISSING", subject(walk.lib),
                       f"{need.file} (needed by {name}) is not in the container", "use an image with a complete glibc",
                       job.key(walk.lib))
            return False
        have = ctx.container_facts(inside)
        defined = set(have.version_defs) if have else set()
        for version, weak in need.versions:
            if weak or version in defined:
                continue
            if version == "GLIBC_PRIVATE":
                job.refuse("GLIBC-PRIVATE", subject(walk.lib),
                           f"{name} requires GLIBC_PRIVATE from {need.file}: it is tied to the host's exact "
                           "glibc build",
                           "use a host build of this library that does not use glibc internals", job.key(walk.lib))
                return False
            missing = walk.too_old.setdefault(name, [])
            if version not in missing:
                missing.append(version)
    return True


def _refuse_too_old(job: ProfileJob, walk: _Walk) -> None:
    """One line: the newest version needed, by whom, how many are missing, who else needs some."""
    every = sorted({v for vs in walk.too_old.values() for v in vs}, key=glibc_version_key)
    newest = every[-1]
    who = next(n for n, vs in walk.too_old.items() if newest in vs)
    others = [f"{n} up to {max(vs, key=glibc_version_key)}" for n, vs in walk.too_old.items() if n != who]
    count = f"{len(every)} versions missing: {', '.join(every)}" if len(every) > 1 else "the only one missing"
    shown = others[:SHOWN] + ([f"{len(others) - SHOWN} more"] if len(others) > SHOWN else [])
    also = f"; also needed by {', '.join(shown)}" if others else ""
    job.refuse("GLIBC-TOO-OLD", subject(walk.lib),
               f"version `{newest}' not found (required by {who}; {count}{also}): the container has "
               f"{job.ctx.glibc_description()}",
               f"use an image with glibc >= {newest.removeprefix('GLIBC_')}, or a host build for an older glibc",
               job.key(walk.lib))
