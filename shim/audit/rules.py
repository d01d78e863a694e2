"""The findings the executor makes of what the app loaded, as rules over its objects (record
AUDIT_RULE; format.AUDIT_KIND): this node's facts and the plan are known now, so each rule is
written only where it can mean something (RDMA-UNUSED only on a node with an RDMA device), with
its message holding the facts of this side and a %s for the objects the app loaded. The site's
[policy.codes] is applied here: an ignored code is not written, a severity is set.

Which object means what is data (shim/knowledge/loaded.json); the codes are registered in
shim/knowledge/codes.json with this module as their origin."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import NamedTuple

from shim.knowledge.codes import ACTIONS
from shim.knowledge.loaded import patterns
from shim.model import ERROR, INFO, WARNING, Diagnostic
from shim.record.format import AUDIT_KIND, AUDIT_SEVERITY
from shim.record.model import AuditRule

_SEVERITY = {INFO: AUDIT_SEVERITY["INFO"], WARNING: AUDIT_SEVERITY["WARN"], ERROR: AUDIT_SEVERITY["ERROR"]}
ANY, NONE = AUDIT_KIND["ANY"], AUDIT_KIND["NONE"]


class Injected(NamedTuple):
    library: str            # the name the container asks for
    host: str
    path: str               # where the container sees it
    profile: str
    release: str = ""       # an MPI's ("MPICH 4.1.2"), "" otherwise


class NodeSide(NamedTuple):
    """What the planner knows before the launch that the findings compare against."""
    rdma_devices: tuple[str, ...] = ()      # "mlx5_0", "rxe0 (software)"
    gpus: tuple[str, ...] = ()              # models, or the driver's version when models are unknown
    injected: tuple[Injected, ...] = ()
    image_mpi: str = ""                     # "MPICH 4.0.2"


def unavailable(reason: str) -> Diagnostic:
    """At plan time: the app cannot be audited, and why."""
    return Diagnostic("AUDIT-UNAVAILABLE", INFO, f"what the app loads is not audited: {reason}",
                      "--report-loaded and --provenance's \"loaded\" list need a dynamically linked glibc program")


def _mpi_loaded(side: NodeSide) -> list[tuple[str, AuditRule]]:
    said = [f"injected: the host's {i.release or i.library} by profile '{i.profile}'" for i in side.injected
            if i.release]
    if side.image_mpi:
        said.append(f"the image's own: {side.image_mpi}")
    tail = f" ({'; '.join(said)})" if said else ""
    return [("MPI-LOADED", AuditRule(ANY, 0, "", (), patterns("mpi"), f"the app loaded the MPI library %s{tail}",
                                     "an object shown with its host path is the site's build, injected"))]


def _rdma(side: NodeSide) -> list[tuple[str, AuditRule]]:
    if not side.rdma_devices:
        return []
    devices = ", ".join(side.rdma_devices)
    comm = patterns("mpi", "communication", "tcp", "rdma-module")
    return [
        ("RDMA-UNUSED", AuditRule(
            NONE, 0, "", comm, patterns("rdma", "rdma-emulated"),
            f"this node has the RDMA device {devices}, and the app loaded %s but no RDMA transport: it communicated "
            "over TCP or shared memory",
            "check the transport settings (UCX_TLS, FI_PROVIDER, OMPI_MCA_pml/btl) and that the image's "
            "rdma-core has a provider for the device; shimrun check IMAGE shows what the site injects",
            "a profile injecting the host's MPI or rdma-core provider gives apps the node's fast path "
            "(conf/profiles/)")),
        ("RDMA-EMULATED", AuditRule(
            ANY, 0, "", (), patterns("rdma-emulated"),
            "the app's RDMA transport is emulated in software: %s",
            "a software RDMA provider is as slow as TCP or slower; ask for nodes with an RDMA adapter",
            "load the adapter's kernel driver, or leave rxe/siw off the compute nodes")),
    ]


def _gpu(side: NodeSide) -> list[tuple[str, AuditRule]]:
    if not side.gpus:
        return []
    gpus = ", ".join(side.gpus)
    out = [("GPU-UNUSED", AuditRule(
        NONE, 0, "", patterns("cuda-runtime"), patterns("cuda-driver"),
        f"this node has the GPU {gpus}, and the app loaded the CUDA runtime %s but no libcuda.so.1: it used no GPU",
        "run with --nv so that the host's driver is injected",
        "a cuda-driver profile (conf/profiles/) injects the node's driver"))]
    if not any(i.library.startswith("libcuda.so") for i in side.injected):
        out.append(("GPU-DRIVER-STUB", AuditRule(
            ANY, 0, "", (), patterns("cuda-driver"),
            f"this node has the GPU {gpus} and its driver was not injected; the app loaded the image's %s "
            "(a stub or another build than the node's kernel module)",
            "run with --nv so that the host's driver is injected",
            "a cuda-driver profile (conf/profiles/) injects the node's driver")))
    return out


def _injected_unused(side: NodeSide) -> list[tuple[str, AuditRule]]:
    return [("INJECTED-UNUSED", AuditRule(
        NONE, 0, "", (), (i.path,), f"{i.path} (host: {i.host}), injected by profile '{i.profile}', was never loaded",
        "the app did not need it", f"profile '{i.profile}' injects it for this image")) for i in side.injected]


_DEFAULT = {"MPI-LOADED": INFO, "RDMA-UNUSED": WARNING, "RDMA-EMULATED": WARNING, "GPU-UNUSED": WARNING,
            "GPU-DRIVER-STUB": WARNING, "INJECTED-UNUSED": INFO}


def _escaped(path: str) -> str:
    """`path` as an fnmatch(3) pattern that matches only itself."""
    return "".join(f"\\{c}" if c in "*?[\\" else c for c in path)


def _what_they_are(globs: tuple[str, ...], injected: tuple[Injected, ...]) -> tuple[str, ...]:
    """`globs` and the container path of each injected object that is one of them by the name it
    was injected as or its file name: the loader reports an object by the name it opened
    (libcuda.so.535.104.05, where the table says libcuda.so.1), and the executor knows an injected
    one by its host file whatever that name (csrc/auditfind.c)."""
    extra = tuple(_escaped(i.path) for i in injected
                  if any(fnmatchcase(i.library, g) or fnmatchcase(posixpath.basename(i.path), g)
                         for g in globs if "/" not in g))
    return globs + tuple(e for e in dict.fromkeys(extra) if e not in globs)


def audit_rules(side: NodeSide, policy: Mapping[str, str]) -> tuple[AuditRule, ...]:
    """The rules for this launch, the site's policy applied (an ignored code is left out)."""
    out = []
    for code, rule in _mpi_loaded(side) + _rdma(side) + _gpu(side) + _injected_unused(side):
        action = policy.get(code)
        severity = _DEFAULT[code] if action is None else ACTIONS.get(action, _DEFAULT[code])
        if action is not None and severity is None:
            continue
        known = rule if code == "INJECTED-UNUSED" else rule._replace(  # that one names its object by path
            preconditions=_what_they_are(rule.preconditions, side.injected),
            patterns=_what_they_are(rule.patterns, side.injected))
        out.append(known._replace(code=code, severity=_SEVERITY[severity]))
    return tuple(out)
