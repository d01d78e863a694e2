"""Requests resolved against a registry: `vendor/class=name` (repeatable), `=all`, and a job's GPU
binding (Slurm's, CUDA_VISIBLE_DEVICES) narrowing nvidia.com/gpu=all to the bound devices."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from shim.cdi.model import Resolved, qualified
from shim.cdi.spec import RequestError, split_qualified

if TYPE_CHECKING:
    from shim.cdi.registry import Entry, Registry

ALL = "all"
GPU_KIND = "nvidia.com/gpu"
# Where a job's GPU binding is read, the first set wins: Slurm's step, then its job (the node's
# indices, as the device nodes are numbered, whatever cgroup renumbering CUDA then sees), then the
# CUDA runtime's own selection.
BINDING_VARS: tuple[str, ...] = ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES")


def binding(environ: Mapping[str, str]) -> tuple[str, tuple[str, ...]]:
    """(the variable, the GPUs it binds: indices or UUIDs) of the first binding set; ("", ()) none.
    "NoDevFiles" and "-1" (no device) bind nothing, which narrows to no device at all."""
    for var in BINDING_VARS:
        value = environ.get(var, "").strip()
        if value:
            return var, tuple(v.strip() for v in value.split(",") if v.strip())
    return "", ()


def _unknown(registry: Registry, request: str, kind: str) -> RequestError:
    names = [e.qualified for e in registry.entries if e.spec.kind == kind] or [e.qualified for e in registry.entries]
    shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    where = ", ".join(registry.dirs)
    return RequestError(f"--device {request}: no such CDI device in {where}",
                        f"the devices: {shown}" if shown else "no CDI spec defines any device on this node "
                        "(`shimrun cdi list`; a site generates them with e.g. nvidia-ctk cdi generate)")


def _expand(registry: Registry, request: str, kind: str, environ: Mapping[str, str]) -> list[Entry]:
    """The entries `kind=all` stands for."""
    of_kind = [e for e in registry.entries if e.spec.kind == kind]
    var, bound = binding(environ) if kind == GPU_KIND else ("", ())
    if var:
        if bound in (("NoDevFiles",), ("-1",)):
            return []
        chosen = []
        for gpu in bound:
            match = [e for e in of_kind if e.device.name == gpu]
            if not match:
                raise RequestError(f"{var}={environ[var]}: GPU {gpu!r} is not a device of {kind} "
                                   f"(to narrow --device {request})",
                                   f"the devices: {', '.join(e.qualified for e in of_kind)} "
                                   "(`shimrun cdi list`); unset the variable to use them all")
            chosen += match
        return chosen
    named = [e for e in of_kind if e.device.name == ALL]
    return named or of_kind


def resolve(registry: Registry, requests: Sequence[str], environ: Mapping[str, str]) -> list[Resolved]:
    chosen: dict[str, Entry] = {}
    for request in requests:
        kind, name = split_qualified(request)
        if name == ALL:
            if not registry.has_kind(kind):
                raise _unknown(registry, request, kind)
            entries = _expand(registry, request, kind, environ)
        else:
            entries = [e for e in registry.entries if e.qualified == qualified(kind, name)]
            if not entries:
                raise _unknown(registry, request, kind)
        for e in entries:
            chosen.setdefault(e.qualified, e)
    return [Resolved(e.qualified, e.spec, e.device, e.spec.edits.merged(e.device.edits)) for e in chosen.values()]


def launch_requests(devices: Sequence[str], nv: bool, registry: Registry) -> tuple[str, ...]:
    """What a launch asks for: its --device requests, and with --nv nvidia.com/gpu=all when the
    node's specs define that kind (else --nv keeps meaning the GPU profiles: see nv_uses_cdi)."""
    extra = (qualified(GPU_KIND, ALL),) if nv_uses_cdi(nv, registry) else ()
    return tuple(dict.fromkeys((*devices, *extra)))


def nv_uses_cdi(nv: bool, registry: Registry) -> bool:
    return nv and registry.has_kind(GPU_KIND)
