"""A CDI spec as values (the fields of the CDI specification's SPEC.md, snake-cased).

Everything is immutable and validated when made (shim/cdi/spec.py): a value here is what a spec
file said, checked, never what a container got (the planner decides that)."""

from __future__ import annotations

from typing import NamedTuple


class DeviceNode(NamedTuple):
    path: str                        # where the node appears in the container
    host_path: str = ""              # the host's node ("" = the same as path)
    type: str = ""                   # "c", "b", "u", "p" or "" (read from the host node)
    major: int | None = None
    minor: int | None = None
    file_mode: int | None = None
    permissions: str = ""            # cgroup access: some of "rwm"
    uid: int | None = None
    gid: int | None = None

    @property
    def host(self) -> str:
        return self.host_path or self.path


class Mount(NamedTuple):
    host_path: str
    container_path: str
    type: str = ""                   # "" = a bind mount
    options: tuple[str, ...] = ()


class Hook(NamedTuple):
    hook_name: str                   # the OCI hook point: createContainer, startContainer, ...
    path: str                        # the binary the spec names (shim never runs it)
    args: tuple[str, ...] = ()       # argv, args[0] being the program's name
    env: tuple[str, ...] = ()
    timeout: int | None = None


class ContainerEdits(NamedTuple):
    env: tuple[str, ...] = ()                    # "K=V"
    device_nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[Mount, ...] = ()
    hooks: tuple[Hook, ...] = ()
    additional_gids: tuple[int, ...] = ()

    def merged(self, other: ContainerEdits) -> ContainerEdits:
        """This, then `other` (a spec's edits, then a device's: the spec's order of application)."""
        return ContainerEdits(self.env + other.env, self.device_nodes + other.device_nodes,
                              self.mounts + other.mounts, self.hooks + other.hooks,
                              self.additional_gids + tuple(g for g in other.additional_gids
                                                           if g not in self.additional_gids))

    @property
    def empty(self) -> bool:
        return not any(self)


class Device(NamedTuple):
    name: str
    annotations: tuple[tuple[str, str], ...] = ()
    edits: ContainerEdits = ContainerEdits()


class Spec(NamedTuple):
    path: str                        # the file it was read from
    cdi_version: str
    kind: str                        # vendor/class, e.g. nvidia.com/gpu
    devices: tuple[Device, ...]
    edits: ContainerEdits = ContainerEdits()
    annotations: tuple[tuple[str, str], ...] = ()

    @property
    def vendor(self) -> str:
        return self.kind.split("/", 1)[0]

    @property
    def device_class(self) -> str:
        return self.kind.split("/", 1)[1]


def qualified(kind: str, name: str) -> str:
    """A device's fully-qualified name, as requested: vendor/class=name."""
    return f"{kind}={name}"


class Resolved(NamedTuple):
    """One requested device: its spec, the device, and the edits to apply (spec's then device's)."""
    qualified: str
    spec: Spec
    device: Device
    edits: ContainerEdits
