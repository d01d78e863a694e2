"""RDMA profiles (kind "rdma"): each host verbs provider needs the IBVERBS_PRIVATE_<N> version
node of the libibverbs that loads it (the host's when the profile injects libibverbs.so.1, else
the image's); otherwise libibverbs skips it and the device is unusable (RDMA-PROVIDER-ABI).
Providers that are links out of their directory get the host file bound where the link leads."""

from __future__ import annotations

import os

from shim.knowledge.rdma import provider_abi, provider_of, verbs_library
from shim.model import INJECT
from shim.plan.job import ProfileJob
from shim.plan.model import BindSpec
from shim.plan.rules.base import Rule

Provider = tuple[str, int, str]   # (host path, ABI from its file name, profile entry)


class RdmaRule(Rule):
    kind = "rdma"

    def finish(self, job: ProfileJob) -> None:
        providers = _host_providers(job)
        if not providers:
            return
        _provider_targets(job, providers)
        verbs = _verbs_in_use(job)
        if verbs is None:
            return  # no libibverbs in the container: nothing loads the providers
        verbs_facts, whose = verbs
        defined = sorted(n for v in verbs_facts.version_defs if (n := provider_abi(v)) is not None)
        have = ", ".join(f"IBVERBS_PRIVATE_{n}" for n in defined) or "no IBVERBS_PRIVATE_ version"
        for host_path, abi, entry in providers:
            name = os.path.basename(host_path)
            facts = job.ctx.host_facts(host_path)
            # The version node the provider requires is the truth; the file name is a fallback
            # for a provider linked without symbol versions.
            needs = sorted({n for need in (facts.version_needs if facts else ())
                            if need.file.startswith("libibverbs.so") for v, _weak in need.versions
                            if (n := provider_abi(v)) is not None}) or [abi]
            missing = [n for n in needs if n not in defined]
            if missing:
                fix = ("the host's libibverbs and its providers come from different rdma-core builds: reinstall "
                       "rdma-core" if whose.startswith("the host's") else
                       f"use an image whose rdma-core has provider ABI {missing[0]}, or have the site inject the "
                       "host's libibverbs.so.1 with its providers")
                job.refuse("RDMA-PROVIDER-ABI", (name, host_path, ""),
                           f"{name} needs IBVERBS_PRIVATE_{missing[0]} (provider ABI {missing[0]}), but {whose} "
                           f"defines {have}: libibverbs would not load it and the device would be unusable",
                           fix, job.key(table="provides.plugin_dirs") + f" ({entry})")
                return
            job.inject(name, host_path, host_path, f"verbs provider (ABI {needs[0]}) for {whose}")


def _host_providers(job: ProfileJob) -> list[Provider]:
    """The verbs providers the profile injects: lib<driver>-rdmav<N>.so in its plugin
    directories or libraries."""
    out = []
    for spec in job.profile.provides.plugin_dirs:
        for d in spec.matches:
            try:
                names = sorted(os.listdir(job.ctx.on_host(d)))
            except OSError:
                continue
            out += [(f"{d}/{n}", found[1], spec.entry) for n in names if (found := provider_of(n))]
    for spec in job.profile.provides.libraries:
        out += [(p, found[1], spec.entry) for p in spec.matches if (found := provider_of(os.path.basename(p)))]
    return out


def _provider_targets(job: ProfileJob, providers: list[Provider]) -> None:
    """rdma-core installs providers with a public library (mlx5, efa, ...) as links to it
    (libibverbs/libmlx5-rdmav34.so -> ../libmlx5.so.1.24.0): inside the container the link
    resolves among the image's files, so the host's file goes where the link leads."""
    ctx = job.ctx
    for host_path, _abi, _entry in providers:
        real = ctx.host_real(host_path)
        if real != host_path and os.path.dirname(real) != os.path.dirname(host_path) \
                and os.path.isfile(ctx.on_host(real)):
            spec = BindSpec(real, real)
            if spec not in job.work.binds:
                job.work.binds.append(spec)


def _verbs_in_use(job: ProfileJob):
    """(facts, description) of the libibverbs.so.1 the container will load, None if none."""
    ctx, verbs = job.ctx, verbs_library()
    injected = next((d for d in job.work.decisions if d.library == verbs and d.decision == INJECT), None)
    if injected:
        facts = ctx.host_facts(injected.host_path)
        return (facts, f"the host's {verbs} ({injected.host_path}), which this profile injects") if facts else None
    inside = ctx.find_in_container(verbs)
    if inside is None:
        return None
    real = ctx.real_in_root(inside)
    facts = ctx.container_facts(real)
    return (facts, f"the image's {verbs} ({real})") if facts else None
