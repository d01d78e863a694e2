"""Where glibc's ld.so looks for libraries on each architecture: one data table (the
subdirectories it tries inside each directory, and $PLATFORM, are hwcaps.py's).

Debian and Ubuntu build ld.so with multiarch directories first; other distributions (Fedora,
RHEL, SUSE, Arch) with /lib64 or /lib only. On this Debian 12 amd64 host `ld.so --help` prints
the "system search path" /lib/x86_64-linux-gnu, /usr/lib/x86_64-linux-gnu, /lib, /usr/lib,
which default_dirs(..., multiarch=True) reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass

# ld.so.cache entry flags (the type in the low byte, the ABI in the high byte).
FLAG_ELF = 0x0001
FLAG_ELF_LIBC6 = 0x0003
FLAG_SPARC_LIB64 = 0x0100
FLAG_IA64_LIB64 = 0x0200
FLAG_X8664_LIB64 = 0x0300
FLAG_S390_LIB64 = 0x0400
FLAG_POWERPC_LIB64 = 0x0500
FLAG_MIPS64_LIBN32 = 0x0600
FLAG_MIPS64_LIBN64 = 0x0700
FLAG_X8664_LIBX32 = 0x0800
FLAG_ARM_LIBHF = 0x0900
FLAG_AARCH64_LIB64 = 0x0A00
FLAG_ARM_LIBSF = 0x0B00
FLAG_MIPS_LIB32_NAN2008 = 0x0C00
FLAG_MIPS64_LIBN32_NAN2008 = 0x0D00
FLAG_MIPS64_LIBN64_NAN2008 = 0x0E00
FLAG_RISCV_FLOAT_ABI_SOFT = 0x0F00
FLAG_RISCV_FLOAT_ABI_DOUBLE = 0x1000
FLAG_LARCH_FLOAT_ABI_SOFT = 0x1100
FLAG_LARCH_FLOAT_ABI_DOUBLE = 0x1200

_GENERIC_FLAGS = (FLAG_ELF, FLAG_ELF_LIBC6)  # what ld.so accepts where no ABI flag applies


@dataclass(frozen=True)
class LibArch:
    go: str                          # shim's architecture name (shim.image.arch)
    triplet: str                     # Debian multiarch tuple
    libdir: str                      # "lib" or "lib64": glibc's slibdir on non-multiarch systems
    cache_flags: tuple[int, ...]     # ld.so.cache entry flags this architecture's ld.so accepts

    def default_dirs(self, multiarch: bool) -> tuple[str, ...]:
        if multiarch:
            return (f"/lib/{self.triplet}", f"/usr/lib/{self.triplet}", "/lib", "/usr/lib")
        return (f"/{self.libdir}", f"/usr/{self.libdir}")

    def lib_token(self, multiarch: bool) -> str:
        """What $LIB expands to (Debian's ld.so: lib/<triplet>)."""
        return f"lib/{self.triplet}" if multiarch else self.libdir


LIB_ARCHES: dict[str, LibArch] = {a.go: a for a in (
    LibArch("386", "i386-linux-gnu", "lib", _GENERIC_FLAGS),
    LibArch("amd64", "x86_64-linux-gnu", "lib64", (FLAG_X8664_LIB64 | FLAG_ELF_LIBC6,)),
    LibArch("arm", "arm-linux-gnueabihf", "lib", (FLAG_ARM_LIBHF | FLAG_ELF_LIBC6,)),
    LibArch("arm64", "aarch64-linux-gnu", "lib64", (FLAG_AARCH64_LIB64 | FLAG_ELF_LIBC6,)),
    LibArch("ppc64", "powerpc64-linux-gnu", "lib64", (FLAG_POWERPC_LIB64 | FLAG_ELF_LIBC6,)),
    LibArch("ppc64le", "powerpc64le-linux-gnu", "lib64", (FLAG_POWERPC_LIB64 | FLAG_ELF_LIBC6,)),
    LibArch("mips", "mips-linux-gnu", "lib", _GENERIC_FLAGS),
    LibArch("mipsle", "mipsel-linux-gnu", "lib", _GENERIC_FLAGS),
    LibArch("mips64", "mips64-linux-gnuabi64", "lib64", (FLAG_MIPS64_LIBN64 | FLAG_ELF_LIBC6,)),
    LibArch("mips64le", "mips64el-linux-gnuabi64", "lib64", (FLAG_MIPS64_LIBN64 | FLAG_ELF_LIBC6,)),
    LibArch("s390x", "s390x-linux-gnu", "lib64", (FLAG_S390_LIB64 | FLAG_ELF_LIBC6,)),
    LibArch("riscv64", "riscv64-linux-gnu", "lib64", (FLAG_RISCV_FLOAT_ABI_DOUBLE | FLAG_ELF_LIBC6,)),
    LibArch("loong64", "loongarch64-linux-gnu", "lib64",
            (FLAG_LARCH_FLOAT_ABI_DOUBLE | FLAG_ELF_LIBC6,)),
)}

# For an ELF file of an architecture the table lacks: plain /lib, /usr/lib and no cache filter.
GENERIC = LibArch("unknown", "", "lib", ())


def lib_arch(go: str | None) -> LibArch:
    return LIB_ARCHES.get(go or "", GENERIC)
