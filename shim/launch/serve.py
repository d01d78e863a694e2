"""How a launch serves its image's files: the choice, and the facts it is made over.

Modes (README, "Serving an image: unpack, kept, mount"):
- unpack: a node-local copy of the squashfs, unpacked once (shim/launch/unpack.py), reused at
  directory speed by every later launch of the same partition (keyed by its sha256);
- kept: the user's squashfuse mount of the image kept on the node across launches by a native
  holder (csrc/kepthold.c; README "Kept mounts"), each launch joining it with binds of its own;
- mount: a squashfuse mount per launch (shim's way before the node-local cache);
- dir: a directory image, served as it is.

The rules (decide_serve, pure over ServeFacts):
- FUSE unusable: unpack, whatever was asked (nothing else can open the image).
- auto: unpack when the estimated copy (4 x the squashfs's bytes + 4 KiB per inode) fits under the
  cap and under half the free space of the local directory, or when it is unpacked already; else kept.
- A copy is never placed on a network file system (NFS, Lustre, GPFS, BeeGFS, CIFS/SMB, Ceph,
  9p, AFS, GlusterFS, FUSE but fuseblk): the user's cache there gives way to /tmp/shim-UID; with
  no local directory at all (or one that is not private: someone else's /tmp/shim-UID) the image
  is mounted, with the reason.
Non-goal: unpacking, locking, clean-up (unpack.py), mounting (the C core).
"""

from __future__ import annotations

import os
import stat
from typing import NamedTuple

from shim.errors import UsageError
from shim.image.squashfs import SUPERBLOCK_SIZE, parse_superblock
from shim.site.serve_config import MODES, parse_cap

UNPACK, KEPT, MOUNT, DIR = "unpack", "kept", "mount", "dir"
SERVE_VARIABLE = "SHIMRUN_SERVE"
INODE_BYTES = 4096          # an unpacked inode's cost beyond its data: one block
EXPANSION = 4               # compressed -> unpacked, a generous ratio (zstd/xz on binaries ~ 2.5-3.5)
NETWORK_FS = frozenset(("nfs", "nfs4", "lustre", "gpfs", "beegfs", "cifs", "smb3", "smbfs", "ceph", "9p", "afs",
                        "glusterfs", "ncpfs", "panfs", "pvfs2", "orangefs", "wekafs", "ocfs2", "gfs2"))


class Target(NamedTuple):
    """The local directory unpacked roots go to, and what the node says of its file system."""
    path: str               # "" : none (problem says why)
    fs_type: str = ""
    free: int = 0           # bytes an unprivileged user may still write
    total: int = 0
    problem: str = ""


class ServeFacts(NamedTuple):
    image_kind: str         # "squashfs" or "dir"
    asked: str              # auto | unpack | kept | mount
    asked_by: str           # "--serve", "SHIMRUN_SERVE", "the site's [serve] mode", "the default"
    bytes_used: int         # of the squashfs (its superblock)
    inodes: int
    fuse_problem: str | None
    target: Target
    cap: int                # bytes all unpacked roots may take together
    unpacked: bool          # this partition is unpacked in target already


class ServeDecision(NamedTuple):
    mode: str               # unpack | kept | mount | dir
    reason: str
    where: str = ""         # unpack: the directory of unpacked roots; else the image
    stage: str = ""         # staging (shim/launch/staging.py): where the image is copied and why, "" none

    def line(self) -> str:
        return (f"served: {self.mode} ({self.reason})" + (f": {self.where}" if self.where else "")
                + (f"; {self.stage}" if self.stage else ""))

    def as_dict(self) -> dict[str, str]:
        return {"mode": self.mode, "reason": self.reason, "where": self.where, "stage": self.stage}


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


def unpack_estimate(bytes_used: int, inodes: int) -> int:
    return EXPANSION * bytes_used + INODE_BYTES * inodes


def decide_serve(f: ServeFacts) -> ServeDecision:
    """The mode, and why (see the module's docstring)."""
    if f.image_kind == "dir":
        return ServeDecision(DIR, "a directory image is used as it is")
    t = f.target
    if f.fuse_problem is not None:
        return ServeDecision(UNPACK, f"FUSE is unusable: {f.fuse_problem}", t.path)
    if f.asked == MOUNT:
        return ServeDecision(MOUNT, f"asked by {f.asked_by}")
    if f.asked == KEPT:
        return ServeDecision(KEPT, f"asked by {f.asked_by}")
    if not t.path:
        return ServeDecision(MOUNT, f"no local directory to unpack into: {t.problem}")
    if f.asked == UNPACK:
        return ServeDecision(UNPACK, f"asked by {f.asked_by}", t.path)
    if f.unpacked:
        return ServeDecision(UNPACK, "unpacked here already", t.path)
    need = unpack_estimate(f.bytes_used, f.inodes)
    if need > f.cap:
        return ServeDecision(KEPT, f"its copy (~{mib(need)}) is larger than the cap ({mib(f.cap)})")
    if need > t.free // 2:
        return ServeDecision(KEPT, f"its copy (~{mib(need)}) is more than half the free space of {t.path} "
                             f"({mib(t.free)} free)")
    return ServeDecision(UNPACK, f"its copy (~{mib(need)}) fits under the cap ({mib(f.cap)}) and half the free "
                         f"space ({mib(t.free)} free)", t.path)


# ---- the facts -------------------------------------------------------------------------------

def asked_mode(option: str | None, environ: dict[str, str] | os._Environ[str], site_mode: str) -> tuple[str, str]:
    """(mode, who asked): --serve, else SHIMRUN_SERVE, else the site's, else auto."""
    for value, by in ((option, "--serve"), (environ.get(SERVE_VARIABLE), SERVE_VARIABLE)):
        if value:
            if value not in MODES:
                raise UsageError(f"{by} {value}: not one of {', '.join(MODES)}", f"e.g. {by}=unpack" if by ==
                                 SERVE_VARIABLE else "e.g. --serve unpack")
            return value, by
    return site_mode, ("the site's [serve] mode" if site_mode != "auto" else "the default")


def squashfs_size(fd: int, offset: int, limit: int) -> tuple[int, int]:
    """(bytes used, inode count) from the superblock, read from the opened image's descriptor."""
    sb = parse_superblock(os.pread(fd, SUPERBLOCK_SIZE, offset), offset, limit)
    return sb.bytes_used, sb.inode_count


def is_network_fs(fs_type: str) -> bool:
    return fs_type in NETWORK_FS or fs_type.split(".")[0] in NETWORK_FS or (
        fs_type.startswith("fuse") and fs_type != "fuseblk")


def fs_type_of(st_dev: int, mountinfo: str) -> str:
    """The type of the file system of device `st_dev` (an fstat of an opened file: no path looked
    up again), by mountinfo's MAJOR:MINOR field; "" when no line has it."""
    wanted = f"{os.major(st_dev)}:{os.minor(st_dev)}"
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if sep and len(fields) > 2 and fields[2] == wanted and right:
            return right.split()[0]
    return ""


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (\\040 for a space)."""
    return field.encode().decode("unicode_escape") if "\\" in field else field


def fs_type_at(path: str, mountinfo: str) -> str:
    """The type of the file system `path` (absolute, symlinks resolved) lies on, by the mount
    point that is its longest prefix in /proc/self/mountinfo's text (the last such one mounted)."""
    best, kind = -1, ""
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right:
            continue
        point = _unescape(fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:
            best, kind = len(point), right.split()[0]
    return kind


def _existing(path: str) -> str:
    """`path`, or the nearest directory above it that exists, with symlinks resolved."""
    while not os.path.exists(path) and path not in ("/", ""):
        path = os.path.dirname(path)
    return os.path.realpath(path or "/")


def private_dir(path: str) -> str:
    """Make `path` a directory of this user's, mode 0700 ("" when it is one), or say why it is
    not to be used: made by someone else (a squatter in /tmp), a symlink, open to others. Nothing
    is made in it before this says so."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        return f"cannot create {path}: {e.strerror}"
    try:
        st = os.lstat(path)
    except OSError as e:
        return f"cannot stat {path}: {e.strerror}"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link (not made by shim): refused"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory: refused"
    if st.st_uid != os.geteuid():
        return f"{path} belongs to uid {st.st_uid}, not to you: refused (remove it, or set [serve] local_dir)"
    if stat.S_IMODE(st.st_mode) != 0o700:
        return f"{path} has mode {stat.S_IMODE(st.st_mode):04o}, not 0700: refused (chmod 0700 it)"
    return ""


def _target_at(parent_problem: str, path: str, mountinfo: str) -> Target:
    """`path` (made private) as the target, or why not."""
    if parent_problem:
        return Target("", problem=parent_problem)
    fs_type = fs_type_at(_existing(path), mountinfo)
    if is_network_fs(fs_type):
        return Target("", fs_type, problem=f"{path} is on a network file system ({fs_type})")
    problem = private_dir(path)
    if problem:
        return Target("", fs_type, problem=problem)
    try:
        vfs = os.statvfs(path)
    except OSError as e:
        return Target("", fs_type, problem=f"cannot statvfs {path}: {e.strerror}")
    return Target(path, fs_type, vfs.f_bavail * vfs.f_frsize, vfs.f_blocks * vfs.f_frsize)


def _private_target(parent: str, name: str, mountinfo: str) -> Target:
    """PARENT/NAME/rootfs, PARENT/NAME made private (0700, this user's) unless PARENT is on a
    network file system."""
    kind = fs_type_at(_existing(parent), mountinfo)
    base = os.path.join(parent, name)
    problem = f"{parent} is on a network file system ({kind})" if is_network_fs(kind) else private_dir(base)
    return _target_at(problem, os.path.join(base, "rootfs"), mountinfo)


def local_target(local_dir: str, cache: str | None, cache_problem: str, mountinfo: str) -> Target:
    """Where unpacked roots go (see the module's docstring): in the site's local_dir, a private
    shim-UID/rootfs; else the user's cache's rootfs; either on a network file system (or the cache
    not private): /tmp/shim-UID/rootfs; no private cache at all: none. Each private directory is
    checked before anything is made in it."""
    uid = os.geteuid()
    if local_dir:
        first = _private_target(local_dir, f"shim-{uid}", mountinfo)
    elif cache is None:  # not a place to fall back from: someone squats it (shim/cachefiles.py)
        return Target("", problem=f"no private cache ({cache_problem})")
    else:
        first = _target_at("", os.path.join(cache, "rootfs"), mountinfo)
    if first.path:
        return first
    second = _private_target("/tmp", f"shim-{uid}", mountinfo)
    if second.path or second.problem == first.problem:
        return second
    return Target("", problem=f"{first.problem}; {second.problem}")


def read_mountinfo() -> str:
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def cap_bytes(cap_text: str, target: Target) -> int:
    cap = parse_cap(cap_text)
    return cap.bytes(target.total) if cap is not None else 0
