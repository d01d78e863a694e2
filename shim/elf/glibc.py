"""The glibc release of a C library file, from its banner ("... stable release version 2.31."):
a release that adds no symbols has no version node of its own (2.31 defines up to GLIBC_2.30),
so the banner is the one place that names it."""

from __future__ import annotations

import mmap
import re

_BANNER = re.compile(rb"release version (\d+)\.(\d+)")


def libc_release(libc: str) -> tuple[int, int] | None:
    """(major, minor) from the banner of the libc (or ld.so) at host path `libc`; None if none."""
    try:
        with open(libc, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            at = m.find(b"release version ")
            found = _BANNER.match(m[at:at + 32]) if at >= 0 else None
    except (OSError, ValueError):
        return None
    return (int(found.group(1)), int(found.group(2))) if found else None
