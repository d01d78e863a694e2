"""All host facts in one call. Importing this module imports neither pynvml nor psutil: each
gatherer imports what it needs when it runs, and pynvml only on a node with an NVIDIA driver."""

from __future__ import annotations

import os
from collections.abc import Mapping

from shim.elf.hwcaps import host_cpu_features
from shim.host.binfmt import emulators
from shim.host.cpu import cpu_allowance, cpu_facts
from shim.host.gpu import gpu_facts, gpu_models, kernel_module_version
from shim.host.model import HostFacts, HostView
from shim.host.rdma import rdma_facts
from shim.host.virt import hypervisor


def gather_host_facts(host_root: str = "/", environ: Mapping[str, str] | None = None) -> HostFacts:
    """What the node under `host_root` has; `environ` is the job's environment (default: ours)."""
    env = os.environ if environ is None else environ
    return HostFacts(root=host_root, cpu=cpu_facts(host_root), gpu=gpu_facts(host_root, env),
                     rdma=rdma_facts(host_root), emulators=emulators(host_root),
                     hypervisor=hypervisor(host_root), cpus=cpu_allowance(host_root))


def gather_host_view(host_root: str = "/") -> HostView:
    """What the injection planner needs of the node under `host_root` (no NVML, a few reads)."""
    return HostView(root=host_root, cpu=host_cpu_features(os.path.join(host_root, "proc/cpuinfo")),
                    nvidia_module=kernel_module_version(host_root), gpu_models=gpu_models(host_root))
