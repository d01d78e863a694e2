"""What a CUDA app loaded, on this GPU-less machine, against a SIMULATED GPU node (SHIMRUN_HOST_ROOT:
tests/hostroot.py's fake /proc, /dev and gcc-built driver stubs; nothing here is a real driver):

- the suite's CUDA runtime image (tests/simulated_gpu.py: an app linking libcudart.so.12, no
  libcuda.so.1 anywhere) on a GPU node: the runtime loaded and no driver library: GPU-UNUSED; on
  this node (no GPU) nothing is said;
- the same runtime built the way NVIDIA's is (it dlopens libcuda.so.1) in an image that carries a
  libcuda.so.1 of its own (another driver's build), the host's driver not injected: the app
  loads the image's copy: GPU-DRIVER-STUB naming it; with the site's cuda-driver profile applied
  the host's libcuda.so.1 is injected and loaded instead: neither finding, and the provenance
  record's "loaded" names the host file.

The app runs and exits as it would without the audit (the findings come after it). Skipped when
the build does not audit (tests/auditing.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from auditing import audit_missing, finding_lines
from cbuild import build_c
from hostroot import build_cuda_stub
from simulated_gpu import CUDA, DRIVER, TRIPLET, cuda_conf, cuda_runtime_image, gpu_host, make_image

from shim.provenance.loaded import loaded_objects

# A CUDA runtime as NVIDIA builds it: the driver library is dlopen'ed by SONAME, not linked.
DLOPEN_CUDART_SRC = r"""
#include <dlfcn.h>
static int driver_version = -1;
__attribute__((constructor)) static void find_driver(void) {
    void *driver = dlopen("libcuda.so.1", RTLD_NOW);
    int (*get)(int *) = driver ? (int (*)(int *))dlsym(driver, "cuDriverGetVersion") : 0;
    if (get) get(&driver_version);
}
int cudaRuntimeGetVersion(int *v) { *v = 12040; return 0; }
int cudaDriverVersionSeen(void) { return driver_version; }
"""
DLOPEN_APP_SRC = r"""
#include <stdio.h>
extern int cudaRuntimeGetVersion(int *);
extern int cudaDriverVersionSeen(void);
int main(void) {
    int v;
    cudaRuntimeGetVersion(&v);
    printf("runtime %d driver %d\n", v, cudaDriverVersionSeen());
    return 0;
}
"""
IMAGE_DRIVER = "550.54.15"   # the build the image carries: not the node's (DRIVER)
IMAGE_LIBCUDA = f"/usr/lib/{TRIPLET}/libcuda.so.1"


def dlopening_image(root: Path) -> Path:
    """The runtime that dlopens libcuda.so.1, and a libcuda.so.1 of another driver's build in the
    image's library directory and its ld.so.cache (as an image that bundled a driver library)."""
    cudart = build_c("libcudart.so.12", DLOPEN_CUDART_SRC, ["-shared", "-fPIC", "-Wl,-soname,libcudart.so.12"])
    app = build_c("cuda-dlopen-app", DLOPEN_APP_SRC, [f"-L{cudart.parent}", "-l:libcudart.so.12"])
    files = {f"{CUDA}/lib64/libcudart.so.12": cudart, "/opt/app/app": app,
             f"/usr/lib/{TRIPLET}/libcuda.so.{IMAGE_DRIVER}": build_cuda_stub(IMAGE_DRIVER, 12040)}
    links = {IMAGE_LIBCUDA: f"libcuda.so.{IMAGE_DRIVER}"}
    return make_image(root, files, links, {"libcudart.so.12": f"{CUDA}/lib64/libcudart.so.12",
                                           "libcuda.so.1": IMAGE_LIBCUDA})


@pytest.fixture(scope="module")
def world(world_dir: Path) -> dict[str, Path]:
    base = world_dir / "audit-gpu"
    if not (base / "conf" / "shim.toml").exists():
        gpu_host(base / "host")
        cuda_runtime_image(base / "runtime-image")
        dlopening_image(base / "dlopen-image")
        conf = cuda_conf(base / "conf", "always")
        (conf / "shim.toml").write_text("[launch]\nbinds = []\n")
        (base / "conf-none" / "profiles").mkdir(parents=True)
        (base / "conf-none" / "shim.toml").write_text("[launch]\nbinds = []\n")
        subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    return {name: base / name for name in ("host", "runtime-image", "dlopen-image", "conf", "conf-none")}


@pytest.fixture(scope="module")
def audited(shim):
    reason = audit_missing(shim)
    if reason:
        pytest.skip(reason)


def launch(shim, world, image: str, conf: str, *more: str, gpu: bool = True, cache: Path | None = None):
    env = {"SHIMRUN_HOST_ROOT": str(world["host"])} if gpu else {}
    if cache:
        env["SHIMRUN_CACHE"] = str(cache)
    return shim.run(["--conf", world[conf], "--report-loaded", *more, world[image], "/opt/app/app"], env=env)


def test_a_cuda_runtime_without_a_driver_library_on_a_gpu_node(shim, audited, world, user_dir):
    r = launch(shim, world, "runtime-image", "conf-none", cache=user_dir / "c1")
    assert r.returncode == 0, r.stderr
    (line,) = finding_lines(r.stderr, "GPU-UNUSED")
    assert line.startswith("shimrun: warning: GPU-UNUSED:") and "libcudart.so.12" in line, r.stderr
    assert not finding_lines(r.stderr, "GPU-DRIVER-STUB"), r.stderr
    # This node has no GPU: nothing to say about the same run.
    here = launch(shim, world, "runtime-image", "conf-none", gpu=False, cache=user_dir / "c2")
    assert here.returncode == 0, here.stderr
    assert not finding_lines(here.stderr, "GPU-UNUSED") and not finding_lines(here.stderr, "GPU-DRIVER-STUB")


def test_the_images_own_driver_library_on_a_gpu_node(shim, audited, world, user_dir):
    r = launch(shim, world, "dlopen-image", "conf-none", cache=user_dir / "c1")
    assert r.returncode == 0 and r.stdout == "runtime 12040 driver 12040\n", r.stdout + r.stderr  # the image's
    (line,) = finding_lines(r.stderr, "GPU-DRIVER-STUB")
    assert line.startswith("shimrun: warning: GPU-DRIVER-STUB:") and IMAGE_LIBCUDA in line, r.stderr
    assert not finding_lines(r.stderr, "GPU-UNUSED"), r.stderr
    quiet = launch(shim, world, "dlopen-image", "conf-none", "--quiet", cache=user_dir / "c1")
    assert quiet.returncode == 0 and not finding_lines(quiet.stderr, "GPU-DRIVER-STUB"), quiet.stderr


def test_the_hosts_driver_injected_is_what_loaded(shim, audited, world, user_dir):
    record = user_dir / "record.json"
    r = launch(shim, world, "dlopen-image", "conf", "--provenance", str(record), cache=user_dir / "c1")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "runtime 12040 driver 12020\n", r.stdout + r.stderr  # the node's stub driver answered
    doc = json.loads(record.read_text())
    (cuda,) = [e for e in loaded_objects(doc) if e["path"].rsplit("/", 1)[-1].startswith("libcuda.so.")]
    assert cuda["exe"] == "app" and cuda["pid"] > 0, cuda
    assert not finding_lines(r.stderr, "GPU-DRIVER-STUB"), r.stderr
    assert not finding_lines(r.stderr, "GPU-UNUSED"), r.stderr
    assert cuda["host"].endswith(("libcuda.so.1", f"libcuda.so.{DRIVER}")), cuda
    # the node's file, named as this machine sees it (under the simulated root) or as the node does
    host = Path(cuda["host"])
    host_file = host if host.is_relative_to(world["host"]) else world["host"] / cuda["host"].lstrip("/")
    assert cuda["sha256"] == hashlib.sha256(host_file.read_bytes()).hexdigest()
