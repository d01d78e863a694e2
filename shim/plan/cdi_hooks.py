"""A CDI device set's hooks (as shim/cdi/hooks.py interpreted them), applied to the plan once its
profile is accepted: the links, the folders folded into the re-pointed ld.so.cache, a decision per
hook for `check`, and a warning per unknown hook the site lets be skipped. A refused profile's
hooks do nothing (its links would point at libraries that are not there)."""

from __future__ import annotations

import os

from shim.model import INJECT, SKIP, WARNING, Decision, Diagnostic
from shim.plan.context import PlanContext
from shim.plan.model import Plan
from shim.site.profile_model import Profile


def apply_hooks(plan: Plan, repoint: dict[str, str], ctx: PlanContext, profile: Profile, accepted: bool) -> None:
    hooks = profile.hooks
    if hooks is None:
        return
    for n in hooks.notes:
        done = n.done and accepted
        reason = n.reason if accepted else f"not applied: profile {profile.name} refused"
        plan.decisions.append(Decision(f"hook {n.hook}", n.path, n.container_path, INJECT if done else SKIP,
                                       reason, profile.name))
    plan.diagnostics.extend(Diagnostic("CDI-HOOK-SKIPPED", WARNING, w, "the spec's other edits are applied",
                                       f"{profile.file}: containerEdits.hooks") for w in hooks.warnings)
    if not accepted:
        return
    plan.links.extend(hooks.links)
    for folder in hooks.ldcache_folders:
        _fold(repoint, ctx, folder)
        plan.links.extend(_soname_links(repoint, plan, folder))


def _fold(repoint: dict[str, str], ctx: PlanContext, folder: str) -> None:
    """The image's libraries in `folder` made findable by SONAME, as ldconfig would index them; a
    name the image's cache or the plan already leads somewhere keeps that place."""
    try:
        names = sorted(os.listdir(ctx.in_root(folder)))
    except OSError:
        return   # the folder is only made by the spec's own mounts: those are in `repoint` already
    for name in names:
        if ".so" not in name:
            continue
        path = f"{folder}/{name}"
        facts = ctx.container_facts(path)
        soname = facts.soname if facts else None
        if not soname or soname in repoint or ctx.container.ld_cache.lookup(soname):
            continue
        repoint[soname] = f"{folder}/{soname}" if soname in names else path


def _soname_links(repoint: dict[str, str], plan: Plan, folder: str) -> list[tuple[str, str]]:
    """The SONAME links ldconfig makes in the folder for the libraries placed there (libcuda.so.1 ->
    libcuda.so.535.104.05), for programs that open a library by its path rather than its name."""
    out = []
    for soname, path in repoint.items():
        link = f"{folder}/{soname}"
        if os.path.dirname(path) == folder and path != link and link not in {p for _, p in plan.links}:
            out.append((os.path.basename(path), link))
    return out
