"""A launch, planned: the command line and the job's environment in, a launch record out.

image -> site -> (look at the image, when a profile applies or the hardware check has no cached
answer) -> plan -> diagnostics -> record. The record is stored under the launch's key, where the
native front-end finds it next time, and handed to the C executor (shim.launch.execute), which
runs it: the same code runs a record from the cache."""

from __future__ import annotations

import io
import os
import pwd
from dataclasses import dataclass, replace
from pathlib import Path

from shim.errors import ExitCode, ShimError
from shim.pipeline.inputs import FUSE_DEVICE_CHECK, PRESENCE, InputSet, image_inputs, profile_inputs, read_log_inputs
from shim.pipeline.request import LaunchRequest
from shim.record.format import CHECK, IDENTITY, IMG, KEY_ENV_PREFIXES
from shim.record.model import Image, LaunchRecord, RecordBind
from shim.record.snapshot import RecordingEnv, file_input, glob_input

STAGE_DIR = str(Path(__file__).resolve().parent.parent / "stage")
LD_CACHE = "/etc/ld.so.cache"
STAGED_LD_CACHE = "ld.so.cache"


@dataclass
class Planned:
    """A record to run, or (dry run) the exit status of printing the plan."""
    record: LaunchRecord | None = None
    key: str = ""                 # "" : not stored (a command line the front-end does not launch)
    exit_code: int = 0


def _home(environ) -> str:
    home = environ.get("HOME", "")
    if not home.startswith("/"):
        home = pwd.getpwuid(os.getuid()).pw_dir
    return os.path.normpath(home)


def _on_host(host_root: str, path: str) -> str:
    return path if host_root in ("", "/") else os.path.join(host_root, path.lstrip("/"))


def _load_profiles(conf_dir: Path, host_root: str, environ):
    try:  # no profile files: do not even import the profile machinery
        if not any(n.endswith(".toml") and not n.startswith(".") for n in os.listdir(conf_dir / "profiles")):
            return None
    except OSError:
        return None
    from shim.site.profiles import load_profiles

    return load_profiles(conf_dir, host_root=host_root, environ=environ)


def _rendered(plan, quiet: bool, debug: bool) -> str:
    """The diagnostics as the app's stderr gets them (the executor prefixes the node's name in a
    shared container)."""
    from shim.report.render import print_diagnostics

    out = io.StringIO()
    print_diagnostics(plan, out=out, quiet=quiet, verbose=debug)
    return out.getvalue()


def _refusal(plan, strict: bool) -> tuple[int, str] | None:
    if plan.has_errors() or (strict and (plan.refusals() or plan.has_warnings())):
        why = "an injection was refused" if plan.refusals() else "a diagnostic is fatal"
        more = "; --strict makes every refusal and warning fatal" if strict and not plan.has_errors() else ""
        error = ShimError(ExitCode.REFUSED, f"not starting the app: {why}",
                          f"see the lines above{more}; shimrun check IMAGE COMMAND shows the whole plan")
        return int(error.code), str(error)
    return None


def _site_bind_sources(specs, cwd: str) -> list[str]:
    return [os.path.normpath(os.path.join(cwd, s.split(":")[0])) for s in specs if s.split(":")[0]]


def plan_launch(req: LaunchRequest) -> Planned:
    from shim import native
    from shim.diagnose.check import JOB_VARIABLES, apply_site_policy, cached, check_key, host_root, job_inputs
    from shim.host.fingerprint import host_inputs
    from shim.image.open import open_image
    from shim.launch.binds import KEEPDEV, RO, Bind, parse_bind, parse_bind_list, plan_binds
    from shim.launch.environment import DEFAULT_PATH, EnvOptions, env_rules
    from shim.launch.identity import identity_appends
    from shim.launch.preflight import check_arch
    from shim.launch.rootfs import FUSE_DEVICE, choose_rootfs
    from shim.model import ERROR, WARNING
    from shim.plan.model import Plan
    from shim.record.encode import DIRECT, encode
    from shim.site.config import CONFIG_NAME, SYSTEM_CONF_DIR, ConfigError, find_conf_dir, load_site_config

    args, cwd, command = req.args, req.cwd, req.command
    env = RecordingEnv(req.environ, declared=JOB_VARIABLES, ignored=KEY_ENV_PREFIXES)
    inputs = InputSet()
    image = open_image(args.image)
    inputs.extend(image_inputs(image.path, image.kind))
    check_arch(image, env, fatal=not req.dry_run)  # exit 66 before anything is mounted
    site = load_site_config(args.conf)
    conf_dir = find_conf_dir(args.conf)
    inputs.extend([file_input(os.path.join(SYSTEM_CONF_DIR, CONFIG_NAME), IDENTITY | CHECK["FOLLOW"]),
                   file_input(str(conf_dir / CONFIG_NAME), IDENTITY | CHECK["FOLLOW"])])
    hroot = host_root(req.environ)
    profiles = _load_profiles(conf_dir, hroot, env)
    inputs.extend(profile_inputs(str(conf_dir), profiles, hroot))
    if profiles is None and args.profile:
        raise ConfigError(f"unknown profile '{args.profile[0]}' requested",
                          f"no profiles are configured in {conf_dir / 'profiles'}")
    site_binds = [b for b in (parse_bind(s, site.path, cwd, optional=True) for s in site.binds) if b]
    user_binds = parse_bind_list(",".join([req.environ.get("SHIMRUN_BIND", "")] + args.bind), "--bind/SHIMRUN_BIND",
                                 cwd)
    inputs.extend(file_input(src, PRESENCE) for src in _site_bind_sources(site.binds, cwd))
    inputs.extend(file_input(b.src, PRESENCE) for b in user_binds)
    home = None if args.no_home else _home(env)
    workdir = args.pwd or cwd
    rootfs, notices = choose_rootfs(image, args.quiet)
    if rootfs.kind == "squashfs":
        inputs.add(file_input(rootfs.squashfuse, IDENTITY | CHECK["FOLLOW"]))
    elif image.kind != "dir":  # extracted: the copy, while it is there; and a killed extraction's
        # leftover (another image's) makes the next launch a planned one, which removes it
        inputs.add(file_input(rootfs.path, CHECK["EXISTS"] | CHECK["TYPE"] | CHECK["ID"]))
        inputs.add(glob_input(os.path.join(os.path.dirname(rootfs.path), "*.partial.*")))
    if image.kind != "dir":
        inputs.add(file_input(FUSE_DEVICE, FUSE_DEVICE_CHECK))
    appends = identity_appends(home or "/", args.fakeroot)
    inputs.extend(file_input(p, IDENTITY | CHECK["FOLLOW"]) for p in ("/etc/passwd", "/etc/group") if appends)
    env_opts = EnvOptions(cleanenv=args.cleanenv, env_pairs=tuple(args.env), home=home or "/", image_path=image.path,
                          pwd=workdir)
    rules = env_rules(req.environ, env_opts)
    version = native.build_id()
    base = LaunchRecord(version=version, key="", image=Image(IMG["SQUASHFS"] if rootfs.kind == "squashfs"
                                                             else IMG["DIR"], rootfs.path, rootfs.offset,
                                                             rootfs.squashfuse),
                        stage=STAGE_DIR, command=command[0] if command else "true", env=rules,
                        binds=tuple(RecordBind(b.src, b.dst, b.flags) for b in plan_binds(home, cwd, site_binds,
                                                                                         user_binds)),
                        appends=tuple(appends), fakeroot=args.fakeroot, cwd=args.pwd or "",
                        cwd_required=bool(args.pwd) or args.strict, quiet=args.quiet, debug=args.debug,
                        notices=tuple(notices))
    hw_off = bool(req.environ.get("SHIMRUN_NO_HW_CHECK"))
    app = command[0] if command else None
    hw_key = None if hw_off else check_key(image.path, app, req.environ, hroot)
    image_dir = image.path if image.kind == "dir" else ""
    known = cached(hw_key, image_dir) if hw_key else None
    if hw_key:
        inputs.extend(job_inputs(req.environ))
    if hw_key or profiles is not None:
        inputs.extend(host_inputs(hroot))
    wants_analysis = req.dry_run or (hw_key and known is None) or args.profile or (profiles is not None and any(
        p.available and p.applies != "on-request" for p in profiles.profiles) and not args.no_profiles)
    if not wants_analysis:
        found, reads = known or ([], {})
        plan = Plan(image=image.path, diagnostics=apply_site_policy(found, site.policy()))
        if image_dir:
            inputs.extend(read_log_inputs(image_dir, reads))
        ld_cache, extra = None, []
    else:
        from shim.pipeline.analysis import AnalysisJob, analyse

        path = native.record_env(encode(base), {}, DIRECT).get("PATH", DEFAULT_PATH)
        job = AnalysisJob(prepare_record=encode(base), stage=STAGE_DIR, image_path=image.path, image_arch=image.arch,
                          image_dir=image_dir, profiles=profiles, requested=tuple(args.profile),
                          no_profiles=args.no_profiles, command=tuple(command), path=path, host_root=hroot,
                          refusal_severity=ERROR if site.refusal == "error" else WARNING,
                          environ=dict(req.environ), hw_key=hw_key, hw_known=known[0] if known else None,
                          debug=args.debug)
        analysis = analyse(job)
        plan = analysis.plan
        plan.diagnostics = apply_site_policy(plan.diagnostics, site.policy())
        if req.dry_run:
            from shim.report.render import print_plan

            print_plan(plan, req.as_json)
            return Planned(exit_code=int(ExitCode.REFUSED) if plan.has_errors() or (args.strict and plan.refusals())
                           else 0)
        if image_dir:
            inputs.extend(read_log_inputs(image_dir, analysis.image_reads))
            inputs.extend(read_log_inputs(image_dir, known[1] if known else {}))
        for root, reads in analysis.host_reads.items():
            inputs.extend(read_log_inputs(root, reads))
        inputs.add(file_input(_on_host(hroot, LD_CACHE), IDENTITY | CHECK["FOLLOW"]))
        ld_cache = analysis.ld_cache
        # Plan paths are the host's; on a simulated node (SHIMRUN_HOST_ROOT) they lie under its root.
        extra = [Bind(_on_host(hroot, b.src), b.dst, (RO if b.read_only else 0) | (KEEPDEV if b.device else 0))
                 for b in plan.binds]
    inputs.extend(env.read.values())
    stage_files: tuple = ()
    binds = list(base.binds) + [RecordBind(b.src, b.dst, b.flags) for b in extra]
    if ld_cache:
        stage_files = ((STAGED_LD_CACHE, ld_cache),)
        binds.append(RecordBind(os.path.join(STAGE_DIR, STAGED_LD_CACHE), LD_CACHE, RO))
    if plan.env:
        rules = env_rules(req.environ, replace(env_opts, edits=tuple(plan.env)))
    argv = ["shimrun", *req.argv]
    image_at = native.image_index(argv)
    key = native.record_key(argv, image_at, cwd, req.environ) if image_at > 0 else ""
    record = replace(base, key=key, env=rules, binds=tuple(binds), stage_files=stage_files,
                     diagnostics=_rendered(plan, args.quiet, args.debug), refuse=_refusal(plan, args.strict),
                     inputs=tuple(inputs.items))
    return Planned(record, key)


def store(planned: Planned, data: bytes, environ) -> None:
    """Keep the record where the front-end looks for it (unless SHIMRUN_NO_RECORD_CACHE)."""
    from shim.cachefiles import cache_path, write_atomic
    from shim.record.format import NO_RECORD_CACHE, RECORDS_DIR

    if planned.key and not environ.get(NO_RECORD_CACHE):
        write_atomic(cache_path(RECORDS_DIR, f"{planned.key}.rec"), data)
