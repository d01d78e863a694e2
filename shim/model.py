"""The values every layer passes around: diagnostics, decisions, environment edits.

Lowest layer but errors.py: nothing here imports another shim module, so image/, host/, elf/,
expect/, site/, diagnose/ and plan/ can all use these without importing each other."""

from __future__ import annotations

from dataclasses import dataclass

INJECT, SKIP, REFUSE = "inject", "skip", "refuse"
ERROR, WARNING, INFO = "error", "warning", "info"


@dataclass(frozen=True)
class Diagnostic:
    code: str             # stable, registered in shim/knowledge/codes.json (e.g. MPI-ABI-MISMATCH)
    severity: str         # error | warning | info
    message: str          # what was checked, with the values on both sides
    hint: str = ""        # for the user
    admin_hint: str = ""  # for the sysadmin (profile file and key)


@dataclass(frozen=True)
class Decision:
    library: str          # the name the container asks for (SONAME), or the file name
    host_path: str
    container_path: str   # where it is placed ("" when not injected)
    decision: str         # inject | skip | refuse
    reason: str
    profile: str = ""


@dataclass(frozen=True)
class EnvEdit:
    """One change a profile makes to the app's environment, applied in profile order after the
    image's environment scripts (so on the value the app would otherwise see) and before the
    user's own --env/SHIMRUNENV_ overrides, which win."""

    op: str               # set | prepend | append | unset
    name: str
    value: str = ""
    profile: str = ""
