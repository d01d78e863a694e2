"""The bind grammar, SRC[:DST[:ro|rw]], for every place a bind is written: --bind and SHIMRUN_BIND
(shim/launch/binds.py), shim.toml's launch.binds and a profile's provides.binds.

One parser, one set of rules (README, "Options"; conf/profiles/README.md): at most three fields,
a non-empty SRC, DST the same path as SRC when left out, mode ro or rw (rw when left out), DST
absolute and never the container's root. A relative SRC is taken relative to `base` where the
caller has one (the working directory of --bind), and refused where it has none (profiles).
Non-goals: whether SRC exists (the callers differ: a missing site bind is skipped, a missing
user bind is an error, a missing profile bind makes the profile unavailable) and the wording.
"""

from __future__ import annotations

import os
from typing import NamedTuple

GRAMMAR = "SRC[:DST[:ro|rw]]"
MODES = ("ro", "rw")

# Why a spec was refused (BindSpecError.reason).
SHAPE, RELATIVE_SOURCE, RELATIVE_DESTINATION, MODE, ROOT = (
    "shape", "relative source", "relative destination", "mode", "root")


class BindSpec(NamedTuple):
    src: str          # absolute, normalized
    dst: str          # absolute, normalized
    read_only: bool


class BindSpecError(ValueError):
    """reason: one of the five above; part: the offending field (the mode, the destination)."""

    def __init__(self, reason: str, part: str) -> None:
        super().__init__(f"{reason}: {part}")
        self.reason, self.part = reason, part


def parse_bind_spec(spec: str, base: str | None) -> BindSpec:
    """SRC[:DST[:ro|rw]] -> BindSpec; BindSpecError for a spec the rules above refuse."""
    parts = spec.split(":")
    if not parts[0] or len(parts) > 3:
        raise BindSpecError(SHAPE, spec)
    if base is None and not parts[0].startswith("/"):
        raise BindSpecError(RELATIVE_SOURCE, parts[0])
    src = os.path.normpath(parts[0] if base is None else os.path.join(base, parts[0]))
    dst = parts[1] if len(parts) > 1 and parts[1] else src
    mode = parts[2] if len(parts) > 2 else "rw"
    if not dst.startswith("/"):
        raise BindSpecError(RELATIVE_DESTINATION, dst)
    if mode not in MODES:
        raise BindSpecError(MODE, mode)
    if os.path.normpath(dst) == "/":
        raise BindSpecError(ROOT, dst)
    return BindSpec(src, os.path.normpath(dst), mode == "ro")
