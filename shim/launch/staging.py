"""Staging: the image's squashfs copied once from the shared file system to node-local storage.

At scale every node's squashfuse reading a SIF on Lustre/GPFS in small random reads for the whole
run makes 10,000 readers of one file, and an unpack reads it twice (its sha256, then unsquashfs's
random reads). Staged, a node reads the partition once, in order, in large reads, hashing it on
the way (the sha256 that names the node-local copy and the unpacked root, so nothing reads it
again to name it); the unpack, or every rank's and step's mount, then reads the local copy.

Layout (STAGED = the serving directory's sibling `staged`, private like it):
  STAGED/DIGEST.sqfs          the squashfs partition (offset 0), published whole by one rename
  STAGED/DIGEST.lock          flock(2)ed LOCK_SH by the executor while an app mounts the copy
                              (the record's ROOT_LOCK), its mtime the copy's "last used"
  STAGED/IDENT.lock           one copy when many ranks ask at once (IDENT: the image file's identity)
  STAGED/IDENT.partial.PID    a copy in progress (or killed: removed by the next copy)
The copy is made from the opened image (the descriptor the site's policy judged); a copy made
when the digest was known already (its root removed since) must hash to it, else the image was
rewritten in place and the launch stops. An unpack's staged copy is removed once it is unpacked;
a mount's stays, and the least recently used ones not in use go to keep the copies under the cap.

When: `[serve] stage` / SHIMRUN_STAGE: "auto" (the default: when the image lies on a network file
system), "always", "never"."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Mapping
from typing import NamedTuple

from shim.errors import ExitCode, ShimError, UsageError
from shim.image.open import ImageRef
from shim.launch.unpack import known_digest, open_lock, remember_digest

STAGE_MODES = ("auto", "always", "never")
STAGE_VARIABLE = "SHIMRUN_STAGE"
CHUNK = 8 << 20          # large reads in order: what a parallel file system serves best
SUFFIX = ".sqfs"


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


def staged_dir(serving_dir: str) -> str:
    """STAGED beside the serving directory (both in the same private parent), made 0700."""
    path = os.path.join(os.path.dirname(serving_dir), "staged")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


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


def _usable(path: str, size: int) -> bool:
    """A whole copy (published copies are: they are renamed into place when done), not a link."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return st.st_size == size and os.path.isfile(path) and not os.path.islink(path)


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
        if known is not None and _usable(os.path.join(directory, known + SUFFIX), image.size):
            return _found(directory, known, 0.0)
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
            os.rename(partial, os.path.join(directory, digest + SUFFIX))
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
    with contextlib.suppress(OSError):
        os.unlink(staged.path)


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
        for path in (os.path.join(directory, digest + SUFFIX), lock):
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
