"""`shimrun exec [OPTIONS] IMAGE COMMAND [ARGS...]` (Apptainer's spelling of `shimrun IMAGE COMMAND`)
and `shimrun shell [OPTIONS] [--shell PATH] IMAGE [ARGS...]`: an interactive shell in IMAGE.

A shell is launched as `shimrun exec [OPTIONS] IMAGE SHELL [ARGS...]` would be: that is the command
line its launch record is keyed by and run with (the executor finds IMAGE and the app's arguments
in it), so --shell is never taken for an option of the launch or a word of the app's."""

from __future__ import annotations

import argparse

from shim.cli import run_cmd
from shim.options import FLAG, launch_options

DEFAULT_SHELL = "/bin/sh"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("exec", help="run COMMAND in IMAGE (as `shimrun IMAGE COMMAND`)",
                              description="Run COMMAND with ARGS inside IMAGE, as `apptainer exec` does.")
    run_cmd.add_run_options(p)
    p.set_defaults(func=run_cmd.main)


def register_shell(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("shell", help="an interactive shell in IMAGE",
                              description="Start a shell inside IMAGE (default /bin/sh; --shell chooses another).")
    run_cmd._add(p, launch_options())
    p.add_argument("--shell", metavar="PATH", default=DEFAULT_SHELL,
                   help="the shell in the container (default /bin/sh)")
    p.add_argument("image", metavar="IMAGE", help="SIF file, squashfs file or directory")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="ARGS", help="the shell's arguments")
    p.set_defaults(func=shell_main)


def exec_argv(argv: list[str], image_and_args: int) -> list[str]:
    """`shell [OPTIONS] IMAGE ARGS...` as `exec [OPTIONS without --shell] IMAGE`: its last
    `image_and_args` words are IMAGE and ARGS, the words before them options (with their values)."""
    takes_value = {name for o in launch_options() if o.kind != FLAG for name in o.names}
    options, words, i = [], argv[1:len(argv) - image_and_args], 0
    while i < len(words):
        word = words[i]
        if word == "--shell":
            i += 2
            continue
        if not word.startswith("--shell="):
            options.append(word)
            if word in takes_value and i + 1 < len(words):
                options.append(words[i + 1])
                i += 1
        i += 1
    return ["exec", *options, *argv[len(argv) - image_and_args:]]


def shell_main(args: argparse.Namespace) -> int:
    rest = len(args.command)
    launch = exec_argv(list(args.argv), rest + 1)
    args.argv = [*launch[:len(launch) - rest], args.shell, *launch[len(launch) - rest:]]
    args.command = [args.shell, *args.command]
    return run_cmd.main(args)
