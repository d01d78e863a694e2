"""The host part of a provenance record: the facts that decided anything (shim/host)."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping


def _glibc() -> str | None:
    name, version = platform.libc_ver()
    return version if name == "glibc" else None


def host_facts(host_root: str, environ: Mapping[str, str]) -> dict:
    from shim.host.gather import gather_host_facts

    f = gather_host_facts(host_root, environ)
    uname = os.uname()
    return {
        "simulated_root": host_root if host_root not in ("", "/") else None,
        "kernel": uname.release,
        "machine": uname.machine,
        "glibc": _glibc(),
        "cpu": {"arch": f.cpu.arch, "model": f.cpu.model, "isa_level": f.cpu.isa_level},
        "hypervisor": f.hypervisor,
        "cpus": {"node": f.cpus.node_cpus, "allowed": f.cpus.allowed_cpus, "cgroup_quota": f.cpus.cgroup_quota},
        "gpu": {"kernel_module_version": f.gpu.kernel_module_version, "driver_version": f.gpu.driver_version,
                "cuda_driver_version": f.gpu.cuda_driver_version,
                "devices": [{"index": d.index, "name": d.name, "uuid": d.uuid, "mig": d.mig_enabled,
                             "virtualization": d.virtualization} for d in f.gpu.devices],
                "visible_devices": f.gpu.visible_devices},
        "rdma": [{"name": d.name, "driver": d.driver, "software": d.software,
                  "ports": [{"number": p.number, "state": p.state, "link_layer": p.link_layer} for p in d.ports]}
                 for d in f.rdma.devices],
        "emulators": [{"name": e.name, "arch": e.arch, "enabled": e.enabled} for e in f.emulators],
    }
