"""MPI profiles (kind "mpi"): the host MPI must be of the image's MPI ABI (family and major:
MPICH ABI libmpi.so.12 / libmpich.so.12, Open MPI libmpi.so.40, the MPI-5 ABI libmpi_abi.so),
and it must export the MPI symbols the app imports (symbols.py, under this rule's code)."""

from __future__ import annotations

from collections.abc import Sequence

from shim.knowledge.abi import mpi_abi, mpi_probes
from shim.plan.job import OfferedLib, ProfileJob, subject
from shim.plan.rules.base import Rule


class MpiRule(Rule):
    kind = "mpi"
    symbols_code = "MPI-SYMBOLS-MISSING"

    def start(self, job: ProfileJob) -> None:
        found = {n: job.ctx.find_in_container(n) for n in mpi_probes()}
        job.state = {n: p for n, p in found.items() if p}   # the image's MPI: probe name -> path

    def without_target(self, job: ProfileJob, lib: OfferedLib, names: Sequence[str]) -> str:
        mine = mpi_abi(lib.soname)
        if mine is None or not job.state:
            return ""
        other, where = next(iter(job.state.items()))
        theirs = mpi_abi(other)
        if theirs is not None and mine.same_abi(theirs):
            return ""  # the image's MPI is of this ABI, it just does not use this library of it
        job.refuse("MPI-ABI-MISMATCH", subject(lib, where),
                   f"host MPI is {mine.describe(lib.soname)}, the image's MPI is "
                   f"{theirs.describe(other) if theirs else other} at {where}: the ABIs differ",
                   f"rebuild the app against an {mine.label} MPI, or run with --no-profiles to use the image's "
                   "own MPI", job.key(lib))
        return ""

    def check_target(self, job: ProfileJob, lib: OfferedLib, name: str, target: str) -> bool:
        ctx = job.ctx
        real = ctx.real_in_root(target)
        facts = ctx.container_facts(real)
        mine, theirs = mpi_abi(lib.soname), mpi_abi(facts.soname) if facts and facts.soname else None
        if mine is None or theirs is None or mine.same_abi(theirs):
            return True
        job.refuse("MPI-ABI-MISMATCH", subject(lib, real),
                   f"host MPI is {mine.describe(lib.soname)}, the image's {name} is "
                   f"{theirs.describe(facts.soname or name)}", "use the image's own MPI (--no-profiles)", job.key(lib))
        return False
