"""Whether a launch is audited after it starts (README "What actually ran"): asked by
--report-loaded or the site's [audit] report (findings printed), or by a provenance record (its
"loaded" list only). Apart from shim/pipeline/audit_step.py, which a launch imports only when the
audit is on: its modules (the host's GPU and RDMA facts, the rules) cost every planned launch
~8 ms to import."""

from __future__ import annotations

from typing import NamedTuple


class AuditWish(NamedTuple):
    on: bool = False
    report: bool = False    # findings printed (--report-loaded, [audit] report), not only provenance's list
    strict: bool = False


def wish(report_loaded: bool, site_report: bool, provenance: bool, strict: bool) -> AuditWish:
    report = report_loaded or site_report
    return AuditWish(report or provenance, report, strict and report)
