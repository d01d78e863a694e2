"""What `check --against` reads of a provenance record, as a shape: a record that another
program (or a hand) changed is refused with one line naming the member that is wrong, before
anything compares it. Members the comparison does not read are not checked; a member may be
missing or null wherever the comparison copes with that (it reads it as absent)."""

from __future__ import annotations

from dataclasses import dataclass

# A JSON value that is compared and printed as it is.
SCALAR = (str, int, float, bool, type(None))


@dataclass(frozen=True)
class ListOf:
    item: object


@dataclass(frozen=True)
class Must:
    """A member that may not be missing (where its name alone does not say so: "path")."""
    inner: object


_NAMED = {"name": str}
_DECISION = {"library": str, "profile": SCALAR, "decision": SCALAR, "reason": SCALAR, "host_path": SCALAR,
             "sha256": SCALAR, "package": (dict, *SCALAR), "mpi": (dict, *SCALAR)}
# One object the run loaded (shim/record/format.py LOADED_KEYS: the executor writes them).
_LOADED = {"path": Must(str), "host": SCALAR, "sha256": SCALAR, "pid": SCALAR, "exe": SCALAR}
SHAPE = {
    "shim": {"version": SCALAR},
    "command": ListOf(str),
    "image": {"kind": SCALAR, "arch": SCALAR, "sha256": SCALAR, "path": SCALAR,
              "sif": {"id": SCALAR, "objects": ListOf({"id": int, "type": str, "name": SCALAR, "sha256": str})},
              "signatures": {"ok": SCALAR, "signers": ListOf(str)}},
    "plan": {"decisions": ListOf(_DECISION), "diagnostics": ListOf({"code": str, "severity": str}),
             "profiles": ListOf(str)},
    "host": {"rdma": ListOf({"name": str, "software": bool}), "gpu": {"devices": ListOf(_NAMED)},
             "cpu": {"isa_level": SCALAR, "arch": SCALAR, "model": SCALAR},
             "glibc": SCALAR, "kernel": SCALAR, "hypervisor": SCALAR},
    "loaded": ListOf(_LOADED),
}
_REQUIRED = {"id", "type", "sha256", "library", "code", "severity", "name", "software"}


def shape_problem(value: object, shape: object = SHAPE, where: str = "", nullable: bool = True) -> str:
    """Where `value` does not have `shape` ("" when it does). A member may be null (absent); an
    item of a list may not."""
    if isinstance(shape, dict):
        if value is None and nullable:
            return ""
        if not isinstance(value, dict):
            return f"{where or 'the record'} is not an object"
        for key, member in shape.items():
            required = key in _REQUIRED or isinstance(member, Must)
            inner = member.inner if isinstance(member, Must) else member
            if key not in value:
                if required:
                    return f"{where}.{key} is missing".lstrip(".")
                continue
            found = shape_problem(value[key], inner, f"{where}.{key}".lstrip("."))
            if found:
                return found
        return ""
    if isinstance(shape, ListOf):
        if value is None:
            return ""
        if not isinstance(value, list):
            return f"{where} is not a list"
        return next((p for i, v in enumerate(value)
                     if (p := shape_problem(v, shape.item, f"{where}[{i}]", nullable=False))), "")
    kinds = shape if isinstance(shape, tuple) else (shape,)
    if isinstance(value, bool) and bool not in kinds and int in kinds:
        return f"{where} is not a number"
    return "" if isinstance(value, kinds) else f"{where} is not {_name(kinds)}"


def _name(kinds: tuple) -> str:
    if dict in kinds:
        return "an object or a value"
    return {str: "a string", int: "a number", bool: "true or false"}.get(kinds[0], "a value") if len(kinds) == 1 \
        else "a value"
