"""Injection profiles as values: what one profile file says a site injects, checked and with the
host paths it names resolved (shim/site/profile_file.py reads them; the reference for the format
is conf/profiles/README.md). Problems are values (Problem), one line each, naming the file, the
dotted key and the fix. Which profiles apply to a run is the planner's (shim/plan/selection.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shim.knowledge.abi import aliases, mpi_families

if TYPE_CHECKING:
    from shim.cdi.hooks import HookEdits

PROFILES_DIR = "profiles"
KINDS = ("mpi", "fabric", "gpu", "rdma", "other")
APPLIES = ("always", "when-used", "on-request")
MPI_ABIS = mpi_families()   # abi.json's families: mpich, openmpi, mpi-abi
# cuda_forward_compat: may the image's CUDA forward-compatibility libcuda stand in for the host's
# (README, "CUDA driver profiles"). auto: when the GPUs are known to support it.
CUDA_FORWARD_COMPAT = ("auto", "always", "never")
SONAME_PREFIX = "soname:"
GLOB_CHARS = ("*", "?", "[")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a profile file. `host`: it is about this host's files or environment
    (the profile is then unavailable here), not about the profile's own text."""

    file: str
    key: str        # dotted, e.g. provides.libraries[2]; "line N" for TOML syntax errors
    message: str
    fix: str
    host: bool = False

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message} ({self.fix})"


@dataclass(frozen=True)
class PathSpec:
    """A host path or glob from [provides]; `matches` are the host paths it named when loaded."""

    key: str
    entry: str                       # as written
    path: str                        # absolute, prefix applied (unexpanded when the prefix is unusable)
    matches: tuple[str, ...] = ()

    @property
    def is_glob(self) -> bool:
        return any(c in self.path for c in GLOB_CHARS)


@dataclass(frozen=True)
class LibrarySpec(PathSpec):
    """A library entry: a host path or glob, or "soname:NAME" (`soname` set), found through the
    host's ld.so cache when the profile is loaded. `optional` (from provides.optional_libraries):
    missing on this host it has no matches instead of making the profile unavailable."""

    soname: str = ""
    optional: bool = False


@dataclass(frozen=True)
class BindEntry:
    key: str
    entry: str
    src: str
    dst: str
    read_only: bool = False
    # A device node bound at another path (a CDI deviceNode whose hostPath differs from its path):
    # bound usable (no nodev), as the devices a profile binds at their own path are.
    device: bool = False


@dataclass(frozen=True)
class Provides:
    prefix: str = ""                 # expanded; "" when not given
    libraries: tuple[LibrarySpec, ...] = ()
    plugin_dirs: tuple[PathSpec, ...] = ()
    binaries: tuple[PathSpec, ...] = ()
    config_files: tuple[PathSpec, ...] = ()
    devices: tuple[PathSpec, ...] = ()
    binds: tuple[BindEntry, ...] = ()


@dataclass(frozen=True)
class EnvSpec:
    """Container environment changes; pairs keep the file's order (tuples keep Profile hashable)."""

    set: tuple[tuple[str, str], ...] = ()
    prepend: tuple[tuple[str, str], ...] = ()
    append: tuple[tuple[str, str], ...] = ()
    unset: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    name: str
    file: str
    kind: str
    applies: str
    description: str = ""
    replaces: tuple[str, ...] = ()
    abi: str = ""
    conflicts: tuple[str, ...] = ()
    cuda_forward_compat: str = "auto"   # kind = "gpu" only
    provides: Provides = field(default_factory=Provides)
    env: EnvSpec = field(default_factory=EnvSpec)
    unavailable: tuple[Problem, ...] = ()   # why it cannot be used on this host; empty: usable
    # A CDI device set's profile (shim/cdi/edits.py) only: where each library goes (host path ->
    # the spec's containerPath; else /.shim/inject/NAME), and its hooks as interpreted.
    placed: tuple[tuple[str, str], ...] = ()
    hooks: HookEdits | None = None

    @property
    def stands_in_for(self) -> tuple[str, ...]:
        """The names the image may use that this profile replaces: `replaces` and, for MPI
        libraries, the other names of the same library in its ABI (abi.json: an MPICH-ABI
        libmpi.so.12 also replaces Debian's libmpich.so.12)."""
        return tuple(dict.fromkeys(n for r in self.replaces for n in aliases(r)))

    @property
    def available(self) -> bool:
        return not self.unavailable

    def why_unavailable(self) -> str:
        if not self.unavailable:
            return ""
        first = self.unavailable[0]
        more = len(self.unavailable) - 1
        return f"{first.key}: {first.message}" + (f" (and {more} more)" if more else "")

    def to_dict(self) -> dict[str, Any]:
        pv = self.provides
        return {
            "name": self.name, "file": self.file, "description": self.description, "kind": self.kind,
            "applies": self.applies, "abi": self.abi, "replaces": list(self.replaces),
            "conflicts": list(self.conflicts), "stands_in_for": list(self.stands_in_for),
            "cuda_forward_compat": self.cuda_forward_compat,
            "usable": self.available, "unavailable": [f"{p.key}: {p.message}" for p in self.unavailable],
            "provides": {
                "prefix": pv.prefix,
                "libraries": [{"entry": s.entry, "path": s.path, "soname": s.soname, "matches": list(s.matches),
                               "optional": s.optional} for s in pv.libraries],
                **{k: [{"entry": s.entry, "path": s.path, "matches": list(s.matches)} for s in getattr(pv, k)]
                   for k in ("plugin_dirs", "binaries", "config_files", "devices")},
                "binds": [{"src": b.src, "dst": b.dst, "read_only": b.read_only, "device": b.device}
                          for b in pv.binds],
            },
            "env": {"set": dict(self.env.set), "prepend": dict(self.env.prepend), "append": dict(self.env.append),
                    "unset": list(self.env.unset)},
        }


@dataclass(frozen=True)
class ProfileSet:
    directory: str
    profiles: tuple[Profile, ...] = ()

    def names(self) -> list[str]:
        return [p.name for p in self.profiles]

    def get(self, name: str) -> Profile | None:
        return next((p for p in self.profiles if p.name == name), None)
