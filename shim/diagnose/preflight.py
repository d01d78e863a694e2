"""Checks made before any namespace is entered, so failures are one clear line."""

from __future__ import annotations

from collections.abc import Mapping

from shim.errors import ExitCode, ShimError
from shim.image.open import ImageRef


def arch_diagnostics(image: ImageRef, environ: Mapping[str, str]) -> list:
    """ARCH-EMULATED (a registered qemu-user emulator will run it) or ARCH-MISMATCH (nothing
    can) for a foreign-architecture image; nothing for a native one. Reads binfmt_misc only then."""
    from shim.image.arch import host_arch

    host = host_arch()
    if image.arch in ("unknown", "", host):
        return []
    from shim.diagnose.check import host_root
    from shim.diagnose.cpu import arch_diagnostics as rules
    from shim.host.binfmt import emulators
    from shim.host.model import CpuFacts, HostFacts

    return rules(HostFacts(cpu=CpuFacts(host, None), emulators=emulators(host_root(environ))), image.arch)


def check_arch(image: ImageRef, environ: Mapping[str, str], fatal: bool = True) -> list:
    """The architecture diagnostics; ARCH-MISMATCH raised (exit 66) when `fatal`."""
    found = arch_diagnostics(image, environ)
    mismatch = next((d for d in found if d.code == "ARCH-MISMATCH"), None)
    if mismatch and fatal:
        raise ShimError(ExitCode.ARCH, f"ARCH-MISMATCH: {mismatch.message}: {image.path}", mismatch.hint)
    return found
