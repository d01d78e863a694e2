"""The site's host MPI (tests/hostmpi.py): PyPI's MPICH 5.0 wheel unpacked into a cached prefix,
and mpi_hello built natively against it, run as a singleton, with the wheel's own hydra mpiexec
and under the local Slurm's PMI-2 plugin (which also serves PMI-1, what this MPICH speaks)."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import hostmpi
import pytest
import slurm

slurm1 = slurm.local_slurm_fixture(1)

VERSION_RE = re.compile(r"MPICH Version:\s+(5\.0\.\d+)")


@pytest.fixture(scope="module")
def host_mpi() -> hostmpi.HostMPI:
    return hostmpi.build_host_mpi()


@pytest.fixture(scope="module")
def hello(host_mpi) -> Path:
    return hostmpi.host_mpi_hello(host_mpi)


def user_env(user, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {"HOME": user.home, "USER": user.name, "LOGNAME": user.name, "LANG": "C.UTF-8",
            "PATH": "/usr/local/bin:/usr/bin:/bin", **(extra or {})}


def as_user(user, argv, env=None, timeout: float = 60) -> subprocess.CompletedProcess:
    ids = {"user": user.uid, "group": user.gid, "extra_groups": []} if os.getuid() == 0 else {}
    return subprocess.run(list(map(str, argv)), check=False, capture_output=True, text=True, cwd="/tmp",
                          env=env if env is not None else user_env(user), timeout=timeout,
                          stdin=subprocess.DEVNULL, **ids)


def dynamic(path: Path) -> str:
    return subprocess.run(["readelf", "-d", str(path)], check=True, capture_output=True, text=True).stdout


def check_hello(out: str, version: str, size: int) -> None:
    lines = out.splitlines()
    lib = [line for line in lines if line.startswith("mpi-hello: library:")]
    assert len(lib) == 1, out
    m = VERSION_RE.search(lib[0])
    assert m and m.group(1) == version, lib[0]
    ranks = sorted(line.split()[2] for line in lines if line.startswith("mpi-hello: rank "))
    assert ranks == sorted(str(r) for r in range(size)), out
    assert f" of {size} on " in out
    assert f"mpi-hello: allreduce sum={size * (size + 1) // 2} expected={size * (size + 1) // 2} ok" in lines, out


def test_prefix_layout(host_mpi):
    assert re.fullmatch(r"5\.0\.\d+", host_mpi.version)
    assert host_mpi.prefix.name == f"site-mpich-{host_mpi.version}"
    assert host_mpi.libmpi == host_mpi.lib_dir / "libmpi.so.12" and host_mpi.libmpi.is_file()
    for name in ("libfabric.so.1", "libucp.so.0", "libuct.so.0", "libucs.so.0", "libucm.so.0"):
        assert (host_mpi.bundled_dir / name).is_file(), name
    assert host_mpi.mpicc == host_mpi.bin_dir / "mpicc" and host_mpi.mpiexec == host_mpi.bin_dir / "mpiexec"
    assert (host_mpi.include_dir / "mpi.h").is_file()


def test_prefix_is_world_readable(host_mpi):
    for dirpath, _dirs, files in os.walk(host_mpi.prefix):
        assert stat.S_IMODE(os.stat(dirpath).st_mode) & 0o555 == 0o555, dirpath
        for f in files:
            mode = stat.S_IMODE(os.lstat(os.path.join(dirpath, f)).st_mode)
            assert mode & 0o444 == 0o444, (f, oct(mode))
            assert not mode & 0o022, (f, oct(mode))
    for exe in ("mpicc", "mpiexec", "mpichversion", "hydra_pmi_proxy"):
        assert os.stat(host_mpi.bin_dir / exe).st_mode & 0o111 == 0o111, exe


def test_libmpi_soname_and_runpath(host_mpi, user):
    d = dynamic(host_mpi.libmpi)
    assert "Library soname: [libmpi.so.12]" in d
    assert "$ORIGIN/mpich" in re.search(r"RUNPATH.*\[(.*)\]", d).group(1)
    r = as_user(user, ["ldd", host_mpi.libmpi])
    assert r.returncode == 0 and "not found" not in r.stdout, r.stdout
    assert f"libfabric.so.1 => {host_mpi.bundled_dir}/libfabric.so.1" in r.stdout


def test_mpichversion(host_mpi, user):
    r = as_user(user, [host_mpi.bin_dir / "mpichversion"])
    assert r.returncode == 0, r.stderr
    assert VERSION_RE.search(r.stdout).group(1) == host_mpi.version


def test_cached_build_is_reused(host_mpi):
    assert hostmpi.build_host_mpi() == host_mpi
    assert hostmpi.build_host_mpi(host_mpi.version) == host_mpi


def test_hello_links_the_host_libmpi(host_mpi, hello, user):
    d = dynamic(hello)
    assert "Shared library: [libmpi.so.12]" in d
    assert f"Library runpath: [{host_mpi.lib_dir}]" in d
    r = as_user(user, ["ldd", hello])
    assert f"libmpi.so.12 => {host_mpi.libmpi}" in r.stdout, r.stdout


def test_singleton(host_mpi, hello, user):
    r = as_user(user, [hello])
    assert r.returncode == 0, r.stderr
    check_hello(r.stdout, host_mpi.version, 1)


def test_wheel_mpiexec_two_ranks(host_mpi, hello, user):
    r = as_user(user, [host_mpi.mpiexec, "-n", "2", hello], env=host_mpi.env(user_env(user)))
    assert r.returncode == 0, r.stderr
    check_hello(r.stdout, host_mpi.version, 2)


@pytest.mark.skipif(not (hostmpi.DEBIAN_MPICH_INCLUDE / "mpi.h").exists(), reason="libmpich-dev not installed")
def test_hello_from_debian_headers(host_mpi, user):
    """The fallback for a wheel without mpicc: Debian's MPICH 4 headers (same ABI), the wheel's
    libmpi.so.12 found through LD_LIBRARY_PATH."""
    exe = hostmpi.host_mpi_hello(host_mpi, use_wheel_mpicc=False)
    assert "RUNPATH" not in dynamic(exe)
    r = as_user(user, [exe], env=host_mpi.env(user_env(user)))
    assert r.returncode == 0, r.stderr
    check_hello(r.stdout, host_mpi.version, 1)


@pytest.mark.skipif(os.getuid() != 0, reason="a local Slurm needs root")
@pytest.mark.parametrize("ntasks", [2, 8])
def test_srun_pmi2(slurm1, host_mpi, hello, user, ntasks):
    r = slurm1.srun(["--mpi=pmi2", "-n", str(ntasks), hello], user=user, env=user_env(user))
    assert r.returncode == 0, r.stderr
    check_hello(r.stdout, host_mpi.version, ntasks)


@pytest.mark.skipif(os.getuid() != 0, reason="a local Slurm needs root")
def test_srun_without_pmi_gives_singletons(slurm1, host_mpi, hello, user):
    """--mpi=none: no PMI server, so every task initialises as its own 1-rank world."""
    r = slurm1.srun(["--mpi=none", "-n", "2", hello], user=user, env=user_env(user))
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("mpi-hello: rank 0 of 1 on ") == 2
