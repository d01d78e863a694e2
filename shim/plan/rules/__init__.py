"""The rules of each kind of profile, registered by kind; a kind without rules of its own
(fabric, other) gets only the generic planner."""

from __future__ import annotations

from shim.plan.rules.base import Rule
from shim.plan.rules.gpu import GpuRule
from shim.plan.rules.mpi import MpiRule
from shim.plan.rules.rdma import RdmaRule

RULES: dict[str, Rule] = {r.kind: r for r in (MpiRule(), GpuRule(), RdmaRule())}
GENERIC = Rule()


def rule_for(kind: str) -> Rule:
    return RULES.get(kind, GENERIC)
