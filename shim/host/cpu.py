"""The CPU (architecture, x86-64 level, model) and the CPUs this job may use on the node.

For host_root "/" the architecture comes from uname and the allowance from psutil and the live
cgroup. For another root (a simulated host in tests, or a node image inspected from outside)
everything is read from the root's files: /proc/sys/kernel/arch (the kernel's `uname -m`, a real
file since Linux 6.1) or a guess from /proc/cpuinfo; /sys/devices/system/cpu/online for the
node's CPUs; /proc/<pid>/status `Cpus_allowed_list` for the affinity, because psutil can only ask
the running kernel about real processes.
"""

from __future__ import annotations

import os

from shim.elf.isa import isa_level_of_flags
from shim.host.model import CpuAllowance, CpuFacts
from shim.image.arch import UNKNOWN, host_arch, normalize_arch


def _read(path: str, limit: int = 1 << 20) -> str | None:
    try:
        with open(path, errors="replace") as f:
            return f.read(limit)
    except OSError:
        return None


def _cpuinfo_first(cpuinfo: str) -> dict[str, str]:
    """The fields of the first processor block (and any global ones before it)."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip().lower(), value.strip())
    return fields


def _arch_from_cpuinfo(fields: dict[str, str]) -> str | None:
    # Each architecture's kernel prints its own set of cpuinfo fields.
    if "vendor_id" in fields and fields["vendor_id"].startswith("IBM/S390"):
        return "s390x"
    if "vendor_id" in fields and "flags" in fields:  # x86: long mode ("lm") means 64-bit
        return "amd64" if "lm" in fields["flags"].split() else "386"
    if "cpu architecture" in fields:  # arm: "8" on arm64 kernels, "7" on 32-bit ones
        return "arm64" if fields["cpu architecture"].startswith("8") or "asimd" in fields.get("features", "") else "arm"
    if fields.get("isa", "").startswith("rv64"):
        return "riscv64"
    if fields.get("cpu", "").upper().startswith("POWER"):
        return "ppc64le"  # big-endian POWER hosts are rare; /proc/sys/kernel/arch says ppc64 there
    if "loongarch" in fields.get("model name", "").lower() or fields.get("cpu family", "").startswith("Loongson"):
        return "loong64"
    return None


def _arch(host_root: str, fields: dict[str, str]) -> str:
    if host_root == "/":
        return host_arch()
    machine = (_read(os.path.join(host_root, "proc/sys/kernel/arch"), 64) or "").strip()
    return normalize_arch(machine) or _arch_from_cpuinfo(fields) or UNKNOWN


def _model(fields: dict[str, str]) -> str:
    for key in ("model name", "cpu model", "cpu", "uarch", "model"):
        if fields.get(key) and not fields[key].isdigit():
            return fields[key]
    return ""


def cpu_facts(host_root: str = "/") -> CpuFacts:
    """Architecture (image-arch words), x86-64 ISA level (None elsewhere) and model name."""
    fields = _cpuinfo_first(_read(os.path.join(host_root, "proc/cpuinfo")) or "")
    arch = _arch(host_root, fields)
    level = isa_level_of_flags(fields.get("flags", "").split()) if arch == "amd64" else None
    return CpuFacts(arch=arch, isa_level=level, model=_model(fields))


# ---- the CPUs the job may use ----

def _count_list(text: str) -> int:
    """Number of CPUs in a kernel CPU list such as "0-3,8,10-11"; 0 if malformed."""
    total = 0
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        try:
            total += int(hi or lo) - int(lo) + 1
        except ValueError:
            return 0
    return total


def _proc(pid: int) -> str:
    return f"proc/{pid}" if pid else "proc/self"


def _node_and_allowed(host_root: str, pid: int) -> tuple[int, int]:
    if host_root == "/":
        import psutil  # lazy: only the allowance needs it

        node = psutil.cpu_count() or 1
        try:
            allowed = len(psutil.Process(pid or None).cpu_affinity())
        except (psutil.Error, AttributeError, OSError):  # no affinity API (macOS), or process gone
            allowed = node
        return node, allowed
    node = _count_list(_read(os.path.join(host_root, "sys/devices/system/cpu/online"), 4096) or "") or 1
    allowed = node
    for line in (_read(os.path.join(host_root, _proc(pid), "status")) or "").splitlines():
        if line.startswith("Cpus_allowed_list:"):
            allowed = _count_list(line.partition(":")[2]) or node
    return node, allowed


def _cgroup_quota(host_root: str, pid: int) -> float | None:
    """The strictest cgroup CPU quota (v2 cpu.max, v1 CFS bandwidth) of `pid` and its ancestor
    cgroups, in CPUs; None when unlimited. Read by the C core (csrc/cgroup.c), which checks the
    same quota when it revalidates a launch record."""
    from shim import native

    text = native.cgroup_quota(host_root, pid)
    return float(text) if text else None


def cpu_allowance(host_root: str = "/", pid: int = 0) -> CpuAllowance:
    """The node's CPUs, those `pid` (0: this process) may run on, and its cgroup CPU quota."""
    node, allowed = _node_and_allowed(host_root, pid)
    return CpuAllowance(node_cpus=node, allowed_cpus=allowed, cgroup_quota=_cgroup_quota(host_root, pid))
