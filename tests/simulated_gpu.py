"""A simulated GPU world for planning tests (nothing is launched): directory images made from this
machine's glibc and gcc-built stubs (`make_image`; an image like nvidia/cuda's, a plain one), a GPU
node's host root (tests/hostroot.py's gpu_present, with nvidia-smi, the PTX JIT library and the
GPU's model), and the shipped cuda-driver example profile as a site enables it."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from cbuild import build_c, stub_dir
from hostroot import SimulatedHost, build_cuda_stub, gpu_present
from library_images import X86_64_LIBC6

from shim.elf.facts import elf_facts
from shim.elf.layout import lib_arch
from shim.elf.ldcache import CacheEntry, read_ld_cache
from shim.elf.ldcache_write import write_ld_cache
from shim.image.arch import host_arch

EXAMPLES = Path(__file__).resolve().parents[1] / "conf" / "profiles" / "examples"
ARCH = lib_arch(host_arch())
TRIPLET = ARCH.triplet
FLAGS = ARCH.cache_flags[0] if ARCH.cache_flags else X86_64_LIBC6
DRIVER = "535.104.05"


def version_script(text: str) -> Path:
    """A linker version script at a path fixed by its content (it is part of the build flags)."""
    path = stub_dir() / f"ver-{hashlib.sha256(text.encode()).hexdigest()[:16]}.map"
    if not path.exists():
        tmp = path.with_suffix(f".{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def _host_libc() -> tuple[str, str]:
    """(this machine's loader, its libc.so.6): the images run on this machine's glibc."""
    interp = elf_facts("/bin/sh").interp
    libc = read_ld_cache("/etc/ld.so.cache").lookup("libc.so.6", ARCH.cache_flags or None)
    assert interp and libc, "this machine's glibc not found"
    return interp, os.path.realpath(libc)


def make_image(root: Path, files: dict[str, Path], links: dict[str, str], cache: dict[str, str]) -> Path:
    """A directory image: glibc, `files` (container path -> built file), `links` (container
    path -> target), and an ld.so.cache with libc and `cache` (SONAME -> container path)."""
    interp, libc = _host_libc()
    libdir = f"/usr/lib/{TRIPLET}"
    for path, built in {interp: Path(interp), f"{libdir}/libc.so.6": Path(libc), **files}.items():
        dst = root / path.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(built, dst)
    for path, target in links.items():
        dst = root / path.lstrip("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(target)
    for d in ("etc", "proc", "sys", "dev", "tmp"):
        (root / d).mkdir(exist_ok=True)
    entries = [CacheEntry(FLAGS, k, v) for k, v in {"libc.so.6": f"{libdir}/libc.so.6", **cache}.items()]
    (root / "etc/ld.so.cache").write_bytes(write_ld_cache(entries))
    return root


CUDART_SRC = "int cudaRuntimeGetVersion(int *v) { *v = 12040; return 0; }\n"
CUDA_APP_SRC = "extern int cudaRuntimeGetVersion(int *);\nint main(void) { int v; return cudaRuntimeGetVersion(&v); }\n"
PLAIN_APP_SRC = "int main(void) { return 0; }\n"
CUDA = "/usr/local/cuda-12.4"


def cuda_runtime_image(root: Path, compat: str | None = None) -> Path:
    """An image like nvidia/cuda's: an app linking libcudart.so.12 (in /usr/local/cuda, in the
    cache), no libcuda.so.1 anywhere; with `compat`, the forward-compat libraries of that driver
    release in /usr/local/cuda-12.4/compat (not in the cache, as NVIDIA ships them)."""
    cudart = build_c("libcudart.so.12", CUDART_SRC, ["-shared", "-fPIC", "-Wl,-soname,libcudart.so.12"])
    app = build_c("cuda-app", CUDA_APP_SRC, [f"-L{cudart.parent}", "-l:libcudart.so.12"])
    files = {f"{CUDA}/lib64/libcudart.so.12.4.127": cudart, "/opt/app/app": app}
    links = {f"{CUDA}/lib64/libcudart.so.12": "libcudart.so.12.4.127"}
    if compat:
        files[f"{CUDA}/compat/libcuda.so.{compat}"] = build_cuda_stub(compat, 12040)
        files[f"{CUDA}/compat/libnvidia-ptxjitcompiler.so.{compat}"] = ptxjit_stub(compat)
        links[f"{CUDA}/compat/libcuda.so.1"] = f"libcuda.so.{compat}"
        links[f"{CUDA}/compat/libnvidia-ptxjitcompiler.so.1"] = f"libnvidia-ptxjitcompiler.so.{compat}"
    return make_image(root, files, links, {"libcudart.so.12": f"{CUDA}/lib64/libcudart.so.12"})


def plain_image(root: Path) -> Path:
    return make_image(root, {"/opt/app/app": build_c("plain-app", PLAIN_APP_SRC)}, {}, {})


def ptxjit_stub(driver: str) -> Path:
    return build_c(f"libnvidia-ptxjitcompiler.so.{driver}", "int __cuda_ptx_jit(void) { return 0; }\n",
                   ["-shared", "-fPIC", "-Wl,-soname,libnvidia-ptxjitcompiler.so.1"])


def gpu_host(root: Path, driver: str = DRIVER, model: str | None = "NVIDIA A100-SXM4-80GB") -> SimulatedHost:
    """gpu_present with nvidia-smi, the PTX JIT library (one of the example's optional ones) and,
    unless model is None, /proc/driver/nvidia/gpus/*/information naming the GPU."""
    host = gpu_present(root, driver=driver)
    host.write("usr/bin/nvidia-smi", "#!/bin/sh\n").chmod(0o755)
    host._install_lib(ptxjit_stub(driver), "libnvidia-ptxjitcompiler.so.1")
    if model:
        host.write("proc/driver/nvidia/gpus/0000:07:00.0/information",
                   f"Model: \t\t {model}\nIRQ:   \t\t 150\nBus Type: \t PCIe\n")
    return host


def cuda_conf(conf: Path, applies: str = "on-request", forward_compat: str = "auto") -> Path:
    """The shipped example, as a site enables it (applies and cuda_forward_compat as given)."""
    text = (EXAMPLES / "cuda-driver.toml").read_text()
    assert 'applies = "on-request"' in text and 'cuda_forward_compat = "auto"' in text
    text = text.replace('applies = "on-request"', f'applies = "{applies}"')
    text = text.replace('cuda_forward_compat = "auto"', f'cuda_forward_compat = "{forward_compat}"')
    (conf / "profiles").mkdir(parents=True)
    (conf / "profiles" / "cuda-driver.toml").write_text(text)
    return conf
