"""What a record's run loaded against what this node would offer now (`check --against`): the
provenance record's "loaded" list (shim/record/format.py LOADED_KEYS, written by the executor
after the app ended) names, per object the app's processes mapped, the container path and, for an
object shim injected, its host file and sha256.

Rules:
- an injected object (its `host` set) is the same when the plan now offers that host file with
  that sha256: a decision that injects it (its `host_path` or `real_path`), or a bind whose source
  directory holds it (a profile's library directory) with the file's sha256 now the recorded one.
  Another build at that path, another host file at that container path, or none offered: material
  (the app would load another library, or the image's own);
- an object under a directory the plan bound (no `host`: a profile's bundled libraries, a
  --bind) is the same when the plan now binds the same host directory there; its bytes were not
  recorded. Bound from elsewhere or not at all: material;
- an object of the image (the rest, but the kernel's vDSO) is the same when the image is: its
  digest (a squashfs file's, a SIF's partitions') compared once for all of them, material when it
  differs; a directory image has no digest, so those objects are not compared (one note says so).
Non-goals: what the app would load now is not predicted (that needs the app to run).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from shim.provenance.compare import Difference

# The sha256 of a host file now (None: not readable), for objects of a bound directory.
Sha256Now = Callable[[str], "str | None"]
SHOWN = 3   # objects named in a line about several (of the image, of a bind); the rest counted


def loaded_objects(doc: dict) -> list[dict]:
    """The record's "loaded" list ([] for a run that was not audited)."""
    found = doc.get("loaded") if isinstance(doc, dict) else None
    return [e for e in found or [] if isinstance(e, dict)]


def _injections(plan: dict) -> tuple[dict[str, dict], dict[str, dict]]:
    """The injecting decisions now, by host file (as named and resolved) and by container path."""
    by_host: dict[str, dict] = {}
    by_place: dict[str, dict] = {}
    for d in plan.get("decisions") or []:
        if d.get("decision") != "inject":
            continue
        for key in ("host_path", "real_path"):
            if d.get(key):
                by_host.setdefault(d[key], d)
        if d.get("container_path"):
            by_place.setdefault(d["container_path"], d)
    return by_host, by_place


def _bound_dirs(plan: dict) -> list[str]:
    """The source directories the plan binds now (a profile's library directories)."""
    return [b["src"].rstrip("/") + "/" for b in plan.get("binds") or [] if isinstance(b, dict) and b.get("src")]


def _show(entry: dict, source: str = "") -> str:
    """"loaded PATH (host FILE, by EXE)"; `source`: in place of "host FILE"."""
    who = f", by {entry['exe']}" if entry.get("exe") else ""
    return f"loaded {entry.get('path')} ({source or 'host ' + str(entry.get('host'))}{who})"


def _injected(entry: dict, plan: dict, sha256_now: Sha256Now | None) -> list[Difference]:
    by_host, by_place = _injections(plan)
    host, sha = entry["host"], entry.get("sha256")
    offered = by_host.get(host)
    if offered is not None:
        if sha and offered.get("sha256") and offered["sha256"] != sha:
            return [Difference(f"{_show(entry)}: offered now as another build", sha, offered["sha256"])]
        return []
    if any(host.startswith(d) for d in _bound_dirs(plan)) and sha256_now is not None:
        now = sha256_now(host)
        if now == sha:
            return []
        return [Difference(f"{_show(entry)}: the bound file is now another build" if now else
                           f"{_show(entry)}: the bound file is gone", sha, now)]
    other = by_place.get(entry.get("path") or "")
    if other is not None:
        return [Difference(f"{_show(entry)}: another host file offered there now", host, other.get("host_path"))]
    return [Difference(f"{_show(entry)}: not offered now (the image's own would load, if it has one)", host, None)]


def bound_from(path: str, plan: dict) -> tuple[str, str] | None:
    """(the host directory or file, the container path) of the plan's bind that covers container
    `path` (None: none does)."""
    for b in plan.get("binds") or []:
        dst = str(b.get("dst") or "").rstrip("/") if isinstance(b, dict) else ""
        if dst and (path == dst or path.startswith(dst + "/")):
            return str(b.get("src") or "").rstrip("/"), dst
    return None


def _bound(entries: list[dict], was: dict, plan: dict) -> list[Difference]:
    """The objects of bound directories, one line per bind whose host side is not the same now."""
    groups: dict[tuple[str, str, str | None], list[str]] = {}
    for entry in entries:
        src, dst = bound_from(entry["path"], was) or ("", "")
        found = bound_from(dst, plan)
        now = found[0] if found and found[1] == dst else None
        if now != src:
            groups.setdefault((src, dst, now), []).append(os.path.basename(entry["path"]))
    out = []
    for (src, dst, now), names in groups.items():
        shown = ", ".join(names[:SHOWN]) + (", …" if len(names) > SHOWN else "")
        change = "bound from elsewhere now" if now else "not bound now"
        out.append(Difference(f"{len(names)} object(s) the run loaded from host {src} (bound at {dst}: {shown}): "
                              f"{change}", src, now))
    return out


def image_digest(image: dict) -> str | None:
    """The image's identity for its objects: a squashfs file's sha256, a SIF's primary
    partition(s)' (all partitions' when none is marked), None for a directory."""
    if image.get("sha256"):
        return image["sha256"]
    objects = (image.get("sif") or {}).get("objects") or []
    parts = [o for o in objects if o.get("primary")] or [o for o in objects if o.get("type") == "FS"]
    return " ".join(o["sha256"] for o in parts) if parts else None


def _from_image(entries: list[dict], recorded: dict, now: dict) -> list[Difference]:
    if not entries:
        return []
    names = ", ".join(os.path.basename(e.get("path") or "") for e in entries[:SHOWN])
    what = f"{len(entries)} object(s) the run loaded from the image ({names}{', …' if len(entries) > SHOWN else ''})"
    old, new = image_digest(recorded), image_digest(now)
    if old is None and new is None:
        return [Difference(f"{what}: a directory image has no digest: not compared", recorded.get("path"),
                           now.get("path"), material=False)]
    return [] if old == new else [Difference(f"{what}: the image", old, new)]


def loaded_differences(recorded: dict, now: dict, sha256_now: Sha256Now | None = None) -> list[Difference]:
    """What differs for the objects the record's run loaded (none when it was not audited)."""
    plan, was = now.get("plan") or {}, recorded.get("plan") or {}
    out: list[Difference] = []
    bound, image_entries = [], []
    for entry in loaded_objects(recorded):
        if entry.get("host"):
            out += _injected(entry, plan, sha256_now)
        elif bound_from(entry["path"], was) is not None:
            bound.append(entry)
        elif "/" in entry["path"]:   # not the kernel's vDSO (linux-vdso.so.1), which no file holds
            image_entries.append(entry)
    out += _bound(bound, was, plan)
    out += _from_image(image_entries, recorded.get("image") or {}, now.get("image") or {})
    return out
