"""One CDI spec file read and validated: JSON or YAML (the safe loader, bounded), every field of
the CDI specification typed and checked, names per its grammar, `cdiVersion` one shim knows and at
least the version the fields used need. A problem is one line naming the file, the device and the
key (CdiError, exit 78); nothing here trusts a spec more than a site's other configuration."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterator

from shim.cdi.model import ContainerEdits, Device, DeviceNode, Hook, Mount, Spec
from shim.errors import ExitCode, ShimError

# The specification's released versions shim reads (SPEC.md's table; 0.1.0/0.2.0 had another schema).
VERSIONS: tuple[str, ...] = ("0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0")
EXTENSIONS = (".json", ".yaml")
MAX_FILE = 4 << 20          # a spec of every GPU and library on a large node is ~100 KB
MAX_ENTRIES = 20000         # devices, nodes, mounts, hooks, env entries: each list
MAX_FILES = 1000            # spec files in one directory
HOOK_NAMES = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
NODE_TYPES = ("b", "c", "u", "p")

_VENDOR = re.compile(r"[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?")
_CLASS = _VENDOR
_DEVICE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?")


class CdiError(ShimError):
    """A spec that cannot be used: malformed, of an unknown version, conflicting, untrusted."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(ExitCode.CONFIG, message, hint)


class RequestError(ShimError):
    """A device request that names nothing the specs define."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(ExitCode.USAGE, message, hint)


def kind_problem(kind: str) -> str:
    """Why `kind` is not vendor/class per the grammar ("" if it is)."""
    vendor, slash, cls = kind.partition("/")
    if not slash:
        return "is not vendor/class"
    if not _VENDOR.fullmatch(vendor) or len(vendor) > 253:
        return f"has an invalid vendor {vendor!r} (a letter, then letters, digits, '_', '-', '.'; ending alphanumeric)"
    if not _CLASS.fullmatch(cls) or len(cls) > 63:
        return f"has an invalid class {cls!r} (a letter, then letters, digits, '_', '-', '.'; ending alphanumeric)"
    return ""


def name_problem(name: str) -> str:
    if not _DEVICE.fullmatch(name):
        return "is not a device name (letters, digits, '_', '-', '.', ':'; beginning and ending alphanumeric)"
    return ""


def split_qualified(request: str) -> tuple[str, str]:
    """(kind, name) of vendor/class=name; RequestError if it is not one."""
    kind, eq, name = request.partition("=")
    problem = "has no '=NAME'" if not eq else kind_problem(kind) or name_problem(name)
    if problem:
        raise RequestError(f"--device {request!r}: {kind or request!r} {problem}",
                           "request a device as VENDOR/CLASS=NAME, e.g. --device nvidia.com/gpu=0 "
                           "(`shimrun cdi list` lists them)")
    return kind, name


# ---- reading ----

def trust_problem(path: str, st: os.stat_result) -> str:
    """Why a spec file or directory must not be trusted: another user than root or this user owns
    it, or someone else may write it ("" if trusted). A spec names host files to bind and device
    nodes to expose: who can write one chooses what every container of the node gets."""
    if st.st_uid not in _trusted_owners():
        return f"{path} is owned by uid {st.st_uid}, neither root nor the site's configuration owner"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return ""


def _trusted_owners() -> tuple[int, ...]:
    """root, the user (a spec of one's own changes only one's own containers) and whoever owns the
    site's configuration directory (the site's admin, who can change shim's injections anyway)."""
    from shim.site.config import SYSTEM_CONF_DIR

    try:
        admin = os.stat(SYSTEM_CONF_DIR).st_uid
    except OSError:
        admin = 0
    return (0, os.geteuid(), admin)


def _untrusted(where: str, path: str, st: os.stat_result) -> CdiError | None:
    problem = trust_problem(path, st)
    return CdiError(f"CDI {where} not trusted: {problem}",
                    "a spec decides what containers get from the host: make it root's and not writable by "
                    "others (chown root; chmod go-w), or remove it") if problem else None


def _untrusted_above(directory: str) -> CdiError | None:
    """A directory above the spec directory that another user could write (and so rename the spec
    directory away and put another in its place); a sticky one (/tmp) only lets them remove their own."""
    parent = os.path.dirname(os.path.realpath(directory))
    while True:
        try:
            st = os.stat(parent)
        except OSError:
            return None
        sticky = st.st_mode & stat.S_ISVTX
        if st.st_uid not in _trusted_owners() or (st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not sticky):
            why = trust_problem(parent, st) or f"{parent} is writable by others"
            return CdiError(f"CDI spec directory {directory} not trusted: {why} (a directory above it)",
                            "a spec decides what containers get from the host: keep spec directories where only "
                            "root (or the site's admin) can write")
        if parent == "/":
            return None
        parent = os.path.dirname(parent)


def spec_files(directory: str) -> list[str]:
    """The .json and .yaml files of a spec directory, by name; [] for a missing directory."""
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CdiError(f"cannot read CDI spec directory {directory}: {e.strerror}", "check its permissions") from None
    if not stat.S_ISDIR(st.st_mode):
        raise CdiError(f"CDI spec directory {directory} is not a directory", "remove it or make it a directory")
    if err := _untrusted("spec directory", directory, st) or _untrusted_above(directory):
        raise err
    try:
        names = sorted(n for n in os.listdir(directory) if n.endswith(EXTENSIONS) and not n.startswith("."))
    except OSError as e:
        raise CdiError(f"cannot list CDI spec directory {directory}: {e.strerror}", "check its permissions") from None
    if len(names) > MAX_FILES:
        raise CdiError(f"CDI spec directory {directory} holds {len(names)} spec files (at most {MAX_FILES})",
                       "remove the stale ones")
    return [os.path.join(directory, n) for n in names]


def read_spec_dir(directory: str) -> Iterator[Spec]:
    for path in spec_files(directory):
        yield read_spec(path)


def read_spec(path: str) -> Spec:
    """The spec in `path` (JSON, or YAML by its .yaml name), validated."""
    return parse_spec(path, _read_bytes(path))


def _read_bytes(path: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        why = "a symbolic link (a spec is read only as a file of its own)" if e.errno == 40 else e.strerror
        raise CdiError(f"cannot read CDI spec {path}: {why}", "check the file") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CdiError(f"CDI spec {path} is not a regular file", "remove it from the spec directory")
        if err := _untrusted("spec", path, st):
            raise err
        if st.st_size > MAX_FILE:
            raise CdiError(f"CDI spec {path} is {st.st_size} bytes (at most {MAX_FILE})", "is it a spec file?")
        return os.read(fd, MAX_FILE + 1)
    finally:
        os.close(fd)


def parse_spec(path: str, data: bytes) -> Spec:
    from shim.cdi.fields import spec_from

    return spec_from(path, _decode(path, data))


def _decode(path: str, data: bytes) -> object:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CdiError(f"CDI spec {path} is not UTF-8 text", "save it as UTF-8") from None
    if path.endswith(".yaml"):
        return _yaml(path, text)
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        where = (f"line {e.lineno} column {e.colno}: {e.msg}" if isinstance(e, json.JSONDecodeError)
                 else "nested too deeply")
        raise CdiError(f"CDI spec {path}: not valid JSON: {where}",
                       "fix the JSON (`shimrun cdi validate FILE`)") from None


def _yaml(path: str, text: str) -> object:
    try:
        import yaml
    except ImportError:
        raise CdiError(f"CDI spec {path} is YAML and PyYAML is not installed", "install pyyaml, or write the spec "
                       "as JSON (nvidia-ctk cdi generate --format=json)") from None
    try:
        # Aliases are refused first, so that a few bytes cannot expand into millions of entries
        # ("billion laughs"); then the safe loader: plain data only, never a Python object.
        depth = 0
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise CdiError(f"CDI spec {path}: YAML aliases (*name) are not accepted", "write the values out")
            depth += isinstance(event, yaml.CollectionStartEvent) - isinstance(event, yaml.CollectionEndEvent)
            if depth > 32:
                raise CdiError(f"CDI spec {path}: YAML nested too deeply", "a spec needs six levels")
        return yaml.load(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise CdiError(f"CDI spec {path}: not valid YAML: {where}{problem}", "fix the YAML "
                       "(`shimrun cdi validate FILE`)") from None


__all__ = ["CdiError", "ContainerEdits", "Device", "DeviceNode", "Hook", "Mount", "RequestError", "Spec",
           "kind_problem", "name_problem", "parse_spec", "read_spec", "read_spec_dir", "split_qualified"]
