"""Staging: the image's squashfs copied once from the shared file system to node-local storage.

At scale every node's squashfuse reading a SIF on Lustre/GPFS in small random reads for the whole
run makes 10,000 readers of one file, and an unpack reads it twice (its sha256, then unsquashfs's
random reads). Staged, a node reads the partition once, in order, in large reads, hashing it on
the way (the sha256 that names the node-local copy and the unpacked root, so nothing reads it
again to name it); the unpack, or every rank's and step's mount, then reads the local copy.

Layout (STAGED = the serving directory's sibling `staged`, private like it):
  STAGED/DIGEST.sqfs          the squashfs partition (offset 0), published whole by one rename
  STAGED/DIGEST.seal          the copy's identity when it was published (dev, inode, size, mtime,
                              ctime): a copy changed in place since is not that file any more
  STAGED/DIGEST.lock          flock(2)ed LOCK_SH by the executor while an app mounts the copy
                              (the record's ROOT_LOCK), its mtime the copy's "last used"
  STAGED/IDENT.lock           one copy when many ranks ask at once (IDENT: the image file's identity)
  STAGED/IDENT.partial.PID    a copy in progress (or killed: removed by the next copy)
The copy is made from the opened image (the descriptor the site's policy judged); a copy made
when the digest was known already (its root removed since) must hash to it, else the image was
rewritten in place and the launch stops. An unpack's staged copy is removed once it is unpacked;
a mount's stays, and the least recently used ones not in use go to keep the copies under the cap.

Trust: STAGED is used only if it is a private directory of this user's (0700, not a symlink: the
rule of the unpacked roots beside it), so nobody else can put a file, a link or a lock there. A
copy is reused only if, opened without following a symlink, it is a plain file of this user's
with one link and the partition's size, and either its identity is still the one sealed when it
was published or (no seal, or another identity: a chmod, a copy from before seals) its bytes,
read from that descriptor, still hash to its name. Anything else (a bit flipped, the file
rewritten, its times put back after that, truncated, grown, a symlink) is said in one notice and
the image is copied again. Not a defence against the user themselves, who can rewrite the seal as
well as the copy (README, "Serving an image").

When: `[serve] stage` / SHIMRUN_STAGE: "auto" (the default: when the image lies on a network file
system), "always", "never"."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import stat
import time
from collections.abc import Mapping
from typing import NamedTuple

from shim.cachefiles import notice, read_trusted, write_atomic
from shim.errors import ExitCode, ShimError, UsageError
from shim.image.open import ImageRef
from shim.launch.serve import private_dir
from shim.launch.unpack import known_digest, open_lock, remember_digest

STAGE_MODES = ("auto", "always", "never")
STAGE_VARIABLE = "SHIMRUN_STAGE"
CHUNK = 8 << 20          # large reads in order: what a parallel file system serves best
SUFFIX = ".sqfs"
SEAL = ".seal"


class Staged(NamedTuple):
    path: str            # the node-local copy of the squashfs partition (the squashfs at offset 0)
    digest: str          # its sha256
    seconds: float       # how long this launch spent copying (0: the copy was there)
    lock: str            # STAGED/DIGEST.lock (the record's ROOT_LOCK when the copy is mounted)

    def source(self, image: ImageRef) -> ImageRef:
        """The copy as an image to unpack: a bare squashfs in a private directory."""
        return ImageRef(self.path, "squashfs", 0, image.size, image.arch)


def stage_mode(environ: Mapping[str, str], site_value: str) -> tuple[str, str]:
    """(mode, who asked): SHIMRUN_STAGE, else the site's `[serve] stage`; one clear line for
    anything else."""
    given = environ.get(STAGE_VARIABLE, "").strip()
    if not given:
        return site_value, ("the site's [serve] stage" if site_value != "auto" else "the default")
    if given not in STAGE_MODES:
        raise UsageError(f"{STAGE_VARIABLE}={given!r} is not one of {', '.join(STAGE_MODES)}",
                         f"e.g. {STAGE_VARIABLE}=always, or unset it")
    return given, STAGE_VARIABLE


def staging_reason(mode: str, by: str, image_fs: str, image_on_network: bool) -> str:
    """Why this launch stages its image ("" : it does not)."""
    if mode == "always":
        return f"asked by {by}"
    if mode == "auto" and image_on_network:
        return f"the image is on a network file system ({image_fs})"
    return ""


def staged_dir(serving_dir: str) -> tuple[str, str]:
    """(STAGED, why it is not to be used: "" when it may): beside the serving directory, made a
    private directory of this user's (0700) or refused, as the roots' own directory is."""
    path = os.path.join(os.path.dirname(serving_dir), "staged")
    return path, private_dir(path)


def _ident(image: ImageRef) -> str:
    assert image.opened is not None
    st = image.opened.st  # ranks of one job name the same file: one lock per file identity
    return hashlib.sha256(f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:"
                          f"{image.offset}:{image.size}".encode()).hexdigest()[:32]


def _copy_hashing(image: ImageRef, dest: str) -> str:
    """The partition's bytes from the opened image into `dest` (new, 0600), in order; their sha256."""
    assert image.opened is not None
    src = image.opened.fd
    with contextlib.suppress(OSError):  # a hint only: not every file system takes read-ahead advice
        os.posix_fadvise(src, image.offset, image.size, os.POSIX_FADV_SEQUENTIAL)
    h = hashlib.sha256()
    out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        at, end = image.offset, image.offset + image.size
        while at < end:
            chunk = os.pread(src, min(CHUNK, end - at), at)
            if not chunk:
                raise ShimError(ExitCode.IMAGE, f"{image.path} ended {end - at} bytes early while it was being "
                                "staged (truncated or rewritten since it was opened)",
                                "run again once the image is complete")
            h.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(out, view):]
            at += len(chunk)
    finally:
        os.close(out)
    return h.hexdigest()


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _seal(path: str) -> None:
    """Remember the published copy's identity (taken from the file now named `path`)."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            write_atomic(path.removesuffix(SUFFIX) + SEAL, json.dumps(_identity(os.fstat(fd))).encode())
        finally:
            os.close(fd)


def _hash_fd(fd: int, size: int) -> str:
    h, at = hashlib.sha256(), 0
    while at < size:
        chunk = os.pread(fd, min(CHUNK, size - at), at)
        if not chunk:
            break
        h.update(chunk)
        at += len(chunk)
    return h.hexdigest()


def _unusable(path: str, digest: str, size: int) -> str | None:
    """Why the copy at `path` must not be served ("" : it may; None: there is none), looked at
    through one descriptor opened without following a symlink (see the module's docstring)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        return "is a symbolic link" if e.errno == errno.ELOOP else f"cannot be opened ({e.strerror})"
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1 or st.st_mode & 0o022:
            return "is not a private plain file of yours with one link"
        if st.st_size != size:
            return f"holds {st.st_size} bytes, not the image's {size}"
        raw = read_trusted(path.removesuffix(SUFFIX) + SEAL)
        with contextlib.suppress(ValueError):
            if raw is not None and json.loads(raw) == _identity(st):
                return ""
        if _hash_fd(fd, size) != digest:
            return "is not the bytes that were staged (changed in place)"
        _seal(path)  # the same bytes (a chmod, or a copy from before seals): sealed as it is now
        return ""
    finally:
        os.close(fd)


def _remove_partials(directory: str, ident: str) -> None:
    """Partials of this file's copy (a killed copy's): the caller holds IDENT.lock LOCK_EX."""
    for name in os.listdir(directory):
        if name.startswith(f"{ident}.partial."):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))


def _found(directory: str, digest: str, seconds: float) -> Staged:
    """The copy named by `digest`, its lock file made (the executor takes it; it does not create it)."""
    lock = os.path.join(directory, digest + ".lock")
    os.close(os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
    return Staged(os.path.join(directory, digest + SUFFIX), digest, seconds, lock)


def staged_copy(image: ImageRef, directory: str, cap: int = 0) -> Staged:
    """The node-local copy of `image`'s squashfs in `directory` (STAGED), copied the first time;
    one copy however many launches ask at once. `cap` > 0: copies not in use are removed, least
    recently used first, to keep them all under it."""
    ident = _ident(image)
    lock = open_lock(os.path.join(directory, f"{ident}.lock"), fcntl.LOCK_EX)
    assert lock is not None
    try:
        known = known_digest(image)
        if known is not None:
            there = os.path.join(directory, known + SUFFIX)
            why = _unusable(there, known, image.size)
            if why == "":
                return _found(directory, known, 0.0)
            if why is not None:
                notice(f"the staged copy {there} {why}: copying the image again")
        _remove_partials(directory, ident)
        if cap:
            clean_staged(directory, cap, reserve=image.size)
        partial = os.path.join(directory, f"{ident}.partial.{os.getpid()}")
        start = time.monotonic()
        try:
            digest = _copy_hashing(image, partial)
            if known is not None and digest != known:
                raise ShimError(ExitCode.IMAGE, f"{image.path} was rewritten in place since it was first opened "
                                f"on this node (its squashfs hashes to {digest[:12]}…, not {known[:12]}…)",
                                "run again: the next launch plans for the image as it is now")
            final = os.path.join(directory, digest + SUFFIX)
            if os.path.isdir(final) and not os.path.islink(final):
                raise ShimError(ExitCode.HOST, f"{final} is a directory: the staged copy cannot be put there",
                                f"remove it (rm -r {final}), or run with {STAGE_VARIABLE}=never")
            os.rename(partial, final)
            _seal(final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        remember_digest(image, digest)
        return _found(directory, digest, time.monotonic() - start)
    finally:
        os.close(lock)


def drop_staged(staged: Staged) -> None:
    """An unpack's copy, once unpacked (the unpacked root is what later launches use)."""
    for path in (staged.path, staged.path.removesuffix(SUFFIX) + SEAL):
        with contextlib.suppress(OSError):
            os.unlink(path)


def staged_copies(directory: str) -> list[tuple[str, int, float, bool]]:
    """(digest, bytes, last used, in use) of each copy in STAGED, least recently used first."""
    out = []
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            digest = name.removesuffix(SUFFIX)
            if not name.endswith(SUFFIX) or len(digest) != 64:
                continue
            lock = os.path.join(directory, digest + ".lock")
            try:
                size = os.lstat(os.path.join(directory, name)).st_size
                used = os.stat(lock).st_mtime if os.path.exists(lock) else 0.0
            except OSError:
                continue
            fd = open_lock(lock, fcntl.LOCK_EX, wait=False) if os.path.exists(lock) else None
            in_use = os.path.exists(lock) and fd is None
            if fd is not None:
                os.close(fd)
            out.append((digest, size, used, in_use))
    return sorted(out, key=lambda c: c[2])


def remove_staged(directory: str, digest: str) -> bool:
    """Remove one copy unless an app mounts it (its lock is held); True when it is gone."""
    lock = os.path.join(directory, digest + ".lock")
    fd = open_lock(lock, fcntl.LOCK_EX, wait=False)
    if fd is None:
        return False
    try:
        for path in (os.path.join(directory, digest + SUFFIX), os.path.join(directory, digest + SEAL), lock):
            with contextlib.suppress(OSError):
                os.unlink(path)
        return True
    finally:
        os.close(fd)


def clean_staged(directory: str, cap: int, reserve: int = 0) -> int:
    """Remove the least recently used copies not in use until they take at most cap - reserve
    bytes; how many were removed."""
    found = staged_copies(directory)
    total, removed = sum(c[1] for c in found), 0
    for digest, size, _used, in_use in found:
        if total + reserve <= cap:
            break
        if not in_use and remove_staged(directory, digest):
            total -= size
            removed += 1
    return removed
