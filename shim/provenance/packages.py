"""Which package of the host's package manager a file belongs to, and its version: dpkg on
Debian/Ubuntu, rpm on RHEL/SUSE; None where neither knows the file (a site's own build under
/opt, a simulated host root)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable


def _candidates(path: str) -> list[str]:
    """The names dpkg may know the file by: as given, resolved, and without /usr (merged /usr:
    packages list /lib/... while the loader finds /usr/lib/...)."""
    names = [path, os.path.realpath(path)]
    names += [n.removeprefix("/usr") for n in list(names) if n.startswith("/usr/lib")]
    return list(dict.fromkeys(names))


def _dpkg(paths: list[str]) -> dict[str, dict[str, str]]:
    names = {c: p for p in paths for c in _candidates(p)}
    out = subprocess.run(["dpkg-query", "-S", *names], capture_output=True, text=True, check=False).stdout
    owner: dict[str, str] = {}
    for line in out.splitlines():
        pkgs, sep, name = line.partition(": ")
        if sep and name in names and "," not in pkgs:  # "diversion by" lines and shared paths: not an owner
            owner.setdefault(names[name], pkgs)
    if not owner:
        return {}
    fmt = "${binary:Package} ${Version}\n"
    versions = subprocess.run(["dpkg-query", "-W", "-f", fmt, *sorted(set(owner.values()))],
                              capture_output=True, text=True, check=False).stdout
    version = dict(line.split(" ", 1) for line in versions.splitlines() if " " in line)
    return {p: {"manager": "dpkg", "name": pkg, "version": version.get(pkg, "")} for p, pkg in owner.items()}


def _rpm(paths: list[str]) -> dict[str, dict[str, str]]:
    found = {}
    for p in paths:
        r = subprocess.run(["rpm", "-qf", "--qf", "%{NAME} %{VERSION}-%{RELEASE}\n", p], capture_output=True,
                           text=True, check=False)
        if r.returncode == 0 and " " in r.stdout:
            name, version = r.stdout.splitlines()[0].split(" ", 1)
            found[p] = {"manager": "rpm", "name": name, "version": version}
    return found


def owning_packages(paths: Iterable[str], host_root: str = "/") -> dict[str, dict[str, str]]:
    """path -> {manager, name, version} for the paths a package manager owns."""
    wanted = sorted({p for p in paths if p})
    if not wanted or host_root not in ("", "/"):
        return {}
    if shutil.which("dpkg-query"):
        return _dpkg(wanted)
    if shutil.which("rpm"):
        return _rpm(wanted)
    return {}
