"""Host programs bound into a container get a library's ELF/ABI decisions (issue 26, item 3): a
profile's `binaries` and a CDI spec's mounts of programs, against a SIMULATED GPU node
(tests/hostroot.py, tests/simulated_gpu.py; tests/cdi_specs.py writes the node's spec). A host
program runs on the IMAGE's loader and glibc, so it can fail exactly as an injected library can.

The node's programs, built here with gcc (nothing is a real NVIDIA tool):
  nvidia-smi      a PIE linking libnvidia-ml.so.1 (the NVML stub: one of the profile's own
                  libraries), printing the driver's release: bound, and it runs
  nvidia-foreign  nvidia-smi for aarch64 (its ELF header's e_machine)    -> LIB-ARCH-MISMATCH
  nvidia-future   needs GLIBC_2.99 (linked against a stub libc.so.6 defining it, as a program
                  built on a newer distribution needs its glibc's versions) -> GLIBC-TOO-OLD
  nvidia-lonely   needs libprogdep.so.1, which neither the image nor the node has
                                                                          -> DEPENDENCY-MISSING
  nvidia-script   a shell script: no ELF program, bound as it is
Each refused one is absent in the container while the profile's libraries and the good program
are there; --strict makes a refusal fatal."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from cbuild import build_c
from cdi_specs import nvidia_spec, spec_dir, write_spec
from hostroot import SimulatedHost
from simulated_gpu import (
    DRIVER,
    EXAMPLES,
    PLAIN_APP_SRC,
    TRIPLET,
    cuda_runtime_image,
    gpu_host,
    make_image,
    plain_image,
    version_script,
)

from shim.cdi.edits import CdiRequest, cdi_profiles, profile_name
from shim.cdi.registry import load_registry
from shim.elf.facts import elf_facts
from shim.errors import ExitCode
from shim.host.gather import gather_host_view
from shim.model import INJECT, REFUSE, WARNING
from shim.plan.compose import plan_for_image
from shim.plan.model import Plan
from shim.plan.profiles import load_profiles
from shim.plan.request import PlanRequest
from shim.site.profile_model import ProfileSet

GPU = "nvidia.com/gpu"
REFUSED = {"nvidia-foreign": "LIB-ARCH-MISMATCH", "nvidia-future": "GLIBC-TOO-OLD",
           "nvidia-lonely": "DEPENDENCY-MISSING"}
PROGRAMS = ("nvidia-smi", *REFUSED, "nvidia-script")

SMI_SRC = """#include <stdio.h>
extern int nvmlInit_v2(void);
extern int nvmlSystemGetDriverVersion(char *version, unsigned int len);
int main(void) {
    char v[80];
    if (nvmlInit_v2() != 0 || nvmlSystemGetDriverVersion(v, sizeof v) != 0) return 1;
    printf("driver %s\\n", v);
    return 0;
}
"""


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHIMRUN_CACHE", str(tmp_path / "cache"))


def _future() -> Path:
    """A program needing GLIBC_2.99 of libc.so.6, as the real loader reads it (`version
    `GLIBC_2.99' not found`): linked against a stub C library defining that version."""
    script = version_script("GLIBC_2.34 { global: __libc_start_main; };\n"
                            "GLIBC_2.99 { global: shim_from_the_future; } GLIBC_2.34;\n")
    stub = build_c("libc.so.6", "int __libc_start_main(void) { return 0; }\nint shim_from_the_future(void) "
                   "{ return 0; }\n", ["-shared", "-fPIC", "-nostdlib", "-Wl,-soname,libc.so.6",
                                       f"-Wl,--version-script={script}"])
    return build_c("nvidia-future", "extern int shim_from_the_future(void);\n"
                   "int main(void) { return shim_from_the_future(); }\n", ["-nodefaultlibs", str(stub)])


def _programs(host: SimulatedHost) -> None:
    """The node's programs (module docstring) in /usr/bin of the simulated node."""
    # Linked against a stand-in of NVML's interface; it runs on the node's stub, injected.
    nvml = build_c("libnvidia-ml.so.1", "int nvmlInit_v2(void) { return 1; }\n"
                   "int nvmlSystemGetDriverVersion(char *v, unsigned int n) { return 1; }\n",
                   ["-shared", "-fPIC", "-Wl,-soname,libnvidia-ml.so.1"])
    smi = build_c("nvidia-smi", SMI_SRC, [str(nvml)])
    dep = build_c("libprogdep.so.1", "int progdep(void) { return 0; }\n",
                  ["-shared", "-fPIC", "-Wl,-soname,libprogdep.so.1"])
    lonely = build_c("nvidia-lonely", "extern int progdep(void);\nint main(void) { return progdep(); }\n", [str(dep)])
    foreign = bytearray(smi.read_bytes())
    foreign[18:20] = (183).to_bytes(2, "little")   # e_machine: EM_AARCH64
    bin_dir = host.path("usr/bin")
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name, built in (("nvidia-smi", smi), ("nvidia-future", _future()), ("nvidia-lonely", lonely)):
        shutil.copy(built, bin_dir / name)
    (bin_dir / "nvidia-foreign").write_bytes(bytes(foreign))
    (bin_dir / "nvidia-script").write_text("#!/bin/sh\necho script ran\n")
    for name in PROGRAMS:
        (bin_dir / name).chmod(0o755)


def gpu_node(root: Path) -> SimulatedHost:
    """gpu_host with the programs, and the spec `nvidia-ctk cdi generate` writes for it, which
    mounts every one of them (the generator mounts nvidia-smi; a site's spec the others)."""
    host = gpu_host(root)
    _programs(host)
    spec = nvidia_spec(host, DRIVER)
    mounts = spec["containerEdits"]["mounts"]
    mounts += [{"hostPath": f"/usr/bin/{p}", "containerPath": f"/usr/bin/{p}", "options": ["ro", "nosuid", "bind"]}
               for p in PROGRAMS if p != "nvidia-smi"]
    write_spec(spec_dir(host), spec, "nvidia.json")
    return host


def profile_conf(conf: Path, applies: str = "on-request") -> Path:
    """The shipped cuda-driver example, its binaries the node's programs."""
    text = (EXAMPLES / "cuda-driver.toml").read_text()
    assert 'binaries = ["/usr/bin/nvidia-smi"]' in text and 'applies = "on-request"' in text
    binaries = json.dumps([f"/usr/bin/{p}" for p in PROGRAMS])
    text = text.replace('binaries = ["/usr/bin/nvidia-smi"]', f"binaries = {binaries}")
    text = text.replace('applies = "on-request"', f'applies = "{applies}"')
    (conf / "profiles").mkdir(parents=True)
    (conf / "profiles" / "cuda-driver.toml").write_text(text)
    return conf


def profile_plan(image: Path, host: SimulatedHost, conf: Path, requested: tuple[str, ...] = ("cuda-driver",)) -> Plan:
    request = PlanRequest(root=str(image), image="test-image", profiles=load_profiles(conf, host_root=str(host.root)),
                          requested=requested, command=("/opt/app/app",), host=gather_host_view(str(host.root)))
    return plan_for_image(request, use_cache=False).plan


def cdi_plan(image: Path, host: SimulatedHost) -> Plan:
    resolved = load_registry(["/etc/cdi"], str(host.root)).resolve([f"{GPU}=all"], {})
    profiles = cdi_profiles(CdiRequest(resolved, str(host.root), elf_facts))
    request = PlanRequest(root=str(image), image="test-image", profiles=ProfileSet("cdi", profiles),
                          requested=tuple(p.name for p in profiles), command=("/opt/app/app",),
                          host=gather_host_view(str(host.root)))
    return plan_for_image(request, use_cache=False).plan


def program_decisions(p: Plan) -> dict[str, tuple[str, str, str]]:
    """Program name -> (decision, container path, reason)."""
    return {d.library: (d.decision, d.container_path, d.reason) for d in p.decisions if d.library in PROGRAMS}


def assert_programs_decided(p: Plan) -> None:
    """The story both ways of binding programs tell."""
    decided = program_decisions(p)
    assert set(decided) == {"nvidia-smi", *REFUSED}, decided   # the script gets no ELF decision
    decision, where, reason = decided["nvidia-smi"]
    assert (decision, where) == (INJECT, "/usr/bin/nvidia-smi"), decided
    assert "host program" in reason and "libnvidia-ml.so.1 found" in reason, reason
    for name, code in REFUSED.items():
        decision, _where, reason = decided[name]
        assert decision == REFUSE and reason.startswith(f"{code}: "), (name, reason)
    reasons = {n: decided[n][2] for n in REFUSED}
    assert "nvidia-foreign is 64-bit EM_AARCH64 little-endian" in reasons["nvidia-foreign"]
    assert "version `GLIBC_2.99' not found (required by nvidia-future" in reasons["nvidia-future"]
    assert "libprogdep.so.1 (needed by nvidia-lonely) is found neither in the container nor on the host" \
        in reasons["nvidia-lonely"]
    # One warning each, saying the program is not bound; the admin is sent to the entry.
    warned = {d.code: d for d in p.diagnostics if d.severity == WARNING and d.code in REFUSED.values()}
    assert set(warned) == set(REFUSED.values()), p.diagnostics
    assert all("is not bound into the container" in d.hint for d in warned.values())
    bound = {b.dst for b in p.binds}
    assert {"/usr/bin/nvidia-smi", "/usr/bin/nvidia-script"} <= bound, bound
    assert not bound & {f"/usr/bin/{n}" for n in REFUSED}, bound
    # The profile stands: its libraries are injected all the same.
    assert any(d.library == "libcuda.so.1" and d.decision == INJECT for d in p.decisions), p.decisions


# ------------------------------------------------------------------------------------------ planned

def test_profile_binaries_get_the_library_decisions(tmp_path: Path) -> None:
    host = gpu_node(tmp_path / "host")
    p = profile_plan(cuda_runtime_image(tmp_path / "image"), host, profile_conf(tmp_path / "conf"))
    assert_programs_decided(p)
    admin = {d.code: d.admin_hint for d in p.diagnostics if d.code in REFUSED.values()}
    wanted = "cuda-driver.toml: provides.binaries[1] (/usr/bin/nvidia-foreign)"
    assert admin["LIB-ARCH-MISMATCH"].endswith(wanted), admin


def test_cdi_mounted_programs_get_the_same_decisions(tmp_path: Path) -> None:
    host = gpu_node(tmp_path / "host")
    image = cuda_runtime_image(tmp_path / "image")
    by_cdi = cdi_plan(image, host)
    assert_programs_decided(by_cdi)
    by_profile = profile_plan(image, host, profile_conf(tmp_path / "conf"))
    admin = {d.code: d.admin_hint for d in by_cdi.diagnostics if d.code in REFUSED.values()}
    assert re.search(rf"nvidia\.json: containerEdits\.mounts\[\d+\] \({GPU}=all: /usr/bin/nvidia-future\)$",
                     admin["GLIBC-TOO-OLD"]), admin
    same = {n: (d, r.split(":")[0]) for n, (d, _w, r) in program_decisions(by_cdi).items()}
    assert same == {n: (d, r.split(":")[0]) for n, (d, _w, r) in program_decisions(by_profile).items()}


def test_cdi_program_is_bound_at_its_container_path(tmp_path: Path) -> None:
    host = gpu_host(tmp_path / "host")
    _programs(host)
    spec = nvidia_spec(host, DRIVER)
    for m in spec["containerEdits"]["mounts"]:
        if m["hostPath"] == "/usr/bin/nvidia-smi":
            m["containerPath"] = "/opt/vendor/bin/nvidia-smi"
    write_spec(spec_dir(host), spec, "nvidia.json")
    p = cdi_plan(cuda_runtime_image(tmp_path / "image"), host)
    assert program_decisions(p)["nvidia-smi"][:2] == (INJECT, "/opt/vendor/bin/nvidia-smi")
    smi = [b for b in p.binds if b.src == "/usr/bin/nvidia-smi"]
    assert [(b.dst, b.read_only) for b in smi] == [("/opt/vendor/bin/nvidia-smi", True)], p.binds


def test_a_program_brings_the_profile_library_it_needs(tmp_path: Path) -> None:
    """An image without CUDA, the profile applying on its own: its libraries are unused by the
    image, but nvidia-smi needs NVML, so NVML is injected with it (else it could not start)."""
    host = gpu_node(tmp_path / "host")
    p = profile_plan(plain_image(tmp_path / "image"), host, profile_conf(tmp_path / "conf", "always"), requested=())
    by_lib = {d.library: d for d in p.decisions}
    assert by_lib["nvidia-smi"].decision == INJECT, p.decisions
    nvml = by_lib["libnvidia-ml.so.1"]
    assert nvml.decision == INJECT and "needed by nvidia-smi" in nvml.reason, nvml
    assert by_lib["libcuda.so.1"].decision != INJECT, "the image uses no CUDA: libcuda stays out"


def _versioned_world(tmp_path: Path, image_version: str) -> tuple[Path, SimulatedHost, Path]:
    """A program needing PROGVER_2 of libprogver.so.1: the node's copy defines it, the image's
    copy defines `image_version`; a profile binding only the program."""
    def lib(version: str) -> Path:
        script = version_script(f"{version} {{ global: progver; }};\n")
        return build_c("libprogver.so.1.0", "int progver(void) { return 2; }\n",
                       ["-shared", "-fPIC", "-Wl,-soname,libprogver.so.1", f"-Wl,--version-script={script}"])
    host = gpu_host(tmp_path / "host")
    host._install_lib(lib("PROGVER_2"), "libprogver.so.1")
    program = build_c("progver", "extern int progver(void);\nint main(void) { return progver() != 2; }\n",
                      [str(lib("PROGVER_2"))])
    shutil.copy(program, host.path("usr/bin/progver"))
    where = f"/usr/lib/{TRIPLET}/libprogver.so.1"
    image = make_image(tmp_path / "image", {"/opt/app/app": build_c("plain-app", PLAIN_APP_SRC),
                                            where: lib(image_version)}, {}, {"libprogver.so.1": where})
    conf = tmp_path / "conf"
    (conf / "profiles").mkdir(parents=True)
    (conf / "profiles" / "tools.toml").write_text('[profile]\nname = "tools"\nkind = "other"\n'
                                                  'applies = "on-request"\n[provides]\n'
                                                  'binaries = ["/usr/bin/progver"]\n')
    return image, host, conf


@pytest.mark.parametrize("image_version", ["PROGVER_1", "PROGVER_2"])
def test_symbol_versions_the_image_lacks_bring_the_hosts_copy(tmp_path: Path, image_version: str) -> None:
    image, host, conf = _versioned_world(tmp_path, image_version)
    p = profile_plan(image, host, conf, requested=("tools",))
    by_lib = {d.library: d for d in p.decisions}
    assert by_lib["progver"].decision == INJECT, p.decisions
    if image_version == "PROGVER_2":   # the image's copy serves it
        assert "libprogver.so.1" not in by_lib, p.decisions
        return
    dep = by_lib["libprogver.so.1"]
    assert dep.decision == INJECT and "the image's libprogver.so.1 lacks a version progver needs" in dep.reason, dep
    assert dep.container_path == "/.shim/inject/tools/libprogver.so.1", dep


def test_a_refused_library_refuses_the_profile_and_its_programs(tmp_path: Path) -> None:
    """The profile as a whole refused (its driver libraries of another release than the loaded
    module): no program of it is bound either, the good one's decision says why."""
    host = gpu_node(tmp_path / "host").nvidia_module("550.54.15")
    p = profile_plan(cuda_runtime_image(tmp_path / "image"), host, profile_conf(tmp_path / "conf"))
    assert "CUDA-DRIVER-MISMATCH" in [d.code for d in p.diagnostics], p.diagnostics
    assert not any(b.dst.startswith("/usr/bin/") for b in p.binds), p.binds


# ------------------------------------------------------------------------------------------ launched

@pytest.fixture(scope="module")
def node(world_dir: Path) -> dict[str, Path]:
    base = world_dir / "host-programs"
    if not (base / "conf" / "shim.toml").exists():
        host = gpu_node(base / "host")
        image = cuda_runtime_image(base / "image")
        (image / "bin").mkdir()
        # this machine's dash (its glibc is the image's)
        shutil.copy2(os.path.realpath("/bin/sh"), image / "bin" / "sh")
        conf = profile_conf(base / "conf")
        (conf / "shim.toml").write_text("[launch]\nbinds = []\n")
        fatal = profile_conf(base / "conf-fatal")   # the site makes refusals errors
        (fatal / "shim.toml").write_text('[launch]\nbinds = []\n[policy]\nrefusal = "error"\n')
        subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
        assert host.root == base / "host"
    return {"host": base / "host", "image": base / "image", "conf": base / "conf", "fatal": base / "conf-fatal"}


SCRIPT = ("nvidia-smi; nvidia-script; for p in foreign future lonely; do "
          "[ -e /usr/bin/nvidia-$p ] && echo nvidia-$p is there; done; echo done")


def run(shim, node, *args: str, cache: Path):
    return shim.run(["--conf", node["conf"], *args], env={"SHIMRUN_HOST_ROOT": str(node["host"]),
                                                           "SHIMRUN_CACHE": str(cache)})


@pytest.mark.parametrize("how", ["profile", "cdi"])
def test_good_program_runs_refused_ones_are_absent(shim, node, user_dir: Path, how: str) -> None:
    select = ["--profile", "cuda-driver"] if how == "profile" else ["--device", f"{GPU}=all"]
    for attempt in ("planned", "from the record cache"):
        r = run(shim, node, *select, node["image"], "/bin/sh", "-c", SCRIPT, cache=user_dir / "c")
        assert r.returncode == 0, (attempt, r.stderr)
        assert r.stdout == f"driver {DRIVER}\nscript ran\ndone\n", (attempt, r.stdout, r.stderr)
        warned = [ln for ln in r.stderr.splitlines() if ln.startswith("shimrun: warning: ")]
        for name, code in REFUSED.items():
            (line,) = [ln for ln in warned if f"warning: {code}:" in ln]
            assert name in line and f"{name} is not bound into the container" in line, line


def test_check_json_shows_the_program_decisions(shim, node, user_dir: Path) -> None:
    r = run(shim, node, "check", "--json", "--device", f"{GPU}=all", node["image"], "/opt/app/app",
            cache=user_dir / "c")
    assert r.returncode == 0, r.stderr
    decisions = {d["library"]: d for d in json.loads(r.stdout)["decisions"]}
    assert decisions["nvidia-smi"]["decision"] == "inject"
    assert decisions["nvidia-smi"]["profile"] == profile_name(GPU)
    assert {n: decisions[n]["decision"] for n in REFUSED} == dict.fromkeys(REFUSED, "refuse")


def test_strict_or_the_site_policy_makes_a_refused_program_fatal(shim, node, user_dir: Path) -> None:
    r = run(shim, node, "--strict", "--profile", "cuda-driver", node["image"], "/bin/sh", "-c", "echo app ran",
            cache=user_dir / "c")
    assert r.returncode == ExitCode.REFUSED and "app ran" not in r.stdout, (r.returncode, r.stdout, r.stderr)
    # (the simulated node's older driver warns too: the refusals are what is named)
    assert "not starting the app: an injection was refused" in r.stderr, r.stderr
    policy = run(shim, {**node, "conf": node["fatal"]}, "--profile", "cuda-driver", node["image"], "/bin/sh", "-c",
                 "echo app ran", cache=user_dir / "c")
    assert policy.returncode == ExitCode.REFUSED and "app ran" not in policy.stdout, policy.stderr
    # each refusal is an error line naming its code, then the line saying the app was not started
    codes = re.findall(r"^shimrun: error: ([A-Z][A-Z0-9-]+):", policy.stderr, re.M)
    assert set(codes) == set(REFUSED.values()), policy.stderr


def test_a_bound_program_is_never_reported_unused(shim, node, user_dir: Path) -> None:
    """--report-loaded lists the injected libraries the app never loaded; a program the profile
    binds is run, not loaded, so it is never among them (the libraries still are)."""
    r = run(shim, node, "--report-loaded", "--profile", "cuda-driver", node["image"], "/bin/sh", "-c", "echo app ran",
            cache=user_dir / "c")
    assert r.returncode == 0 and r.stdout == "app ran\n", r.stderr
    unused = [ln for ln in r.stderr.splitlines() if "INJECTED-UNUSED" in ln]
    assert unused, r.stderr                      # the audit ran and named the unused libraries
    assert not any("nvidia-smi" in ln for ln in unused), unused
