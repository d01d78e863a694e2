"""The host libraries of a plan, as the provenance record names them: each decision with the
library's sha256, SONAME, owning package and, for an MPI, its family and release."""

from __future__ import annotations

import os
from dataclasses import asdict

from shim.elf.facts import symbol_string
from shim.host.paths import on_host
from shim.provenance.digests import sha256_file
from shim.provenance.packages import owning_packages


def _mpi(path: str, soname: str) -> dict | None:
    from shim.knowledge.abi import mpi_abi, version_symbol

    abi = mpi_abi(soname)
    if abi is None:
        return None
    symbol = version_symbol(soname)
    return {"family": abi.family, "abi": abi.major, "label": abi.label, "role": abi.role,
            "version": symbol_string(path, symbol) if symbol else None}


def library_facts(decisions: list, host_root: str) -> list[dict]:
    """Every decision of the plan, with the facts of its host file."""
    from shim.elf.facts import elf_facts

    files = {d.host_path: on_host(host_root, d.host_path) for d in decisions if d.host_path}
    packages = owning_packages(files.values(), host_root)
    out = []
    for d in decisions:
        entry = asdict(d)
        path = files.get(d.host_path)
        if path:
            facts = elf_facts(path) if os.path.isfile(path) else None
            soname = facts.soname if facts and facts.soname else d.library
            entry.update(sha256=sha256_file(path), soname=facts.soname if facts else None,
                         real_path=os.path.realpath(path), package=packages.get(path), mpi=_mpi(path, soname))
        out.append(entry)
    return out
