"""Launch records as bytes (shim/record/format.py; docs/launch-record.md)."""

from __future__ import annotations

import struct

from shim.record.format import AUDIT_SEP, ENV_TARGET, IMG, MAGIC, RUN_ARG, TAGS
from shim.record.model import (
    Audit,
    ContentInput,
    CpusInput,
    EnvInput,
    EnvRules,
    FileInput,
    GlobInput,
    Input,
    LaunchRecord,
)


def _s(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogateescape")
    if b"\0" in raw:
        raise ValueError(f"a NUL in a launch record string: {text!r}")
    return raw + b"\0"


def _u32(n: int) -> bytes:
    return struct.pack("<I", n)


def _f(name: str, payload: bytes) -> bytes:
    return struct.pack("<HI", TAGS[name][0], len(payload)) + payload


def _input(i: Input) -> bytes:
    if isinstance(i, FileInput):
        return _f("INPUT_FILE", struct.pack("<IIQQQqq", i.check, i.mode, i.dev, i.ino, i.size, i.mtime_ns, i.ctime_ns)
                  + _s(i.path))
    if isinstance(i, ContentInput):
        return _f("INPUT_CONTENT", bytes([i.data is not None]) + _s(i.path) + (i.data or b""))
    if isinstance(i, GlobInput):
        return _f("INPUT_GLOB", _s(i.pattern) + b"".join(_s(n) for n in i.names))
    if isinstance(i, EnvInput):
        return _f("INPUT_ENV", bytes([i.how, int(i.expect)]) + _s(i.name) + _s(i.value))
    if isinstance(i, CpusInput):
        return _f("INPUT_CPUS", _u32(i.allowed) + _s(i.host_root) + _s(i.quota))
    raise TypeError(i)


def env_fields(rules: EnvRules) -> bytes:
    out = [_f("ENV_PASS", bytes([rule]) + _s(text)) for rule, text in rules.passing]
    out += [_f("ENV_OP", bytes([o.target, o.op]) + _s(o.name) + _s(o.value)) for o in rules.ops]
    if rules.action_script:
        out.append(_f("ACTION_SCRIPT", _s(rules.action_script)))
    out.append(_f("ENV_DIR", _s(rules.env_dir)))
    if rules.env_data:
        out.append(_f("ENV_DATA", _s(rules.env_data)))
    return b"".join(out)


def env_only(version: str, rules: EnvRules) -> bytes:
    """A record with only the environment rules: for composing an environment (shim.native)."""
    return MAGIC + _f("VERSION", _s(version)) + env_fields(rules)


def audit_fields(a: Audit) -> bytes:
    out = [_f("AUDIT", _u32(a.flags) + _s(a.library))]
    out += [_f("AUDIT_RULE", bytes([r.kind, r.severity]) + _s(r.code) + _s(AUDIT_SEP.join(r.preconditions))
               + _s(AUDIT_SEP.join(r.patterns)) + _s(r.message) + _s(r.hint) + _s(r.admin_hint)) for r in a.rules]
    out += [_f("AUDIT_INJECTED", _s(i.path) + _s(i.host) + _s(i.sha256)) for i in a.injected]
    return b"".join(out)


def encode(r: LaunchRecord) -> bytes:
    out = [MAGIC, _f("VERSION", _s(r.version)), _f("KEY", _s(r.key))]
    out += [_input(i) for i in r.inputs]
    out += [_f("IMAGE_KIND", _u32(r.image.kind)), _f("IMAGE_PATH", _s(r.image.path)),
            _f("IMAGE_OFFSET", struct.pack("<Q", r.image.offset)), _f("SQUASHFUSE", _s(r.image.squashfuse)),
            _f("STAGE", _s(r.stage)), _f("FAKEROOT", _u32(int(r.fakeroot)))]
    if r.image_file is not None:
        out.append(_f("IMAGE_FILE", struct.pack("<IIQQQqq", *r.image_file)))
    if r.root_lock:
        out.append(_f("ROOT_LOCK", _s(r.root_lock)))
    if r.image.kind == IMG["KEPT"]:
        out.append(_f("KEPT_IDLE", _u32(r.kept_idle)))
    out += [_f("BIND", _u32(b.flags) + _s(b.src) + _s(b.dst)) for b in r.binds]
    out += [_f("APPEND", _s(path) + _s(text)) for path, text in r.appends]
    out += [_f("STAGE_FILE", _s(name) + data) for name, data in r.stage_files]
    out += [_f("LINK", _s(target) + _s(path)) for target, path in r.links]
    if r.namespaces:
        out.append(_f("NAMESPACES", _u32(r.namespaces)))
    if r.writable:
        out.append(_f("WRITABLE", _u32(1)))
    out += [_f("CWD", _s(r.cwd)), _f("CWD_REQUIRED", _u32(int(r.cwd_required))), _f("QUIET", _u32(int(r.quiet))),
            _f("DEBUG", _u32(int(r.debug))), env_fields(r.env)]
    if r.command:
        out.append(_f("COMMAND", _s(r.command)))
    if r.runscript is not None:
        fixed, default = r.runscript
        out.append(_f("RUNSCRIPT", _u32(1)))
        out += [_f("RUN_ARG", bytes([RUN_ARG["FIXED"]]) + _s(w)) for w in fixed]
        out += [_f("RUN_ARG", bytes([RUN_ARG["DEFAULT"]]) + _s(w)) for w in default]
    if r.diagnostics:
        out.append(_f("DIAGNOSTICS", _s(r.diagnostics)))
    if r.refuse:
        out.append(_f("REFUSE", _u32(r.refuse[0]) + _s(r.refuse[1])))
    out += [_f("NOTICE", _s(n)) for n in r.notices]
    out += [_f("PROVENANCE", _u32(kind) + _s(path)) for kind, path in r.provenance]
    if r.provenance:
        out.append(_f("PROVENANCE_FACTS", _s(r.provenance_facts)))
    if r.audit is not None:
        out.append(audit_fields(r.audit))
    return b"".join(out)


DIRECT, BASE = ENV_TARGET["DIRECT"], ENV_TARGET["BASE"]
