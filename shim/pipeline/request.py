"""What a launch is asked to do: the command line's typed options, and where it was given."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from shim.options import LaunchOptions


class LaunchRequest(NamedTuple):
    options: LaunchOptions        # shimrun's options, IMAGE and COMMAND (shim/options.py), typed
    argv: tuple[str, ...]         # shimrun's arguments as given (argv[1:])
    cwd: str
    environ: Mapping[str, str]    # the job's environment, the front-end's hand-over removed
    dry_run: bool = False         # print the plan instead of launching (`check`, --dry-run)
    as_json: bool = False
    listen_fd: int | None = None  # the node's group socket, when the front-end made this rank its leader
    frontend: str = ""            # the native front-end's flags: it ran (and held the election) first
    facts_only: bool = False      # with dry_run: return the provenance facts, print nothing (check --against)
    image_fd: int | None = None   # IMAGE as the native front-end opened it (SHIMRUN_IMAGE_FD)

    @property
    def command(self) -> tuple[str, ...]:
        return self.options.command
