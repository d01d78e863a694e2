"""The directory image of scripts/gpu_launch_check.sh: the smallest root a CUDA app runs in.

- this machine's glibc (the libraries libcudart and the node's driver libraries link) and its
  ld.so, a static busybox as /bin/sh;
- the CUDA runtime of PyPI's nvidia-cuda-runtime-cu12 wheel as a CUDA image holds it:
  /usr/local/cuda-MAJOR.MINOR/lib64/libcudart.so.VERSION with its SONAME link libcudart.so.12, and
  CUDA_VERSION in the image's environment (.singularity.d/env, as docker2singularity writes it);
- /opt/app/cudacheck (scripts/gpu_cudacheck.c), linked to libcudart.so.12;
- /etc/ld.so.cache listing all of it (shim.elf.ldcache_write), as ldconfig would have written it
  when the image was built: ld.so finds libcudart through it, and shim re-points a copy of it to
  the node's driver libraries."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

from shim.elf.ldcache import CacheEntry
from shim.elf.ldcache_write import write_ld_cache

X86_64_LIB = 0x0303   # ELF64, x86-64: the flags ldconfig writes for an x86-64 library
GLIBC = ("libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libgcc_s.so.1")
LIBDIR = "lib/x86_64-linux-gnu"
LOADER = "lib64/ld-linux-x86-64.so.2"


def _cuda_version(wheel: Path) -> str:
    m = re.match(r"nvidia_cuda_runtime_cu\d+-(\d+\.\d+\.\d+)", wheel.name)
    if not m:
        raise SystemExit(f"gpu_image: cannot read the CUDA version from {wheel.name}")
    return m.group(1)


def _userland(root: Path) -> list[CacheEntry]:
    (root / LIBDIR).mkdir(parents=True)
    (root / "lib64").mkdir()
    (root / "bin").mkdir()
    entries = []
    for name in GLIBC:
        host = Path("/", LIBDIR, name)
        if host.exists():
            shutil.copy(os.path.realpath(host), root / LIBDIR / name)
            entries.append(CacheEntry(X86_64_LIB, name, f"/{LIBDIR}/{name}"))
    shutil.copy(os.path.realpath(f"/{LOADER}"), root / LOADER)
    entries.append(CacheEntry(X86_64_LIB, "ld-linux-x86-64.so.2", f"/{LOADER}"))
    busybox = shutil.which("busybox")
    if busybox and b"INTERP" not in subprocess.run(["readelf", "-l", busybox], capture_output=True,
                                                                   check=True).stdout:
        shutil.copy(busybox, root / "bin" / "busybox")
        os.symlink("busybox", root / "bin" / "sh")
    else:   # a dynamically linked /bin/sh: this machine's glibc is in the image
        shutil.copy(os.path.realpath("/bin/sh"), root / "bin" / "sh")
    return entries


def build_image(root: Path, cuda_wheel: Path, app_source: Path, work: Path) -> Path:
    """The image at `root`, the CUDA runtime from `cuda_wheel`, the app compiled in `work`."""
    version = _cuda_version(cuda_wheel)
    short = ".".join(version.split(".")[:2])
    major = version.split(".")[0]
    entries = _userland(root)
    cuda_lib = root / f"usr/local/cuda-{short}/lib64"
    cuda_lib.mkdir(parents=True)
    with zipfile.ZipFile(cuda_wheel) as z:
        data = z.read(f"nvidia/cuda_runtime/lib/libcudart.so.{major}")
    real = cuda_lib / f"libcudart.so.{version}"
    real.write_bytes(data)
    real.chmod(0o755)
    os.symlink(real.name, cuda_lib / f"libcudart.so.{major}")
    entries.append(CacheEntry(X86_64_LIB, f"libcudart.so.{major}",
                              f"/usr/local/cuda-{short}/lib64/libcudart.so.{major}"))
    os.symlink(f"cuda-{short}", root / "usr/local/cuda")
    app = root / "opt/app/cudacheck"
    app.parent.mkdir(parents=True)
    work.mkdir(parents=True, exist_ok=True)
    # Linked to the real file: its SONAME (libcudart.so.12) is what the app then needs.
    subprocess.run([os.environ.get("CC", "cc"), "-O2", "-Wall", "-Wextra", "-std=gnu11", "-o", str(app),
                    str(app_source), str(real)], check=True)
    (root / "etc").mkdir()
    (root / "etc/ld.so.cache").write_bytes(write_ld_cache(entries))
    (root / "tmp").mkdir(mode=0o1777)
    env = root / ".singularity.d/env"
    env.mkdir(parents=True)
    (env / "10-docker2singularity.sh").write_text(
        f"#!/bin/sh\nexport CUDA_VERSION={version}\nexport PATH=/usr/local/cuda/bin:/usr/bin:/bin\n")
    return root
