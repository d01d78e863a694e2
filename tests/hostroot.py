"""SIMULATED host roots for the host-facts tests: a directory laid out like a node's / with fake
/proc, /sys and /dev files (plain files standing for device nodes), and stub shared libraries built
here with gcc standing for the NVIDIA driver's, so shim.host can be pointed at nodes this machine is
not (GPU, InfiniBand, VM, emulators, a 1-of-64-cores allocation). Nothing here is a real driver.

    NVML stub  usr/lib/<triplet>/libnvidia-ml.so.<driver> (SONAME libnvidia-ml.so.1, and the
               libnvidia-ml.so.1 link ldconfig makes) exporting the C functions pynvml calls, with
               the answers compiled in by -D macros per scenario (see NVML_STUB)
    CUDA stub  usr/lib/<triplet>/libcuda.so.<driver> (SONAME libcuda.so.1, symbols under a
               version node) and its libcuda.so.1 link
    etc/ld.so.cache  written with shim.elf.ldcache_write, indexing both stubs by SONAME

Stubs are compiled once per machine (tests/cbuild.py caches them by a hash of source and flags
under CACHE/stubs, CACHE being /var/cache/shim-test by default) and copied into each root, so a
root is self-contained: its paths never lead out of it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from cbuild import build_c, stub_dir

from shim.elf.layout import FLAG_ELF_LIBC6, lib_arch
from shim.elf.ldcache import CacheEntry
from shim.elf.ldcache_write import write_ld_cache
from shim.image.arch import host_arch

# x86-64-v3 flags (and the baseline's), as a Zen 3 / Ice Lake cpuinfo lists them.
X86_V3_FLAGS = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 "
                "ht syscall nx lm constant_tsc rep_good nopl pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 movbe "
                "popcnt aes xsave avx f16c rdrand lahf_lm abm bmi1 avx2 bmi2")
X86_V4_FLAGS = X86_V3_FLAGS + " avx512f avx512dq avx512cd avx512bw avx512vl"

NVML_SUCCESS, NVML_ERROR_DRIVER_NOT_LOADED = 0, 9

# The NVML C API as pynvml (nvidia-ml-py 12/13) looks it up: nvmlInit() goes through
# nvmlInitWithFlags, device calls through the _v2 names. Answers: the STUB_* macros.
NVML_STUB = r"""
#include <stdio.h>
#include <string.h>

#ifndef STUB_INIT_RESULT
#define STUB_INIT_RESULT 0
#endif
#ifndef STUB_MIG
#define STUB_MIG -1            /* -1: NVML_ERROR_NOT_SUPPORTED (no MIG on this GPU) */
#endif
#ifndef STUB_VIRT
#define STUB_VIRT 0
#endif

#define OK 0
#define UNINITIALIZED 1
#define INVALID_ARGUMENT 2
#define NOT_SUPPORTED 3
#define INSUFFICIENT_SIZE 7

struct stub_device { unsigned index; };
static struct stub_device devices[64];
static int initialized;

static int init(void) {
    if (STUB_INIT_RESULT != OK) return STUB_INIT_RESULT;
    initialized++;
    return OK;
}
int nvmlInit(void) { return init(); }
int nvmlInit_v2(void) { return init(); }
int nvmlInitWithFlags(unsigned int flags) { (void)flags; return init(); }
int nvmlShutdown(void) {
    if (!initialized) return UNINITIALIZED;
    initialized--;
    return OK;
}
const char *nvmlErrorString(int result) {
    switch (result) {
    case OK: return "Success";
    case UNINITIALIZED: return "Uninitialized";
    case INVALID_ARGUMENT: return "Invalid Argument";
    case NOT_SUPPORTED: return "Not Supported";
    case 9: return "Driver Not Loaded";
    default: return "Unknown Error";
    }
}
static int put(char *buf, unsigned int len, const char *text) {
    if (!buf || strlen(text) + 1 > len) return INSUFFICIENT_SIZE;
    strcpy(buf, text);
    return OK;
}
static struct stub_device *dev(void *handle) {
    for (unsigned i = 0; i < STUB_COUNT; i++)
        if (handle == &devices[i]) return &devices[i];
    return 0;
}
int nvmlSystemGetDriverVersion(char *version, unsigned int len) {
    return initialized ? put(version, len, STUB_DRIVER) : UNINITIALIZED;
}
int nvmlSystemGetCudaDriverVersion(int *version) {
    if (!initialized) return UNINITIALIZED;
    *version = STUB_CUDA;
    return OK;
}
int nvmlSystemGetCudaDriverVersion_v2(int *version) { return nvmlSystemGetCudaDriverVersion(version); }
int nvmlDeviceGetCount_v2(unsigned int *count) {
    if (!initialized) return UNINITIALIZED;
    *count = STUB_COUNT;
    return OK;
}
int nvmlDeviceGetCount(unsigned int *count) { return nvmlDeviceGetCount_v2(count); }
int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **handle) {
    if (!initialized) return UNINITIALIZED;
    if (index >= STUB_COUNT) return INVALID_ARGUMENT;
    devices[index].index = index;
    *handle = &devices[index];
    return OK;
}
int nvmlDeviceGetName(void *handle, char *name, unsigned int len) {
    if (!initialized) return UNINITIALIZED;
    return dev(handle) ? put(name, len, STUB_NAME) : INVALID_ARGUMENT;
}
int nvmlDeviceGetUUID(void *handle, char *uuid, unsigned int len) {
    struct stub_device *d = dev(handle);
    char text[96];
    if (!initialized) return UNINITIALIZED;
    if (!d) return INVALID_ARGUMENT;
    snprintf(text, sizeof text, "GPU-5ca1ab1e-0000-4000-8000-%012u", d->index);
    return put(uuid, len, text);
}
int nvmlDeviceGetMigMode(void *handle, unsigned int *current, unsigned int *pending) {
    if (!initialized) return UNINITIALIZED;
    if (!dev(handle)) return INVALID_ARGUMENT;
    if (STUB_MIG < 0) return NOT_SUPPORTED;
    *current = *pending = STUB_MIG;
    return OK;
}
int nvmlDeviceGetVirtualizationMode(void *handle, unsigned int *mode) {
    if (!initialized) return UNINITIALIZED;
    if (!dev(handle)) return INVALID_ARGUMENT;
    *mode = STUB_VIRT;   /* nvmlGpuVirtualizationMode_t is an enum: 4 bytes */
    return OK;
}
"""

CUDA_STUB = r"""
int cuInit(unsigned int flags) { (void)flags; return 0; }
int cuDriverGetVersion(int *version) { *version = STUB_CUDA; return 0; }
"""
CUDA_VERSION_SCRIPT = "libcuda.so.1 {\n  global: cuInit; cuDriverGetVersion;\n  local: *;\n};\n"


def _version_script() -> Path:
    """The linker version script, at a path fixed by its content (it is part of the build flags)."""
    digest = hashlib.sha256(CUDA_VERSION_SCRIPT.encode()).hexdigest()[:16]
    path = stub_dir() / f"libcuda-{digest}.map"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}")
        tmp.write_text(CUDA_VERSION_SCRIPT)
        tmp.chmod(0o644)
        os.replace(tmp, path)
    return path


def build_nvml_stub(driver: str, cuda: int, count: int, name: str, mig: int = -1, virtualization: int = 0,
                    init_result: int = NVML_SUCCESS) -> Path:
    """A cached stub libnvidia-ml.so.1 answering as a driver `driver` with `count` GPUs called
    `name`; mig -1 (not supported), 0 or 1; virtualization an nvmlGpuVirtualizationMode_t;
    init_result an NVML return code for nvmlInit (9: driver not loaded)."""
    flags = ["-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1",
             f'-DSTUB_DRIVER="{driver}"', f"-DSTUB_CUDA={cuda}", f"-DSTUB_COUNT={count}u",
             f'-DSTUB_NAME="{name}"', f"-DSTUB_MIG={mig}", f"-DSTUB_VIRT={virtualization}",
             f"-DSTUB_INIT_RESULT={init_result}"]
    return build_c(f"libnvidia-ml.so.{driver}", NVML_STUB, flags)


def build_cuda_stub(driver: str, cuda: int) -> Path:
    """A cached stub libcuda.so.<driver> (SONAME libcuda.so.1, cuInit and cuDriverGetVersion
    under the version node libcuda.so.1)."""
    flags = ["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", f"-Wl,--version-script={_version_script()}",
             f"-DSTUB_CUDA={cuda}"]
    return build_c(f"libcuda.so.{driver}", CUDA_STUB, flags)


@dataclass
class SimulatedHost:
    """A simulated node's / under `root`; the methods add the simulated parts of a node."""

    root: Path
    # Where the driver's libraries go (a container path); default: the multiarch directory of
    # this machine's architecture, as Debian's driver packages install them.
    lib_dir: str = ""

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.lib_dir = self.lib_dir or "/usr/lib/" + lib_arch(host_arch()).triplet
        self._cache: list[CacheEntry] = []

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def write(self, rel: str, text: str = "") -> Path:
        p = self.path(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        return p

    def link(self, rel: str, target: str) -> Path:
        p = self.path(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.symlink_to(target)
        return p

    # ---- CPU ----

    def cpu(self, cpus: int = 64, model: str = "Simulated EPYC 9654", flags: str = X86_V3_FLAGS,
            machine: str = "x86_64", vm: bool = False) -> SimulatedHost:
        """/proc/cpuinfo with `cpus` processors, /proc/sys/kernel/arch, the online CPU list."""
        if vm:
            flags += " hypervisor"
        blocks = [f"processor\t: {i}\nvendor_id\t: AuthenticAMD\nmodel name\t: {model}\nflags\t\t: {flags}\n"
                  for i in range(cpus)]
        self.write("proc/cpuinfo", "\n".join(blocks) + "\n")
        self.write("proc/sys/kernel/arch", machine + "\n")
        self.write("sys/devices/system/cpu/online", f"0-{cpus - 1}\n" if cpus > 1 else "0\n")
        return self

    def allowance(self, allowed: str, cgroup: str = "/slurm/uid_1000/job_42/step_0",
                  cpu_max: str | None = None, parent_cpu_max: str | None = None) -> SimulatedHost:
        """This process's Cpus_allowed_list (e.g. "5"), its cgroup v2 path and cpu.max files."""
        self.write("proc/self/status", f"Name:\tpython3\nCpus_allowed_list:\t{allowed}\n")
        self.write("proc/self/cgroup", f"0::{cgroup}\n")
        if cpu_max is not None:
            self.write(f"sys/fs/cgroup{cgroup}/cpu.max", cpu_max + "\n")
        if parent_cpu_max is not None:
            self.write(f"sys/fs/cgroup{os.path.dirname(cgroup)}/cpu.max", parent_cpu_max + "\n")
        return self

    # ---- NVIDIA ----

    def nvidia_module(self, version: str, open_module: bool = False) -> SimulatedHost:
        """/proc/driver/nvidia/version as the proprietary or the open kernel module writes it."""
        if open_module:
            line = (f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {version}  Release Build  "
                    "(dvs-builder@U16-I3-B03-4-3)  Thu Nov 20 22:14:50 UTC 2025")
        else:
            line = f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {version}  Sat Aug 19 01:15:15 UTC 2023"
        self.write("proc/driver/nvidia/version", line + "\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n")
        return self

    def nvidia_dev_nodes(self, count: int) -> SimulatedHost:
        for n in [*(f"nvidia{i}" for i in range(count)), "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"]:
            self.write(f"dev/{n}")
        return self

    def _install_lib(self, built: Path, soname: str) -> str:
        lib_dir = self.lib_dir
        shutil.copy(built, self._mkdir(lib_dir) / built.name)  # a copy: links out of the root are not followed
        self.link(f"{lib_dir}/{soname}", built.name)  # the link ldconfig makes
        flags = lib_arch(host_arch()).cache_flags
        self._cache.append(CacheEntry(flags[0] if flags else FLAG_ELF_LIBC6, soname, f"{lib_dir}/{soname}"))
        self.write("etc/ld.so.cache").write_bytes(write_ld_cache(self._cache))
        return f"{lib_dir}/{soname}"

    def _mkdir(self, rel: str) -> Path:
        p = self.path(rel)
        p.mkdir(parents=True, exist_ok=True)
        return p

    def nvidia_libraries(self, driver: str, cuda: int, count: int, name: str, mig: int = -1,
                         virtualization: int = 0, init_result: int = NVML_SUCCESS) -> SimulatedHost:
        """The NVML and CUDA stubs in the library directory and in etc/ld.so.cache."""
        self._install_lib(build_nvml_stub(driver, cuda, count, name, mig, virtualization, init_result),
                          "libnvidia-ml.so.1")
        self._install_lib(build_cuda_stub(driver, cuda), "libcuda.so.1")
        return self

    # ---- RDMA ----

    def rdma_device(self, name: str, ports: tuple[tuple[str, str], ...], driver: str | None = None,
                    parent: str | None = None) -> SimulatedHost:
        """sys/class/infiniband/NAME with ports ((state, link_layer), ...) numbered from 1, a
        device/driver link when `driver` is given (a PCI device), a `parent` file (rxe)."""
        base = f"sys/class/infiniband/{name}"
        self._mkdir(base)
        for i, (state, layer) in enumerate(ports, 1):
            self.write(f"{base}/ports/{i}/state", state + "\n")
            self.write(f"{base}/ports/{i}/link_layer", layer + "\n")
        if driver:
            self._mkdir(f"sys/bus/pci/drivers/{driver}")
            self.link(f"{base}/device/driver", f"../../../../bus/pci/drivers/{driver}")
        if parent:
            self.write(f"{base}/parent", parent + "\n")
        return self

    def rdma_dev_nodes(self, *names: str) -> SimulatedHost:
        for n in names:
            self.write(f"dev/infiniband/{n}")
        return self

    # ---- binfmt_misc, virtualization ----

    def binfmt(self, name: str, interpreter: str, flags: str = "F", enabled: bool = True) -> SimulatedHost:
        self.write("proc/sys/fs/binfmt_misc/register")
        self.write("proc/sys/fs/binfmt_misc/status", "enabled\n")
        self.write(f"proc/sys/fs/binfmt_misc/{name}",
                   f"{'enabled' if enabled else 'disabled'}\ninterpreter {interpreter}\nflags: {flags}\n"
                   "offset 0\nmagic 7f454c460201010000000000000000000200b700\n"
                   "mask ffffffffffffff00fffffffffffffffffeffffff\n")
        return self

    def dmi(self, sys_vendor: str, product_name: str) -> SimulatedHost:
        self.write("sys/class/dmi/id/sys_vendor", sys_vendor + "\n")
        self.write("sys/class/dmi/id/product_name", product_name + "\n")
        return self


# ---- scenarios: each returns a SimulatedHost under `root` with a 64-CPU amd64 bare-metal node ----

def bare_node(root: Path, lib_dir: str = "") -> SimulatedHost:
    """A node with nothing special: no GPU, no RDMA, no emulators, bare metal, 64 CPUs."""
    return SimulatedHost(root, lib_dir).cpu()


def gpu_present(root: Path, driver: str = "535.104.05", cuda: int = 12020, count: int = 1,
                name: str = "NVIDIA A100-SXM4-80GB", open_module: bool = False, lib_dir: str = "") -> SimulatedHost:
    """A GPU node: kernel module, device nodes, NVML answering with `count` GPUs; the libraries
    in `lib_dir` (default: the multiarch directory), found through etc/ld.so.cache."""
    return (bare_node(root, lib_dir).nvidia_module(driver, open_module).nvidia_dev_nodes(count)
            .nvidia_libraries(driver, cuda, count, name))


def gpu_driver_no_device(root: Path, driver: str = "535.104.05", cuda: int = 12020,
                         init_fails: bool = True) -> SimulatedHost:
    """The driver's files without a usable GPU: NVML init fails with "Driver Not Loaded"
    (init_fails) or answers with 0 devices; /dev has only nvidiactl."""
    host = bare_node(root).nvidia_module(driver).nvidia_dev_nodes(0)
    return host.nvidia_libraries(driver, cuda, 0, "none",
                                 init_result=NVML_ERROR_DRIVER_NOT_LOADED if init_fails else NVML_SUCCESS)


def no_gpu_driver(root: Path) -> SimulatedHost:
    """No NVIDIA driver at all: no /proc/driver/nvidia, no /dev/nvidia*, no libnvidia-ml."""
    return bare_node(root)


def gpu_vgpu(root: Path, driver: str = "535.129.03", cuda: int = 12020) -> SimulatedHost:
    """A VM with an NVIDIA vGPU (NVML virtualization mode 2, NVIDIA GRID-style name)."""
    host = bare_node(root).cpu(vm=True).dmi("QEMU", "Standard PC (Q35 + ICH9, 2009)")
    return (host.nvidia_module(driver).nvidia_dev_nodes(1)
            .nvidia_libraries(driver, cuda, 1, "GRID A100-40C", virtualization=2))


def gpu_mig(root: Path, driver: str = "550.54.15", cuda: int = 12040, count: int = 2) -> SimulatedHost:
    """H100s in MIG mode, with the open kernel module and /dev/nvidia-caps nodes."""
    host = bare_node(root).nvidia_module(driver, open_module=True).nvidia_dev_nodes(count)
    host.write("dev/nvidia-caps/nvidia-cap1")
    host.write("dev/nvidia-caps/nvidia-cap2")
    return host.nvidia_libraries(driver, cuda, count, "NVIDIA H100 80GB HBM3", mig=1)


def rdma_none(root: Path) -> SimulatedHost:
    return bare_node(root)


def rdma_rxe(root: Path) -> SimulatedHost:
    """Soft-RoCE rxe0 over eth0: no bus device, a `parent` file, an ACTIVE Ethernet port."""
    return (bare_node(root).rdma_device("rxe0", (("4: ACTIVE", "Ethernet"),), parent="eth0")
            .rdma_dev_nodes("uverbs0", "rdma_cm"))


def rdma_mlx5_ib(root: Path) -> SimulatedHost:
    """A ConnectX InfiniBand HCA mlx5_0 (driver mlx5_core), port 1 ACTIVE."""
    return (bare_node(root).rdma_device("mlx5_0", (("4: ACTIVE", "InfiniBand"),), driver="mlx5_core")
            .rdma_dev_nodes("uverbs0", "umad0", "issm0", "rdma_cm"))


def binfmt_qemu_aarch64(root: Path) -> SimulatedHost:
    """qemu-user-static for arm64 registered with the F flag, plus a non-emulator entry (Wine)."""
    return (bare_node(root).binfmt("qemu-aarch64", "/usr/bin/qemu-aarch64-static", "F")
            .binfmt("wine", "/usr/bin/wine", "", enabled=True))


def vm_qemu(root: Path) -> SimulatedHost:
    """A QEMU/KVM virtual machine: the cpuinfo hypervisor flag and DMI sys_vendor QEMU."""
    return bare_node(root).cpu(vm=True).dmi("QEMU", "Standard PC (i440FX + PIIX, 1996)")


def one_cpu_of_64(root: Path, cpu_max: str | None = "100000 100000") -> SimulatedHost:
    """A Slurm job step given 1 core of a 64-core node: affinity to CPU 5, cgroup cpu.max 1 CPU."""
    return bare_node(root).allowance("5", cpu_max=cpu_max, parent_cpu_max="max 100000")
