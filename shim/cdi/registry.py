"""The CDI devices a node offers: every spec file of the spec directories, read and validated
(shim/cdi/spec.py), and the requests (`--device vendor/class=name`, `--nv`) resolved against them.

Directories: /etc/cdi then /var/run/cdi (the CDI specification's defaults), then the site's
[cdi] dirs (shim.toml). A later directory has the higher priority: a device it defines replaces the
same qualified name of an earlier one; two spec files of the *same* directory defining one device
are a conflict, refused naming both. On a simulated node (SHIMRUN_HOST_ROOT) each directory lies
under the host root, as every host path does (shim/host/paths.on_host)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from shim.cdi.model import ContainerEdits, Device, Resolved, Spec, qualified
from shim.cdi.select import ALL, BINDING_VARS, GPU_KIND, launch_requests, nv_uses_cdi
from shim.cdi.spec import CdiError, RequestError, read_spec_dir, split_qualified
from shim.host.paths import on_host

DEFAULT_DIRS: tuple[str, ...] = ("/etc/cdi", "/var/run/cdi")


class Entry(NamedTuple):
    qualified: str
    spec: Spec
    device: Device


class Registry(NamedTuple):
    dirs: tuple[str, ...]                  # as this machine reads them (under a simulated host root)
    entries: tuple[Entry, ...] = ()        # by qualified name, sorted

    def devices(self) -> list[tuple[str, Spec, Device]]:
        return [tuple(e) for e in self.entries]

    def kinds(self) -> list[str]:
        return sorted({e.spec.kind for e in self.entries})

    def has_kind(self, kind: str) -> bool:
        return any(e.spec.kind == kind for e in self.entries)

    def resolve(self, requests: Sequence[str], environ: Mapping[str, str] | None = None) -> list[Resolved]:
        """Each requested device (vendor/class=name) with its spec's edits merged before its own, in
        request order, each once. `vendor/class=all` is the spec's device named "all" when it has
        one, else every device of the kind; with `environ` (the launch's), a GPU binding
        (BINDING_VARS) narrows nvidia.com/gpu=all to the bound devices (by index or UUID)."""
        from shim.cdi.select import resolve

        return resolve(self, requests, environ or {})


def default_dirs(site_dirs: Sequence[str] = ()) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*DEFAULT_DIRS, *site_dirs)))


def load_registry(dirs: Sequence[str] = DEFAULT_DIRS, host_root: str = "") -> Registry:
    """The devices of the spec files in `dirs` (a missing directory holds none). Raises CdiError
    (exit 78: a bad, conflicting or untrusted spec) naming the file, device and key."""
    seen: dict[str, Entry] = {}
    where = tuple(on_host(host_root, d) for d in dirs)
    for directory in where:
        here: dict[str, Entry] = {}
        for spec in read_spec_dir(directory):
            for device in spec.devices:
                name = qualified(spec.kind, device.name)
                if name in here:
                    raise CdiError(f"{here[name].spec.path} and {spec.path} both define device {name}",
                                   "remove one of the two spec files, or the device from one")
                here[name] = Entry(name, spec, device)
        seen.update(here)   # a later directory's device replaces an earlier one's
    return Registry(where, tuple(seen[k] for k in sorted(seen)))


def site_registry(site_dirs: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> Registry:
    """The registry of this node: the default directories and the site's, under SHIMRUN_HOST_ROOT."""
    env = os.environ if environ is None else environ
    return load_registry(default_dirs(site_dirs), env.get("SHIMRUN_HOST_ROOT", ""))


__all__ = ["ALL", "BINDING_VARS", "CdiError", "ContainerEdits", "DEFAULT_DIRS", "GPU_KIND", "Entry", "Registry",
           "RequestError", "Resolved", "default_dirs", "launch_requests", "load_registry", "nv_uses_cdi",
           "site_registry", "split_qualified"]
