"""Run on the lent GPU machine: host facts through NVML, and the hardware diagnostics for three
CUDA images built here as directories (CUDA 12.2, 13.0, and 13.2: newer than this driver)."""
import json
import os
import shutil
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
    # A userland like a CUDA base image's: this machine's glibc and /bin/sh, indexed in ld.so.cache.
    entries = [CacheEntry(0x0303, f"libcudart.so.{major}", f"/usr/local/cuda-{short}/lib64/libcudart.so.{major}")]
    os.makedirs(os.path.join(root, "lib/x86_64-linux-gnu"))
    os.makedirs(os.path.join(root, "lib64"))
    os.makedirs(os.path.join(root, "bin"))
    for name in ("libc.so.6", "libm.so.6", "librt.so.1", "libdl.so.2", "libpthread.so.0", "libgcc_s.so.1"):
        host = os.path.realpath(f"/lib/x86_64-linux-gnu/{name}")
        if os.path.exists(host):
            shutil.copy(host, os.path.join(root, "lib/x86_64-linux-gnu", name))
            entries.append(CacheEntry(0x0303, name, f"/lib/x86_64-linux-gnu/{name}"))
    shutil.copy(os.path.realpath("/lib64/ld-linux-x86-64.so.2"), os.path.join(root, "lib64/ld-linux-x86-64.so.2"))
    entries.append(CacheEntry(0x0303, "ld-linux-x86-64.so.2", "/lib64/ld-linux-x86-64.so.2"))
    shutil.copy(os.path.realpath("/bin/sh"), os.path.join(root, "bin/sh"))
    Path(root, "etc/ld.so.cache").write_bytes(write_ld_cache(entries))
    expect = scan_image(root, arch="amd64")
    print(f"IMAGE CUDA {ver}: runtime={expect.cuda_runtime and expect.cuda_runtime.version} env={expect.cuda_version}")
    for d in hardware_diagnostics(expect, facts, "amd64", os.environ):
        print(f"  {d.severity}: {d.code}: {d.message}")

# The cuda-driver example profile, planned against this node for the CUDA 12.2 image.
from shim.host.gather import gather_host_view  # noqa: E402
from shim.plan.compose import plan_for_image  # noqa: E402
from shim.plan.profiles import load_profiles  # noqa: E402
from shim.plan.request import PlanRequest  # noqa: E402

conf = os.path.join(work, "conf")
os.makedirs(os.path.join(conf, "profiles"))
Path(conf, "shim.toml").write_text("")
shutil.copy(os.path.join(os.getcwd(), "conf/profiles/examples/cuda-driver.toml"), os.path.join(conf, "profiles"))
profiles = load_profiles(conf)
for p in profiles.profiles:
    print("PROFILE", p.name, "available" if p.available else f"unavailable: {p.why_unavailable()}")
image = os.path.join(work, "img-12.2.140")
if not profiles.profiles[0].available:
    sys.exit(0)
plan = plan_for_image(PlanRequest(root=image, image=image, profiles=profiles, requested=("cuda-driver",),
                                  host=gather_host_view("/")), use_cache=False).plan
for d in plan.decisions:
    print(f"  {d.decision}: {d.library}: {d.host_path} -> {d.container_path or '-'} ({d.reason})")
for d in plan.diagnostics:
    print(f"  {d.severity}: {d.code}: {d.message}")
