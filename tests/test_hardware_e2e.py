"""Hardware diagnostics end to end, through `shimrun` as a normal user:

- real, on this GPU-less machine: an image built for CUDA gets GPU-ABSENT (NVML finds no driver),
  printed once before the app, which still runs; `check --json` carries it;
- SIMULATED nodes (tests/hostroot.py, named by SHIMRUN_HOST_ROOT): a GPU node with a new enough
  driver (no GPU warning), an old driver (CUDA-DRIVER-TOO-OLD), a vGPU, an rxe-only RDMA node
  (RDMA-SOFTWARE), a 1-of-64-cores job (CPU-STARVED); the site policy per code;
- real: the golden arm64/ppc64le busybox SIFs fail with ARCH-MISMATCH without an emulator, and
  with Debian's qemu-user-static registered in binfmt_misc (root only; unregistered after) they
  run, with ARCH-EMULATED.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import hostroot
import pytest

from shim.errors import ExitCode


def codes(plan: dict) -> dict[str, dict]:
    return {d["code"]: d for d in plan["diagnostics"]}


def check(shim, image: Path, env: dict[str, str] | None = None, cache: Path | None = None) -> dict:
    extra = {"SHIMRUN_CACHE": str(cache)} if cache else {}
    r = shim.run(["check", "--json", image, "/bin/sh"], env={**extra, **(env or {})})
    assert r.returncode in (0, ExitCode.REFUSED), r.stderr
    return json.loads(r.stdout)


# ---- real ----------------------------------------------------------------------------------------

@pytest.mark.skipif(os.path.exists("/proc/driver/nvidia/version"), reason="this node has an NVIDIA driver")
def test_cuda_image_on_this_gpu_less_node(shim, cuda_image, user_dir):
    plan = check(shim, cuda_image, cache=user_dir / "c1")
    gpu = codes(plan)["GPU-ABSENT"]
    assert gpu["severity"] == "warning" and "libcudart.so.12" in gpu["message"], gpu
    assert "no NVIDIA driver" in gpu["message"] or "no libnvidia-ml" in gpu["message"], gpu
    assert gpu["hint"] and gpu["admin_hint"]
    r = shim.run([cuda_image, "echo", "app ran"], env={"SHIMRUN_CACHE": str(user_dir / "c2")})
    assert r.returncode == 0 and r.stdout == "app ran\n"
    lines = [ln for ln in r.stderr.splitlines() if "GPU-ABSENT" in ln]
    assert len(lines) == 1 and lines[0].startswith("shimrun: warning: GPU-ABSENT:")
    # Warm: the same line from the cache, still before the app; --quiet silences it; --strict stops.
    again = shim.run([cuda_image, "echo", "app ran"], env={"SHIMRUN_CACHE": str(user_dir / "c2")})
    assert [ln for ln in again.stderr.splitlines() if "GPU-ABSENT" in ln] == lines
    quiet = shim.run(["--quiet", cuda_image, "echo", "x"], env={"SHIMRUN_CACHE": str(user_dir / "c2")})
    assert quiet.stderr == "" and quiet.stdout == "x\n"
    strict = shim.run(["--strict", cuda_image, "echo", "x"], env={"SHIMRUN_CACHE": str(user_dir / "c2")})
    assert strict.returncode == ExitCode.REFUSED and strict.stdout == ""


def test_hidden_by_cuda_visible_devices_is_its_own_cache_entry(shim, cuda_image, user_dir, world_dir):
    sim = hostroot.gpu_present(world_dir / "sim-gpu-hidden").root
    subprocess.run(["chmod", "-R", "a+rX", str(sim)], check=True)
    env = {"SHIMRUN_HOST_ROOT": str(sim)}
    assert "GPU-ABSENT" not in codes(check(shim, cuda_image, env, user_dir / "c"))
    hidden = codes(check(shim, cuda_image, {**env, "CUDA_VISIBLE_DEVICES": ""}, user_dir / "c"))["GPU-ABSENT"]
    assert "CUDA_VISIBLE_DEVICES" in hidden["message"]


# ---- simulated nodes ----------------------------------------------------------------------------

def simulated(world_dir: Path, name: str, make) -> dict[str, str]:
    root = world_dir / f"sim-{name}"
    if not root.exists():
        make(root)
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return {"SHIMRUN_HOST_ROOT": str(root)}


def test_simulated_gpu_node_with_a_new_enough_driver(shim, cuda_image, world_dir, user_dir):
    env = simulated(world_dir, "gpu-535", lambda r: hostroot.gpu_present(r, driver="535.104.05", cuda=12020))
    found = codes(check(shim, cuda_image, env, user_dir / "c"))
    assert not {"GPU-ABSENT", "CUDA-DRIVER-TOO-OLD"} & set(found), found


def test_simulated_gpu_node_with_an_old_driver(shim, cuda_image, world_dir, user_dir):
    env = simulated(world_dir, "gpu-470", lambda r: hostroot.gpu_present(r, driver="470.199.02", cuda=11040))
    old = codes(check(shim, cuda_image, env, user_dir / "c"))["CUDA-DRIVER-TOO-OLD"]
    assert old["severity"] == "error" and "470.199.02" in old["message"] and "12.2" in old["message"]
    r = shim.run([cuda_image, "echo", "x"], env={**env, "SHIMRUN_CACHE": str(user_dir / "c")})
    assert r.returncode == ExitCode.REFUSED and "error: CUDA-DRIVER-TOO-OLD" in r.stderr and r.stdout == ""


def test_simulated_vgpu_node(shim, cuda_image, world_dir, user_dir):
    env = simulated(world_dir, "vgpu", hostroot.gpu_vgpu)
    found = codes(check(shim, cuda_image, env, user_dir / "c"))
    assert found["GPU-VIRTUAL"]["severity"] == "info" and "vgpu" in found["GPU-VIRTUAL"]["message"].lower()
    assert "VIRTUALIZED" in found


def test_simulated_rxe_node_with_an_rdma_image(shim, world_dir, user_dir):
    import images

    image = images.build_sif(images.DEBIAN_MPICH)  # libibverbs + UCX with InfiniBand transports
    env = simulated(world_dir, "rxe", hostroot.rdma_rxe)
    soft = codes(check(shim, image, env, user_dir / "c"))["RDMA-SOFTWARE"]
    assert "rxe0" in soft["message"]
    env = simulated(world_dir, "mlx5", hostroot.rdma_mlx5_ib)
    assert not {"RDMA-SOFTWARE", "RDMA-ABSENT"} & set(codes(check(shim, image, env, user_dir / "c")))


def test_simulated_job_with_one_core_and_site_policy(shim, cuda_image, world_dir, user_dir):
    env = simulated(world_dir, "one-core", hostroot.one_cpu_of_64)
    starved = codes(check(shim, cuda_image, env, user_dir / "c"))["CPU-STARVED"]
    assert "1" in starved["message"] and "64" in starved["message"]
    conf = world_dir / "conf-policy"
    conf.mkdir(exist_ok=True)
    (conf / "shim.toml").write_text('[policy.codes]\nCPU-STARVED = "ignore"\nGPU-ABSENT = "error"\n')
    conf.chmod(0o755)
    (conf / "shim.toml").chmod(0o644)
    r = shim.run(["check", "--json", "--conf", conf, cuda_image], env={**env, "SHIMRUN_CACHE": str(user_dir / "c")})
    found = codes(json.loads(r.stdout))
    assert "CPU-STARVED" not in found and found["GPU-ABSENT"]["severity"] == "error"
    assert r.returncode == ExitCode.REFUSED


# ---- foreign architectures: real emulation --------------------------------------------------------

BINFMT = Path("/proc/sys/fs/binfmt_misc")
# binfmt_misc magic/mask strings of Debian's qemu-user-static (/usr/lib/binfmt.d/qemu-*.conf).
_ELF64LE = "\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00"
QEMU = {"arm64": ("aarch64", _ELF64LE + "\\xb7\\x00",
                  "\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff"),
        "ppc64le": ("ppc64le", _ELF64LE + "\\x15\\x00",
                    "\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfc\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\x00")}


@pytest.mark.parametrize("arch", ["arm64", "ppc64le"])
def test_foreign_image_without_emulator_is_arch_mismatch(shim, golden_copy, arch):
    if any(BINFMT.glob(f"qemu-{QEMU[arch][0]}*")):
        pytest.skip(f"an emulator for {arch} is registered on this machine")
    r = shim.run([golden_copy(f"apptainer/busybox_{arch}.sif"), "/bin/busybox", "echo", "hi"])
    assert r.returncode == ExitCode.ARCH, r.stderr
    (line,) = r.stderr.splitlines()
    assert "ARCH-MISMATCH" in line and arch in line and "amd64" in line and "no emulator" in line
    # `check` ends as the launch would: the same code
    r = shim.run(["check", golden_copy(f"apptainer/busybox_{arch}.sif"), "/bin/busybox"])
    assert r.returncode == ExitCode.ARCH and "error: ARCH-MISMATCH" in r.stdout + r.stderr, r.stdout + r.stderr


@pytest.fixture
def qemu_registered():
    """Debian's qemu-user-static registered for arm64 and ppc64le with the F flag (the
    interpreter is opened now, so it works inside containers); unregistered afterwards."""
    if os.getuid() != 0:
        pytest.skip("registering binfmt_misc entries needs root")
    if not Path("/usr/bin/qemu-aarch64-static").exists():
        pytest.skip("qemu-user-static is not installed (requirements-apt.txt lists it)")
    mounted_here = False
    if not (BINFMT / "register").exists():
        r = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True,
                           text=True, check=False)
        if r.returncode != 0:
            pytest.skip(f"binfmt_misc cannot be mounted here: {r.stderr.strip()}")
        mounted_here = True
    names = []
    try:
        for qarch, magic, mask in QEMU.values():
            name = f"qemu-{qarch}-shimtest"
            if not (BINFMT / name).exists():
                (BINFMT / "register").write_text(f":{name}:M::{magic}:{mask}:/usr/bin/qemu-{qarch}-static:F")
            names.append(name)
        yield names
    finally:
        for name in names:
            if (BINFMT / name).exists():
                (BINFMT / name).write_text("-1")
        if mounted_here:
            subprocess.run(["umount", str(BINFMT)], check=False)


@pytest.mark.parametrize("arch", ["arm64", "ppc64le"])
def test_foreign_image_runs_emulated_with_a_warning(shim, golden_copy, qemu_registered, arch, user_dir):
    image = golden_copy(f"apptainer/busybox_{arch}.sif")
    r = shim.run([image, "/bin/busybox", "echo", "hello from", arch], env={"SHIMRUN_CACHE": str(user_dir / "c")})
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"hello from {arch}\n"
    (line,) = [ln for ln in r.stderr.splitlines() if "ARCH-EMULATED" in ln]
    assert line.startswith("shimrun: warning: ARCH-EMULATED:") and f"qemu-{QEMU[arch][0]}" in line
