"""What the audit needs of the image, read in the planner's look at it (shim/launch/analysis.py):
whether the command runs under glibc's dynamic loader (a static binary, a musl image's program or
an emulated foreign-architecture one does not: LD_AUDIT means nothing there), and which MPI the
image itself carries, with its release, so that a finding can name it."""

from __future__ import annotations

import os
from typing import NamedTuple

from shim.elf.facts import elf_facts, symbol_string
from shim.elf.ldcache import CACHE_FILE, read_ld_cache
from shim.elf.rootpath import RootPaths, find_program
from shim.image.arch import UNKNOWN, host_arch
from shim.knowledge.abi import mpi_abi, mpi_probes, version_symbol

_MUSL = "ld-musl"       # the musl loader's name (/lib/ld-musl-x86_64.so.1): it has no LD_AUDIT
_SHEBANG = b"#!"


class AuditLook(NamedTuple):
    unavailable: str = ""   # why the app cannot be audited ("": it can)
    image_mpi: str = ""     # the image's own MPI ("MPICH 4.0.2"), "" when it has none known


def _program(paths: RootPaths, command: str, path: str) -> tuple[str, str] | None:
    """(container path, host path) of the program execve runs for `command`, a script's
    interpreter instead of the script; None when it is not found (the launch says so)."""
    found = find_program(paths, command, path)
    host = paths.regular_file(found) if found else None
    if not found or host is None:
        return None
    try:
        with open(host, "rb") as f:
            head = f.read(256)
    except OSError:
        return None
    if head.startswith(_SHEBANG):
        words = head[2:].split(b"\n", 1)[0].split()
        interp = words[0].decode("utf-8", "surrogateescape") if words else ""
        inner = paths.regular_file(interp) if interp.startswith("/") else None
        return (interp, inner) if inner else None
    return found, host


def unavailable(root: str, command: str, path: str, image_arch: str) -> str:
    """Why the command cannot be audited, "" when it can."""
    # "unknown": nothing to read the architecture from (no /bin/sh, as a distroless image): the
    # command's own ELF header decides below
    if image_arch and image_arch not in (host_arch(), UNKNOWN):
        return f"the image is for {image_arch} and runs under emulation on this {host_arch()} node"
    found = _program(RootPaths(root), command, path)
    if found is None:
        return ""
    where, host = found
    facts = elf_facts(host)
    if facts is None:
        return ""
    if facts.arch and facts.arch != host_arch():  # emulated, or 32-bit x86: no loader of this node's kind
        return f"{where} is a program for {facts.arch}, and the audit library one for this {host_arch()} node"
    if not facts.interp:
        return f"{where} is a static binary: no dynamic loader runs in it"
    if os.path.basename(facts.interp).startswith(_MUSL):
        return f"{where} runs under musl's loader ({facts.interp}), which has no LD_AUDIT"
    return ""


def image_mpi(root: str) -> str:
    """The image's own MPI as its loader would find it (ld.so.cache), with its release."""
    try:
        cache = read_ld_cache(os.path.join(root, CACHE_FILE.lstrip("/")))
    except (OSError, ValueError):
        return ""
    for name in mpi_probes():
        container = cache.lookup(name)
        if not container:
            continue
        abi, symbol = mpi_abi(name), version_symbol(name)
        host = RootPaths(root).regular_file(container)
        release = symbol_string(host, symbol) if host and symbol else None
        label = abi.label if abi else name
        return f"{label} {release}" if release else f"{label} ({container})"
    return ""


def audit_look(root: str, command: str, path: str, image_arch: str) -> AuditLook:
    return AuditLook(unavailable(root, command, path, image_arch), image_mpi(root))
