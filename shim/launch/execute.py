"""The one module that hands a launch to the C core (csrc/), which enters the namespaces,
mounts, pivots and execs the app.

`prepare` enters the namespaces and mounts the image (this process then sees the container's
root at `<stage>/root`, so Python can analyse it); `finish` binds, pivots and execs: on success
it never returns."""

from __future__ import annotations

import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shim.errors import ExitCode, ShimError
from shim.launch.binds import Bind
from shim.launch.environment import LaunchEnv
from shim.launch.rootfs import RootfsSource

IMG_SQUASHFS = 1
IMG_DIR = 2


@dataclass(frozen=True)
class LaunchSpec:
    rootfs: RootfsSource
    stage: str
    binds: Sequence[Bind]
    cwd: str
    argv: Sequence[str]
    env: LaunchEnv
    appends: Sequence[tuple[str, str]] = ()  # (container file, text shown appended to it)
    fakeroot: bool = False
    debug: bool = False
    env_dir: str = "/.singularity.d/env"
    cwd_required: bool = False   # a missing cwd is an error (--pwd, --strict), not a warning and /
    quiet: bool = False          # --quiet: the C core prints no warning either


def _envp(env: Mapping[str, str]) -> list[str]:
    return [f"{k}={v}" for k, v in env.items()]


class _Config:
    """A `struct shim_config` and the C strings it points to (kept alive with it)."""

    def __init__(self, spec: LaunchSpec) -> None:
        from shim._core import ffi

        self.ffi = ffi
        self.keep: list[object] = []
        cfg = self.cfg = ffi.new("struct shim_config *")
        cfg.image_kind = IMG_SQUASHFS if spec.rootfs.kind == "squashfs" else IMG_DIR
        cfg.image_path = self.cstr(spec.rootfs.path)
        cfg.offset = spec.rootfs.offset
        cfg.squashfuse = self.cstr(spec.rootfs.squashfuse)
        cfg.stage = self.cstr(spec.stage)
        cfg.fakeroot = int(spec.fakeroot)
        binds = self.new("struct shim_bind[]", len(spec.binds) or 1)
        for i, b in enumerate(spec.binds):
            binds[i].src = self.cstr(b.src)
            binds[i].dst = self.cstr(b.dst)
            binds[i].flags = b.flags
        cfg.binds = binds
        cfg.nbinds = len(spec.binds)
        appends = self.new("struct shim_append[]", len(spec.appends) or 1)
        for i, (path, text) in enumerate(spec.appends):
            appends[i].path = self.cstr(path)
            appends[i].text = self.cstr(text)
        cfg.appends = appends
        cfg.nappends = len(spec.appends)
        cfg.cwd = self.cstr(spec.cwd)
        cfg.cwd_required = int(spec.cwd_required)
        cfg.quiet = int(spec.quiet)
        cfg.argv = self.cvec(spec.argv)
        cfg.envp_direct = self.cvec(_envp(spec.env.direct))
        cfg.envp_script = self.cvec(_envp(spec.env.base))
        cfg.action_script = self.cstr(spec.env.action_script)
        cfg.env_dir = self.cstr(spec.env_dir)
        cfg.debug = int(spec.debug)

    def new(self, ctype: str, init):
        obj = self.ffi.new(ctype, init)
        self.keep.append(obj)
        return obj

    def cstr(self, text: str):
        return self.new("char[]", text.encode("utf-8", "surrogateescape"))

    def cvec(self, items: Sequence[str]):
        return self.new("char *[]", [self.cstr(s) for s in items] + [self.ffi.NULL])


def _call(fn, spec: LaunchSpec) -> None:
    conf = _Config(spec)
    res = conf.ffi.new("struct shim_result *")
    code = fn(conf.cfg, res)
    if code:
        message = conf.ffi.string(res.message).decode("utf-8", "replace")
        try:
            exit_code = ExitCode(code)
        except ValueError:
            exit_code = ExitCode.LAUNCH
        raise ShimError(exit_code, message)


def container_root(spec: LaunchSpec) -> str:
    return f"{spec.stage}/root"


def prepare(spec: LaunchSpec) -> str:
    """Enter the namespaces and mount the image; returns where this process now sees its root."""
    from shim._core import lib

    _call(lib.shim_prepare, spec)
    return container_root(spec)


def finish(spec: LaunchSpec) -> ShimError:
    """Bind, pivot and exec the app (after `prepare`); returns only with the reason it could not."""
    from shim._core import lib

    # Python's buffers would be lost at exec, and it ignores SIGPIPE, which the app must not inherit.
    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    try:
        _call(lib.shim_finish, spec)
    except ShimError as e:
        return e
    return ShimError(ExitCode.LAUNCH, "the C core returned without running the app")


def execute(spec: LaunchSpec) -> ShimError:
    """prepare + finish, for a launch that needs no look at the image in between."""
    try:
        prepare(spec)
    except ShimError as e:
        return e
    return finish(spec)


def hold(listener, set_up, expected: int = 0, linger_ms: int = 2000) -> None:
    """Fork the holder of the node's shared container and return once it serves (share.py).
    The holder runs `set_up()` -> (spec, prepared, exec_spec): the image mount, analysis and
    diagnostics happen there, once per node; `prepared` says set_up already entered the
    namespaces and mounted the image. Then it sets the container up (csrc/share.c) and serves
    it, composing each rank's exec with `exec_spec(request bytes) -> ExecSpec`.
    A failure in the set-up is raised here, in the leading rank."""
    import os

    from shim._core import lib
    from shim.launch.share import serve

    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        # Fork again and let the middle process go: the holder must not be a child of this rank's
        # app, which may wait for all of its children (mpiexec does) while the holder waits for it.
        try:
            if os.fork():
                os._exit(0)
        except OSError:
            os._exit(int(ExitCode.LAUNCH))
        _holder(listener, set_up, expected, linger_ms, read_end, write_end, lib, serve)
    os.close(write_end)
    listener.close()
    os.waitpid(pid, 0)  # the middle process, gone at once
    with os.fdopen(read_end, "rb") as f:
        answer = f.read()
    if answer == b"ok":
        return
    code, message, hint = (answer.split(b"\0", 2) + [b"", b""])[:3]
    try:
        exit_code = ExitCode(int(code[1:] or 0))
    except ValueError:
        exit_code = ExitCode.LAUNCH
    raise ShimError(exit_code, message.decode("utf-8", "replace") or "the node's container could not be set up",
                    hint.decode("utf-8", "replace"))


def _holder(listener, set_up, expected, linger_ms, read_end, write_end, lib, serve) -> None:
    """The holder process: leaves only through _exit."""
    import os

    code, message, hint = int(ExitCode.LAUNCH), b"the node's container could not be set up", b""
    try:
        os.close(read_end)
        spec, prepared, answer = set_up()  # everything `answer` needs is imported now, before the pivot
        conf = _Config(spec)
        res = conf.ffi.new("struct shim_result *")
        userns, mntns = conf.ffi.new("int *"), conf.ffi.new("int *")
        sys.stdout.flush()
        sys.stderr.flush()
        code = lib.shim_hold_setup(conf.cfg, res, int(prepared), userns, mntns)
        if code == 0:
            os.write(write_end, b"ok")
            os.close(write_end)
            # Do not hold the step's output open (srun waits for it to close).
            devnull = os.open("/dev/null", os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            serve(listener, userns[0], mntns[0], answer, expected, linger_ms)
            os._exit(0)
        message = conf.ffi.string(res.message)
    except ShimError as e:
        code, message, hint = int(e.code), e.message.encode(), e.hint.encode()
    except BaseException as e:  # noqa: BLE001 - the holder must report, never unwind into the rank's code
        message = f"the node's container could not be set up: {type(e).__name__}: {e}".encode()
    try:
        os.write(write_end, b"E%d\0%s\0%s" % (code, message, hint))
        os.close(write_end)
        # The leader says why, once for the node; the step's other ranks get the same answer.
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        from shim.launch.share import refuse_all

        refuse_all(listener, code or int(ExitCode.LAUNCH),
                   "the node's container was not started: " + message.decode("utf-8", "replace")
                   + " (the node's first rank printed why)", max(expected - 1, 0), linger_ms)
    finally:
        os._exit(code or int(ExitCode.LAUNCH))


def join(joined) -> ShimError:
    """Enter the node's shared container and exec what the holder composed for this rank;
    returns only with the reason it could not."""
    from shim._core import ffi, lib

    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    keep = [ffi.new("char[]", a.encode("utf-8", "surrogateescape")) for a in joined.argv]
    env = [ffi.new("char[]", e.encode("utf-8", "surrogateescape")) for e in joined.envp]
    argv = ffi.new("char *[]", keep + [ffi.NULL])
    envp = ffi.new("char *[]", env + [ffi.NULL])
    err = ffi.new("char[]", 1024)
    code = ffi.new("int *")
    lib.shim_join_exec(joined.userns, joined.mntns, joined.cwd.encode(), argv, envp, err, 1024, code)
    try:
        exit_code = ExitCode(code[0])
    except ValueError:
        exit_code = ExitCode.LAUNCH
    return ShimError(exit_code, ffi.string(err).decode("utf-8", "replace"))
