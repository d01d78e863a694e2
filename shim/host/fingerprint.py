"""What the host facts are made of, as launch-record inputs: cheap to check on every launch, and
what any change to the facts would show in.

On a real node ("/"): facts fixed while the node is up (the CPU's model and flags, the node's
CPU count, the hypervisor, DMI) are tied to the boot (/proc/sys/kernel/random/boot_id, and the
node's name is in every record's key); what can change while it runs is checked itself: the
NVIDIA kernel module's version and GPU list, the NVIDIA device nodes, the RDMA devices and their
port states, the binfmt_misc entries (qemu-user), the CPUs this process may use and its cgroup
quota. A simulated node (SHIMRUN_HOST_ROOT, a directory of files) is checked file by file."""

from __future__ import annotations

import os

from shim.host.paths import BINFMT_DIR, DEV_DIR, GPU_INFO, GPU_INFO_FILES, PROC_VERSION, SYSFS_CLASS
from shim.record.model import CpusInput, Input
from shim.record.snapshot import content_input, file_input, glob_input

BOOT_ID = "/proc/sys/kernel/random/boot_id"


def _simulated(root: str) -> list[Input]:
    found: list[Input] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found.append(file_input(dirpath))  # an entry added or removed changes its directory
        found += [file_input(os.path.join(dirpath, n)) for n in sorted(filenames)]
    return found


def host_inputs(root: str = "/") -> list[Input]:
    if root not in ("", "/"):
        return _simulated(root)
    from shim import native

    version = content_input("/" + PROC_VERSION)
    found: list[Input] = [content_input(BOOT_ID), version]
    # (pattern, which matches are read too, the pattern whose matches it needs): a GPU's
    # information, a port's state, a qemu emulator's entry (it can be switched on and off: echo 0 >
    # .../qemu-aarch64). A pattern below another is checked only when that one matched something:
    # anything appearing there changes the one above first.
    globs = ((GPU_INFO_FILES, "information", None), ("/dev/nvidia*", "", None),
             ("/dev/nvidia-caps/*", "", "/dev/nvidia*"), (f"/{BINFMT_DIR}/*", "qemu-", None),
             (f"/{SYSFS_CLASS}/*", "", None), (f"/{SYSFS_CLASS}/*/ports/*/state", "state", f"/{SYSFS_CLASS}/*"),
             (f"/{DEV_DIR}/*", "", f"/{SYSFS_CLASS}/*"))
    matched: dict[str, tuple[str, ...]] = {}
    for pattern, read, needs in globs:
        if (needs and not matched.get(needs)) or (pattern.startswith(f"/{GPU_INFO}") and version.data is None):
            continue
        names = glob_input(pattern)
        matched[pattern] = names.names
        found.append(names)
        found += [content_input(n) for n in names.names if read and os.path.basename(n).startswith(read)]
    found.append(CpusInput(len(os.sched_getaffinity(0)), "/", native.cgroup_quota("/")))
    return found
