"""Part of step 2 of planning: the CDI devices a launch requests (--device, and --nv where the
node's specs define nvidia.com/gpu), resolved against the node's specs (shim/cdi/registry.py)
and turned into requested injection profiles (shim/cdi/edits.py), so that the planner decides
their libraries as it decides a profile's. Imported only when a launch asks for a device or --nv:
a launch without costs nothing of it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from shim.cdi.edits import CdiRequest, cdi_profiles
from shim.cdi.registry import launch_requests, site_registry
from shim.elf.facts import ElfFacts, elf_facts
from shim.errors import ShimError
from shim.host.paths import on_host
from shim.record.format import CHECK, IDENTITY
from shim.record.model import Input
from shim.record.snapshot import file_input
from shim.site.config import SiteConfig
from shim.site.profile_model import PROFILES_DIR, Profile, ProfileSet


class CdiStep(NamedTuple):
    profiles: tuple[Profile, ...]    # one per device kind, each requested
    nv_done: bool                    # --nv was answered by the node's nvidia.com/gpu specs
    inputs: tuple[Input, ...]        # the spec directories and files, the device nodes


def _facts(path: str) -> ElfFacts | None:
    try:
        return elf_facts(path)
    except (ShimError, OSError):
        return None   # not ELF (or unreadable): bound as the spec says, not planned


def cdi_devices(devices: Sequence[str], nv: bool, site: SiteConfig, host_root: str,
                env: Mapping[str, str]) -> CdiStep:
    registry = site_registry(site.cdi_dirs, env)
    requests = launch_requests(devices, nv, registry)
    inputs = [file_input(d, IDENTITY | CHECK["FOLLOW"]) for d in registry.dirs]
    if not requests:
        return CdiStep((), False, tuple(inputs))
    resolved = registry.resolve(requests, env)
    profiles = cdi_profiles(CdiRequest(resolved, host_root, _facts, site.cdi_unknown_hooks))
    paths = dict.fromkeys(r.spec.path for r in resolved)
    inputs += [file_input(p, IDENTITY | CHECK["FOLLOW"]) for p in paths]
    nodes = dict.fromkeys(on_host(host_root, n.host) for r in resolved for n in r.edits.device_nodes)
    inputs += [file_input(n, CHECK["EXISTS"] | CHECK["TYPE"] | CHECK["FOLLOW"]) for n in nodes]
    return CdiStep(profiles, nv and len(requests) > len(devices), tuple(inputs))


def with_cdi(profiles: ProfileSet | None, cdi: tuple[Profile, ...], conf_dir: Path) -> ProfileSet:
    """The site's profiles (if any) and the devices' profiles, as one set the planner selects from."""
    return ProfileSet(profiles.directory if profiles else str(conf_dir / PROFILES_DIR),
                      (*(profiles.profiles if profiles else ()), *cdi))


__all__ = ["CdiStep", "cdi_devices"]
