"""Where an injected library goes, and how the container's loader finds it.

Each injected library is bound into a directory of its own, /.shim/inject/<profile>/, with its
$ORIGIN-relative RUNPATH directories beside it (so its $ORIGIN holds only what came with it);
the image's ld.so.cache is re-pointed so every name container binaries ask for leads there.
Only where the app finds the name through RPATH/RUNPATH/LD_LIBRARY_PATH instead of the cache is
the host file bound over the image's file.
"""

from __future__ import annotations

import hashlib
import os
import re

from shim.elf.ldcache import CacheEntry
from shim.elf.ldcache_write import write_ld_cache
from shim.plan.closure import inject_dependencies
from shim.plan.context import PlanContext
from shim.plan.job import OfferedLib, ProfileJob
from shim.plan.model import BindSpec

_ORIGIN = re.compile(r"^\$(?:ORIGIN|\{ORIGIN\})(/.*)?$")


def inject_at(job: ProfileJob, lib: OfferedLib, name: str, target: str | None, reason: str) -> None:
    """Inject `lib` for the name `name`, over the image's file `target` (a container path), or,
    target None, where the image has none (then `reason` says why it is injected anyway)."""
    ctx = job.ctx
    real = ctx.real_in_root(target) if target else ""
    if real and same_file(ctx.on_host(lib.host_path), ctx.in_root(real)):
        job.skip(name, lib, real, "the image already has an identical file")
        return
    placed = job.placed_at(lib)
    if placed not in job.work.injected:
        origin_binds = origin_dirs(ctx, lib, os.path.dirname(placed))
        provided = {os.path.basename(p) for p in _listdirs([ctx.on_host(b.src) for b in origin_binds])}
        if not inject_dependencies(job, lib, provided):
            return
        job.work.binds.append(BindSpec(lib.host_path, placed))
        job.work.injected[placed] = lib.host_path
        job.work.binds.extend(b for b in origin_binds if b not in job.work.binds)
    job.work.cache[name] = placed
    # Its own SONAME leads there too: the host's tools bound beside it (mpichversion) and
    # dlopen("libmpi.so.12") find it although the image calls it libmpich.so.12.
    job.work.cache.setdefault(lib.soname, placed)
    if not real:
        job.inject(name, lib, placed, f"{reason}; the image has no {name}")
        return
    if not ctx.found_through_cache(name):
        # The app finds it through RPATH/RUNPATH/LD_LIBRARY_PATH, not the cache: the only way
        # in is over the file it finds (the host library's $ORIGIN is then that directory).
        job.work.binds.append(BindSpec(lib.host_path, real))
        job.work.injected[real] = lib.host_path
        placed = real
    job.inject(name, lib, placed, f"stands in for the image's {name} ({real}){reason}")


def origin_dirs(ctx: PlanContext, lib: OfferedLib, placed_dir: str) -> list[BindSpec]:
    """RUNPATH/RPATH entries relative to $ORIGIN: the same directories beside the new place."""
    assert lib.facts is not None
    out = []
    for entry in (lib.facts.runpath or lib.facts.rpath):
        m = _ORIGIN.match(entry)
        rel = (m.group(1) or "").strip("/") if m else ""
        if not rel:
            continue
        src = os.path.normpath(os.path.join(os.path.dirname(lib.host_path), rel))
        if os.path.isdir(ctx.on_host(src)):
            out.append(BindSpec(src, os.path.normpath(os.path.join(placed_dir, rel))))
    return out


def cache_file(ctx: PlanContext, repoint: dict[str, str]) -> bytes:
    """The image's ld.so.cache with `repoint` (SONAME -> container path) applied."""
    entries = list(ctx.container.ld_cache.entries)
    flags = next((e.flags for e in entries if e.key == "libc.so.6"), 0x303)
    kept = [e for e in entries if e.key not in repoint]
    for soname, path in repoint.items():
        same = [e for e in entries if e.key == soname]
        kept.append(CacheEntry(same[0].flags if same else flags, soname, path))
    return write_ld_cache(kept)


def same_file(a: str, b: str) -> bool:
    try:
        sa, sb = os.stat(a), os.stat(b)
    except OSError:
        return False
    return sa.st_size == sb.st_size and _digest(a) == _digest(b)


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
