"""`shimrun [OPTIONS] IMAGE COMMAND [ARGS...]`: run COMMAND inside IMAGE, unprivileged."""

from __future__ import annotations

import argparse
import os
import pwd
from pathlib import Path

from shim.errors import UsageError

STAGE_DIR = Path(__file__).resolve().parent.parent / "stage"


def add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-B", "--bind", action="append", default=[], metavar="SRC[:DST[:ro]]",
                   help="bind a host path into the container (repeatable; also SHIMRUN_BIND=a,b)")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V",
                   help="set K=V in the container (repeatable; also SHIMRUNENV_K=V)")
    p.add_argument("--cleanenv", action="store_true", help="pass no host variables except TERM, proxies, Slurm/PMI")
    p.add_argument("--fakeroot", action="store_true", help="appear as root (uid 0) inside the container")
    p.add_argument("--pwd", metavar="DIR", help="working directory inside the container (default: the current one)")
    p.add_argument("--no-home", action="store_true", help="do not bind the home directory")
    p.add_argument("--conf", metavar="DIR", help="site configuration directory (default: SHIMRUN_CONF, /etc/shim)")
    p.add_argument("--debug", action="store_true", help="show each set-up step (and tracebacks)")
    p.add_argument("image", metavar="IMAGE", help="SIF file, squashfs file or directory")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND [ARGS...]")


def _home() -> str:
    home = os.environ.get("HOME", "")
    if not home.startswith("/"):
        home = pwd.getpwuid(os.getuid()).pw_dir
    return os.path.normpath(home)


def main(args: argparse.Namespace) -> int:
    from shim.image.open import open_image
    from shim.launch.binds import parse_bind, parse_bind_list, plan_binds
    from shim.launch.environment import EnvOptions, compose
    from shim.launch.execute import LaunchSpec, execute
    from shim.launch.identity import identity_appends
    from shim.launch.preflight import check_arch
    from shim.launch.rootfs import choose_rootfs
    from shim.site.config import load_site_config

    if not args.command:
        raise UsageError("no command given", "usage: shimrun [OPTIONS] IMAGE COMMAND [ARGS...]")
    cwd = os.getcwd()
    image = open_image(args.image)
    check_arch(image)
    site = load_site_config(args.conf)
    site_binds = [b for b in (parse_bind(s, site.path, cwd, optional=True) for s in site.binds) if b]
    user_binds = parse_bind_list(",".join([os.environ.get("SHIMRUN_BIND", "")] + args.bind), "--bind/SHIMRUN_BIND",
                                 cwd)
    home = None if args.no_home else _home()
    host_env = dict(os.environ, PWD=args.pwd or cwd)
    env = compose(host_env, EnvOptions(cleanenv=args.cleanenv, env_pairs=tuple(args.env),
                                         home=home or "/", image_path=image.path))
    rootfs = choose_rootfs(image)
    spec = LaunchSpec(rootfs=rootfs, stage=str(STAGE_DIR), binds=plan_binds(home, cwd, site_binds, user_binds),
                      cwd=args.pwd or cwd, argv=args.command, env=env, fakeroot=args.fakeroot, debug=args.debug,
                      appends=identity_appends(home or "/", args.fakeroot))
    raise execute(spec)

