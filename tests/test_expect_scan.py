"""shim.expect: scan_image on fake image roots built in tmp_path, laid out as distributions and
NVIDIA's CUDA images lay them out, with libraries built here by gcc carrying real SONAMEs, an
/etc/ld.so.cache written by shim's writer, environment scripts, labels.json and a declaration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cbuild import build_c

from shim.elf.facts import elf_facts
from shim.elf.layout import FLAG_ELF_LIBC6, FLAG_X8664_LIB64
from shim.elf.ldcache import CacheEntry
from shim.elf.ldcache_write import write_ld_cache
from shim.expect.envscripts import parse_env_script
from shim.expect.libs import version_of
from shim.expect.model import Requirement
from shim.expect.requires import parse_requires
from shim.expect.scan import scan_image

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64" or not shutil.which("gcc"),
                                reason="needs gcc on x86_64")

X86_64 = FLAG_X8664_LIB64 | FLAG_ELF_LIBC6
TRIPLET = "/usr/lib/x86_64-linux-gnu"
CUDA_LIB = "/usr/local/cuda-12.2/targets/x86_64-linux/lib"
REQUIRE_CUDA = ("cuda>=12.2 brand=tesla,driver>=470,driver<471 brand=unknown,driver>=470,driver<471 "
                "brand=nvidia,driver>=470,driver<471")


def shared(real_name: str, soname: str, extra: tuple[str, ...] = ()) -> Path:
    """A real shared library named `real_name` whose DT_SONAME is `soname` (cached build)."""
    sym = "".join(c if c.isalnum() else "_" for c in real_name)
    return build_c(real_name, f"int {sym}(void) {{ return 1; }}\n",
                   ["-shared", "-fPIC", f"-Wl,-soname,{soname}", *extra])


def place(root: Path, path: str, built: Path, links: tuple[str, ...] = ()) -> None:
    """Copy `built` to root/path and add relative symlinks (in the same directory) to it."""
    dst = root / path.lstrip("/")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(built, dst)  # with its mode: programs are found as execvp finds them
    for link in links:
        (dst.parent / link).symlink_to(dst.name)


def write(root: Path, path: str, text: str) -> None:
    dst = root / path.lstrip("/")
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(text)


def ld_cache(root: Path, entries: dict[str, str]) -> None:
    data = write_ld_cache([CacheEntry(X86_64, k, v) for k, v in entries.items()])
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc/ld.so.cache").write_bytes(data)


@pytest.fixture(scope="module")
def vec_lib() -> Path:
    return shared("libvec.so", "libvec.so.1", ("-Wl,-z,x86-64-v4",))


@pytest.fixture(scope="module")
def app_v3(vec_lib: Path) -> Path:
    return build_c("app", "int libvec_so(void);\nint main(void) { return libvec_so() - 1; }\n",
                   ["-Wl,-z,x86-64-v3", f"-L{vec_lib.parent}", "-lvec"])


@pytest.fixture(scope="module")
def app_baseline() -> Path:
    # ld 2.40 aborts on -z x86-64-baseline (an internal error); gcc's -mneeded marks the baseline.
    return build_c("plain", "int main(void) { return 0; }\n", ["-mneeded"])


def test_gcc_marks_isa_levels(vec_lib: Path, app_v3: Path, app_baseline: Path) -> None:
    # The premise of the ISA tests: this gcc/ld writes the x86 ISA-needed property note.
    assert elf_facts(vec_lib).isa_level == 4
    assert elf_facts(app_v3).isa_level == 3
    assert elf_facts(app_baseline).isa_level == 1
    assert elf_facts(app_v3).needed[0] == "libvec.so.1"


@pytest.fixture
def cuda_root(tmp_path: Path, vec_lib: Path, app_v3: Path, app_baseline: Path) -> Path:
    """An NGC-like CUDA 12.2 image with an RDMA/UCX stack, OpenMP, a v3 app and a v4 library."""
    root = tmp_path / "root"
    # CUDA as NVIDIA's packages lay it out: cuda -> cuda-12.2, lib64 -> targets/x86_64-linux/lib
    place(root, f"{CUDA_LIB}/libcudart.so.12.2.140", shared("libcudart.so.12.2.140", "libcudart.so.12"),
          ("libcudart.so.12", "libcudart.so"))
    place(root, f"{CUDA_LIB}/stubs/libcuda.so", shared("libcuda.so", "libcuda.so.1"))
    place(root, "/usr/local/cuda-12.2/compat/libcuda.so.535.104.05", shared("libcuda.so.535.104.05", "libcuda.so.1"),
          ("libcuda.so.1", "libcuda.so"))
    (root / "usr/local/cuda-12.2/lib64").symlink_to("targets/x86_64-linux/lib")
    (root / "usr/local/cuda").symlink_to("cuda-12.2")
    # Distribution libraries in the multiarch directory
    place(root, f"{TRIPLET}/libnccl.so.2.18.3", shared("libnccl.so.2.18.3", "libnccl.so.2"), ("libnccl.so.2",))
    place(root, f"{TRIPLET}/libibverbs.so.1.14.50.0", shared("libibverbs.so.1.14.50.0", "libibverbs.so.1"),
          ("libibverbs.so.1",))
    place(root, f"{TRIPLET}/libibverbs/libmlx5-rdmav34.so", shared("libmlx5-rdmav34.so", "libmlx5.so.1"))
    place(root, f"{TRIPLET}/libibverbs/librxe-rdmav34.so", shared("librxe-rdmav34.so", "librxe.so.1"))
    place(root, f"{TRIPLET}/librdmacm.so.1.3.50.0", shared("librdmacm.so.1.3.50.0", "librdmacm.so.1"),
          ("librdmacm.so.1",))
    place(root, f"{TRIPLET}/libgomp.so.1.0.0", shared("libgomp.so.1.0.0", "libgomp.so.1"), ("libgomp.so.1",))
    place(root, f"{TRIPLET}/libvec.so.1", vec_lib)
    (root / TRIPLET.lstrip("/") / "glibc-hwcaps/x86-64-v3").mkdir(parents=True)
    # UCX from HPC-X, reachable only through the image's LD_LIBRARY_PATH
    place(root, "/opt/hpcx/ucx/lib/libucp.so.0.0.0", shared("libucp.so.0.0.0", "libucp.so.0"), ("libucp.so.0",))
    place(root, "/opt/hpcx/ucx/lib/ucx/libuct_ib.so.0.0.0", shared("libuct_ib.so.0.0.0", "libuct_ib.so.0"),
          ("libuct_ib.so.0",))
    place(root, "/opt/hpcx/ucx/lib/ucx/libuct_cma.so.0.0.0", shared("libuct_cma.so.0.0.0", "libuct_cma.so.0"))
    place(root, "/usr/bin/app", app_v3)
    place(root, "/usr/bin/plain", app_baseline)
    # Only some libraries are in the cache (the rest must be found in the directories).
    ld_cache(root, {
        "libcudart.so.12": "/usr/local/cuda/targets/x86_64-linux/lib/libcudart.so.12",
        "libibverbs.so.1": f"{TRIPLET}/libibverbs.so.1",
        "librdmacm.so.1": f"{TRIPLET}/librdmacm.so.1",
        "libgomp.so.1": f"{TRIPLET}/libgomp.so.1",
        "libvec.so.1": f"{TRIPLET}/libvec.so.1",
    })
    write(root, "/.singularity.d/env/10-docker2singularity.sh", (
        "#!/bin/sh\n"
        'export PATH="/usr/local/nvidia/bin:/usr/local/cuda/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"\n'
        f'export NVIDIA_REQUIRE_CUDA="${{NVIDIA_REQUIRE_CUDA:-"{REQUIRE_CUDA}"}}"\n'
        'export CUDA_VERSION="${CUDA_VERSION:-"12.2.0"}"\n'
        'export NVIDIA_VISIBLE_DEVICES="${NVIDIA_VISIBLE_DEVICES:-"all"}"\n'))
    write(root, "/.singularity.d/env/90-environment.sh", (
        "#!/bin/sh\n# custom environment\n"
        "export LD_LIBRARY_PATH=/opt/hpcx/ucx/lib:${LD_LIBRARY_PATH}\n"
        "OMP_NUM_THREADS=8\nexport OMP_NUM_THREADS\n"))
    write(root, "/.singularity.d/labels.json", json.dumps({
        "shim.requires": "gpu.cuda>=12.2, net.rdma", "com.nvidia.cuda.version": "12.2.2",
        "org.opencontainers.image.version": "22.04"}))
    write(root, "/.shim/requires", "# what this image needs\ncpu.x86-64-v3\ncpu.cores >= 4, gpu.quantum\n")
    return root


def test_cuda_runtime_from_the_cache_with_its_full_version(cuda_root: Path) -> None:
    e = scan_image(str(cuda_root), arch="amd64")
    assert e.cuda_runtime is not None
    assert e.cuda_runtime.soname == "libcudart.so.12"
    assert e.cuda_runtime.path == "/usr/local/cuda/targets/x86_64-linux/lib/libcudart.so.12"
    assert e.cuda_runtime.real_path == f"{CUDA_LIB}/libcudart.so.12.2.140"
    assert e.cuda_runtime.version == "12.2.140"
    json.dumps(e.to_dict())  # plain data for --json


def test_cuda_runtime_found_in_cuda_dirs_without_a_cache(cuda_root: Path) -> None:
    (cuda_root / "etc/ld.so.cache").unlink()
    e = scan_image(str(cuda_root), arch="amd64")
    assert e.cuda_runtime is not None and e.cuda_runtime.version == "12.2.140"
    assert e.cuda_runtime.path.startswith("/usr/local/cuda")
    # libraries the cache named are still found in the default directories
    assert e.verbs is not None and e.verbs.real_path == f"{TRIPLET}/libibverbs.so.1.14.50.0"


def test_corrupt_cache_falls_back_to_directories(cuda_root: Path) -> None:
    (cuda_root / "etc/ld.so.cache").write_bytes(b"glibc-ld.so.cache1.1" + b"\xff" * 30)
    e = scan_image(str(cuda_root), arch="amd64")
    assert e.cuda_runtime is not None and e.cuda_runtime.version == "12.2.140"


def test_environment_and_labels(cuda_root: Path) -> None:
    e = scan_image(str(cuda_root), arch="amd64", labels={"com.nvidia.cuda.version": "12.2.1"})
    assert e.cuda_version == "12.2.0"
    assert e.nvidia_require == {"NVIDIA_REQUIRE_CUDA": REQUIRE_CUDA}
    assert not e.nvidia_disable_require
    assert e.env["OMP_NUM_THREADS"] == "8"
    assert e.env["LD_LIBRARY_PATH"] == "/opt/hpcx/ucx/lib:"
    # labels given by the caller win over labels.json
    assert e.cuda_version_label == "12.2.1"
    assert e.labels["org.opencontainers.image.version"] == "22.04"


def test_environ_scripts_argument_limits_what_is_read(cuda_root: Path) -> None:
    e = scan_image(str(cuda_root), arch="amd64", environ_scripts=["/.singularity.d/env/90-environment.sh"])
    assert e.cuda_version is None and e.nvidia_require == {}
    assert e.env["OMP_NUM_THREADS"] == "8"


def test_declaration_from_label_and_file(cuda_root: Path) -> None:
    e = scan_image(str(cuda_root), arch="amd64")
    assert e.requires_source == ("label shim.requires", "/.shim/requires")
    assert [(r.name, r.op, r.value) for r in e.requires] == [
        ("gpu.cuda", ">=", "12.2"), ("net.rdma", None, None), ("cpu.x86-64", ">=", "3"), ("cpu.cores", ">=", "4")]
    [bad] = e.diagnostics
    assert bad.code == "IMAGE-REQUIRES-INVALID" and bad.severity == "warning"
    assert "'gpu.quantum'" in bad.message and "/.shim/requires" in bad.message
    assert e.cuda_evidence == "it declares 'gpu.cuda>=12.2'"


def test_nccl_stubs_and_forward_compat(cuda_root: Path) -> None:
    e = scan_image(str(cuda_root), arch="amd64")
    assert e.nccl is not None and e.nccl.version == "2.18.3" and e.nccl.path == f"{TRIPLET}/libnccl.so.2"
    # cuda -> cuda-12.2 and lib64 -> targets/x86_64-linux/lib: one file under four names, listed once
    assert e.cuda_stubs == ("/usr/local/cuda/lib64/stubs/libcuda.so",)
    assert e.cuda_stub_in_path is None
    [compat] = e.cuda_compat
    assert compat.version == "535.104.05"
    assert compat.path == "/usr/local/cuda-12.2/compat/libcuda.so.535.104.05"
    assert not compat.in_path


def test_compat_and_stub_on_the_library_path(cuda_root: Path) -> None:
    (cuda_root / CUDA_LIB.lstrip("/") / "stubs/libcuda.so.1").symlink_to("libcuda.so")
    write(cuda_root, "/.singularity.d/env/95-paths.sh",
          "export LD_LIBRARY_PATH=/usr/local/cuda/compat:/usr/local/cuda/lib64/stubs:$LD_LIBRARY_PATH\n")
    e = scan_image(str(cuda_root), arch="amd64")
    assert e.cuda_compat[0].in_path
    assert e.cuda_stub_in_path == "/usr/local/cuda/lib64/stubs/libcuda.so.1"


def test_stub_in_the_cache(cuda_root: Path) -> None:
    ld_cache(cuda_root, {"libcuda.so.1": "/usr/local/cuda/lib64/stubs/libcuda.so"})
    e = scan_image(str(cuda_root), arch="amd64")
    assert e.cuda_stub_in_path == "/usr/local/cuda/lib64/stubs/libcuda.so"


def test_rdma_stack(cuda_root: Path) -> None:
    e = scan_image(str(cuda_root), arch="amd64")
    assert e.verbs is not None and e.verbs.version == "1.14.50.0"
    assert sorted((p.name, p.abi) for p in e.verbs_providers) == [("mlx5", 34), ("rxe", 34)]
    assert e.verbs_providers[0].path.startswith(f"{TRIPLET}/libibverbs/")
    assert e.rdmacm is not None and e.rdmacm.soname == "librdmacm.so.1"
    assert e.ucx is not None and e.ucx.path == "/opt/hpcx/ucx/lib/libucp.so.0"
    assert set(e.ucx_modules) == {"uct_ib", "uct_cma"} and e.ucx_rdma
    assert e.libfabric is None
    assert e.rdma_evidence == "it declares 'net.rdma'"  # the declaration is named first
    (cuda_root / ".singularity.d/labels.json").unlink()
    e = scan_image(str(cuda_root), arch="amd64")
    assert e.rdma_evidence == "it has libibverbs (mlx5, rxe) and UCX with InfiniBand transports"


def test_ucx_without_rdma_transports(cuda_root: Path) -> None:
    for f in (cuda_root / "opt/hpcx/ucx/lib/ucx").glob("libuct_ib*"):
        f.unlink()
    e = scan_image(str(cuda_root), arch="amd64")
    assert e.ucx_modules == ("uct_cma",) and not e.ucx_rdma


def test_pip_wheel_layout(tmp_path: Path) -> None:
    # PyTorch's wheels: the CUDA runtime and NCCL in site-packages, found through RPATH, not the cache
    root = tmp_path / "torch"
    site = "/usr/local/lib/python3.10/dist-packages/nvidia"
    place(root, f"{site}/cuda_runtime/lib/libcudart.so.12", shared("libcudart.so.12", "libcudart.so.12"))
    place(root, f"{site}/nccl/lib/libnccl.so.2", shared("libnccl.so.2", "libnccl.so.2"))
    e = scan_image(str(root), arch="amd64")
    assert e.cuda_runtime is not None and e.cuda_runtime.path == f"{site}/cuda_runtime/lib/libcudart.so.12"
    assert e.cuda_runtime.version == "12"  # the major only: that is all the file name says
    assert e.nccl is not None and e.nccl.path == f"{site}/nccl/lib/libnccl.so.2"


def test_libfabric_and_its_providers(tmp_path: Path) -> None:
    root = tmp_path / "efa"
    place(root, "/opt/amazon/efa/lib/libfabric.so.1.22.0", shared("libfabric.so.1.22.0", "libfabric.so.1"),
          ("libfabric.so.1",))
    place(root, "/opt/amazon/efa/lib/libfabric/libefa-fi.so", shared("libefa-fi.so", "libefa-fi.so"))
    e = scan_image(str(root), arch="amd64")
    assert e.libfabric is not None and e.libfabric.version == "1.22.0"
    assert e.libfabric_providers == ("efa",)
    assert e.rdma_evidence == "it has libfabric"


def test_openmp_runtimes_are_found_once(cuda_root: Path) -> None:
    place(cuda_root, f"{TRIPLET}/libomp.so.5", shared("libomp.so.5", "libomp.so.5"), ("libomp.so",))
    e = scan_image(str(cuda_root), arch="amd64")
    assert [lib.soname for lib in e.openmp] == ["libgomp.so.1", "libomp.so.5"]


def test_isa_level_of_app_and_its_direct_libraries(cuda_root: Path) -> None:
    e = scan_image(str(cuda_root), app="app", arch="amd64")  # found through the image's PATH
    assert e.app == "/usr/bin/app"
    assert e.app_isa_level == 3
    assert e.isa_level == 4 and e.isa_binary == f"{TRIPLET}/libvec.so.1"
    assert e.isa_checked == ("/usr/bin/app", f"{TRIPLET}/libvec.so.1")
    assert e.hwcaps_dirs == (f"{TRIPLET}/glibc-hwcaps/x86-64-v3",)


def test_baseline_app(cuda_root: Path) -> None:
    e = scan_image(str(cuda_root), app="/usr/bin/plain", arch="amd64")
    assert (e.app, e.app_isa_level, e.isa_level, e.isa_binary) == ("/usr/bin/plain", 1, 1, "/usr/bin/plain")


def test_no_app_means_no_isa_and_no_elf_parsing(cuda_root: Path) -> None:
    e = scan_image(str(cuda_root), arch="amd64")
    assert e.app is None and e.isa_level is None and e.isa_checked == ()
    e = scan_image(str(cuda_root), app="/usr/bin/missing", arch="amd64")
    assert e.app is None and e.isa_level is None
    code = ("import sys; from shim.expect.scan import scan_image; "
            f"e = scan_image({str(cuda_root)!r}); assert e.cuda_runtime; print('elftools' in sys.modules)")
    out = subprocess.run([sys.executable, "-P", "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "False"


def test_rocm(tmp_path: Path) -> None:
    root = tmp_path / "rocm"
    lib = "/opt/rocm-6.1.0/lib"
    place(root, f"{lib}/libamdhip64.so.6.1.60100", shared("libamdhip64.so.6.1.60100", "libamdhip64.so.6"),
          ("libamdhip64.so.6", "libamdhip64.so"))
    place(root, f"{lib}/libamdhip64.so.5.7.31921", shared("libamdhip64.so.5.7.31921", "libamdhip64.so.5"),
          ("libamdhip64.so.5",))
    (root / "opt/rocm").symlink_to("rocm-6.1.0")
    e = scan_image(str(root), arch="amd64")
    assert e.rocm is not None and e.rocm.soname == "libamdhip64.so.6" and e.rocm.version == "6.1.60100"
    assert e.cuda_runtime is None and e.cuda_evidence is None


def test_empty_and_hostile_roots(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    e = scan_image(str(root))
    assert (e.cuda_runtime, e.verbs, e.ucx, e.rocm, e.requires, e.diagnostics) == (None, None, None, None, (), ())
    assert e.cuda_evidence is None and e.rdma_evidence is None
    # links that point out of the root stay inside it; labels.json that is not an object is ignored
    (root / "usr/local").mkdir(parents=True)
    (root / "usr/local/cuda").symlink_to("/../../../../../usr/local/cuda")
    (root / "usr/lib").mkdir(parents=True)
    (root / "usr/lib/libcudart.so.12").symlink_to("/../../../etc/passwd")
    write(root, "/.singularity.d/labels.json", "[1, 2]")
    e = scan_image(str(root))
    assert e.cuda_runtime is None and e.labels == {}


# ---- the parsers ----

def test_env_script_forms() -> None:
    env = parse_env_script(
        "export A=1\n"
        "B='two words'  # comment\n"
        'export C="${C:-"x y"}"\n'
        'D="$A:${B}:${UNSET:-dflt}:$UNSET"\n'
        "export E\n"
        "F=\"unbalanced\n"
        'export A="${A:-"ignored: A was set before"}"\n',
        {"KEEP": "k"})
    assert env == {"KEEP": "k", "A": "1", "B": "two words", "C": "x y", "D": "1:two words:dflt:",
                   "F": '"unbalanced'}


@pytest.mark.parametrize(("text", "want"), [
    ("gpu.cuda", [("gpu.cuda", None, None)]),
    ("gpu.cuda >= 12.2", [("gpu.cuda", ">=", "12.2")]),
    ("GPU.CUDA==12.2.1", [("gpu.cuda", "=", "12.2.1")]),
    ("gpu.rocm>=6", [("gpu.rocm", ">=", "6")]),
    ("net.rdma cpu.x86-64-v4", [("net.rdma", None, None), ("cpu.x86-64", ">=", "4")]),
    ("cpu.cores>=16,\n# comment, gpu.bad\n", [("cpu.cores", ">=", "16")]),
])
def test_requires_terms(text: str, want: list[tuple]) -> None:
    reqs, diags = parse_requires(text, "t")
    assert [(r.name, r.op, r.value) for r in reqs] == want and diags == []


@pytest.mark.parametrize("term", ["gpu.cuda>=twelve", "cpu.x86-64-v5", "cpu.cores>=0", "cpu.cores<4", "net.rdma>=1",
                                  "gpu", "gpu.cuda=>12"])
def test_requires_invalid_terms(term: str) -> None:
    reqs, diags = parse_requires(f"net.rdma, {term}", "label shim.requires")
    assert reqs == [Requirement("net.rdma", None, None, "net.rdma")]
    [d] = diags
    assert d.code == "IMAGE-REQUIRES-INVALID" and repr(term) in d.message and "label shim.requires" in d.message


def test_version_of() -> None:
    assert version_of("libcudart.so.12", "/x/libcudart.so.12.2.140") == "12.2.140"
    assert version_of("libomp.so", "libomp.so.5") == "5"
    assert version_of("libcudart.so.12", "libcudart.so.12") == "12"
    assert version_of("libfoo.so.1", "libfoo-2.3.so") is None
