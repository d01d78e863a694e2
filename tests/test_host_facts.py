"""shim.host against SIMULATED host roots (tests/hostroot.py: fake /proc, /sys, /dev files and
gcc-built stub NVML/CUDA libraries) and against this real machine ("/").

The NVML stubs are loaded into the pytest process by path; real-host GPU checks run in a fresh
interpreter, because there glibc would hand pynvml's dlopen("libnvidia-ml.so.1") an already loaded
stub whose SONAME matches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from hostroot import (
    X86_V4_FLAGS,
    SimulatedHost,
    bare_node,
    binfmt_qemu_aarch64,
    gpu_driver_no_device,
    gpu_mig,
    gpu_present,
    gpu_vgpu,
    no_gpu_driver,
    one_cpu_of_64,
    rdma_mlx5_ib,
    rdma_none,
    rdma_rxe,
    vm_qemu,
)

from shim.elf.facts import elf_facts
from shim.elf.ldcache import read_ld_cache
from shim.host.binfmt import emulator_for, emulators, qemu_arch
from shim.host.cpu import cpu_allowance, cpu_facts
from shim.host.gather import gather_host_facts
from shim.host.gpu import LIBRARY_NOT_FOUND, find_nvml, gpu_facts, kernel_module_version
from shim.host.model import CpuFacts, Emulator, GpuDevice, RdmaDevice, RdmaFacts, RdmaPort
from shim.host.rdma import rdma_facts
from shim.host.virt import hypervisor
from shim.image.arch import host_arch

needs_gcc = pytest.mark.skipif(not shutil.which("gcc") or os.uname().machine != "x86_64",
                               reason="the NVML stubs are built with gcc for x86_64")


def in_fresh_python(code: str) -> dict:
    """Run `code` (which sets `out`) in a new interpreter; its `out` as JSON."""
    r = subprocess.run([sys.executable, "-P", "-c", code + "\nimport json; print(json.dumps(out))"],
                       capture_output=True, text=True, check=True, timeout=120)
    return json.loads(r.stdout.splitlines()[-1])


# ---- GPU ----

@needs_gcc
@pytest.mark.parametrize(("driver", "cuda", "count", "name"), [
    ("535.104.05", 12020, 1, "NVIDIA A100-SXM4-80GB"),
    ("570.86.15", 12080, 4, "NVIDIA H100 80GB HBM3"),
])
def test_gpu_present(tmp_path: Path, driver: str, cuda: int, count: int, name: str) -> None:
    host = gpu_present(tmp_path, driver, cuda, count, name)
    facts = gpu_facts(str(host.root), environ={"CUDA_VISIBLE_DEVICES": "1,0"})
    assert facts.nvml_error is None
    assert facts.kernel_module_version == driver
    assert facts.driver_version == driver
    assert facts.cuda_driver_version == cuda
    assert facts.devices == tuple(
        GpuDevice(i, name, f"GPU-5ca1ab1e-0000-4000-8000-{i:012d}", False, "none") for i in range(count))
    # the file the SONAME link leads to, resolved inside the root
    assert facts.nvml_library == str(host.path(f"{host.lib_dir}/libnvidia-ml.so.{driver}"))
    assert set(facts.dev_nodes) == {*(f"/dev/nvidia{i}" for i in range(count)), "/dev/nvidiactl",
                                    "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"}
    assert facts.visible_devices == "1,0"


@needs_gcc
def test_gpu_scenarios_in_one_process_do_not_leak(tmp_path: Path) -> None:
    """pynvml keeps its library in a module global: each root must get its own answers, and
    pynvml's own state must be as it was."""
    import pynvml

    before = pynvml.nvmlLib
    a = gpu_facts(str(gpu_present(tmp_path / "a", "535.104.05", 12020, 1, "GPU A").root), environ={})
    b = gpu_facts(str(gpu_present(tmp_path / "b", "550.54.15", 12040, 3, "GPU B").root), environ={})
    again = gpu_facts(str(tmp_path / "a"), environ={})
    assert (a.driver_version, len(a.devices), a.devices[0].name) == ("535.104.05", 1, "GPU A")
    assert (b.driver_version, len(b.devices), b.devices[0].name) == ("550.54.15", 3, "GPU B")
    assert again == a
    assert pynvml.nvmlLib is before
    assert a.visible_devices is None


@needs_gcc
def test_gpu_driver_not_loaded(tmp_path: Path) -> None:
    facts = gpu_facts(str(gpu_driver_no_device(tmp_path, "535.104.05").root), environ={})
    assert facts.nvml_error == "Driver Not Loaded"
    assert facts.kernel_module_version == "535.104.05"
    assert facts.driver_version is None and facts.devices == ()
    assert facts.nvml_library is not None
    assert "/dev/nvidia0" not in facts.dev_nodes and "/dev/nvidiactl" in facts.dev_nodes


@needs_gcc
def test_gpu_driver_with_zero_devices(tmp_path: Path) -> None:
    facts = gpu_facts(str(gpu_driver_no_device(tmp_path, "535.104.05", 12020, init_fails=False).root), environ={})
    assert facts.nvml_error is None
    assert (facts.driver_version, facts.cuda_driver_version, facts.devices) == ("535.104.05", 12020, ())


def test_no_gpu_driver(tmp_path: Path) -> None:
    facts = gpu_facts(str(no_gpu_driver(tmp_path).root), environ={"CUDA_VISIBLE_DEVICES": ""})
    assert facts.nvml_error == LIBRARY_NOT_FOUND
    assert (facts.kernel_module_version, facts.nvml_library, facts.driver_version) == (None, None, None)
    assert facts.devices == () and facts.dev_nodes == ()
    assert facts.visible_devices == ""


def test_kernel_module_without_library(tmp_path: Path) -> None:
    """The /proc file alone: its version is reported; NVML cannot be asked."""
    host = bare_node(tmp_path).nvidia_module("470.256.02")
    facts = gpu_facts(str(host.root), environ={})
    assert facts.kernel_module_version == "470.256.02"
    assert facts.nvml_error == LIBRARY_NOT_FOUND and facts.nvml_library is None


@needs_gcc
def test_gpu_vgpu(tmp_path: Path) -> None:
    host = gpu_vgpu(tmp_path, "535.129.03")
    facts = gpu_facts(str(host.root), environ={})
    assert [(d.name, d.virtualization, d.mig_enabled) for d in facts.devices] == [("GRID A100-40C", "vgpu", False)]
    assert hypervisor(str(host.root)) == "qemu"


@needs_gcc
def test_gpu_mig(tmp_path: Path) -> None:
    host = gpu_mig(tmp_path, "550.54.15", 12040, count=2)
    facts = gpu_facts(str(host.root), environ={})
    assert facts.kernel_module_version == "550.54.15"   # the open kernel module's line
    assert [d.mig_enabled for d in facts.devices] == [True, True]
    assert {"/dev/nvidia-caps/nvidia-cap1", "/dev/nvidia-caps/nvidia-cap2"} <= set(facts.dev_nodes)


@needs_gcc
def test_nvml_found_through_the_roots_ld_cache(tmp_path: Path) -> None:
    """In a directory outside the default ones, only the root's etc/ld.so.cache finds the library."""
    host = gpu_present(tmp_path, lib_dir="/opt/nvidia/lib64")
    root = str(host.root)
    assert find_nvml(root, {}) == str(host.path("/opt/nvidia/lib64/libnvidia-ml.so.535.104.05"))
    assert gpu_facts(root, environ={}).driver_version == "535.104.05"
    host.path("etc/ld.so.cache").unlink()
    assert find_nvml(root, {}) is None
    assert gpu_facts(root, environ={}).nvml_error == LIBRARY_NOT_FOUND


@needs_gcc
def test_cuda_stub_is_a_versioned_libcuda(tmp_path: Path) -> None:
    host = gpu_present(tmp_path, "550.54.15", 12040)
    cache = read_ld_cache(str(host.path("etc/ld.so.cache")))
    assert cache.lookup("libcuda.so.1") == f"{host.lib_dir}/libcuda.so.1"
    facts = elf_facts(host.path(f"{host.lib_dir}/libcuda.so.550.54.15"))
    assert facts is not None and facts.soname == "libcuda.so.1" and "libcuda.so.1" in facts.version_defs


@pytest.mark.parametrize(("line", "version"), [
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023", "535.104.05"),
    (("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  550.54.15  Release Build  (dvs-builder@U16)  "
      "Tue Mar  5 22:23:55 UTC 2024"), "550.54.15"),
    ("NVRM version: NVIDIA UNIX Open Kernel Module for aarch64  570.124.06  Release Build", "570.124.06"),
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.82  Tue Oct 26 2021", "470.82"),
    ("something else entirely 535.104.05", None),
])
def test_kernel_module_version_lines(tmp_path: Path, line: str, version: str | None) -> None:
    SimulatedHost(tmp_path).write("proc/driver/nvidia/version", line + "\nGCC version: gcc 12\n")
    assert kernel_module_version(str(tmp_path)) == version


def test_real_host_gpu() -> None:
    """This machine, in a fresh interpreter (see the module docstring)."""
    out = in_fresh_python("import sys\nfrom shim.host.gpu import gpu_facts\nf = gpu_facts('/')\n"
                          "out = dict(devices=len(f.devices), error=f.nvml_error, module=f.kernel_module_version,"
                          " driver=f.driver_version, pynvml='pynvml' in sys.modules)")
    if not os.path.exists("/proc/driver/nvidia/version"):
        assert out["devices"] == 0 and out["error"] and out["module"] is None
        assert out["pynvml"] is (find_nvml("/") is not None)  # imported only on a sign of a driver
        return
    assert out["module"]
    smi = shutil.which("nvidia-smi")
    if smi and out["error"] is None:
        rows = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True,
                              text=True, check=True).stdout.split()
        assert (out["driver"], out["devices"]) == (rows[0], len(rows))


# ---- RDMA ----

def test_rdma_none(tmp_path: Path) -> None:
    assert rdma_facts(str(rdma_none(tmp_path).root)) == RdmaFacts()


def test_rdma_rxe(tmp_path: Path) -> None:
    facts = rdma_facts(str(rdma_rxe(tmp_path).root))
    assert facts.devices == (RdmaDevice("rxe0", "rdma_rxe", True, (RdmaPort(1, "ACTIVE", "Ethernet"),)),)
    assert facts.dev_nodes == ("/dev/infiniband/rdma_cm", "/dev/infiniband/uverbs0")


def test_rdma_mlx5_infiniband(tmp_path: Path) -> None:
    facts = rdma_facts(str(rdma_mlx5_ib(tmp_path).root))
    assert facts.devices == (RdmaDevice("mlx5_0", "mlx5_core", False, (RdmaPort(1, "ACTIVE", "InfiniBand"),)),)
    assert "/dev/infiniband/uverbs0" in facts.dev_nodes and "/dev/infiniband/umad0" in facts.dev_nodes


def test_rdma_software_by_parent_file_and_ports_in_order(tmp_path: Path) -> None:
    host = bare_node(tmp_path).rdma_device("roce9", (("1: DOWN", "Ethernet"),), parent="enp1s0")
    host.rdma_device("mlx5_1", tuple(("4: ACTIVE" if i % 2 else "1: DOWN", "InfiniBand") for i in range(11)),
                     driver="mlx5_core")
    facts = rdma_facts(str(host.root))
    assert [(d.name, d.software) for d in facts.devices] == [("mlx5_1", False), ("roce9", True)]
    assert [p.number for p in facts.devices[0].ports] == list(range(1, 12))
    assert facts.devices[0].ports[1].state == "ACTIVE" and facts.devices[1].ports[0].state == "DOWN"


def test_real_host_rdma() -> None:
    facts = rdma_facts("/")
    try:
        names = sorted(os.listdir("/sys/class/infiniband"))
    except OSError:
        names = []
    assert sorted(d.name for d in facts.devices) == names


# ---- CPU ----

def test_cpu_facts_simulated(tmp_path: Path) -> None:
    host = bare_node(tmp_path)
    assert cpu_facts(str(host.root)).__dict__ == {"arch": "amd64", "isa_level": 3, "model": "Simulated EPYC 9654"}
    host.cpu(flags=X86_V4_FLAGS, model="Simulated Xeon 8480+")
    assert (cpu_facts(str(host.root)).isa_level, cpu_facts(str(host.root)).model) == (4, "Simulated Xeon 8480+")
    host.path("proc/sys/kernel/arch").unlink()   # older kernels: guessed from cpuinfo
    assert cpu_facts(str(host.root)).arch == "amd64"


def test_cpu_facts_arm64(tmp_path: Path) -> None:
    host = SimulatedHost(tmp_path)
    host.write("proc/cpuinfo", "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes\n"
                               "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU part\t: 0xd0c\n")
    assert cpu_facts(str(host.root)).arch == "arm64"        # from cpuinfo
    host.write("proc/sys/kernel/arch", "aarch64\n")
    assert cpu_facts(str(host.root)) == CpuFacts("arm64", None, "")


def test_one_cpu_of_64(tmp_path: Path) -> None:
    allowance = cpu_allowance(str(one_cpu_of_64(tmp_path).root))
    assert (allowance.node_cpus, allowance.allowed_cpus, allowance.cgroup_quota) == (64, 1, 1.0)


def test_cgroup_quota_unlimited_and_from_a_parent(tmp_path: Path) -> None:
    host = bare_node(tmp_path).allowance("0-3,8-11", cpu_max="max 100000", parent_cpu_max="max 100000")
    assert cpu_allowance(str(host.root)).__dict__ == {"node_cpus": 64, "allowed_cpus": 8, "cgroup_quota": None}
    host.allowance("0-3,8-11", cpu_max="400000 100000", parent_cpu_max="250000 100000")
    assert cpu_allowance(str(host.root)).cgroup_quota == 2.5


def test_real_host_cpu() -> None:
    facts = cpu_facts("/")
    assert facts.arch == host_arch()
    if os.uname().machine == "x86_64":
        assert facts.arch == "amd64" and facts.isa_level is not None and facts.isa_level >= 1
    allowance = cpu_allowance("/")
    assert allowance.node_cpus == psutil.cpu_count()
    assert allowance.allowed_cpus == len(psutil.Process().cpu_affinity())


# ---- binfmt_misc ----

def test_binfmt_qemu_aarch64(tmp_path: Path) -> None:
    found = emulators(str(binfmt_qemu_aarch64(tmp_path).root))
    expected = Emulator("qemu-aarch64", "arm64", "/usr/bin/qemu-aarch64-static", True, "F")
    assert found == (expected,)   # wine is not an emulator
    assert emulator_for("arm64", found) == expected == emulator_for("aarch64", found)
    assert emulator_for("riscv64", found) is None


def test_binfmt_disabled_and_preference(tmp_path: Path) -> None:
    host = bare_node(tmp_path).binfmt("qemu-riscv64", "/usr/bin/qemu-riscv64", "", enabled=False)
    host.binfmt("qemu-aarch64", "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "P")
    host.binfmt("qemu-aarch64-static", "/usr/bin/qemu-aarch64-static", "OCF")
    found = emulators(str(host.root))
    assert [(e.name, e.arch, e.enabled) for e in found] == [
        ("qemu-aarch64", "arm64", True), ("qemu-aarch64-static", "arm64", True), ("qemu-riscv64", "riscv64", False)]
    assert emulator_for("riscv64", found) is None
    chosen = emulator_for("arm64", found)
    assert chosen is not None and chosen.name == "qemu-aarch64-static"


@pytest.mark.parametrize(("name", "arch"), [
    ("qemu-aarch64", "arm64"), ("qemu-ppc64le", "ppc64le"), ("qemu-riscv64", "riscv64"), ("qemu-s390x", "s390x"),
    ("qemu-arm", "arm"), ("qemu-x86_64", "amd64"), ("qemu-i386", "386"), ("qemu-mipsel", "mipsle"),
    ("qemu-mips64el", "mips64le"), ("qemu-loongarch64", "loong64"), ("qemu-aarch64-static", "arm64"),
    ("aarch64-binfmt-P", "arm64"), ("qemu-sparc64", "unknown"), ("qemu-armeb", "unknown"),
])
def test_qemu_arch(name: str, arch: str) -> None:
    assert qemu_arch(name) == arch


def test_real_host_binfmt() -> None:
    found = emulators("/")
    try:
        entries = set(os.listdir("/proc/sys/fs/binfmt_misc")) - {"register", "status"}
    except OSError:
        entries = set()
    assert {e.name for e in found} <= entries


# ---- virtualization ----

def test_vm_qemu(tmp_path: Path) -> None:
    assert hypervisor(str(vm_qemu(tmp_path).root)) == "qemu"


def test_bare_metal(tmp_path: Path) -> None:
    assert hypervisor(str(bare_node(tmp_path).root)) is None


@pytest.mark.parametrize(("vendor", "product", "flag", "word"), [
    ("Amazon EC2", "m5.metal", False, None),          # EC2 bare-metal instances keep the DMI vendor
    ("Amazon EC2", "c5.xlarge", True, "amazon"),
    ("Microsoft Corporation", "Virtual Machine", True, "microsoft"),
    ("Microsoft Corporation", "Surface Laptop 5", False, None),
    ("VMware, Inc.", "VMware Virtual Platform", True, "vmware"),
    ("Dell Inc.", "PowerEdge R750", True, "unknown"),   # the CPU says VM; nothing names it
    ("Dell Inc.", "PowerEdge R750", False, None),
])
def test_hypervisor_words(tmp_path: Path, vendor: str, product: str, flag: bool, word: str | None) -> None:
    host = bare_node(tmp_path).cpu(vm=flag).dmi(vendor, product)
    assert hypervisor(str(host.root)) == word


def test_xen_hypervisor_type(tmp_path: Path) -> None:
    host = bare_node(tmp_path).cpu(vm=True)
    host.write("sys/hypervisor/type", "xen\n")
    assert hypervisor(str(host.root)) == "xen"


# systemd-detect-virt words that name the same machine as another of shim's words: a QEMU guest
# accelerated by KVM says "QEMU" in DMI (shim: qemu) but "KVM" in CPUID, which systemd prefers.
SAME_HYPERVISOR = {"kvm": {"qemu"}, "qemu": {"kvm"}}


def cpuinfo_hypervisor_flag() -> bool | None:
    """The x86 cpuinfo "hypervisor" flag, read here; None when cpuinfo lists no x86 flags."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() == "flags":
                    return "hypervisor" in line.split(":", 1)[1].split()
    except OSError:
        pass
    return None


def test_real_host_hypervisor() -> None:
    """hypervisor("/") against systemd-detect-virt --vm (which also reads CPUID leaves and the
    device tree, and does not count containers); without it, against the x86 cpuinfo flag and
    /sys/hypervisor/type."""
    word = hypervisor("/")
    assert word is None or (word == word.lower() and " " not in word)
    tool = shutil.which("systemd-detect-virt")
    if tool:
        r = subprocess.run([tool, "--vm"], check=False, capture_output=True, text=True, timeout=60)
        said = r.stdout.strip()
        assert said and r.returncode == (1 if said == "none" else 0), (r.returncode, said, r.stderr)
        if said == "none":
            assert word is None, f"systemd-detect-virt --vm says bare metal, shim says {word!r}"
            return
        assert word is not None, f"systemd-detect-virt --vm says {said}, shim says bare metal"
        if said != "vm-other":  # systemd names it: shim names the same, or only knows "some VM"
            assert word in {said, "unknown"} | SAME_HYPERVISOR.get(said, set()), (said, word)
        return
    flag = cpuinfo_hypervisor_flag()
    try:
        xen = Path("/sys/hypervisor/type").read_text().strip()
    except OSError:
        xen = ""
    if flag is None and not xen:
        pytest.skip("no systemd-detect-virt, no x86 cpuinfo flags and no /sys/hypervisor/type to tell a VM by")
    if xen:  # a Xen guest (shim may name it by its DMI vendor instead)
        assert word is not None, f"/sys/hypervisor/type says {xen}, shim says bare metal"
    else:
        assert (word is not None) == flag, f"cpuinfo hypervisor flag {flag}, shim says {word!r}"


# ---- all together ----

@needs_gcc
def test_gather_simulated_gpu_node(tmp_path: Path) -> None:
    host = gpu_present(tmp_path, count=2)
    binfmt_qemu_aarch64(tmp_path)
    rdma_mlx5_ib(tmp_path)
    one_cpu_of_64(tmp_path)
    facts = gather_host_facts(str(host.root), environ={"CUDA_VISIBLE_DEVICES": "0"})
    assert facts.root == str(host.root)
    assert (facts.cpu.arch, facts.cpu.isa_level) == ("amd64", 3)
    assert len(facts.gpu.devices) == 2 and facts.gpu.visible_devices == "0"
    assert [d.name for d in facts.rdma.devices] == ["mlx5_0"]
    assert [e.arch for e in facts.emulators] == ["arm64"]
    assert facts.hypervisor is None
    assert (facts.cpus.node_cpus, facts.cpus.allowed_cpus) == (64, 1)
    assert json.loads(json.dumps(facts.to_dict()))["gpu"]["devices"][1]["index"] == 1


def test_gather_imports_no_pynvml_or_psutil_needlessly(tmp_path: Path) -> None:
    """Importing gather costs neither; gathering a GPU-less simulated node imports neither."""
    root = str(no_gpu_driver(tmp_path).root)
    out = in_fresh_python(
        "import sys\nimport shim.host.gather as g\n"
        "out = {'import': [m for m in ('pynvml', 'psutil') if m in sys.modules]}\n"
        f"f = g.gather_host_facts({root!r}, environ={{}})\n"
        "out['gather'] = [m for m in ('pynvml', 'psutil') if m in sys.modules]\n"
        "out['error'] = f.gpu.nvml_error")
    assert out == {"import": [], "gather": [], "error": LIBRARY_NOT_FOUND}


def test_gather_real_host() -> None:
    def names(path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except FileNotFoundError:
            return []

    out = in_fresh_python("from shim.host.gather import gather_host_facts\nout = gather_host_facts('/').to_dict()")
    assert out["root"] == "/" and out["cpu"]["arch"] == host_arch()
    assert out["cpus"]["node_cpus"] == psutil.cpu_count()
    # RDMA: what this machine's sysfs class and /dev/infiniband list, none when they are absent.
    assert sorted(d["name"] for d in out["rdma"]["devices"]) == names("/sys/class/infiniband")
    assert sorted(out["rdma"]["dev_nodes"]) == ["/dev/infiniband/" + n for n in names("/dev/infiniband")]
