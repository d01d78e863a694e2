"""The libraries a profile offers, one per host file: a glob that matches both the SONAME link
and the real file (lib/libmpich.so.12*) names one library, with one decision. Files that cannot
be injected at all are refused (not ELF, another architecture) or skipped (glibc) here."""

from __future__ import annotations

import os

from shim.knowledge.abi import is_glibc
from shim.plan.job import OfferedLib, ProfileJob, subject


def offered_libraries(job: ProfileJob) -> list[OfferedLib]:
    """Every library the profile names, deduplicated by the file behind it, in profile order."""
    ctx = job.ctx
    seen: dict[str, OfferedLib] = {}
    for spec in job.profile.provides.libraries:
        for host_path in spec.matches:
            real = ctx.host_real(host_path)
            if real in seen:
                continue
            facts = ctx.host_facts(host_path)
            soname = (facts.soname if facts else None) or os.path.basename(host_path)
            seen[real] = OfferedLib(host_path, spec.entry, facts, soname)
    return list(seen.values())


def usable(job: ProfileJob, lib: OfferedLib) -> bool:
    """False when the library is refused or skipped before any look at the image's use of it."""
    if lib.facts is None:
        job.refuse("NOT-ELF", subject(lib), f"{lib.host_path} is not an ELF file", "fix the profile", job.key(lib))
        return False
    if is_glibc(lib.soname):
        job.skip(lib.soname, lib, "", "part of glibc: the container's own C library is used")
        return False
    return same_architecture(job, lib)


def same_architecture(job: ProfileJob, lib: OfferedLib) -> bool:
    """Is `lib` (a library, or a program: programs.py) of the container's libc's ELF class and
    machine? False: refused."""
    mine, libc = lib.facts, job.ctx.libc
    assert mine is not None
    if libc and (mine.elf_class, mine.machine, mine.byte_order) != (libc.elf_class, libc.machine, libc.byte_order):
        job.refuse("LIB-ARCH-MISMATCH", subject(lib),
                   f"{lib.soname} is {mine.elf_class}-bit {mine.machine} {mine.byte_order}-endian, the container's "
                   f"libc is {libc.elf_class}-bit {libc.machine} {libc.byte_order}-endian",
                   "use an image of the host's architecture", job.key(lib))
        return False
    return True
