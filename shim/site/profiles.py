"""Injection profiles: what a site injects into containers, one TOML file each, and its validation.

Profiles live in <conf dir>/profiles/*.toml (conf dir as in shim.site.config); the reference for
the format is conf/profiles/README.md. Problems are values (Problem), one line each, naming the
file, the dotted key and the fix. Problems with the profile's own text make loading fail
(ConfigError); problems with this host's files (a library that is not there, an unset ${VAR} in
the prefix) only make the profile unavailable here, except for `lint`, which reports both.
"""

from __future__ import annotations

import difflib
import errno
import fnmatch
import glob
import os
import posixpath
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from shim.errors import ExitCode, ShimError
from shim.knowledge.abi import aliases, glibc_sonames, is_glibc, mpi_abi
from shim.site.config import ConfigError

PROFILES_DIR = "profiles"
KINDS = ("mpi", "fabric", "gpu", "rdma", "other")
APPLIES = ("always", "when-used", "on-request")
MPI_ABIS = ("mpich", "openmpi", "mpi-abi")
# cuda_forward_compat: may the image's CUDA forward-compatibility libcuda stand in for the host's
# (README, "CUDA driver profiles"). auto: when the GPUs are known to support it.
CUDA_FORWARD_COMPAT = ("auto", "always", "never")
SONAME_PREFIX = "soname:"
_LD_CACHE = "/etc/ld.so.cache"

# Table -> key -> (TOML type, an example line for the fix). "strings": array of strings;
# "string-table": a table of string values.
_SCHEMA: dict[str, dict[str, tuple[str, str]]] = {
    "profile": {
        "name": ("string", 'name = "cray-mpich"'),
        "description": ("string", 'description = "Cray MPICH for Slingshot"'),
        "kind": ("string", 'kind = "mpi"'),
        "applies": ("string", 'applies = "when-used"'),
        "replaces": ("strings", 'replaces = ["libmpi.so.12"]'),
        "abi": ("string", 'abi = "mpich"'),
        "conflicts": ("strings", 'conflicts = ["openmpi"]'),
        "cuda_forward_compat": ("string", 'cuda_forward_compat = "auto"'),
    },
    "provides": {
        "prefix": ("string", 'prefix = "/opt/mpich"'),
        "libraries": ("strings", 'libraries = ["lib/libmpi.so.12*", "soname:libfabric.so.1"]'),
        "optional_libraries": ("strings", 'optional_libraries = ["soname:libnvidia-nvvm.so.4"]'),
        "plugin_dirs": ("strings", 'plugin_dirs = ["lib/ucx"]'),
        "binaries": ("strings", 'binaries = ["bin/mpichversion"]'),
        "config_files": ("strings", 'config_files = ["/etc/libibverbs.d"]'),
        "devices": ("strings", 'devices = ["/dev/infiniband/*"]'),
        "binds": ("strings", 'binds = ["/var/spool/slurmd:/var/spool/slurmd:ro"]'),
    },
    "env": {
        "set": ("string-table", 'set = { FI_PROVIDER = "cxi" }'),
        "prepend": ("string-table", 'prepend = { PATH = "/opt/mpich/bin" }'),
        "append": ("string-table", 'append = { MANPATH = "/opt/mpich/share/man" }'),
        "unset": ("strings", 'unset = ["I_MPI_PMI_LIBRARY"]'),
    },
}
_TYPE_WORDS = {"string": "a string", "strings": "an array of strings", "boolean": "a boolean",
               "string-table": "a table of strings"}
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_GLOB_CHARS = ("*", "?", "[")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a profile file. `host`: it is about this host's files or environment
    (the profile is then unavailable here), not about the profile's own text."""

    file: str
    key: str        # dotted, e.g. provides.libraries[2]; "line N" for TOML syntax errors
    message: str
    fix: str
    host: bool = False

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: {self.message} ({self.fix})"


@dataclass(frozen=True)
class PathSpec:
    """A host path or glob from [provides]; `matches` are the host paths it named when loaded."""

    key: str
    entry: str                       # as written
    path: str                        # absolute, prefix applied (unexpanded when the prefix is unusable)
    matches: tuple[str, ...] = ()

    @property
    def is_glob(self) -> bool:
        return any(c in self.path for c in _GLOB_CHARS)


@dataclass(frozen=True)
class LibrarySpec(PathSpec):
    """A library entry: a host path or glob, or "soname:NAME" (`soname` set), found through the
    host's ld.so cache when the profile is loaded. `optional` (from provides.optional_libraries):
    missing on this host it has no matches instead of making the profile unavailable."""

    soname: str = ""
    optional: bool = False


@dataclass(frozen=True)
class BindEntry:
    key: str
    entry: str
    src: str
    dst: str
    read_only: bool = False


@dataclass(frozen=True)
class Provides:
    prefix: str = ""                 # expanded; "" when not given
    libraries: tuple[LibrarySpec, ...] = ()
    plugin_dirs: tuple[PathSpec, ...] = ()
    binaries: tuple[PathSpec, ...] = ()
    config_files: tuple[PathSpec, ...] = ()
    devices: tuple[PathSpec, ...] = ()
    binds: tuple[BindEntry, ...] = ()


@dataclass(frozen=True)
class EnvSpec:
    """Container environment changes; pairs keep the file's order (tuples keep Profile hashable)."""

    set: tuple[tuple[str, str], ...] = ()
    prepend: tuple[tuple[str, str], ...] = ()
    append: tuple[tuple[str, str], ...] = ()
    unset: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    name: str
    file: str
    kind: str
    applies: str
    description: str = ""
    replaces: tuple[str, ...] = ()
    abi: str = ""
    conflicts: tuple[str, ...] = ()
    cuda_forward_compat: str = "auto"   # kind = "gpu" only
    provides: Provides = field(default_factory=Provides)
    env: EnvSpec = field(default_factory=EnvSpec)
    unavailable: tuple[Problem, ...] = ()   # why it cannot be used on this host; empty: usable

    @property
    def stands_in_for(self) -> tuple[str, ...]:
        """The names the image may use that this profile replaces: `replaces` and, for MPI
        libraries, the other names of the same library in its ABI (abi.json: an MPICH-ABI
        libmpi.so.12 also replaces Debian's libmpich.so.12)."""
        return tuple(dict.fromkeys(n for r in self.replaces for n in aliases(r)))

    @property
    def available(self) -> bool:
        return not self.unavailable

    def why_unavailable(self) -> str:
        if not self.unavailable:
            return ""
        first = self.unavailable[0]
        more = len(self.unavailable) - 1
        return f"{first.key}: {first.message}" + (f" (and {more} more)" if more else "")

    def to_dict(self) -> dict[str, Any]:
        pv = self.provides
        return {
            "name": self.name, "file": self.file, "description": self.description, "kind": self.kind,
            "applies": self.applies, "abi": self.abi, "replaces": list(self.replaces),
            "conflicts": list(self.conflicts), "stands_in_for": list(self.stands_in_for),
            "cuda_forward_compat": self.cuda_forward_compat,
            "usable": self.available, "unavailable": [f"{p.key}: {p.message}" for p in self.unavailable],
            "provides": {
                "prefix": pv.prefix,
                "libraries": [{"entry": s.entry, "path": s.path, "soname": s.soname, "matches": list(s.matches),
                               "optional": s.optional} for s in pv.libraries],
                **{k: [{"entry": s.entry, "path": s.path, "matches": list(s.matches)} for s in getattr(pv, k)]
                   for k in ("plugin_dirs", "binaries", "config_files", "devices")},
                "binds": [{"src": b.src, "dst": b.dst, "read_only": b.read_only} for b in pv.binds],
            },
            "env": {"set": dict(self.env.set), "prepend": dict(self.env.prepend), "append": dict(self.env.append),
                    "unset": list(self.env.unset)},
        }


class Selection(NamedTuple):
    profile: Profile
    applies: bool
    why: str


@dataclass(frozen=True)
class ProfileSet:
    directory: str
    profiles: tuple[Profile, ...] = ()

    def names(self) -> list[str]:
        return [p.name for p in self.profiles]

    def get(self, name: str) -> Profile | None:
        return next((p for p in self.profiles if p.name == name), None)

    def select(self, requested: list[str], no_profiles: bool, image_sonames: set[str]) -> list[Selection]:
        """Every profile with whether it applies to this run and why, by the rules in
        conf/profiles/README.md. A requested profile displaces automatic ones it conflicts with."""
        wanted = list(dict.fromkeys(requested))
        chosen: list[Profile] = []
        for name in wanted:
            p = self.get(name)
            if p is None:
                known = ", ".join(self.names())
                raise ConfigError(f"unknown profile '{name}' requested",
                                  f"known profiles: {known}" if known
                                  else f"no profiles are configured in {self.directory}")
            if not p.available:
                raise ShimError(ExitCode.HOST, f"profile '{name}' is unavailable on this host: {p.why_unavailable()}",
                                f"fix {p.file}, or run without --profile {name}")
            chosen.append(p)
        for i, a in enumerate(chosen):
            for b in chosen[i + 1:]:
                reason = _conflict(a, b)
                if reason:
                    raise ConfigError(f"requested profiles '{a.name}' and '{b.name}' conflict: {reason}",
                                      "request only one of them")
        out: list[Selection] = []
        for p in self.profiles:
            if p.name in wanted:
                out.append(Selection(p, True, "requested with --profile"))
            elif not p.available:
                out.append(Selection(p, False, f"unavailable on this host: {p.why_unavailable()}"))
            elif no_profiles:
                out.append(Selection(p, False, "--no-profiles: only profiles requested by name apply"))
            elif p.applies == "on-request":
                out.append(Selection(p, False, f"applies on request only (--profile {p.name})"))
            elif blocker := next((r for r in chosen if _conflict(p, r)), None):
                out.append(Selection(p, False, f"displaced by requested profile '{blocker.name}': "
                                               f"{_conflict(p, blocker)}"))
            elif p.applies == "always":
                out.append(Selection(p, True, "applies always"))
            else:
                used = sorted(set(p.stands_in_for) & image_sonames)
                out.append(Selection(p, True, f"image uses {', '.join(used)}") if used else
                           Selection(p, False, f"image uses none of {', '.join(p.stands_in_for)}"))
        # load_profiles rejects conflicting automatic profiles; this guards sets built by hand.
        applied = [s.profile for s in out if s.applies]
        for i, a in enumerate(applied):
            for b in applied[i + 1:]:
                if reason := _conflict(a, b):
                    raise ConfigError(f"profiles '{a.name}' and '{b.name}' both apply and conflict: {reason}",
                                      f'set applies = "on-request" in {b.file}')
        return out


# ---------------------------------------------------------------------------------------- loading

def profile_files(conf_dir: str | os.PathLike[str]) -> list[Path]:
    """The profile files a configuration directory enables (not those under profiles/examples/)."""
    d = Path(conf_dir) / PROFILES_DIR
    if not d.is_dir():
        return []
    return sorted(f for f in d.glob("*.toml") if not f.name.startswith(".") and f.is_file())


def load_profiles(conf_dir: str | os.PathLike[str], host_root: str = "/",
                  environ: Mapping[str, str] | None = None) -> ProfileSet:
    """The enabled profiles; ConfigError on the first problem with their text, duplicate names
    or conflicting automatic profiles. Profiles missing host files load as unavailable."""
    env = os.environ if environ is None else environ
    profiles: list[Profile] = []
    problems: list[Problem] = []
    for path in profile_files(conf_dir):
        profile, found = _parse_file(str(path), host_root, env)
        problems += [p for p in found if not p.host]
        if profile is not None:
            profiles.append(profile)
    problems += _check_names(profiles)
    # Conflicts only among profiles usable here: one shared file can serve several node types.
    problems += _check_conflicts([p for p in profiles if p.available])
    if problems:
        first = problems[0]
        more = len(problems) - 1
        lint = f"; {more} more: run shimrun profiles lint {Path(conf_dir) / PROFILES_DIR}/*.toml" if more else ""
        raise ConfigError(f"{first.file}: {first.key}: {first.message}", first.fix + lint)
    return ProfileSet(str(Path(conf_dir) / PROFILES_DIR), tuple(profiles))


def lint_files(paths: Iterable[str | os.PathLike[str]], host_root: str = "/",
               environ: Mapping[str, str] | None = None) -> list[Problem]:
    """Every problem in these files, host files missing under host_root included, and between
    them (duplicate names, conflicts), as if they were a site's whole profiles/ directory."""
    env = os.environ if environ is None else environ
    profiles: list[Profile] = []
    problems: list[Problem] = []
    for path in paths:
        profile, found = _parse_file(str(path), host_root, env)
        problems += found
        if profile is not None:
            profiles.append(profile)
    return problems + _check_names(profiles) + _check_conflicts(profiles)


def _check_names(profiles: list[Profile]) -> list[Problem]:
    seen: dict[str, Profile] = {}
    out = []
    for p in profiles:
        if p.name in seen:
            out.append(Problem(p.file, "profile.name", f"name '{p.name}' is also used by {seen[p.name].file}",
                               "give each profile a unique name (the file name is the default)"))
        else:
            seen[p.name] = p
    return out


def _conflict(a: Profile, b: Profile) -> str:
    """Why a and b must not be injected together, or ""."""
    if b.name in a.conflicts:
        return f"'{a.name}' lists '{b.name}' in profile.conflicts"
    if a.name in b.conflicts:
        return f"'{b.name}' lists '{a.name}' in profile.conflicts"
    if a.kind == b.kind == "mpi":
        shared = sorted(set(a.replaces) & set(b.replaces))
        if shared:
            return f"both are MPI profiles replacing {', '.join(shared)}"
    return ""


def _check_conflicts(profiles: list[Profile]) -> list[Problem]:
    """Conflicting profiles may not both apply automatically: which one would win is undefined."""
    auto = [p for p in profiles if p.applies != "on-request"]
    out = []
    for i, b in enumerate(auto):
        for a in auto[:i]:
            if a.name != b.name and (reason := _conflict(a, b)):
                out.append(Problem(b.file, "profile.applies",
                                   f"'{b.name}' conflicts with '{a.name}' ({a.file}) and both apply automatically: "
                                   f"{reason}",
                                   'set applies = "on-request" in one of them; users pick it with --profile NAME'))
    return out


# ---------------------------------------------------------------------------------------- parsing

class _Reader:
    """Checks one file's values, collecting problems instead of stopping at the first."""

    def __init__(self, file: str, host_root: str, environ: Mapping[str, str]) -> None:
        self.file = file
        self.root = os.path.abspath(host_root)
        self.environ = environ
        self.problems: list[Problem] = []

    def problem(self, key: str, message: str, fix: str, host: bool = False) -> None:
        self.problems.append(Problem(self.file, key, message, fix, host))

    # --- typed values

    def value(self, data: dict[str, Any], table: str, key: str) -> Any:
        """data[table][key] if present and of its schema type, else None (problem recorded)."""
        section = data.get(table)
        if not isinstance(section, dict) or key not in section:
            return None
        value = section[key]
        want, example = _SCHEMA[table][key]
        dotted = f"{table}.{key}"
        ok = {"string": lambda v: isinstance(v, str), "boolean": lambda v: isinstance(v, bool),
              "strings": lambda v: isinstance(v, list), "string-table": lambda v: isinstance(v, dict)}[want](value)
        if not ok:
            self.problem(dotted, f"must be {_TYPE_WORDS[want]}, not {_toml_type(value)}", f"write it as {example}")
            return None
        if want == "strings":
            good = []
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    self.problem(f"{dotted}[{i}]", f"must be a string, not {_toml_type(item)}",
                                 f"quote it, e.g. {example}")
                elif not item.strip():
                    self.problem(f"{dotted}[{i}]", "is empty", "remove it or fill it in")
                else:
                    good.append(item)
            return good
        if want == "string-table":
            good_t = {}
            for name, item in value.items():
                if not isinstance(item, str):
                    self.problem(f"{dotted}.{name}", f"must be a string, not {_toml_type(item)}",
                                 f'quote it: {name} = "{item}"')
                else:
                    good_t[name] = item
            return good_t
        return value

    def choice(self, data: dict[str, Any], key: str, choices: tuple[str, ...], required: bool) -> str:
        value = self.value(data, "profile", key)
        if value is None:
            if required and key not in _table(data, "profile"):
                self.problem(f"profile.{key}", "is missing",
                             f'add {key} = "{choices[0]}" (one of: {", ".join(choices)})')
            return ""
        if value not in choices:
            close = _closest(value, choices)
            hint = f"did you mean \"{close[0]}\"? " if close else ""
            self.problem(f"profile.{key}", f"'{value}' is not a known value", f"{hint}use one of: {', '.join(choices)}")
            return ""
        return value

    # --- host paths

    def under(self, path: str) -> str:
        return path if self.root == "/" else self.root + path

    def host_matches(self, key: str, path: str, want: str) -> tuple[str, ...]:
        """Host paths `path` names under the host root, of the wanted sort (file, elf, exec, dir,
        any); a problem marked host when there are none or the one named is unsuitable."""
        if any(c in path for c in _GLOB_CHARS):
            found = sorted(glob.glob(path if self.root == "/" else glob.escape(self.root) + path))
            if not found:
                self.problem(key, f"{path} matches nothing on this host", "install it, or fix the pattern", host=True)
                return ()
            good = [f for f in found if _is_a(f, want)]
            if not good:
                self.problem(key, f"{path} matches {len(found)} entries but no {_SORT_WORDS[want]}",
                             "fix the pattern", host=True)
                return ()
            if want == "elf":
                for f in good:
                    if not _is_elf(f):
                        self.problem(key, f"{self.strip(f)} (from {path}) is not an ELF file",
                                     "narrow the pattern to shared libraries, e.g. lib*.so.*", host=True)
            return tuple(self.strip(f) for f in good)
        real = self.under(path)
        if not os.path.exists(real):
            self.problem(key, *_missing(path, real), host=True)
            return ()
        if not _is_a(real, want):
            fix = ("list directories in provides.plugin_dirs, or name the files with a glob such as DIR/lib*.so*"
                   if want == "elf" and os.path.isdir(real) else "fix the path")
            self.problem(key, f"{path} is not {_SORT_ONE[want]}", fix, host=True)
            return ()
        if want == "elf" and not _is_elf(real):
            self.problem(key, f"{path} is not an ELF file (a linker script or text?)",
                         "name the shared library itself, e.g. libfoo.so.1", host=True)
            return ()
        return (path,)

    def strip(self, real: str) -> str:
        return real if self.root == "/" else real[len(self.root):]


def _missing(path: str, real: str) -> tuple[str, str]:
    """(message, fix) for a host path that does not lead to anything: absent, a dangling
    symlink, or a symlink loop."""
    if not os.path.lexists(real):
        return f"{path} does not exist on this host", "install it, or fix the path"
    try:
        os.stat(real)
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{path} is a symlink loop (too many levels of symbolic links)", "fix the links, or the path"
    try:
        target = os.readlink(real)
    except OSError:
        target = "?"
    return f"{path} is a dangling symlink (to {target}, which does not exist)", "install its target, or fix the link"


_SORT_WORDS = {"file": "files", "elf": "files", "exec": "executables", "dir": "directories", "any": "entries"}
_SORT_ONE = {"file": "a file", "elf": "a file", "exec": "an executable file", "dir": "a directory", "any": "there"}


def _is_a(path: str, want: str) -> bool:
    if want in ("file", "elf"):
        return os.path.isfile(path)
    if want == "exec":
        return os.path.isfile(path) and os.stat(path).st_mode & 0o111 != 0
    if want == "dir":
        return os.path.isdir(path)
    return os.path.exists(path)


def _is_elf(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


def _closest(word: str, known: Iterable[str]) -> list[str]:
    """The known word a typo most likely meant: difflib's pick, else one it abbreviates (env)."""
    known = list(known)
    return (difflib.get_close_matches(word, known, n=1)
            or [k for k in known if len(k) >= 3 and word.lower().startswith(k)][:1])


def _toml_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _read(r: _Reader) -> dict[str, Any] | None:
    try:
        text = Path(r.file).read_text()
    except OSError as e:
        r.problem("file", f"cannot read: {e.strerror}", "check the path and its permissions")
        return None
    except UnicodeDecodeError:
        r.problem("file", "is not UTF-8 text", "save it as UTF-8")
        return None
    try:
        return tomllib.loads(text)
    except RecursionError:
        r.problem("toml", "arrays or tables nested too deeply", "fix the TOML: a profile needs two levels")
        return None
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        r.problem(f"line {m.group(1)}" if m else "toml", re.sub(r"\s*\(at line.*\)$", "", str(e)),
                  "fix the TOML syntax")
        return None


def _check_keys(r: _Reader, data: dict[str, Any]) -> None:
    """Unknown tables and keys, with the closest known one (or its right table) as the fix."""
    owner = {key: table for table, keys in _SCHEMA.items() for key in keys}
    for table, section in data.items():
        if table not in _SCHEMA:
            if not isinstance(section, dict) and table in owner:
                r.problem(table, f"key {table} is outside any table", f"put it under [{owner[table]}]")
                continue
            close = _closest(table, _SCHEMA)
            r.problem(table, f"unknown table [{table}]",
                      f"did you mean [{close[0]}]?" if close else f"known tables: {', '.join(_SCHEMA)}")
            continue
        if not isinstance(section, dict):
            r.problem(table, f"must be a table, not {_toml_type(section)}", f"write it as [{table}] with keys below")
            continue
        for key in section:
            if key in _SCHEMA[table] or (table, key) == ("profile", "glibc_replacement"):  # removed: own line
                continue
            if key in owner:
                r.problem(f"{table}.{key}", f"{key} belongs in [{owner[key]}], not [{table}]",
                          f"move it to [{owner[key]}]")
                continue
            if table == "env" and isinstance(section[key], str):
                r.problem(f"env.{key}", "unknown key: variables go in env.set, env.prepend or env.append",
                          f'write set = {{ {key} = "..." }} under [env]')
                continue
            # The closest key of this table, else of any table (a misspelt key in the wrong table).
            close = _closest(key, _SCHEMA[table]) or _closest(key, owner)
            r.problem(f"{table}.{key}", "unknown key",
                      f"did you mean {owner[close[0]]}.{close[0]}?" if close
                      else f"known keys in [{table}]: {', '.join(_SCHEMA[table])}")


def _parse_file(file: str, host_root: str, environ: Mapping[str, str]) -> tuple[Profile | None, list[Problem]]:
    r = _Reader(file, host_root, environ)
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
    if "glibc_replacement" in _table(data, "profile"):
        r.problem("profile.glibc_replacement", "is not supported: shim never injects glibc (a host C library "
                  "needs the host's loader, locales and NSS modules, which the image does not have)",
                  "remove it; the image keeps its own C library")
    replaces = [s for i, s in enumerate(r.value(data, "profile", "replaces") or [])
                if _check_soname(r, f"profile.replaces[{i}]", s)]
    conflicts = r.value(data, "profile", "conflicts") or []
    for i, other in enumerate(conflicts):
        if other == name:
            r.problem(f"profile.conflicts[{i}]", "a profile cannot conflict with itself", "remove it")

    if kind == "mpi" and not abi and "abi" not in _table(data, "profile"):
        r.problem("profile.abi", "is missing (kind = \"mpi\" needs it)",
                  f'add abi = "mpich", "openmpi" or "mpi-abi" to match {", ".join(replaces) or "the image MPI"}')
    elif kind and kind != "mpi" and "abi" in _table(data, "profile"):
        r.problem("profile.abi", f'only MPI profiles have an ABI, this one is kind = "{kind}"',
                  'remove abi, or set kind = "mpi"')
    if abi and kind == "mpi":
        _check_abi(r, abi, replaces)
    forward_compat = r.choice(data, "cuda_forward_compat", CUDA_FORWARD_COMPAT, required=False) or "auto"
    if kind and kind != "gpu" and "cuda_forward_compat" in _table(data, "profile"):
        r.problem("profile.cuda_forward_compat", f'only GPU profiles inject libcuda, this one is kind = "{kind}"',
                  'remove cuda_forward_compat, or set kind = "gpu"')
    if applies == "when-used" and not replaces:
        r.problem("profile.applies", '"when-used" needs the SONAMEs it replaces, and profile.replaces is empty',
                  'list them in profile.replaces, or use applies = "on-request"')

    provides = _parse_provides(r, data)
    if not any(p.key.startswith(("provides.libraries", "provides.optional_libraries")) and not p.host
               for p in r.problems):
        _check_replaced_provided(r, replaces, provides)
    env = _parse_env(r, data)
    profile = Profile(name=name, file=file, kind=kind, applies=applies, description=description,
                      replaces=tuple(replaces), abi=abi, conflicts=tuple(conflicts),
                      cuda_forward_compat=forward_compat, provides=provides, env=env,
                      unavailable=tuple(p for p in r.problems if p.host))
    return profile, r.problems


def _table(data: dict[str, Any], table: str) -> dict[str, Any]:
    section = data.get(table)
    return section if isinstance(section, dict) else {}


def _check_soname(r: _Reader, key: str, soname: str) -> bool:
    if "/" in soname or ".so" not in soname:
        r.problem(key, f"'{soname}' is not a SONAME", "write the library's SONAME, e.g. libmpi.so.12")
        return False
    if _is_glibc_file(soname):
        r.problem(key, f"{soname} is part of glibc", _GLIBC_FIX)
        return False
    return True


def _check_abi(r: _Reader, abi: str, replaces: list[str]) -> None:
    for i, soname in enumerate(replaces):
        found = mpi_abi(soname)
        if found is not None and found.family != abi:
            r.problem(f"profile.replaces[{i}]", f"{soname} is {found.label}, but abi = \"{abi}\"",
                      f'set abi = "{found.family}", or remove {soname} from replaces')


def _check_replaced_provided(r: _Reader, replaces: list[str], provides: Provides) -> None:
    """A replaced SONAME must be provided by one of the libraries, or nothing would stand in for it."""
    for i, soname in enumerate(replaces):
        if not any(_provides_soname(r, lib, soname) for lib in provides.libraries):
            r.problem(f"profile.replaces[{i}]", f"no entry in provides.libraries provides {soname}",
                      f"add its host path (or soname:{soname}) to provides.libraries, or remove it from replaces")


def _provides_soname(r: _Reader, lib: LibrarySpec, soname: str) -> bool:
    """What a library provides is its ELF SONAME (and the other names of its MPI role), whatever
    its file is called: a vendor's libmpi_vendor.so.12 with SONAME libmpi.so.12 provides that."""
    wanted = set(aliases(soname))
    if lib.soname:
        return lib.soname in wanted
    names = [posixpath.basename(m) for m in lib.matches] or [posixpath.basename(lib.path)]
    # Cheap first: libmpi.so.12.1.1 is the file behind SONAME libmpi.so.12; a glob may name either.
    if any(fnmatch.fnmatchcase(w, n) or n == w or n.startswith(w + ".") for n in names for w in wanted):
        return True
    return any(_elf_soname(r.under(m)) in wanted for m in lib.matches)


def _elf_soname(path: str) -> str | None:
    from shim.elf.cache import FactsCache  # per-user facts cache: a warm load reads no ELF

    try:
        facts = FactsCache().get(path)
    except ShimError:
        return None
    return facts.soname if facts else None


_GLIBC_FIX = "remove it: the image keeps its own C library (shim never injects glibc)"


def _is_glibc_file(name: str) -> bool:
    """SONAMEs and file names of glibc: libc.so.6, libc.so (the linker script), libm-2.31.so, ld-2.31.so."""
    if is_glibc(name):
        return True
    base = re.sub(r"-2\.\d+\.so$", ".so", name)       # glibc < 2.34 named its files libX-2.NN.so
    m = re.match(r"(.*?\.so)(\.[0-9.]+)?$", base)
    if not m:
        return False
    base = m.group(1)
    return base == "ld.so" or any(s == base or s.startswith(base + ".") for s in glibc_sonames())


def _expand_prefix(r: _Reader, raw: str) -> tuple[str, bool]:
    """(prefix with ${VAR} replaced from the environment, usable). Only ${NAME} is expanded."""
    leftover = _VAR_RE.sub("", raw)
    if "$" in leftover:
        r.problem("provides.prefix", f"'{raw}' has a '$' that is not ${{NAME}}", "write variables as ${NAME}")
        return raw, False
    missing = [v for v in _VAR_RE.findall(raw) if not r.environ.get(v)]
    if missing:
        r.problem("provides.prefix", f"${{{missing[0]}}} is not set in the environment",
                  f"set {missing[0]} (e.g. load its module) or write the path literally", host=True)
        return raw, False
    value = _VAR_RE.sub(lambda m: r.environ[m.group(1)], raw)
    if not value.startswith("/"):
        r.problem("provides.prefix", f"'{value}' is not an absolute path", "write it as /path", host=value != raw)
        return value, False
    value = posixpath.normpath(value)
    if not os.path.isdir(r.under(value)):
        r.problem("provides.prefix", f"{value} is not a directory on this host", "install it, or fix the path",
                  host=True)
        return value, False
    return value, True


def _entry_path(r: _Reader, key: str, entry: str, prefix: str, has_prefix: bool,
                relative_ok: bool = True) -> str | None:
    if "$" in entry:
        r.problem(key, f"'{entry}' uses '$', which is expanded only in provides.prefix",
                  "move the variable part into provides.prefix and write this relative to it")
        return None
    if entry.startswith("/"):
        return posixpath.normpath(entry)
    if not relative_ok:
        r.problem(key, f"'{entry}' is not an absolute path", "write it as /path")
        return None
    if not has_prefix:
        r.problem(key, f"'{entry}' is relative and there is no provides.prefix",
                  "make it absolute or set provides.prefix")
        return None
    return posixpath.normpath(posixpath.join(prefix, entry))


def _host_path(r: _Reader, key: str, entry: str, prefix: tuple[str, bool, bool], want: str,
               relative_ok: bool = True) -> tuple[str, tuple[str, ...]] | None:
    """(absolute path, host matches) for one [provides] entry; None when it is unusable as written.
    prefix: (expanded, given, usable)."""
    value, given, usable = prefix
    path = _entry_path(r, key, entry, value, given, relative_ok)
    if path is None:
        return None
    if key.startswith("provides.devices") and not path.startswith("/dev/"):
        r.problem(key, f"{path} is not under /dev", "list device nodes here; other paths go in provides.binds")
        return None
    # A relative entry under an unusable prefix was reported through the prefix already.
    if not usable and not entry.startswith("/"):
        return path, ()
    return path, r.host_matches(key, path, want)


def _parse_provides(r: _Reader, data: dict[str, Any]) -> Provides:
    raw_prefix = r.value(data, "provides", "prefix")
    value, usable = ("", True) if raw_prefix is None else _expand_prefix(r, raw_prefix)
    prefix = (value, raw_prefix is not None, usable)

    libraries = []
    for name in ("libraries", "optional_libraries"):
        optional = name == "optional_libraries"
        for i, entry in enumerate(r.value(data, "provides", name) or []):
            key = f"provides.{name}[{i}]"
            before = len(r.problems)
            spec = _parse_library(r, key, entry, prefix, optional)
            if optional:
                # Absent (or unusable) on this host is what optional means: not a problem, only
                # nothing to inject. Problems with the text itself stay.
                r.problems[before:] = [p for p in r.problems[before:] if not p.host]
            if spec is not None:
                libraries.append(spec)

    def specs(name: str, want: str, relative_ok: bool = True) -> tuple[PathSpec, ...]:
        out = []
        for i, entry in enumerate(r.value(data, "provides", name) or []):
            key = f"provides.{name}[{i}]"
            found = _host_path(r, key, entry, prefix, want, relative_ok)
            if found is not None:
                out.append(PathSpec(key, entry, *found))
        return tuple(out)

    binds = (_parse_bind(r, f"provides.binds[{i}]", e) for i, e in enumerate(r.value(data, "provides", "binds") or []))
    return Provides(prefix=value, libraries=tuple(libraries), plugin_dirs=specs("plugin_dirs", "dir"),
                    binaries=specs("binaries", "exec"), config_files=specs("config_files", "any"),
                    devices=specs("devices", "any", relative_ok=False), binds=tuple(b for b in binds if b))


def _parse_library(r: _Reader, key: str, entry: str, prefix: tuple[str, bool, bool],
                   optional: bool) -> LibrarySpec | None:
    """One provides.libraries / provides.optional_libraries entry. A missing optional entry is
    kept with no matches, so that profile.replaces can still name what it would provide."""
    if entry.startswith(SONAME_PREFIX):
        soname = entry[len(SONAME_PREFIX):].strip()
        if not _check_soname(r, key, soname):
            return None
        found_at = _host_cache_lookup(r, soname)
        if found_at is None:
            r.problem(key, f"{soname} is not in this host's ld.so cache ({r.under(_LD_CACHE)})",
                      "install it and run ldconfig, or name its path instead", host=True)
            return LibrarySpec(key, entry, "", (), soname, optional=True) if optional else None
        return LibrarySpec(key, entry, found_at, (found_at,), soname, optional=optional)
    name = posixpath.basename(entry)
    if not any(c in name for c in _GLOB_CHARS) and _is_glibc_file(name):
        r.problem(key, f"{name} is part of glibc", _GLIBC_FIX)
        return None
    found = _host_path(r, key, entry, prefix, "elf")
    if found is None:
        return None
    path, matches = found
    if optional:  # only the ELF files among what it names; none is fine
        matches = tuple(m for m in matches if _is_elf(r.under(m)))
    # A glob is judged by what it matches: lib*.so* in an MPI's lib/ is fine, in /usr/lib64 it is not.
    glibc = next((posixpath.basename(m) for m in matches if _is_glibc_file(posixpath.basename(m))), None)
    if glibc:
        r.problem(key, f"{entry} matches {glibc}, which is part of glibc", _GLIBC_FIX)
        return None
    return LibrarySpec(key, entry, path, matches, optional=optional)


def _host_cache_lookup(r: _Reader, soname: str) -> str | None:
    """Where the host's ld.so takes `soname` from (its ld.so.cache, native entries only): the path
    in host terms (the real file, so the profile names what will be bound)."""
    path = os.path.join(r.root, _LD_CACHE.lstrip("/"))
    try:
        st = os.stat(path)
    except OSError:
        return None
    found = _read_host_cache(path, st.st_mtime_ns, st.st_size).lookup(soname, _native_cache_flags() or None)
    if found is None:
        return None
    if r.root == "/":
        real = os.path.realpath(found)
    else:  # symlinks inside a host root resolve within it
        from shim.elf.rootpath import RootPaths

        real = r.under(RootPaths(r.root).resolve(found) or found)
    return r.strip(real) if os.path.isfile(real) and _is_elf(real) else None


@cache
def _read_host_cache(path: str, _mtime_ns: int, _size: int):
    """Read once per load of several soname: entries (the stat values key the memo)."""
    from shim.elf.ldcache import read_ld_cache

    return read_ld_cache(path)


def _native_cache_flags() -> tuple[int, ...]:
    from shim.elf.layout import lib_arch
    from shim.image.arch import host_arch

    return lib_arch(host_arch()).cache_flags


def _parse_bind(r: _Reader, key: str, entry: str) -> BindEntry | None:
    """SRC[:DST[:ro|rw]], as in shim.toml's launch.binds; SRC must exist on this host."""
    parts = entry.split(":")
    if len(parts) > 3 or not parts[0]:
        r.problem(key, f"'{entry}' is not SRC[:DST[:ro|rw]]", "e.g. /var/spool/slurmd:/var/spool/slurmd:ro")
        return None
    if "$" in entry:
        r.problem(key, f"'{entry}' uses '$', which is expanded only in provides.prefix", "write the path literally")
        return None
    src = parts[0]
    dst = parts[1] if len(parts) > 1 and parts[1] else src
    mode = parts[2] if len(parts) > 2 else "rw"
    if not src.startswith("/") or not dst.startswith("/"):
        r.problem(key, f"'{entry}': source and destination must be absolute paths", "write them as /path")
        return None
    if mode not in ("ro", "rw"):
        r.problem(key, f"'{entry}': bad mode '{mode}'", "use ro or rw")
        return None
    src, dst = posixpath.normpath(src), posixpath.normpath(dst)
    if not os.path.exists(r.under(src)):
        r.problem(key, f"bind source {src} does not exist on this host", "create it, or fix the path", host=True)
    return BindEntry(key, entry, src, dst, mode == "ro")


def _parse_env(r: _Reader, data: dict[str, Any]) -> EnvSpec:
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
