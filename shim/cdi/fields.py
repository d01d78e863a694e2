"""A decoded CDI spec (JSON/YAML data) made into shim/cdi/model values, each field checked: its
type, its grammar, and the spec version it needs. Unknown keys are refused, as the CDI reference
library refuses them. A problem is one CdiError line: file, device, key, and how to fix it."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, TypeVar

from shim.cdi.model import ContainerEdits, Device, DeviceNode, Hook, Mount, Spec
from shim.cdi.spec import HOOK_NAMES, MAX_ENTRIES, NODE_TYPES, VERSIONS, CdiError, kind_problem, name_problem

T = TypeVar("T")
_U32 = (1 << 32) - 1
_I64 = (1 << 63) - 1
HINT = "see the CDI specification (SPEC.md) or regenerate the spec (e.g. nvidia-ctk cdi generate)"


class Where(NamedTuple):
    """Where in a spec a value is: the file, the device ("" for the spec level), the key path."""
    path: str
    device: str
    key: str

    def at(self, key: str | int) -> Where:
        return self._replace(key=f"{self.key}[{key}]" if isinstance(key, int) else
                             f"{self.key}.{key}" if self.key else key)

    def error(self, problem: str, hint: str = HINT) -> CdiError:
        device = f" device {self.device!r}:" if self.device else ""
        return CdiError(f"CDI spec {self.path}:{device} {self.key} {problem}", hint)


def _type_name(value: object) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _mapping(w: Where, value: object, keys: tuple[str, ...]) -> dict:
    if not isinstance(value, dict):
        raise w.error(f"must be a mapping, not {_type_name(value)}")
    for key in value:
        if key not in keys:
            raise w.at(str(key)).error("is not a key the CDI specification defines",
                                       f"known keys{' in ' + w.key if w.key else ''}: {', '.join(keys)}")
    return value


def _string(w: Where, value: object, absolute: bool = False, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise w.error(f"must be a string, not {_type_name(value)}")
    if "\0" in value:
        raise w.error("holds a NUL character")
    if not empty and not value:
        raise w.error("must not be empty")
    if absolute and not value.startswith("/"):
        raise w.error(f"must be an absolute path, not {value!r}")
    return value


def _int(w: Where, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise w.error(f"must be an integer, not {_type_name(value)}")
    if not low <= value <= high:
        raise w.error(f"= {value} is out of range ({low}..{high})")
    return value


def _list(w: Where, value: object, item: Callable[[Where, object], T]) -> tuple[T, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise w.error(f"must be a list, not {_type_name(value)}")
    if len(value) > MAX_ENTRIES:
        raise w.error(f"has {len(value)} entries (at most {MAX_ENTRIES})")
    return tuple(item(w.at(i), v) for i, v in enumerate(value))


def _env(w: Where, value: object) -> str:
    text = _string(w, value)
    name, eq, _ = text.partition("=")
    if not eq or not name:
        raise w.error(f"= {text!r} is not NAME=VALUE")
    return text


def _annotations(w: Where, value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise w.error(f"must be a mapping of strings, not {_type_name(value)}")
    return tuple(sorted((_string(w.at(str(k)), k, empty=False), _string(w.at(str(k)), v)) for k, v in value.items()))


def _node(w: Where, value: object) -> DeviceNode:
    d = _mapping(w, value, ("path", "hostPath", "type", "major", "minor", "fileMode", "permissions", "uid", "gid"))
    if "path" not in d:
        raise w.error("has no path (the device node's path in the container)")
    kind = _string(w.at("type"), d.get("type", ""))
    if kind not in ("", *NODE_TYPES):
        raise w.at("type").error(f"= {kind!r} is not one of b, c, u, p")
    permissions = _string(w.at("permissions"), d.get("permissions", ""))
    if permissions not in ("none", "") and (set(permissions) - set("rwm") or len(set(permissions)) != len(permissions)):
        raise w.at("permissions").error(f"= {permissions!r} is not some of r, w, m")

    def number(key: str, high: int) -> int | None:
        return None if d.get(key) is None else _int(w.at(key), d[key], 0, high)

    return DeviceNode(_string(w.at("path"), d["path"], absolute=True),
                      _string(w.at("hostPath"), d.get("hostPath", ""), absolute=bool(d.get("hostPath"))),
                      kind, number("major", _I64), number("minor", _I64), number("fileMode", 0o7777 | 0o170000),
                      permissions, number("uid", _U32), number("gid", _U32))


def _mount(w: Where, value: object) -> Mount:
    d = _mapping(w, value, ("hostPath", "containerPath", "type", "options"))
    for key in ("hostPath", "containerPath"):
        if key not in d:
            raise w.error(f"has no {key}")
    return Mount(_string(w.at("hostPath"), d["hostPath"], empty=False),
                 _string(w.at("containerPath"), d["containerPath"], absolute=True),
                 _string(w.at("type"), d.get("type", "")),
                 _list(w.at("options"), d.get("options"), lambda ww, v: _string(ww, v, empty=False)))


def _hook(w: Where, value: object) -> Hook:
    d = _mapping(w, value, ("hookName", "path", "args", "env", "timeout"))
    for key in ("hookName", "path"):
        if key not in d:
            raise w.error(f"has no {key}")
    name = _string(w.at("hookName"), d["hookName"])
    if name not in HOOK_NAMES:
        raise w.at("hookName").error(f"= {name!r} is not an OCI hook point", f"one of {', '.join(HOOK_NAMES)}")
    timeout = d.get("timeout")
    return Hook(name, _string(w.at("path"), d["path"], absolute=True), _list(w.at("args"), d.get("args"), _string),
                _list(w.at("env"), d.get("env"), _env),
                None if timeout is None else _int(w.at("timeout"), timeout, 1, _U32))


def _net_device(w: Where, value: object) -> object:
    d = _mapping(w, value, ("hostInterfaceName", "name"))
    for key in ("hostInterfaceName", "name"):
        _string(w.at(key), d.get(key), empty=False)
    return d


EDIT_KEYS = ("env", "deviceNodes", "mounts", "hooks", "intelRdt", "additionalGids", "netDevices")
RDT_KEYS = ("closID", "l3CacheSchema", "memBwSchema", "schemata", "enableMonitoring")


def _edits(w: Where, value: object, needs: list[tuple[str, str]]) -> ContainerEdits:
    if value is None:
        return ContainerEdits()
    d = _mapping(w, value, EDIT_KEYS)
    if d.get("intelRdt") is not None:
        # Accepted and checked, never applied: resctrl is the host's, shim changes no host setting.
        rdt = _mapping(w.at("intelRdt"), d["intelRdt"], RDT_KEYS)
        needs.append(("1.1.0" if "schemata" in rdt or rdt.get("enableMonitoring") else "0.7.0",
                      w.at("intelRdt").key))
    if d.get("additionalGids"):
        needs.append(("0.7.0", w.at("additionalGids").key))
    if d.get("netDevices"):
        _list(w.at("netDevices"), d["netDevices"], _net_device)
        needs.append(("1.1.0", w.at("netDevices").key))
    nodes = _list(w.at("deviceNodes"), d.get("deviceNodes"), _node)
    needs.extend(("0.5.0", w.at("deviceNodes").at(i).at("hostPath").key) for i, n in enumerate(nodes) if n.host_path)
    mounts = _list(w.at("mounts"), d.get("mounts"), _mount)
    needs.extend(("0.4.0", w.at("mounts").at(i).at("type").key) for i, m in enumerate(mounts) if m.type)
    gids = _list(w.at("additionalGids"), d.get("additionalGids"), lambda ww, v: _int(ww, v, 0, _U32))
    return ContainerEdits(_list(w.at("env"), d.get("env"), _env), nodes, mounts,
                          _list(w.at("hooks"), d.get("hooks"), _hook), tuple(g for g in gids if g))


def _device(w: Where, value: object, needs: list[tuple[str, str]]) -> Device:
    d = _mapping(w, value, ("name", "annotations", "containerEdits"))
    if "name" not in d:
        raise w.error("has no name")
    name = _string(w.at("name"), d["name"])
    if problem := name_problem(name):
        raise w.at("name").error(f"= {name!r} {problem}", "rename the device in the spec")
    w = Where(w.path, name, "")
    if name[0].isdigit():
        needs.append(("0.5.0", f"device {name!r}: a name beginning with a digit"))
    if d.get("annotations"):
        needs.append(("0.6.0", f"device {name!r}: annotations"))
    edits = _edits(w.at("containerEdits"), d.get("containerEdits"), needs)
    return Device(name, _annotations(w.at("annotations"), d.get("annotations")), edits)


def spec_from(path: str, data: object) -> Spec:
    w = Where(path, "", "")
    d = _mapping(w, data, ("cdiVersion", "kind", "annotations", "devices", "containerEdits"))
    for key in ("cdiVersion", "kind", "devices"):
        if key not in d:
            raise CdiError(f"CDI spec {path}: no {key}", HINT)
    version = _string(w.at("cdiVersion"), d["cdiVersion"])
    if version not in VERSIONS:
        raise w.at("cdiVersion").error(f"= {version!r} is not a CDI version shim knows",
                                       f"known: {', '.join(VERSIONS)}")
    kind = _string(w.at("kind"), d["kind"])
    if problem := kind_problem(kind):
        raise w.at("kind").error(f"= {kind!r} {problem}", "e.g. kind: nvidia.com/gpu")
    needs: list[tuple[str, str]] = []
    if "." in kind.partition("/")[2]:
        needs.append(("0.6.0", "a '.' in the kind's class"))
    if d.get("annotations"):
        needs.append(("0.6.0", "annotations"))
    devices = _list(w.at("devices"), d["devices"], lambda ww, v: _device(ww, v, needs))
    if not devices:
        raise w.at("devices").error("is empty (a spec defines at least one device)")
    seen: set[str] = set()
    for device in devices:
        if device.name in seen:
            raise CdiError(f"CDI spec {path}: device {device.name!r} is defined twice", "remove one of the two")
        seen.add(device.name)
    edits = _edits(w.at("containerEdits"), d.get("containerEdits"), needs)
    if needs and VERSIONS.index((need := max(needs, key=lambda n: VERSIONS.index(n[0])))[0]) > VERSIONS.index(version):
        raise w.at("cdiVersion").error(f"= {version!r} but {need[1]} needs at least {need[0]}",
                                       f'write cdiVersion: "{need[0]}"')
    return Spec(path, version, kind, devices, edits, _annotations(w.at("annotations"), d.get("annotations")))
