"""Step 6 of planning: the look at the image (shim.launch.analysis, in a child that mounts it):
the injection plan and hardware diagnostics, what it read, and the binds its plan adds."""

from __future__ import annotations

import os
from dataclasses import replace

from shim import native
from shim.container.binds import KEEPDEV, RO
from shim.container.environment import DEFAULT_PATH
from shim.elf.ldcache import CACHE_FILE
from shim.host.paths import on_host
from shim.launch.analysis import Analysis, AnalysisJob
from shim.model import ERROR, WARNING
from shim.pipeline.hardware_step import Found, LookRequest
from shim.pipeline.inputs import read_log_inputs
from shim.pipeline.stage import STAGE_DIR, STAGED_LD_CACHE
from shim.record.encode import DIRECT, encode
from shim.record.format import CHECK, IDENTITY
from shim.record.model import RecordBind
from shim.record.snapshot import file_input


def analysis_job(req: LookRequest) -> AnalysisJob:
    # the analysis only reads the image: no namespaces of the app's (a PID namespace's init)
    prepare = encode(replace(req.base, namespaces=0, writable=False))
    path = native.record_env(prepare, {}, DIRECT).get("PATH", DEFAULT_PATH)
    image, site, hw = req.image, req.site, req.hardware
    return AnalysisJob(prepare_record=prepare, image_fd=image.opened.fd, stage=STAGE_DIR, image_path=image.path,
                       image_arch=image.arch, image_dir=image.path if image.kind == "dir" else "",
                       profiles=site.profiles, requested=site.requested, no_profiles=req.no_profiles,
                       command=req.command, path=path, host_root=req.host_root,
                       refusal_severity=ERROR if site.site.refusal == "error" else WARNING,
                       environ=req.environ, hw_key=hw.key, hw_known=hw.known[0] if hw.known else None,
                       debug=req.debug, look_for_command=req.dry_run, audit=req.audit)


def found_in(req: LookRequest, analysis: Analysis) -> Found:
    """What the look read, and the binds its plan adds."""
    image, inputs = req.image, []
    if image.kind == "dir":
        inputs += read_log_inputs(image.path, analysis.image_reads)
        inputs += read_log_inputs(image.path, req.hardware.known[1] if req.hardware.known else {})
    for root, reads in analysis.host_reads.items():
        inputs += read_log_inputs(root, reads)
    inputs.append(file_input(on_host(req.host_root, CACHE_FILE), IDENTITY | CHECK["FOLLOW"]))
    # Plan paths are the host's; on a simulated node (SHIMRUN_HOST_ROOT) they lie under its root.
    binds = [RecordBind(on_host(req.host_root, b.src), b.dst, (RO if b.read_only else 0)
                        | (KEEPDEV if b.device else 0)) for b in analysis.plan.binds]
    if analysis.ld_cache:
        binds.append(RecordBind(os.path.join(STAGE_DIR, STAGED_LD_CACHE), CACHE_FILE, RO))
    return Found(analysis.plan, analysis.ld_cache, tuple(binds), tuple(inputs), analysis.audit)
