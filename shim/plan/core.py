"""The generic planner of one profile: a decision for every library it offers.

For each library (offered.py): the names container binaries may ask for that it stands in for
(its SONAME and, for MPI libraries, the other names of its role: knowledge/abi.json); where the
image's loader finds one, the library is injected in its place (placement.py, with its
dependencies: closure.py); where it finds none, the library is skipped as unused unless the
kind's rule says it is loaded with dlopen. Then the app's imports are checked against the final
mapping (symbols.py). The kind's rule (rules/) hooks in at fixed points. A refusal anywhere
refuses the whole profile (compose.py): never a half-injected stack. The ELF programs among its
binaries get the same checks (programs.py), each refused alone: nothing else depends on them.
"""

from __future__ import annotations

import os

from shim.knowledge.abi import aliases
from shim.model import SKIP
from shim.plan.context import PlanContext
from shim.plan.job import OfferedLib, ProfileJob, Work
from shim.plan.model import BindSpec
from shim.plan.offered import offered_libraries, usable
from shim.plan.placement import inject_at
from shim.plan.programs import is_host_program, plan_programs
from shim.plan.rules import rule_for
from shim.plan.symbols import check_symbols
from shim.site.profile_model import Profile


def plan_profile(ctx: PlanContext, profile: Profile, requested: bool = False) -> Work:
    """requested: asked for by name (--profile)."""
    job = ProfileJob(ctx, profile, requested)
    rule = rule_for(profile.kind)
    job.libs = offered_libraries(job)
    rule.start(job)
    if job.refused:
        return job.work  # the profile as a whole cannot work here (e.g. driver vs kernel module)
    for lib in job.libs:
        if _already_injected(job, lib) or not usable(job, lib) or rule.take(job, lib):
            continue
        names = aliases(lib.soname)
        targets = {n: p for n in names if (p := ctx.find_in_container(n))}
        if not targets:
            refusals = len(job.work.refusals)
            why = rule.without_target(job, lib, names)
            if why:
                inject_at(job, lib, lib.soname, None, why + rule.note(job, lib))
            elif len(job.work.refusals) == refusals:
                job.skip(lib.soname, lib, "", rule.unused(job, lib, names))
            continue
        for name, target in targets.items():
            if not rule.check_target(job, lib, name, target):
                break
            inject_at(job, lib, name, target, rule.note(job, lib))
    if not job.refused:
        plan_programs(job)
    if not job.refused:
        _needed_offered(job)
    if not job.refused:
        check_symbols(job, rule.symbols_code)
    if not job.refused:
        rule.finish(job)
    _extras(job)
    return job.work


def _already_injected(job: ProfileJob, lib: OfferedLib) -> bool:
    """Put beside another library as its dependency already: one decision per library."""
    real = job.ctx.host_real(lib.host_path)
    return any(job.ctx.host_real(h) == real for h in job.work.injected.values())


def _needed_offered(job: ProfileJob) -> None:
    """A library of the profile that another one it injects needs (libmpicxx needs libmpi) is
    injected under its own SONAME, even where nothing in the image asks for that name."""
    queue = list(dict.fromkeys(job.work.injected.values()))
    while queue:
        requester = queue.pop()
        facts = job.ctx.host_facts(requester)
        for name in facts.needed if facts else ():
            lib = job.offered(name)
            if lib is not None and name not in job.work.cache and not _already_injected(job, lib):
                # It was skipped as unused by the image: it is used, by the profile's own library
                # or program.
                job.work.decisions = [d for d in job.work.decisions
                                      if not (d.host_path == lib.host_path and d.decision == SKIP)]
                inject_at(job, lib, name, None, f"needed by {os.path.basename(requester)}, of the same profile")
                queue.append(lib.host_path)


def _extras(job: ProfileJob) -> None:
    """Plugin directories, binaries that are no ELF programs (scripts: programs.py plans the
    others), configuration files, devices and binds: bound as they are."""
    p = job.profile.provides
    for spec in (*p.plugin_dirs, *p.config_files):
        job.work.binds.extend(BindSpec(m, m) for m in spec.matches)
    for spec in p.binaries:
        job.work.binds.extend(BindSpec(m, m) for m in spec.matches if not is_host_program(job, m))
    for spec in p.devices:
        job.work.binds.extend(BindSpec(m, m, read_only=False, device=True) for m in spec.matches)
    job.work.binds.extend(BindSpec(b.src, b.dst, b.read_only, device=b.device) for b in p.binds)
