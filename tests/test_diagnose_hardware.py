"""shim.diagnose: hardware diagnostics from ImageExpectations and HostFacts built directly (no
host probing), NVIDIA's driver table, the NVIDIA_REQUIRE_CUDA evaluator, and site policy."""

from __future__ import annotations

import dataclasses

import pytest

from shim.diagnose.cuda import driver_table, evaluate_require
from shim.diagnose.hardware import hardware_diagnostics
from shim.diagnose.policy import apply_policy
from shim.expect.model import CompatLib, ImageExpectations, LibFound, Requirement, VerbsProvider
from shim.host.model import (
    CpuAllowance,
    CpuFacts,
    Emulator,
    GpuDevice,
    GpuFacts,
    HostFacts,
    RdmaDevice,
    RdmaFacts,
    RdmaPort,
)
from shim.knowledge.version import cmp_version, parse_version
from shim.model import Diagnostic

# ---- builders ----

H100 = GpuDevice(0, "NVIDIA H100 80GB HBM3", "GPU-1")


def gpu(driver: str | None = "535.104.05", cuda: int | None = 12020, devices=(H100,), **kw) -> GpuFacts:
    nodes = ("/dev/nvidiactl", "/dev/nvidia-uvm", *(f"/dev/nvidia{d.index}" for d in devices)) if driver else ()
    return GpuFacts(kernel_module_version=driver, driver_version=driver, cuda_driver_version=cuda,
                    nvml_library="/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1" if driver else None,
                    devices=tuple(devices), dev_nodes=nodes, **kw)


def host(**kw) -> HostFacts:
    kw.setdefault("cpu", CpuFacts("amd64", 3, "Intel Xeon"))
    kw.setdefault("gpu", gpu(None, None, ()))
    kw.setdefault("cpus", CpuAllowance(64, 16))
    return HostFacts(**kw)


def cudart(version: str = "12.2.140") -> LibFound:
    major = version.split(".")[0]
    return LibFound(f"libcudart.so.{major}", f"/usr/local/cuda/lib64/libcudart.so.{major}",
                    f"/usr/local/cuda-{version.rsplit('.', 1)[0]}/targets/x86_64-linux/lib/libcudart.so.{version}",
                    version)


def image(**kw) -> ImageExpectations:
    return ImageExpectations(root="/img", **kw)


def req(text: str) -> Requirement:
    from shim.expect.requires import parse_requires

    [r], _ = parse_requires(text, "t")
    return r


def diags(expect: ImageExpectations, h: HostFacts, arch: str = "amd64",
          environ: dict | None = None) -> list[Diagnostic]:
    out = hardware_diagnostics(expect, h, arch, environ or {})
    for d in out:  # every diagnostic is one line naming what was checked
        assert d.code and d.severity in ("error", "warning", "info") and d.message and "\n" not in d.message
    return out


def only(out: list[Diagnostic], code: str) -> Diagnostic:
    found = [d for d in out if d.code == code]
    assert len(found) == 1, [(d.code, d.message) for d in out]
    return found[0]


def codes(out: list[Diagnostic]) -> set[str]:
    return {d.code for d in out}


CUDA_IMAGE = image(cuda_runtime=cudart("12.2.140"))


# ---- NVIDIA's table ----

def test_driver_table_values() -> None:
    t = driver_table()
    assert t.toolkit_driver((12, 0)).driver_text == "525.60.13"
    assert t.toolkit_driver((12, 1)).driver_text == "530.30.02"
    assert t.toolkit_driver((12, 2)).driver_text == "535.54.03"
    assert t.toolkit_driver((12, 3)).driver_text == "545.23.06"
    assert t.toolkit_driver((12, 4)).driver_text == "550.54.14"
    assert t.toolkit_driver((12, 5)).driver_text == "555.42.02"
    assert t.toolkit_driver((12, 6)).driver_text == "560.28.03"
    assert t.toolkit_driver((12, 8)).driver_text == "570.26"
    assert t.toolkit_driver((11, 8)).driver_text == "520.61.05"
    assert t.toolkit_driver((12, 7)) is None  # there was no CUDA 12.7
    assert [r.release for r in t.releases((12, 2))] == ["12.2 GA", "12.2 Update 1", "12.2 Update 2"]
    assert t.minor_compat_driver(12)[1] == "525.60.13" and t.minor_compat_driver(11)[1] == "450.80.02"
    assert t.minor_compat_driver(10) is None


@pytest.mark.parametrize(("driver", "cuda"), [
    ("535.104.05", (12, 2)), ("535.54.03", (12, 2)), ("535.54.02", (12, 1)), ("550.54.14", (12, 4)),
    ("525.60.13", (12, 0)), ("520.61.05", (11, 8)), ("470.82.01", (11, 4)), ("570.26", (12, 8)),
    ("580.65.06", (13, 0)), ("300.1", None)])
def test_cuda_of_driver(driver: str, cuda: tuple | None) -> None:
    assert driver_table().cuda_of_driver(parse_version(driver)) == cuda


def test_versions() -> None:
    assert cmp_version((12, 2), (12, 2, 0)) == 0
    assert cmp_version((525, 60, 13), (525,)) == 1
    assert cmp_version((535, 104, 5), (535, 54, 3)) == 1  # numeric, not textual
    assert parse_version("12.x") is None and parse_version("") is None


# ---- NVIDIA_REQUIRE_CUDA ----

NGC = ("cuda>=12.2 brand=tesla,driver>=470,driver<471 brand=unknown,driver>=470,driver<471 "
       "brand=nvidia,driver>=525,driver<526")


def test_require_satisfied_by_the_cuda_term() -> None:
    r = evaluate_require(NGC, cuda="12.4", driver="550.54.14")
    assert r.satisfied is True and len(r.terms) == 4
    assert r.terms[0].result is True
    assert r.terms[1].result is False  # driver 550 is not < 471, whatever the brand


def test_require_unsatisfied_explains_every_term() -> None:
    r = evaluate_require("cuda>=12.2 brand=tesla,driver>=470,driver<471", cuda="12.0", driver="525.60.13",
                         brand="tesla")
    assert r.satisfied is False and r.invalid is None
    text = r.explain()
    assert "[cuda>=12.2] not satisfied (cuda 12.0 >= 12.2: no)" in text
    assert "brand tesla = tesla: yes" in text
    assert "driver 525.60.13 >= 470: yes" in text and "driver 525.60.13 < 471: no" in text
    assert " OR " in text


def test_require_brand_decides_forward_compat_terms() -> None:
    args = dict(cuda="11.4", driver="470.82.01")
    assert evaluate_require(NGC, **args).satisfied is None  # brand unknown: undecided
    assert evaluate_require(NGC, brand="Tesla", **args).satisfied is True  # brands compare without case
    assert evaluate_require(NGC, brand="geforce", **args).satisfied is False
    assert evaluate_require(NGC, brand="nvidia", **args).satisfied is False  # its term wants driver 525


@pytest.mark.parametrize(("expr", "kw", "want"), [
    ("", {}, True),
    ("   ", {}, True),
    ("driver>=525.60.13", {"driver": "525.60.13"}, True),
    ("driver>=525.60.13", {"driver": "525.60"}, False),
    ("driver>=525.60.13", {"driver": "525.85.12"}, True),
    ("cuda=12.2.0", {"cuda": "12.2"}, True),
    ("cuda!=12.2", {"cuda": "12.2"}, False),
    ("cuda>12.2", {"cuda": "12.2.1"}, True),
    ("arch>=8.0", {"arch": "7.5"}, False),
    ("arch>=8.0", {}, None),
    ("cuda>=11.0,arch>=8.0 cuda>=12", {"cuda": "12.0"}, True),
    ("cuda>=13,arch>=8.0", {"cuda": "12.0"}, False),  # one false predicate settles an AND
])
def test_require_predicates(expr: str, kw: dict, want: bool | None) -> None:
    kw = {"cuda": None, "driver": None, **kw}
    assert evaluate_require(expr, **kw).satisfied is want


@pytest.mark.parametrize("expr", ["cuda==12.2", "cuda>=twelve", "gpu>=1", "brand>tesla", ">=12", "cuda>="])
def test_require_invalid(expr: str) -> None:
    r = evaluate_require(expr, cuda="12.2", driver="535.104.05", brand="tesla")
    assert r.satisfied is not True and r.invalid


def test_require_invalid_term_after_a_satisfied_one_is_never_reached() -> None:
    # libnvidia-container stops at the first satisfied term, as does the verdict here.
    r = evaluate_require("cuda>=12.0 cuda==bogus", cuda="12.2", driver="535.104.05")
    assert r.satisfied is True and r.invalid is None


def test_require_in_diagnostics() -> None:
    h = host(gpu=gpu("535.104.05", 12020))
    e = image(cuda_version="12.2.0",
              nvidia_require={"NVIDIA_REQUIRE_CUDA": "cuda>=12.4 brand=tesla,driver>=470,driver<471"})
    d = only(diags(e, h), "CUDA-REQUIRE-UNSATISFIED")
    assert d.severity == "warning"
    assert "NVIDIA_REQUIRE_CUDA" in d.message and "cuda 12.2 >= 12.4: no" in d.message
    assert "driver 535.104.05 < 471: no" in d.message
    assert "CUDA-REQUIRE-UNSATISFIED" not in codes(diags(e, h, environ={"NVIDIA_DISABLE_REQUIRE": "true"}))
    assert "CUDA-REQUIRE-UNSATISFIED" not in codes(diags(dataclasses.replace(e, nvidia_disable_require=True), h))
    # satisfied: nothing; undecided (only a brand term could satisfy it): info
    ok = dataclasses.replace(e, nvidia_require={"NVIDIA_REQUIRE_CUDA": "cuda>=12.2"})
    assert not codes(diags(ok, h)) & {"CUDA-REQUIRE-UNSATISFIED", "CUDA-REQUIRE-UNDECIDED"}
    und = dataclasses.replace(e, nvidia_require={"NVIDIA_REQUIRE_CUDA": "cuda>=12.4 brand=tesla,driver>=535"})
    d = only(diags(und, h), "CUDA-REQUIRE-UNDECIDED")
    assert d.severity == "info" and "brand" in d.message


# ---- GPU present / absent ----

def test_gpu_present_and_driver_new_enough() -> None:
    out = diags(CUDA_IMAGE, host(gpu=gpu("535.104.05", 12020)))
    assert not codes(out) & {"GPU-ABSENT", "CUDA-DRIVER-TOO-OLD", "CUDA-FORWARD-COMPAT", "GPU-VIRTUAL"}


def test_not_a_cuda_image_has_no_gpu_diagnostics() -> None:
    assert diags(image(), host()) == []


def test_gpu_absent_no_driver() -> None:
    d = only(diags(CUDA_IMAGE, host()), "GPU-ABSENT")
    assert d.severity == "warning"
    assert "no NVIDIA driver" in d.message and "libcudart.so.12.2.140" in d.message
    assert d.hint and d.admin_hint


def test_gpu_absent_driver_but_no_device() -> None:
    g = GpuFacts(kernel_module_version="535.104.05", driver_version=None, nvml_error="NVML_ERROR_NO_PERMISSION",
                 dev_nodes=("/dev/nvidiactl",))
    d = only(diags(CUDA_IMAGE, host(gpu=g)), "GPU-ABSENT")
    assert "535.104.05 is installed but no GPU device is present" in d.message
    assert "NVML_ERROR_NO_PERMISSION" in d.message


@pytest.mark.parametrize("value", ["", "-1", "NoDevFiles", "4"])
def test_gpu_hidden_by_cuda_visible_devices(value: str) -> None:
    h = host(gpu=gpu(devices=(H100, dataclasses.replace(H100, index=1))))
    d = only(diags(CUDA_IMAGE, h, environ={"CUDA_VISIBLE_DEVICES": value}), "GPU-ABSENT")
    assert f"CUDA_VISIBLE_DEVICES={value!r} hides all of them" in d.message and "2 GPU(s)" in d.message
    assert ("Slurm" in d.message) == (value == "NoDevFiles")


def test_cuda_visible_devices_from_host_facts_and_environ_override() -> None:
    h = host(gpu=gpu(visible_devices="-1"))
    assert "GPU-ABSENT" in codes(diags(CUDA_IMAGE, h))
    assert "GPU-ABSENT" not in codes(diags(CUDA_IMAGE, h, environ={"CUDA_VISIBLE_DEVICES": "0"}))
    assert "GPU-ABSENT" not in codes(diags(CUDA_IMAGE, host(gpu=gpu()), environ={"CUDA_VISIBLE_DEVICES": "GPU-1"}))


def test_declared_gpu_without_library_evidence() -> None:
    e = image(requires=(req("gpu.cuda>=12.2"),))
    d = only(diags(e, host()), "GPU-ABSENT")
    assert d.severity == "error" and "'gpu.cuda>=12.2'" in d.message


# ---- driver versions ----

def test_driver_too_old_across_majors() -> None:
    d = only(diags(CUDA_IMAGE, host(gpu=gpu("470.82.01", 11040))), "CUDA-DRIVER-TOO-OLD")
    assert d.severity == "error"
    assert "12.2.140" in d.message and "470.82.01" in d.message and "CUDA 11.4" in d.message
    assert "535.54.03" in d.message and "535.104.05" in d.message  # the 12.2 GA and last update drivers
    assert "535.54.03" in d.admin_hint and "525.60.13" in d.admin_hint


def test_minor_version_compatibility_is_a_warning() -> None:
    d = only(diags(image(cuda_runtime=cudart("12.4.127")), host(gpu=gpu("535.104.05", 12020))), "CUDA-DRIVER-TOO-OLD")
    assert d.severity == "warning"
    assert "minor-version compatibility" in d.message and "PTX" in d.message
    assert "550.54.14" in d.message and "525.60.13" in d.message


def test_driver_below_the_minor_compat_minimum_is_an_error() -> None:
    # CUDA 11.0 driver (450.51.06, no NVML): below 11.x minor-version compatibility (450.80.02)
    d = only(diags(image(cuda_runtime=cudart("11.4.148")), host(gpu=gpu("450.51.06", None))), "CUDA-DRIVER-TOO-OLD")
    assert d.severity == "error" and "NVIDIA's table for driver 450.51.06" in d.message


def test_driver_cuda_from_the_table_without_nvml() -> None:
    d = only(diags(CUDA_IMAGE, host(gpu=gpu("525.60.13", None))), "CUDA-DRIVER-TOO-OLD")
    assert d.severity == "warning" and "supports CUDA 12.0 (from NVIDIA's table for driver 525.60.13)" in d.message


def test_cuda_version_from_the_environment_when_no_runtime_is_found() -> None:
    d = only(diags(image(cuda_version="12.6.3"), host(gpu=gpu("535.104.05", 12020))), "CUDA-DRIVER-TOO-OLD")
    assert "CUDA_VERSION" in d.message and "12.6" in d.message


def test_declared_cuda_version() -> None:
    e = image(requires=(req("gpu.cuda>=12.4"),))
    d = only(diags(e, host(gpu=gpu("535.104.05", 12020))), "CUDA-DRIVER-TOO-OLD")
    assert d.severity == "error" and "'gpu.cuda>=12.4'" in d.message and "550.54.14" in d.admin_hint
    assert "CUDA-DRIVER-TOO-OLD" not in codes(diags(e, host(gpu=gpu("550.54.14", 12040))))


def test_forward_compat_bridges_an_old_driver() -> None:
    e = image(cuda_runtime=cudart("12.2.140"),
              cuda_compat=(CompatLib("/usr/local/cuda-12.2/compat/libcuda.so.535.104.05", "535.104.05"),))
    out = diags(e, host(gpu=gpu("470.82.01", 11040)))
    too_old = only(out, "CUDA-DRIVER-TOO-OLD")
    assert too_old.severity == "warning" and "forward-compatibility" in too_old.message
    fc = only(out, "CUDA-FORWARD-COMPAT")
    assert fc.severity == "info" and "535.104.05" in fc.message and "470.82.01" in fc.message
    assert "datacenter GPUs" in fc.message and "LD_LIBRARY_PATH" in fc.message
    geforce = host(gpu=gpu("470.82.01", 11040, devices=(GpuDevice(0, "NVIDIA GeForce RTX 3090"),)))
    assert "do not support it" in only(diags(e, geforce), "CUDA-FORWARD-COMPAT").message


def test_forward_compat_older_than_the_driver_on_the_path() -> None:
    compat = CompatLib("/usr/local/cuda-12.2/compat/libcuda.so.535.104.05", "535.104.05", in_path=True)
    d = only(diags(image(cuda_runtime=cudart(), cuda_compat=(compat,)), host(gpu=gpu("550.54.14", 12040))),
             "CUDA-FORWARD-COMPAT")
    assert d.severity == "warning" and "803" in d.message
    # not on the path: harmless, nothing said
    off = dataclasses.replace(compat, in_path=False)
    assert "CUDA-FORWARD-COMPAT" not in codes(diags(image(cuda_runtime=cudart(), cuda_compat=(off,)),
                                                    host(gpu=gpu("550.54.14", 12040))))


def test_stub_on_the_path() -> None:
    e = image(cuda_runtime=cudart(), cuda_stub_in_path="/usr/local/cuda/lib64/stubs/libcuda.so")
    d = only(diags(e, host(gpu=gpu())), "CUDA-STUB-IN-PATH")
    assert d.severity == "warning" and "stubs/libcuda.so" in d.message


# ---- virtual GPUs ----

def test_mig_and_vgpu() -> None:
    mig = host(gpu=gpu(devices=(dataclasses.replace(H100, mig_enabled=True),)))
    d = only(diags(CUDA_IMAGE, mig), "GPU-VIRTUAL")
    assert d.severity == "info" and "MIG" in d.message and "GPU 0 (NVIDIA H100 80GB HBM3)" in d.message
    vgpu = host(gpu=gpu(devices=(GpuDevice(0, "GRID A100D-40C", virtualization="vgpu"),)))
    d = only(diags(CUDA_IMAGE, vgpu), "GPU-VIRTUAL")
    assert "vGPU" in d.message and "GRID A100D-40C" in d.message
    passthrough = host(gpu=gpu(devices=(dataclasses.replace(H100, virtualization="passthrough"),)))
    assert "GPU-VIRTUAL" not in codes(diags(CUDA_IMAGE, passthrough))


# ---- RDMA ----

VERBS = image(verbs=LibFound("libibverbs.so.1", "/usr/lib/x86_64-linux-gnu/libibverbs.so.1"),
              verbs_providers=(VerbsProvider("mlx5", 34, "/usr/lib/x86_64-linux-gnu/libibverbs/libmlx5-rdmav34.so"),
                               VerbsProvider("rxe", 34, "/usr/lib/x86_64-linux-gnu/libibverbs/librxe-rdmav34.so")))
MLX5 = RdmaDevice("mlx5_0", "mlx5_core", False, (RdmaPort(1, "ACTIVE", "InfiniBand"),))
UVERBS = ("/dev/infiniband/uverbs0", "/dev/infiniband/rdma_cm")


def test_rdma_absent() -> None:
    d = only(diags(VERBS, host()), "RDMA-ABSENT")
    assert d.severity == "info" and "TCP" in d.message and "libibverbs (mlx5, rxe)" in d.message
    ucx = image(ucx=LibFound("libucp.so.0", "/opt/ucx/lib/libucp.so.0"), ucx_modules=("uct_ib", "uct_cma"))
    assert "UCX" in only(diags(ucx, host()), "RDMA-ABSENT").message
    no_ib = image(ucx=LibFound("libucp.so.0", "/opt/ucx/lib/libucp.so.0"), ucx_modules=("uct_cma",))
    assert diags(no_ib, host()) == []


def test_rdma_declared_without_library_evidence() -> None:
    d = only(diags(image(requires=(req("net.rdma"),)), host()), "RDMA-ABSENT")
    assert d.severity == "warning" and "'net.rdma'" in d.message


def test_rdma_software_only() -> None:
    h = host(rdma=RdmaFacts((RdmaDevice("rxe0", "rdma_rxe", True, (RdmaPort(1, "ACTIVE", "Ethernet"),)),), UVERBS))
    d = only(diags(VERBS, h), "RDMA-SOFTWARE")
    assert d.severity == "info" and "rxe0 (rdma_rxe)" in d.message
    assert "RDMA-ABSENT" not in codes(diags(VERBS, h))


def test_rdma_hardware_ok() -> None:
    out = diags(VERBS, host(rdma=RdmaFacts((MLX5,), UVERBS)))
    assert not {c for c in codes(out) if c.startswith("RDMA")}


def test_rdma_provider_missing() -> None:
    rxe_only = dataclasses.replace(VERBS, verbs_providers=VERBS.verbs_providers[1:])
    d = only(diags(rxe_only, host(rdma=RdmaFacts((MLX5,), UVERBS))), "RDMA-PROVIDER-MISSING")
    assert d.severity == "warning" and "mlx5" in d.message and "has rxe" in d.message
    efa = RdmaDevice("efa_0", "efa", False, (RdmaPort(1, "ACTIVE", "Unspecified"),))
    assert "efa" in only(diags(VERBS, host(rdma=RdmaFacts((efa,), UVERBS))), "RDMA-PROVIDER-MISSING").message


def test_rdma_ports_down_or_no_device_nodes() -> None:
    down = dataclasses.replace(MLX5, ports=(RdmaPort(1, "DOWN", "InfiniBand"),))
    d = only(diags(VERBS, host(rdma=RdmaFacts((down,), UVERBS))), "RDMA-ABSENT")
    assert "mlx5_0 port 1: DOWN" in d.message
    d = only(diags(VERBS, host(rdma=RdmaFacts((MLX5,), ()))), "RDMA-ABSENT")
    assert "uverbs" in d.message


# ---- architecture ----

QEMU = Emulator("qemu-aarch64", "arm64", "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", True, "POCF")


def test_arch_emulated() -> None:
    d = only(diags(image(), host(emulators=(QEMU,)), arch="arm64"), "ARCH-EMULATED")
    assert d.severity == "warning" and "arm64" in d.message and "amd64" in d.message and "qemu-aarch64" in d.message
    assert "F flag" not in d.message
    no_f = dataclasses.replace(QEMU, flags="PO")
    d = only(diags(image(), host(emulators=(no_f,)), arch="arm64"), "ARCH-EMULATED")
    assert "F flag" in d.message and "inside the container" in d.message and "F flag" in d.admin_hint


def test_arch_mismatch() -> None:
    d = only(diags(image(), host(), arch="ppc64le"), "ARCH-MISMATCH")
    assert d.severity == "error" and "ppc64le" in d.message
    disabled = dataclasses.replace(QEMU, enabled=False)
    d = only(diags(image(), host(emulators=(disabled,)), arch="arm64"), "ARCH-MISMATCH")
    assert "registered but disabled" in d.message
    # the wrong emulator does not help
    assert "ARCH-MISMATCH" in codes(diags(image(), host(emulators=(QEMU,)), arch="riscv64"))


def test_native_arches() -> None:
    assert not codes(diags(image(), host(), arch="amd64")) & {"ARCH-MISMATCH", "ARCH-EMULATED"}
    assert not codes(diags(image(), host(), arch="386")) & {"ARCH-MISMATCH", "ARCH-EMULATED"}
    assert not codes(diags(image(), host(), arch="unknown")) & {"ARCH-MISMATCH", "ARCH-EMULATED"}


# ---- ISA level ----

def test_isa_too_high() -> None:
    e = image(app="/usr/bin/app", app_isa_level=1, isa_level=3, isa_binary="/usr/lib/libvec.so.1")
    d = only(diags(e, host(cpu=CpuFacts("amd64", 2, "Intel Xeon E5-2680 v2"))), "ISA-TOO-HIGH")
    assert d.severity == "error"
    assert "/usr/lib/libvec.so.1 needs x86-64-v3" in d.message and "x86-64-v2" in d.message
    assert "Xeon E5-2680 v2" in d.message
    assert "ISA-TOO-HIGH" not in codes(diags(e, host(cpu=CpuFacts("amd64", 3))))
    assert "ISA-TOO-HIGH" not in codes(diags(e, host(cpu=CpuFacts("arm64", None)), arch="arm64"))


def test_isa_declared() -> None:
    e = image(requires=(req("cpu.x86-64-v3"),))
    d = only(diags(e, host(cpu=CpuFacts("amd64", 2))), "ISA-TOO-HIGH")
    assert "'cpu.x86-64-v3'" in d.message
    assert "ISA-TOO-HIGH" not in codes(diags(e, host(cpu=CpuFacts("amd64", 4))))


def test_isa_underused() -> None:
    e = image(app="/usr/bin/app", app_isa_level=1, isa_level=1, isa_binary="/usr/bin/app",
              hwcaps_dirs=("/usr/lib/x86_64-linux-gnu/glibc-hwcaps/x86-64-v3",))
    d = only(diags(e, host(cpu=CpuFacts("amd64", 4))), "ISA-UNDERUSED")
    assert d.severity == "info" and "/usr/bin/app" in d.message and "x86-64-v4" in d.message
    assert "AVX-512" in d.message and "glibc-hwcaps" in d.message
    assert "ISA-UNDERUSED" not in codes(diags(e, host(cpu=CpuFacts("amd64", 2))))
    # only said of the app itself: a level taken from libraries alone says nothing about it
    unchecked = dataclasses.replace(e, app=None, app_isa_level=None)
    assert "ISA-UNDERUSED" not in codes(diags(unchecked, host(cpu=CpuFacts("amd64", 4))))


# ---- CPUs ----

def test_cpu_starved_single_cpu() -> None:
    d = only(diags(image(), host(cpus=CpuAllowance(64, 1))), "CPU-STARVED")
    assert d.severity == "warning" and "1 of the node's 64 CPUs" in d.message
    d = only(diags(image(), host(cpus=CpuAllowance(64, 64, 1.0))), "CPU-STARVED")
    assert "cgroup quota 1 CPUs" in d.message
    assert diags(image(), host(cpus=CpuAllowance(2, 1))) == []
    assert diags(image(), host(cpus=CpuAllowance(64, 64, 2.0))) == []


def test_cpu_starved_by_omp_threads() -> None:
    e = image(openmp=(LibFound("libgomp.so.1", "/usr/lib/x86_64-linux-gnu/libgomp.so.1"),),
              env={"OMP_NUM_THREADS": "8"})
    d = only(diags(e, host(cpus=CpuAllowance(64, 2))), "CPU-STARVED")
    assert "OMP_NUM_THREADS=8" in d.message and "libgomp.so.1" in d.message
    # the job's environment wins over the image's
    assert diags(e, host(cpus=CpuAllowance(64, 2)), environ={"OMP_NUM_THREADS": "2"}) == []
    quota = host(cpus=CpuAllowance(64, 4, 2.5))
    assert "CPU-STARVED" in codes(diags(image(), quota, environ={"OMP_NUM_THREADS": "3,2"}))


def test_cpu_cores_declared() -> None:
    e = image(requires=(req("cpu.cores>=8"),))
    d = only(diags(e, host(cpus=CpuAllowance(64, 4))), "CPU-STARVED")
    assert d.severity == "error" and "'cpu.cores>=8'" in d.message
    assert diags(e, host(cpus=CpuAllowance(64, 8))) == []


def test_virtualized() -> None:
    d = only(diags(image(), host(hypervisor="kvm")), "VIRTUALIZED")
    assert d.severity == "info" and "kvm" in d.message
    assert diags(image(), host()) == []


def test_image_declaration_diagnostics_pass_through() -> None:
    bad = Diagnostic("IMAGE-REQUIRES-INVALID", "warning", "the image's hardware declaration ... 'gpu.quantum'")
    assert diags(image(diagnostics=(bad,)), host()) == [bad]


def test_everything_at_once_is_ordered() -> None:
    e = image(cuda_runtime=cudart(), requires=(req("net.rdma"),), app="/a", app_isa_level=3, isa_level=3,
              isa_binary="/a")
    h = host(cpu=CpuFacts("amd64", 2), cpus=CpuAllowance(8, 1), hypervisor="xen")
    assert [d.code for d in diags(e, h)] == ["ISA-TOO-HIGH", "GPU-ABSENT", "RDMA-ABSENT", "CPU-STARVED", "VIRTUALIZED"]


# ---- policy ----

def test_policy() -> None:
    ds = [Diagnostic("RDMA-ABSENT", "info", "r"), Diagnostic("GPU-ABSENT", "warning", "g"),
          Diagnostic("ISA-UNDERUSED", "info", "i"), Diagnostic("CPU-STARVED", "warning", "c"),
          Diagnostic("VIRTUALIZED", "info", "v")]
    out = apply_policy(ds, {"RDMA-ABSENT": "ignore", "GPU-ABSENT": "error", "ISA-UNDERUSED": "warn",
                            "CPU-STARVED": " Info ", "NOT-PRESENT": "error"})
    assert [(d.code, d.severity) for d in out] == [("GPU-ABSENT", "error"), ("ISA-UNDERUSED", "warning"),
                                                   ("CPU-STARVED", "info"), ("VIRTUALIZED", "info")]
    assert ds[1].severity == "warning"  # the input is not modified
    assert apply_policy(ds, {}) == ds


@pytest.mark.parametrize("action", ["drop", "", "fatal", None, 3])
def test_policy_rejects_unknown_actions(action) -> None:
    with pytest.raises(ValueError, match=r"GPU-ABSENT: unknown action .*expected one of: ignore, info, warn, error"):
        apply_policy([], {"GPU-ABSENT": action})
