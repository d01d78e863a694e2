"""GPU and RDMA injection plans, planned only (nothing is launched): SIMULATED host roots
(tests/hostroot.py: stub libcuda/libnvidia-ml built with gcc, a fake /proc/driver/nvidia) and
directory images built here from the machine's glibc and gcc stubs (a CUDA runtime stub, verbs
stubs with real symbol-version tables from linker version scripts).

CUDA: the example cuda-driver profile injects libcuda.so.1 and NVML into an image that has a CUDA
runtime but no libcuda (dlopen: only the re-pointed ld.so.cache leads to it); driver libraries of
another release than the loaded kernel module are refused (CUDA-DRIVER-MISMATCH); an image's newer
forward-compat libcuda is used instead of the host's only on GPUs known to support it.
RDMA: a host verbs provider needing IBVERBS_PRIVATE_34 against a libibverbs defining only
IBVERBS_PRIVATE_25 is refused (RDMA-PROVIDER-ABI); against a matching one it is injected."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from cbuild import build_c
from hostroot import SimulatedHost, gpu_present, rdma_mlx5_ib
from simulated_gpu import (
    CUDA,
    DRIVER,
    EXAMPLES,
    FLAGS,
    TRIPLET,
    cuda_conf,
    cuda_runtime_image,
    gpu_host,
    make_image,
    plain_image,
    version_script,
)

from shim.elf.facts import elf_facts
from shim.elf.ldcache import CacheEntry, read_ld_cache
from shim.elf.ldcache_write import write_ld_cache
from shim.elf.loader import Loader
from shim.host.gather import gather_host_view
from shim.model import INJECT, REFUSE, SKIP
from shim.plan.compose import plan_for_image
from shim.plan.job import INJECT_DIR
from shim.plan.model import Plan
from shim.plan.profiles import lint_files, load_profiles
from shim.plan.request import PlanRequest


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # compute_plan keeps host ELF facts in the user's cache: keep the tests' out of it.
    monkeypatch.setenv("SHIMRUN_CACHE", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------ planning

def plan(image: Path, host: SimulatedHost, conf: Path, requested: list[str] | None = None,
         app: str = "/opt/app/app", scratch: Path | None = None) -> Plan:
    profiles = load_profiles(conf, host_root=str(host.root))
    unusable = [f"{p.name}: {p.why_unavailable()}" for p in profiles.profiles if not p.available]
    assert not unusable, unusable
    request = PlanRequest(root=str(image), image="test-image", profiles=profiles, requested=tuple(requested or ()),
                          command=(app,), host=gather_host_view(str(host.root)))
    entry = plan_for_image(request, use_cache=False)
    if scratch and entry.ld_cache:
        (scratch / "ld.so.cache").write_bytes(entry.ld_cache)
    return entry.plan


def decision(p: Plan, library: str):
    found = [d for d in p.decisions if d.library == library]
    assert len(found) == 1, p.decisions
    return found[0]


def problems(p: Plan) -> list[str]:
    return [f"{d.code}: {d.message}" for d in p.diagnostics]


# ------------------------------------------------------------------------------------------ CUDA
# (the images, the GPU host and the example profile: tests/simulated_gpu.py)

def test_cuda_example_lints_on_a_gpu_host_without_optional_libraries(tmp_path: Path) -> None:
    host = gpu_present(tmp_path / "host")               # no PTX JIT, NVVM, debugger or cfg library
    host.write("usr/bin/nvidia-smi", "#!/bin/sh\n").chmod(0o755)
    example = EXAMPLES / "cuda-driver.toml"
    assert [str(p) for p in lint_files([example], host_root=str(host.root))] == []
    (shutil.rmtree(host.path("dev")))                   # a node without the GPU's device nodes
    assert any("/dev/nvidia*" in str(p) for p in lint_files([example], host_root=str(host.root)))


@pytest.mark.parametrize("how", ["image has a CUDA runtime", "requested by name"])
def test_libcuda_injected_where_the_image_has_none(tmp_path: Path, how: str) -> None:
    host = gpu_host(tmp_path / "host")
    if how == "requested by name":
        image, conf, requested = plain_image(tmp_path / "image"), cuda_conf(tmp_path / "conf"), ["cuda-driver"]
    else:
        image, conf, requested = cuda_runtime_image(tmp_path / "image"), cuda_conf(tmp_path / "conf", "always"), []
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    p = plan(image, host, conf, requested, scratch=scratch)
    assert problems(p) == []
    placed = f"{INJECT_DIR}/cuda-driver"
    cuda = decision(p, "libcuda.so.1")
    assert (cuda.decision, cuda.container_path) == (INJECT, f"{placed}/libcuda.so.{DRIVER}")
    assert cuda.host_path == f"{host.lib_dir}/libcuda.so.{DRIVER}"
    assert "dlopen" in cuda.reason and "the image has no libcuda.so.1" in cuda.reason
    assert ("libcudart.so.12" in cuda.reason) == (how == "image has a CUDA runtime"), cuda.reason
    nvml = decision(p, "libnvidia-ml.so.1")
    assert (nvml.decision, nvml.container_path) == (INJECT, f"{placed}/libnvidia-ml.so.{DRIVER}")
    assert decision(p, "libnvidia-ptxjitcompiler.so.1").decision == INJECT   # an optional one, present here
    binds = {(b.src, b.dst) for b in p.binds}
    assert (f"{host.lib_dir}/libcuda.so.{DRIVER}", f"{placed}/libcuda.so.{DRIVER}") in binds
    assert ("/usr/bin/nvidia-smi", "/usr/bin/nvidia-smi") in binds
    assert any(b.dst == "/dev/nvidia0" and b.device for b in p.binds)
    # The container's loader finds it by SONAME through the re-pointed cache, which keeps the
    # image's own entries: emulate the launch (the cache and the bound file in place) and ask.
    cache = read_ld_cache(str(scratch / "ld.so.cache"))
    assert cache.lookup("libcuda.so.1") == f"{placed}/libcuda.so.{DRIVER}"
    assert cache.lookup("libnvidia-ml.so.1") == f"{placed}/libnvidia-ml.so.{DRIVER}"
    assert cache.lookup("libc.so.6") == f"/usr/lib/{TRIPLET}/libc.so.6"
    shutil.copy(scratch / "ld.so.cache", image / "etc/ld.so.cache")
    (image / placed.lstrip("/")).mkdir(parents=True)
    shutil.copy(host.path(cuda.host_path), image / cuda.container_path.lstrip("/"))
    app = elf_facts(image / "opt/app/app")
    assert Loader(str(image)).find("libcuda.so.1", app, "/opt/app/app") == cuda.container_path


def test_libcuda_not_injected_into_an_image_without_cuda_unless_requested(tmp_path: Path) -> None:
    host = gpu_host(tmp_path / "host")
    p = plan(plain_image(tmp_path / "image"), host, cuda_conf(tmp_path / "conf", "always"))
    cuda = decision(p, "libcuda.so.1")
    assert cuda.decision == SKIP and "shows no sign of CUDA" in cuda.reason and "--profile cuda-driver" in cuda.reason
    assert not any(b.dst.startswith(INJECT_DIR) for b in p.binds)


def test_driver_libraries_of_another_release_than_the_kernel_module_are_refused(tmp_path: Path) -> None:
    host = gpu_host(tmp_path / "host").nvidia_module("550.54.14")   # updated, not rebooted
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    p = plan(cuda_runtime_image(tmp_path / "image"), host, cuda_conf(tmp_path / "conf"), ["cuda-driver"],
             scratch=scratch)
    (diag,) = p.diagnostics
    assert diag.code == "CUDA-DRIVER-MISMATCH"
    assert diag.message.startswith(f"libcuda.so.{DRIVER} does not match the loaded kernel module 550.54.14")
    assert "(and 2 more)" in diag.message          # libnvidia-ml and the PTX JIT of the same old release
    assert "provides.libraries (soname:libcuda.so.1)" in diag.admin_hint and diag.hint
    assert decision(p, "libcuda.so.1").decision == REFUSE
    assert p.binds == [] and not (scratch / "ld.so.cache").exists()   # nothing of the profile


def test_driver_libraries_compared_among_themselves_without_a_kernel_module(tmp_path: Path) -> None:
    host = gpu_host(tmp_path / "host")
    os.unlink(host.path("proc/driver/nvidia/version"))
    link = host.path(f"{host.lib_dir}/libnvidia-ml.so.1")     # NVML of another release than libcuda
    shutil.copy(link, link.parent / "libnvidia-ml.so.550.54.14")
    link.unlink()
    link.symlink_to("libnvidia-ml.so.550.54.14")
    p = plan(cuda_runtime_image(tmp_path / "image"), host, cuda_conf(tmp_path / "conf"), ["cuda-driver"])
    assert problems(p) == [("CUDA-DRIVER-MISMATCH: libnvidia-ml.so.550.54.14 does not match "
                            f"libcuda.so.{DRIVER} (no loaded kernel module to compare with)")]
    os.unlink(link)
    link.symlink_to(f"libnvidia-ml.so.{DRIVER}")
    assert problems(plan(cuda_runtime_image(tmp_path / "image2"), host, cuda_conf(tmp_path / "conf2"),
                         ["cuda-driver"])) == []


def test_newer_forward_compat_libcuda_of_the_image_is_used_on_datacenter_gpus(tmp_path: Path) -> None:
    host = gpu_host(tmp_path / "host")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    p = plan(cuda_runtime_image(tmp_path / "image", compat="550.54.15"), host, cuda_conf(tmp_path / "conf"),
             ["cuda-driver"], scratch=scratch)
    assert problems(p) == []
    cuda = decision(p, "libcuda.so.1")
    assert (cuda.decision, cuda.container_path) == (SKIP, f"{CUDA}/compat/libcuda.so.1")
    assert cuda.reason.startswith("the image's forward-compat libcuda 550.54.15 is used")
    assert f"newer than this node's driver {DRIVER}" in cuda.reason and "NVIDIA A100-SXM4-80GB" in cuda.reason
    ptx = decision(p, "libnvidia-ptxjitcompiler.so.1")          # goes with the compat libcuda
    assert (ptx.decision, ptx.container_path) == (SKIP, f"{CUDA}/compat/libnvidia-ptxjitcompiler.so.1")
    assert decision(p, "libnvidia-ml.so.1").decision == INJECT  # NVML always comes from the driver
    # The compat directory is not in the image's cache: the re-pointed cache leads there.
    cache = read_ld_cache(str(scratch / "ld.so.cache"))
    assert cache.lookup("libcuda.so.1") == f"{CUDA}/compat/libcuda.so.1"
    assert cache.lookup("libnvidia-ml.so.1") == f"{INJECT_DIR}/cuda-driver/libnvidia-ml.so.{DRIVER}"


@pytest.mark.parametrize(("model", "setting", "why"), [
    ("NVIDIA GeForce RTX 4090", "auto", "NVIDIA GeForce RTX 4090 cannot use forward compatibility"),
    ("GRID A100-40C", "auto", "GRID A100-40C cannot use forward compatibility"),
    (None, "auto", "whether the GPUs support forward compatibility cannot be told"),
    ("NVIDIA H100 80GB HBM3", "never", 'the profile sets cuda_forward_compat = "never"'),
])
def test_host_driver_kept_where_forward_compat_is_not_known_to_work(tmp_path: Path, model: str | None,
                                                                     setting: str, why: str) -> None:
    host = gpu_host(tmp_path / "host", model=model)
    p = plan(cuda_runtime_image(tmp_path / "image", compat="550.54.15"), host, cuda_conf(tmp_path / "conf",
             forward_compat=setting), ["cuda-driver"])
    cuda = decision(p, "libcuda.so.1")
    assert cuda.decision == INJECT and cuda.container_path == f"{INJECT_DIR}/cuda-driver/libcuda.so.{DRIVER}"
    assert "forward-compat libcuda 550.54.15" in cuda.reason and why in cuda.reason, cuda.reason
    assert decision(p, "libnvidia-ptxjitcompiler.so.1").decision == INJECT


def test_site_opt_in_uses_forward_compat_where_gpus_are_unknown(tmp_path: Path) -> None:
    host = gpu_host(tmp_path / "host", model=None)
    p = plan(cuda_runtime_image(tmp_path / "image", compat="550.54.15"), host,
             cuda_conf(tmp_path / "conf", forward_compat="always"), ["cuda-driver"])
    cuda = decision(p, "libcuda.so.1")
    assert cuda.decision == SKIP and 'cuda_forward_compat = "always"' in cuda.reason


def test_older_forward_compat_libcuda_is_ignored(tmp_path: Path) -> None:
    host = gpu_host(tmp_path / "host")
    p = plan(cuda_runtime_image(tmp_path / "image", compat="525.60.13"), host, cuda_conf(tmp_path / "conf"),
             ["cuda-driver"])
    cuda = decision(p, "libcuda.so.1")
    assert cuda.decision == INJECT and "forward-compat" not in cuda.reason


# ------------------------------------------------------------------------------------------ RDMA

VERBS_SRC = ("int ibv_get_device_list(void) { return 0; }\nint ibv_open_device(void) { return 0; }\n"
             "void REGISTER(void) {}\n")
PROVIDER_SRC = "extern void REGISTER(void);\nvoid provider_init(void) { REGISTER(); }\n"
RDMACM_SRC = "extern int ibv_open_device(void);\nint rdma_create_id(void) { return ibv_open_device(); }\n"
VERBS_APP_SRC = "extern int ibv_open_device(void);\nint main(void) { return ibv_open_device(); }\n"


def verbs_lib(private: int) -> Path:
    """A libibverbs.so.1 defining IBVERBS_1.0, IBVERBS_1.1 and IBVERBS_PRIVATE_<private>, as
    rdma-core's does (the private node holds what providers call, e.g. verbs_register_driver_34)."""
    script = version_script(
        "IBVERBS_1.0 { global: ibv_get_device_list; local: *; };\n"
        "IBVERBS_1.1 { global: ibv_open_device; } IBVERBS_1.0;\n"
        f"IBVERBS_PRIVATE_{private} {{ global: verbs_register_driver_{private}; }};\n")
    return build_c("libibverbs.so.1", VERBS_SRC, ["-shared", "-fPIC", "-Wl,-soname,libibverbs.so.1",
                                                  f"-Wl,--version-script={script}",
                                                  f"-DREGISTER=verbs_register_driver_{private}"])


def provider_lib(name: str, soname: str, private: int) -> Path:
    """A provider linked against libibverbs PRIVATE_<private>: it needs that version node."""
    verbs = verbs_lib(private)
    return build_c(name, PROVIDER_SRC, ["-shared", "-fPIC", f"-Wl,-soname,{soname}", f"-L{verbs.parent}",
                                        "-l:libibverbs.so.1", f"-DREGISTER=verbs_register_driver_{private}"])


def rdma_host(root: Path, private: int = 34) -> SimulatedHost:
    """A ConnectX node (rdma_mlx5_ib) with rdma-core laid out as RHEL does in /usr/lib64: libibverbs,
    librdmacm, libmlx5, the providers in libibverbs/ (mlx5's a link to ../libmlx5.so.1.24.0, rxe's a
    file of its own), /etc/libibverbs.d, in the host's ld.so.cache."""
    host = rdma_mlx5_ib(root)
    verbs = verbs_lib(private)
    rdmacm = build_c("librdmacm.so.1", RDMACM_SRC, ["-shared", "-fPIC", "-Wl,-soname,librdmacm.so.1",
                                                    f"-L{verbs.parent}", "-l:libibverbs.so.1"])
    lib = "/usr/lib64"
    for name, built in {"libibverbs.so.1.14.0": verbs, "librdmacm.so.1.3.0": rdmacm,
                        "libmlx5.so.1.24.0": provider_lib("libmlx5.so.1", "libmlx5.so.1", private),
                        f"libibverbs/librxe-rdmav{private}.so":
                            provider_lib(f"librxe-rdmav{private}.so", f"librxe-rdmav{private}.so", private)}.items():
        host.path(f"{lib}/{name}").parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(built, host.path(f"{lib}/{name}"))
    host.link(f"{lib}/libibverbs.so.1", "libibverbs.so.1.14.0")
    host.link(f"{lib}/librdmacm.so.1", "librdmacm.so.1.3.0")
    host.link(f"{lib}/libmlx5.so.1", "libmlx5.so.1.24.0")
    host.link(f"{lib}/libibverbs/libmlx5-rdmav{private}.so", "../libmlx5.so.1.24.0")
    host.write("etc/libibverbs.d/mlx5.driver", "driver mlx5\n")
    host.write("etc/libibverbs.d/rxe.driver", "driver rxe\n")
    host.write("etc/ld.so.cache").write_bytes(write_ld_cache(
        [CacheEntry(FLAGS, s, f"{lib}/{s}") for s in ("libibverbs.so.1", "librdmacm.so.1", "libmlx5.so.1")]))
    return host


def verbs_image(root: Path, private: int) -> Path:
    """An image whose app links its own libibverbs.so.1 (rdma-core of provider ABI `private`)."""
    verbs = verbs_lib(private)
    app = build_c("verbs-app", VERBS_APP_SRC, [f"-L{verbs.parent}", "-l:libibverbs.so.1"])
    libdir = f"/usr/lib/{TRIPLET}"
    return make_image(root, {f"{libdir}/libibverbs.so.1.12.0": verbs, "/opt/app/app": app},
                      {f"{libdir}/libibverbs.so.1": "libibverbs.so.1.12.0"},
                      {"libibverbs.so.1": f"{libdir}/libibverbs.so.1"})


PROVIDERS_ONLY = """\
[profile]
name = "rdma-providers"
kind = "rdma"
applies = "always"

[provides]
plugin_dirs = ["/usr/lib64/libibverbs"]
config_files = ["/etc/libibverbs.d"]
devices = ["/dev/infiniband/*"]
"""


def conf_with(conf: Path, name: str, text: str) -> Path:
    (conf / "profiles").mkdir(parents=True)
    (conf / "profiles" / f"{name}.toml").write_text(text)
    return conf


def test_provider_needing_another_private_abi_than_the_image_libibverbs_is_refused(tmp_path: Path) -> None:
    host = rdma_host(tmp_path / "host")
    p = plan(verbs_image(tmp_path / "image", 25), host, conf_with(tmp_path / "conf", "p", PROVIDERS_ONLY))
    (diag,) = p.diagnostics
    assert diag.code == "RDMA-PROVIDER-ABI"
    assert diag.message.startswith("libmlx5-rdmav34.so needs IBVERBS_PRIVATE_34 (provider ABI 34), but the "
                                   f"image's libibverbs.so.1 (/usr/lib/{TRIPLET}/libibverbs.so.1.12.0) defines "
                                   "IBVERBS_PRIVATE_25"), diag.message
    assert "provides.plugin_dirs (/usr/lib64/libibverbs)" in diag.admin_hint
    assert decision(p, "libmlx5-rdmav34.so").decision == REFUSE
    assert p.binds == []                                   # not the devices, not the providers


def test_provider_matching_the_image_libibverbs_is_injected(tmp_path: Path) -> None:
    host = rdma_host(tmp_path / "host")
    p = plan(verbs_image(tmp_path / "image", 34), host, conf_with(tmp_path / "conf", "p", PROVIDERS_ONLY))
    assert problems(p) == []
    for name in ("libmlx5-rdmav34.so", "librxe-rdmav34.so"):
        d = decision(p, name)
        assert d.decision == INJECT and f"the image's libibverbs.so.1 (/usr/lib/{TRIPLET}/" in d.reason
    binds = {(b.src, b.dst) for b in p.binds}
    assert ("/usr/lib64/libibverbs", "/usr/lib64/libibverbs") in binds
    # mlx5's provider is a link out of the directory: its target goes where the link leads.
    assert ("/usr/lib64/libmlx5.so.1.24.0", "/usr/lib64/libmlx5.so.1.24.0") in binds
    assert ("/etc/libibverbs.d", "/etc/libibverbs.d") in binds
    assert any(b.dst == "/dev/infiniband/uverbs0" and b.device for b in p.binds)


def test_verbs_example_injects_host_libibverbs_so_its_providers_match(tmp_path: Path) -> None:
    # The image's rdma-core is older (ABI 25), but the example also replaces libibverbs.so.1:
    # the providers are checked against the host's libibverbs, which the image will use.
    host = rdma_host(tmp_path / "host")
    conf = conf_with(tmp_path / "conf", "verbs", (EXAMPLES / "verbs.toml").read_text())
    assert [str(pr) for pr in lint_files([conf / "profiles/verbs.toml"], host_root=str(host.root))] == []
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    p = plan(verbs_image(tmp_path / "image", 25), host, conf, scratch=scratch)
    assert problems(p) == []
    verbs = [d for d in p.decisions if d.library == "libibverbs.so.1"]
    assert verbs and all(d.decision == INJECT for d in verbs)
    provider = decision(p, "libmlx5-rdmav34.so")
    assert provider.decision == INJECT and "the host's libibverbs.so.1" in provider.reason
    assert read_ld_cache(str(scratch / "ld.so.cache")).lookup("libibverbs.so.1").startswith(f"{INJECT_DIR}/verbs/")


def test_host_providers_of_another_abi_than_the_host_libibverbs_are_refused(tmp_path: Path) -> None:
    # A broken host install: providers built for ABI 34, libibverbs of ABI 25 (mixed rdma-core);
    # the image's libibverbs (ABI 34) would have served, but the profile replaces it.
    host = rdma_host(tmp_path / "host")
    shutil.copy(verbs_lib(25), host.path("usr/lib64/libibverbs.so.1.14.0"))
    conf = conf_with(tmp_path / "conf", "verbs", (EXAMPLES / "verbs.toml").read_text())
    p = plan(verbs_image(tmp_path / "image", 34), host, conf)
    (diag,) = p.diagnostics
    assert diag.code == "RDMA-PROVIDER-ABI" and "IBVERBS_PRIVATE_34" in diag.message
    assert "the host's libibverbs.so.1 (/usr/lib64/libibverbs.so.1" in diag.message
    assert "defines IBVERBS_PRIVATE_25" in diag.message and "different rdma-core builds" in diag.hint


def test_provider_abi_is_read_from_its_version_needs_not_its_file_name(tmp_path: Path) -> None:
    # Named for ABI 25, built against IBVERBS_PRIVATE_34: the ELF version requirement decides.
    host = rdma_host(tmp_path / "host")
    providers = host.path("usr/lib64/libibverbs")
    for old in providers.iterdir():
        old.unlink()
    shutil.copy(provider_lib("libodd-rdmav25.so", "libodd-rdmav25.so", 34), providers / "libodd-rdmav25.so")
    p = plan(verbs_image(tmp_path / "image", 25), host, conf_with(tmp_path / "conf", "p", PROVIDERS_ONLY))
    assert problems(p) and problems(p)[0].startswith(
        "RDMA-PROVIDER-ABI: libodd-rdmav25.so needs IBVERBS_PRIVATE_34 (provider ABI 34)"), problems(p)
