"""NVIDIA GPU facts: the kernel module's version from /proc, the device nodes, and what NVML says.

NVML is asked through pynvml, imported only when the root shows a sign of a driver (the /proc
file or libnvidia-ml.so.1), so a GPU-less node pays nothing. For a root other than "/", that
root's libnvidia-ml.so.1 is loaded by path and handed to pynvml for the duration of the call.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import re
from collections.abc import Iterator, Mapping
from typing import Any

from shim.elf.layout import lib_arch
from shim.elf.ldcache import CACHE_FILE, read_ld_cache
from shim.elf.rootpath import RootPaths
from shim.host.model import GpuDevice, GpuFacts
from shim.host.paths import GPU_INFO, PROC_VERSION
from shim.image.arch import host_arch

NVML_SONAME = "libnvidia-ml.so.1"
LIBRARY_NOT_FOUND = "NVML Shared Library Not Found"   # pynvml's text for NVML_ERROR_LIBRARY_NOT_FOUND

# "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 ..." and the open
# module's "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.104.05  Release Build ...".
_NVRM_RE = re.compile(r"^NVRM version:.*?Kernel Module\b.*?\s(\d+\.\d+(?:\.\d+)*)(?:\s|$)", re.MULTILINE)
_VIRTUALIZATION = {0: "none", 1: "passthrough", 2: "vgpu", 3: "host-vgpu"}
_NOT_SUPPORTED = 3  # NVML_ERROR_NOT_SUPPORTED


def _host(root: str, rel: str) -> str:
    return os.path.join(root, rel.lstrip("/"))


def kernel_module_version(host_root: str = "/") -> str | None:
    """The version in /proc/driver/nvidia/version, None without a loaded kernel module."""
    try:
        with open(_host(host_root, PROC_VERSION), errors="replace") as f:
            text = f.read(4096)
    except OSError:
        return None
    m = _NVRM_RE.search(text)
    return m.group(1) if m else None


def gpu_models(host_root: str = "/") -> tuple[str, ...]:
    """The model of each GPU the kernel module lists (/proc/driver/nvidia/gpus/<bus>/information,
    "Model: NVIDIA A100-SXM4-80GB"): a file read, where NVML would load the driver."""
    base = _host(host_root, GPU_INFO)
    try:
        buses = sorted(os.listdir(base))
    except OSError:
        return ()
    models = []
    for bus in buses:
        try:
            with open(os.path.join(base, bus, "information"), errors="replace") as f:
                m = re.search(r"^Model:\s*(.+?)\s*$", f.read(8192), re.MULTILINE)
        except OSError:
            continue
        if m:
            models.append(m.group(1))
    return tuple(models)


def _natural(name: str) -> tuple[Any, ...]:
    # nvidia2 before nvidia10
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def dev_nodes(host_root: str = "/") -> tuple[str, ...]:
    """/dev/nvidia* (and the MIG capability nodes under /dev/nvidia-caps) as container paths."""
    dev = _host(host_root, "dev")
    pattern = os.path.join(glob.escape(dev), "nvidia*")
    found = [os.path.relpath(p, dev) for p in glob.glob(pattern) + glob.glob(os.path.join(pattern, "*"))
             if not os.path.isdir(p)]
    return tuple("/dev/" + n for n in sorted(found, key=_natural))


def _search_dirs(host_root: str, environ: Mapping[str, str]) -> list[str]:
    arch = lib_arch(host_arch())  # the library is loaded into this process: its architecture counts
    dirs: list[str] = []
    if host_root == "/":  # the job's LD_LIBRARY_PATH applies to the real host only
        dirs += [d for d in re.split(r"[:;]", environ.get("LD_LIBRARY_PATH", "")) if d.startswith("/")]
    dirs += [*arch.default_dirs(True), *arch.default_dirs(False), "/usr/lib64", "/usr/lib/wsl/lib"]
    return list(dict.fromkeys(dirs))


def find_nvml(host_root: str = "/", environ: Mapping[str, str] = os.environ) -> str | None:
    """Host path of the file the root's libnvidia-ml.so.1 leads to (symlinks resolved inside the
    root, so loading it never leaves the root): via its /etc/ld.so.cache, then the usual
    library directories."""
    paths = RootPaths(host_root)
    cache_file = paths.regular_file(CACHE_FILE)
    if cache_file:
        arch = lib_arch(host_arch())
        in_cache = read_ld_cache(cache_file).lookup(NVML_SONAME, arch.cache_flags or None)
        found = paths.regular_file(in_cache) if in_cache else None
        if found:
            return found
    for d in _search_dirs(host_root, environ):
        found = paths.regular_file(f"{d}/{NVML_SONAME}")
        if found:
            return found
    return None


def gpu_facts(host_root: str = "/", environ: Mapping[str, str] = os.environ) -> GpuFacts:
    """What the root has of NVIDIA GPUs. Never raises: NVML's failures land in nvml_error."""
    module = kernel_module_version(host_root)
    library = find_nvml(host_root, environ)
    base = dict(kernel_module_version=module, nvml_library=library, dev_nodes=dev_nodes(host_root),
                visible_devices=environ.get("CUDA_VISIBLE_DEVICES"))
    proc_file = os.path.exists(_host(host_root, PROC_VERSION))
    if library is None and not (proc_file and host_root == "/"):
        # No sign of a driver (or, for another root, nothing to load): do not import pynvml.
        return GpuFacts(**base, nvml_error=LIBRARY_NOT_FOUND)
    try:
        return GpuFacts(**base, **_ask_nvml(None if host_root == "/" else library))
    except OSError as e:  # the root's library does not load here (wrong architecture, corrupt)
        return GpuFacts(**base, nvml_error=f"{LIBRARY_NOT_FOUND}: {e}")
    except Exception as e:  # facts must never fail: the reason is reported instead
        return GpuFacts(**base, nvml_error=str(e) or type(e).__name__)


@contextlib.contextmanager
def _nvml_library(path: str | None) -> Iterator[Any]:
    """pynvml, with `path` as its library for the duration (None: pynvml loads its own)."""
    import pynvml  # lazy: costs tens of milliseconds, and only a driver host needs it

    if path is None:
        yield pynvml
        return
    lib = ctypes.CDLL(path)
    # pynvml keeps the library handle and the function pointers taken from it in module globals,
    # guarded by libLoadLock; swap both in, and put the previous ones back afterwards.
    with pynvml.libLoadLock:
        saved = (pynvml.nvmlLib, dict(pynvml._nvmlGetFunctionPointer_cache))
        pynvml.nvmlLib = lib
        pynvml._nvmlGetFunctionPointer_cache.clear()
    try:
        yield pynvml
    finally:
        with pynvml.libLoadLock:
            pynvml.nvmlLib = saved[0]
            pynvml._nvmlGetFunctionPointer_cache.clear()
            pynvml._nvmlGetFunctionPointer_cache.update(saved[1])


def _ask_nvml(library: str | None) -> dict[str, Any]:
    with _nvml_library(library) as nv:
        try:
            nv.nvmlInit()
        except nv.NVMLError as e:
            return {"nvml_error": str(e)}
        try:
            return _query(nv)
        except nv.NVMLError as e:
            return {"nvml_error": str(e)}
        finally:
            with contextlib.suppress(nv.NVMLError):
                nv.nvmlShutdown()


def _query(nv: Any) -> dict[str, Any]:
    driver = nv.nvmlSystemGetDriverVersion()
    try:
        cuda = nv.nvmlSystemGetCudaDriverVersion_v2()
    except nv.NVMLError:  # older drivers have only the first version
        cuda = nv.nvmlSystemGetCudaDriverVersion()
    count = nv.nvmlDeviceGetCount()
    devices = tuple(_device(nv, i) for i in range(count))
    return {"driver_version": driver, "cuda_driver_version": cuda, "devices": devices}


def _device(nv: Any, index: int) -> GpuDevice:
    handle = nv.nvmlDeviceGetHandleByIndex(index)
    try:
        mig = nv.nvmlDeviceGetMigMode(handle)[0] == nv.NVML_DEVICE_MIG_ENABLE
    except nv.NVMLError as e:
        if e.value != _NOT_SUPPORTED:  # pre-Ampere GPUs have no MIG: that is "off", not an error
            raise
        mig = False
    try:
        virtualization = _VIRTUALIZATION.get(nv.nvmlDeviceGetVirtualizationMode(handle), "unknown")
    except nv.NVMLError:
        virtualization = "unknown"
    return GpuDevice(index=index, name=nv.nvmlDeviceGetName(handle), uuid=nv.nvmlDeviceGetUUID(handle),
                     mig_enabled=mig, virtualization=virtualization)
