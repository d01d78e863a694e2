"""A launch record as Python data: what the planner decided for one launch, and everything it was
derived from (the inputs). shim/record/encode.py writes it in the format of shim/record/format.py;
the C executor (csrc/executor.c) runs it. Its parts are named tuples: every planned launch makes
these classes anew, and a tuple class is made several times faster than a dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from shim.record.format import ENV_HOW, IDENTITY


class FileInput(NamedTuple):
    """A path whose stat(2) must still match in the parts `check` names; mode 0: absent."""
    path: str
    check: int = IDENTITY
    mode: int = 0
    dev: int = 0
    ino: int = 0
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0


class ContentInput(NamedTuple):
    """A file whose whole content must be the same (/proc and /sys: their times say nothing)."""
    path: str
    data: bytes | None      # None: it could not be read


class GlobInput(NamedTuple):
    pattern: str
    names: tuple[str, ...]


class EnvInput(NamedTuple):
    name: str
    how: int = ENV_HOW["VALUE"]
    expect: bool = True     # VALUE: set (to value) or unset; NONEMPTY / PREFIX: true or false
    value: str = ""


class CpusInput(NamedTuple):
    allowed: int            # CPUs sched_getaffinity allows (0: not checked)
    host_root: str
    quota: str              # shim.native.cgroup_quota's text ("" none)


Input = FileInput | ContentInput | GlobInput | EnvInput | CpusInput


class EnvOp(NamedTuple):
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
    env_data: str = ""                      # a script in env_dir the ops apply as data (format.py ENV_DATA)


class RecordBind(NamedTuple):
    src: str
    dst: str
    flags: int = 0


class ImageFile(NamedTuple):
    """The image the command line names, as the planner opened it (fstat of its descriptor): a
    launch runs only on this very file. A directory is known by dev and ino alone (what in it was
    read is listed among the inputs); a file by all of these, its change time included."""
    source: int             # format.IMAGE_SOURCE
    mode: int
    dev: int
    ino: int
    size: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0


class Image(NamedTuple):
    kind: int               # format.IMG
    path: str
    offset: int = 0
    squashfuse: str = ""


class AuditRule(NamedTuple):
    """A finding about what the app loaded (format.AUDIT_KIND, AUDIT_SEVERITY): `message` has at
    most one %s, the objects it is about."""
    kind: int
    severity: int
    code: str
    preconditions: tuple[str, ...]      # globs; one must match a loaded object (none: always)
    patterns: tuple[str, ...]           # globs the rule is about
    message: str
    hint: str = ""
    admin_hint: str = ""


class AuditInjected(NamedTuple):
    """An injected object: where the app sees it, and the host file it is."""
    path: str
    host: str
    sha256: str


class Audit(NamedTuple):
    """The after-start audit of loaded objects (format.AUDIT flags; README "What actually ran")."""
    flags: int
    library: str                        # the audit library's host path
    rules: tuple[AuditRule, ...] = ()
    injected: tuple[AuditInjected, ...] = ()


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
    links: tuple[tuple[str, str], ...] = ()             # (target, path): symlinks in fresh mounts
    namespaces: int = 0                                 # format.NS flags
    writable: bool = False                              # --writable-tmpfs
    # `shimrun run`: (fixed words, default words) of the image's runscript; command is then ""
    runscript: tuple[tuple[str, ...], tuple[str, ...]] | None = None
    provenance: tuple[tuple[int, str], ...] = ()       # (format.PROV kind, path): where the run's record goes
    provenance_facts: str = ""                          # the planner's part of it, one JSON object
    image_file: ImageFile | None = None                 # the opened image (None: a record that names none)
    root_lock: str = ""                                 # an unpacked root's lock file, held while the app runs
    kept_idle: int = 0                                  # IMG KEPT: seconds its holder stays without an app
    audit: Audit | None = None                          # --report-loaded (None: no audit, no fork)
