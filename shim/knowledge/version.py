"""Dotted version numbers, parsed and compared one way everywhere (driver releases, CUDA,
glibc, compat libraries): missing trailing components count as 0, so 12.2 == 12.2.0."""

from __future__ import annotations

import re

Version = tuple[int, ...]
_VERSION = re.compile(r"^\d+(?:\.\d+)*$")


def parse_version(text: str | None) -> Version | None:
    """"535.104.05" -> (535, 104, 5); None when `text` is not dotted digits."""
    if not text or not _VERSION.match(text.strip()):
        return None
    return tuple(int(x) for x in text.strip().split("."))


def cmp_version(a: Version, b: Version) -> int:
    """-1, 0, 1; missing trailing components count as 0."""
    n = max(len(a), len(b))
    pa, pb = a + (0,) * (n - len(a)), b + (0,) * (n - len(b))
    return (pa > pb) - (pa < pb)


def version_text(v: Version) -> str:
    return ".".join(str(x) for x in v)
