"""hardware_diagnostics: what the image expects (shim.expect) against what the node has
(shim.host), as Diagnostics with stable codes.

Codes: GPU-ABSENT, CUDA-DRIVER-TOO-OLD, CUDA-FORWARD-COMPAT, CUDA-REQUIRE-UNSATISFIED,
CUDA-REQUIRE-UNDECIDED, CUDA-STUB-IN-PATH, GPU-VIRTUAL (shim.diagnose.gpu); RDMA-ABSENT,
RDMA-SOFTWARE, RDMA-PROVIDER-MISSING (shim.diagnose.rdma); ARCH-EMULATED, ARCH-MISMATCH,
ISA-TOO-HIGH, ISA-UNDERUSED, CPU-STARVED, VIRTUALIZED (shim.diagnose.cpu); plus the image's own
IMAGE-REQUIRES-INVALID (shim.expect.requires). A requirement the image declares explicitly
(shim.requires) and the node misses is one severity notch higher than library evidence alone.
"""

from __future__ import annotations

from collections.abc import Mapping

from shim.diagnose.cpu import (
    ARCH_MISMATCH,
    arch_diagnostics,
    cpu_diagnostics,
    isa_diagnostics,
    virtualization_diagnostics,
)
from shim.diagnose.gpu import gpu_diagnostics
from shim.diagnose.rdma import rdma_diagnostics
from shim.expect.model import ImageExpectations
from shim.host.model import HostFacts
from shim.model import Diagnostic


def hardware_diagnostics(expect: ImageExpectations, host: HostFacts, image_arch: str,
                         environ: Mapping[str, str]) -> list[Diagnostic]:
    """Every finding, in a stable order: the image's declaration problems, architecture, ISA,
    GPU, RDMA, CPUs, virtualization. `environ`: the job's environment (CUDA_VISIBLE_DEVICES,
    OMP_NUM_THREADS, NVIDIA_DISABLE_REQUIRE override the image's and the host facts' values)."""
    out = list(expect.diagnostics)
    arch = arch_diagnostics(host, image_arch)
    out += arch
    if not any(d.code == ARCH_MISMATCH for d in arch):
        out += isa_diagnostics(expect, host, image_arch)
    out += gpu_diagnostics(expect, host, environ)
    out += rdma_diagnostics(expect, host)
    out += cpu_diagnostics(expect, host, environ)
    out += virtualization_diagnostics(host)
    return out
