"""Host MPI injection with real parts: PyPI's MPICH 5.0 wheel as the site-optimized host MPI,
Debian images carrying MPICH 4.0.2 (same ABI: injected) and Open MPI (other ABI: refused)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import hostmpi
import images
import pytest
from slurm import local_slurm_fixture

from shim.errors import ExitCode

slurm1 = local_slurm_fixture(1)


@pytest.fixture(scope="module")
def site_conf(world_dir: Path) -> Path:
    return hostmpi.write_site_conf(world_dir / "site-conf", hostmpi.build_host_mpi().prefix)


@pytest.fixture(scope="module")
def mpich_sif() -> Path:
    return images.build_sif(images.DEBIAN_MPICH)


@pytest.fixture(scope="module")
def openmpi_sif() -> Path:
    return images.build_sif(images.DEBIAN_OPENMPI)


def test_check_plans_the_injection(shim, site_conf, mpich_sif):
    r = shim.run(["check", "--json", "--conf", site_conf, mpich_sif])
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    (d,) = [d for d in plan["decisions"] if d["library"] == "libmpich.so.12"]
    assert d["decision"] == "inject" and d["host_path"].endswith("/lib/libmpi.so.12")
    assert [d for d in plan["diagnostics"] if d["severity"] != "info"] == []  # hardware notes aside


def test_host_mpi_is_used_inside(shim, site_conf, mpich_sif):
    r = shim.run(["--conf", site_conf, mpich_sif, "/opt/app/hello"])
    assert r.returncode == 0, r.stderr
    assert "MPICH Version:      5.0" in r.stdout and "sum=1 expected=1 ok" in r.stdout
    assert "UCX  WARN" not in r.stderr  # the host build's own UCX, not the image's older one
    r = shim.run(["--no-profiles", "--conf", site_conf, mpich_sif, "/opt/app/hello"])
    assert "MPICH Version: 4.0.2" in r.stdout


def test_open_mpi_image_is_refused_and_still_runs(shim, site_conf, openmpi_sif):
    r = shim.run(["--profile", "site-mpich", "--conf", site_conf, openmpi_sif, "/opt/app/hello"])
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stderr.splitlines() if "MPI-ABI-MISMATCH" in ln)
    assert "MPICH ABI" in line and "Open MPI" in line
    assert "Open MPI v4" in r.stdout
    strict = shim.run(["--strict", "--profile", "site-mpich", "--conf", site_conf, openmpi_sif, "/opt/app/hello"])
    assert strict.returncode == ExitCode.REFUSED and "Open MPI v4" not in strict.stdout


@pytest.mark.skipif(os.getuid() != 0, reason="the local Slurm needs root")
def test_srun_two_ranks_use_the_host_mpi(shim, site_conf, mpich_sif, slurm1):
    env = slurm1.env(shim.env())
    r = slurm1.srun(["--mpi=pmi2", "-n", "2", shim.shimrun, "--conf", str(site_conf), str(mpich_sif),
                     "/opt/app/hello"], user=shim.user, env=env, timeout=120)
    assert r.returncode == 0, r.stderr + slurm1.logs()
    assert r.stdout.count("MPICH Version:      5.0") >= 1
    assert "rank 0 of 2" in r.stdout and "rank 1 of 2" in r.stdout
    assert "sum=3 expected=3 ok" in r.stdout
