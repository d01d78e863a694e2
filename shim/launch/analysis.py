"""The planner's look at the image: in a child process that enters the namespaces and mounts the
image (the C core does; shim.native.prepare), plans the injections, runs the hardware check and
hands back what it found. The child and its mount go away with it: the launch itself is the C
executor's, from the record."""

from __future__ import annotations

import errno
import os
import pickle
import sys
import time
from dataclasses import dataclass, field

from shim.audit.look import AuditLook, audit_look
from shim.errors import ExitCode, ShimError
from shim.plan.model import Plan


@dataclass(frozen=True)
class AnalysisJob:
    prepare_record: bytes         # image, stage and fakeroot: what the C core needs to mount it
    image_fd: int                 # the opened image (inherited by the child), which it mounts
    stage: str
    image_path: str
    image_arch: str
    image_dir: str                # a directory image's path ("" for a SIF)
    profiles: object              # shim.site.profile_model.ProfileSet | None
    requested: tuple[str, ...]
    no_profiles: bool
    command: tuple[str, ...]
    path: str                     # the container PATH the app is looked up in
    host_root: str
    refusal_severity: str
    environ: dict = field(default_factory=dict)
    hw_key: str | None = None     # None: the hardware check is off
    hw_known: list | None = None  # its cached result (None: run it)
    debug: bool = False
    look_for_command: bool = False  # `check IMAGE COMMAND`: say whether the launch could start it
    audit: bool = False           # --report-loaded: can the command be audited, and the image's own MPI


@dataclass
class Analysis:
    plan: Plan                    # diagnostics: the hardware check's first, then the planner's
    ld_cache: bytes | None
    image_reads: dict             # {relative path: identity} read inside a directory image
    host_reads: dict              # {host root: {relative path: identity}}
    command_problem: tuple[int, str] | None = None  # (exit code, message) the launch would end with
    audit: AuditLook | None = None  # with AnalysisJob.audit


def _analyse(job: AnalysisJob) -> Analysis:
    from shim import native
    from shim.diagnose.check import recorded_check, store
    from shim.host.gather import gather_host_view
    from shim.image.regular import reading_image
    from shim.plan.compose import plan_for_image
    from shim.plan.request import PlanRequest

    native.prepare(job.prepare_record, job.image_fd)
    root = os.path.join(job.stage, "root")
    started, stats = time.perf_counter(), {}
    request = PlanRequest(root=root, image=job.image_path, profiles=job.profiles, requested=job.requested,
                          no_profiles=job.no_profiles, command=job.command[:1], path=job.path,
                          host=gather_host_view(job.host_root), refusal_severity=job.refusal_severity,
                          image_dir=job.image_dir)
    image_reads: dict = {}
    with reading_image(job.image_path):
        entry = plan_for_image(request, use_cache=not job.environ.get("SHIMRUN_NO_PLAN_CACHE"), stats=stats)
        planned = time.perf_counter()
        found = job.hw_known or []
        if job.hw_key and job.hw_known is None:
            found, reads = recorded_check(root, job.image_arch, job.command[0] if job.command else None, job.environ,
                                          job.path)
            store(job.hw_key, found, reads if job.image_dir else None)
            image_reads.update(reads if job.image_dir else {})
    if job.debug:
        print(f"shimrun: debug: analysis {1000 * (planned - started):.1f} ms (plan cache {stats['plan_cache']}); "
              f"hardware check {1000 * (time.perf_counter() - planned):.1f} ms "
              f"({'cached' if job.hw_known is not None else 'run' if job.hw_key else 'off'})", file=sys.stderr)
    plan = entry.plan
    plan.diagnostics[:0] = found
    image_reads.update(entry.image_reads if job.image_dir else {})
    problem = command_problem(root, job.command[0], job.path) if job.look_for_command and job.command else None
    audit = audit_look(root, job.command[0], job.path, job.image_arch) if job.audit and job.command else None
    return Analysis(plan, entry.ld_cache, image_reads, entry.host_reads, problem, audit)


def command_problem(root: str, name: str, path: str) -> tuple[int, str] | None:
    """Why the launch could not start `name` in the image mounted at `root` (exit code, the
    executor's words), or None. A relative name with a "/" is left alone: it depends on the
    working directory in the container."""
    from shim.elf.rootpath import RootPaths, find_program
    from shim.errors import EXEC_NOT_EXECUTABLE, EXEC_NOT_FOUND

    paths = RootPaths(root)
    if ("/" in name and not name.startswith("/")) or find_program(paths, name, path):
        return None
    host = paths.host(name) if name.startswith("/") else None
    if host is not None and os.path.lexists(host):
        return int(ExitCode.NOT_EXECUTABLE), EXEC_NOT_EXECUTABLE % (name, os.strerror(errno.EACCES))
    return int(ExitCode.NOT_FOUND), EXEC_NOT_FOUND % (name, path)


def analyse(job: AnalysisJob) -> Analysis:
    """Run the analysis in a child process; its ShimError is raised here."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            answer = ("ok", _analyse(job))
        except ShimError as e:
            answer = ("error", int(e.code), e.message, e.hint)
        except BaseException as e:  # noqa: BLE001 - reported by the parent, which prints one line
            if job.debug:
                import traceback

                traceback.print_exc()
            answer = ("crash", f"{type(e).__name__}: {e}")
        try:
            with os.fdopen(write_end, "wb") as f:
                f.write(pickle.dumps(answer))
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        raw = f.read()
    os.waitpid(pid, 0)
    answer = pickle.loads(raw) if raw else ("crash", "the analysis process died")
    if answer[0] == "ok":
        return answer[1]
    if answer[0] == "error":
        raise ShimError(ExitCode(answer[1]), answer[2], answer[3])
    raise RuntimeError(f"analysing the image: {answer[1]}")
