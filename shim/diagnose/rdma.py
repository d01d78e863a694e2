"""RDMA diagnostics: an image with an RDMA-capable stack (verbs, UCX, libfabric) on a node with
no RDMA device, only software RDMA, no active port, or a device its libibverbs has no provider for."""

from __future__ import annotations

import re

from shim.diagnose.common import raised
from shim.expect.model import ImageExpectations
from shim.host.model import HostFacts, RdmaDevice
from shim.model import INFO, WARNING, Diagnostic

# rdma-core provider serving a device, by the device's name (the kernel names devices after the
# driver: mlx5_0, rxe0, efa_0, ...), most specific first.
_PROVIDER_BY_NAME: tuple[tuple[str, str], ...] = (
    (r"mlx5_", "mlx5"), (r"mlx4_", "mlx4"), (r"rxe", "rxe"), (r"siw", "siw"), (r"efa", "efa"),
    (r"irdma", "irdma"), (r"i40iw", "i40iw"), (r"bnxt_re", "bnxt_re"), (r"hfi1", "hfi1verbs"),
    (r"qib", "ipathverbs"), (r"qedr", "qedr"), (r"mana", "mana"), (r"hns", "hns"),
    (r"vmw_pvrdma|pvrdma", "vmw_pvrdma"), (r"ocrdma", "ocrdma"), (r"cxgb4|iwcxgb4", "cxgb4"),
    (r"mthca", "mthca"), (r"erdma", "erdma"), (r"ionic", "ionic"),
)
_PROVIDER_BY_DRIVER = {"mlx5_core": "mlx5", "mlx5_ib": "mlx5", "mlx4_core": "mlx4", "mlx4_ib": "mlx4",
                       "rdma_rxe": "rxe", "siw": "siw", "efa": "efa", "irdma": "irdma", "bnxt_re": "bnxt_re",
                       "hfi1": "hfi1verbs", "qedr": "qedr", "mana_ib": "mana", "hns_roce_hw_v2": "hns"}
_FALLBACK = "MPI, UCX and libfabric fall back to TCP (several times the latency, a fraction of the bandwidth)"


def provider_of(dev: RdmaDevice) -> str | None:
    for rx, prov in _PROVIDER_BY_NAME:
        if re.match(rx, dev.name):
            return prov
    return _PROVIDER_BY_DRIVER.get(dev.driver)


def _describe(dev: RdmaDevice) -> str:
    return f"{dev.name} ({dev.driver})" if dev.driver else dev.name


def rdma_diagnostics(expect: ImageExpectations, host: HostFacts) -> list[Diagnostic]:
    why = expect.rdma_evidence
    if why is None:
        return []
    declared = expect.required("net.rdma") is not None
    devices = host.rdma.devices
    hint = "expected on nodes without InfiniBand/RoCE/EFA; for multi-node runs use the partition with the fast network"
    if not devices:
        return [Diagnostic(
            "RDMA-ABSENT", raised(INFO, declared),
            f"the image is RDMA-capable ({why}) but this node has no RDMA device (/sys/class/infiniband is "
            f"empty): {_FALLBACK}",
            hint, "load the RDMA drivers (mlx5_ib, efa, irdma, ...) or expose /sys/class/infiniband to jobs")]
    hardware = [d for d in devices if not d.software]
    if not hardware:
        names = ", ".join(_describe(d) for d in devices)
        return [Diagnostic(
            "RDMA-SOFTWARE", raised(INFO, declared),
            f"the image is RDMA-capable ({why}) but this node has only software RDMA ({names}) over Ethernet: "
            "verbs work, but no faster than TCP and at a higher CPU cost",
            "expect TCP-like performance; for multi-node runs use the partition with the fast network",
            "soft-RoCE/siW are for testing; real RDMA needs InfiniBand, RoCE or EFA hardware")]
    out: list[Diagnostic] = []
    if not any(n.startswith("/dev/infiniband/uverbs") for n in host.rdma.dev_nodes):
        out.append(Diagnostic(
            "RDMA-ABSENT", raised(INFO, declared),
            f"the image is RDMA-capable ({why}); this node has RDMA devices "
            f"({', '.join(d.name for d in hardware)}) but no /dev/infiniband/uverbs* node a job can open: "
            f"{_FALLBACK}",
            hint, "load ib_uverbs and let jobs' device cgroup allow /dev/infiniband"))
    elif all(d.ports for d in hardware) and not any(p.state.upper() == "ACTIVE" for d in hardware for p in d.ports):
        ports = ", ".join(f"{d.name} port {p.number}: {p.state}" for d in hardware for p in d.ports)
        out.append(Diagnostic(
            "RDMA-ABSENT", raised(INFO, declared),
            f"the image is RDMA-capable ({why}); this node's RDMA ports are not active ({ports}): {_FALLBACK}",
            hint, "check the cabling and the subnet manager (ibstat, opensm) or the RoCE link"))
    if expect.verbs is not None:
        have = {p.name for p in expect.verbs_providers}
        wanted = {provider_of(d) for d in hardware} - {None}
        if wanted and not wanted & have:
            listed = ", ".join(sorted(have)) or "none"
            out.append(Diagnostic(
                "RDMA-PROVIDER-MISSING", WARNING,
                f"this node's RDMA devices ({', '.join(_describe(d) for d in hardware)}) need the libibverbs "
                f"provider {' or '.join(sorted(wanted))} (lib<name>-rdmav*.so); the image's libibverbs "
                f"({expect.verbs.real_path or expect.verbs.path}) has {listed}: verbs sees no device and "
                f"{_FALLBACK}",
                "install the provider in the image (rdma-core's ibverbs-providers / libibverbs package)",
                "or inject the host's rdma-core (libibverbs and its providers) with an injection profile"))
    return out
