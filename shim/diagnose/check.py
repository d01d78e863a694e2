"""The hardware check of one launch: what the image expects against what this node has, with
the site's policy applied, cached so a warm launch neither scans the image nor asks NVML.

The result depends on the image (its identity), the app, the job's environment variables that
the rules read, and the node. The node part of the key is a cheap fingerprint, never the facts
themselves: the CPUs this process may use and its cgroup quota, the NVIDIA kernel module's
version file, the RDMA devices and their port states, the binfmt_misc entries, the NVIDIA device
nodes. Any change there, or a new job with another CPU allowance, is a miss. Entries are JSON
files under $SHIMRUN_CACHE/hw/, written atomically like the plan cache.

SHIMRUN_HOST_ROOT names a host root other than "/" (a simulated node, for tests and for
checking an image against a node's facts captured elsewhere).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping

from shim.elf.rootpath import changed, recording
from shim.image.open import ImageRef
from shim.model import Diagnostic
from shim.record.format import JOB_VARIABLES

_FORMAT = 2
def host_root(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get("SHIMRUN_HOST_ROOT") or "/"


def job_inputs(environ: Mapping[str, str]) -> list:
    from shim.record.snapshot import env_input

    return [env_input(environ, name, how) for name, how in JOB_VARIABLES.items()]


def host_fingerprint(root: str = "/") -> list:
    """Cheap signs of everything the host facts are made of (shim.host.fingerprint)."""
    from shim.host.fingerprint import host_inputs

    return [repr(tuple(i)) for i in host_inputs(root)]


def _cache_path(key: str) -> str | None:
    from shim.cachefiles import cache_path

    return cache_path("hw", f"{key}.json")


def check_key(image: ImageRef, app: str | None, environ: Mapping[str, str], root: str) -> str:
    """`image`: the opened image (shim.image.open.ImageRef): keyed by the identity of the file
    that was opened, never by what its path names now."""
    from shim import __version__

    st = image.opened.st
    ident = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
    doc = [_FORMAT, __version__, [image.path, ident], app or "", root,
           [repr(i) for i in job_inputs(environ)],
           host_fingerprint(root)]
    return hashlib.sha256(json.dumps(doc).encode()).hexdigest()[:32]


def cached(key: str, image_dir: str = "") -> tuple[list[Diagnostic], dict] | None:
    """The stored diagnostics and what the check read inside a directory image ({relative path:
    identity}); for a directory image (`image_dir`) only while every one of those paths is
    unchanged (a removed .shim/requires, a replaced library)."""
    from shim.cachefiles import read_trusted

    try:
        raw = read_trusted(_cache_path(key))
        if raw is None:
            return None
        doc = json.loads(raw)
        if doc.get("key") != key:
            return None
        reads = doc.get("reads") or {}
        if reads and (not image_dir or changed({image_dir: reads})):
            return None
        return [Diagnostic(**d) for d in doc["diagnostics"]], reads
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def store(key: str, diagnostics: list[Diagnostic], reads: dict | None = None) -> None:
    """reads: what the check read inside a directory image ({relative path: identity})."""
    from dataclasses import asdict

    from shim.cachefiles import write_atomic

    write_atomic(_cache_path(key), json.dumps({"key": key, "diagnostics": [asdict(d) for d in diagnostics],
                                               "reads": reads or {}}).encode())


def hardware_diagnostics_for(root: str, image_arch: str, app: str | None, environ: Mapping[str, str],
                             path: str = "") -> list[Diagnostic]:
    """Scan the mounted image at `root` and compare with this node (no cache, no policy)."""
    from shim.diagnose.hardware import hardware_diagnostics
    from shim.diagnose.pmi import pmi_diagnostics
    from shim.expect.scan import scan_image
    from shim.host.gather import gather_host_facts

    expect = scan_image(root, app=_app_in_image(root, app, path), arch=image_arch or None)
    found = hardware_diagnostics(expect, gather_host_facts(host_root(environ), environ), image_arch, environ)
    return found + pmi_diagnostics(root, environ, image_arch or None)


def recorded_check(root: str, image_arch: str, app: str | None, environ: Mapping[str, str],
                   path: str = "") -> tuple[list[Diagnostic], dict]:
    """hardware_diagnostics_for, and what it read inside `root` ({relative path: identity})."""
    with recording(root) as log:
        found = hardware_diagnostics_for(root, image_arch, app, environ, path)
    return found, log.reads[os.path.abspath(root)]


def _app_in_image(root: str, app: str | None, path: str) -> str | None:
    """The app as a container path (looked up in the container's PATH), or None."""
    from shim.elf.rootpath import RootPaths, find_program

    return find_program(RootPaths(root), app, path) if app else None


def apply_site_policy(diagnostics: list[Diagnostic], policy: Mapping[str, str]) -> list[Diagnostic]:
    if not policy:
        return diagnostics
    from shim.diagnose.policy import apply_policy

    return apply_policy(diagnostics, policy)
