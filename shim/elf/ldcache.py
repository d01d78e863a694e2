"""Reader of /etc/ld.so.cache, the soname -> path index ldconfig writes and ld.so consults.

Layouts (glibc's dl-cache.h describes them):
  new     "glibc-ld.so.cache1.1" header (48 bytes), 24-byte entries (flags, key, value,
          osversion, hwcap), a string table, then an optional extension area (who generated the
          file; the glibc-hwcaps subdirectory names that entries with bit 62 of hwcap index).
  compat  an old "ld.so-1.7.0" header and 12-byte entries, then the new layout at the next
          8-byte boundary; only the new part is read, as ld.so does.
  old     the "ld.so-1.7.0" part alone.
Key and value offsets count from the new header (old layout: from the end of its entries); the
extension offset and the hwcaps name offsets count from the start of the file, as glibc's
ldconfig -p reads them (in the new layout, the default since glibc 2.32, both coincide).

A cache file comes from a container image and may be corrupt or hostile: everything is bounds
checked, and a bad file gives an empty LdCache with the reason, never an exception.
"""

from __future__ import annotations

import struct
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from shim.elf.layout import (
    FLAG_AARCH64_LIB64,
    FLAG_ARM_LIBHF,
    FLAG_ARM_LIBSF,
    FLAG_IA64_LIB64,
    FLAG_LARCH_FLOAT_ABI_DOUBLE,
    FLAG_LARCH_FLOAT_ABI_SOFT,
    FLAG_MIPS64_LIBN32,
    FLAG_MIPS64_LIBN32_NAN2008,
    FLAG_MIPS64_LIBN64,
    FLAG_MIPS64_LIBN64_NAN2008,
    FLAG_MIPS_LIB32_NAN2008,
    FLAG_POWERPC_LIB64,
    FLAG_RISCV_FLOAT_ABI_DOUBLE,
    FLAG_RISCV_FLOAT_ABI_SOFT,
    FLAG_S390_LIB64,
    FLAG_SPARC_LIB64,
    FLAG_X8664_LIB64,
    FLAG_X8664_LIBX32,
)

CACHE_FILE = "/etc/ld.so.cache"
OLD_MAGIC = b"ld.so-1.7.0"
NEW_MAGIC = b"glibc-ld.so.cache1.1"
EXTENSION_MAGIC = 0xEAA42174
EXT_TAG_GENERATOR = 0
EXT_TAG_GLIBC_HWCAPS = 1
HWCAP_EXTENSION = 1 << 62   # hwcap's low 32 bits index the glibc-hwcaps names

_OLD_HEADER = 16            # magic[11], padding, nlibs
_OLD_ENTRY = 12             # flags, key, value
_NEW_HEADER = 48
_NEW_ENTRY = 24
_MAX_FILE = 64 << 20        # a real cache is well under 1 MiB; do not read a planted giant

_TYPE_NAMES = {0: "libc4", 1: "ELF", 2: "libc5", 3: "libc6"}
_ABI_NAMES = {
    FLAG_SPARC_LIB64: "64bit", FLAG_IA64_LIB64: "IA-64", FLAG_X8664_LIB64: "x86-64",
    FLAG_S390_LIB64: "64bit", FLAG_POWERPC_LIB64: "64bit", FLAG_MIPS64_LIBN32: "N32",
    FLAG_MIPS64_LIBN64: "64bit", FLAG_X8664_LIBX32: "x32", FLAG_ARM_LIBHF: "hard-float",
    FLAG_AARCH64_LIB64: "AArch64", FLAG_ARM_LIBSF: "soft-float", FLAG_MIPS_LIB32_NAN2008: "nan2008",
    FLAG_MIPS64_LIBN32_NAN2008: "N32,nan2008", FLAG_MIPS64_LIBN64_NAN2008: "64bit,nan2008",
    FLAG_RISCV_FLOAT_ABI_SOFT: "soft-float", FLAG_RISCV_FLOAT_ABI_DOUBLE: "double-float",
    FLAG_LARCH_FLOAT_ABI_SOFT: "soft-float", FLAG_LARCH_FLOAT_ABI_DOUBLE: "double-float",
}


@dataclass(frozen=True)
class CacheEntry:
    flags: int                        # ELF type and ABI, compared with what the ld.so accepts
    key: str                          # the soname
    value: str                        # the library's path
    hwcap: int = 0
    hwcaps_subdir: str | None = None  # glibc-hwcaps subdirectory this entry is for
    osversion: int = 0

    def describe(self) -> str:
        """The parenthesised text `ldconfig -p` prints for this entry."""
        text = _TYPE_NAMES.get(self.flags & 0xFF, "unknown")
        abi = self.flags & 0xFF00
        if abi:
            text += "," + _ABI_NAMES.get(abi, str(abi))
        if self.hwcaps_subdir is not None:
            text += f', hwcap: "{self.hwcaps_subdir}"'
        elif self.hwcap:
            text += f", hwcap: {self.hwcap:#018x}"
        return text


@dataclass(frozen=True)
class LdCache:
    entries: tuple[CacheEntry, ...] = ()
    problem: str | None = None        # why the file gave no entries (missing, corrupt, ...)
    layout: str = ""                  # "new", "compat" or "old"
    generator: str | None = None      # e.g. "ldconfig (Debian GLIBC 2.36-9+deb12u14) ..."
    _by_key: dict[str, list[CacheEntry]] = field(default_factory=dict, init=False, repr=False,
                                                 compare=False)

    def __post_init__(self) -> None:
        for e in self.entries:
            self._by_key.setdefault(e.key, []).append(e)

    def lookup(self, soname: str, flags_filter: int | Collection[int] | None = None,
               hwcaps: Sequence[str] = ()) -> str | None:
        """The path ld.so takes from the cache for `soname`, or None.
        flags_filter: the entry flags the requesting ld.so accepts (see layout.LibArch.cache_flags);
        None accepts any. hwcaps: the glibc-hwcaps subdirectories the CPU supports, best first;
        an entry for one of them beats a plain entry, a better one beats a worse one. Entries
        with legacy hwcap bits (glibc < 2.37 "tls", "x86_64" subdirectories) are not chosen."""
        if isinstance(flags_filter, int):
            flags_filter = (flags_filter,)
        best: CacheEntry | None = None
        best_rank = len(hwcaps) + 1
        for e in self._by_key.get(soname, ()):
            if flags_filter is not None and e.flags not in flags_filter:
                continue
            if e.hwcaps_subdir is not None:
                if e.hwcaps_subdir not in hwcaps:
                    continue
                rank = list(hwcaps).index(e.hwcaps_subdir)
            elif e.hwcap:
                continue
            else:
                rank = len(hwcaps)
            if rank < best_rank:
                best, best_rank = e, rank
        return best.value if best else None


def read_ld_cache(path: str = CACHE_FILE) -> LdCache:
    """The cache file at `path` (a host path); an empty LdCache with a reason if it is unusable."""
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_FILE + 1)
    except OSError as e:
        return LdCache(problem=f"cannot read {path}: {e.strerror or e}")
    if len(data) > _MAX_FILE:
        return LdCache(problem=f"{path} is larger than {_MAX_FILE} bytes")
    return parse_ld_cache(data)


class _Corrupt(Exception):
    pass


def parse_ld_cache(data: bytes) -> LdCache:
    """Entries of an ld.so.cache image; an empty LdCache with a reason if it is malformed."""
    try:
        if data.startswith(NEW_MAGIC):
            return _parse_new(data, 0, "new")
        if data.startswith(OLD_MAGIC):
            return _parse_old_or_compat(data)
        return LdCache(problem="not an ld.so.cache file (unknown magic)")
    except _Corrupt as e:
        return LdCache(problem=f"corrupt ld.so.cache: {e}")
    except (struct.error, IndexError, ValueError, OverflowError) as e:  # a check missed below
        return LdCache(problem=f"corrupt ld.so.cache: {type(e).__name__}: {e}")


def _check(ok: bool, why: str) -> None:
    if not ok:
        raise _Corrupt(why)


def _cstring(data: bytes, offset: int) -> str:
    _check(0 <= offset < len(data), f"string offset {offset} outside the file")
    end = data.find(b"\0", offset)
    _check(end >= 0, f"string at {offset} is not terminated")
    return data[offset:end].decode("utf-8", "surrogateescape")


def _parse_old_or_compat(data: bytes) -> LdCache:
    _check(len(data) >= _OLD_HEADER, "truncated old-format header")
    # The old layout records no byte order: take the one that makes the entry count fit.
    for end in ("<", ">"):
        (nlibs,) = struct.unpack_from(end + "I", data, 12)
        entries_end = _OLD_HEADER + nlibs * _OLD_ENTRY
        if entries_end <= len(data):
            break
    else:
        raise _Corrupt(f"{nlibs} old-format entries do not fit in {len(data)} bytes")
    new_at = (entries_end + 7) & ~7
    if data[new_at:new_at + len(NEW_MAGIC)] == NEW_MAGIC:
        return _parse_new(data, new_at, "compat")
    entries = []
    for i in range(nlibs):
        flags, key, value = struct.unpack_from(end + "iII", data, _OLD_HEADER + i * _OLD_ENTRY)
        # Old-layout string offsets count from the end of the entries.
        entries.append(CacheEntry(flags, _cstring(data, entries_end + key), _cstring(data, entries_end + value)))
    return LdCache(tuple(entries), layout="old")


def _parse_new(data: bytes, base: int, layout: str) -> LdCache:
    _check(len(data) >= base + _NEW_HEADER, "truncated header")
    order = data[base + 28]
    if order == 1:
        raise _Corrupt("header marks the byte order invalid")
    ends = {2: ("<",), 3: (">",)}.get(order, ("<", ">"))  # 0: written before the mark existed
    for end in ends:
        nlibs, _len_strings = struct.unpack_from(end + "II", data, base + 20)
        if base + _NEW_HEADER + nlibs * _NEW_ENTRY <= len(data):
            break
    else:
        raise _Corrupt(f"{nlibs} entries do not fit in {len(data) - base} bytes")
    (ext_offset,) = struct.unpack_from(end + "I", data, base + 32)
    generator, hwcaps_names = _parse_extensions(data, ext_offset, end)

    entries = []
    for flags, key, value, osversion, hwcap in struct.iter_unpack(
            end + "iIIIQ", data[base + _NEW_HEADER:base + _NEW_HEADER + nlibs * _NEW_ENTRY]):
        subdir = None
        if hwcap >> 32 == HWCAP_EXTENSION >> 32:
            index = hwcap & 0xFFFFFFFF
            subdir = hwcaps_names[index] if index < len(hwcaps_names) else None
        entries.append(CacheEntry(flags, _cstring(data, base + key), _cstring(data, base + value),
                                  hwcap, subdir, osversion))
    return LdCache(tuple(entries), layout=layout, generator=generator)


def _parse_extensions(data: bytes, offset: int, end: str) -> tuple[str | None, list[str]]:
    if offset == 0:
        return None, []
    _check(offset % 4 == 0 and offset + 8 <= len(data), f"extension area at {offset} is out of bounds")
    magic, count = struct.unpack_from(end + "II", data, offset)
    if magic != EXTENSION_MAGIC:
        return None, []  # ld.so ignores an extension area it does not recognise
    _check(offset + 8 + count * 16 <= len(data), f"{count} extension sections do not fit")
    generator = None
    names: list[str] = []
    for i in range(count):
        tag, _flags, sec_off, sec_size = struct.unpack_from(end + "IIII", data, offset + 8 + i * 16)
        _check(sec_off + sec_size <= len(data), f"extension section {i} is out of bounds")
        if tag == EXT_TAG_GENERATOR:
            generator = data[sec_off:sec_off + sec_size].decode("utf-8", "surrogateescape")
        elif tag == EXT_TAG_GLIBC_HWCAPS:
            _check(sec_size % 4 == 0, "glibc-hwcaps section size is not a multiple of 4")
            names = [_cstring(data, off) for (off,) in
                     struct.iter_unpack(end + "I", data[sec_off:sec_off + sec_size])]
    return generator, names

