"""Host programs a profile binds (its `binaries`; a CDI spec's mounts of programs) run in the
container on the IMAGE's loader and glibc, so they fail exactly as an injected library can. Each
ELF program among them (ElfFacts.is_program: ET_EXEC, or a PIE) gets a library's decisions:

- its architecture against the container's libc's (LIB-ARCH-MISMATCH: offered.same_architecture);
- its loader (PT_INTERP) in the container (DEPENDENCY-MISSING: a musl or glibc-less image);
- the glibc floor, the DT_NEEDED closure and the symbol versions it asks of each library: the walk
  every injected library gets (closure.inject_dependencies). A need is met by the image's copy
  when it defines the versions asked for, by the profile's own libraries (injected for it when the
  image did not need them: core._needed_offered), or by the host's copy placed beside them.

A refused program is not bound: it gets its own refuse decision and diagnostic (fatal under
--strict or the site's policy, as a library's refusal), and the profile stands, since nothing else
of it depends on a program. An accepted one is bound read-only where the profile names it (a CDI
mount: at its containerPath), with an inject decision saying what was checked.

Non-goals: scripts and other non-program files among `binaries` are bound as they are
(core._extras); the container is searched with the app's rules, as for libraries (the program's
own RUNPATH names host directories that the container lacks)."""

from __future__ import annotations

import os

from shim.knowledge.abi import is_glibc
from shim.model import REFUSE
from shim.plan.closure import inject_dependencies
from shim.plan.context import glibc_version_key
from shim.plan.job import OfferedLib, ProfileJob, Work, subject
from shim.plan.model import BindSpec
from shim.plan.offered import same_architecture


def is_host_program(job: ProfileJob, host_path: str) -> bool:
    facts = job.ctx.host_facts(host_path)
    return facts is not None and facts.is_program


def host_programs(job: ProfileJob) -> list[OfferedLib]:
    """The ELF programs among the profile's binaries, in profile order, each path once."""
    seen: dict[str, OfferedLib] = {}
    for spec in job.profile.provides.binaries:
        for host_path in spec.matches:
            facts = job.ctx.host_facts(host_path)
            if facts is not None and facts.is_program and host_path not in seen:
                # spec.key: provides.binaries[N], or a CDI spec's containerEdits.mounts[N]
                seen[host_path] = OfferedLib(host_path, spec.entry, facts, os.path.basename(host_path), spec.key)
    return list(seen.values())


def plan_programs(job: ProfileJob) -> None:
    for program in host_programs(job):
        _plan_program(job, program)


def _plan_program(job: ProfileJob, program: OfferedLib) -> None:
    """Check `program` on a trial copy of the profile's work: accepted, what it brought (host
    copies of its dependencies) joins the profile's; refused, only its refusal does."""
    where = dict(job.profile.placed).get(program.host_path, program.host_path)
    work = job.work
    trial = ProfileJob(job.ctx, job.profile, job.requested, libs=job.libs, state=job.state,
                       work=Work(cache=dict(work.cache), injected=dict(work.injected)),
                       fallback=f"{program.soname} is not bound into the container")
    if not (same_architecture(trial, program) and _loader_present(trial, program)
            and inject_dependencies(trial, program, set(work.cache))):
        # Only the refusal: dependencies the trial had placed before it are not bound either.
        work.decisions.extend(d for d in trial.work.decisions if d.decision == REFUSE)
        work.withheld.extend(trial.work.refusals)
        return
    work.decisions.extend(trial.work.decisions)
    work.binds.extend(trial.work.binds)
    work.cache.update(trial.work.cache)
    work.injected.update(trial.work.injected)
    work.binds.append(BindSpec(program.host_path, where))
    # Listed as injected so that the profile's own libraries it needs are injected with it.
    work.injected[where] = program.host_path
    job.inject(program.soname, program, where, _checked(job, program))


def _loader_present(job: ProfileJob, program: OfferedLib) -> bool:
    assert program.facts is not None
    interp = program.facts.interp
    if interp is None or job.ctx.paths.regular_file(interp):
        return True
    job.refuse("DEPENDENCY-MISSING", subject(program),
               f"{interp} (the loader {program.soname} names) is not in the container: its C library is not the "
               "host's glibc, or it has none", "use an image with glibc, or a static build of the program",
               job.key(program))
    return False


def _checked(job: ProfileJob, program: OfferedLib) -> str:
    """The reason of an accepted program's decision: what it was checked for."""
    facts = program.facts
    assert facts is not None
    if not facts.interp:
        return "host program (static): of the container's architecture"
    versions = [v for n in facts.version_needs if is_glibc(n.file) for v, _weak in n.versions
                if v.startswith("GLIBC_2.")]
    newest = max(versions, key=glibc_version_key, default="")
    needs = f"needs up to {newest}, " if newest else ""
    libraries = [n for n in facts.needed if not is_glibc(n)]
    found = f"; {', '.join(libraries)} found" if libraries else ""
    return (f"host program: of the container's architecture; its loader {facts.interp} is there; "
            f"{needs}the container has {job.ctx.glibc_description()}{found}")
