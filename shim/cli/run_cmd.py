"""`shimrun [OPTIONS] IMAGE COMMAND [ARGS...]`: run COMMAND inside IMAGE, unprivileged.

The pipeline: image -> host facts -> container facts -> injection plan -> diagnostics -> launch.
Without applicable profiles the image is not analysed at all (the fast path)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import pwd
import sys
import time
from pathlib import Path

from shim.errors import ExitCode, ShimError, UsageError
from shim.options import APPEND, FLAG, image_options, launch_options

STAGE_DIR = Path(__file__).resolve().parent.parent / "stage"
LD_CACHE = "/etc/ld.so.cache"


def _on_host(host_root: str, path: str) -> str:
    return path if host_root in ("", "/") else os.path.join(host_root, path.lstrip("/"))


def _add(p: argparse.ArgumentParser, options) -> None:
    """argparse arguments from shim/options.py's table (the native front-end's table too)."""
    for opt in options:
        kw: dict = {"dest": opt.dest, "help": opt.help}
        if opt.kind == FLAG:
            kw["action"] = "store_true"
        elif opt.kind == APPEND:
            kw.update(action="append", default=[], metavar=opt.metavar)
        else:
            kw["metavar"] = opt.metavar
        p.add_argument(*opt.names, **kw)


def add_image_options(p: argparse.ArgumentParser) -> None:
    """Options shared by the run and by `check`: what gets injected and how strictly."""
    _add(p, image_options())


def add_run_options(p: argparse.ArgumentParser) -> None:
    _add(p, launch_options())
    p.add_argument("image", metavar="IMAGE", help="SIF file, squashfs file or directory")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARGS...]")


def current_directory() -> str:
    try:
        return os.getcwd()
    except OSError as e:  # removed (or made unreadable) under the caller
        raise UsageError(f"the current directory cannot be read ({e.strerror}): it was removed or its "
                         "permissions changed", "cd to an existing directory and run again") from None


def _home(environ=os.environ) -> str:
    home = environ.get("HOME", "")
    if not home.startswith("/"):
        home = pwd.getpwuid(os.getuid()).pw_dir
    return os.path.normpath(home)


def main(args: argparse.Namespace) -> int:
    if not args.command and not args.dry_run:
        raise UsageError("no command given", "usage: shimrun [OPTIONS] IMAGE COMMAND [ARGS...]")
    if args.pwd is not None and not args.pwd.startswith("/"):
        raise UsageError(f"--pwd {args.pwd}: not an absolute path", "give the container directory as /path")
    return run(args, dry_run=args.dry_run, as_json=args.json)


def run(args: argparse.Namespace, dry_run: bool, as_json: bool) -> int:
    from shim.cachefiles import set_quiet

    set_quiet(args.quiet)
    command = list(getattr(args, "command", None) or [])
    cwd = current_directory()
    inherited = _inherited_listener()
    sharing = not dry_run and (os.environ.get("SHIMRUN_SHARE") or os.environ.get("SLURM_STEP_ID"))
    if not sharing:  # the common single launch does not even import the sharing code
        if inherited is not None:
            inherited.close()
        return _launch(args, command, cwd, dry_run, as_json, listener=None)
    from shim.launch.execute import join
    from shim.launch.share import Joined, join_or_lead, share_group

    group = share_group(sys.argv[1:], os.environ, cwd, args.image)
    if inherited is not None and (group is None or inherited.getsockname() != group.name):
        inherited.close()  # not ours after all (cannot happen unless the two namings disagree)
        inherited = None
    if group is None:
        return _launch(args, command, cwd, dry_run, as_json, listener=None)
    for attempt in (1, 2):
        if inherited is not None:
            got, inherited = inherited, None  # the native front-end won the election for us
        else:
            try:
                got = join_or_lead(group, sys.argv[1:], cwd, os.environ)
            except PermissionError as e:
                print(f"shimrun: warning: {e.strerror}: running this rank in a container of its own", file=sys.stderr)
                return _launch(args, command, cwd, dry_run, as_json, listener=None)
        if isinstance(got, Joined):
            raise join(got)
        if isinstance(got, str):  # the holder refused this rank
            code, _, message = got.partition("\0")
            raise ShimError(_exit_code(code), message)
        if attempt == 2:
            break
        if args.debug:
            print(f"shimrun: debug: leading the shared container of {group.scope}", file=sys.stderr)
        _launch(args, command, cwd, dry_run, as_json, listener=got, group=group)  # returns once it serves
    raise ShimError(ExitCode.LAUNCH, "the node's shared container went away before this rank joined it",
                    "run again; SHIMRUN_SHARE=0 runs a container per process")


def _inherited_listener():
    """The group socket the native front-end bound and listens on when it made this rank the
    node's leader (SHIMRUN_LISTEN_FD); removed from the environment, which names the group."""
    fd = os.environ.pop("SHIMRUN_LISTEN_FD", None)
    if not fd or not fd.isdigit():
        return None
    import socket

    try:
        sock = socket.socket(fileno=int(fd))
    except OSError:
        return None
    os.set_inheritable(sock.fileno(), False)
    return sock


def _exit_code(text: str) -> ExitCode:
    try:
        return ExitCode(int(text))
    except ValueError:
        return ExitCode.LAUNCH


def _launch_env(args: argparse.Namespace, image_path: str, edits: tuple = (),
                environ: dict[str, str] | None = None, cwd: str | None = None):
    """The app's environment (shim.launch.environment); `edits`: the applied profiles' [env]."""
    from shim.launch.environment import EnvOptions, compose

    environ = dict(os.environ) if environ is None else environ
    home = None if getattr(args, "no_home", False) else _home(environ)
    workdir = getattr(args, "pwd", None) or cwd or current_directory()
    return compose(dict(environ, PWD=workdir), EnvOptions(
        cleanenv=getattr(args, "cleanenv", False), env_pairs=tuple(getattr(args, "env", [])),
        home=home or "/", image_path=image_path, edits=tuple(edits)))


def _exec_spec_for(image_path: str, edits: tuple = ()):
    """The holder's answer to a rank: its argv/env composed from its own request, as a single
    launch would (runs after the pivot: only modules imported already)."""
    from shim.cli.main import SUBCOMMANDS, _parser
    from shim.launch.share import ExecSpec, Refused, parse_request

    def exec_spec(request: bytes) -> ExecSpec:
        argv, cwd, environ = parse_request(request)
        if argv[:1] and argv[0] in SUBCOMMANDS:
            raise Refused(int(ExitCode.USAGE), f"{argv[0]} cannot join a running container")
        try:
            ns = _parser(argv).parse_args(argv)
        except SystemExit:
            raise Refused(int(ExitCode.USAGE), "invalid arguments (see shimrun --help)") from None
        env = _launch_env(ns, image_path, edits, environ=environ, cwd=cwd)
        command = list(ns.command) or ["true"]
        workdir = ns.pwd or cwd
        # The holder sees the container: the working-directory rule of a single launch, here.
        if not os.path.isdir(workdir):
            if ns.pwd or ns.strict:
                raise Refused(int(ExitCode.LAUNCH), f"working directory {workdir}: no such directory in the "
                              "container (give --pwd a directory the image has, or bind one there with --bind)")
            if ns.quiet:
                workdir = "/"  # the rank's own chdir would warn
        if os.path.isdir("/.singularity.d/env") and os.access("/bin/sh", os.X_OK):
            return ExecSpec(workdir, ["/bin/sh", "-c", env.action_script, "shimrun", *command],
                            [f"{k}={v}" for k, v in env.base.items()])
        return ExecSpec(workdir, command, [f"{k}={v}" for k, v in env.direct.items()])

    return exec_spec


def _launch(args: argparse.Namespace, command: list[str], cwd: str, dry_run: bool, as_json: bool, listener,
            group=None) -> int:
    """The pipeline: image -> host facts -> container facts -> plan -> diagnostics -> launch. With
    `listener` (this rank leads a shared container) the set-up runs in the holder it forks, and
    this returns once the holder serves; otherwise it execs the app (or prints the plan)."""
    from shim.diagnose.check import apply_site_policy, cached, check_key, host_root, recorded_check, store
    from shim.image.open import open_image
    from shim.launch.binds import KEEPDEV, RO, Bind, parse_bind, parse_bind_list, plan_binds
    from shim.launch.execute import LaunchSpec, execute, finish, hold, prepare
    from shim.launch.identity import identity_appends
    from shim.launch.preflight import check_arch
    from shim.launch.rootfs import choose_rootfs
    from shim.plan.model import Plan
    from shim.site.config import find_conf_dir, load_site_config

    image = open_image(args.image)
    check_arch(image, os.environ, fatal=not dry_run)  # exit 66 before anything is mounted
    site = load_site_config(args.conf)
    conf_dir = find_conf_dir(args.conf)
    profiles = _load_profiles(conf_dir, host_root(os.environ))
    if profiles is None and args.profile:
        from shim.site.config import ConfigError

        raise ConfigError(f"unknown profile '{args.profile[0]}' requested",
                          f"no profiles are configured in {conf_dir / 'profiles'}")
    site_binds = [b for b in (parse_bind(s, site.path, cwd, optional=True) for s in site.binds) if b]
    user_binds = parse_bind_list(",".join([os.environ.get("SHIMRUN_BIND", "")] + getattr(args, "bind", [])),
                                 "--bind/SHIMRUN_BIND", cwd)
    fakeroot = getattr(args, "fakeroot", False)
    home = None if getattr(args, "no_home", False) else _home()
    workdir = getattr(args, "pwd", None) or cwd
    spec = LaunchSpec(rootfs=choose_rootfs(image, args.quiet), stage=str(STAGE_DIR),
                      binds=plan_binds(home, cwd, site_binds, user_binds), cwd=workdir, argv=command or ["true"],
                      env=_launch_env(args, image.path),
                      fakeroot=fakeroot, debug=args.debug, appends=identity_appends(home or "/", fakeroot),
                      cwd_required=bool(getattr(args, "pwd", None)) or args.strict, quiet=args.quiet)
    node = group.node if group else ""
    hw_off = bool(os.environ.get("SHIMRUN_NO_HW_CHECK"))
    hw_key = None if hw_off else check_key(image.path, command[0] if command else None, os.environ,
                                           host_root(os.environ))
    image_dir = image.path if image.kind == "dir" else ""
    hw = [] if hw_off else cached(hw_key, image_dir) if hw_key else None
    wants_analysis = dry_run or hw is None or args.profile or (profiles is not None and any(
        p.available and p.applies != "on-request" for p in profiles.profiles) and not args.no_profiles)
    if not wants_analysis:
        # Warm: the hardware check's result is known and no profile applies: nothing to analyse.
        _report(args, Plan(image=image.path, diagnostics=apply_site_policy(hw, site.policy())), node)
        if listener is None:
            raise execute(spec)
        hold(listener, lambda: (spec, False, _exec_spec_for(image.path)), group.expected, group.linger_ms)
        return 0

    def set_up():
        """In this process or in the holder: mount, analyse, report; the final spec."""
        from shim.host.gather import gather_host_view
        from shim.image.regular import reading_image
        from shim.model import ERROR, WARNING
        from shim.plan.compose import plan_for_image
        from shim.plan.request import PlanRequest
        from shim.report.render import print_plan

        root = prepare(spec)
        started, stats = time.perf_counter(), {}
        hroot = host_root(os.environ)
        request = PlanRequest(root=root, image=image.path, profiles=profiles, requested=tuple(args.profile),
                              no_profiles=args.no_profiles, command=tuple(command[:1]),
                              path=spec.env.direct.get("PATH", ""), host=gather_host_view(hroot),
                              refusal_severity=ERROR if site.refusal == "error" else WARNING, image_dir=image_dir)
        with reading_image(image.path):
            planned_entry = plan_for_image(request, use_cache=not os.environ.get("SHIMRUN_NO_PLAN_CACHE"),
                                           stats=stats)
            plan = planned_entry.plan
            planned = time.perf_counter()
            found = hw
            if found is None:
                found, reads = recorded_check(root, image.arch, command[0] if command else None, os.environ,
                                              spec.env.direct.get("PATH", ""))
                store(hw_key, found, reads if image_dir else None)
        plan.diagnostics[:0] = found
        plan.diagnostics = apply_site_policy(plan.diagnostics, site.policy())
        if args.debug:
            print(f"shimrun: debug: analysis {1000 * (planned - started):.1f} ms (plan cache {stats['plan_cache']}); "
                  f"hardware check {1000 * (time.perf_counter() - planned):.1f} ms "
                  f"({'cached' if hw is not None else 'run'})", file=sys.stderr)
        if dry_run:
            print_plan(plan, as_json)
            return None, int(ExitCode.REFUSED) if plan.has_errors() or (args.strict and plan.refusals()) else 0
        _report(args, plan, node)
        # Plan paths are the host's; on a simulated node (SHIMRUN_HOST_ROOT) they lie under its root.
        binds = list(spec.binds) + [Bind(_on_host(hroot, b.src), b.dst, (RO if b.read_only else 0)
                                         | (KEEPDEV if b.device else 0)) for b in plan.binds]
        if planned_entry.ld_cache:
            cache_path = os.path.join(spec.stage, "ld.so.cache")  # the launch's private tmpfs
            with open(cache_path, "wb") as f:
                f.write(planned_entry.ld_cache)
            binds.append(Bind(cache_path, LD_CACHE, RO))
        edits = tuple(plan.env)
        final = dataclasses.replace(spec, binds=binds, env=_launch_env(args, image.path, edits))
        return final, edits

    def analysed():
        final, edits = set_up()
        return final, True, _exec_spec_for(image.path, edits)

    if listener is not None:
        hold(listener, analysed, group.expected, group.linger_ms)
        return 0
    final, outcome = set_up()
    if final is None:
        return outcome
    sys.stderr.flush()
    raise finish(final)


def _report(args: argparse.Namespace, plan, node: str) -> None:
    """The diagnostics, once, before the app starts; stop when one is fatal."""
    from shim.report.render import print_diagnostics

    print_diagnostics(plan, quiet=args.quiet, node=node, verbose=args.debug)
    if plan.has_errors() or (args.strict and (plan.refusals() or plan.has_warnings())):
        why = "an injection was refused" if plan.refusals() else "a diagnostic is fatal"
        strict = "; --strict makes every refusal and warning fatal" if args.strict and not plan.has_errors() else ""
        raise ShimError(ExitCode.REFUSED, f"not starting the app: {why}",
                        f"see the lines above{strict}; shimrun check IMAGE COMMAND shows the whole plan")


def _load_profiles(conf_dir: Path, host_root: str = "/"):
    try:  # no profile files: do not even import the profile machinery
        if not any(n.endswith(".toml") and not n.startswith(".") for n in os.listdir(conf_dir / "profiles")):
            return None
    except OSError:
        return None
    from shim.site.profiles import load_profiles

    return load_profiles(conf_dir, host_root=host_root)
