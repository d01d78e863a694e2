"""The last step of planning: the record as the executor runs it — the plan's diagnostics as the
app's stderr gets them, the refusal (if any), the environment with the profiles' edits."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import replace

from shim.container.environment import EnvOptions, env_rules
from shim.errors import ExitCode, ShimError
from shim.pipeline.hardware_step import Found
from shim.pipeline.stage import STAGED_LD_CACHE
from shim.plan.model import Plan
from shim.record.model import LaunchRecord
from shim.report.render import print_diagnostics


def rendered(plan: Plan, quiet: bool, debug: bool) -> str:
    """The diagnostics as the app's stderr gets them (the executor prefixes the node's name in a
    shared container)."""
    out = io.StringIO()
    print_diagnostics(plan, out=out, quiet=quiet, verbose=debug)
    return out.getvalue()


def refusal(plan: Plan, strict: bool) -> tuple[int, str] | None:
    if plan.has_errors() or (strict and (plan.refusals() or plan.has_warnings())):
        why = "an injection was refused" if plan.refusals() else "a diagnostic is fatal"
        more = "; --strict makes every refusal and warning fatal" if strict and not plan.has_errors() else ""
        error = ShimError(ExitCode.REFUSED, f"not starting the app: {why}",
                          f"see the lines above{more}; shimrun check IMAGE COMMAND shows the whole plan")
        return int(error.code), str(error)
    return None


def assembled(base: LaunchRecord, found: Found, env: tuple[Mapping[str, str], EnvOptions],
              strict: bool) -> LaunchRecord:
    """The container's record with what the look found: its binds, the staged loader cache, the
    profiles' environment edits, the diagnostics and the refusal. `env`: the job's environment and
    the container's environment options."""
    plan, (environ, env_options) = found.plan, env
    rules = env_rules(environ, replace(env_options, edits=tuple(plan.env))) if plan.env else base.env
    return replace(base, env=rules, binds=base.binds + found.binds,
                   links=base.links + tuple((target, path) for target, path in plan.links),
                   stage_files=((STAGED_LD_CACHE, found.ld_cache),) if found.ld_cache else (),
                   diagnostics=rendered(plan, base.quiet, base.debug), refuse=refusal(plan, strict))
