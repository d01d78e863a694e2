"""`shimrun run [OPTIONS] IMAGE [ARGS...]`: the image's runscript, as `apptainer run` does.

For an image built from OCI/Docker the runscript is its Entrypoint then Cmd (ARGS replace Cmd),
exec'd directly (no shell needed), in its WorkingDir unless --pwd says otherwise; for any other
image it is /.singularity.d/runscript with ARGS. `shimrun IMAGE COMMAND...` stays as it is."""

from __future__ import annotations

import argparse

from shim.cli import run_cmd


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="run the image's runscript (OCI: Entrypoint + Cmd)",
                              description="Run IMAGE's runscript with ARGS: an OCI image's Entrypoint, then ARGS "
                                          "or else its Cmd; other images' /.singularity.d/runscript.")
    run_cmd._add(p, run_cmd.launch_options())
    p.add_argument("image", metavar="IMAGE", help="SIF file, squashfs file or directory")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="ARGS")
    p.set_defaults(func=main, runscript=True)


def main(args: argparse.Namespace) -> int:
    if args.pwd is not None and not args.pwd.startswith("/"):
        from shim.errors import UsageError

        raise UsageError(f"--pwd {args.pwd}: not an absolute path", "give the container directory as /path")
    return run_cmd.run(args, dry_run=args.dry_run, as_json=args.json)
