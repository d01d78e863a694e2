"""Cache of whole injection plans, so a warm launch does no ELF parsing at all.

The key is a hash of what is known before planning: the image (path and file identity), the
profiles (their text and the host files they name), the host's ld.so.cache, the command and
PATH, the refusal policy, and the planner's host facts (CPU, NVIDIA module, GPU models). An
entry also lists what the planner read while computing it (shim.elf.rootpath.recording): every
host path, and for a directory image every path inside it, with its identity; a load revalidates
that list with one lstat per path, so a library replaced inside a directory image, or a host
dependency updated, is a miss. A file's identity is (dev, ino, mode, size, mtime_ns).

One file per key under $SHIMRUN_CACHE/plans, written to a temporary name and renamed into place:
concurrent writers (64 ranks of one step) each write a whole file and the last rename wins, all
with the same content. A torn, foreign or unreadable entry is a miss, never an error.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass

from shim import __version__
from shim.cachefiles import cache_path, file_identity, read_trusted, write_atomic
from shim.elf.ldcache import CACHE_FILE
from shim.elf.rootpath import changed
from shim.plan.model import Plan
from shim.plan.request import PlanRequest

_FORMAT = 3
PLANS_DIR = "plans"


@dataclass(frozen=True)
class CachedPlan:
    plan: Plan
    ld_cache: bytes | None      # the re-pointed ld.so.cache, None when the image's is kept
    image_reads: dict           # {relative path: identity} inside a directory image ({} otherwise)
    host_reads: dict            # {host root: {relative path: identity}}


def entry_path(key: str) -> str | None:
    return cache_path(PLANS_DIR, f"{key}.json")


def plan_key(request: PlanRequest) -> str:
    """The hash of everything a plan is computed from that is known before planning."""
    host_root = request.host.root
    files: dict[str, object] = {}
    for p in (request.profiles.profiles if request.profiles else ()):
        files[p.file] = file_identity(p.file)
        pv = p.provides
        for spec in (*pv.libraries, *pv.plugin_dirs, *pv.binaries, *pv.config_files, *pv.devices):
            for m in spec.matches:
                files[m] = file_identity(os.path.join(host_root, m.lstrip("/")))
    doc = {
        "format": _FORMAT, "shim": __version__,
        "image": [os.path.realpath(request.image), file_identity(request.image)],
        "profiles": sorted(files.items()), "requested": list(request.requested), "no_profiles": request.no_profiles,
        "command": list(request.command[:1]), "path": request.path, "refusal": request.refusal_severity,
        # A CDI device set's profile is made from its spec, not a profile file: what it says, too.
        "cdi": [repr((p.placed, p.hooks, p.env)) for p in (request.profiles.profiles if request.profiles else ())
                if p.hooks is not None],
        "host": request.host.key(), "host_ld_cache": file_identity(os.path.join(host_root, CACHE_FILE.lstrip("/"))),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load_plan(key: str, image_root: str) -> CachedPlan | None:
    """The cached plan if every input it recorded is unchanged (the image's paths looked up
    under `image_root`, where the image is now), else None."""
    try:
        raw = read_trusted(entry_path(key))
        if raw is None:
            return None
        doc = json.loads(raw)
        if doc.get("format") != _FORMAT or doc.get("key") != key:
            return None
        image_reads, host_reads = dict(doc["image_reads"]), dict(doc["host_reads"])
        if changed({image_root: image_reads}) or changed(host_reads):
            return None
        ld_cache = doc.get("ld_cache")
        return CachedPlan(Plan.from_dict(doc["plan"]), base64.b64decode(ld_cache) if ld_cache else None,
                          image_reads, host_reads)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def store_plan(key: str, entry: CachedPlan) -> bool:
    """Write the entry atomically; False when it could not be written."""
    doc = {"format": _FORMAT, "key": key, "plan": entry.plan.to_dict(),
           "ld_cache": base64.b64encode(entry.ld_cache).decode() if entry.ld_cache else None,
           "image_reads": entry.image_reads, "host_reads": entry.host_reads}
    return write_atomic(entry_path(key), json.dumps(doc, separators=(",", ":")).encode())
