"""The provenance record of an MPI job step: `srun -n 2` under a real local Slurm with the host MPI
(PyPI's MPICH 5.0 wheel) injected into a Debian MPICH image; `check --against` on the same node
finds no difference, and names the host MPI once the site's profile points at another build."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import hostmpi
import images
import pytest
from slurm import local_slurm_fixture

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="the local Slurm needs root")

slurm1 = local_slurm_fixture(1)
DEBIAN_LIBMPICH = Path("/usr/lib/x86_64-linux-gnu/libmpich.so.12")


@pytest.fixture(scope="module")
def mpich_sif() -> Path:
    return images.build_sif(images.DEBIAN_MPICH)


def test_mpi_step_record_and_check_against(shim, mpich_sif, slurm1, world_dir: Path):
    mpi = hostmpi.build_host_mpi()
    conf = world_dir / "prov-conf"
    hostmpi.write_site_conf(conf, mpi.prefix)
    records = world_dir / "prov-records"
    records.mkdir()
    os.chown(records, shim.user.uid, shim.user.gid)
    env = slurm1.env(shim.env())
    r = slurm1.srun(["--mpi=pmi2", "-n", "2", shim.shimrun, "--provenance", str(records), "--conf", str(conf),
                     str(mpich_sif), "/opt/app/hello"], user=shim.user, env=env, timeout=120)
    assert r.returncode == 0, r.stderr + slurm1.logs()
    assert "sum=3 expected=3 ok" in r.stdout

    (path,) = records.iterdir()  # one record for the node's step, not one per rank
    doc = json.loads(path.read_text())
    run = doc["run"]
    assert path.name == f"{run['slurm']['SLURM_JOB_ID']}.{run['slurm']['SLURM_STEP_ID']}.{run['node']}.json"
    assert run["exit"] == {"status": 0} and run["slurm"]["SLURM_NTASKS"] == "2"
    (mpich,) = [d for d in doc["plan"]["decisions"] if d["library"] == "libmpich.so.12"]
    assert mpich["decision"] == "inject" and mpich["host_path"] == str(mpi.libmpi)
    assert mpich["sha256"] == hashlib.sha256(mpi.libmpi.read_bytes()).hexdigest()
    assert mpich["soname"] == "libmpi.so.12" and mpich["mpi"]["family"] == "mpich"

    same = shim.run(["check", mpich_sif, "--against", path])
    assert same.returncode == 0, same.stdout + same.stderr
    assert "the same computation would run" in same.stdout

    # The site swaps its MPI for another build of the same ABI: Debian's MPICH 4.0.2.
    other = world_dir / "other-mpich"
    (other / "lib").mkdir(parents=True)
    shutil.copy(DEBIAN_LIBMPICH.resolve(), other / "lib" / "libmpi.so.12")
    for p in [other, *other.rglob("*")]:
        p.chmod(0o755)
    hostmpi.write_site_conf(conf, other)
    swapped = shim.run(["check", mpich_sif, "--against", path])
    assert swapped.returncode == 1, swapped.stdout + swapped.stderr
    lines = [ln for ln in swapped.stdout.splitlines() if ln.startswith("differs: libmpich.so.12")]
    assert any(re.search(r"host library .*other-mpich/lib/libmpi\.so\.12 is another build: recorded sha256:"
                         + mpich["sha256"][:16], ln) for ln in lines), swapped.stdout
    assert any("mpi: recorded mpich 12 MPICH ABI" in ln and "4.0.2" in ln for ln in lines), swapped.stdout
