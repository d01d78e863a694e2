"""Reads loaded.json: which loaded object means which MPI, transport or GPU driver, for the
after-start audit (shim/audit/rules.py)."""

from __future__ import annotations

from functools import cache

from shim.knowledge.tables import table


@cache
def groups() -> dict[str, tuple[str, ...]]:
    """group -> its patterns (fnmatch globs against a basename), in the table's order."""
    out: dict[str, list[str]] = {}
    for entry in table("loaded")["objects"]:
        out.setdefault(entry["group"], []).append(entry["pattern"])
    return {g: tuple(p) for g, p in out.items()}


def patterns(*names: str) -> tuple[str, ...]:
    """The patterns of these groups, in order."""
    found = groups()
    return tuple(p for name in names for p in found.get(name, ()))
