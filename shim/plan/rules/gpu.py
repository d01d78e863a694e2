"""GPU profiles (kind "gpu", the NVIDIA driver's user space).

- Driver libraries named after a driver release must be of the loaded kernel module's release
  (else CUDA and NVML fail with "driver/library version mismatch": CUDA-DRIVER-MISMATCH); without
  a loaded module they are compared with libcuda's release.
- They are loaded with dlopen (libcudart -> libcuda.so.1 -> the JIT, NVVM and debugger
  libraries; NVML by its users), never named in DT_NEEDED: injected into every image that shows
  a sign of CUDA, and into any image when the profile is requested by name.
- An image's newer CUDA forward-compatibility libcuda is used instead of the host's where the
  GPUs support it (profile.cuda_forward_compat; gpus.json says which models do).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

from shim.host.paths import GPU_INFO_FILES
from shim.knowledge.gpus import driver_release, supports_forward_compat
from shim.knowledge.version import cmp_version, parse_version
from shim.plan.job import OfferedLib, ProfileJob
from shim.plan.rules.base import Rule


@dataclass
class GpuState:
    evidence: str | None = None                          # why the image counts as built for CUDA
    compat: dict[str, str] = field(default_factory=dict)  # SONAME -> the image's forward-compat copy
    compat_reason: str = ""                              # why those are used ({name}: filled per library)
    host_note: str = ""                                  # why the image's forward-compat libcuda is not used


class GpuRule(Rule):
    kind = "gpu"

    def start(self, job: ProfileJob) -> None:
        driver = _check_release(job)
        if job.refused:
            return
        job.state = GpuState(evidence=job.ctx.expectations().cuda_evidence)
        _forward_compat(job, driver)

    def take(self, job: ProfileJob, lib: OfferedLib) -> bool:
        state: GpuState = job.state
        inside = state.compat.get(lib.soname)
        if inside is None:
            return False
        # The image's own newer copy, made findable by SONAME through the re-pointed cache.
        job.work.cache[lib.soname] = inside
        job.skip(lib.soname, lib, inside, state.compat_reason.replace("{name}", lib.soname))
        return True

    def without_target(self, job: ProfileJob, lib: OfferedLib, names: Sequence[str]) -> str:
        state: GpuState = job.state
        if state.evidence:
            return f"loaded with dlopen by the image's CUDA stack ({state.evidence})"
        if job.requested:
            return f"loaded with dlopen by CUDA programs; requested with --profile {job.profile.name}"
        return ""

    def unused(self, job: ProfileJob, lib: OfferedLib, names: Sequence[str]) -> str:
        return (super().unused(job, lib, names) + " and it shows no sign of CUDA (no libcudart.so.*, CUDA_VERSION, "
                f"NCCL...): request it with --profile {job.profile.name}")

    def note(self, job: ProfileJob, lib: OfferedLib) -> str:
        state: GpuState = job.state
        return state.host_note if lib.soname == "libcuda.so.1" else ""


def _check_release(job: ProfileJob) -> str | None:
    """The driver release the libraries must have (the kernel module's); refuses the profile
    when one of them is of another."""
    releases = []  # (file name, release, library)
    for lib in job.libs:
        real = os.path.basename(job.ctx.host_real(lib.host_path))
        if (release := driver_release(real)) is not None:
            releases.append((real, release, lib))
    module = job.ctx.request.host.nvidia_module
    reference, against = module, f"the loaded kernel module {module}"
    if module is None:
        cuda = next((r for r in releases if r[0].startswith("libcuda.so.")), releases[0] if releases else None)
        if cuda:
            reference, against = cuda[1], f"{cuda[0]} (no loaded kernel module to compare with)"
    wrong = [r for r in releases if reference and r[1] != reference]
    if wrong:
        name, _release, lib = wrong[0]
        more = f" (and {len(wrong) - 1} more)" if len(wrong) > 1 else ""
        job.refuse("CUDA-DRIVER-MISMATCH", (lib.soname, lib.host_path, ""), f"{name} does not match {against}{more}",
                   "the node's NVIDIA driver was updated without reloading its kernel module: CUDA and NVML fail "
                   "(\"driver/library version mismatch\"); run on another node, and have it rebooted", job.key(lib))
    return reference


def _newer(a: str, b: str) -> bool:
    va, vb = parse_version(a), parse_version(b)
    return va is not None and vb is not None and cmp_version(va, vb) > 0


def _forward_compat(job: ProfileJob, driver: str | None) -> None:
    """Use the image's forward-compatibility libraries (/usr/local/cuda*/compat) instead of the
    host's when they are newer than the driver and the GPUs support them."""
    state: GpuState = job.state
    compat = next(iter(job.ctx.expectations().cuda_compat), None)
    if compat is None or driver is None or not _newer(compat.version, driver):
        return  # none, or not newer: the host driver is what works (older compat fails with 803)
    what = f"the image's forward-compat libcuda {compat.version} ({compat.path})"
    setting = job.profile.cuda_forward_compat
    if setting == "never":
        state.host_note = f"; {what} is not used: the profile sets cuda_forward_compat = \"never\""
        return
    why = "the profile sets cuda_forward_compat = \"always\""
    if setting != "always":
        models = job.ctx.request.host.gpu_models
        unsupported = sorted({m for m in models if not supports_forward_compat(m)})
        if not models:
            state.host_note = (f"; {what} is newer than this node's driver {driver}, but whether the GPUs support "
                               f"forward compatibility cannot be told (no {GPU_INFO_FILES}): the host driver is used "
                               "(cuda_forward_compat = \"always\" if they do)")
            return
        if unsupported:
            state.host_note = (f"; {what} is newer than this node's driver {driver}, but {', '.join(unsupported)} "
                               "cannot use forward compatibility (datacenter GPUs only): the host driver is used")
            return
        why = f"the GPUs ({', '.join(sorted(set(models)))}) support forward compatibility"
    directory = os.path.dirname(compat.path)
    for lib in job.libs:
        stem = lib.soname.split(".so", 1)[0] + ".so."
        inside = next((p for p in (f"{directory}/{lib.soname}", f"{directory}/{stem}{compat.version}")
                       if job.ctx.paths.regular_file(p)), None)
        if inside:
            state.compat[lib.soname] = inside
    state.compat_reason = (f"the image's forward-compat libcuda {compat.version} is used ({{name}} from "
                           f"{directory}): newer than this node's driver {driver}, and {why}")

