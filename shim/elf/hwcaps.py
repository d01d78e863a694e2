"""Which subdirectories glibc's ld.so searches, and what $PLATFORM is, for one root's glibc on
one CPU. The rules are data (shim/knowledge/glibc_search.json); this module only evaluates them.

ld.so tries, in every directory of a search list, first the glibc-hwcaps subdirectories the CPU
supports (glibc >= 2.33, best first), then the legacy hwcap subdirectories (glibc < 2.37), then
the directory itself. The legacy ones are the power set of an ordered list of names (the
"important" hwcap bits the CPU has, the platform, then "tls"), most specific first, each path
naming its components from the last list element to the first: on an AMD x86-64 CPU with glibc
2.36 that is tls/x86_64/x86_64, tls/x86_64, tls/x86_64, tls, x86_64/x86_64, x86_64, x86_64, "".
The platform ($PLATFORM, and a legacy name) is the kernel's AT_PLATFORM, except that glibc >= 2.26
on Intel CPUs replaces it with "haswell" or "xeon_phi" when the CPU has their features.

Not emulated: LD_HWCAP_MASK and the glibc.cpu.hwcaps tunable (both can mask names), the
legacy hwcap bits of non-x86 architectures, and ld.so.cache entries of legacy subdirectories.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from shim.elf.isa import isa_level_of_flags
from shim.knowledge.tables import table, table_path

DATA = table_path("glibc_search")
Release = tuple[int, ...]


@dataclass(frozen=True)
class CpuFeatures:
    """What ld.so asks of the CPU: /proc/cpuinfo's vendor_id and flags (of the first CPU)."""

    vendor: str = ""                 # GenuineIntel, AuthenticAMD, HygonGenuine, ...
    flags: tuple[str, ...] = ()

    @property
    def isa_level(self) -> int:
        return isa_level_of_flags(self.flags)


@dataclass(frozen=True)
class SearchRules:
    platform: str                    # what $PLATFORM expands to
    hwcaps: tuple[str, ...]          # glibc-hwcaps subdirectories, best first
    legacy: tuple[str, ...]          # legacy subdirectories in ld.so's order, ending with "" (the directory)


def _release(text: str) -> Release:
    return tuple(int(x) for x in text.split("."))


@cache
def _data() -> dict:
    return table("glibc_search")


def _applies(rule: dict, glibc: Release | None, cpu: CpuFeatures | None) -> bool:
    """A rule with `since` holds for that glibc and newer (an unknown glibc counts as new); one
    with `vendor`/`flags`/`unless_flags` needs a CPU that has them (an unknown CPU has none)."""
    if "since" in rule and glibc is not None and glibc < _release(rule["since"]):
        return False
    if "vendor" in rule or "flags" in rule:
        if cpu is None:
            return False
        if "vendor" in rule and cpu.vendor != rule["vendor"]:
            return False
        have = set(cpu.flags)
        if not set(rule.get("flags", ())) <= have or set(rule.get("unless_flags", ())) & have:
            return False
    return True


def _power_set(names: list[str]) -> tuple[str, ...]:
    """ld.so's legacy list: every subset of `names`, the subset with the last element and the
    most elements first (a binary count down with the last name as the top bit)."""
    out = []
    for mask in range((1 << len(names)) - 1, -1, -1):
        parts = [names[i] for i in range(len(names) - 1, -1, -1) if mask & (1 << i)]
        out.append("/".join(parts))
    return tuple(out)


def search_rules(arch: str, glibc: Release | None, cpu: CpuFeatures | None) -> SearchRules:
    """The rules of the ld.so of glibc release `glibc` (None: unknown, taken as current) for
    architecture `arch` (shim's names) on `cpu` (None: unknown, then no glibc-hwcaps
    subdirectory is searched and no CPU-dependent name applies)."""
    data = _data()
    table = data["arches"].get(arch, {})
    platform = table.get("kernel_platform", "")
    platform = next((p["name"] for p in table.get("platforms", ()) if _applies(p, glibc, cpu)), platform)
    hwcaps: tuple[str, ...] = ()
    if cpu is not None and (glibc is None or glibc >= _release(data["glibc_hwcaps_since"])):
        level = cpu.isa_level
        hwcaps = tuple(h["name"] for h in reversed(table.get("glibc_hwcaps", ())) if h["level"] <= level)
    legacy: tuple[str, ...] = ("",)
    if glibc is not None and glibc <= _release(data["legacy_hwcaps_until"]):
        names = [n["name"] for n in table.get("legacy_hwcap_names", ()) if _applies(n, glibc, cpu)]
        names += [platform] if platform else []
        legacy = _power_set([*names, data["legacy_last"]])
    return SearchRules(platform, hwcaps, legacy)


def cpu_features_of(cpuinfo_text: str) -> CpuFeatures:
    """vendor_id and flags of the first processor block of a /proc/cpuinfo text."""
    vendor, flags = "", ()
    for line in cpuinfo_text.splitlines():
        if not line.strip() and (vendor or flags):
            break
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key == "vendor_id" and not vendor:
            vendor = value.strip()
        elif sep and key == "flags" and not flags:
            flags = tuple(value.split())
    return CpuFeatures(vendor, flags)


def host_cpu_features(cpuinfo: str = "/proc/cpuinfo") -> CpuFeatures | None:
    """This machine's CPU features, None when /proc/cpuinfo cannot be read."""
    try:
        with open(cpuinfo, errors="replace") as f:
            return cpu_features_of(f.read(1 << 16))
    except OSError:
        return None
