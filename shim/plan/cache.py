"""Cache of whole injection plans, so a warm launch does no ELF parsing at all.

A plan depends on the image, the profiles (their text and the host files they name), the host's
ld.so.cache (where host dependencies are found), the command and PATH, and the refusal policy.
The key is a hash of all of those; a file's identity is (st_dev, st_ino, st_size, st_mtime_ns),
so a rebuilt image or an updated host library is a new key. The entry holds the plan as JSON and
the re-pointed ld.so.cache it needs. One file per key under $SHIMRUN_CACHE/plans, written to a
temporary name and renamed into place: concurrent writers (64 ranks of one step) each write a
whole file and the last rename wins, all with the same content. A torn, foreign or unreadable
entry is a miss, never an error.
"""

from __future__ import annotations

import base64
import glob
import hashlib
import json
import os
from collections.abc import Iterable

from shim.cachefiles import file_identity
from shim.plan.model import Plan

_FORMAT = 1
PLANS_DIR = "plans"


def cache_dir() -> str:
    from shim.cachefiles import cache_base

    return os.path.join(cache_base(), PLANS_DIR)


def _small(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(4096).decode("utf-8", "replace")
    except OSError:
        return ""


def plan_key(image_path: str, profiles, requested: Iterable[str], no_profiles: bool, command: list[str],
             path: str, refusal_severity: str, host_root: str = "/") -> str:
    """The hash of everything a plan is computed from (see the module docstring)."""
    from shim import __version__

    files: dict[str, object] = {}
    for p in (profiles.profiles if profiles else ()):
        files[p.file] = file_identity(p.file)
        pv = p.provides
        for spec in (*pv.libraries, *pv.plugin_dirs, *pv.binaries, *pv.config_files, *pv.devices):
            for m in spec.matches:
                files[m] = file_identity(os.path.join(host_root, m.lstrip("/")))
    doc = {
        "format": _FORMAT, "shim": __version__, "image": [os.path.realpath(image_path), file_identity(image_path)],
        "profiles": sorted(files.items()), "requested": list(requested), "no_profiles": no_profiles,
        "command": command[:1], "path": path, "refusal": refusal_severity, "host_root": host_root,
        "host_ld_cache": file_identity(os.path.join(host_root, "etc/ld.so.cache")),
        # GPU profiles are checked against the loaded kernel module and the GPU models.
        "nvidia": _small(os.path.join(host_root, "proc/driver/nvidia/version")),
        "gpus": sorted(_small(p) for p in glob.glob(os.path.join(host_root, "proc/driver/nvidia/gpus/*/information"))),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:32]


def load_plan(key: str) -> tuple[Plan, bytes | None] | None:
    """The cached plan and its ld.so.cache bytes, or None on a miss."""
    try:
        with open(os.path.join(cache_dir(), f"{key}.json"), "rb") as f:
            doc = json.load(f)
        if doc.get("format") != _FORMAT or doc.get("key") != key:
            return None
        ld_cache = doc.get("ld_cache")
        return Plan.from_dict(doc["plan"]), base64.b64decode(ld_cache) if ld_cache else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store_plan(key: str, plan: Plan, ld_cache: bytes | None) -> bool:
    """Write the entry atomically; False when it could not be written."""
    from shim.cachefiles import write_atomic

    doc = {"format": _FORMAT, "key": key, "plan": plan.to_dict(),
           "ld_cache": base64.b64encode(ld_cache).decode() if ld_cache else None}
    return write_atomic(os.path.join(cache_dir(), f"{key}.json"), json.dumps(doc, separators=(",", ":")).encode())
