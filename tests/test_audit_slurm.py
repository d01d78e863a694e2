"""What an MPI job step loaded, under a real local Slurm: mpi4py (tests/images.py DEBIAN_MPI4PY,
built against the image's MPICH) under `srun --mpi=pmi2 -n 2`, the site's MPICH (PyPI's MPICH 5
wheel, tests/hostmpi.py) injected in place of the image's libmpich.so.12. Python loads mpi4py's
extension with dlopen, and the MPI library with it: the audit sees it there, the finding naming
the injected host build is printed once for the node (not once per rank; on two nodes, once by
each), the node's provenance record lists it with its host file, and `check --against` that
record names the library the run loaded once the site points its profile at another build.
Skipped when the build does not audit (tests/auditing.py)."""

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
from auditing import audit_missing, finding_lines
from slurm import local_slurm_fixture

from shim.provenance.loaded import loaded_objects
from shim.record.format import AUDIT_FD

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="the local Slurm needs root")

slurm1 = local_slurm_fixture(1)
slurm2 = local_slurm_fixture(2)
DEBIAN_LIBMPICH = Path("/usr/lib/x86_64-linux-gnu/libmpich.so.12")   # this machine's (Debian's MPICH 4.0.2)
APP = ("from mpi4py import MPI; c = MPI.COMM_WORLD; v = MPI.Get_library_version().splitlines()[0]; "
       "print(f'rank {c.Get_rank()} of {c.Get_size()}: {v}', flush=True)")


@pytest.fixture(scope="module")
def mpi4py_sif() -> Path:
    return images.build_sif(images.DEBIAN_MPI4PY)


@pytest.fixture(scope="module")
def site(world_dir: Path) -> tuple[hostmpi.HostMPI, Path]:
    mpi = hostmpi.build_host_mpi()
    return mpi, hostmpi.write_site_conf(world_dir / "audit-slurm-conf", mpi.prefix)


@pytest.fixture(scope="module")
def audited(shim):
    reason = audit_missing(shim)
    if reason:
        pytest.skip(reason)


def test_mpi4py_step_reports_the_injected_mpi_once_per_node(shim, audited, mpi4py_sif, site, slurm1,
                                                             world_dir: Path):
    mpi, conf = site
    records = world_dir / "audit-slurm-records"
    records.mkdir()
    os.chown(records, shim.user.uid, shim.user.gid)
    r = slurm1.srun(["--mpi=pmi2", "-n", "2", shim.shimrun, "--report-loaded", "--provenance", str(records),
                     "--conf", str(conf), str(mpi4py_sif), "python3", "-c", APP],
                    user=shim.user, env=slurm1.env(shim.env()), timeout=180)
    assert r.returncode == 0, r.stderr + slurm1.logs()
    ranks = sorted(ln.split(":")[0] for ln in r.stdout.splitlines() if ln.startswith("rank "))
    assert ranks == ["rank 0 of 2", "rank 1 of 2"], r.stdout
    assert len(re.findall(rf"MPICH Version:\s+{re.escape(mpi.version)}$", r.stdout, re.M)) == 2, r.stdout  # the site's

    (line,) = finding_lines(r.stderr, "MPI-LOADED")   # once for the node, not once per rank
    assert str(mpi.libmpi) in line, line

    (path,) = records.iterdir()   # the node's record
    doc = json.loads(path.read_text())
    loaded = loaded_objects(doc)
    paths = [e["path"] for e in loaded]
    (mpi_entry,) = [e for e in loaded if e["host"] == str(mpi.libmpi)] or [json.dumps(loaded, indent=1)]
    assert mpi_entry["sha256"] == hashlib.sha256(mpi.libmpi.read_bytes()).hexdigest()
    assert mpi_entry["exe"].startswith("python3") and mpi_entry["pid"] > 0
    # Reached through Python's dlopen of mpi4py's extension, which comes first (it needs it).
    (extension,) = [p for p in paths if "/mpi4py/MPI." in p]
    assert paths.index(extension) < paths.index(mpi_entry["path"])
    assert any(p.endswith("/python3.11") for p in paths[:paths.index(extension)]), paths[:5]

    same = shim.run(["check", mpi4py_sif, "--against", path])
    assert same.returncode == 0 and "the same computation would run" in same.stdout, same.stdout + same.stderr

    # The site swaps its MPI for another build of the same ABI: this machine's Debian MPICH 4.0.2,
    # the very file the image has, so the planner keeps the image's own (nothing to inject).
    other = world_dir / "audit-other-mpich"
    (other / "lib").mkdir(parents=True)
    shutil.copy(DEBIAN_LIBMPICH.resolve(), other / "lib" / "libmpi.so.12")
    for p in [other, *other.rglob("*")]:
        p.chmod(0o755)
    hostmpi.write_site_conf(conf, other)
    swapped = shim.run(["check", mpi4py_sif, "--against", path])
    hostmpi.write_site_conf(conf, mpi.prefix)
    assert swapped.returncode == 1, swapped.stdout + swapped.stderr
    found = swapped.stdout.splitlines()
    want = (f"differs: loaded {mpi_entry['path']} (host {mpi.libmpi}, by {mpi_entry['exe']}): not offered now (the "
            f"image's own would load, if it has one): recorded {mpi.libmpi}, now none")
    assert want in found, swapped.stdout
    # the MPICH wheel's bundled UCX and libfabric, loaded from the directory bound with it
    bundled = [ln for ln in found if ln.startswith("differs: ") and f"loaded from host {mpi.bundled_dir} " in ln]
    assert len(bundled) == 1 and "libfabric.so.1" in bundled[0] and bundled[0].endswith(
        f"not bound now: recorded {mpi.bundled_dir}, now none"), swapped.stdout


# Each rank of a step imports an extension module of its own; the ranks that joined the node's
# shared container (not its leader, whose app holds the audit's descriptor) end a while after the
# leader's app: their objects must still be in the node's one report.
RANK_OWN = {"0": "_bz2", "1": "_lzma"}
RANKS_APART = (f"import os, time, importlib; joined = True\n"
               f"try: os.fstat({AUDIT_FD}); joined = False\n"
               "except OSError: pass\n"
               "if joined: time.sleep(2)\n"
               f"importlib.import_module({RANK_OWN!r}[os.environ['SLURM_PROCID']])\n"
               "print('rank', os.environ['SLURM_PROCID'], 'joined' if joined else 'leads', flush=True)")


def test_every_rank_of_a_shared_container_is_reported_once(shim, audited, mpi4py_sif, site, slurm1,
                                                          world_dir: Path):
    """srun -n 2, the node's shared container (SHIMRUN_SHARE's default): the rank that joined the
    holder's namespaces reports on the FIFO, after the leading rank's app has ended; the node's
    findings and record come once, when the last rank has ended, and name both ranks' objects."""
    _mpi, conf = site
    records = world_dir / "audit-slurm-ranks"
    records.mkdir()
    os.chown(records, shim.user.uid, shim.user.gid)
    r = slurm1.srun(["-n", "2", shim.shimrun, "--report-loaded", "--provenance", str(records), "--conf", str(conf),
                     str(mpi4py_sif), "python3", "-c", RANKS_APART],
                    user=shim.user, env=slurm1.env(shim.env()), timeout=180)
    assert r.returncode == 0, r.stderr + slurm1.logs()
    assert sorted(ln.split()[-1] for ln in r.stdout.splitlines() if ln.startswith("rank ")) == ["joined", "leads"], \
        r.stdout   # one container: one leader, one rank that joined it
    (path,) = records.iterdir()   # the node's one record
    loaded = loaded_objects(json.loads(path.read_text()))
    own = {m: [e for e in loaded if f"/{m}.cpython" in e["path"]] for m in RANK_OWN.values()}
    assert all(len(found) == 1 for found in own.values()), json.dumps(loaded, indent=1)
    assert own["_bz2"][0]["pid"] != own["_lzma"][0]["pid"]   # each by its own rank's process
    assert len({e["pid"] for e in loaded if e["path"].endswith("/python3.11")}) == 1   # a path once: the first
    assert not finding_lines(r.stderr, "MPI-LOADED")   # no MPI loaded: nothing said of it, by either rank


def test_two_nodes_each_say_it_once(shim, audited, mpi4py_sif, site, slurm2, world_dir: Path):
    """-N 2 -n 4: two ranks per node, one finding and one record per node."""
    mpi, conf = site
    records = world_dir / "audit-slurm2-records"
    records.mkdir()
    os.chown(records, shim.user.uid, shim.user.gid)
    r = slurm2.srun(["-N", "2", "-n", "4", "--ntasks-per-node", "2", "--mpi=pmi2", shim.shimrun, "--report-loaded",
                     "--provenance", str(records), "--conf", str(conf), str(mpi4py_sif), "python3", "-c", APP],
                    user=shim.user, env=slurm2.env(shim.env()), timeout=180)
    assert r.returncode == 0, r.stderr + slurm2.logs()
    assert sorted(ln.split(":")[0] for ln in r.stdout.splitlines() if ln.startswith("rank ")) == \
        [f"rank {i} of 4" for i in range(4)], r.stdout
    lines = finding_lines(r.stderr, "MPI-LOADED")
    nodes = sorted(ln.split("]")[0].removeprefix("shimrun: [") for ln in lines)
    assert len(nodes) == 2 and len(set(nodes)) == 2, r.stderr
    assert all(str(mpi.libmpi) in ln for ln in lines), lines
    found = sorted(records.iterdir())
    assert [p.name.rsplit(".", 2)[1] for p in found] == nodes   # JOB.STEP.NODE.json, one per node
    for path in found:
        assert [e for e in loaded_objects(json.loads(path.read_text())) if e["host"] == str(mpi.libmpi)], path
