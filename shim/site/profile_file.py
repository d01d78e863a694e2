"""One profile file read into a Profile: the TOML and its keys (shim/site/schema.py), [profile]
and [env] here, [provides] in shim/site/profile_provides.py. Problems with the profile's own text
make loading fail; problems with this host's files (a library that is not there, an unset ${VAR}
in the prefix) only make the profile unavailable here (Problem.host).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shim.knowledge.abi import mpi_abi
from shim.site.profile_model import (
    APPLIES,
    CUDA_FORWARD_COMPAT,
    KINDS,
    MPI_ABIS,
    PROFILES_DIR,
    EnvSpec,
    Problem,
    Profile,
)
from shim.site.profile_provides import check_replaced_provided, check_soname, parse_provides
from shim.site.profile_reader import SCHEMA, ProfileReader
from shim.site.schema import (
    NOT_A_TABLE,
    OUTSIDE_TABLE,
    UNKNOWN_TABLE,
    UnreadableToml,
    closest,
    findings,
    owners,
    read_toml,
    table,
    toml_type,
)

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def profile_files(conf_dir: str | os.PathLike[str]) -> list[Path]:
    """The profile files a configuration directory enables (not those under profiles/examples/)."""
    d = Path(conf_dir) / PROFILES_DIR
    if not d.is_dir():
        return []
    return sorted(f for f in d.glob("*.toml") if not f.name.startswith(".") and f.is_file())


def _read(r: ProfileReader) -> dict[str, Any] | None:
    try:
        return read_toml(r.file)
    except UnreadableToml as e:
        key, message, fix = {
            "read": ("file", f"cannot read: {e.detail}", "check the path and its permissions"),
            "utf8": ("file", "is not UTF-8 text", "save it as UTF-8"),
            "nesting": ("toml", "arrays or tables nested too deeply", "fix the TOML: a profile needs two levels"),
            "syntax": (f"line {e.line}" if e.line else "toml", e.syntax_message, "fix the TOML syntax"),
        }[e.reason]
        r.problem(key, message, fix)
        return None


def _check_keys(r: ProfileReader, data: dict[str, Any]) -> None:
    """Unknown tables and keys, with the closest known one (or its right table) as the fix."""
    owner = owners(SCHEMA)
    for found in findings(data, SCHEMA, types=False, allowed=[("profile", "glibc_replacement")]):  # removed: own line
        table, key = found.table, found.key
        if found.what == OUTSIDE_TABLE:
            r.problem(table, f"key {table} is outside any table", f"put it under [{owner[table]}]")
        elif found.what == UNKNOWN_TABLE:
            close = closest(table, SCHEMA)
            r.problem(table, f"unknown table [{table}]",
                      f"did you mean [{close[0]}]?" if close else f"known tables: {', '.join(SCHEMA)}")
        elif found.what == NOT_A_TABLE:
            r.problem(table, f"must be a table, not {toml_type(found.value)}", f"write it as [{table}] with keys below")
        elif key in owner:
            r.problem(f"{table}.{key}", f"{key} belongs in [{owner[key]}], not [{table}]", f"move it to [{owner[key]}]")
        elif table == "env" and isinstance(found.value, str):
            r.problem(f"env.{key}", "unknown key: variables go in env.set, env.prepend or env.append",
                      f'write set = {{ {key} = "..." }} under [env]')
        else:
            # The closest key of this table, else of any table (a misspelt key in the wrong table).
            close = closest(key, SCHEMA[table]) or closest(key, owner)
            r.problem(f"{table}.{key}", "unknown key",
                      f"did you mean {owner[close[0]]}.{close[0]}?" if close
                      else f"known keys in [{table}]: {', '.join(SCHEMA[table])}")


def read_profile(file: str, host_root: str, environ: Mapping[str, str]) -> tuple[Profile | None, list[Problem]]:
    r = ProfileReader(file, host_root, environ)
    data = _read(r)
    if data is None:
        return None, r.problems
    _check_keys(r, data)
    if "profile" not in data:
        r.problem("profile", "missing [profile] table", 'add [profile] with kind and applies, e.g. kind = "mpi"')

    name = r.value(data, "profile", "name")
    if name is None:
        name = Path(file).stem
    elif not _NAME_RE.fullmatch(name):
        r.problem("profile.name", f"'{name}' is not a usable profile name",
                  "use letters, digits, '.', '_', '-' and '+', starting with a letter or digit")
    kind = r.choice(data, "kind", KINDS, required=True)
    applies = r.choice(data, "applies", APPLIES, required=True)
    abi = r.choice(data, "abi", MPI_ABIS, required=False)
    description = r.value(data, "profile", "description") or ""
    if "glibc_replacement" in table(data, "profile"):
        r.problem("profile.glibc_replacement", "is not supported: shim never injects glibc (a host C library "
                  "needs the host's loader, locales and NSS modules, which the image does not have)",
                  "remove it; the image keeps its own C library")
    replaces = [s for i, s in enumerate(r.value(data, "profile", "replaces") or [])
                if check_soname(r, f"profile.replaces[{i}]", s)]
    conflicts = r.value(data, "profile", "conflicts") or []
    for i, other in enumerate(conflicts):
        if other == name:
            r.problem(f"profile.conflicts[{i}]", "a profile cannot conflict with itself", "remove it")

    if kind == "mpi" and not abi and "abi" not in table(data, "profile"):
        r.problem("profile.abi", "is missing (kind = \"mpi\" needs it)",
                  f'add abi = {_one_of(MPI_ABIS)} to match {", ".join(replaces) or "the image MPI"}')
    elif kind and kind != "mpi" and "abi" in table(data, "profile"):
        r.problem("profile.abi", f'only MPI profiles have an ABI, this one is kind = "{kind}"',
                  'remove abi, or set kind = "mpi"')
    if abi and kind == "mpi":
        _check_abi(r, abi, replaces)
    forward_compat = r.choice(data, "cuda_forward_compat", CUDA_FORWARD_COMPAT, required=False) or "auto"
    if kind and kind != "gpu" and "cuda_forward_compat" in table(data, "profile"):
        r.problem("profile.cuda_forward_compat", f'only GPU profiles inject libcuda, this one is kind = "{kind}"',
                  'remove cuda_forward_compat, or set kind = "gpu"')
    if applies == "when-used" and not replaces:
        r.problem("profile.applies", '"when-used" needs the SONAMEs it replaces, and profile.replaces is empty',
                  'list them in profile.replaces, or use applies = "on-request"')

    provides = parse_provides(r, data)
    if not any(p.key.startswith(("provides.libraries", "provides.optional_libraries")) and not p.host
               for p in r.problems):
        check_replaced_provided(r, replaces, provides)
    env = _parse_env(r, data)
    profile = Profile(name=name, file=file, kind=kind, applies=applies, description=description,
                      replaces=tuple(replaces), abi=abi, conflicts=tuple(conflicts),
                      cuda_forward_compat=forward_compat, provides=provides, env=env,
                      unavailable=tuple(p for p in r.problems if p.host))
    return profile, r.problems


def _check_abi(r: ProfileReader, abi: str, replaces: list[str]) -> None:
    for i, soname in enumerate(replaces):
        found = mpi_abi(soname)
        if found is not None and found.family != abi:
            r.problem(f"profile.replaces[{i}]", f"{soname} is {found.label}, but abi = \"{abi}\"",
                      f'set abi = "{found.family}", or remove {soname} from replaces')


def _parse_env(r: ProfileReader, data: dict[str, Any]) -> EnvSpec:
    tables: dict[str, dict[str, str]] = {}
    for op in ("set", "prepend", "append"):
        good = {}
        for name, value in (r.value(data, "env", op) or {}).items():
            key = f"env.{op}.{name}"
            if not _ENV_NAME_RE.fullmatch(name):
                r.problem(key, f"'{name}' is not a variable name",
                          "use letters, digits and _, not starting with a digit")
            elif "${" in value:
                r.problem(key, "uses ${...}, which is expanded only in provides.prefix; values are taken literally",
                          "write the container path literally")
            elif op != "set" and not value:
                r.problem(key, "is empty", "give the path to add, or remove it")
            else:
                good[name] = value
        tables[op] = good
    unset = []
    for i, name in enumerate(r.value(data, "env", "unset") or []):
        if not _ENV_NAME_RE.fullmatch(name):
            r.problem(f"env.unset[{i}]", f"'{name}' is not a variable name", "use letters, digits and _")
        else:
            unset.append(name)
    for name in tables["set"]:
        if name in unset:
            r.problem(f"env.set.{name}", f"{name} is both set and unset", "keep one of them")
        for op in ("prepend", "append"):
            if name in tables[op]:
                r.problem(f"env.{op}.{name}", f"{name} is also in env.set, which replaces it",
                          f"keep one of env.set.{name} and env.{op}.{name}")
    for op in ("prepend", "append"):
        for name in tables[op]:
            if name in unset:
                r.problem(f"env.{op}.{name}", f"{name} is also in env.unset", "keep one of them")
    return EnvSpec(tuple(tables["set"].items()), tuple(tables["prepend"].items()),
                   tuple(tables["append"].items()), tuple(unset))


def _one_of(words: tuple[str, ...]) -> str:
    """'"a", "b" or "c"'."""
    quoted = [f'"{w}"' for w in words]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else quoted[0]
