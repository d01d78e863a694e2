"""Where a node's facts live, relative to its host root: one definition for the gatherers that
read them and for the launch record's inputs that watch them (shim/host/fingerprint.py), which
must not pay for importing the gatherers."""

import os

BINFMT_DIR = "proc/sys/fs/binfmt_misc"
PROC_VERSION = "proc/driver/nvidia/version"
GPU_INFO = "proc/driver/nvidia/gpus"
GPU_INFO_FILES = f"/{GPU_INFO}/*/information"   # one per GPU the kernel module lists
SYSFS_CLASS = "sys/class/infiniband"
DEV_DIR = "dev/infiniband"


def on_host(host_root: str, path: str) -> str:
    """This machine's path of the node's `path`: under the host root of a simulated node."""
    return path if host_root in ("", "/") else os.path.join(host_root, path.lstrip("/"))
