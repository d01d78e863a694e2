"""Handing a launch record to the C executor. A single launch runs it in this process, through
cffi (shim_run_record: the code the front-end runs a cached record with); a node's leader execs
the native front-end (csrc/frontend.c, installed as shim/libexec/shimrun) with the record on a
memory file (SHIMRUN_RECORD_FD), so that the holder it forks is native, not a copy of Python.
The process keeps its pid: the app replaces it."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence

from shim.errors import ExitCode, ShimError
from shim.record.format import HANDOVER_ENV
from shim.record.runtime_env import SHARE_VARIABLE, SLURM, share_off


def frontend_path() -> str:
    import shim

    return os.path.join(os.path.dirname(os.path.abspath(shim.__file__)), "libexec", "shimrun")


def run_record(record: bytes, argv: Sequence[str], environ: Mapping[str, str], listen_fd: int | None,
               frontend: str, image_fd: int, native_only: bool = False) -> ShimError:
    """Exec the executor with `record` for shimrun's arguments `argv`; returns only with the
    reason it could not. `frontend`: the flags the front-end handed over ("" when Python was
    started directly: the executor then holds the node's election itself). `image_fd`: the
    opened image the record was planned on, which the executor mounts (SHIMRUN_IMAGE_FD).
    `native_only`: the launch keeps processes of its own besides the app (a PID namespace's
    init, and the process outside it that waits): they must be the native front-end's, not
    copies of Python."""
    sys.stdout.flush()
    sys.stderr.flush()
    # Python ignores SIGPIPE and SIGXFSZ; exec keeps ignored signals ignored, the app must not inherit that.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    env = dict(environ)
    if "no-lc-ctype" in frontend.split(","):
        env.pop("LC_CTYPE", None)  # set by Python itself (PEP 538), not by the caller
    if listen_fd is None and (frontend or not _may_share(env)) and not native_only:
        return _run_here(record, argv, env, image_fd)  # a single launch: the election is done, or moot
    exe = frontend_path()
    fd = os.memfd_create("shim-launch-record", 0)  # inherited by the executor: no CLOEXEC
    view = memoryview(record)
    while view:
        view = view[os.write(fd, view):]
    env[HANDOVER_ENV["RECORD_FD"]] = str(fd)
    os.set_inheritable(image_fd, True)
    env[HANDOVER_ENV["IMAGE_FD"]] = str(image_fd)
    if frontend:
        env[HANDOVER_ENV["FRONTEND"]] = frontend
    if listen_fd is not None:
        os.set_inheritable(listen_fd, True)
        env[HANDOVER_ENV["LISTEN_FD"]] = str(listen_fd)
    try:
        os.execve(exe, ["shimrun", *argv], env)
    except OSError as e:
        os.close(fd)
        return ShimError(ExitCode.LAUNCH, f"cannot run the launch executor {exe}: {e.strerror}",
                         "reinstall shim: scripts/install.sh")
    raise AssertionError("not reached")


def _may_share(environ: Mapping[str, str]) -> bool:
    """Might this launch belong to a node's shared container? (Then, with Python started directly,
    the front-end holds the election.)"""
    share = environ.get(SHARE_VARIABLE, "")
    if share_off(share):
        return False
    return bool(share) or bool(environ.get(SLURM["JOB_ID"]) and environ.get(SLURM["STEP_ID"]))


def _run_here(record: bytes, argv: Sequence[str], environ: Mapping[str, str], image_fd: int) -> ShimError:
    from shim import native

    code, message = native.run_record(record, ["shimrun", *argv], environ, image_fd)
    try:
        exit_code = ExitCode(code)
    except ValueError:
        exit_code = ExitCode.LAUNCH
    return ShimError(exit_code, message)
