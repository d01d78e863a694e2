"""What differs between a provenance record and the same planning on this node now: one line
per difference, each either material (another computation would run: another image, another
host library, another decision, driver or ISA level) or a note (another kernel, CPU model, node)."""

from __future__ import annotations

from dataclasses import dataclass

from shim.errors import escaped


@dataclass(frozen=True)
class Difference:
    what: str
    recorded: object
    now: object
    material: bool = True

    def line(self) -> str:
        mark = "differs" if self.material else "note"
        return escaped(f"{mark}: {self.what}: recorded {_show(self.recorded)}, now {_show(self.now)}")


def _show(value: object) -> str:
    if value is None or value == "":
        return "none"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"sha256:{value[:16]}…"
    return str(value)


def _get(doc: dict, *path: str) -> object:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _image(old: dict, new: dict) -> list[Difference]:
    out = []
    for key in ("kind", "arch", "sha256"):
        if old.get(key) != new.get(key):
            out.append(Difference(f"image {key}", old.get(key), new.get(key)))
    before = {o["id"]: o for o in (_get(old, "sif", "objects") or [])}
    after = {o["id"]: o for o in (_get(new, "sif", "objects") or [])}
    for oid in sorted(before.keys() | after.keys()):
        a, b = before.get(oid), after.get(oid)
        if a is None or b is None:
            out.append(Difference(f"image object {oid}", a and a["type"], b and b["type"]))
        elif a["sha256"] != b["sha256"]:
            out.append(Difference(f"image object {oid} ({a['type']}{', ' + a['name'] if a['name'] else ''})",
                                  a["sha256"], b["sha256"]))
    if _get(old, "sif", "id") != _get(new, "sif", "id"):
        out.append(Difference("image SIF ID", _get(old, "sif", "id"), _get(new, "sif", "id")))
    verdict = [(_get(doc, "signatures", "ok"), _get(doc, "signatures", "signers")) for doc in (old, new)]
    if verdict[0] != verdict[1]:  # the same bytes with other keys trusted: the same computation
        out.append(Difference("image signatures (verified, signers)", verdict[0], verdict[1], material=False))
    if old.get("path") != new.get("path"):
        out.append(Difference("image path", old.get("path"), new.get("path"), material=False))
    return out


def _library(name: str, a: dict, b: dict) -> list[Difference]:
    out = []
    if a.get("decision") != b.get("decision"):
        out.append(Difference(f"{name}: decision", f"{a.get('decision')} ({a.get('reason')})",
                              f"{b.get('decision')} ({b.get('reason')})"))
    if a.get("host_path") != b.get("host_path"):
        out.append(Difference(f"{name}: host library", a.get("host_path"), b.get("host_path")))
    if a.get("sha256") != b.get("sha256"):
        out.append(Difference(f"{name}: host library {b.get('host_path') or a.get('host_path')} is another build",
                              a.get("sha256"), b.get("sha256")))
    for key in ("package", "mpi"):
        if (a.get(key) or None) != (b.get(key) or None):
            out.append(Difference(f"{name}: {key}", _brief(a.get(key)), _brief(b.get(key))))
    return out


def _brief(value: object) -> object:
    if isinstance(value, dict):
        return " ".join(str(v) for k, v in value.items() if v is not None and k != "role")
    return value


def _codes(plan: dict) -> set[str]:
    return {f"{d['code']} ({d['severity']})" for d in plan.get("diagnostics") or []}


def _rdma_names(host: dict) -> list[str]:
    return sorted(f"{d['name']}{' (software)' if d['software'] else ''}" for d in host.get("rdma") or [])


def _gpu_names(host: dict) -> list[str]:
    return sorted(d["name"] for d in _get(host, "gpu", "devices") or [])


def _plan(old: dict, new: dict) -> list[Difference]:
    def by_library(doc: dict) -> dict[str, dict]:
        return {f"{d['library']} ({d.get('profile') or 'no profile'})": d for d in doc.get("decisions") or []}

    out = []
    before, after = by_library(old), by_library(new)
    for name in sorted(before.keys() | after.keys()):
        a, b = before.get(name), after.get(name)
        if a is None or b is None:
            out.append(Difference(f"{name}", a and a["decision"], b and b["decision"]))
        else:
            out.extend(_library(name, a, b))
    if _codes(old) != _codes(new):
        gone, came = _codes(old) - _codes(new), _codes(new) - _codes(old)
        out.append(Difference("diagnostics", ", ".join(sorted(gone)) or None, ", ".join(sorted(came)) or None,
                              material=any("(error)" in c or "(warning)" in c for c in gone | came)))
    if old.get("profiles") != new.get("profiles"):
        out.append(Difference("profiles applied", ", ".join(old.get("profiles") or []),
                              ", ".join(new.get("profiles") or [])))
    return out


# (path in "host", what, material)
_HOST_FACTS = ((("gpu", "driver_version"), "GPU driver", True), (("gpu", "cuda_driver_version"), "CUDA driver API",
               True), (("cpu", "isa_level"), "x86-64 ISA level", True), (("cpu", "arch"), "CPU architecture", True),
               (("glibc",), "host glibc", True), (("kernel",), "kernel", False), (("cpu", "model"), "CPU model", False),
               (("hypervisor",), "hypervisor", False))


def _host(old: dict, new: dict) -> list[Difference]:
    out = [Difference(what, _get(old, *path), _get(new, *path), material)
           for path, what, material in _HOST_FACTS if _get(old, *path) != _get(new, *path)]
    if _rdma_names(old) != _rdma_names(new):
        out.append(Difference("RDMA devices", ", ".join(_rdma_names(old)), ", ".join(_rdma_names(new))))
    if _gpu_names(old) != _gpu_names(new):
        out.append(Difference("GPUs", ", ".join(_gpu_names(old)), ", ".join(_gpu_names(new))))
    return out


def differences(recorded: dict, now: dict) -> list[Difference]:
    out = _image(recorded.get("image") or {}, now.get("image") or {})
    if recorded.get("command") != now.get("command"):
        out.append(Difference("command", " ".join(recorded.get("command") or []), " ".join(now.get("command") or [])))
    out += _plan(recorded.get("plan") or {}, now.get("plan") or {})
    out += _host(recorded.get("host") or {}, now.get("host") or {})
    if _get(recorded, "shim", "version") != _get(now, "shim", "version"):
        out.append(Difference("shim version", _get(recorded, "shim", "version"), _get(now, "shim", "version"),
                              material=False))
    return out
