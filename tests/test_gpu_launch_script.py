"""scripts/gpu_launch_check.sh, the GPU launch of issue #26 (item 5), proven on this GPU-less
machine: `build` makes the carry (shim for a bare CPython 3.12, a directory image with PyPI's
libcudart.so.12 and /opt/app/cudacheck), then `node` installs it and runs, as the ordinary test
user, shim's plan and launches through --nv and CDI, the planner being a bare CPython 3.12 (a copy
of pyenv's 3.12.1 without site-packages, run -I -S) that imports only what the carry holds.
Here the GPU is absent: shim says GPU-ABSENT, the app reports that no driver answers, --nv and
--device refuse with one line each; nothing crashes. The spec the node phase writes on a GPU node
is checked here against shim's CDI reader, on the node facts of the H100 machine
(docs/gpu-device-check.md).

Needs pyenv's CPython 3.12.1 (headers, to build the C core for cp312) and root (the node phase
installs the carry and runs as the ordinary user); the wheels come from
/var/cache/shim-test/gpu-wheels (downloaded once)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from shim.cdi.spec import parse_spec
from shim.errors import ExitCode

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_launch_check.sh"
CACHE = Path("/var/cache/shim-test")
PYENV_312 = Path("/root/.pyenv/versions/3.12.1/bin/python3.12")
BARE = CACHE / "cpython-3.12-bare"


def _build_python() -> Path | None:
    found = subprocess.run(["sh", "-c", "PYENV_VERSION=3.12.1 pyenv which python3.12"], capture_output=True,
                           text=True, check=False).stdout.strip()
    for candidate in (found, str(PYENV_312)):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


BUILD_PY = _build_python()
needs_312 = pytest.mark.skipif(BUILD_PY is None, reason="no pyenv CPython 3.12.1 (with headers) to build the carry")


@pytest.fixture(scope="module")
def ran(user) -> dict:
    """build, then node, as the script's users run them; the installed root removed after."""
    if os.getuid() != 0:
        pytest.skip("the node phase runs as root (it installs the carry and launches as an ordinary user)")
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this node has a GPU: the GPU-absent outcome does not apply")
    work = Path(tempfile.mkdtemp(prefix="gpu-launch.", dir="/var/tmp"))
    work.chmod(0o755)
    carry, root = work / "carry", work / "root"
    env = {**os.environ, "SHIM_BUILD_PYTHON": str(BUILD_PY), "SHIM_GPU_CARRY": str(carry),
           "SHIM_GPU_ROOT": str(root), "SHIM_GPU_WHEELS": str(CACHE / "gpu-wheels"), "SHIM_GPU_USER": user.name}
    try:
        build = subprocess.run(["bash", str(SCRIPT), "build"], env=env, capture_output=True, text=True,
                               timeout=300, check=False)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
        if not (BARE / "bin" / "python3.12").exists():
            subprocess.run([str(BUILD_PY), "-I", str(REPO / "scripts" / "gpu_bundle.py"), "bare-python", str(BARE)],
                           check=True, capture_output=True, timeout=300)
        node_env = {**env, "SHIM_GPU_PYTHON": str(BARE / "bin/python3.12")}
        node = subprocess.run(["bash", str(SCRIPT), "node"], env=node_env, capture_output=True, text=True,
                              timeout=300, check=False)
        yield {"build": build, "node": node, "carry": carry, "root": root,
               "log": (root / "gpu-launch-check.md").read_text() if (root / "gpu-launch-check.md").exists() else ""}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _step(log: str, command: str) -> tuple[str, int]:
    """The output and exit status of the log's step whose command line starts with `command`."""
    m = re.search(rf"^\$ {re.escape(command)}[^\n]*\n(.*?)^\[exit (\d+)\]$", log, re.S | re.M)
    assert m, f"no step {command!r} in the log:\n{log}"
    return m.group(1), int(m.group(2))


@needs_312
def test_the_carry_fits_the_device_tool_and_its_app_needs_the_cuda_runtime(ran) -> None:
    carry = ran["carry"]
    size = sum(f.stat().st_size for f in carry.rglob("*") if f.is_file() and not f.is_symlink())
    assert size <= 64 << 20, f"{size >> 20} MiB"
    dynamic = subprocess.run(["readelf", "-d", str(carry / "image/opt/app/cudacheck")], capture_output=True,
                             text=True, check=True).stdout
    assert "Shared library: [libcudart.so.12]" in dynamic
    runtime = list((carry / "image/usr/local/cuda/lib64").glob("libcudart.so.12.*"))
    assert runtime and b"libcudart.so.12" in runtime[0].read_bytes()   # the wheel's real runtime, its SONAME
    # The C core is built for the node's Python (3.12), not this venv's; the glibc need is reported.
    assert list((carry / "site/shim").glob("_core.cpython-312-*.so"))
    assert "the node needs glibc >= " in ran["build"].stdout
    assert (carry / "ROOT").read_text().strip() == str(ran["root"])


@needs_312
def test_the_node_phase_reports_the_absent_gpu_cleanly(ran) -> None:
    node, log = ran["node"], ran["log"]
    assert node.returncode == 0, node.stdout[-4000:] + node.stderr[-2000:]
    assert "Traceback" not in node.stdout + node.stderr
    assert "no GPU on this node" in node.stdout and log in node.stdout   # the log is printed for pasting
    # The planner ran on the bare 3.12, isolated, every module from the carry.
    out, rc = _step(log, "ROOT/bin/python3")
    assert rc == 0 and out.splitlines()[0] == "3.12.1 1 1", out
    origins = dict(line.split(" ", 1) for line in out.splitlines()[1:])
    assert set(origins) == {"shim", "shim._core", "_cffi_backend", "elftools", "yaml", "psutil", "pynvml"}
    assert all(p.startswith(f"{ran['root']}/site/") for p in origins.values()), origins
    # No device asked for: the plan's GPU-ABSENT, once, before the app; the app finds no driver.
    out, rc = _step(log, "shimrun check IMAGE")
    assert rc == 0 and "shimrun: warning: GPU-ABSENT:" in out and "libcudart.so.12" in out
    out, rc = _step(log, "shimrun IMAGE /opt/app/cudacheck")
    assert rc == 2, out
    assert out.count("GPU-ABSENT") == 1 and out.index("GPU-ABSENT") < out.index("cudacheck: CUDA runtime 12")
    assert "cudacheck: cudaGetDeviceCount: error 35 cudaErrorInsufficientDriver" in out
    # --nv: the driver profile cannot be had on this node: one line, the app not started.
    out, rc = _step(log, "shimrun --nv IMAGE")
    assert rc == ExitCode.HOST and out.count("\n") == 1 and "libcuda.so.1" in out and "cudacheck" not in out
    # CDI: no spec for a GPU-less node; the device is not found, one line each.
    out, rc = _step(log, "python3.12 -I -S scripts/gpu_cdi_spec.py")
    assert rc == 3 and "no usable NVIDIA GPU" in out
    for dev in ("all", "0"):
        out, rc = _step(log, f"shimrun --device nvidia.com/gpu={dev} IMAGE")
        assert rc == ExitCode.USAGE and out.count("\n") == 1 and "no such CDI device" in out


def test_the_node_phase_refuses_another_python_in_one_line(tmp_path: Path) -> None:
    """A node whose python3.12 is another version (this venv's 3.11): said before anything runs."""
    carry = tmp_path / "carry"
    carry.mkdir()
    (carry / "ROOT").write_text(str(tmp_path / "root") + "\n")
    (carry / "GLIBC_NEEDED").write_text("2.17\n")
    if os.getuid() != 0:
        pytest.skip("the node phase runs as root")
    r = subprocess.run(["bash", str(SCRIPT), "node"], capture_output=True, text=True, check=False, timeout=60,
                       env={**os.environ, "SHIM_GPU_CARRY": str(carry), "SHIM_GPU_PYTHON": sys.executable})
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == (f"gpu_launch_check: error: {sys.executable} is Python {sys.version_info[0]}."
                        f"{sys.version_info[1]}; the carry's C core and cffi are built for 3.12\n")
    assert not (tmp_path / "root").exists()


def test_the_spec_written_on_a_gpu_node_is_one_shims_cdi_reader_accepts(monkeypatch, tmp_path: Path) -> None:
    """The node phase's spec, from the node facts of the lent H100 machine (docs/gpu-device-check.md:
    driver 580.159.04 in /usr/local/nvidia/lib64, one GPU, the UVM nodes), read back by shim."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import gpu_cdi_spec
    finally:
        sys.path.remove(str(REPO / "scripts"))
    lib = "/usr/local/nvidia/lib64"
    libs = {s: f"{lib}/{s.split('.so')[0]}.so.580.159.04" for s in gpu_cdi_spec.SONAMES if s != "libnvidia-gpucomp.so"}
    present = {"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"}
    monkeypatch.setattr(gpu_cdi_spec, "_gpu_indices", lambda: [0])
    monkeypatch.setattr(gpu_cdi_spec, "_libraries", lambda: libs)
    monkeypatch.setattr(gpu_cdi_spec, "_uuids", lambda n: {0: "GPU-8c1a2f44-93d2-5e4b-a3b1-0e4d6f2a9c11"})
    monkeypatch.setattr(gpu_cdi_spec, "_driver_version", lambda found: "580.159.04")
    monkeypatch.setattr(gpu_cdi_spec.os.path, "exists", lambda p: p in present)
    monkeypatch.setattr(gpu_cdi_spec.os.path, "isfile", lambda p: p == "/usr/bin/nvidia-smi")
    data = gpu_cdi_spec.node_spec()
    spec = parse_spec(str(tmp_path / "nvidia.json"), json.dumps(data).encode())
    assert spec.kind == "nvidia.com/gpu"
    assert [d.name for d in spec.devices] == ["0", "GPU-8c1a2f44-93d2-5e4b-a3b1-0e4d6f2a9c11", "all"]
    edits = spec.edits
    assert [n.path for n in edits.device_nodes] == ["/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidiactl"]
    assert {m.container_path for m in edits.mounts} == {*libs.values(), "/usr/bin/nvidia-smi"}
    hooks = [h.args[1] for h in edits.hooks]
    assert hooks == ["create-symlinks", "enable-cuda-compat", "update-ldcache", "disable-device-node-modification"]
    assert edits.hooks[0].args[2:] == ("--link", f"libcuda.so.1::{lib}/libcuda.so")
