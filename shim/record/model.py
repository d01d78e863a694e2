"""A launch record as Python data: what the planner decided for one launch, and everything it was
derived from (the inputs). shim/record/encode.py writes it in the format of
shim/record/format.py; the C executor (csrc/executor.c) runs it."""

from __future__ import annotations

from dataclasses import dataclass, field

from shim.record.format import ENV_HOW, IDENTITY


@dataclass(frozen=True)
class FileInput:
    """A path whose stat(2) must still match in the parts `check` names; mode 0: absent."""
    path: str
    check: int = IDENTITY
    mode: int = 0
    dev: int = 0
    ino: int = 0
    size: int = 0
    mtime_ns: int = 0


@dataclass(frozen=True)
class ContentInput:
    """A file whose whole content must be the same (/proc and /sys: their times say nothing)."""
    path: str
    data: bytes | None      # None: it could not be read


@dataclass(frozen=True)
class GlobInput:
    pattern: str
    names: tuple[str, ...]


@dataclass(frozen=True)
class EnvInput:
    name: str
    how: int = ENV_HOW["VALUE"]
    expect: bool = True     # VALUE: set (to value) or unset; NONEMPTY / PREFIX: true or false
    value: str = ""


@dataclass(frozen=True)
class CpusInput:
    allowed: int            # CPUs sched_getaffinity allows (0: not checked)
    host_root: str
    quota: str              # shim.native.cgroup_quota's text ("" none)


Input = FileInput | ContentInput | GlobInput | EnvInput | CpusInput


@dataclass(frozen=True)
class EnvOp:
    target: int             # format.ENV_TARGET
    op: int                 # format.ENV_OP
    name: str = ""
    value: str = ""


@dataclass(frozen=True)
class EnvRules:
    """How the app's environment is made from each launch's host environment."""
    passing: tuple[tuple[int, str], ...]    # (format.ENV_PASS rule, text)
    ops: tuple[EnvOp, ...]
    action_script: str = ""
    env_dir: str = "/.singularity.d/env"


@dataclass(frozen=True)
class RecordBind:
    src: str
    dst: str
    flags: int = 0


@dataclass(frozen=True)
class Image:
    kind: int               # format.IMG
    path: str
    offset: int = 0
    squashfuse: str = ""


@dataclass(frozen=True)
class LaunchRecord:
    version: str
    key: str
    image: Image
    stage: str
    command: str
    env: EnvRules
    binds: tuple[RecordBind, ...] = ()
    appends: tuple[tuple[str, str], ...] = ()           # (container path, text shown appended)
    stage_files: tuple[tuple[str, bytes], ...] = ()     # (name in the stage, content)
    fakeroot: bool = False
    cwd: str = ""                                       # "": the caller's
    cwd_required: bool = False
    quiet: bool = False
    debug: bool = False
    diagnostics: str = ""                               # printed as it is, before the app
    refuse: tuple[int, str] | None = None               # (exit code, message): the app is not started
    notices: tuple[str, ...] = ()
    inputs: tuple[Input, ...] = field(default=())
