"""Reads abi.json: which SONAMEs are glibc, and the MPI ABIs with the names each of their
libraries goes by (roles), so that a host library stands in only for its own role."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from shim.knowledge.tables import table, table_path

DATA = table_path("abi")
MAIN_ROLE = "c"


@dataclass(frozen=True)
class MpiAbi:
    family: str   # one of mpi_families()
    major: str    # "12", "40", ...
    label: str    # for messages
    role: str     # c | cxx | fortran | ...: which library of the ABI this name is

    def describe(self, soname: str) -> str:
        return f"{self.label} ({soname})"

    def same_abi(self, other: MpiAbi) -> bool:
        return (self.family, self.major) == (other.family, other.major)


@cache
def _data() -> dict:
    return table("abi")


@cache
def _by_name() -> dict[str, tuple[MpiAbi, tuple[str, ...]]]:
    """SONAME -> (its ABI and role, every name of that role)."""
    out: dict[str, tuple[MpiAbi, tuple[str, ...]]] = {}
    for abi in _data()["mpi_abis"]:
        for role, names in abi["roles"].items():
            for name in names:
                out[name] = (MpiAbi(abi["family"], abi["major"], abi["label"], role), tuple(names))
    return out


def mpi_families() -> tuple[str, ...]:
    """The MPI ABI families, in the file's order: the values of a profile's abi."""
    return tuple(dict.fromkeys(abi["family"] for abi in _data()["mpi_abis"]))


@dataclass(frozen=True)
class PmiClient:
    """The process-management interface an MPI family's own client speaks (abi.json "pmi")."""
    speaks: str                                  # pmi2 (PMI-1 and PMI-2; PMIx only with libpmix) | pmix
    slurm_pmi_dirs: tuple[str, ...] = ()         # pmix: where its Slurm PMI-1/2 components live
    slurm_pmi_components: tuple[str, ...] = ()   # pmix: their name prefixes


def pmi_client(family: str) -> PmiClient | None:
    """None: a family whose PMI shim does not check."""
    found = _data()["pmi"].get(family)
    if found is None:
        return None
    return PmiClient(found["speaks"], tuple(found.get("slurm_pmi_dirs", ())),
                     tuple(found.get("slurm_pmi_components", ())))


def is_glibc(soname: str) -> bool:
    data = _data()
    return soname in data["glibc"] or soname.startswith(tuple(data["glibc_prefixes"]))


def glibc_sonames() -> tuple[str, ...]:
    return tuple(_data()["glibc"])


def mpi_abi(soname: str) -> MpiAbi | None:
    """The MPI ABI and role of a library name, None when it names no known MPI library."""
    found = _by_name().get(soname)
    return found[0] if found else None


def aliases(soname: str) -> tuple[str, ...]:
    """Every name container binaries may ask for that a library of SONAME `soname` stands in
    for: itself, then the other names of its role in its ABI (libmpi.so.12 -> libmpich.so.12)."""
    found = _by_name().get(soname)
    if found is None:
        return (soname,)
    return (soname, *(n for n in found[1] if n != soname))


def version_symbol(soname: str) -> str | None:
    """The data symbol holding the release of the MPI whose library is `soname`, None if unknown."""
    abi = mpi_abi(soname)
    if abi is None:
        return None
    return next((a.get("version_symbol") for a in _data()["mpi_abis"]
                 if (a["family"], a["major"]) == (abi.family, abi.major)), None)


def mpi_probes() -> tuple[str, ...]:
    """The names whose presence in an image tells its MPI: every main (C) library name."""
    return tuple(n for n, (abi, _names) in _by_name().items() if abi.role == MAIN_ROLE)
