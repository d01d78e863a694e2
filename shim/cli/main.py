"""shimrun's entry point: dispatch to a subcommand, or run IMAGE COMMAND.

Every failure becomes one line on stderr and an exit code of its class (shim/errors.py);
a traceback only with --debug."""

from __future__ import annotations

import argparse
import importlib
import sys
from dataclasses import dataclass

from shim.cli.parser import Parser
from shim.errors import EXIT_LABELS, ExitCode, ShimError, UsageError, one_line
from shim.options import GLOBAL_OPTIONS, GLOBAL_VALUE_OPTIONS, VERBS

# Verb -> module with register(subparsers) and main(args). Imported only when used.
_MODULES = {
    "inspect": "shim.cli.inspect_cmd",
    "build": "shim.cli.build_cmd",
    "check": "shim.cli.check_cmd",
    "profiles": "shim.cli.profiles_cmd",
    "cdi": "shim.cli.cdi_cmd",
    "pull": "shim.cli.pull_cmd",
    "cache": "shim.cli.cache_cmd",
    "run": "shim.cli.runscript_cmd",
    "exec": "shim.cli.exec_cmd",
    "shell": "shim.cli.exec_cmd:register_shell",
    "version": "shim.cli.version_cmd",
    "verify": "shim.cli.verify_cmd",
    "sign": "shim.cli.sign_cmd",
}
SUBCOMMANDS = {verb: _MODULES[verb] for verb in VERBS}
LAUNCH_VERBS = ("exec", "run", "shell")
INTERNAL_ERROR = int(ExitCode.INTERNAL)


@dataclass(frozen=True)
class Globals:
    """What the options before a verb set: flags (quiet, debug) and values (conf)."""
    flags: frozenset[str] = frozenset()
    values: tuple[tuple[str, str], ...] = ()   # (dest, value), in the order given


def _globals_first(argv: list[str]) -> tuple[list[str], Globals]:
    """`shimrun -q --conf D VERB ...`: the verb's arguments, and what the options before it set
    (-v only keeps output as it is: --debug is shim's most verbose). Without a verb after them,
    argv as it is: `shimrun --conf D IMAGE COMMAND` is a launch's own option."""
    flags: set[str] = set()
    values: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if arg in SUBCOMMANDS and i > 0:
            return argv[i:], Globals(frozenset(flags), tuple(values))
        if arg in GLOBAL_OPTIONS:
            flags |= {GLOBAL_OPTIONS[arg]} - {None}
        elif name in GLOBAL_VALUE_OPTIONS and (eq or i + 1 < len(argv)):
            values.append((GLOBAL_VALUE_OPTIONS[name], value if eq else argv[i + 1]))
            i += 0 if eq else 1
        else:
            break
        i += 1
    return argv, Globals()


def _exit_codes_text() -> str:
    return ("exit status: the app's own when it ran; else " + "; ".join(
        f"{int(code)} {label}" for code, label in sorted(EXIT_LABELS.items())) + ". Every error is one line on "
        "stderr (README.md, \"Exit codes\").")


def _parser(argv: list[str]) -> argparse.ArgumentParser:
    if argv and argv[0] in SUBCOMMANDS:
        parser = Parser(prog="shimrun")
        sub = parser.add_subparsers(dest="subcommand", required=True)
        module, _, func = SUBCOMMANDS[argv[0]].partition(":")
        getattr(importlib.import_module(module), func or "register")(sub)
        return parser
    from shim.cli import run_cmd

    parser = Parser(
        prog="shimrun", usage="shimrun [OPTIONS] IMAGE COMMAND [ARGS...]\n       shimrun {" + ",".join(SUBCOMMANDS)
        + "} ...",
        description="Run COMMAND inside IMAGE (SIF, squashfs or directory) as an unprivileged user.",
        epilog=_exit_codes_text())
    parser.add_argument("--version", action="version", version=f"shim {_version()}")
    run_cmd.add_run_options(parser)
    parser.set_defaults(func=run_cmd.main)
    return parser


def _version() -> str:
    from shim import __version__

    return __version__


def _verb_argv(argv: list[str]) -> tuple[list[str], Globals]:
    """The verb's arguments, with the options given before a launch verb as its own (the launch
    record's key and run say so), and what they set."""
    argv, given = _globals_first(argv)
    if argv and argv[0] in LAUNCH_VERBS and (given.flags or given.values):
        options = [f"--{name}" for name in sorted(given.flags)]
        for dest, value in given.values:
            options += [f"--{dest}", value]
        argv = [argv[0], *options, *argv[1:]]
    return argv, given


def _parse(argv: list[str], given: Globals) -> argparse.Namespace:
    """UsageError when argv is not a shimrun command line; SystemExit(0) after --help/--version."""
    args = _parser(argv).parse_args(argv)
    for name in given.flags:
        if hasattr(args, name):
            setattr(args, name, True)
    for dest, value in given.values:  # the verb's own option, given after it, wins
        if hasattr(args, dest) and getattr(args, dest) is None:
            setattr(args, dest, value)
    args.argv = list(argv)  # as given (globals as the verb's): part of a launch record's key
    return args


def launch_arguments(argv: list[str]) -> argparse.Namespace:
    """shimrun's arguments (a launch's, as a provenance record keeps them), parsed as main() does;
    UsageError when they are not a launch command line of this shimrun."""
    argv, given = _verb_argv(list(argv))
    if not argv or (argv[0] in SUBCOMMANDS and argv[0] not in LAUNCH_VERBS):
        raise UsageError(f"not a launch command line: shimrun {' '.join(argv)}")
    try:
        return _parse(argv, given)
    except (SystemExit, UsageError) as e:
        why = f": {e}" if isinstance(e, UsageError) else ""
        raise UsageError(f"this shimrun cannot read the command line: shimrun {' '.join(argv)}{why}",
                         "it was written by another version of shim") from None


def main(argv: list[str] | None = None) -> int:
    argv, given = _verb_argv(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or "debug" in given.flags
    try:
        try:
            args = _parse(argv, given)
        except SystemExit as e:  # --help or --version: printed
            return 0 if e.code in (0, None) else int(ExitCode.USAGE)
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
