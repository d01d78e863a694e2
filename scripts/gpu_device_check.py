"""Run on the lent GPU machine: host facts through NVML, and the hardware diagnostics for three
CUDA images built here as directories (CUDA 12.2, 13.0, and 13.2: newer than this driver)."""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Beside it (on the GPU machine): copies of pyelftools and pynvml when the Python there lacks them.
sys.path.insert(0, os.path.join(os.getcwd(), "devcheck"))
sys.path.insert(1, os.getcwd())

from shim.diagnose.hardware import hardware_diagnostics  # noqa: E402
from shim.elf.ldcache import CacheEntry  # noqa: E402
from shim.elf.ldcache_write import write_ld_cache  # noqa: E402
from shim.expect.scan import scan_image  # noqa: E402
from shim.host.gather import gather_host_facts  # noqa: E402

facts = gather_host_facts("/")
print("HOST", json.dumps(facts.gpu.__dict__ if hasattr(facts.gpu, "__dict__") else str(facts.gpu), default=str))
print("CPU", facts.cpu, facts.cpus, "hypervisor", facts.hypervisor)
work = tempfile.mkdtemp()
src = os.path.join(work, "c.c")
Path(src).write_text("int cudaRuntimeGetVersion(int *v) { *v = 0; return 0; }\n")
for ver in ("12.2.140", "13.0.48", "13.2.10"):
    major = ver.split(".")[0]
    root = os.path.join(work, f"img-{ver}")
    lib = os.path.join(root, f"usr/local/cuda-{'.'.join(ver.split('.')[:2])}/lib64")
    os.makedirs(lib)
    subprocess.run(["gcc", "-shared", "-fPIC", f"-Wl,-soname,libcudart.so.{major}", "-o",
                    os.path.join(lib, f"libcudart.so.{ver}"), src], check=True)
    os.symlink(f"libcudart.so.{ver}", os.path.join(lib, f"libcudart.so.{major}"))
    os.makedirs(os.path.join(root, ".singularity.d/env"))
    short = ".".join(ver.split(".")[:2])
    Path(root, ".singularity.d/env/10-docker2singularity.sh").write_text(f"export CUDA_VERSION={short}.0\n")
    os.makedirs(os.path.join(root, "etc"))
    Path(root, "etc/ld.so.cache").write_bytes(write_ld_cache([
        CacheEntry(0x0303, f"libcudart.so.{major}", f"/usr/local/cuda-{short}/lib64/libcudart.so.{major}")]))
    expect = scan_image(root, arch="amd64")
    print(f"IMAGE CUDA {ver}: runtime={expect.cuda_runtime and expect.cuda_runtime.version} env={expect.cuda_version}")
    for d in hardware_diagnostics(expect, facts, "amd64", os.environ):
        print(f"  {d.severity}: {d.code}: {d.message}")
