"""`shimrun version`: the version alone, as `apptainer version` prints it."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("version", help="print shim's version", description="Print shim's version.")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from shim import __version__

    print(__version__)
    return 0
