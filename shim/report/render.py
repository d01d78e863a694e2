"""The one renderer of plans and diagnostics: human lines on stderr/stdout, or JSON."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from shim.model import ERROR, INFO, WARNING, Diagnostic
from shim.plan.model import Plan

_LABEL = {ERROR: "error", WARNING: "warning", INFO: "info"}


def diagnostic_line(d: Diagnostic, node: str = "") -> str:
    hint = f" (hint: {d.hint})" if d.hint else ""
    where = f"[{node}] " if node else ""
    return f"shimrun: {where}{_LABEL.get(d.severity, d.severity)}: {d.code}: {d.message}{hint}"


def print_diagnostics(plan: Plan, out: TextIO = sys.stderr, quiet: bool = False, node: str = "",
                      verbose: bool = False) -> None:
    """Before the app starts: one line per error and warning (warnings hidden by --quiet); info
    lines only when `verbose` (--debug; `check` shows everything). `node`: in a shared container
    only the node's leading rank prints, prefixed with the node."""
    for d in plan.diagnostics:
        if (quiet and d.severity != ERROR) or (d.severity == INFO and not verbose):
            continue
        print(diagnostic_line(d, node), file=out)


def plan_table(plan: Plan) -> list[str]:
    rows = [("LIBRARY", "HOST PATH", "CONTAINER PATH", "DECISION", "REASON")]
    rows += [(d.library, d.host_path, d.container_path or "-", d.decision, d.reason) for d in plan.decisions]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4] for r in rows]


def print_plan(plan: Plan, as_json: bool, out: TextIO = sys.stdout, served: dict[str, str] | None = None) -> None:
    """The plan; `served`: how the image's files are served (mode, reason, where), one line after the image's."""
    if as_json:
        json.dump({**plan.to_dict(), **({"served": served} if served else {})}, out, indent=2)
        out.write("\n")
        return
    print(f"image: {plan.image}", file=out)
    if served:
        where = f": {served['where']}" if served["where"] else ""
        staged = f"; {served['stage']}" if served.get("stage") else ""
        print(f"served: {served['mode']} ({served['reason']}){where}{staged}", file=out)
    print(f"profiles: {', '.join(plan.profiles) or '(none)'}", file=out)
    if plan.decisions:
        print("", file=out)
        for line in plan_table(plan):
            print(line, file=out)
    if plan.diagnostics:
        print("", file=out)
        for d in plan.diagnostics:
            print(diagnostic_line(d), file=out)
            if d.admin_hint:
                print(f"    admin: {d.admin_hint}", file=out)
    elif not plan.decisions:
        print("nothing to inject, nothing to report", file=out)
