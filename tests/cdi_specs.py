"""CDI specs as NVIDIA's `nvidia-ctk cdi generate` writes them (its structure: the CDI
specification's fields, the toolkit's documented output), with the values of a SIMULATED GPU host
root (tests/hostroot.py): the driver's libraries and nvidia-smi mounted read-only at their own
paths, /dev/nvidiactl and the UVM nodes for every device, one device per GPU named by its index
and by its UUID (the NVML stub's), and `all`; the toolkit's hooks (create-symlinks,
enable-cuda-compat, update-ldcache, disable-device-node-modification) named, never run by shim.

Shared with the tests of the container edits (tests/test_cdi_*.py)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from hostroot import SimulatedHost

KIND = "nvidia.com/gpu"
HOOK = "/usr/bin/nvidia-cdi-hook"
MOUNT_OPTIONS = ["ro", "nosuid", "nodev", "bind"]
# The driver's files the generator mounts when present (libraries by their full release name).
DRIVER_LIBRARIES = ("libcuda.so", "libnvidia-ml.so", "libnvidia-ptxjitcompiler.so", "libnvidia-nvvm.so",
                    "libcudadebugger.so", "libnvidia-cfg.so")
BINARIES = ("/usr/bin/nvidia-smi", "/usr/bin/nvidia-debugdump", "/usr/bin/nvidia-persistenced")


def gpu_uuid(index: int) -> str:
    """The UUID the NVML stub (tests/hostroot.py) reports for GPU `index`."""
    return f"GPU-5ca1ab1e-0000-4000-8000-{index:012d}"


def _hook(*args: str) -> dict:
    return {"hookName": "createContainer", "path": HOOK, "args": ["nvidia-cdi-hook", *args]}


def _mount(path: str) -> dict:
    return {"hostPath": path, "containerPath": path, "options": list(MOUNT_OPTIONS)}


def _gpu_indices(host: SimulatedHost) -> list[int]:
    dev = host.path("dev")
    found = (re.fullmatch(r"nvidia(\d+)", n) for n in (os.listdir(dev) if dev.is_dir() else []))
    return sorted(int(m.group(1)) for m in found if m)


def _driver_files(host: SimulatedHost, driver: str) -> list[str]:
    """The node's driver files as the generator finds them: each library's real file
    (lib.so.DRIVER) in the library directory, then the binaries present."""
    libs = [f"{host.lib_dir}/{name}.{driver}" for name in DRIVER_LIBRARIES
            if host.path(f"{host.lib_dir}/{name}.{driver}").is_file()]
    return libs + [b for b in BINARIES if host.path(b).is_file()]


def nvidia_spec(host: SimulatedHost, driver: str, version: str = "0.8.0", uuids: bool = True,
                numbers: dict[str, tuple[int, int]] | None = None) -> dict:
    """The spec `nvidia-ctk cdi generate` writes for the node under `host.root` (driver release
    `driver`). `numbers`: device path -> (major, minor) to write into the nodes (the generator
    writes none unless asked; a node's real numbers come from the host)."""
    numbers = numbers or {}

    def node(path: str) -> dict:
        entry: dict = {"path": path}
        if path in numbers:
            entry.update(type="c", major=numbers[path][0], minor=numbers[path][1])
        return entry

    indices = _gpu_indices(host)
    per_gpu = {i: {"deviceNodes": [node(f"/dev/nvidia{i}")]} for i in indices}
    devices = [{"name": str(i), "containerEdits": per_gpu[i]} for i in indices]
    if uuids:
        devices += [{"name": gpu_uuid(i), "containerEdits": per_gpu[i]} for i in indices]
    devices.append({"name": "all", "containerEdits": {"deviceNodes": [node(f"/dev/nvidia{i}") for i in indices]}})
    control = [node(f"/dev/{n}") for n in ("nvidia-modeset", "nvidia-uvm", "nvidia-uvm-tools", "nvidiactl")
               if host.path(f"dev/{n}").exists()]
    files = _driver_files(host, driver)
    lib = host.lib_dir
    hooks = [_hook("create-symlinks", "--link", f"libcuda.so.1::{lib}/libcuda.so"),
             _hook("enable-cuda-compat", f"--host-driver-version={driver}"),
             _hook("update-ldcache", "--folder", lib),
             _hook("disable-device-node-modification")]
    edits = {"env": ["NVIDIA_VISIBLE_DEVICES=void"], "deviceNodes": control, "hooks": hooks,
             "mounts": [_mount(f) for f in files]}
    return {"cdiVersion": version, "kind": KIND, "devices": devices, "containerEdits": edits}


def dump(data: object, fmt: str = "yaml") -> str:
    """The spec's text: YAML as the generator writes it by default (keys sorted), or JSON."""
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    import yaml

    # The generator's YAML: a document start, block style, every key sorted; a name that YAML
    # would read as a number is quoted ("0").
    # (A copy through JSON: the generator writes each value out, never as a YAML alias.)
    return "---\n" + yaml.safe_dump(json.loads(json.dumps(data)), default_flow_style=False, sort_keys=True)


def write_spec(directory: Path, data: object | str, name: str = "nvidia.yaml") -> Path:
    """`data` (a spec, or a text as it is) written as `directory/name`, mode 0644, the directory
    made 0755 (spec directories must be writable by their owner only)."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o755)
    path = directory / name
    text = data if isinstance(data, str) else dump(data, "json" if name.endswith(".json") else "yaml")
    path.write_text(text)
    os.chmod(path, 0o644)
    return path


def spec_dir(host: SimulatedHost, where: str = "etc/cdi") -> Path:
    """A spec directory of the simulated node (/etc/cdi, /var/run/cdi), as the node has it."""
    return host.path(where)
