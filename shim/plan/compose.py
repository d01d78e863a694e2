"""The whole plan of one launch (or `check`): which profiles apply, each planned (core.py),
accepted or refused as a whole, and merged; from the plan cache when nothing it read changed.
Pure over its request: it reads files, writes nothing but the caches."""

from __future__ import annotations

import dataclasses
import os

from shim.elf.cache import FactsCache
from shim.elf.facts import elf_facts
from shim.elf.rootpath import recording
from shim.model import INJECT, REFUSE, EnvEdit
from shim.plan.cache import CachedPlan, load_plan, plan_key, store_plan
from shim.plan.cdi_hooks import apply_hooks
from shim.plan.context import PlanContext
from shim.plan.core import plan_profile
from shim.plan.model import Plan
from shim.plan.placement import cache_file
from shim.plan.request import PlanRequest
from shim.plan.selection import select_profiles
from shim.site.profile_model import Profile


def plan_for_image(request: PlanRequest, use_cache: bool = True, stats: dict | None = None) -> CachedPlan:
    """The plan and the re-pointed ld.so.cache it needs (for the launch to put in place)."""
    key = plan_key(request) if use_cache and request.profiles is not None else None
    hit = load_plan(key, request.root) if key else None
    entry = hit or compute_plan(request)
    if key and not hit:
        store_plan(key, entry)
    if stats is not None:
        stats["plan_cache"] = "hit" if hit else ("miss" if key else "off")
    return entry


def compute_plan(request: PlanRequest) -> CachedPlan:
    plan = Plan(image=request.image)
    if request.profiles is None:
        return CachedPlan(plan, None, {}, {})
    # Host files keep their identity between runs: their facts are cached per user. The image's
    # files get a new st_dev with every mount, so caching them would only churn the cache.
    host_facts = FactsCache()
    inside = os.path.join(os.path.realpath(request.root), "")

    def facts(p: str):
        return elf_facts(p) if os.path.realpath(p).startswith(inside) else host_facts.get(p)

    root, host_root = os.path.abspath(request.root), os.path.abspath(request.host.root)
    with recording(root, host_root) as log:
        ctx = PlanContext(request, facts)
        profiles = request.profiles.profiles
        image_names = ctx.container_sonames({n for p in profiles for n in p.stands_in_for})
        repoint: dict[str, str] = {}
        for sel in select_profiles(request.profiles, list(request.requested), request.no_profiles, image_names):
            if sel.applies:
                _add_profile(plan, repoint, ctx, sel.profile)
        ld_cache = cache_file(ctx, repoint) if repoint else None
    host_facts.save()
    return CachedPlan(plan, ld_cache, log.reads[root] if request.image_dir else {}, {host_root: log.reads[host_root]})


def _add_profile(plan: Plan, repoint: dict[str, str], ctx: PlanContext, profile: Profile) -> None:
    plan.profiles.append(profile.name)
    work = plan_profile(ctx, profile, requested=profile.name in ctx.request.requested)
    severity = ctx.request.refusal_severity
    # A program refused alone (programs.py) is not bound; the profile's other files still are.
    plan.diagnostics.extend(dataclasses.replace(d, severity=severity) for d in work.withheld)
    if work.refusals:
        # Never a half-injected stack: one refusal refuses the whole profile.
        first = work.refusals[0]
        for d in work.decisions:
            plan.decisions.append(dataclasses.replace(d, decision=REFUSE, reason=f"profile {profile.name} refused: "
                                                      f"{first.code}") if d.decision == INJECT else d)
        plan.diagnostics.extend(dataclasses.replace(d, severity=severity) for d in work.refusals)
        apply_hooks(plan, repoint, ctx, profile, accepted=False)
        return
    plan.decisions.extend(work.decisions)
    plan.binds.extend(work.binds)
    repoint.update(work.cache)
    plan.env.extend(env_edits(profile))
    apply_hooks(plan, repoint, ctx, profile, accepted=True)


def env_edits(profile: Profile) -> list[EnvEdit]:
    """The profile's [env] as edits, in the file's order within set, prepend, append, unset."""
    env = profile.env
    return ([EnvEdit("set", k, v, profile.name) for k, v in env.set]
            + [EnvEdit("prepend", k, v, profile.name) for k, v in env.prepend]
            + [EnvEdit("append", k, v, profile.name) for k, v in env.append]
            + [EnvEdit("unset", k, "", profile.name) for k in env.unset])

