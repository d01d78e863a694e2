"""A profile's [provides]: the prefix and its ${VAR}s, the host paths and globs of each key, the
libraries (host paths or soname: entries found through the host's ld.so.cache) and the binds,
and the SONAME rules shared with [profile] replaces (never glibc; a replaced SONAME must be
provided). Host files are looked up through the reader (shim/site/host_files.py).
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
import re
from typing import Any

from shim.elf.ldcache import CACHE_FILE
from shim.knowledge.abi import aliases, glibc_sonames, is_glibc
from shim.site.binds import RELATIVE_DESTINATION, RELATIVE_SOURCE, ROOT, SHAPE, BindSpecError, parse_bind_spec
from shim.site.host_files import elf_soname, is_elf
from shim.site.profile_model import GLOB_CHARS, SONAME_PREFIX, BindEntry, LibrarySpec, PathSpec, Provides
from shim.site.profile_reader import ProfileReader

_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def check_soname(r: ProfileReader, key: str, soname: str) -> bool:
    if "/" in soname or ".so" not in soname:
        r.problem(key, f"'{soname}' is not a SONAME", "write the library's SONAME, e.g. libmpi.so.12")
        return False
    if is_glibc_file(soname):
        r.problem(key, f"{soname} is part of glibc", GLIBC_FIX)
        return False
    return True


def check_replaced_provided(r: ProfileReader, replaces: list[str], provides: Provides) -> None:
    """A replaced SONAME must be provided by one of the libraries, or nothing would stand in for it."""
    for i, soname in enumerate(replaces):
        if not any(_provides_soname(r, lib, soname) for lib in provides.libraries):
            r.problem(f"profile.replaces[{i}]", f"no entry in provides.libraries provides {soname}",
                      f"add its host path (or soname:{soname}) to provides.libraries, or remove it from replaces")


def _provides_soname(r: ProfileReader, lib: LibrarySpec, soname: str) -> bool:
    """What a library provides is its ELF SONAME (and the other names of its MPI role), whatever
    its file is called: a vendor's libmpi_vendor.so.12 with SONAME libmpi.so.12 provides that."""
    wanted = set(aliases(soname))
    if lib.soname:
        return lib.soname in wanted
    names = [posixpath.basename(m) for m in lib.matches] or [posixpath.basename(lib.path)]
    # Cheap first: libmpi.so.12.1.1 is the file behind SONAME libmpi.so.12; a glob may name either.
    if any(fnmatch.fnmatchcase(w, n) or n == w or n.startswith(w + ".") for n in names for w in wanted):
        return True
    return any(elf_soname(r.host.under(m)) in wanted for m in lib.matches)


GLIBC_FIX = "remove it: the image keeps its own C library (shim never injects glibc)"


def is_glibc_file(name: str) -> bool:
    """SONAMEs and file names of glibc: libc.so.6, libc.so (the linker script), libm-2.31.so, ld-2.31.so."""
    if is_glibc(name):
        return True
    base = re.sub(r"-2\.\d+\.so$", ".so", name)       # glibc < 2.34 named its files libX-2.NN.so
    m = re.match(r"(.*?\.so)(\.[0-9.]+)?$", base)
    if not m:
        return False
    base = m.group(1)
    return base == "ld.so" or any(s == base or s.startswith(base + ".") for s in glibc_sonames())


def _expand_prefix(r: ProfileReader, raw: str) -> tuple[str, bool]:
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
    if not os.path.isdir(r.host.under(value)):
        r.problem("provides.prefix", f"{value} is not a directory on this host", "install it, or fix the path",
                  host=True)
        return value, False
    return value, True


def _entry_path(r: ProfileReader, key: str, entry: str, prefix: str, has_prefix: bool,
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


def _host_path(r: ProfileReader, key: str, entry: str, prefix: tuple[str, bool, bool], want: str,
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


def parse_provides(r: ProfileReader, data: dict[str, Any]) -> Provides:
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


def _parse_library(r: ProfileReader, key: str, entry: str, prefix: tuple[str, bool, bool],
                   optional: bool) -> LibrarySpec | None:
    """One provides.libraries / provides.optional_libraries entry. A missing optional entry is
    kept with no matches, so that profile.replaces can still name what it would provide."""
    if entry.startswith(SONAME_PREFIX):
        soname = entry[len(SONAME_PREFIX):].strip()
        if not check_soname(r, key, soname):
            return None
        found_at = r.host.cache_lookup(soname)
        if found_at is None:
            r.problem(key, f"{soname} is not in this host's ld.so cache ({r.host.under(CACHE_FILE)})",
                      "install it and run ldconfig, or name its path instead", host=True)
            return LibrarySpec(key, entry, "", (), soname, optional=True) if optional else None
        return LibrarySpec(key, entry, found_at, (found_at,), soname, optional=optional)
    name = posixpath.basename(entry)
    if not any(c in name for c in GLOB_CHARS) and is_glibc_file(name):
        r.problem(key, f"{name} is part of glibc", GLIBC_FIX)
        return None
    found = _host_path(r, key, entry, prefix, "elf")
    if found is None:
        return None
    path, matches = found
    if optional:  # only the ELF files among what it names; none is fine
        matches = tuple(m for m in matches if is_elf(r.host.under(m)))
    # A glob is judged by what it matches: lib*.so* in an MPI's lib/ is fine, in /usr/lib64 it is not.
    glibc = next((posixpath.basename(m) for m in matches if is_glibc_file(posixpath.basename(m))), None)
    if glibc:
        r.problem(key, f"{entry} matches {glibc}, which is part of glibc", GLIBC_FIX)
        return None
    return LibrarySpec(key, entry, path, matches, optional=optional)


def _parse_bind(r: ProfileReader, key: str, entry: str) -> BindEntry | None:
    """SRC[:DST[:ro|rw]] (shim/site/binds.py, the grammar of shim.toml's launch.binds), absolute
    paths only; SRC must exist on this host."""
    try:
        parsed = parse_bind_spec(entry, None)
    except BindSpecError as e:
        # A '$' is told before anything but the shape: it is why the paths look wrong.
        r.problem(key, *(_dollar(entry) if e.reason != SHAPE and "$" in entry else _bind_worded(e, entry)))
        return None
    if "$" in entry:
        r.problem(key, *_dollar(entry))
        return None
    if not os.path.exists(r.host.under(parsed.src)):
        r.problem(key, f"bind source {parsed.src} does not exist on this host", "create it, or fix the path", host=True)
    return BindEntry(key, entry, parsed.src, parsed.dst, parsed.read_only)


def _dollar(entry: str) -> tuple[str, str]:
    return f"'{entry}' uses '$', which is expanded only in provides.prefix", "write the path literally"


def _bind_worded(e: BindSpecError, entry: str) -> tuple[str, str]:
    if e.reason == SHAPE:
        return f"'{entry}' is not SRC[:DST[:ro|rw]]", "e.g. /var/spool/slurmd:/var/spool/slurmd:ro"
    if e.reason in (RELATIVE_SOURCE, RELATIVE_DESTINATION):
        return f"'{entry}': source and destination must be absolute paths", "write them as /path"
    if e.reason == ROOT:
        return (f"'{entry}' would cover the container's root with a host directory",
                "bind it to a directory inside the container, e.g. /tmp:/data")
    return f"'{entry}': bad mode '{e.part}'", "use ro or rw"
