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
    """Fork the holder of the node's shared container and wait until it serves (csrc/share.c).
    The holder runs `set_up()` -> (spec, prepared, payload): the image mount, analysis and
    diagnostics happen there, once per node; `prepared` says set_up already entered the
    namespaces and mounted the image. A failure there is raised here, in the leading rank."""
    import os

    from shim._core import lib

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
        # The holder: leaves only through _exit.
        code, message, hint = int(ExitCode.LAUNCH), b"the node's container could not be set up", b""
        try:
            os.close(read_end)
            spec, prepared, payload = set_up()
            conf = _Config(spec)
            res = conf.ffi.new("struct shim_result *")
            sys.stdout.flush()
            sys.stderr.flush()
            code = lib.shim_hold(conf.cfg, res, int(prepared), listener.fileno(), write_end, payload, expected,
                                 linger_ms)
            message = conf.ffi.string(res.message)
        except ShimError as e:
            code, message, hint = int(e.code), e.message.encode(), e.hint.encode()
        finally:
            try:
                os.write(write_end, b"E%d\0%s\0%s" % (code, message, hint))
            finally:
                os._exit(code or int(ExitCode.LAUNCH))
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


def join(spec: LaunchSpec, userns: int, mntns: int) -> ShimError:
    """Enter the node's shared container and exec the app; returns only with the reason it could not."""
    from shim._core import lib

    sys.stdout.flush()
    sys.stderr.flush()
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    try:
        _call(lambda cfg, res: lib.shim_join(cfg, res, userns, mntns), spec)
    except ShimError as e:
        return e
    return ShimError(ExitCode.LAUNCH, "the C core returned without running the app")
