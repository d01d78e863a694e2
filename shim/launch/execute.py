"""The one module that hands a launch to the C core (csrc/), which enters the namespaces,
mounts, pivots and execs the app. On success this never returns."""

from __future__ import annotations

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


def execute(spec: LaunchSpec) -> ShimError:
    """exec the app inside the container; returns only with the reason it could not."""
    from shim._core import ffi, lib

    keep: list[object] = []  # cdata must outlive the call

    def cstr(text: str):
        buf = ffi.new("char[]", text.encode("utf-8", "surrogateescape"))
        keep.append(buf)
        return buf

    def cvec(items: Sequence[str]):
        vec = ffi.new("char *[]", [cstr(s) for s in items] + [ffi.NULL])
        keep.append(vec)
        return vec

    cfg = ffi.new("struct shim_config *")
    cfg.image_kind = IMG_SQUASHFS if spec.rootfs.kind == "squashfs" else IMG_DIR
    cfg.image_path = cstr(spec.rootfs.path)
    cfg.offset = spec.rootfs.offset
    cfg.squashfuse = cstr(spec.rootfs.squashfuse)
    cfg.stage = cstr(spec.stage)
    cfg.fakeroot = int(spec.fakeroot)
    binds = ffi.new("struct shim_bind[]", len(spec.binds) or 1)
    for i, b in enumerate(spec.binds):
        binds[i].src = cstr(b.src)
        binds[i].dst = cstr(b.dst)
        binds[i].flags = b.flags
    cfg.binds = binds
    cfg.nbinds = len(spec.binds)
    appends = ffi.new("struct shim_append[]", len(spec.appends) or 1)
    for i, (path, text) in enumerate(spec.appends):
        appends[i].path = cstr(path)
        appends[i].text = cstr(text)
    cfg.appends = appends
    cfg.nappends = len(spec.appends)
    cfg.cwd = cstr(spec.cwd)
    cfg.argv = cvec(spec.argv)
    cfg.envp_direct = cvec(_envp(spec.env.direct))
    cfg.envp_script = cvec(_envp(spec.env.base))
    cfg.action_script = cstr(spec.env.action_script)
    cfg.env_dir = cstr(spec.env_dir)
    cfg.debug = int(spec.debug)
    res = ffi.new("struct shim_result *")
    # Python's buffers would be lost at exec, and it ignores SIGPIPE, which the app must not inherit.
    sys.stdout.flush()
    sys.stderr.flush()
    import signal

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    code = lib.shim_launch(cfg, res)
    message = ffi.string(res.message).decode("utf-8", "replace")
    try:
        exit_code = ExitCode(code)
    except ValueError:
        exit_code = ExitCode.LAUNCH
    return ShimError(exit_code, message)
