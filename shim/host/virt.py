"""Whether the node is a virtual machine, and whose: a short lowercase word, None on bare metal.

Sources, most telling first (as systemd-detect-virt orders them, without its CPUID access): the
DMI vendor and product strings, /sys/hypervisor/type (Xen), the clock source a paravirtual
kernel uses, and last the cpuinfo "hypervisor" flag, which says only "some VM" ("unknown").
Containers are not a VM and are not detected here.
"""

from __future__ import annotations

import os

DMI_DIR = "sys/class/dmi/id"
UNKNOWN = "unknown"

# DMI prefix (sys_vendor, product_name, board_vendor or bios_vendor) -> hypervisor word.
_DMI_VENDORS: tuple[tuple[str, str], ...] = (
    ("KVM", "kvm"), ("OpenStack", "kvm"), ("KubeVirt", "kvm"),
    ("Amazon EC2", "amazon"), ("Google", "google"),
    ("QEMU", "qemu"), ("Bochs", "bochs"), ("VMware", "vmware"), ("VMW", "vmware"),
    ("innotek GmbH", "oracle"), ("VirtualBox", "oracle"), ("Oracle Corporation", "oracle"),
    ("Xen", "xen"), ("Parallels", "parallels"), ("BHYVE", "bhyve"), ("Apple Virtualization", "apple"),
    # "Microsoft Corporation" alone is also Surface hardware; its VMs' product is "Virtual Machine".
    ("Microsoft Corporation Virtual Machine", "microsoft"), ("Hyper-V", "microsoft"),
)
# Vendors that also sell bare metal under their DMI name (EC2 *.metal instances): a VM only when
# the CPU says it runs under a hypervisor.
_ALSO_BARE_METAL = {"amazon", "google", "oracle"}
_CLOCKSOURCES = {"kvm-clock": "kvm", "xen": "xen", "hyperv_clocksource_tsc_page": "microsoft",
                 "hyperv_clocksource_msr": "microsoft", "vmware-tsc": "vmware"}


def _read(root: str, rel: str, limit: int = 256) -> str:
    try:
        with open(os.path.join(root, rel), errors="replace") as f:
            return f.read(limit).strip()
    except OSError:
        return ""


def _hypervisor_flag(root: str) -> bool | None:
    """The cpuinfo "hypervisor" flag (x86); None when cpuinfo lists no x86 flags at all."""
    try:
        with open(os.path.join(root, "proc/cpuinfo"), errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return "hypervisor" in line.partition(":")[2].split()
    except OSError:
        pass
    return None


def _from_dmi(root: str) -> str | None:
    vendor = _read(root, f"{DMI_DIR}/sys_vendor")
    product = _read(root, f"{DMI_DIR}/product_name")
    candidates = (vendor, product, f"{vendor} {product}", _read(root, f"{DMI_DIR}/board_vendor"),
                  _read(root, f"{DMI_DIR}/bios_vendor"))
    for text in candidates:
        for prefix, word in _DMI_VENDORS:
            if text and text.startswith(prefix):
                return word
    return None


def _from_clocksource(root: str) -> str | None:
    base = "sys/devices/system/clocksource/clocksource0"
    current = _read(root, f"{base}/current_clocksource")
    return _CLOCKSOURCES.get(current)


def hypervisor(host_root: str = "/") -> str | None:
    """kvm, qemu, vmware, xen, microsoft, amazon, google, oracle, ... or "unknown" (a VM whose
    hypervisor nothing names); None on bare metal."""
    flag = _hypervisor_flag(host_root)
    word = _from_dmi(host_root)
    if word in _ALSO_BARE_METAL and flag is False:
        return None
    if word:
        return word
    xen = _read(host_root, "sys/hypervisor/type")
    if xen:
        return xen.lower()
    return _from_clocksource(host_root) or (UNKNOWN if flag else None)
