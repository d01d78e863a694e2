"""How `build` and `pull` report their progress, one rule for both: when stderr is a terminal,
each step's line and a download's byte count updated in place (a live line); otherwise one line
per step, a download's once it is done (a batch log gets no ticks, and is never silent for long);
with --quiet nothing (errors only)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


class Progress:
    def __init__(self, quiet: bool = False, live: bool | None = None) -> None:
        self.quiet = quiet
        self.live = sys.stderr.isatty() if live is None else live
        self.label, self.total, self.done, self.shown = "", 0, 0, 0.0
        self.open_line = False  # a byte count is on the terminal's last line

    def step(self, message: str) -> None:
        if not self.quiet:
            self._end_line()
            print(f"shimrun: {message}", file=sys.stderr, flush=True)

    def reporter(self) -> Callable[[str], None] | None:
        """`step`, for what takes a progress callback (None with --quiet: the tools it runs are
        quiet too)."""
        return None if self.quiet else self.step

    def start(self, label: str, total: int) -> None:
        self._end_line()
        self.label, self.total, self.done, self.shown = label, total, 0, 0.0

    def advance(self, n: int) -> None:
        self.done += n
        finished = self.done >= self.total
        if self.quiet:
            return
        if not self.live:
            if finished and self.done - n < self.total:  # the line once, when the download is done
                print(f"shimrun: {self.label}: {_mib(self.done)}", file=sys.stderr, flush=True)
            return
        now = time.monotonic()
        if now - self.shown > 0.1 or finished:
            self.shown = now
            print(f"\rshimrun: {self.label} {_mib(self.done)} / {_mib(self.total)}", end="", file=sys.stderr,
                  flush=True)
            self.open_line = True

    def _end_line(self) -> None:
        if self.open_line:
            print(file=sys.stderr)
            self.open_line = False


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
