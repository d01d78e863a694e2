"""`shimrun [OPTIONS] IMAGE COMMAND [ARGS...]`: run COMMAND inside IMAGE, unprivileged.

The pipeline: image -> host facts -> container facts -> injection plan -> diagnostics -> launch.
Without applicable profiles the image is not analysed at all (the fast path)."""

from __future__ import annotations

import argparse
import os
import pwd
import sys
import time
from pathlib import Path

from shim.errors import ExitCode, ShimError, UsageError

STAGE_DIR = Path(__file__).resolve().parent.parent / "stage"


def add_image_options(p: argparse.ArgumentParser) -> None:
    """Options shared by the run and by `check`: what gets injected and how strictly."""
    p.add_argument("--conf", metavar="DIR", help="site configuration directory (default: SHIMRUN_CONF, /etc/shim)")
    p.add_argument("--profile", action="append", default=[], metavar="NAME",
                   help="apply injection profile NAME (repeatable)")
    p.add_argument("--no-profiles", action="store_true", help="apply no profile unless requested with --profile")
    p.add_argument("--strict", action="store_true", help="a refused injection or a warning is fatal")
    p.add_argument("--quiet", action="store_true", help="print errors only, no warnings or info")
    p.add_argument("--debug", action="store_true", help="show each set-up step (and tracebacks)")


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-B", "--bind", action="append", default=[], metavar="SRC[:DST[:ro]]",
                   help="bind a host path into the container (repeatable; also SHIMRUN_BIND=a,b)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="set K=V in the container (repeatable; also SHIMRUNENV_K=V)")
    p.add_argument("--cleanenv", action="store_true", help="pass no host variables except TERM, proxies, Slurm/PMI")
    p.add_argument("--fakeroot", action="store_true", help="appear as root (uid 0) inside the container")
    p.add_argument("--pwd", metavar="DIR", help="working directory inside the container (default: the current one)")
    p.add_argument("--no-home", action="store_true", help="do not bind the home directory")
    p.add_argument("--dry-run", action="store_true", help="print the injection plan and diagnostics, do not run")
    p.add_argument("--json", action="store_true", help="with --dry-run: the plan as JSON")
    add_image_options(p)
    p.add_argument("image", metavar="IMAGE", help="SIF file, squashfs file or directory")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARGS...]")


def _home() -> str:
    home = os.environ.get("HOME", "")
    if not home.startswith("/"):
        home = pwd.getpwuid(os.getuid()).pw_dir
    return os.path.normpath(home)


def main(args: argparse.Namespace) -> int:
    if not args.command and not args.dry_run:
        raise UsageError("no command given", "usage: shimrun [OPTIONS] IMAGE COMMAND [ARGS...]")
    return run(args, dry_run=args.dry_run, as_json=args.json)


def run(args: argparse.Namespace, dry_run: bool, as_json: bool) -> int:
    from shim.image.open import open_image
    from shim.launch.binds import KEEPDEV, RO, Bind, parse_bind, parse_bind_list, plan_binds
    from shim.launch.environment import EnvOptions, compose
    from shim.launch.execute import LaunchSpec, execute, finish, prepare
    from shim.launch.identity import identity_appends
    from shim.launch.preflight import check_arch
    from shim.launch.rootfs import choose_rootfs
    from shim.site.config import find_conf_dir, load_site_config

    command = list(getattr(args, "command", None) or [])
    cwd = os.getcwd()
    image = open_image(args.image)
    check_arch(image)
    site = load_site_config(args.conf)
    profiles = _load_profiles(find_conf_dir(args.conf))
    site_binds = [b for b in (parse_bind(s, site.path, cwd, optional=True) for s in site.binds) if b]
    user_binds = parse_bind_list(",".join([os.environ.get("SHIMRUN_BIND", "")] + getattr(args, "bind", [])),
                                 "--bind/SHIMRUN_BIND", cwd)
    no_home = getattr(args, "no_home", False)
    fakeroot = getattr(args, "fakeroot", False)
    home = None if no_home else _home()
    workdir = getattr(args, "pwd", None) or cwd
    host_env = dict(os.environ, PWD=workdir)
    env_pairs = list(getattr(args, "env", []))
    spec = LaunchSpec(rootfs=choose_rootfs(image), stage=str(STAGE_DIR),
                      binds=plan_binds(home, cwd, site_binds, user_binds), cwd=workdir, argv=command or ["true"],
                      env=compose(host_env, EnvOptions(cleanenv=getattr(args, "cleanenv", False),
                                                       env_pairs=tuple(env_pairs), home=home or "/",
                                                       image_path=image.path)),
                      fakeroot=fakeroot, debug=args.debug, appends=identity_appends(home or "/", fakeroot))
    wants_analysis = dry_run or args.profile or (profiles is not None and any(
        p.available and p.applies != "on-request" for p in profiles.profiles) and not args.no_profiles)
    if not wants_analysis:
        raise execute(spec)

    from shim.plan.inject import plan_for_image
    from shim.plan.model import ERROR, WARNING
    from shim.report.render import print_diagnostics, print_plan

    root = prepare(spec)
    started, stats = time.perf_counter(), {}
    plan = plan_for_image(root, image.path, profiles, args.profile, args.no_profiles, command[:1],
                          spec.env.direct.get("PATH", ""), scratch=spec.stage,
                          refusal_severity=ERROR if site.refusal == "error" else WARNING,
                          use_cache=not os.environ.get("SHIMRUN_NO_PLAN_CACHE"), stats=stats)
    if args.debug:
        print(f"shimrun: debug: analysis {1000 * (time.perf_counter() - started):.1f} ms "
              f"(plan cache {stats['plan_cache']})", file=sys.stderr)
    if dry_run:
        print_plan(plan, as_json)
        return int(ExitCode.REFUSED) if plan.has_errors() or (args.strict and plan.refusals()) else 0
    print_diagnostics(plan, quiet=args.quiet)
    if plan.has_errors() or (args.strict and (plan.refusals() or plan.has_warnings())):
        raise ShimError(ExitCode.REFUSED, "not starting the app: " + (
            "an injection was refused" if plan.refusals() else "a diagnostic is fatal"),
            "see the lines above; rerun with --dry-run for the whole plan, or without --strict")
    for key, value in plan.env_set.items():
        env_pairs.append(f"{key}={value}")
    for key, value in plan.env_prepend.items():
        env_pairs.append(f"PREPEND_PATH={value}" if key == "PATH" else f"{key}={value}")
    for key, value in plan.env_append.items():
        env_pairs.append(f"APPEND_PATH={value}" if key == "PATH" else f"{key}={value}")
    env = compose(host_env, EnvOptions(cleanenv=getattr(args, "cleanenv", False), env_pairs=tuple(env_pairs),
                                       home=home or "/", image_path=image.path))
    for name in plan.env_unset:
        env.direct.pop(name, None)
    binds = list(spec.binds) + [Bind(b.src, b.dst, (RO if b.read_only else 0) | (KEEPDEV if b.device else 0))
                                 for b in plan.binds]
    sys.stderr.flush()
    raise finish(LaunchSpec(rootfs=spec.rootfs, stage=spec.stage, binds=binds, cwd=spec.cwd, argv=spec.argv,
                            env=env, appends=spec.appends, fakeroot=spec.fakeroot, debug=spec.debug))


def _load_profiles(conf_dir: Path):
    if not (conf_dir / "profiles").is_dir():
        return None
    from shim.site.profiles import load_profiles

    return load_profiles(conf_dir)
