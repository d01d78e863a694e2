"""Reading one profile file: its schema (shim/site/schema.py reads every TOML file shim has) and
the reader that checks its values and host paths, collecting problems instead of stopping at the
first (a profile's `lint` reports them all; loading reports the first)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shim.site.host_files import HostFiles
from shim.site.profile_model import Problem
from shim.site.schema import Field, Schema, closest, table, typed_value

SCHEMA: Schema = {
    "profile": {
        "name": Field("string", 'name = "cray-mpich"'),
        "description": Field("string", 'description = "Cray MPICH for Slingshot"'),
        "kind": Field("string", 'kind = "mpi"'),
        "applies": Field("string", 'applies = "when-used"'),
        "replaces": Field("strings", 'replaces = ["libmpi.so.12"]'),
        "abi": Field("string", 'abi = "mpich"'),
        "conflicts": Field("strings", 'conflicts = ["openmpi"]'),
        "cuda_forward_compat": Field("string", 'cuda_forward_compat = "auto"'),
    },
    "provides": {
        "prefix": Field("string", 'prefix = "/opt/mpich"'),
        "libraries": Field("strings", 'libraries = ["lib/libmpi.so.12*", "soname:libfabric.so.1"]'),
        "optional_libraries": Field("strings", 'optional_libraries = ["soname:libnvidia-nvvm.so.4"]'),
        "plugin_dirs": Field("strings", 'plugin_dirs = ["lib/ucx"]'),
        "binaries": Field("strings", 'binaries = ["bin/mpichversion"]'),
        "config_files": Field("strings", 'config_files = ["/etc/libibverbs.d"]'),
        "devices": Field("strings", 'devices = ["/dev/infiniband/*"]'),
        "binds": Field("strings", 'binds = ["/var/spool/slurmd:/var/spool/slurmd:ro"]'),
    },
    "env": {
        "set": Field("string-table", 'set = { FI_PROVIDER = "cxi" }'),
        "prepend": Field("string-table", 'prepend = { PATH = "/opt/mpich/bin" }'),
        "append": Field("string-table", 'append = { MANPATH = "/opt/mpich/share/man" }'),
        "unset": Field("strings", 'unset = ["I_MPI_PMI_LIBRARY"]'),
    },
}


class ProfileReader:
    """Checks one file's values, collecting problems instead of stopping at the first."""

    def __init__(self, file: str, host_root: str, environ: Mapping[str, str]) -> None:
        self.file = file
        self.host = HostFiles(host_root)
        self.environ = environ
        self.problems: list[Problem] = []

    def problem(self, key: str, message: str, fix: str, host: bool = False) -> None:
        self.problems.append(Problem(self.file, key, message, fix, host))

    def value(self, data: dict[str, Any], table_name: str, key: str) -> Any:
        """data[table][key] if present and of its schema type, else None (problem recorded)."""
        value, problems = typed_value(data, SCHEMA, table_name, key)
        for dotted, message, fix in problems:
            self.problem(dotted, message, fix)
        return value

    def choice(self, data: dict[str, Any], key: str, choices: tuple[str, ...], required: bool) -> str:
        value = self.value(data, "profile", key)
        if value is None:
            if required and key not in table(data, "profile"):
                self.problem(f"profile.{key}", "is missing",
                             f'add {key} = "{choices[0]}" (one of: {", ".join(choices)})')
            return ""
        if value not in choices:
            close = closest(value, choices)
            hint = f"did you mean \"{close[0]}\"? " if close else ""
            self.problem(f"profile.{key}", f"'{value}' is not a known value", f"{hint}use one of: {', '.join(choices)}")
            return ""
        return value

    def host_matches(self, key: str, path: str, want: str) -> tuple[str, ...]:
        """Host paths `path` names under the host root, of the wanted sort (file, elf, exec, dir,
        any); a host problem when there are none or the one named is unsuitable."""
        found, issues = self.host.matches(path, want)
        for message, fix in issues:
            self.problem(key, message, fix, host=True)
        return found
