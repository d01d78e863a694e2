"""A launch, planned: the command line and the job's environment in, a launch record out.

The steps, each a function over typed values in a module named for what it decides:
image (image_step) -> site and profiles (site_step) -> image policy (policy_step) -> the
container: binds, root, environment, runscript (container_step) -> the hardware check
(hardware_step) -> the look at the image, when a profile applies or the hardware check has no
cached answer (look_step) -> provenance facts (provenance_step) -> the record (assemble).
Each step returns what it read as inputs, which the executor checks before it runs the record
again. Nothing here prints: what the user is told now is Planned.said (shim/cli prints it) or
the record's diagnostics and notices (the executor prints them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, NamedTuple

from shim import native
from shim.cachefiles import cache_path, write_atomic
from shim.diagnose.check import JOB_VARIABLES, apply_site_policy, host_root
from shim.pipeline.assemble import assembled
from shim.pipeline.audit_wish import wish
from shim.pipeline.container_step import ContainerRequest, container
from shim.pipeline.hardware_step import Found, LookRequest, found_cached, hardware_check, wants_analysis
from shim.pipeline.image_step import check_runnable, open_image
from shim.pipeline.inputs import InputSet
from shim.pipeline.policy_step import judge, refusal_record
from shim.pipeline.request import LaunchRequest
from shim.pipeline.site_step import SiteRequest, SiteStep, read_site
from shim.plan.model import Plan
from shim.record.format import KEY_ENV_PREFIXES, NO_RECORD_CACHE, RECORDS_DIR
from shim.record.model import LaunchRecord
from shim.record.snapshot import RecordingEnv
from shim.verify.shared import shared_digests

if TYPE_CHECKING:
    from shim.pipeline.provenance_step import FactsRequest
    from shim.site.image_policy import PolicyVerdict


class DryPlan(NamedTuple):
    """A dry run's plan, and the problem the launch would stop at before its app runs (exit code,
    message), for shim/cli to print."""
    plan: Plan
    command_problem: tuple[int, str] | None
    served: dict[str, str] | None = None   # how the image's files would be served (ServeDecision.as_dict)


class Planned(NamedTuple):
    """A record to run, or (dry run) the plan to print, or (facts_only) the provenance facts."""
    record: LaunchRecord | None = None
    key: str = ""                   # "" : not stored (a command line the front-end does not launch)
    image_fd: int = -1              # the opened image the record was planned on (the executor mounts it)
    said: tuple[str, ...] = ()      # lines for the user's terminal before the launch
    dry: DryPlan | None = None
    facts: dict | None = None


def record_key(argv: tuple[str, ...], cwd: str, environ: Mapping[str, str]) -> str:
    """The record's key (the native front-end computes the same), "" for a command line the
    front-end does not launch."""
    words = ["shimrun", *argv]
    image_at = native.image_index(words)
    return native.record_key(words, image_at, cwd, environ) if image_at > 0 else ""


def plan_launch(req: LaunchRequest) -> Planned:
    """The launch planned; a SIF's objects are hashed once for its signature check and its
    provenance record alike."""
    with shared_digests():
        return _plan_launch(req)


def _plan_launch(req: LaunchRequest) -> Planned:
    opts, inputs = req.options, InputSet()
    env = RecordingEnv(req.environ, declared=JOB_VARIABLES, ignored=KEY_ENV_PREFIXES)
    root = host_root(req.environ)
    opened = open_image(opts.image, req.image_fd)
    image = opened.image
    inputs.extend(opened.inputs)
    site = read_site(SiteRequest(opts.conf, opts.profile, opts.nv, root, env, tuple(opts.devices or ())))
    inputs.extend(site.inputs)
    judgement = judge(site.site, image, req.environ)
    inputs.extend(judgement.inputs)
    verdict = judgement.verdict
    if verdict is not None and not verdict.allowed:
        if req.dry_run:
            raise verdict.error(opts.image)
        key = record_key(req.argv, req.cwd, req.environ)
        record = refusal_record(image, verdict.error(opts.image), key, tuple(inputs.items))
        return Planned(record, key, image_fd=image.opened.fd)
    check_runnable(image, env, req.dry_run)
    to = () if req.dry_run else _targets(req, site)
    made = container(ContainerRequest(opts, req.cwd, req.environ, env, site.site, req.dry_run), image)
    inputs.extend(made.inputs)
    hw = hardware_check(image, made.command[0] if made.command else None, req.environ, root,
                        site.profiles is not None)
    inputs.extend(hw.inputs)
    want = wish(opts.report_loaded, site.site.audit_report, bool(to), opts.strict)
    look = LookRequest(image, site, made.record, hw, made.command, opts.no_profiles, root, dict(req.environ),
                       opts.debug, req.dry_run, want.on and not req.dry_run)
    found = _found(req, look, site, verdict)
    if isinstance(found, Planned):
        if found.dry is not None:
            return found._replace(dry=found.dry._replace(served=made.served.as_dict()))
        return found
    inputs.extend(found.inputs)
    inputs.extend(env.read.values())
    key = record_key(req.argv, req.cwd, req.environ)
    record = replace(assembled(made.record, found, (req.environ, made.env_options), opts.strict), key=key)
    if want.on:
        from shim.pipeline.audit_step import audited  # only when audited (shim/pipeline/audit_wish.py says why)

        record, audit_inputs = audited(record, found, want, site.site.policy(), root)
        inputs.extend(audit_inputs)
    if to:
        # Only with a provenance record: the facts' modules cost a launch without one ~2 ms to import.
        from shim.pipeline.provenance_step import facts
        from shim.provenance.facts import facts_json

        known = facts(_facts_request(req, look, verdict, site), found.plan)
        inputs.extend(known.inputs)
        record = replace(record, provenance=to, provenance_facts=facts_json(known.facts))
    return Planned(replace(record, inputs=tuple(inputs.items)), key, image.opened.fd, made.said)


def _targets(req: LaunchRequest, site: SiteStep) -> tuple[tuple[int, str], ...]:
    if not req.options.provenance and not site.site.provenance_dirs:
        return ()
    from shim.pipeline.provenance_step import targets  # only with a provenance record (see below)

    return targets(req.options.provenance, req.cwd, site.site)


def _facts_request(req: LaunchRequest, look: LookRequest, verdict: PolicyVerdict | None,
                   site: SiteStep) -> FactsRequest:
    from shim.pipeline.provenance_step import FactsRequest  # only with a provenance record

    return FactsRequest(look.image, req.options.image, look.command, site.site, site.conf_dir, verdict,
                        look.host_root, req.environ)


def _found(req: LaunchRequest, look: LookRequest, site: SiteStep, verdict: PolicyVerdict | None) -> Found | Planned:
    """The look at the image, when one is wanted; else the hardware check's cached answer. A dry
    run or a facts-only plan ends here."""
    policy = site.site.policy()
    if not wants_analysis(req.dry_run, look.hardware, site.requested, site.profiles, look.no_profiles, look.audit):
        return found_cached(look.image, look.hardware, policy)
    # Only when the image is looked at: the look's modules (its child process, the record's encoder,
    # pickle, the loader cache) cost a launch whose verdict is cached ~4 ms to import.
    from shim.launch.analysis import analyse
    from shim.pipeline.look_step import analysis_job, found_in

    analysis = analyse(analysis_job(look))
    plan = replace(analysis.plan, diagnostics=apply_site_policy(analysis.plan.diagnostics, policy))
    if req.facts_only:
        from shim.pipeline.provenance_step import facts  # only for `check --against`

        return Planned(facts=facts(_facts_request(req, look, verdict, site), plan).facts)
    if req.dry_run:
        return Planned(dry=DryPlan(plan, analysis.command_problem))
    return found_in(look, replace(analysis, plan=plan))


def store(planned: Planned, data: bytes, environ: Mapping[str, str]) -> None:
    """Keep the record where the front-end looks for it (unless SHIMRUN_NO_RECORD_CACHE)."""
    if planned.key and not environ.get(NO_RECORD_CACHE):
        write_atomic(cache_path(RECORDS_DIR, f"{planned.key}.rec"), data)
