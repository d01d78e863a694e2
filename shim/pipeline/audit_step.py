"""Step 7 of planning, with --report-loaded, --provenance or the site's `[audit] report`: the
after-start audit of loaded objects (README "What actually ran"). What this step decides: whether
the app can be audited (the look says whether it is a glibc program; AUDIT-UNAVAILABLE says why
not), the rules the executor evaluates when the app has ended (shim/audit/rules.py, this node's
facts and the site's [policy.codes] applied), the injected objects mapped to their host files and
hashes, and what the launch adds for it: one read-only bind of the directory the executor stages
with the audit library and the FIFO, LD_AUDIT in front of the app's own. Without any of the three the record has no
AUDIT: a launch unchanged (no fork, no LD_AUDIT)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import replace
from typing import NamedTuple

from shim.audit.rules import Injected, NodeSide, audit_rules, unavailable
from shim.container.binds import RO
from shim.container.environment import with_audit
from shim.diagnose.policy import validate_policy
from shim.elf.cache import FactsCache
from shim.elf.facts import ElfFacts, symbol_string
from shim.host.fingerprint import host_inputs
from shim.host.gpu import gpu_models, kernel_module_version
from shim.host.paths import on_host
from shim.host.rdma import rdma_facts
from shim.knowledge.abi import mpi_abi, version_symbol
from shim.model import INJECT
from shim.pipeline.audit_wish import AuditWish
from shim.pipeline.hardware_step import Found
from shim.pipeline.stage import STAGE_DIR
from shim.provenance.digests import sha256_file
from shim.record.format import AUDIT, AUDIT_DIR, AUDIT_LIBRARY, AUDIT_STAGED_DIR
from shim.record.model import Audit, AuditInjected, Input, LaunchRecord, RecordBind
from shim.report.render import diagnostic_line

# The audit library, built with the executor (setup.py) next to it.
LIBRARY = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "libexec", "shim_audit.so")




class Audited(NamedTuple):
    record: LaunchRecord
    inputs: tuple[Input, ...]


def _release(path: str, soname: str) -> str:
    abi, symbol = mpi_abi(soname), version_symbol(soname)
    if abi is None:
        return ""
    found = symbol_string(path, symbol) if symbol and os.path.isfile(path) else None
    return f"{abi.label} {found}" if found else abi.label


def _injected(found: Found, host_root: str) -> tuple[Injected, ...]:
    """The injected libraries the audit looks for among what the app loads. Programs a profile
    binds (nvidia-smi) are not loaded, they are run: never reported unused."""
    facts = FactsCache()   # the planner's, just saved: no file parsed again
    return tuple(Injected(d.library, d.host_path, d.container_path, d.profile,
                          _release(on_host(host_root, d.host_path), d.library))
                 for d in found.plan.decisions if d.decision == INJECT and d.container_path and d.host_path
                 and not _is_program(facts.get(on_host(host_root, d.host_path))))


def _is_program(facts: ElfFacts | None) -> bool:
    return facts is not None and facts.is_program


def _node(host_root: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The node's RDMA devices and GPUs, as the findings name them."""
    rdma = tuple(f"{d.name} (software)" if d.software else d.name for d in rdma_facts(host_root).devices)
    gpus = gpu_models(host_root)
    module = kernel_module_version(host_root)
    return rdma, gpus or ((f"NVIDIA driver {module}",) if module else ())


def _said(record: LaunchRecord, why: str, report: bool) -> LaunchRecord:
    if not report or record.quiet:
        return record
    return replace(record, diagnostics=record.diagnostics + diagnostic_line(unavailable(why)) + "\n")


def audited(record: LaunchRecord, found: Found, want: AuditWish, policy: Mapping[str, str],
            host_root: str) -> Audited:
    """The record with the audit, or with AUDIT-UNAVAILABLE said (when the findings were asked for)."""
    if not want.on:
        return Audited(record, ())
    if not os.path.isfile(LIBRARY):
        return Audited(_said(record, f"the audit library {LIBRARY} is not built (reinstall shim)", want.report), ())
    look = found.audit
    if look is not None and look.unavailable:
        return Audited(_said(record, look.unavailable, want.report), ())
    injected = _injected(found, host_root)
    rdma, gpus = _node(host_root)
    side = NodeSide(rdma, gpus, injected, look.image_mpi if look else "")
    flags = (AUDIT["PRINT"] if want.report else 0) | (AUDIT["STRICT"] if want.strict else 0)
    audit = Audit(flags, LIBRARY, audit_rules(side, validate_policy(policy)) if want.report else (),
                  tuple(AuditInjected(i.path, on_host(host_root, i.host), sha256_file(on_host(host_root, i.host)) or "")
                        for i in injected))
    # one bind: the directory the executor stages with the library and the FIFO (format.AUDIT_DIR)
    bind = RecordBind(os.path.join(STAGE_DIR, AUDIT_STAGED_DIR), AUDIT_DIR, RO)
    out = replace(record, audit=audit, binds=(*record.binds, bind), env=with_audit(record.env, AUDIT_LIBRARY))
    return Audited(out, tuple(host_inputs(host_root)))
