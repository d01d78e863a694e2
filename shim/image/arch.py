"""CPU architecture names: SIF codes, Go names, ELF headers and `uname -m`, from one table.

Go-style names (amd64, arm64, ...) are the canonical spelling everywhere in shim, because SIF
tools and Apptainer print them. This module is on the launch path: it reads ELF headers with
`struct` only.
"""

from __future__ import annotations

import os
import stat
import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass

from shim.errors import UsageError

UNKNOWN = "unknown"
UNKNOWN_SIF_CODE = "00"

ELF_MAGIC = b"\x7fELF"
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB, ELFDATA2MSB = 1, 2


@dataclass(frozen=True)
class Arch:
    go: str                    # Go GOARCH name, shim's canonical name
    sif_code: str              # two ASCII digits stored in SIF headers and partition extras
    e_machine: int             # ELF machine number
    elf_class: int             # ELFCLASS32 or ELFCLASS64
    endian: str                # "little" or "big" (sys.byteorder spelling)
    uname: tuple[str, ...]     # `uname -m` (and GNU triplet) spellings, unambiguous one first


# One row per architecture SIF knows (spec §1.3). mips/mips64 share `uname -m` names across
# endiannesses, so host_arch() also looks at the byte order.
ARCHES: tuple[Arch, ...] = (
    Arch("386", "01", 3, ELFCLASS32, "little", ("i686", "i386", "i486", "i586")),
    Arch("amd64", "02", 62, ELFCLASS64, "little", ("x86_64", "amd64")),
    Arch("arm", "03", 40, ELFCLASS32, "little", ("armv7l", "armv6l", "armv5tel", "armv8l", "arm")),
    Arch("arm64", "04", 183, ELFCLASS64, "little", ("aarch64", "arm64")),
    Arch("ppc64", "05", 21, ELFCLASS64, "big", ("ppc64",)),
    Arch("ppc64le", "06", 21, ELFCLASS64, "little", ("ppc64le",)),
    Arch("mips", "07", 8, ELFCLASS32, "big", ("mips",)),
    Arch("mipsle", "08", 8, ELFCLASS32, "little", ("mipsel", "mips")),
    Arch("mips64", "09", 8, ELFCLASS64, "big", ("mips64",)),
    Arch("mips64le", "10", 8, ELFCLASS64, "little", ("mips64el", "mips64")),
    Arch("s390x", "11", 22, ELFCLASS64, "big", ("s390x",)),
    Arch("riscv64", "12", 243, ELFCLASS64, "little", ("riscv64",)),
    Arch("loong64", "13", 258, ELFCLASS64, "little", ("loongarch64", "loong64")),
)

_BY_GO = {a.go: a for a in ARCHES}
_BY_CODE = {a.sif_code: a for a in ARCHES}
_BY_ELF = {(a.e_machine, a.elf_class, a.endian): a for a in ARCHES}

# Files whose ELF header tells a root filesystem's architecture, most telling first: the shell
# every image has, BusyBox images, then common coreutils and loaders.
ROOTFS_PROBES: tuple[str, ...] = (
    "bin/sh",
    "bin/busybox",
    "usr/bin/env",
    "bin/bash",
    "usr/bin/bash",
    "bin/ls",
    "usr/bin/ls",
    "bin/true",
    "usr/bin/true",
    "sbin/init",
    "usr/bin/python3",
)

_MAX_SYMLINKS = 40  # same limit as the kernel's path walk


def sif_code_to_arch(code: str) -> str:
    """SIF arch code ("02") -> Go name ("amd64"); "unknown" for "00" and anything unlisted."""
    a = _BY_CODE.get(code)
    return a.go if a else UNKNOWN


def normalize_arch(name: str) -> str | None:
    """A Go or `uname -m` spelling -> the Go name, None if not an architecture SIF knows."""
    if name in _BY_GO:
        return name
    for a in ARCHES:
        if name in a.uname:
            return a.go
    return None


def arch_to_sif_code(arch: str) -> str:
    """Go (or `uname -m`) name -> SIF code; "unknown" -> "00". Raises UsageError otherwise."""
    if arch == UNKNOWN:
        return UNKNOWN_SIF_CODE
    go = normalize_arch(arch)
    if go is None:
        raise UsageError(f"unknown architecture {arch!r}",
                         "use one of: " + ", ".join(a.go for a in ARCHES))
    return _BY_GO[go].sif_code


def host_arch() -> str:
    """Go-style name of this machine's architecture ("unknown" if not one SIF knows)."""
    machine = os.uname().machine
    candidates = [a for a in ARCHES if machine in a.uname]
    # `uname -m` says "mips64" for both byte orders; the running interpreter knows which.
    for a in candidates:
        if a.endian == sys.byteorder:
            return a.go
    return candidates[0].go if candidates else UNKNOWN


def arch_from_elf_header(data: bytes) -> str | None:
    """Go name of the machine an ELF file is built for, from its first 20 bytes; None if not ELF
    or an architecture SIF does not know."""
    if len(data) < 20 or data[:4] != ELF_MAGIC:
        return None
    elf_class, elf_data = data[4], data[5]
    if elf_data == ELFDATA2LSB:
        endian, fmt = "little", "<H"
    elif elf_data == ELFDATA2MSB:
        endian, fmt = "big", ">H"
    else:
        return None
    (e_machine,) = struct.unpack_from(fmt, data, 18)
    a = _BY_ELF.get((e_machine, elf_class, endian))
    return a.go if a else None


def resolve_links(rel: str, readlink: Callable[[str], str | None]) -> str | None:
    """Resolve the path `rel` of a root filesystem as if that root were "/": absolute symlink
    targets and ".." stop at the root, so an image's links can never lead to host files.
    readlink(relpath) gives a symlink's target, or None for anything else (or nothing).
    Returns the resolved relative path, or None on a symlink loop."""
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    done: list[str] = []
    hops = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if done:
                done.pop()
            continue
        target = readlink("/".join([*done, name]))
        if target is None:
            done.append(name)
            continue
        hops += 1
        if hops > _MAX_SYMLINKS:
            return None
        if target.startswith("/"):
            done = []
        parts = [p for p in target.split("/") if p not in ("", ".")] + parts
    return "/".join(done)


def arch_of_tree(readlink: Callable[[str], str | None],
                 read_head: Callable[[str], bytes]) -> str | None:
    """Go name of a root filesystem's architecture, from the first probe file that is an ELF
    executable; None if none is. The tree is seen through readlink (see resolve_links) and
    read_head(relpath) -> the file's first bytes, b"" if it is missing or not a regular file."""
    for probe in ROOTFS_PROBES:
        rel = resolve_links(probe, readlink)
        if rel:
            arch = arch_from_elf_header(read_head(rel))
            if arch:
                return arch
    return None


def arch_of_rootfs(path: str) -> str | None:
    """Go name of the architecture of the root filesystem directory at `path`, or None."""

    def readlink(rel: str) -> str | None:
        try:
            return os.readlink(os.path.join(path, rel))
        except OSError:  # not a link, or missing
            return None

    def read_head(rel: str) -> bytes:
        # O_NOFOLLOW: the links were followed inside the root already, so one swapped in
        # since is refused; O_NONBLOCK: a FIFO planted at a probe path must not hang us.
        try:
            fd = os.open(os.path.join(path, rel),
                         os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return b""
        try:
            return os.read(fd, 64) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
        except OSError:
            return b""
        finally:
            os.close(fd)

    return arch_of_tree(readlink, read_head)
