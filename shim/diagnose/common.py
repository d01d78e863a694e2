"""Small helpers shared by the diagnostic modules."""

from __future__ import annotations

from shim.model import ERROR, INFO, WARNING


def raised(severity: str, declared: bool) -> str:
    """A requirement the image declares explicitly (shim.requires) and the node does not meet
    is one notch more severe than the same finding made from library evidence alone."""
    if not declared:
        return severity
    return {INFO: WARNING, WARNING: ERROR}.get(severity, severity)


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
