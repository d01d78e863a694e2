"""Reads shim/data/abi.json: which SONAMEs are glibc, which name an MPI ABI family."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

DATA = Path(__file__).resolve().parent.parent / "data" / "abi.json"


@dataclass(frozen=True)
class MpiAbi:
    family: str   # mpich | openmpi | mpi-abi
    major: str    # "12", "40", "" (unversioned)
    label: str    # for messages

    def describe(self, soname: str) -> str:
        return f"{self.label} ({soname})"


@cache
def _data() -> dict:
    return json.loads(DATA.read_text())


def is_glibc(soname: str) -> bool:
    data = _data()
    return soname in data["glibc"] or soname.startswith(tuple(data["glibc_prefixes"]))


def mpi_abi(soname: str) -> MpiAbi | None:
    for row in _data()["mpi_families"]:
        m = re.match(row["pattern"], soname)
        if m:
            return MpiAbi(row["family"], m.group(1) or "" if m.groups() else "", row["label"])
    return None
