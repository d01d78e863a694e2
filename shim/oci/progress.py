"""Progress on a terminal (stderr a tty): one line per step, a byte count updated in place.
When stderr is not a terminal, nothing: batch logs get the result, not the ticks."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.label, self.total, self.done, self.shown = "", 0, 0, 0.0
        self.open_line = False  # a byte count is on the terminal's last line

    def step(self, message: str) -> None:
        if self.enabled:
            self._end_line()
            print(f"shimrun: {message}", file=sys.stderr, flush=True)

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self.shown > 0.1 or self.done >= self.total):
            self.shown = now
            print(f"\rshimrun: {self.label} {_mib(self.done)} / {_mib(self.total)}", end="", file=sys.stderr,
                  flush=True)
            self.open_line = True

    def start(self, label: str, total: int) -> None:
        self._end_line()
        self.label, self.total, self.done, self.shown = label, total, 0, 0.0

    def _end_line(self) -> None:
        if self.open_line:
            print(file=sys.stderr)
            self.open_line = False


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"
