"""shimrun's entry point: dispatch to a subcommand, or run IMAGE COMMAND.

Every failure becomes one line on stderr and an exit code of its class (shim/errors.py);
a traceback only with --debug."""

from __future__ import annotations

import argparse
import importlib
import sys

from shim.errors import ExitCode, ShimError, one_line
from shim.options import GLOBAL_OPTIONS

# Subcommand name -> module with register(subparsers) and main(args). Imported only when used.
SUBCOMMANDS = {
    "inspect": "shim.cli.inspect_cmd",
    "build": "shim.cli.build_cmd",
    "check": "shim.cli.check_cmd",
    "profiles": "shim.cli.profiles_cmd",
    "pull": "shim.cli.pull_cmd",
    "cache": "shim.cli.cache_cmd",
    "run": "shim.cli.runscript_cmd",
    "exec": "shim.cli.exec_cmd",
    "shell": "shim.cli.exec_cmd:register_shell",
    "version": "shim.cli.version_cmd",
    "verify": "shim.cli.verify_cmd",
    "sign": "shim.cli.sign_cmd",
}
LAUNCH_VERBS = ("exec", "run", "shell")
INTERNAL_ERROR = int(ExitCode.INTERNAL)


def _globals_first(argv: list[str]) -> tuple[list[str], set[str]]:
    """`shimrun -q exec IMAGE ...`: the verb's arguments, and the options given before it (as the
    settings they make: quiet, debug; -v only keeps output as it is: --debug is shim's most verbose)."""
    given: set[str] = set()
    for i, arg in enumerate(argv):
        if arg in SUBCOMMANDS and i > 0:
            return argv[i:], given
        if arg not in GLOBAL_OPTIONS:
            break
        given |= {GLOBAL_OPTIONS[arg]} - {None}
    return argv, set()


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    if argv and argv[0] in SUBCOMMANDS:
        parser = argparse.ArgumentParser(prog="shimrun")
        sub = parser.add_subparsers(dest="subcommand", required=True)
        module, _, func = SUBCOMMANDS[argv[0]].partition(":")
        getattr(importlib.import_module(module), func or "register")(sub)
        return parser
    from shim.cli import run_cmd

    parser = argparse.ArgumentParser(
        prog="shimrun", usage="shimrun [OPTIONS] IMAGE COMMAND [ARGS...]\n       shimrun {" + ",".join(SUBCOMMANDS)
        + "} ...",
        description="Run COMMAND inside IMAGE (SIF, squashfs or directory) as an unprivileged user.")
    parser.add_argument("--version", action="version", version=f"shim {_version()}")
    run_cmd.add_run_options(parser)
    parser.set_defaults(func=run_cmd.main)
    return parser


def _version() -> str:
    from shim import __version__

    return __version__


def _verb_argv(argv: list[str]) -> tuple[list[str], set[str]]:
    """The verb's arguments, with the options given before a launch verb as its own (the launch
    record's key and run say so), and those settings."""
    argv, settings = _globals_first(argv)
    if settings and argv and argv[0] in LAUNCH_VERBS:
        argv = [argv[0], *(f"--{name}" for name in sorted(settings)), *argv[1:]]
    return argv, settings


def _parse(argv: list[str], settings: set[str]) -> argparse.Namespace:
    """SystemExit (argparse printed why) when argv is not a shimrun command line."""
    args = _parser(argv).parse_args(argv)
    for name in settings:
        if hasattr(args, name):
            setattr(args, name, True)
    args.argv = list(argv)  # as given (globals as the verb's): part of a launch record's key
    return args


def launch_arguments(argv: list[str]) -> argparse.Namespace:
    """shimrun's arguments (a launch's, as a provenance record keeps them), parsed as main() does;
    UsageError when they are not a launch command line of this shimrun."""
    from shim.errors import UsageError

    argv, settings = _verb_argv(list(argv))
    if not argv or (argv[0] in SUBCOMMANDS and argv[0] not in LAUNCH_VERBS):
        raise UsageError(f"not a launch command line: shimrun {' '.join(argv)}")
    try:
        return _parse(argv, settings)
    except SystemExit:
        raise UsageError(f"this shimrun cannot read the command line: shimrun {' '.join(argv)}",
                         "it was written by another version; the line above says what it did not take") from None


def main(argv: list[str] | None = None) -> int:
    argv, settings = _verb_argv(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or "debug" in settings
    try:
        try:
            args = _parse(argv, settings)
        except SystemExit as e:  # argparse already printed a usage line
            return 0 if e.code == 0 else 64
        return args.func(args)
    except ShimError as e:
        print(f"shimrun: error: {one_line(str(e))}", file=sys.stderr)
        if debug:
            raise
        return int(e.code)
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if debug:
            raise
        print(f"shimrun: internal error: {type(e).__name__}: {one_line(str(e))} (rerun with --debug and report it)",
              file=sys.stderr)
        return INTERNAL_ERROR


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
