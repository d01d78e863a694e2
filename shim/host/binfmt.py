"""Emulators registered with binfmt_misc (qemu-user), which let a node run foreign-arch images.

An entry file in /proc/sys/fs/binfmt_misc reads:

    enabled
    interpreter /usr/bin/qemu-aarch64-static
    flags: OCF
    offset 0
    magic 7f454c46...
"""

from __future__ import annotations

import os
import re

from shim.host.model import Emulator
from shim.host.paths import BINFMT_DIR
from shim.image.arch import UNKNOWN, normalize_arch

_CONTROL_FILES = {"register", "status"}


def _qemu_target(name: str) -> str | None:
    """"qemu-aarch64", "qemu-aarch64-static", "aarch64-binfmt-P" -> "aarch64"."""
    m = re.match(r"^(?:qemu-)?([a-z0-9_]+?)(?:-static|-binfmt(?:-\w+)?)?$", name)
    return m.group(1) if m else None


def qemu_arch(name: str) -> str:
    """Image-arch word of a qemu-user target or binary name (qemu-aarch64 -> arm64); "unknown"
    for targets images cannot have (qemu-armeb, qemu-sparc64, ...). qemu names its targets as
    `uname -m` does (aarch64, x86_64, ppc64le, mipsel, i386, arm...), which normalize_arch knows."""
    target = _qemu_target(name)
    return (normalize_arch(target) if target else None) or UNKNOWN


def _parse(name: str, text: str) -> Emulator | None:
    lines = text.splitlines()
    fields = dict(line.split(" ", 1) for line in lines[1:] if " " in line)
    interpreter = fields.get("interpreter", "").strip()
    base = os.path.basename(interpreter)
    # Debian's qemu-user-binfmt registers "qemu-aarch64" with /usr/libexec/qemu-binfmt/aarch64-binfmt-P.
    if not (base.startswith("qemu-") or (name.startswith("qemu-") and "qemu" in interpreter)):
        return None
    arch = qemu_arch(name) if name.startswith("qemu-") else qemu_arch(base)
    if arch == UNKNOWN:
        arch = qemu_arch(base)
    return Emulator(name=name, arch=arch, interpreter=interpreter,
                    enabled=bool(lines) and lines[0].strip() == "enabled",
                    flags=fields.get("flags:", "").strip())


def emulators(host_root: str = "/") -> tuple[Emulator, ...]:
    """The qemu-* entries of the root's binfmt_misc, by name; () when binfmt_misc is not mounted."""
    directory = os.path.join(host_root, BINFMT_DIR)
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return ()
    found = []
    for name in names:
        if name in _CONTROL_FILES:
            continue
        try:
            with open(os.path.join(directory, name), errors="replace") as f:
                entry = _parse(name, f.read(8192))
        except OSError:
            continue
        if entry:
            found.append(entry)
    return tuple(found)


def emulator_for(arch: str, emulators: tuple[Emulator, ...] | list[Emulator]) -> Emulator | None:
    """The enabled emulator that runs `arch` (any spelling normalize_arch knows), preferring one
    registered with the F flag (its interpreter is opened at registration, so it works inside a
    container whose root lacks it); None if there is none."""
    want = normalize_arch(arch) or arch
    usable = [e for e in emulators if e.enabled and e.arch == want]
    usable.sort(key=lambda e: "F" not in e.flags)
    return usable[0] if usable else None
