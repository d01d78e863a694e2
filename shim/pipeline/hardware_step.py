"""Step 5 of planning: the hardware check's key and its cached answer, and whether the image must
be looked at (profiles that apply, an unknown hardware verdict, a dry run): what a look would be
asked (LookRequest, run by look_step), or what planning found without one (found_cached)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

from shim.diagnose.check import apply_site_policy, cached, check_key, job_inputs
from shim.host.fingerprint import host_inputs
from shim.image.open import ImageRef
from shim.pipeline.inputs import read_log_inputs
from shim.pipeline.site_step import SiteStep
from shim.plan.model import Plan
from shim.record.model import Input, LaunchRecord, RecordBind

if TYPE_CHECKING:
    from shim.audit.look import AuditLook
    from shim.site.profile_model import ProfileSet


class HardwareCheck(NamedTuple):
    key: str | None                 # None: the check is off (SHIMRUN_NO_HW_CHECK)
    known: tuple | None             # its cached answer (diagnostics, reads), or None: run it
    inputs: tuple[Input, ...]


def hardware_check(image: ImageRef, app: str | None, environ: Mapping[str, str], host_root: str,
                   with_profiles: bool) -> HardwareCheck:
    key = None if environ.get("SHIMRUN_NO_HW_CHECK") else check_key(image, app, environ, host_root)
    known = cached(key, image.via if image.kind == "dir" else "") if key else None
    inputs: list[Input] = list(job_inputs(environ)) if key else []
    if key or with_profiles:
        inputs += host_inputs(host_root)
    return HardwareCheck(key, known, tuple(inputs))


def wants_analysis(dry_run: bool, hw: HardwareCheck, requested: tuple[str, ...], profiles: ProfileSet | None,
                   no_profiles: bool, audit: bool = False) -> bool:
    """The image is looked at for a dry run, an unknown hardware verdict, a profile that applies,
    or an audit (is the app a glibc program?)."""
    return bool(dry_run or audit or (hw.key and hw.known is None) or requested or (
        profiles is not None and not no_profiles
        and any(p.available and p.applies != "on-request" for p in profiles.profiles)))


class Found(NamedTuple):
    """What planning found: the plan, and what the launch adds for it."""
    plan: Plan
    ld_cache: bytes | None = None
    binds: tuple[RecordBind, ...] = ()
    inputs: tuple[Input, ...] = ()
    audit: AuditLook | None = None  # the look's answer for the audit (None: not looked)


def found_cached(image: ImageRef, hw: HardwareCheck, policy: dict) -> Found:
    """Not looked at: the hardware check's cached answer (or none), under the site's policy."""
    found, reads = hw.known or ([], {})
    inputs = tuple(read_log_inputs(image.path, reads)) if image.kind == "dir" else ()
    return Found(Plan(image=image.path, diagnostics=apply_site_policy(found, policy)), inputs=inputs)


class LookRequest(NamedTuple):
    image: ImageRef
    site: SiteStep
    base: LaunchRecord              # the container's record (what the child mounts, and its PATH)
    hardware: HardwareCheck
    command: tuple[str, ...]
    no_profiles: bool
    host_root: str
    environ: dict
    debug: bool
    dry_run: bool
    audit: bool = False             # --report-loaded: the look judges whether the app can be audited
