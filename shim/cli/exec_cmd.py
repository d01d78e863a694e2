"""`shimrun exec [OPTIONS] IMAGE COMMAND [ARGS...]` (Apptainer's spelling of `shimrun IMAGE COMMAND`)
and `shimrun shell [OPTIONS] IMAGE`: an interactive shell in IMAGE."""

from __future__ import annotations

import argparse

from shim.cli import run_cmd


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("exec", help="run COMMAND in IMAGE (as `shimrun IMAGE COMMAND`)",
                              description="Run COMMAND with ARGS inside IMAGE, as `apptainer exec` does.")
    run_cmd.add_run_options(p)
    p.set_defaults(func=run_cmd.main)


def register_shell(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("shell", help="an interactive shell in IMAGE",
                              description="Start a shell inside IMAGE (default /bin/sh; --shell chooses another).")
    run_cmd._add(p, run_cmd.launch_options())
    p.add_argument("--shell", metavar="PATH", default="/bin/sh", help="the shell in the container (default /bin/sh)")
    p.add_argument("image", metavar="IMAGE", help="SIF file, squashfs file or directory")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="ARGS", help="the shell's arguments")
    p.set_defaults(func=shell_main)


def shell_main(args: argparse.Namespace) -> int:
    args.command = [args.shell, *args.command]
    return run_cmd.main(args)
