"""x86-64 micro-architecture levels (the psABI's v2/v3/v4) of this host's CPU.

ld.so searches glibc-hwcaps/x86-64-vN only for levels the CPU supports, and refuses objects
marked as needing a higher level; the loader emulation needs the host's level to do the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

# /proc/cpuinfo flag names of each level's additions (the kernel lists AVX only where the OS
# saves its registers, which is the XSAVE/OSXSAVE condition of the psABI).
_LEVEL_FLAGS: tuple[tuple[int, frozenset[str]], ...] = (
    (2, frozenset({"cx16", "lahf_lm", "popcnt", "pni", "sse4_1", "sse4_2", "ssse3"})),
    (3, frozenset({"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"})),
    (4, frozenset({"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"})),
)


def isa_level_of_flags(flags: Iterable[str]) -> int:
    """The highest x86-64 level (1-4) whose features, and every lower level's, are all in flags."""
    have = set(flags)
    level = 1
    for lvl, needs in _LEVEL_FLAGS:
        if not needs <= have:
            break
        level = lvl
    return level


def host_isa_level(cpuinfo: str = "/proc/cpuinfo") -> int | None:
    """This host's x86-64 level, None on other architectures or when cpuinfo is unreadable."""
    if os.uname().machine != "x86_64":
        return None
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return isa_level_of_flags(line.partition(":")[2].split())
    except OSError:
        pass
    return None
