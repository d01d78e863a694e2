"""Which of the site's profiles apply to a run, and which profiles must not be injected together
(conf/profiles/README.md, "Selection"): a profile requested with --profile applies; otherwise one
that applies always, or when the image uses a SONAME it replaces (when-used), unless it is
unavailable here, on request only, or displaced by a requested profile it conflicts with.

Two profiles conflict when one lists the other in profile.conflicts, or when both are MPI
profiles replacing the same SONAME (two MPI stacks in one process): conflicting profiles may
not both apply automatically (shim/plan/profiles.py refuses such a set when it is loaded).
"""

from __future__ import annotations

from typing import NamedTuple

from shim.errors import ExitCode, ShimError
from shim.site.config import ConfigError
from shim.site.profile_model import Problem, Profile, ProfileSet


class Selection(NamedTuple):
    profile: Profile
    applies: bool
    why: str


def select_profiles(profiles: ProfileSet, requested: list[str], no_profiles: bool,
                    image_sonames: set[str]) -> list[Selection]:
    """Every profile with whether it applies to this run and why, by the rules in
    conf/profiles/README.md. A requested profile displaces automatic ones it conflicts with."""
    wanted = list(dict.fromkeys(requested))
    chosen: list[Profile] = []
    for name in wanted:
        p = profiles.get(name)
        if p is None:
            known = ", ".join(profiles.names())
            raise ConfigError(f"unknown profile '{name}' requested",
                              f"known profiles: {known}" if known
                              else f"no profiles are configured in {profiles.directory}")
        if not p.available:
            raise ShimError(ExitCode.HOST, f"profile '{name}' is unavailable on this host: {p.why_unavailable()}",
                            f"fix {p.file}, or run without --profile {name}")
        chosen.append(p)
    for i, a in enumerate(chosen):
        for b in chosen[i + 1:]:
            reason = conflict(a, b)
            if reason:
                raise ConfigError(f"requested profiles '{a.name}' and '{b.name}' conflict: {reason}",
                                  "request only one of them")
    out: list[Selection] = []
    for p in profiles.profiles:
        if p.name in wanted:
            out.append(Selection(p, True, "requested with --profile"))
        elif not p.available:
            out.append(Selection(p, False, f"unavailable on this host: {p.why_unavailable()}"))
        elif no_profiles:
            out.append(Selection(p, False, "--no-profiles: only profiles requested by name apply"))
        elif p.applies == "on-request":
            out.append(Selection(p, False, f"applies on request only (--profile {p.name})"))
        elif blocker := next((r for r in chosen if conflict(p, r)), None):
            out.append(Selection(p, False, f"displaced by requested profile '{blocker.name}': "
                                           f"{conflict(p, blocker)}"))
        elif p.applies == "always":
            out.append(Selection(p, True, "applies always"))
        else:
            used = sorted(set(p.stands_in_for) & image_sonames)
            out.append(Selection(p, True, f"image uses {', '.join(used)}") if used else
                       Selection(p, False, f"image uses none of {', '.join(p.stands_in_for)}"))
    # load_profiles rejects conflicting automatic profiles; this guards sets built by hand.
    applied = [s.profile for s in out if s.applies]
    for i, a in enumerate(applied):
        for b in applied[i + 1:]:
            if reason := conflict(a, b):
                raise ConfigError(f"profiles '{a.name}' and '{b.name}' both apply and conflict: {reason}",
                                  f'set applies = "on-request" in {b.file}')
    return out


def conflict(a: Profile, b: Profile) -> str:
    """Why a and b must not be injected together, or ""."""
    if b.name in a.conflicts:
        return f"'{a.name}' lists '{b.name}' in profile.conflicts"
    if a.name in b.conflicts:
        return f"'{b.name}' lists '{a.name}' in profile.conflicts"
    if a.kind == b.kind == "mpi":
        shared = sorted(set(a.replaces) & set(b.replaces))
        if shared:
            return f"both are MPI profiles replacing {', '.join(shared)}"
    return ""


def conflict_problems(profiles: list[Profile]) -> list[Problem]:
    """Conflicting profiles may not both apply automatically: which one would win is undefined."""
    auto = [p for p in profiles if p.applies != "on-request"]
    out = []
    for i, b in enumerate(auto):
        for a in auto[:i]:
            if a.name != b.name and (reason := conflict(a, b)):
                out.append(Problem(b.file, "profile.applies",
                                   f"'{b.name}' conflicts with '{a.name}' ({a.file}) and both apply automatically: "
                                   f"{reason}",
                                   'set applies = "on-request" in one of them; users pick it with --profile NAME'))
    return out
