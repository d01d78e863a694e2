"""The requested CDI devices' container edits, as an injection profile the planner plans like any
other: one profile per device kind (nvidia.com/gpu), requested, so that the libraries a spec mounts
get the same decisions as a profile's (architecture, glibc floor, DT_NEEDED closure, symbol
versions: shim/plan/) and are never bound blindly.

- env "K=V"               the profile's [env] set, in the spec's order
- deviceNodes            checked present on this node (under a simulated host root: there), their
                         major/minor compared where the spec gives them and the host file is a node
                         (a simulated root's stand-ins are plain files): else exit 69 naming both;
                         then bound as a profile's devices are (usable: not nodev), at the
                         spec's path even where hostPath differs
- mounts of ELF          libraries: the profile's libraries, placed at the spec's containerPath;
                         programs (nvidia-smi): the profile's binaries, checked as libraries are
                         (shim/plan/programs.py) and bound read-only at the containerPath;
                         everything else (scripts, directories, files): bound as the spec says
                         (read-only with "ro"), the destination resolved inside the root as every
                         bind is
- hooks                  interpreted (shim/cdi/hooks.py): links, ld.so.cache folders, CUDA compat
The spec's kind "nvidia.com/gpu" makes a profile of kind "gpu" (the driver release check and the
forward-compat rule of shim/plan/rules/gpu.py apply); any other kind, "other"."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from typing import NamedTuple

from shim.cdi.hooks import HookEdits, interpret
from shim.cdi.model import DeviceNode, Mount, Resolved
from shim.elf.facts import ElfFacts
from shim.errors import ExitCode, ShimError
from shim.host.paths import on_host
from shim.site.binds import MODES
from shim.site.profile_model import BindEntry, EnvSpec, LibrarySpec, PathSpec, Profile, Provides

GPU_KINDS = ("nvidia.com/gpu",)
BIND_TYPES = ("", "bind", "none")        # a mount's type shim applies: a bind mount
# Options every bind of shim's has anyway (nosuid, nodev), or that say what it is (bind, private).
_IGNORED_OPTIONS = ("bind", "rbind", "rprivate", "private", "nosuid", "nodev", "noexec")
READ_ONLY = MODES[0]   # "ro"
FactsFn = Callable[[str], "ElfFacts | None"]


class CdiRequest(NamedTuple):
    devices: Sequence[Resolved]      # the registry's answer to --device (G's Registry.resolve)
    host_root: str
    facts: FactsFn                   # ELF facts of a file on this machine (None: not ELF)
    unknown_hooks: str = "error"     # the site's [cdi] unknown_hooks: error | warn


def profile_name(kind: str) -> str:
    """The profile a kind's devices become, a name usable as a directory (/.shim/inject/NAME)."""
    return "cdi-" + kind.replace("/", "-")


def cdi_profiles(req: CdiRequest) -> tuple[Profile, ...]:
    """One requested profile per device kind, in request order."""
    groups: dict[str, list[Resolved]] = {}
    for r in req.devices:
        groups.setdefault(r.spec.kind, []).append(r)
    return tuple(_profile(kind, group, req) for kind, group in groups.items())


def _profile(kind: str, devices: list[Resolved], req: CdiRequest) -> Profile:
    env: dict[str, str] = {}
    libraries: list[LibrarySpec] = []
    programs: list[PathSpec] = []
    nodes: list[PathSpec] = []
    binds: list[BindEntry] = []
    placed: dict[str, str] = {}
    hooks = HookEdits()
    seen: set[tuple[str, str]] = set()
    for r in devices:
        where = f"{r.spec.path}: device {r.qualified}"
        for entry in r.edits.env:
            name, _, value = entry.partition("=")
            env[name] = value   # a later device's value wins, as the spec's merge does
        for i, node in enumerate(r.edits.device_nodes):
            if (node.host, node.path) in seen:
                continue
            seen.add((node.host, node.path))
            check_node(node, req.host_root, r.qualified)
            if node.path != node.host:   # bound at its container path, still usable there (not nodev)
                binds.append(BindEntry(f"containerEdits.deviceNodes[{i}]", node.path, node.host, node.path,
                                       device=True))
            else:
                nodes.append(PathSpec(f"containerEdits.deviceNodes[{i}]", node.path, node.host, (node.host,)))
        for i, mount in enumerate(r.edits.mounts):
            if (mount.host_path, mount.container_path) in seen:
                continue
            seen.add((mount.host_path, mount.container_path))
            key = f"containerEdits.mounts[{i}]"
            facts = _elf(mount, req)
            entry = f"{r.qualified}: {mount.host_path}"
            if facts is not None and _is_library(facts):
                libraries.append(LibrarySpec(key, entry, mount.host_path, (mount.host_path,)))
            elif facts is not None and facts.is_program:
                _read_only(mount, where, key)   # its options checked; bound read-only, as libraries are
                programs.append(PathSpec(key, entry, mount.host_path, (mount.host_path,)))
            else:
                binds.append(BindEntry(key, mount.host_path, mount.host_path, mount.container_path,
                                       read_only=_read_only(mount, where, key)))
                continue
            placed[mount.host_path] = mount.container_path
        more = interpret(r.edits.hooks, where, req.unknown_hooks)
        hooks = HookEdits(hooks.links + more.links, tuple(dict.fromkeys(hooks.ldcache_folders + more.ldcache_folders)),
                          hooks.cuda_compat or more.cuda_compat, hooks.notes + more.notes,
                          hooks.warnings + more.warnings)
    return Profile(
        name=profile_name(kind), file=devices[0].spec.path, kind="gpu" if kind in GPU_KINDS else "other",
        applies="on-request", description=", ".join(r.qualified for r in devices),
        cuda_forward_compat="auto" if hooks.cuda_compat else "never",
        provides=Provides(libraries=tuple(libraries), binaries=tuple(programs), devices=tuple(nodes),
                          binds=tuple(binds)),
        env=EnvSpec(set=tuple(env.items())), placed=tuple(placed.items()), hooks=hooks)


def _elf(mount: Mount, req: CdiRequest) -> ElfFacts | None:
    """The mount's ELF facts (None: not an ELF file), a library's or a program's going through
    the planner."""
    if mount.type not in BIND_TYPES:
        raise ShimError(ExitCode.CONFIG, f"mount {mount.host_path} -> {mount.container_path}: type {mount.type!r} "
                        "is not supported (shim applies bind mounts only)", "fix the spec")
    path = on_host(req.host_root, mount.host_path)
    if not os.path.isfile(path):
        return None
    return req.facts(path)


def _is_library(facts: ElfFacts) -> bool:
    """A shared library: no interpreter of its own (a PIE program has one), or a SONAME."""
    return facts.elf_type == "ET_DYN" and bool(facts.soname or not facts.interp)


def _read_only(mount: Mount, where: str, key: str) -> bool:
    for option in mount.options:
        if option not in (*MODES, *_IGNORED_OPTIONS):
            raise ShimError(ExitCode.CONFIG, f"{where}: {key}: mount option {option!r} is not supported",
                            f"shim binds with {', '.join((*MODES, *_IGNORED_OPTIONS))} only; fix the spec")
    return READ_ONLY in mount.options


def check_node(node: DeviceNode, host_root: str, device: str) -> None:
    """The node exists on this node and is the one the spec means (its major/minor)."""
    path = on_host(host_root, node.host)
    try:
        st = os.stat(path)
    except OSError as e:
        raise ShimError(ExitCode.HOST, f"CDI device {device}: device node {node.host} is missing on this node "
                        f"({e.strerror})", "the spec does not match this node: have the site regenerate it "
                        "(nvidia-ctk cdi generate), or request another device") from None
    is_node = stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
    if not is_node or node.major is None or node.minor is None:
        return
    got = (os.major(st.st_rdev), os.minor(st.st_rdev))
    if got != (node.major, node.minor):
        raise ShimError(ExitCode.HOST, f"CDI device {device}: device node {node.host} is {got[0]}:{got[1]} on this "
                        f"node, the spec says {node.major}:{node.minor}",
                        "the spec does not match this node: have the site regenerate it (nvidia-ctk cdi generate)")
