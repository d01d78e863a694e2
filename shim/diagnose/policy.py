"""Site policy over diagnostics: per code, drop it or set its severity.

    [policy.codes]           # in the site configuration, shim.toml
    RDMA-ABSENT = "ignore"   # single-node cluster: TCP is all there is
    ISA-UNDERUSED = "warn"
    VIRTUALIZED = "info"
    GPU-ABSENT = "error"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from shim.knowledge.codes import ACTIONS
from shim.model import Diagnostic


def validate_policy(policy: Mapping[str, str]) -> dict[str, str]:
    """The policy with its actions normalised; ValueError naming the first bad entry. (The site
    configuration checks the codes against the registry when it is loaded.)"""
    out: dict[str, str] = {}
    for code, action in policy.items():
        if not isinstance(code, str) or not code.strip():
            raise ValueError(f"diagnostic policy: {code!r} is not a diagnostic code")
        norm = action.strip().lower() if isinstance(action, str) else action
        if norm not in ACTIONS:
            raise ValueError(f"diagnostic policy for {code}: unknown action {action!r} "
                             f"(expected one of: {', '.join(ACTIONS)})")
        out[code.strip().upper()] = norm
    return out


def apply_policy(diags: Iterable[Diagnostic], policy: Mapping[str, str]) -> list[Diagnostic]:
    """`diags` with the policy applied: "ignore" drops a code's diagnostics, "warn"/"error"/"info"
    set their severity; codes the policy does not name are unchanged."""
    rules = validate_policy(policy)
    out: list[Diagnostic] = []
    for d in diags:
        action = rules.get(d.code)
        if action is None:
            out.append(d)
            continue
        severity = ACTIONS[action]
        if severity is None:
            continue
        out.append(d if d.severity == severity else dataclasses.replace(d, severity=severity))
    return out
