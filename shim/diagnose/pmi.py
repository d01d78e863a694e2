"""PMI preflight: the process-management interface the Slurm step offers against what the image's
MPI can speak, so a mismatch is one clear line instead of N copies of "rank 0 of 1".

The step's side: SLURM_MPI_TYPE (srun --mpi), PMI_FD / PMI_RANK (PMI-1/PMI-2 wire protocol,
srun --mpi=pmi2) and PMIX_RANK / PMIX_SERVER_URI* (srun --mpi=pmix). The image's side: its MPI
family (MPICH ABI libmpi.so.12/libmpich.so.12, Open MPI libmpi.so.40) and whether it has a PMIx
client (libpmix.so.2) or, for Open MPI, its Slurm PMI-1/2 components (mca_pmix_s1/s2).
MPICH's own simple PMI client speaks PMI-1 and PMI-2, which srun --mpi=pmi2 serves.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from shim.knowledge.abi import PmiClient, mpi_abi, mpi_probes, pmi_client
from shim.model import WARNING, Diagnostic

if TYPE_CHECKING:
    from shim.expect.libs import LibFinder

CODE = "MPI-PMI-MISMATCH"
PMIX, PMI2 = "pmix", "pmi2"   # as abi.json's "pmi" speaks: what a step offers and an MPI's client speaks


def _offered(environ: Mapping[str, str]) -> str:
    """pmix | pmi2 | none | "" (not under srun)."""
    if not environ.get("SLURM_STEP_ID"):
        return ""
    if any(k.startswith("PMIX_SERVER_URI") for k in environ) or environ.get("PMIX_RANK"):
        return PMIX
    if environ.get("PMI_FD") or environ.get("PMI_RANK"):
        return PMI2
    kind = environ.get("SLURM_MPI_TYPE", "none").lower()
    return PMIX if kind.startswith(PMIX) else kind


def pmi_diagnostics(root: str, environ: Mapping[str, str], arch: str | None = None) -> list[Diagnostic]:
    offered = _offered(environ)
    ntasks = int(environ.get("SLURM_NTASKS", "1") or 1) if environ.get("SLURM_NTASKS", "1").isdigit() else 1
    if not offered:
        return []
    from shim.elf.rootpath import RootPaths
    from shim.expect.libs import LibFinder

    finder = LibFinder(RootPaths(root), arch)
    found = next(((name, lib) for name in mpi_probes() if (lib := finder.find(name))), None)
    abi = mpi_abi(found[0]) if found else None
    client = pmi_client(abi.family) if abi else None
    if found is None or abi is None or client is None:
        return []
    # MPICH's own client speaks PMI-1/2 (PMIx only with libpmix); Open MPI's speaks PMIx.
    speaks_pmi2, speaks_pmix = client.speaks == PMI2, client.speaks == PMIX
    family = f"{abi.label} MPI" if speaks_pmi2 else abi.label
    lib = found[1].path
    has_pmix = finder.find("libpmix.so.2") is not None
    if offered == "none" and ntasks > 1:
        return [Diagnostic(
            CODE, WARNING,
            f"this step has {ntasks} tasks but no process manager interface (srun --mpi=none); the image's "
            f"{family} ({lib}) will start every rank as rank 0 of a 1-rank world",
            "run srun --mpi=pmi2" + (" or --mpi=pmix" if has_pmix or speaks_pmix else ""),
            "set MpiDefault=pmi2 (or pmix) in slurm.conf")]
    if offered == PMIX and not has_pmix and speaks_pmi2:
        return [Diagnostic(
            CODE, WARNING,
            f"this step offers PMIx (srun --mpi=pmix) but the image's {family} ({lib}) has no PMIx client "
            "(no libpmix.so.2): MPI_Init will fail or every rank will be rank 0",
            "run srun --mpi=pmi2", "")]
    if offered == PMI2 and speaks_pmix and not _has_slurm_pmi(finder, client):
        return [Diagnostic(
            CODE, WARNING,
            f"this step offers PMI-2 (srun --mpi=pmi2) but the image's Open MPI ({lib}) only speaks PMIx "
            "(no mca_pmix_s1/s2 component)",
            "run srun --mpi=pmix", "install Slurm's PMIx plugin (libpmix) on the nodes")]
    return []


def _has_slurm_pmi(finder: LibFinder, client: PmiClient) -> bool:
    """Does the image's PMIx-speaking MPI have the components that speak Slurm's PMI-1/2?"""
    for d in finder.dirs:
        for sub in client.slurm_pmi_dirs:
            names = finder.listdir(f"{d}/{sub}")
            if any(n.startswith(client.slurm_pmi_components) for n in names):
                return True
    return False
