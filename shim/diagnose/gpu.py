"""GPU diagnostics: is there a usable NVIDIA GPU for a CUDA image, is its driver new enough for
the image's CUDA runtime (NVIDIA's table, minor-version and forward compatibility), does it meet
the image's NVIDIA_REQUIRE_*, is it virtual (vGPU, MIG)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping

from shim.diagnose.common import raised
from shim.diagnose.cuda import cmp_version, cuda_from_nvml, cuda_str, driver_table, evaluate_require, parse_version
from shim.expect.model import ImageExpectations
from shim.host.model import GpuFacts, HostFacts
from shim.knowledge.gpus import supports_forward_compat
from shim.model import ERROR, INFO, WARNING, Diagnostic
from shim.options import TRUE_WORDS

Version = tuple[int, ...]
_HIDDEN = ("", "-1", "nodevfiles")  # NoDevFiles: Slurm's value for a job given no GPU


def _has_driver(gpu: GpuFacts) -> bool:
    return bool(gpu.driver_version or gpu.kernel_module_version or gpu.nvml_library
                or "/dev/nvidiactl" in gpu.dev_nodes)


def _device_count(gpu: GpuFacts) -> int:
    nodes = sum(1 for n in gpu.dev_nodes if re.fullmatch(r"/dev/nvidia\d+", n))
    return max(len(gpu.devices), nodes)


def visible_devices(host: HostFacts, environ: Mapping[str, str]) -> str | None:
    """CUDA_VISIBLE_DEVICES as the job will have it (None: unset, every GPU visible)."""
    if "CUDA_VISIBLE_DEVICES" in environ:
        return environ["CUDA_VISIBLE_DEVICES"]
    return host.gpu.visible_devices


def _hidden_by(value: str | None, count: int) -> bool:
    """CUDA stops reading the list at its first invalid entry: an empty list, -1, NoDevFiles, or
    an index past the last GPU leaves no device visible."""
    if value is None:
        return False
    first = value.split(",")[0].strip()
    if first.lower() in _HIDDEN:
        return True
    return first.isdigit() and count > 0 and int(first) >= count


def _absent(expect: ImageExpectations, host: HostFacts, environ: Mapping[str, str], why: str) -> Diagnostic | None:
    gpu = host.gpu
    sev = raised(WARNING, expect.required("gpu.cuda") is not None)
    fallback = "the app fails with \"no CUDA-capable device is detected\" or falls back to the CPU"
    if not _has_driver(gpu):
        return Diagnostic(
            "GPU-ABSENT", sev,
            f"the image is built for CUDA ({why}) but this node has no NVIDIA driver "
            f"(no /proc/driver/nvidia/version, no libnvidia-ml.so.1): {fallback}",
            "run it on a GPU node (e.g. sbatch --gres=gpu:1 or --gpus=1 on the GPU partition)",
            "install the NVIDIA driver on the GPU nodes, or route CUDA images to them")
    count = _device_count(gpu)
    if count == 0:
        nvml = f"; NVML: {gpu.nvml_error}" if gpu.nvml_error else ""
        return Diagnostic(
            "GPU-ABSENT", sev,
            f"the image is built for CUDA ({why}); NVIDIA driver "
            f"{gpu.driver_version or gpu.kernel_module_version or '(version unknown)'} is installed but "
            f"no GPU device is present (no /dev/nvidiaN, NVML lists none{nvml}): {fallback}",
            "ask the scheduler for a GPU (--gres=gpu:N or --gpus=N)",
            "check nvidia-smi on the node: the GPUs may be in a failed state, or the job's device cgroup "
            "hides /dev/nvidiaN")
    value = visible_devices(host, environ)
    if _hidden_by(value, count):
        slurm = (" (Slurm sets NoDevFiles when the job was given no GPU)"
                 if (value or "").strip() == "NoDevFiles" else "")
        return Diagnostic(
            "GPU-ABSENT", sev,
            f"the image is built for CUDA ({why}); the node has {count} GPU(s) but "
            f"CUDA_VISIBLE_DEVICES={value!r} hides all of them{slurm}: {fallback}",
            "request GPUs for the job (--gres=gpu:N or --gpus=N), or unset/fix CUDA_VISIBLE_DEVICES",
            "")
    return None


def _driver_version(gpu: GpuFacts) -> tuple[str | None, Version | None]:
    text = gpu.driver_version or gpu.kernel_module_version
    return text, parse_version(text)


def driver_cuda(gpu: GpuFacts) -> tuple[Version | None, str]:
    """The highest CUDA version the driver supports, and where that came from."""
    v = cuda_from_nvml(gpu.cuda_driver_version)
    if v:
        return v, "NVML"
    text, dv = _driver_version(gpu)
    if dv:
        c = driver_table().cuda_of_driver(dv)
        if c:
            return c, f"NVIDIA's table for driver {text}"
    return None, ""


def image_cuda(expect: ImageExpectations) -> tuple[Version | None, str, str]:
    """(the CUDA version the image's runtime needs (major[, minor]), its full text, the evidence)."""
    rt = expect.cuda_runtime
    if rt is not None:
        v = parse_version(rt.version)
        if v:
            return v[:2], rt.version or "", rt.real_path or rt.path
        major = rt.soname.rsplit(".so.", 1)[-1]
        if major.isdigit():
            return (int(major),), major, rt.path
    for text, where in ((expect.cuda_version, "CUDA_VERSION in the image's environment"),
                        (expect.cuda_version_label, "label com.nvidia.cuda.version")):
        v = parse_version(text)
        if v:
            return v[:2], text or "", where
    return None, "", ""


def _check_op(have: Version, op: str, want: Version) -> bool:
    c = cmp_version(have, want)
    return {"=": c == 0, "<": c < 0, "<=": c <= 0, ">": c > 0, ">=": c >= 0}.get(op, c >= 0)


def _covering_compat(expect: ImageExpectations, need: Version) -> str | None:
    """A forward-compat libcuda in the image new enough for CUDA `need`."""
    table = driver_table()
    for c in expect.cuda_compat:
        cv = parse_version(c.version)
        cc = table.cuda_of_driver(cv) if cv else None
        if cc and cmp_version(cc, need) >= 0:
            return c.version
    return None


def _driver_too_old(expect: ImageExpectations, gpu: GpuFacts) -> list[Diagnostic]:
    have, have_src = driver_cuda(gpu)
    drv_text, drv = _driver_version(gpu)
    if have is None:
        return []
    table = driver_table()
    out: list[Diagnostic] = []
    need, need_text, evidence = image_cuda(expect)
    node = f"this node's driver {drv_text or '(version unknown)'} supports CUDA {cuda_str(have)} (from {have_src})"
    if need is not None and cmp_version(need, have[:len(need)]) > 0:
        mm = need if len(need) == 2 else None
        ga = table.toolkit_driver(mm) if mm else None
        releases = table.releases(mm) if mm else []
        listed = ""
        if ga:
            listed = f"; NVIDIA lists driver >= {ga.driver_text} for CUDA {cuda_str(mm or need)} ({ga.release})"
            if releases[-1] is not ga:
                listed += f" up to >= {releases[-1].driver_text} ({releases[-1].release})"
        compat = table.minor_compat_driver(need[0])
        admin = f"update the NVIDIA driver to >= {ga.driver_text}" if ga else "update the NVIDIA driver"
        if compat:
            admin += f"; any driver >= {compat[1]} runs CUDA {need[0]}.x through minor-version compatibility"
        what = f"the image's CUDA runtime {need_text} ({evidence}) needs a driver for CUDA {cuda_str(need)}"
        if need[0] == have[0]:
            if compat and drv and cmp_version(drv, compat[0]) >= 0:
                out.append(Diagnostic(
                    "CUDA-DRIVER-TOO-OLD", WARNING,
                    f"{what}; {node}{listed}: it runs through CUDA minor-version compatibility "
                    f"(driver >= {compat[1]} for {need[0]}.x), but PTX newer than CUDA {cuda_str(have)} cannot "
                    f"be JIT-compiled and features that need a newer driver fail "
                    f"(cudaErrorUnsupportedPtxVersion, cudaErrorCallRequiresNewerDriver)",
                    "ship SASS for the node's GPUs (not only PTX) or use an image built for CUDA "
                    f"<= {cuda_str(have)}", admin))
            else:
                out.append(Diagnostic(
                    "CUDA-DRIVER-TOO-OLD", ERROR, f"{what}; {node}{listed}",
                    f"use an image built for CUDA <= {cuda_str(have)}, or ask for nodes with a newer driver",
                    admin))
        else:
            fc = _covering_compat(expect, need)
            via = (f"; the image's forward-compatibility libcuda {fc} may bridge the gap on datacenter GPUs only"
                   if fc else "; CUDA has no compatibility across major versions")
            out.append(Diagnostic(
                "CUDA-DRIVER-TOO-OLD", WARNING if fc else ERROR, f"{what}; {node}{listed}{via}",
                f"use an image built for CUDA {have[0]}.x (<= {cuda_str(have)}), or ask for nodes with a newer driver",
                admin))
    declared = expect.required("gpu.cuda")
    if declared and declared.value and not any(d.severity == ERROR for d in out):
        want = parse_version(declared.value)
        if want and not _check_op(have, declared.op or ">=", want):
            ga = table.toolkit_driver(want[:2])
            out.append(Diagnostic(
                "CUDA-DRIVER-TOO-OLD", ERROR,
                f"the image declares {declared.text!r}; {node}",
                f"use an image built for CUDA <= {cuda_str(have)}, or ask for nodes with a newer driver",
                f"update the NVIDIA driver to >= {ga.driver_text} (CUDA {cuda_str(want[:2])})" if ga
                else "update the NVIDIA driver"))
    return out


def _forward_compat(expect: ImageExpectations, gpu: GpuFacts) -> list[Diagnostic]:
    if not expect.cuda_compat:
        return []
    kernel_text = gpu.kernel_module_version or gpu.driver_version
    kernel = parse_version(kernel_text)
    if kernel is None:
        return []
    c = expect.cuda_compat[0]
    cv = parse_version(c.version)
    if cv is None:
        return []
    names = sorted({d.name for d in gpu.devices})
    if cmp_version(cv, kernel) > 0:
        where = ("it is on the image's default library path, so it is used" if c.in_path else
                 f"it is used only when the app's LD_LIBRARY_PATH names {posixpath.dirname(c.path)} "
                 "(NGC images' entrypoint does that; shimrun runs no entrypoint)")
        unsupported = [n for n in names if not supports_forward_compat(n)]
        gpus = (f"; this node's GPUs ({', '.join(unsupported)}) do not support it"
                if unsupported and unsupported == names else "")
        return [Diagnostic(
            "CUDA-FORWARD-COMPAT", INFO,
            f"the image carries CUDA forward-compatibility libcuda {c.version} ({c.path}), newer than this "
            f"node's driver {kernel_text}: {where}, and works only on datacenter GPUs (and select "
            f"professional RTX boards); elsewhere CUDA fails with CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE "
            f"(804){gpus}",
            "nothing to do on datacenter GPUs; on other GPUs use an image built for the node's CUDA version",
            f"a driver >= {c.version} on the node makes the compatibility package unnecessary")]
    if cmp_version(cv, kernel) < 0 and c.in_path:
        return [Diagnostic(
            "CUDA-FORWARD-COMPAT", WARNING,
            f"the image puts CUDA forward-compatibility libcuda {c.version} ({c.path}) on its default library "
            f"path, but this node's driver {kernel_text} is newer: loaded in place of the driver's libcuda it "
            "fails with CUDA_ERROR_SYSTEM_DRIVER_MISMATCH (803)",
            f"remove {posixpath.dirname(c.path)} from the image's LD_LIBRARY_PATH / ld.so.conf "
            "(compatibility libraries are for older drivers only)",
            "")]
    return []


def _stub(expect: ImageExpectations) -> list[Diagnostic]:
    if not expect.cuda_stub_in_path:
        return []
    return [Diagnostic(
        "CUDA-STUB-IN-PATH", WARNING,
        f"the image's loader finds the link-time stub {expect.cuda_stub_in_path} for libcuda.so.1: loaded "
        "instead of the driver, every CUDA call fails with \"CUDA driver version is insufficient for CUDA "
        "runtime version\" (cudaErrorInsufficientDriver)",
        "remove the stubs directory from the image's LD_LIBRARY_PATH / ld.so.conf: stubs are for linking only",
        "")]


def _requires(expect: ImageExpectations, gpu: GpuFacts, environ: Mapping[str, str]) -> list[Diagnostic]:
    if expect.nvidia_disable_require or environ.get("NVIDIA_DISABLE_REQUIRE", "").strip().lower() in TRUE_WORDS:
        return []
    have, _ = driver_cuda(gpu)
    drv_text, _ = _driver_version(gpu)
    cuda = cuda_str(have) if have else None
    out = []
    for name, expr in sorted(expect.nvidia_require.items()):
        r = evaluate_require(expr, cuda=cuda, driver=drv_text)
        node = (f"this node: driver {drv_text or 'unknown'}, CUDA {cuda or 'unknown'}, "
                "GPU brand and arch unknown to shim")
        if r.satisfied is True:
            continue
        if r.invalid:
            out.append(Diagnostic(
                "CUDA-REQUIRE-UNSATISFIED", WARNING,
                f"the image's {name} cannot be evaluated ({r.invalid}); nvidia-container-runtime would refuse it: "
                f"{r.explain()}",
                "set NVIDIA_DISABLE_REQUIRE=true to skip the image's requirement", ""))
        elif r.satisfied is False:
            out.append(Diagnostic(
                "CUDA-REQUIRE-UNSATISFIED", WARNING,
                f"the image's {name} is not met ({node}): {r.explain()}",
                "the image was built for a newer driver (nvidia-container-runtime would refuse to start it); "
                "use an image built for this node's CUDA version",
                "update the NVIDIA driver to meet the image's requirement"))
        else:
            out.append(Diagnostic(
                "CUDA-REQUIRE-UNDECIDED", INFO,
                f"the image's {name} depends on facts shim does not know ({node}): {r.explain()}",
                "it holds only where the GPU matches an undecided term (brand=tesla/nvidia terms: datacenter "
                "GPUs, through forward compatibility)", ""))
    return out


def _virtual(expect: ImageExpectations, gpu: GpuFacts) -> list[Diagnostic]:
    out = []
    mig = [d for d in gpu.devices if d.mig_enabled]
    if mig:
        names = ", ".join(f"GPU {d.index} ({d.name})" for d in mig)
        out.append(Diagnostic(
            "GPU-VIRTUAL", INFO,
            f"{names} in MIG mode: the job gets a MIG slice, not the whole GPU (a fraction of its memory and "
            "SMs; no peer-to-peer or NVLink between slices; one slice per CUDA process)",
            "name slices by their MIG-<uuid> in CUDA_VISIBLE_DEVICES; size the problem to the slice", ""))
    vgpu = [d for d in gpu.devices if d.virtualization in ("vgpu", "host-vgpu")]
    if vgpu:
        names = ", ".join(f"GPU {d.index} ({d.name})" for d in vgpu)
        out.append(Diagnostic(
            "GPU-VIRTUAL", INFO,
            f"{names} is an NVIDIA vGPU: the guest driver must match the host's vGPU manager; CUDA forward "
            "compatibility is not supported, and unified memory and profilers work only if the vGPU profile "
            "enables them",
            "expect a share of the GPU; profiling tools may report nothing",
            "enable unified memory / profiling in the vGPU profile where jobs need them"))
    return out


def gpu_diagnostics(expect: ImageExpectations, host: HostFacts, environ: Mapping[str, str]) -> list[Diagnostic]:
    why = expect.cuda_evidence
    if why is None:
        return []
    absent = _absent(expect, host, environ, why)
    out = [absent] if absent else []
    if _has_driver(host.gpu):
        out += _driver_too_old(expect, host.gpu)
        out += _forward_compat(expect, host.gpu)
        out += _requires(expect, host.gpu, environ)
    if absent is None:
        out += _stub(expect)
        out += _virtual(expect, host.gpu)
    return out
