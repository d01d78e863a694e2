"""`shimrun [OPTIONS] IMAGE COMMAND [ARGS...]`: run COMMAND inside IMAGE, unprivileged.

This module only turns the command line into a request: the pipeline (shim/pipeline/) plans the
launch into a record, which the C executor runs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING

from shim.errors import ExitCode, UsageError
from shim.options import APPEND, FLAG, Option, image_options, launch_options
from shim.record.format import HANDOVER_ENV

if TYPE_CHECKING:
    from shim.pipeline.planner import DryPlan
    from shim.record.model import LaunchRecord


def _add(p: argparse.ArgumentParser, options: Iterable[Option]) -> None:
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


_OPTION_NAMES = frozenset(name for opt in launch_options() for name in opt.names)


def current_directory() -> str:
    try:
        return os.getcwd()
    except OSError as e:  # removed (or made unreadable) under the caller
        raise UsageError(f"the current directory cannot be read ({e.strerror}): it was removed or its "
                         "permissions changed", "cd to an existing directory and run again") from None


def main(args: argparse.Namespace) -> int:
    if not args.command and not args.dry_run:
        raise UsageError("no command given", "usage: shimrun [OPTIONS] IMAGE COMMAND [ARGS...]")
    if args.command and args.command[0] in _OPTION_NAMES:
        raise UsageError(f"{args.command[0]} after IMAGE would be the command: shimrun's options go before IMAGE",
                         f"shimrun [OPTIONS] {args.command[0]} ... IMAGE COMMAND [ARGS...]")
    if args.pwd is not None and not args.pwd.startswith("/"):
        raise UsageError(f"--pwd {args.pwd}: not an absolute path", "give the container directory as /path")
    if args.devices:
        from shim.cdi.spec import split_qualified

        for request in args.devices:   # the grammar here; what the node's specs define, when planning
            split_qualified(request)
    return run(args, dry_run=args.dry_run, as_json=args.json)


def _handover() -> tuple[int | None, str, int | None]:
    """What the native front-end handed over (and the app must not see): the group socket it
    bound as the node's leader, its flags, and the image as it opened it."""
    from shim.image.handle import handed_fd

    fd = os.environ.pop(HANDOVER_ENV["LISTEN_FD"], "")
    flags = os.environ.pop(HANDOVER_ENV["FRONTEND"], "")
    os.environ.pop(HANDOVER_ENV["RECORD_FD"], None)
    image_fd = handed_fd(os.environ)
    listen = int(fd) if fd.isdigit() else None
    if listen is not None:
        try:
            os.fstat(listen)
        except OSError:
            listen = None
    return listen, flags, image_fd


def _own_init(record: LaunchRecord, argv: list[str]) -> bool:
    """Does the launch keep a process of its own (a PID namespace's init; a kept mount's holder),
    to be run by the native front-end? (Only with a command line the front-end reads: it finds
    the image in it.)"""
    from shim import native
    from shim.record.format import IMG, NS

    keeps = bool(record.namespaces & NS["PID"]) or record.image.kind == IMG["KEPT"]
    return keeps and native.image_index(["shimrun", *argv]) > 0


def dry_run_result(dry: DryPlan, as_json: bool, strict: bool) -> int:
    """A dry run's plan printed; the exit status the launch would have before its app runs (an
    image of another architecture: 66, as the launch; a refusal: 67), else the command's (126, 127)."""
    from shim.diagnose.cpu import ARCH_MISMATCH
    from shim.model import ERROR
    from shim.report.render import print_plan

    plan = dry.plan
    print_plan(plan, as_json, served=dry.served)
    if any(d.code == ARCH_MISMATCH and d.severity == ERROR for d in plan.diagnostics):
        return int(ExitCode.ARCH)
    if plan.has_errors() or (strict and plan.refusals()):
        return int(ExitCode.REFUSED)
    if dry.command_problem is not None:
        sys.stdout.flush()  # the plan, then the line saying why the launch would stop
        print(f"shimrun: error: {dry.command_problem[1]}", file=sys.stderr)
        return dry.command_problem[0]
    return 0


def run(args: argparse.Namespace, dry_run: bool, as_json: bool) -> int:
    from shim.cachefiles import set_quiet
    from shim.options import launch_values
    from shim.pipeline.planner import plan_launch, store
    from shim.pipeline.request import LaunchRequest

    set_quiet(args.quiet)
    listen_fd, flags, image_fd = _handover()
    argv = getattr(args, "argv", None) or sys.argv[1:]
    request = LaunchRequest(options=launch_values(args), argv=tuple(argv), cwd=current_directory(),
                            environ=dict(os.environ), dry_run=dry_run, as_json=as_json, listen_fd=listen_fd,
                            frontend=flags, image_fd=image_fd)
    planned = plan_launch(request)
    for line in planned.said:
        print(line, file=sys.stderr)
    if planned.dry is not None:
        return dry_run_result(planned.dry, as_json, request.options.strict)
    if planned.record is None:
        return 0
    from shim.launch.execute import run_record
    from shim.record.encode import encode

    data = encode(planned.record)
    store(planned, data, request.environ)
    failed = run_record(data, argv, request.environ, listen_fd, flags, planned.image_fd,
                        native_only=_own_init(planned.record, argv))
    # The executor's own failure (the app not found, a refusal): one line, as from a cached record.
    print(f"shimrun: error: {failed}", file=sys.stderr)
    return int(failed.code)
