"""What the dynamic loader and the ABI checks need to know about one ELF file.

elf_facts() reads the ELF header, the program headers (PT_INTERP, PT_DYNAMIC, the GNU property
note), the dynamic segment and the GNU version definition/requirement tables, and nothing else:
in particular never the symbol tables, which are the bulk of a big library. dynamic_symbols() is
the separate, costlier reader of .dynsym for symbol-coverage checks.

pyelftools is imported inside the functions: it costs tens of milliseconds, and a warm run whose
facts come from the cache (shim.elf.cache) must not pay it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from shim.errors import ImageError
from shim.image.arch import ELF_MAGIC, arch_from_elf_header

VER_FLG_BASE = 0x1  # the version definition naming the file itself
VER_FLG_WEAK = 0x2  # a requirement ld.so only warns about when unmet
DF_1_NODEFLIB = 0x800  # ignore ld.so.cache and the default directories for this object's needs

NT_GNU_PROPERTY_TYPE_0 = 5
GNU_PROPERTY_X86_ISA_1_NEEDED = 0xC0008002
_MAX_NOTE_BYTES = 1 << 16  # property notes are a few dozen bytes; refuse to read a huge bogus one


@dataclass(frozen=True)
class VersionNeed:
    """The symbol versions an object requires from one needed file (.gnu.version_r)."""

    file: str
    versions: tuple[tuple[str, bool], ...]  # (version name, weak)


@dataclass(frozen=True)
class ElfFacts:
    path: str
    elf_class: int             # 32 or 64
    machine: str               # pyelftools' e_machine name, e.g. "EM_X86_64"
    byte_order: str            # "little" or "big"
    osabi: str                 # e.g. "ELFOSABI_SYSV"
    elf_type: str              # "ET_DYN", "ET_EXEC", ...
    arch: str | None           # shim's Go-style name ("amd64"), None if not one SIF knows
    interp: str | None         # PT_INTERP
    is_dynamic: bool           # has PT_DYNAMIC
    soname: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]
    nodeflib: bool             # DF_1_NODEFLIB
    version_defs: tuple[str, ...]  # defined versions, without the base (file name) definition
    version_needs: tuple[VersionNeed, ...]
    isa_level: int | None      # x86-64 ISA level needed (1 = baseline ... 4 = v4), None if unmarked

    @property
    def is_program(self) -> bool:
        """An executable: ET_EXEC, or a PIE (ET_DYN with a PT_INTERP). A shared library may have
        a PT_INTERP too (glibc's libc.so.6 runs): callers that tell libraries apart ask first."""
        return self.elf_type == "ET_EXEC" or (self.elf_type == "ET_DYN" and bool(self.interp))

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("needed", "rpath", "runpath", "version_defs"):
            d[k] = list(d[k])
        d["version_needs"] = [{"file": n.file, "versions": [[v, w] for v, w in n.versions]}
                              for n in self.version_needs]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ElfFacts:
        """Inverse of to_dict; raises KeyError/TypeError/ValueError on a malformed dict."""
        needs = tuple(VersionNeed(str(n["file"]), tuple((str(v), bool(w)) for v, w in n["versions"]))
                      for n in d["version_needs"])
        return cls(
            path=str(d["path"]), elf_class=int(d["elf_class"]), machine=str(d["machine"]),
            byte_order=str(d["byte_order"]), osabi=str(d["osabi"]), elf_type=str(d["elf_type"]),
            arch=_opt_str(d["arch"]), interp=_opt_str(d["interp"]), is_dynamic=bool(d["is_dynamic"]),
            soname=_opt_str(d["soname"]), needed=_strs(d["needed"]), rpath=_strs(d["rpath"]),
            runpath=_strs(d["runpath"]), nodeflib=bool(d["nodeflib"]),
            version_defs=_strs(d["version_defs"]), version_needs=needs,
            isa_level=None if d["isa_level"] is None else int(d["isa_level"]),
        )


@dataclass(frozen=True)
class DynSymbols:
    defined: frozenset[str]    # exported (non-local, defined) dynamic symbols
    undefined: frozenset[str]  # dynamic symbols the object expects another object to define


def _opt_str(v: Any) -> str | None:
    return None if v is None else str(v)


def _strs(v: Iterable[Any]) -> tuple[str, ...]:
    if isinstance(v, str):
        raise TypeError("expected a list of strings")
    return tuple(str(x) for x in v)


def _split_path_list(value: str) -> tuple[str, ...]:
    # Empty elements are kept: ld.so reads them as the current directory, the loader decides.
    return tuple(value.split(":"))


def is_elf(path: str | os.PathLike[str]) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def elf_facts(path: str | os.PathLike[str]) -> ElfFacts | None:
    """The facts of the ELF file at `path`; None when it is not an ELF file (or cannot be read).
    Raises ImageError for a file that starts like ELF but is malformed."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if head[:4] != ELF_MAGIC:
                return None  # decided before importing pyelftools: a non-ELF file costs no import
            try:
                return _read_facts(os.fspath(path), f, head)
            except Exception as e:  # pyelftools raises many exception types on malformed input
                raise ImageError(f"{os.fspath(path)}: malformed ELF file ({type(e).__name__}: {e})",
                                 "the file is truncated or corrupt") from e
    except OSError:  # missing, a directory, unreadable
        return None


class _Malformed(ValueError):
    pass


def _read_facts(path: str, f: BinaryIO, head: bytes) -> ElfFacts:
    # pyelftools' Segment/Section objects would parse every section header (and the whole
    # .hash table) as soon as PT_DYNAMIC is touched; parsing its structs at the offsets ld.so
    # itself uses (program headers, then dynamic tags) reads only what is needed.
    from elftools.common.utils import parse_cstring_from_stream, struct_parse
    from elftools.elf.elffile import ELFFile

    elf = ELFFile(f)
    st = elf.structs
    size = elf.stream_len

    phoff, phentsize, phnum = elf["e_phoff"], elf["e_phentsize"], elf.num_segments()
    if phnum and (phentsize < st.Elf_Phdr.sizeof() or phoff + phnum * phentsize > size):
        raise _Malformed("program headers lie outside the file")
    phdrs = [struct_parse(st.Elf_Phdr, f, phoff + i * phentsize) for i in range(phnum)]
    for p in phdrs:
        if p["p_filesz"] and p["p_offset"] + p["p_filesz"] > size:
            raise _Malformed(f"{p['p_type']} segment extends past the end of the file")
    loads = [(p["p_vaddr"], p["p_offset"], p["p_filesz"]) for p in phdrs if p["p_type"] == "PT_LOAD"]

    def file_offset(addr: int) -> int:
        for vaddr, offset, filesz in loads:
            if vaddr <= addr < vaddr + filesz:
                return addr - vaddr + offset
        raise _Malformed(f"address {addr:#x} is in no loaded segment")

    def read(offset: int, n: int) -> bytes:
        if n > _MAX_NOTE_BYTES or offset + n > size:
            return b""
        f.seek(offset)
        return f.read(n)

    interp = None
    dyn_phdr = None
    props: list[bytes] = []
    notes: list[bytes] = []
    for p in phdrs:
        ptype = p["p_type"]
        if ptype == "PT_INTERP":
            interp = read(p["p_offset"], p["p_filesz"]).split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
        elif ptype == "PT_DYNAMIC":
            dyn_phdr = p
        elif ptype == "PT_GNU_PROPERTY":
            props.append(read(p["p_offset"], p["p_filesz"]))
        elif ptype == "PT_NOTE":
            notes.append(read(p["p_offset"], p["p_filesz"]))

    tags: list[tuple[str | int, int]] = []
    if dyn_phdr is not None:
        dynsize = st.Elf_Dyn.sizeof()
        off, end = dyn_phdr["p_offset"], min(dyn_phdr["p_offset"] + dyn_phdr["p_filesz"], size)
        while off + dynsize <= end:
            d = struct_parse(st.Elf_Dyn, f, off)
            if d["d_tag"] == "DT_NULL":
                break
            tags.append((d["d_tag"], d["d_val"]))
            off += dynsize
    first: dict[str | int, int] = {}
    for t, v in tags:
        first.setdefault(t, v)

    strtab = file_offset(first["DT_STRTAB"]) if "DT_STRTAB" in first else None
    strsz = first.get("DT_STRSZ", size)

    def string(index: int) -> str:
        if strtab is None or index >= strsz:
            raise _Malformed(f"string {index} is outside the dynamic string table")
        raw = parse_cstring_from_stream(f, strtab + index)
        return (raw or b"").decode("utf-8", "surrogateescape")

    soname = None
    needed: list[str] = []
    rpath: tuple[str, ...] = ()
    runpath: tuple[str, ...] = ()
    nodeflib = False
    for t, v in tags:
        if t == "DT_NEEDED":
            needed.append(string(v))
        elif t == "DT_SONAME":
            soname = string(v)
        elif t == "DT_RPATH":
            rpath += _split_path_list(string(v))
        elif t == "DT_RUNPATH":
            runpath += _split_path_list(string(v))
        elif t == "DT_FLAGS_1":
            nodeflib = bool(v & DF_1_NODEFLIB)

    version_defs: list[str] = []
    if "DT_VERDEF" in first:
        pos = file_offset(first["DT_VERDEF"])
        for _ in range(min(first.get("DT_VERDEFNUM", 0), 0xFFFF)):
            vd = struct_parse(st.Elf_Verdef, f, pos)
            if not vd["vd_flags"] & VER_FLG_BASE and vd["vd_cnt"]:
                # The first auxiliary names the version; later ones name its parents.
                name = string(struct_parse(st.Elf_Verdaux, f, pos + vd["vd_aux"])["vda_name"])
                if name not in version_defs:
                    version_defs.append(name)
            if not vd["vd_next"]:
                break
            pos += vd["vd_next"]

    version_needs: list[VersionNeed] = []
    if "DT_VERNEED" in first:
        pos = file_offset(first["DT_VERNEED"])
        for _ in range(min(first.get("DT_VERNEEDNUM", 0), 0xFFFF)):
            vn = struct_parse(st.Elf_Verneed, f, pos)
            versions: list[tuple[str, bool]] = []
            apos = pos + vn["vn_aux"]
            for _ in range(vn["vn_cnt"]):
                a = struct_parse(st.Elf_Vernaux, f, apos)
                versions.append((string(a["vna_name"]), bool(a["vna_flags"] & VER_FLG_WEAK)))
                if not a["vna_next"]:
                    break
                apos += a["vna_next"]
            version_needs.append(VersionNeed(string(vn["vn_file"]), tuple(versions)))
            if not vn["vn_next"]:
                break
            pos += vn["vn_next"]

    little = elf.little_endian
    return ElfFacts(
        path=path,
        elf_class=elf.elfclass,
        machine=str(elf["e_machine"]),
        byte_order="little" if little else "big",
        osabi=str(elf["e_ident"]["EI_OSABI"]),
        elf_type=str(elf["e_type"]),
        arch=arch_from_elf_header(head),
        interp=interp,
        is_dynamic=dyn_phdr is not None,
        soname=soname,
        needed=tuple(needed),
        rpath=rpath,
        runpath=runpath,
        nodeflib=nodeflib,
        version_defs=tuple(version_defs),
        version_needs=tuple(version_needs),
        # Linkers before PT_GNU_PROPERTY (binutils < 2.32) left the property note in a PT_NOTE.
        isa_level=_isa_level(props or notes, elf.elfclass, little),
    )


def _iter_notes(data: bytes, align: int, little: bool) -> Iterator[tuple[int, bytes, bytes]]:
    """(type, name, desc) of each note in a note segment or section; stops at malformed data."""
    end = "<" if little else ">"
    off = 0
    while off + 12 <= len(data):
        namesz, descsz, ntype = struct.unpack_from(end + "III", data, off)
        name_off = off + 12
        desc_off = name_off + ((namesz + 3) & ~3)
        desc_off = (desc_off + align - 1) & ~(align - 1)
        if desc_off + descsz > len(data):
            return
        yield ntype, data[name_off:name_off + namesz], data[desc_off:desc_off + descsz]
        off = (desc_off + descsz + align - 1) & ~(align - 1)


def _isa_level(notes: list[bytes], elf_class: int, little: bool) -> int | None:
    align = 8 if elf_class == 64 else 4
    end = "<" if little else ">"
    for data in notes:
        for ntype, name, desc in _iter_notes(data, align, little):
            if ntype != NT_GNU_PROPERTY_TYPE_0 or name.rstrip(b"\0") != b"GNU":
                continue
            off = 0
            while off + 8 <= len(desc):
                pr_type, pr_datasz = struct.unpack_from(end + "II", desc, off)
                if pr_type == GNU_PROPERTY_X86_ISA_1_NEEDED and pr_datasz >= 4 and off + 12 <= len(desc):
                    (bits,) = struct.unpack_from(end + "I", desc, off + 8)
                    # Bit 0 baseline, bit 1 v2, bit 2 v3, bit 3 v4: the highest one set is the level.
                    bits &= 0xF
                    return bits.bit_length() if bits else None
                off = (off + 8 + pr_datasz + align - 1) & ~(align - 1)
    return None


def dynamic_symbols(path: str | os.PathLike[str]) -> DynSymbols | None:
    """Names of the dynamic symbols an ELF file defines and leaves undefined (iterates .dynsym,
    or the dynamic segment's table where section headers are stripped). None if not ELF."""
    if not is_elf(path):
        return None
    try:
        fast = _dynsym_from_sections(os.fspath(path))
    except (OSError, struct.error, ValueError):
        fast = None
    if fast is not None:
        return fast
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        try:
            elf = ELFFile(f)
            table = next(iter(elf.iter_sections("SHT_DYNSYM")), None)
            if table is None:
                table = next(iter(elf.iter_segments("PT_DYNAMIC")), None)
            if table is None:
                return DynSymbols(frozenset(), frozenset())
            defined: set[str] = set()
            undefined: set[str] = set()
            for sym in table.iter_symbols():
                if not sym.name:
                    continue
                if sym["st_shndx"] == "SHN_UNDEF":
                    undefined.add(sym.name)
                elif sym["st_info"]["bind"] != "STB_LOCAL":
                    defined.add(sym.name)
        except Exception as e:  # pyelftools raises many exception types on malformed input
            raise ImageError(f"{os.fspath(path)}: malformed ELF file ({type(e).__name__}: {e})",
                             "the file is truncated or corrupt") from e
    return DynSymbols(frozenset(defined), frozenset(undefined))


_SHT_DYNSYM = 11
_STB_LOCAL = 0


def _dynsym_from_sections(path: str) -> DynSymbols | None:
    """The .dynsym table read with struct through the section headers: MPI libraries export
    thousands of symbols and pyelftools takes ~0.1 ms for each. None when the file has no
    section headers (stripped of them): the caller then walks the dynamic segment instead."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 52:
            return None
        is64, end = head[4] == 2, "<" if head[5] == 1 else ">"
        if is64:
            shoff, = struct.unpack_from(end + "Q", head, 0x28)
            shentsize, shnum = struct.unpack_from(end + "HH", head, 0x3A)
            shdr, sym = end + "IIQQQQIIQQ", end + "IBBHQQ"
        else:
            shoff, = struct.unpack_from(end + "I", head, 0x20)
            shentsize, shnum = struct.unpack_from(end + "HH", head, 0x2E)
            shdr, sym = end + "IIIIIIIIII", end + "IIIBBH"
        if not shoff or not shnum or shentsize < struct.calcsize(shdr):
            return None
        f.seek(shoff)
        table = f.read(shnum * shentsize)
        sections = [struct.unpack_from(shdr, table, i * shentsize) for i in range(len(table) // shentsize)]

        def body(index: int) -> bytes:
            sec = sections[index]
            offset, size = sec[4], sec[5]  # same positions in both layouts
            f.seek(offset)
            return f.read(size)

        dynsym = next((i for i, sec in enumerate(sections) if sec[1] == _SHT_DYNSYM), None)
        if dynsym is None:
            return None
        link = sections[dynsym][6]
        if link >= len(sections):
            return None
        symbols, strings = body(dynsym), body(link)
    defined: set[str] = set()
    undefined: set[str] = set()
    for entry in struct.iter_unpack(sym, symbols[:len(symbols) - len(symbols) % struct.calcsize(sym)]):
        if is64:
            name, info, _other, shndx = entry[0], entry[1], entry[2], entry[3]
        else:
            name, info, shndx = entry[0], entry[3], entry[5]
        if not name or name >= len(strings):
            continue
        text = strings[name:strings.index(b"\0", name)].decode("utf-8", "surrogateescape")
        if shndx == 0:
            undefined.add(text)
        elif info >> 4 != _STB_LOCAL:
            defined.add(text)
    return DynSymbols(frozenset(defined), frozenset(undefined))


def symbol_string(path: str, name: str) -> str | None:
    """The NUL-terminated string a data symbol of ELF file `path` holds (MPICH's release)."""
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            table = elf.get_section_by_name(".dynsym")
            found = table.get_symbol_by_name(name) if table is not None else None
            if not found:
                return None
            addr, size = found[0]["st_value"], found[0]["st_size"] or 64
            for seg in elf.iter_segments("PT_LOAD"):
                if seg["p_vaddr"] <= addr < seg["p_vaddr"] + seg["p_filesz"]:
                    f.seek(seg["p_offset"] + addr - seg["p_vaddr"])
                    return f.read(min(size, 256)).split(b"\0")[0].decode("ascii", "replace") or None
    except Exception:  # pyelftools raises many types on odd files; the release is then unknown
        return None
    return None
