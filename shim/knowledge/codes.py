"""Reads codes.json: the registry of diagnostic codes. What [policy.codes] validates against,
and where a newcomer finds the module that emits a code."""

from __future__ import annotations

import difflib
from functools import cache

from shim.knowledge.tables import table, table_path
from shim.model import ERROR, INFO, WARNING

DATA = table_path("codes")


@cache
def registry() -> dict[str, dict[str, str]]:
    return dict(table("codes")["codes"])


def is_known(code: str) -> bool:
    return code in registry()


def closest(code: str) -> str | None:
    """The registered code a misspelt one most likely meant, None if none is close."""
    found = difflib.get_close_matches(code.upper(), list(registry()), n=1, cutoff=0.6)
    return found[0] if found else None


# What a site's [policy.codes] may do with a code -> the severity it gives (None: drop it).
ACTIONS: dict[str, str | None] = {"ignore": None, "info": INFO, "warn": WARNING, "error": ERROR}
