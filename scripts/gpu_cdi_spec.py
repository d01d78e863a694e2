"""A CDI spec for THIS node, shaped as `nvidia-ctk cdi generate` writes one (kind nvidia.com/gpu):
run by scripts/gpu_launch_check.sh's node phase with the node's bare python3.12 and the carried
shim on sys.path (it reads the node's ld.so.cache with shim.elf.ldcache, the way ld.so would).

- one device per /dev/nvidiaN, named by its index and (when NVML answers) by its UUID, and `all`;
- common edits: /dev/nvidiactl, nvidia-uvm, nvidia-uvm-tools, nvidia-modeset when present; the
  driver's compute and utility libraries found through /etc/ld.so.cache by SONAME, each mounted
  read-only at its real path (libcuda.so.DRIVER, ...); nvidia-smi; the toolkit's hooks
  (create-symlinks libcuda.so.1::DIR/libcuda.so, enable-cuda-compat, update-ldcache --folder DIR,
  disable-device-node-modification), which shim interprets and never runs.

Usage: gpu_cdi_spec.py OUT_FILE. Exit 0: written; 3: the node has no NVIDIA GPU or driver
(nothing written, one line says what is missing)."""

from __future__ import annotations

import json
import os
import re
import sys

from shim.elf.ldcache import read_ld_cache

KIND = "nvidia.com/gpu"
HOOK = "/usr/bin/nvidia-cdi-hook"
# The driver's libraries for the compute and utility capabilities (what `nvidia-ctk cdi generate`
# mounts for them), by SONAME; libcuda.so.1 is the one a CUDA app cannot do without.
SONAMES = ("libcuda.so.1", "libcudadebugger.so.1", "libnvidia-nvvm.so.4", "libnvidia-ptxjitcompiler.so.1",
           "libnvidia-gpucomp.so", "libnvidia-ml.so.1", "libnvidia-cfg.so.1")
CONTROL = ("nvidia-modeset", "nvidia-uvm", "nvidia-uvm-tools", "nvidiactl")
BINARIES = ("/usr/bin/nvidia-smi", "/usr/bin/nvidia-debugdump", "/usr/bin/nvidia-persistenced")
MOUNT_OPTIONS = ["ro", "nosuid", "nodev", "bind"]


def _gpu_indices() -> list[int]:
    found = (re.fullmatch(r"nvidia(\d+)", n) for n in os.listdir("/dev"))
    return sorted(int(m.group(1)) for m in found if m)


def _uuids(count: int) -> dict[int, str]:
    """GPU index -> UUID through NVML ({} when it does not answer: devices named by index only)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            out = {}
            for i in range(min(count, pynvml.nvmlDeviceGetCount())):
                uuid = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
                out[i] = uuid.decode() if isinstance(uuid, bytes) else uuid
            return out
        finally:
            pynvml.nvmlShutdown()
    except Exception as e:  # noqa: BLE001 (any NVML failure: the spec just lacks UUID names)
        print(f"gpu_cdi_spec: NVML gave no UUIDs ({type(e).__name__}: {e}); devices named by index", file=sys.stderr)
        return {}


def _hook(*args: str) -> dict:
    return {"hookName": "createContainer", "path": HOOK, "args": ["nvidia-cdi-hook", *args]}


def _libraries() -> dict[str, str]:
    """SONAME -> the real file ld.so.cache leads to, for the driver libraries this node has."""
    cache = read_ld_cache("/etc/ld.so.cache")
    found = {}
    for soname in SONAMES:
        path = cache.lookup(soname, 0x0303)   # the x86-64 entries
        if path and os.path.exists(path):
            found[soname] = os.path.realpath(path)
    return found


def _driver_version(libs: dict[str, str]) -> str:
    try:
        with open("/proc/driver/nvidia/version") as f:
            m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9.]+)", f.read())
        if m:
            return m.group(1)
    except OSError:
        pass
    m = re.search(r"\.so\.([0-9.]+)$", libs.get("libcuda.so.1", ""))
    return m.group(1) if m else ""


def node_spec() -> dict:
    indices = _gpu_indices()
    libs = _libraries()
    missing = [w for w, bad in (("no /dev/nvidiaN", not indices),
                                ("no /dev/nvidiactl", not os.path.exists("/dev/nvidiactl")),
                                ("no libcuda.so.1 in /etc/ld.so.cache", "libcuda.so.1" not in libs)) if bad]
    if missing:
        print(f"gpu_cdi_spec: this node has no usable NVIDIA GPU ({', '.join(missing)}): no spec written")
        raise SystemExit(3)
    uuids = _uuids(len(indices))
    devices = []
    for i in indices:
        edits = {"deviceNodes": [{"path": f"/dev/nvidia{i}"}]}
        devices.append({"name": str(i), "containerEdits": edits})
        if i in uuids:
            devices.append({"name": uuids[i], "containerEdits": edits})
    devices.append({"name": "all", "containerEdits": {"deviceNodes": [{"path": f"/dev/nvidia{i}"} for i in indices]}})
    driver = _driver_version(libs)
    folders = list(dict.fromkeys(os.path.dirname(p) for p in libs.values()))
    cuda_dir = os.path.dirname(libs["libcuda.so.1"])
    hooks = [_hook("create-symlinks", "--link", f"libcuda.so.1::{cuda_dir}/libcuda.so")]
    if driver:
        hooks.append(_hook("enable-cuda-compat", f"--host-driver-version={driver}"))
    hooks.append(_hook("update-ldcache", *(a for d in folders for a in ("--folder", d))))
    hooks.append(_hook("disable-device-node-modification"))
    files = [*libs.values(), *(b for b in BINARIES if os.path.isfile(b))]
    edits = {"env": ["NVIDIA_VISIBLE_DEVICES=void"],
             "deviceNodes": [{"path": f"/dev/{n}"} for n in CONTROL if os.path.exists(f"/dev/{n}")],
             "hooks": hooks,
             "mounts": [{"hostPath": f, "containerPath": f, "options": list(MOUNT_OPTIONS)} for f in files]}
    return {"cdiVersion": "0.5.0", "kind": KIND, "devices": devices, "containerEdits": edits}


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit("usage: gpu_cdi_spec.py OUT_FILE")
    spec = node_spec()
    out = sys.argv[1]
    with open(out + ".tmp", "w") as f:
        json.dump(spec, f, indent=2)
        f.write("\n")
    os.chmod(out + ".tmp", 0o644)
    os.replace(out + ".tmp", out)
    print(f"gpu_cdi_spec: wrote {out}: {len(spec['devices'])} devices, {len(spec['containerEdits']['mounts'])} mounts")


if __name__ == "__main__":
    main()
