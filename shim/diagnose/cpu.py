"""CPU diagnostics: image architecture against the host's (native, emulated, impossible), the
x86-64 ISA level the binaries need, the CPUs the job may use, and whether the node is a VM."""

from __future__ import annotations

from collections.abc import Mapping

from shim.diagnose.common import plural, raised
from shim.expect.model import ImageExpectations
from shim.host.model import HostFacts
from shim.model import ERROR, INFO, WARNING, Diagnostic

ARCH_MISMATCH = "ARCH-MISMATCH"   # an image of another architecture, no emulator: the launch exits 66

# Host architectures that run another one natively (the kernel's compat layer).
_NATIVE_ALSO = {"amd64": ("386",)}
_LEVEL_FEATURES = {2: "SSE4.2/POPCNT", 3: "AVX2/FMA/BMI2", 4: "AVX-512"}


def arch_diagnostics(host: HostFacts, image_arch: str) -> list[Diagnostic]:
    host_arch = host.cpu.arch
    if not image_arch or image_arch == "unknown" or host_arch in ("", "unknown") or image_arch == host_arch:
        return []
    if image_arch in _NATIVE_ALSO.get(host_arch, ()):
        return []
    emus = [e for e in host.emulators if e.arch == image_arch]
    enabled = [e for e in emus if e.enabled]
    if enabled:
        e = enabled[0]
        flag = ("" if "F" in e.flags else
                f"; its binfmt_misc entry lacks the F flag, so the kernel looks for {e.interpreter} inside the "
                "container, where it usually is not: the app may fail to start (\"exec format error\" or "
                "\"no such file\")")
        return [Diagnostic(
            "ARCH-EMULATED", WARNING,
            f"the image is {image_arch}, this node is {host_arch}: it runs under the {e.name} emulator "
            f"({e.interpreter}), typically 5-50 times slower{flag}",
            f"use an image built for {host_arch} (multi-arch builds: --platform linux/{host_arch})",
            f"register {e.name} with the F flag (binfmt_misc, e.g. qemu-user-static's --fix-binary)"
            if "F" not in e.flags else "")]
    disabled = f" ({emus[0].name} is registered but disabled)" if emus else ""
    return [Diagnostic(
        ARCH_MISMATCH, ERROR,
        f"the image is {image_arch}, this node is {host_arch}, and no emulator for {image_arch} is enabled{disabled}",
        f"use an image built for {host_arch}",
        f"to run {image_arch} images slowly, register qemu-user-static for it in binfmt_misc with the F flag")]


def isa_diagnostics(expect: ImageExpectations, host: HostFacts, image_arch: str) -> list[Diagnostic]:
    level = host.cpu.isa_level
    if image_arch != "amd64" or host.cpu.arch != "amd64" or level is None:
        return []
    cpu = f"this CPU{f' ({host.cpu.model})' if host.cpu.model else ''} is x86-64-v{level}"
    out: list[Diagnostic] = []
    declared = expect.required("cpu.x86-64")
    need_decl = int(declared.value) if declared and declared.value else 0
    decl_text = declared.text if declared else ""
    need_bin = expect.isa_level or 0
    if need_bin > level:
        out.append(Diagnostic(
            "ISA-TOO-HIGH", ERROR,
            f"{expect.isa_binary} needs x86-64-v{need_bin} ({_LEVEL_FEATURES.get(need_bin, '')}, from its "
            f"GNU property note); {cpu}: ld.so refuses to load it (\"CPU ISA level is lower than required\")",
            f"use a build for x86-64-v{level} or lower (-march=x86-64-v{level}), or run on newer nodes",
            f"route this image to nodes with x86-64-v{need_bin} CPUs"))
    if need_decl > level and need_decl > need_bin:
        out.append(Diagnostic(
            "ISA-TOO-HIGH", ERROR,
            f"the image declares {decl_text!r} ({_LEVEL_FEATURES.get(need_decl, '')}); {cpu}: "
            "its code is expected to stop with an illegal instruction",
            f"use a build for x86-64-v{level} or lower, or run on newer nodes",
            f"route this image to nodes with x86-64-v{need_decl} CPUs"))
    if expect.app and expect.app_isa_level == 1 and level >= 3:
        hw = [d.rsplit("/", 1)[-1] for d in expect.hwcaps_dirs]
        libs = (f"; the image's libraries have glibc-hwcaps variants ({', '.join(sorted(set(hw)))}) that ld.so picks "
                "automatically" if hw else "")
        out.append(Diagnostic(
            "ISA-UNDERUSED", INFO,
            f"{expect.app} is a baseline x86-64 (v1) build; {cpu}: its {_LEVEL_FEATURES[level]} units go unused "
            f"by the app's own code{libs}",
            f"for speed, rebuild with -march=x86-64-v{level} (or ship glibc-hwcaps/x86-64-v{level} variants)", ""))
    return out


def _omp_threads(expect: ImageExpectations, environ: Mapping[str, str]) -> int | None:
    value = environ.get("OMP_NUM_THREADS") or expect.env.get("OMP_NUM_THREADS") or ""
    first = value.split(",")[0].strip()  # "8,2": 8 threads at the outer level
    return int(first) if first.isdigit() and int(first) > 0 else None


def cpu_diagnostics(expect: ImageExpectations, host: HostFacts, environ: Mapping[str, str]) -> list[Diagnostic]:
    c = host.cpus
    usable = float(c.allowed_cpus)
    if c.cgroup_quota is not None:
        usable = min(usable, c.cgroup_quota)
    quota = f", cgroup quota {c.cgroup_quota:g} CPUs" if c.cgroup_quota is not None else ""
    reasons: list[str] = []
    if c.node_cpus >= 4 and (c.allowed_cpus == 1 or (c.cgroup_quota is not None and c.cgroup_quota < 1.5)):
        reasons.append(f"a single CPU on a {c.node_cpus}-CPU node")
    omp = _omp_threads(expect, environ)
    if omp is not None and omp > usable:
        rt = f" (OpenMP runtime {expect.openmp[0].soname})" if expect.openmp else ""
        cpus = plural(1, "CPU") if usable == 1 else f"{usable:g} CPUs"
        reasons.append(f"OMP_NUM_THREADS={omp} threads{rt} share {cpus}, oversubscribed")
    declared = expect.required("cpu.cores")
    if declared and declared.value and int(declared.value) > usable:
        reasons.append(f"the image declares {declared.text!r}")
    if not reasons:
        return []
    return [Diagnostic(
        "CPU-STARVED", raised(WARNING, bool(declared and declared.value and int(declared.value) > usable)),
        f"the job may use {c.allowed_cpus} of the node's {c.node_cpus} CPUs{quota}: " + "; ".join(reasons),
        "ask the scheduler for more CPUs (e.g. --cpus-per-task=N) and set OMP_NUM_THREADS to match",
        "check the job's cpuset and cpu.max (e.g. Slurm's task/affinity and cgroup settings)")]


def virtualization_diagnostics(host: HostFacts) -> list[Diagnostic]:
    if not host.hypervisor:
        return []
    return [Diagnostic(
        "VIRTUALIZED", INFO,
        f"this node is a virtual machine ({host.hypervisor}): timings vary with the host's load, and GPUs and "
        "RDMA devices work only when passed through (PCI passthrough, SR-IOV)",
        "", "")]
