"""The C core's functions the planner uses (csrc/shim_core.h), as Python: the record's key and
environment, what a pattern matches, the cgroup CPU quota, the cache's root and trust, and the
look at an image before planning. Each is the one implementation the native front-end runs too,
so the planner and the executor cannot disagree about any of them."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from shim.errors import ExitCode, ShimError

_ENC = ("utf-8", "surrogateescape")


def _lib():
    from shim._core import ffi, lib

    return ffi, lib


def _cvec(ffi: Any, items: Sequence[str]) -> tuple[Any, list[Any]]:
    """A NULL-terminated char*[] and the buffers it points to (kept alive with it)."""
    keep = [ffi.new("char[]", s.encode(*_ENC)) for s in items]
    return ffi.new("char *[]", keep + [ffi.NULL]), keep


def _environ(ffi: Any, environ: Mapping[str, str]) -> tuple[Any, list[Any]]:
    return _cvec(ffi, [f"{k}={v}" for k, v in environ.items()])


def build_id() -> str:
    ffi, lib = _lib()
    return ffi.string(lib.shim_build_id()).decode()


def image_index(argv: Sequence[str]) -> int:
    """argv[i] is the image (argv[0] is the program), or -1: the command line is not one the
    front-end launches from a record."""
    ffi, lib = _lib()
    vec, _keep = _cvec(ffi, list(argv))
    return lib.shim_image_index(len(argv), vec)


def record_key(argv: Sequence[str], image: int, cwd: str, environ: Mapping[str, str]) -> str:
    ffi, lib = _lib()
    vec, _keep = _cvec(ffi, list(argv))
    env, _keep_env = _environ(ffi, environ)
    out = ffi.new("char[]", 33)
    lib.shim_record_key(len(argv), vec, image, cwd.encode(*_ENC), env, out)
    return ffi.string(out).decode()


def record_env(data: bytes, environ: Mapping[str, str], target: int) -> dict[str, str]:
    """The environment a record gives the app, for host environment `environ`."""
    ffi, lib = _lib()
    env, _keep = _environ(ffi, environ)
    size = ffi.new("size_t *")
    raw = lib.shim_record_env(data, len(data), env, target, size)
    if raw == ffi.NULL:
        raise ValueError("malformed launch record")
    try:
        block = ffi.buffer(raw, size[0])[:]
    finally:
        lib.shim_free(raw)
    out: dict[str, str] = {}
    for entry in block.split(b"\0")[:-1]:
        name, _, value = entry.decode(*_ENC).partition("=")
        out[name] = value
    return out


def record_current(data: bytes, key: str, environ: Mapping[str, str]) -> tuple[bool, str]:
    ffi, lib = _lib()
    env, _keep = _environ(ffi, environ)
    why = ffi.new("char[]", 512)
    ok = lib.shim_record_current(data, len(data), key.encode(), env, why, 512)
    return bool(ok), ffi.string(why).decode(*_ENC)


def glob_names(pattern: str) -> tuple[str, ...]:
    """What glob(3) matches, sorted (the way a record's GLOB input is checked)."""
    ffi, lib = _lib()
    size = 1 << 16
    while size <= 1 << 26:
        out = ffi.new("char[]", size)
        used = lib.shim_glob(pattern.encode(*_ENC), out, size)
        if used >= 0:
            return tuple(n.decode(*_ENC) for n in ffi.buffer(out, used)[:].split(b"\0")[:-1])
        size *= 4
    raise OSError(f"{pattern} matches too much")


def cgroup_quota(host_root: str = "/", pid: int = 0) -> str:
    ffi, lib = _lib()
    out = ffi.new("char[]", 64)
    lib.shim_cgroup_quota(host_root.encode(*_ENC), pid, out, 64)
    return ffi.string(out).decode()


def cache_root(create: bool) -> tuple[int, str, str]:
    """(0 the configured root | 1 a private .shim-UID in a shared sticky one | -1 none, path, problem)."""
    ffi, lib = _lib()
    out, problem = ffi.new("char[]", 4096), ffi.new("char[]", 8400)
    rc = lib.shim_cache_root(int(create), out, 4096, problem, 8400)
    return rc, ffi.string(out).decode(*_ENC), ffi.string(problem).decode(*_ENC)


def cache_untrusted(path: str, root: str | None, leaf_is_file: bool) -> str:
    ffi, lib = _lib()
    why = ffi.new("char[]", 8400)
    bad = lib.shim_cache_untrusted(path.encode(*_ENC), root.encode(*_ENC) if root else ffi.NULL,
                                   int(leaf_is_file), why, 8400)
    return ffi.string(why).decode(*_ENC) if bad else ""


def prepare(record: bytes, image_fd: int) -> None:
    """Enter the namespaces and mount the record's image at STAGE/root (this process only), from
    the opened image `image_fd`."""
    ffi, lib = _lib()
    res = ffi.new("struct shim_result *")
    code = lib.shim_record_prepare(record, len(record), image_fd, res)
    if code:
        try:
            exit_code = ExitCode(code)
        except ValueError:
            exit_code = ExitCode.LAUNCH
        raise ShimError(exit_code, ffi.string(res.message).decode("utf-8", "replace"))


def die_with_parent() -> None:
    """Ask for SIGKILL when the parent dies (a helper's child, before exec); OSError if refused."""
    ffi, lib = _lib()
    if lib.shim_die_with_parent() == -1:
        err = ffi.errno
        raise OSError(err, f"prctl(PR_SET_PDEATHSIG): {os.strerror(err)}")


def local_tasks(environ: Mapping[str, str]) -> int:
    """How many tasks of this Slurm step run on this node (0: Slurm does not say)."""
    ffi, lib = _lib()
    env, _keep = _environ(ffi, environ)
    return lib.shim_local_tasks(env)


def group_name(argv: Sequence[str], cwd: str, environ: Mapping[str, str], uid: int) -> bytes | None:
    """The abstract socket name of the node's shared container for this command line (argv[0]
    is the program), None when it shares none."""
    ffi, lib = _lib()
    vec, _keep = _cvec(ffi, list(argv))
    env, _keep_env = _environ(ffi, environ)
    c_cwd = ffi.new("char[]", cwd.encode(*_ENC))
    run = ffi.new("struct shim_run *", {"argc": len(argv), "argv": vec, "image": lib.shim_image_index(len(argv), vec),
                                        "environ": env, "cwd": c_cwd, "listen_fd": -1, "from_cache": 0,
                                        "image_fd": -1})
    if run.image < 0:
        return None
    out = ffi.new("char[]", 108)
    n = lib.shim_group_name(run, uid, out, 108)
    return ffi.buffer(out, n)[:] if n > 0 else None


def run_record(record: bytes, argv: Sequence[str], environ: Mapping[str, str], image_fd: int) -> tuple[int, str]:
    """Run a freshly planned record in this process (a single launch) on the opened image
    `image_fd`: returns only on failure, with (exit code, message)."""
    import os

    ffi, lib = _lib()
    vec, _keep = _cvec(ffi, list(argv))
    env, _keep_env = _environ(ffi, environ)
    c_cwd = ffi.new("char[]", os.getcwd().encode(*_ENC))
    run = ffi.new("struct shim_run *", {"argc": len(argv), "argv": vec, "image": lib.shim_image_index(len(argv), vec),
                                        "environ": env, "cwd": c_cwd, "listen_fd": -1, "from_cache": 0,
                                        "image_fd": image_fd})
    res = ffi.new("struct shim_result *")
    code = lib.shim_run_record(record, len(record), run, res)
    return code or int(ExitCode.LAUNCH), ffi.string(res.message).decode("utf-8", "replace")
