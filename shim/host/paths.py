"""Where a node's facts live, relative to its host root: one definition for the gatherers that
read them and for the launch record's inputs that watch them (shim/host/fingerprint.py), which
must not pay for importing the gatherers."""

BINFMT_DIR = "proc/sys/fs/binfmt_misc"
PROC_VERSION = "proc/driver/nvidia/version"
GPU_INFO = "proc/driver/nvidia/gpus"
SYSFS_CLASS = "sys/class/infiniband"
DEV_DIR = "dev/infiniband"
