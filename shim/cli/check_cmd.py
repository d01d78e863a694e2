"""`shimrun check IMAGE [--json]`: the injection plan and diagnostics, without launching."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    from shim.cli.run_cmd import add_image_options

    p = subparsers.add_parser("check", help="show what would be injected and why, without running")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    add_image_options(p)
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="[COMMAND]",
                   help="the program to be run: its own needs are checked too (MPI symbols, ISA level)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from shim.cli.run_cmd import run

    return run(args, dry_run=True, as_json=args.json)
