"""pytest fixtures (registered by conftest.py's pytest_plugins): directory images that carry their
own shared libraries with an ld.so.cache listing them (the way ldconfig would in a built image),
and the site-side builds of libsitefoo that profiles inject into them.

    foo_image   the host's glibc, the image's own libsitefoo.so.1 and /opt/app/foo-app using it
    site_libs   host builds of libsitefoo: "good" needs libsitedep (present on the host),
                "broken" needs libnowhere (present nowhere)
    cuda_image  built for CUDA 12.2: a libcudart.so.12 stub at the toolkit's path, CUDA_VERSION
                in its environment script, and a busybox shell

Module-scoped (each test module gets them once); the images are built once per world_dir."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cbuild import build_c, stub_dir
from dirimage import BOUND

from shim.elf.layout import FLAG_ELF_LIBC6, FLAG_X8664_LIB64
from shim.elf.ldcache import CacheEntry
from shim.elf.ldcache_write import write_ld_cache

X86_64_LIBC6 = FLAG_X8664_LIB64 | FLAG_ELF_LIBC6   # ld.so.cache flags of a native x86-64 library

FOO_SRC = """
#include <stdio.h>
extern const char *dep_name(void);
const char *foo_name(void) { return FOO_NAME; }
void foo_hello(void) { printf("foo: %s\\n", FOO_NAME); USE_DEP }
"""
DEP_SRC = '#include <stdio.h>\nconst char *dep_name(void) { return "host dep"; }\n'
APP_SRC = '#include <stdio.h>\nextern void foo_hello(void);\nint main(void) { foo_hello(); return 0; }\n'


def foo_lib(out_dir: Path, name: str, dep: str | None) -> Path:
    use = 'printf("dep: %s\\n", dep_name());' if dep else ""
    flags = ["-shared", "-fPIC", "-Wl,-soname,libsitefoo.so.1", f'-DFOO_NAME="{name}"', f"-DUSE_DEP={use}"]
    if dep:
        flags += [f"-L{out_dir}", f"-l{dep}", f"-Wl,-rpath,{out_dir}"]
    return build_c("libsitefoo.so.1", FOO_SRC, flags, out_dir=out_dir)


def foo_profile(lib: Path) -> str:
    """A profile's text injecting `lib` in place of the image's libsitefoo.so.1, when used."""
    return (f'[profile]\nkind = "other"\napplies = "when-used"\nreplaces = ["libsitefoo.so.1"]\n'
            f'[provides]\nlibraries = ["{lib}"]\n')


@pytest.fixture(scope="module")
def site_libs() -> dict[str, Path]:
    """Host-side builds (a site's library dirs): libsitefoo needing libsitedep (present on the
    host), and a second libsitefoo needing libnowhere (present nowhere: its build file is removed)."""
    base = stub_dir() / "site-deps-v1"
    good, broken = base / "good", base / "broken"
    build_c("libsitedep.so.1", DEP_SRC, ["-shared", "-fPIC", "-Wl,-soname,libsitedep.so.1"], out_dir=good)
    if not (good / "libsitedep.so").exists():
        (good / "libsitedep.so").symlink_to("libsitedep.so.1")
    foo = foo_lib(good, "host", "sitedep")
    if not (broken / "libsitefoo.so.1").exists():
        build_c("libnowhere.so.1", DEP_SRC, ["-shared", "-fPIC", "-Wl,-soname,libnowhere.so.1"], out_dir=broken)
        (broken / "libnowhere.so").symlink_to("libnowhere.so.1")
        foo_lib(broken, "host broken", "nowhere")
        (broken / "libnowhere.so").unlink()
        (broken / "libnowhere.so.1").unlink()
    return {"good": foo, "broken": broken / "libsitefoo.so.1"}


def _finish(root: Path, cache: list[CacheEntry]) -> Path:
    """The directories a launch binds over, the ld.so.cache listing `cache`, all world-readable."""
    for d in BOUND:
        (root / d).mkdir(exist_ok=True)
    (root / "etc/ld.so.cache").write_bytes(write_ld_cache(cache))
    subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return root


@pytest.fixture(scope="module")
def foo_image(world_dir: Path) -> Path:
    """A directory image: the host's glibc, its own libsitefoo.so.1 and an app using it."""
    root = world_dir / "foo-image"
    if (root / "etc/ld.so.cache").exists():  # built already (by another test module)
        return root
    libdir = root / "usr/lib/x86_64-linux-gnu"
    libdir.mkdir(parents=True, exist_ok=True)
    (root / "lib64").mkdir(exist_ok=True)
    shutil.copy2("/lib64/ld-linux-x86-64.so.2", root / "lib64/ld-linux-x86-64.so.2")
    shutil.copy2("/lib/x86_64-linux-gnu/libc.so.6", libdir / "libc.so.6")
    img_foo = build_c("libsitefoo.so.1", FOO_SRC, ["-shared", "-fPIC", "-Wl,-soname,libsitefoo.so.1",
                                                   '-DFOO_NAME="image"', "-DUSE_DEP="])
    shutil.copy2(img_foo, libdir / "libsitefoo.so.1")
    app = build_c("foo-app", APP_SRC, [f"-L{img_foo.parent}", "-l:libsitefoo.so.1"])
    (root / "opt/app").mkdir(parents=True, exist_ok=True)
    shutil.copy2(app, root / "opt/app/foo-app")
    return _finish(root, [CacheEntry(X86_64_LIBC6, "libc.so.6", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
                          CacheEntry(X86_64_LIBC6, "libsitefoo.so.1", "/usr/lib/x86_64-linux-gnu/libsitefoo.so.1")])


@pytest.fixture(scope="module")
def cuda_image(world_dir: Path) -> Path:
    """A directory image built for CUDA 12.2: libcudart.so.12 (a stub with the real SONAME, at
    its CUDA-toolkit file name) and CUDA_VERSION in its environment script, like NVIDIA's
    OCI images converted to SIF; plus a shell to run things with."""
    root = world_dir / "cuda-image"
    if (root / "etc/ld.so.cache").exists():  # built already (by another test module)
        return root
    lib = root / "usr/local/cuda-12.2/targets/x86_64-linux/lib"
    lib.mkdir(parents=True)
    cudart = build_c("libcudart.so.12.2.140", "int cudaRuntimeGetVersion(int *v) { *v = 12020; return 0; }\n",
                     ["-shared", "-fPIC", "-Wl,-soname,libcudart.so.12"])
    shutil.copy2(cudart, lib / "libcudart.so.12.2.140")
    (lib / "libcudart.so.12").symlink_to("libcudart.so.12.2.140")
    (root / "bin").mkdir()
    shutil.copy2("/bin/busybox", root / "bin/busybox")
    for name in ("sh", "echo", "cat"):
        (root / "bin" / name).symlink_to("busybox")
    env = root / ".singularity.d/env"
    env.mkdir(parents=True)
    (env / "10-docker2singularity.sh").write_text(
        "#!/bin/sh\nexport CUDA_VERSION=12.2.0\nexport NVIDIA_REQUIRE_CUDA=\"cuda>=12.2\"\n")
    return _finish(root, [CacheEntry(X86_64_LIBC6, "libcudart.so.12",
                                     "/usr/local/cuda-12.2/targets/x86_64-linux/lib/libcudart.so.12")])
