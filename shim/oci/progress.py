"""How `build` and `pull` report their progress, one rule for both: when stderr is a terminal,
each step's line as it starts and a download's byte count updated in place (a live line);
otherwise one line per finished step, a download's with its size (a batch log gets no ticks, is
never silent for long, and shows no step that failed: the error line says what did); with
--quiet nothing (errors only)."""

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
        self.pending = ""       # not live: the running step's line, printed once it is finished

    def step(self, message: str) -> None:
        """A step starts (the one before it is finished)."""
        self._finished()
        if self.live and not self.quiet:
            self._end_line()
            self._print(message)
        else:
            self.pending = message

    def reporter(self) -> Callable[[str], None] | None:
        """`step`, for what takes a progress callback (None with --quiet: the tools it runs are
        quiet too)."""
        return None if self.quiet else self.step

    def start(self, label: str, total: int) -> None:
        """A download of `total` bytes starts."""
        self._finished()
        self._end_line()
        self.label, self.total, self.done, self.shown = label, total, 0, 0.0

    def advance(self, n: int) -> None:
        self.done += n
        if self.done >= self.total:  # downloaded (a blob already in the cache is no step of this pull)
            self.pending = f"{self.label}: {_mib(self.done)}"
        now = time.monotonic()
        if self.live and not self.quiet and (now - self.shown > 0.1 or self.done >= self.total):
            self.shown = now
            print(f"\rshimrun: {self.label} {_mib(self.done)} / {_mib(self.total)}", end="", file=sys.stderr,
                  flush=True)
            self.open_line = True

    def result(self, message: str) -> None:
        """The last step is finished, and this is what came of it."""
        self._finished()
        self._end_line()
        if not self.quiet:
            self._print(message)

    def _finished(self) -> None:
        if self.pending and not self.live and not self.quiet:
            self._print(self.pending)
        self.pending = ""

    def _end_line(self) -> None:
        if self.open_line:
            print(file=sys.stderr)
            self.open_line = False

    @staticmethod
    def _print(message: str) -> None:
        print(f"shimrun: {message}", file=sys.stderr, flush=True)


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
