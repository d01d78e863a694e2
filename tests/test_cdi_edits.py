"""CDI container edits through the planner, and NVIDIA's hooks interpreted, never run, against a
SIMULATED GPU node (tests/hostroot.py: gcc-built driver stubs, plain files standing in for
/dev/nvidia*; tests/cdi_specs.py writes the spec `nvidia-ctk cdi generate` would write for it).

- `--device nvidia.com/gpu=all` gets the same injection decisions as `--profile cuda-driver`;
  `=0`, a UUID and CUDA_VISIBLE_DEVICES select one device node;
- hooks: create-symlinks' links exist in the container (made in an underlay over the image's
  read-only directory), update-ldcache's folder is in the re-pointed ld.so.cache, an unknown hook
  is refused (exit 78) or, as the site allows, skipped with a warning, and a hook binary is never
  run (it would leave a marker);
- refusals: a device node missing on the node (exit 69), its major/minor not the spec's, a mounted
  library for another architecture or needing a newer glibc than the image's (the usual ABI
  refusals, never bound blindly)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cbuild import build_c
from cdi_specs import HOOK, gpu_uuid, nvidia_spec, spec_dir, write_spec
from hostroot import SimulatedHost
from simulated_gpu import DRIVER, TRIPLET, cuda_conf, cuda_runtime_image, gpu_host, version_script

from shim.cdi.edits import CdiRequest, cdi_profiles, check_node, profile_name
from shim.cdi.hooks import interpret
from shim.cdi.model import DeviceNode, Hook
from shim.cdi.registry import load_registry
from shim.elf.facts import elf_facts
from shim.elf.ldcache import read_ld_cache
from shim.errors import ExitCode, ShimError
from shim.host.gather import gather_host_view
from shim.model import INJECT, REFUSE
from shim.plan.compose import plan_for_image
from shim.plan.model import Plan
from shim.plan.profiles import load_profiles
from shim.plan.request import PlanRequest
from shim.site.profile_model import ProfileSet

GPU = "nvidia.com/gpu"
CDI = profile_name(GPU)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIMRUN_CACHE", str(tmp_path / "cache"))


def gpu_node(root: Path, count: int = 1, spec: dict | None = None) -> SimulatedHost:
    host = gpu_host(root)
    if count > 1:
        host.nvidia_dev_nodes(count)
    write_spec(spec_dir(host), spec or nvidia_spec(host, DRIVER), "nvidia.json")
    return host


def cdi_plan(image: Path, host: SimulatedHost, requests: list[str], environ: dict | None = None,
             unknown: str = "error", scratch: Path | None = None) -> Plan:
    resolved = load_registry(["/etc/cdi"], str(host.root)).resolve(requests, environ or {})
    profiles = cdi_profiles(CdiRequest(resolved, str(host.root), elf_facts, unknown))
    request = PlanRequest(root=str(image), image="test-image", profiles=ProfileSet("cdi", profiles),
                          requested=tuple(p.name for p in profiles), command=("/opt/app/app",),
                          host=gather_host_view(str(host.root)))
    entry = plan_for_image(request, use_cache=False)
    if scratch is not None and entry.ld_cache:
        (scratch / "ld.so.cache").write_bytes(entry.ld_cache)
    return entry.plan


def profile_plan(image: Path, host: SimulatedHost, conf: Path) -> Plan:
    request = PlanRequest(root=str(image), image="test-image", profiles=load_profiles(conf, host_root=str(host.root)),
                          requested=("cuda-driver",), command=("/opt/app/app",), host=gather_host_view(str(host.root)))
    return plan_for_image(request, use_cache=False).plan


def library_decisions(p: Plan, host: SimulatedHost) -> set[tuple[str, str, str]]:
    """(name, host file behind it, decision) of every library decision, hooks left out."""
    return {(d.library, os.path.realpath(host.path(d.host_path.lstrip("/"))), d.decision)
            for d in p.decisions if not d.library.startswith("hook ")}


# ------------------------------------------------------------------------------------------ planned

def test_all_gets_the_same_decisions_as_the_cuda_driver_profile(tmp_path: Path) -> None:
    host = gpu_node(tmp_path / "host")
    image = cuda_runtime_image(tmp_path / "image")
    by_profile = profile_plan(image, host, cuda_conf(tmp_path / "conf"))
    by_cdi = cdi_plan(image, host, [f"{GPU}=all"])
    assert library_decisions(by_cdi, host) == library_decisions(by_profile, host)
    assert {d.decision for d in by_cdi.decisions if not d.library.startswith("hook ")} == {INJECT}
    # Placed where the spec's containerPath says, the SONAME led there by the re-pointed cache.
    cuda = next(d for d in by_cdi.decisions if d.library == "libcuda.so.1")
    assert cuda.container_path == f"/usr/lib/{TRIPLET}/libcuda.so.{DRIVER}", cuda
    assert [e for e in by_cdi.env if e.name == "NVIDIA_VISIBLE_DEVICES"][0].value == "void"
    assert ("libcuda.so.1", f"/usr/lib/{TRIPLET}/libcuda.so") in by_cdi.links
    nodes = sorted(b.dst for b in by_cdi.binds if b.device)
    assert nodes == ["/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia0", "/dev/nvidiactl"], nodes


@pytest.mark.parametrize("how", ["index", "uuid", "CUDA_VISIBLE_DEVICES"])
def test_one_device_selects_one_device_node(tmp_path: Path, how: str) -> None:
    host = gpu_node(tmp_path / "host", count=2)
    image = cuda_runtime_image(tmp_path / "image")
    request, env = {"index": (f"{GPU}=1", {}), "uuid": (f"{GPU}={gpu_uuid(1)}", {}),
                    "CUDA_VISIBLE_DEVICES": (f"{GPU}=all", {"CUDA_VISIBLE_DEVICES": "1"})}[how]
    p = cdi_plan(image, host, [request], env)
    gpus = sorted(b.dst for b in p.binds if b.device and b.dst[len("/dev/nvidia"):].isdigit())
    assert gpus == ["/dev/nvidia1"], p.binds


def test_update_ldcache_folder_is_in_the_re_pointed_cache(tmp_path: Path) -> None:
    host = gpu_node(tmp_path / "host")
    p = cdi_plan(cuda_runtime_image(tmp_path / "image"), host, [f"{GPU}=all"], scratch=tmp_path)
    folder = f"/usr/lib/{TRIPLET}"
    cache = read_ld_cache(str(tmp_path / "ld.so.cache"))
    assert cache.lookup("libnvidia-ml.so.1") == f"{folder}/libnvidia-ml.so.{DRIVER}"
    assert any(d.library == "hook update-ldcache" and d.decision == INJECT and d.container_path == folder
               for d in p.decisions), p.decisions


def test_unknown_hook_refused_or_skipped_as_the_site_says(tmp_path: Path) -> None:
    odd = Hook("createContainer", "/usr/local/bin/vendor-hook", ("vendor-hook", "do-things"))
    with pytest.raises(ShimError) as e:
        interpret((odd,), "spec.json: device x")
    assert e.value.code == ExitCode.CONFIG and "unknown hook /usr/local/bin/vendor-hook" in str(e.value)
    assert "\n" not in str(e.value)
    sub = Hook("createContainer", HOOK, ("nvidia-cdi-hook", "update-ldcache", "--frobnicate", "x"))
    with pytest.raises(ShimError, match="unknown flag '--frobnicate'"):
        interpret((sub,), "spec.json: device x")
    skipped = interpret((odd,), "spec.json: device x", unknown="warn")
    assert skipped.warnings and not skipped.links and not skipped.notes[0].done


def test_device_node_missing_on_the_node_is_refused(tmp_path: Path) -> None:
    host = gpu_host(tmp_path / "host")
    spec = nvidia_spec(host, DRIVER)
    os.unlink(host.path("dev/nvidia0"))
    write_spec(spec_dir(host), spec, "nvidia.json")
    with pytest.raises(ShimError) as e:
        cdi_plan(cuda_runtime_image(tmp_path / "image"), host, [f"{GPU}=0"])
    assert e.value.code == ExitCode.HOST and "nvidia.com/gpu=0" in str(e.value) and "/dev/nvidia0" in str(e.value)


def test_device_node_of_other_numbers_is_refused() -> None:
    check_node(DeviceNode("/dev/null", major=1, minor=3), "/", "example.com/dev=null")
    with pytest.raises(ShimError) as e:
        check_node(DeviceNode("/dev/null", major=1, minor=5), "/", "example.com/dev=null")
    assert e.value.code == ExitCode.HOST and "1:3 on this node, the spec says 1:5" in str(e.value)


def _extra_library_spec(host: SimulatedHost, built: Path, name: str) -> dict:
    path = f"/usr/lib/{TRIPLET}/{name}"
    dst = host.path(path.lstrip("/"))
    dst.write_bytes(built.read_bytes())
    spec = nvidia_spec(host, DRIVER)
    spec["containerEdits"]["mounts"].append({"hostPath": path, "containerPath": path, "options": ["ro"]})
    return spec


def test_mounted_library_for_another_architecture_is_refused(tmp_path: Path) -> None:
    host = gpu_host(tmp_path / "host")
    built = build_c("libother.so.1", "int other(void) { return 1; }\n",
                    ["-shared", "-fPIC", "-Wl,-soname,libother.so.1"])
    data = bytearray(built.read_bytes())
    data[18:20] = (183).to_bytes(2, "little")   # e_machine: EM_AARCH64
    foreign = tmp_path / "libother.so.1"
    foreign.write_bytes(bytes(data))
    write_spec(spec_dir(host), _extra_library_spec(host, foreign, "libother.so.1"), "nvidia.json")
    p = cdi_plan(cuda_runtime_image(tmp_path / "image"), host, [f"{GPU}=all"])
    codes = [d.code for d in p.diagnostics]
    assert "LIB-ARCH-MISMATCH" in codes, p.diagnostics
    assert not any(b.dst.endswith("libother.so.1") for b in p.binds) and not p.links
    assert all(d.decision != INJECT for d in p.decisions), "a refused device set binds nothing"


def test_mounted_library_needing_a_newer_glibc_is_refused(tmp_path: Path) -> None:
    host = gpu_host(tmp_path / "host")
    image = cuda_runtime_image(tmp_path / "image")
    # The image's C library: one that defines only GLIBC_2.2.5 (an old distribution's, as planned).
    old = build_c("libc.so.6", "int old_libc(void) { return 0; }\n",
                  ["-shared", "-fPIC", "-nostdlib", "-Wl,-soname,libc.so.6",
                   f"-Wl,--version-script={version_script('GLIBC_2.2.5 { global: *; };')}"])
    libc = image / f"usr/lib/{TRIPLET}/libc.so.6"
    libc.unlink()
    libc.write_bytes(old.read_bytes())
    newer = build_c("libnewer.so.1", "#define _GNU_SOURCE\n#include <unistd.h>\n"
                    "int newer(void) { return close_range(3, 3, 0); }\n",
                    ["-shared", "-fPIC", "-Wl,-soname,libnewer.so.1"])
    write_spec(spec_dir(host), _extra_library_spec(host, newer, "libnewer.so.1"), "nvidia.json")
    p = cdi_plan(image, host, [f"{GPU}=all"])
    refused = [d for d in p.diagnostics if d.code == "GLIBC-TOO-OLD"]
    assert refused and "libnewer.so.1" in refused[0].message and "GLIBC_2.34" in refused[0].message, p.diagnostics
    assert any(d.decision == REFUSE for d in p.decisions)


# ------------------------------------------------------------------------------------------ launched

@pytest.fixture(scope="module")
def node(world_dir: Path) -> dict[str, Path]:
    """A simulated GPU node whose spec's hooks name a script that would leave a marker, if run."""
    base = world_dir / "cdi-edits"
    marker = base / "hook-ran"
    if not (base / "conf" / "shim.toml").exists():
        host = gpu_host(base / "host")
        hook = host.write("usr/bin/nvidia-cdi-hook", f"#!/bin/sh\ntouch {marker}\n")
        hook.chmod(0o755)
        write_spec(spec_dir(host), nvidia_spec(host, DRIVER), "nvidia.json")
        image = cuda_runtime_image(base / "image")
        (image / "bin").mkdir()
        # this machine's dash (its glibc is the image's)
        shutil.copy2(os.path.realpath("/bin/sh"), image / "bin" / "sh")
        (base / "conf").mkdir()
        (base / "conf" / "shim.toml").write_text("[launch]\nbinds = []\n")
        subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    return {"host": base / "host", "image": base / "image", "conf": base / "conf", "marker": marker}


def run(shim, node, *args: str, cache: Path):
    return shim.run(["--conf", node["conf"], *args], env={"SHIMRUN_HOST_ROOT": str(node["host"]),
                                                           "SHIMRUN_CACHE": str(cache)})


def test_hooks_done_by_shim_and_never_run(shim, node, user_dir: Path) -> None:
    lib = f"/usr/lib/{TRIPLET}"
    r = run(shim, node, "--device", f"{GPU}=all", node["image"], "/bin/sh", "-c",
            f"cd {lib} && [ -L libcuda.so ] && [ libcuda.so -ef libcuda.so.{DRIVER} ] && echo linked; "
            f"[ -f libcuda.so.{DRIVER} ] && echo placed; [ -e /dev/nvidia0 ] && echo node; "
            "echo $NVIDIA_VISIBLE_DEVICES", cache=user_dir / "c")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["linked", "placed", "node", "void"], (r.stdout, r.stderr)
    assert not node["marker"].exists(), "a spec's hook binary was run"


def test_check_shows_the_hook_decisions(shim, node, user_dir: Path) -> None:
    r = run(shim, node, "check", "--json", "--device", f"{GPU}=0", node["image"], "/opt/app/app",
            cache=user_dir / "c")
    assert r.returncode == 0, r.stderr
    decisions = json.loads(r.stdout)["decisions"]
    hooks = {d["library"]: d for d in decisions if d["library"].startswith("hook ")}
    assert set(hooks) == {"hook create-symlinks", "hook enable-cuda-compat", "hook update-ldcache",
                          "hook disable-device-node-modification"}, hooks
    assert hooks["hook create-symlinks"]["profile"] == CDI
    assert not node["marker"].exists()


def test_unknown_device_is_one_line(shim, node, user_dir: Path) -> None:
    r = run(shim, node, "--device", f"{GPU}=7", node["image"], "/bin/true", cache=user_dir / "c")
    assert r.returncode == ExitCode.USAGE, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and f"{GPU}=7" in r.stderr, r.stderr


def test_nv_takes_the_nodes_spec(shim, node, user_dir: Path) -> None:
    """--nv on a node whose specs define nvidia.com/gpu: the spec's edits (no GPU profile needed)."""
    r = run(shim, node, "--nv", node["image"], "/bin/sh", "-c",
            f"[ -L /usr/lib/{TRIPLET}/libcuda.so ] && [ -e /dev/nvidia0 ] && echo $NVIDIA_VISIBLE_DEVICES",
            cache=user_dir / "c")
    assert (r.returncode, r.stdout.strip()) == (0, "void"), r.stderr
    assert not node["marker"].exists()
