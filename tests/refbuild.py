"""The REFERENCE build: shim as it was at a given commit (by default 85e818e, the build before
issue #23's refactor), installed once from this repository's own git objects; a decoder of the
launch records it and the build under test write (docs/launch-record.md), and their comparison
field by field, less what is inherently per-build (normalised()).

The install lives at CACHE/reference-<commit12>-<sysconfdir slug>/prefix (CACHE: images.py's,
$SHIM_TEST_CACHE or /var/cache/shim-test), made with that commit's own scripts/install.sh and
the same SHIM_SYSCONFDIR as the build under test (both must read the same site configuration).
A venv and the native front-end hold their own absolute paths (the Python the front-end starts
is compiled in), so the prefix cannot be built elsewhere and renamed into place: it is built in
place, and published by renaming a `complete` marker beside it (images.cached: under a lock,
stale leftovers removed first). Concurrent test processes build it once; a crashed build is
redone."""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import NO_RECORD_CACHE, REPO, Runner
from images import cache_root, cached
from policy import system_conf_dir

from shim.record.format import BIND, MAGIC, TAGS

# The build before issue #23's refactor; SHIM_REFERENCE_COMMIT names another (to compare with any).
REFERENCE_COMMIT = os.environ.get("SHIM_REFERENCE_COMMIT") or "85e818e6b13d70cb9cb19a67ea4ba77c04e66dd0"
INSTALL_TIMEOUT = 1800.0


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, check=False)


def require_commit(commit: str) -> None:
    """Skip when a shallow clone lacks `commit` (say so); any other lack of it is a failure."""
    if _git("cat-file", "-e", f"{commit}^{{commit}}").returncode == 0:
        return
    shallow = _git("rev-parse", "--is-shallow-repository").stdout.decode().strip() == "true"
    if shallow:
        pytest.skip(f"the reference commit {commit[:12]} is not in this shallow clone (fetch the full history)")
    pytest.fail(f"the reference commit {commit} is not in {REPO}'s git objects", pytrace=False)


def _slug(path: Path) -> str:
    return str(path).strip("/").replace("/", "-") or "root"


def reference_dir(commit: str, sysconfdir: Path) -> Path:
    return cache_root() / f"reference-{commit[:12]}-{_slug(sysconfdir)}"


def _install(commit: str, sysconfdir: Path, where: Path, marker_tmp: Path) -> None:
    """`commit`'s sources, exported from git, installed by its own scripts/install.sh at `where`/prefix."""
    prefix = where / "prefix"
    shutil.rmtree(prefix, ignore_errors=True)  # a crashed build's leftovers
    with tempfile.TemporaryDirectory(prefix="shim-reference-src.") as src:
        archive = _git("archive", "--format=tar", commit)
        if archive.returncode != 0:
            raise RuntimeError(f"git archive {commit}: {archive.stderr.decode()}")
        subprocess.run(["tar", "-x", "-C", src], input=archive.stdout, check=True)
        env = {**os.environ, "SHIM_PREFIX": str(prefix), "SHIM_SYSCONFDIR": str(sysconfdir)}
        env.pop("SHIM_LINK_BIN", None)  # never the system's /usr/local/bin/shimrun
        log = where / "install.log"
        with open(log, "wb") as out:
            r = subprocess.run(["bash", f"{src}/scripts/install.sh"], env=env, stdout=out, stderr=subprocess.STDOUT,
                               timeout=INSTALL_TIMEOUT, check=False)
        if r.returncode != 0:
            tail = log.read_text(errors="replace").splitlines()[-30:]
            raise RuntimeError(f"installing the reference {commit[:12]} failed (exit {r.returncode}):\n"
                               + "\n".join(tail))
    marker_tmp.write_text(f"{commit}\n{sysconfdir}\n")
    marker_tmp.chmod(0o644)


@dataclass(frozen=True)
class Build:
    """An installed shim: its prefix and its native front-end."""
    prefix: Path
    shimrun: Path

    @property
    def compat_bin(self) -> Path:
        return self.prefix / "compat" / "bin"


def installed(prefix: Path) -> Build:
    found = sorted(prefix.glob("venv/lib/python3*/site-packages/shim/libexec/shimrun"))
    if not found:
        raise RuntimeError(f"no shim front-end under {prefix}")
    return Build(prefix, found[0])


def reference_build(commit: str = REFERENCE_COMMIT) -> Build:
    """The reference install (built the first time: a few minutes), for the same system
    configuration directory as the build under test."""
    require_commit(commit)
    commit = _git("rev-parse", f"{commit}^{{commit}}").stdout.decode().strip()
    sysconfdir = system_conf_dir()
    where = reference_dir(commit, sysconfdir)
    where.mkdir(parents=True, exist_ok=True)
    where.chmod(0o755)
    cached(where / "complete", lambda tmp: _install(commit, sysconfdir, where, tmp))
    return installed(where / "prefix")


class RecordingRunner(Runner):
    """A Runner whose launches always store their records (the suite's second pass sets
    SHIMRUN_NO_RECORD_CACHE, which keeps records out of the cache, where they are compared)."""

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = super().env(extra)
        if NO_RECORD_CACHE not in (extra or {}):
            env.pop(NO_RECORD_CACHE, None)
        return env


# ---- decoding records ---------------------------------------------------------------------------

# Each tag's payload, in order: u8/u32/u64/i64 integers, s a NUL-terminated string, b the rest as
# bytes, s* the rest as strings. docs/launch-record.md describes each; the tag numbers are
# shim.record.format.TAGS', so a renumbered tag decodes as another field (a difference).
LAYOUTS: dict[str, str] = {
    "VERSION": "s", "KEY": "s",
    "INPUT_FILE": "u32 u32 u64 u64 u64 i64 i64 s", "INPUT_CONTENT": "u8 s b", "INPUT_GLOB": "s s*",
    "INPUT_ENV": "u8 u8 s s", "INPUT_CPUS": "u32 s s",
    "IMAGE_KIND": "u32", "IMAGE_PATH": "s", "IMAGE_OFFSET": "u64", "SQUASHFUSE": "s", "STAGE": "s", "FAKEROOT": "u32",
    "NAMESPACES": "u32", "WRITABLE": "u32", "IMAGE_FILE": "u32 u32 u64 u64 u64 i64 i64",
    "BIND": "u32 s s", "APPEND": "s s", "STAGE_FILE": "s b", "LINK": "s s",
    "CWD": "s", "CWD_REQUIRED": "u32", "QUIET": "u32", "DEBUG": "u32", "COMMAND": "s",
    "RUNSCRIPT": "u32", "RUN_ARG": "u8 s",
    "ENV_OP": "u8 u8 s s", "ENV_PASS": "u8 s", "ACTION_SCRIPT": "s", "ENV_DIR": "s", "ENV_DATA": "s",
    "DIAGNOSTICS": "s", "REFUSE": "u32 s", "NOTICE": "s", "PROVENANCE": "u32 s", "PROVENANCE_FACTS": "s",
    "AUDIT": "u32 s", "AUDIT_RULE": "u8 u8 s s s s s s", "AUDIT_INJECTED": "s s s",
}
_INTS = {"u8": "<B", "u32": "<I", "u64": "<Q", "i64": "<q"}
_NAMES = {tag: name for name, (tag, _) in TAGS.items()}


class MalformedRecord(ValueError):
    pass


def _string(payload: bytes, at: int) -> tuple[str, int]:
    end = payload.find(b"\0", at)
    if end < 0:
        raise MalformedRecord(f"a string without its NUL at byte {at}")
    return payload[at:end].decode("utf-8", "surrogateescape"), end + 1


def _values(name: str, payload: bytes) -> tuple:
    out: list = []
    at = 0
    for part in LAYOUTS[name].split():
        if part in _INTS:
            (value,) = struct.unpack_from(_INTS[part], payload, at)
            out.append(value)
            at += struct.calcsize(_INTS[part])
        elif part == "s":
            value, at = _string(payload, at)
            out.append(value)
        elif part == "b":
            out.append(payload[at:])
            at = len(payload)
        else:  # s*
            while at < len(payload):
                value, at = _string(payload, at)
                out.append(value)
    if at != len(payload):
        raise MalformedRecord(f"{name}: {len(payload) - at} bytes left over")
    return tuple(out)


def decode(data: bytes) -> list[tuple[str, tuple]]:
    """The record's fields in order: (tag name, its values)."""
    if not data.startswith(MAGIC):
        raise MalformedRecord("no SHIMREC1 magic")
    fields, at = [], len(MAGIC)
    while at < len(data):
        tag, length = struct.unpack_from("<HI", data, at)
        at += 6
        if tag not in _NAMES or at + length > len(data):
            raise MalformedRecord(f"tag {tag} (length {length}) at byte {at - 6}")
        name = _NAMES[tag]
        fields.append((name, _values(name, data[at:at + length])))
        at += length
    return fields


@dataclass(frozen=True)
class Outcome:
    """One command line launched by one build: what it said, and the records it wrote, decoded."""
    returncode: int
    stdout: str
    stderr: str
    records: tuple[tuple[tuple[str, tuple], ...], ...]


# ---- what may differ, and why -------------------------------------------------------------------

PREFIX, VERSION = "$PREFIX", "$VERSION"


def _text(value, prefix: str, version: str = ""):
    """`value` with the install prefix (and the build's version string) in it replaced."""
    swaps = [(prefix, PREFIX), *([(version, VERSION)] if version else [])]
    for was, now in swaps:
        if isinstance(value, str):
            value = value.replace(was, now)
        elif isinstance(value, bytes):
            value = value.replace(was.encode(), now.encode())
    return value


BUNDLED_CONF = "/shim/conf/shim.toml"  # the packaged default configuration (normalised() says why)
SERVED_LINE = "shimrun: served: "      # --debug's line saying how the image is served (normalised())
AUDIT_FIELDS = ("AUDIT", "AUDIT_RULE", "AUDIT_INJECTED")
AUDIT_DIR = "/.shim/audit/"              # where the audit's library and FIFO are bound (normalised())
AUDIT_SCRIPT_LINE = re.compile(r"^LD_AUDIT=.*; export LD_AUDIT\n", re.M)


# Read since the reference (#26, CDI): Slurm's GPU binding (job variables of the key) and the
# node's CDI spec directories (inputs, absent on these nodes) — new parts, not differences.
CDI_JOB_VARIABLES = ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS")
CDI_DIRS = ("/etc/cdi", "/var/run/cdi")


def _cdi_part(name: str, values: tuple) -> bool:
    return ((name == "INPUT_ENV" and values[2] in CDI_JOB_VARIABLES)
            or (name == "INPUT_FILE" and str(values[-1]).endswith(CDI_DIRS)))


def _audit_part(name: str, values: tuple) -> bool:
    """A field the after-start audit (#25, new since the reference) adds to a record: its own
    fields, its binds, LD_AUDIT in front of the app's."""
    return (name in AUDIT_FIELDS or (name == "BIND" and (str(values[-1]) + "/").startswith(AUDIT_DIR))
            or (name == "ENV_OP" and values[2] == "LD_AUDIT"))


def normalised(record: tuple[tuple[str, tuple], ...], prefix: str) -> list[str]:
    """The record's fields as lines, less what is per-build:
    - VERSION: the build that wrote it (by design: a record of another build is never run), and
      that string wherever the record repeats it (the provenance facts' shim.build);
    - KEY: a hash that includes the build;
    - the install prefix in any string or file content: each build runs from its own install
      (its staging directory, its packaged default configuration);
    - an INPUT_FILE under the prefix: its device, inode and times are those of the install's own
      copy of the file (its check, mode, size and path still compared); the bundled shim.toml's
      size too: it documents, commented out, the tables added since the reference ([serve]);
    - the "served" line (how the image is served, #24), new since the reference: a NOTICE of
      --debug (and, in _outputs, check's line and its JSON member);
    - the after-start audit's parts (#25, on with --provenance), new since the reference;
    - what #26 (CDI) reads since the reference: Slurm's GPU binding, the node's spec directories;
    - a BIND's MOUNTPOINTS flag (#27: nested binds' mount points in the user's writable binds),
      new since the reference;
    - the action script's line for a command the image lacks, in Apptainer's words since the
      reference ("executable file not found", which cwltool reads)."""
    version = next((values[0] for name, values in record if name == "VERSION"), "")
    lines = []
    for name, raw in record:
        if name in ("VERSION", "KEY") or (name == "NOTICE" and str(raw[0]).startswith(SERVED_LINE)):
            continue
        if _audit_part(name, raw) or _cdi_part(name, raw):
            continue
        kept = (_script(raw[0]),) if name == "ACTION_SCRIPT" else raw
        if name == "BIND":
            kept = (raw[0] & ~BIND["MOUNTPOINTS"], *raw[1:])
        values = tuple(_text(v, prefix, version) for v in kept)
        if name == "INPUT_FILE" and values[-1].startswith(PREFIX + "/"):
            size = 0 if values[-1].endswith(BUNDLED_CONF) else values[4]
            values = (values[0], values[1], 0, 0, size, 0, 0, values[-1])
        lines.append(f"{name} {values!r}")
    return lines


def _script(text: str) -> str:
    return AUDIT_SCRIPT_LINE.sub("", text).replace(": command not found in the image",
                                                   ": executable file not found in the image")


def _outputs(o: Outcome, prefix: str) -> dict:
    text = "".join(ln for ln in _text(o.stdout, prefix).splitlines(True) if not ln.startswith(SERVED_LINE[9:]))
    out: object = text
    with contextlib.suppress(ValueError):  # check --json: compared as data, a difference shown by key
        out = json.loads(text)
        if isinstance(out, dict):
            out.pop("served", None)
            if out.get("links") == []:  # the links a CDI hook makes (#26), new since the reference: none
                out.pop("links")
    stderr = [ln for ln in _text(o.stderr, prefix).splitlines() if not ln.startswith(SERVED_LINE)]
    return {"exit": o.returncode, "stdout": out, "stderr": stderr}


def differences(ref: Outcome, new: Outcome, prefixes: tuple[str, str], outputs: bool) -> str:
    """What the build under test did otherwise than the reference ("": nothing)."""
    if len(new.records) != len(ref.records):
        return f"{len(ref.records)} records, now {len(new.records)}:\n{ref.stderr}\n---\n{new.stderr}"
    for a, b in zip(ref.records, new.records, strict=True):
        want, got = normalised(a, prefixes[0]), normalised(b, prefixes[1])
        if got != want:
            return "\n".join(difflib.unified_diff(want, got, "reference", "under test", lineterm=""))
    if outputs or not ref.records:  # what the user reads: all of it
        want, got = _outputs(ref, prefixes[0]), _outputs(new, prefixes[1])
        if got != want:
            return json.dumps({"reference": want, "under test": got}, indent=1)
    if new.returncode != ref.returncode:
        return f"exit {ref.returncode}, now {new.returncode}:\n{ref.stderr}\n---\n{new.stderr}"
    return ""


if __name__ == "__main__":
    # The reference's front-end, built if need be (for benchmarks: SHIM_REFERENCE=$(python tests/refbuild.py)),
    # for the build of $SHIM_PREFIX (whose system configuration directory it shares).
    print(reference_build().shimrun)
