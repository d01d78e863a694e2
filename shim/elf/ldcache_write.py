"""Writer of ld.so.cache files in glibc's "new" layout (the default since glibc 2.32).

Injected host libraries live in their own directory inside the container, so that their
`$ORIGIN` is theirs and not the image's library directory (where older copies of their own
dependencies may sit). The container's loader is pointed there through a copy of the image's
ld.so.cache with the injected SONAMEs re-pointed: the cache is what ld.so consults for every
program without DT_RPATH/DT_RUNPATH, before the default directories, and unlike LD_LIBRARY_PATH it
is not inherited, overridden or exported by the app's environment.

Entries are ordered as ldconfig orders them, because ld.so binary-searches them: by
_dl_cache_libcmp (digits compared as numbers), descending.
"""

from __future__ import annotations

import functools
import struct
import sys
from collections.abc import Iterable

from shim.elf.ldcache import HWCAP_EXTENSION, NEW_MAGIC, CacheEntry

_HEADER = struct.Struct("<20sIIB3sI12s")  # magic+version, nlibs, len_strings, flags, pad, ext, unused
_ENTRY = struct.Struct("<iIIIQ")
_ENDIAN_LITTLE, _ENDIAN_BIG = 2, 3


def libcmp(a: str, b: str) -> int:
    """glibc's _dl_cache_libcmp: runs of digits compare as numbers, digits sort after others."""
    i = j = 0
    while i < len(a):
        if a[i].isdigit():
            if j < len(b) and b[j].isdigit():
                si, sj = i, j
                while i < len(a) and a[i].isdigit():
                    i += 1
                while j < len(b) and b[j].isdigit():
                    j += 1
                va, vb = int(a[si:i]), int(b[sj:j])
                if va != vb:
                    return va - vb
                continue
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        ca, cb = ord(a[i]), ord(b[j]) if j < len(b) else 0
        if ca != cb:
            return ca - cb
        i += 1
        j += 1
    return 0 - (ord(b[j]) if j < len(b) else 0)


def _order(x: CacheEntry, y: CacheEntry) -> int:
    # ldconfig: descending by name; for one name, higher flags first, then higher hwcap.
    res = libcmp(y.key, x.key)
    if res:
        return res
    if x.flags != y.flags:
        return y.flags - x.flags
    return (y.hwcap > x.hwcap) - (y.hwcap < x.hwcap)


def write_ld_cache(entries: Iterable[CacheEntry], byteorder: str = sys.byteorder) -> bytes:
    """A cache holding `entries` (entries indexing glibc-hwcaps subdirectories are dropped: this
    writer emits no extension area)."""
    kept = sorted((e for e in entries if not e.hwcap & HWCAP_EXTENSION), key=functools.cmp_to_key(_order))
    strings = bytearray()
    offsets: dict[str, int] = {}
    base = _HEADER.size + _ENTRY.size * len(kept)

    def intern(text: str) -> int:
        if text not in offsets:
            offsets[text] = base + len(strings)
            strings.extend(text.encode() + b"\0")
        return offsets[text]

    body = b"".join(_ENTRY.pack(e.flags, intern(e.key), intern(e.value), e.osversion, e.hwcap) for e in kept)
    endian = _ENDIAN_LITTLE if byteorder == "little" else _ENDIAN_BIG
    header = _HEADER.pack(NEW_MAGIC, len(kept), len(strings), endian, b"\0" * 3, 0, b"\0" * 12)
    return header + body + bytes(strings)
