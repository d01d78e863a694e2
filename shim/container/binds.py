"""The binds every container gets, and user bind specs (--bind, SHIMRUN_BIND) as Binds.

Default binds are a table (data), like Charliecloud's: source, destination, flags.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from shim.errors import UsageError
from shim.record.format import BIND, FRESH
from shim.site.binds import GRAMMAR, MODE, RELATIVE_DESTINATION, ROOT, BindSpecError, parse_bind_spec

# The flags the C core takes (one definition: shim/record/format.py).
RO, OPTIONAL, KEEPDEV, IFDST = BIND["RO"], BIND["OPTIONAL"], BIND["KEEPDEV"], BIND["IFDST"]
MOUNTPOINTS = BIND["MOUNTPOINTS"]


@dataclass(frozen=True)
class Bind:
    src: str
    dst: str
    flags: int = 0

    @property
    def read_only(self) -> bool:
        return bool(self.flags & RO)


# Host paths every container sees. /dev keeps device nodes usable (the GPU and RDMA devices
# live there); everything else is nosuid,nodev. Name-service files replace the image's only
# when the image has them, so that the host's resolver config is used on the cluster network.
SYSTEM_BINDS: tuple[Bind, ...] = (
    Bind("/proc", "/proc"),
    Bind("/sys", "/sys"),
    Bind("/dev", "/dev", KEEPDEV),
    Bind("/tmp", "/tmp"),
    Bind("/var/tmp", "/var/tmp", OPTIONAL),
    Bind("/etc/resolv.conf", "/etc/resolv.conf", OPTIONAL | IFDST),
    Bind("/etc/hosts", "/etc/hosts", OPTIONAL | IFDST),
)

# Binding the caller's cwd over one of these would replace the image's own system files.
_SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/sbin",
                "/sys", "/usr")


def parse_bind(spec: str, where: str, cwd: str, optional: bool = False) -> Bind | None:
    """SRC[:DST[:ro|rw]] (shim/site/binds.py) -> Bind, a relative SRC taken relative to cwd.
    `where` names the origin (option or variable) for errors. An optional bind (site defaults)
    whose source is missing on this node gives None."""
    try:
        parsed = parse_bind_spec(spec, cwd)
    except BindSpecError as e:
        raise UsageError(*_worded(e, spec, where)) from None
    if not os.path.exists(parsed.src):
        if optional:
            return None
        raise UsageError(f"bind source {parsed.src} (from {where}) does not exist", "create it or fix the path")
    return Bind(parsed.src, parsed.dst, RO if parsed.read_only else 0)


def _worded(e: BindSpecError, spec: str, where: str) -> tuple[str, str]:
    if e.reason == RELATIVE_DESTINATION:
        return f"bind destination '{e.part}' in {where} is not an absolute path", "write it as /path"
    if e.reason == MODE:
        return f"bad bind mode '{e.part}' in {where}", "use ro or rw"
    if e.reason == ROOT:
        return (f"bind '{spec}' in {where} would cover the container's root with a host directory",
                "bind it to a directory inside the container, e.g. /tmp:/data")
    return f"bad bind '{spec}' in {where}", f"use {GRAMMAR}, e.g. /scratch:/data:ro"


def parse_bind_list(value: str, where: str, cwd: str) -> list[Bind]:
    """A comma-separated list of bind specs, as in SHIMRUN_BIND (like APPTAINER_BIND)."""
    binds = [parse_bind(item.strip(), where, cwd) for item in value.split(",") if item.strip()]
    return [b for b in binds if b is not None]


def _covered(path: str, binds: list[Bind]) -> bool:
    return any(path == b.dst or path.startswith(b.dst.rstrip("/") + "/") for b in binds)


def _outer_first(binds: list[Bind]) -> list[Bind]:
    """The binds as given, except that one nested in a later one (its destination inside the
    other's) moves to just after it, with the others nested there, in their order."""
    out: list[Bind] = []
    for b in binds:
        inside = [x for x in out if x.dst.startswith(b.dst.rstrip("/") + "/")]
        out = [x for x in out if not x.dst.startswith(b.dst.rstrip("/") + "/")] + [b] + inside
    return out


def _asked(b: Bind) -> Bind:
    """A bind the user asked for, writable: nested binds' mount points may be made in its host
    directory (MOUNTPOINTS). A read-only one or a new tmpfs (--contain's home) keeps its flags."""
    return b if b.flags & (RO | FRESH) else Bind(b.src, b.dst, b.flags | MOUNTPOINTS)


def plan_binds(system: list[Bind], home: Bind | None, cwd: str | None, site: list[Bind],
               user: list[Bind]) -> list[Bind]:
    """All binds in the order the C core performs them: system, site, then the user's own (home,
    cwd (None: not bound), the user's binds), those outer-first: a bind nested in another one the
    user asked for (--mount …,target=/home/me/f.txt inside --home) comes after it whatever the
    order given, so that it lands in the outer bind's tree rather than under it. Otherwise the
    order is kept: of two binds to one destination the later still covers the earlier."""
    binds = list(system) + list(site)
    own = [home] if home is not None else []
    is_system = cwd is None or cwd == "/" or any(cwd == d or cwd.startswith(d + "/") for d in _SYSTEM_DIRS)
    if cwd is not None and not is_system and not _covered(cwd, binds + own):
        own.append(Bind(cwd, cwd))
    own = _outer_first([_asked(b) for b in own + list(user)])
    return binds + own
