"""The one argument parser class of shimrun's command line: argparse's, except that a command
line it cannot read is one UsageError (one line, exit 64) naming `--help` as the way to the usage,
never argparse's usage block. Subparsers are made of the same class."""

from __future__ import annotations

import argparse
from typing import NoReturn

from shim.errors import UsageError


def usage_hint(prog: str) -> str:
    """The hint of every usage error of `prog` (a verb's own checks after parsing too)."""
    return f"{prog} --help shows the usage"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, usage_hint(self.prog))
