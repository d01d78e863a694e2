"""Handing a launch record to the C executor: the native front-end (csrc/frontend.c, installed as
shim/libexec/shimrun) is exec'd with the record on a memory file (SHIMRUN_RECORD_FD) and runs
it as it runs one from the cache. The process keeps its pid: the app replaces it."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping, Sequence

from shim.errors import ExitCode, ShimError
from shim.record.format import HANDOVER_ENV


def frontend_path() -> str:
    import shim

    return os.path.join(os.path.dirname(os.path.abspath(shim.__file__)), "libexec", "shimrun")


def run_record(record: bytes, argv: Sequence[str], environ: Mapping[str, str], listen_fd: int | None,
               frontend: str) -> ShimError:
    """Exec the executor with `record` for shimrun's arguments `argv`; returns only with the
    reason it could not. `frontend`: the flags the front-end handed over ("" when Python was
    started directly: the executor then holds the node's election itself)."""
    exe = frontend_path()
    fd = os.memfd_create("shim-launch-record", 0)  # inherited by the executor: no CLOEXEC
    view = memoryview(record)
    while view:
        view = view[os.write(fd, view):]
    env = dict(environ)
    env[HANDOVER_ENV["RECORD_FD"]] = str(fd)
    if frontend:
        env[HANDOVER_ENV["FRONTEND"]] = frontend
        if "no-lc-ctype" in frontend.split(","):
            env.pop("LC_CTYPE", None)  # set by Python itself (PEP 538), not by the caller
    if listen_fd is not None:
        os.set_inheritable(listen_fd, True)
        env[HANDOVER_ENV["LISTEN_FD"]] = str(listen_fd)
    sys.stdout.flush()
    sys.stderr.flush()
    # Python ignores SIGPIPE and SIGXFSZ; exec keeps ignored signals ignored, the app must not inherit that.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    try:
        os.execve(exe, ["shimrun", *argv], env)
    except OSError as e:
        os.close(fd)
        return ShimError(ExitCode.LAUNCH, f"cannot run the launch executor {exe}: {e.strerror}",
                         "reinstall shim: scripts/install.sh")
    raise AssertionError("not reached")
