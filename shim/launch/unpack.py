"""The node-local image cache: a squashfs partition unpacked once into a local directory (chosen by
shim/launch/serve.py), reused by every later launch of the same partition.

Layout of the directory (DIR/DIGEST, DIGEST the partition's sha256, computed from the opened
image: the file the policy judged):
  DIGEST/                 the root, published whole by one rename
  DIGEST.partial.PID      an unpack in progress (or killed: removed by the next one of DIGEST)
  DIGEST.lock             flock(2)ed: LOCK_EX while unpacking or removing, LOCK_SH while in use
                          (the C executor holds it for the app's lifetime: csrc/rootlock.c); its
                          mtime is the root's "last used"
  DIGEST.json             image path, sizes, unpack seconds (for `shimrun cache list`)
Rules: one unpack when many launches ask at once (LOCK_EX, then look again); least recently used
roots are removed to stay under the cap, never one in use (its lock cannot be taken LOCK_EX|LOCK_NB);
a lock file is checked to be the one still named DIGEST.lock after it is locked (a removal may
have unlinked it meanwhile).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

from shim.cachefiles import cache_path, read_trusted, untrusted, write_atomic
from shim.errors import ExitCode, ShimError
from shim.image.open import ImageRef
from shim.launch.mountpoints import mount_points

_DIGEST = re.compile(r"[0-9a-f]{64}")
_held: list[int] = []     # this process's LOCK_SH descriptors (close-on-exec: the executor takes its own)


class Root(NamedTuple):
    digest: str
    path: str
    image: str              # the image it was unpacked from (as named then)
    size: int               # bytes on disk
    last_used: float        # the lock file's mtime
    in_use: bool


class _Staged(NamedTuple):
    """A copy this launch staged before it knew whether it would unpack it."""
    digest: str
    source: ImageRef
    drop: Callable[[], None]

    def __call__(self) -> tuple[str, ImageRef, Callable[[], None]]:
        return self.digest, self.source, self.drop


class Unpacked(NamedTuple):
    path: str
    lock: str
    made: bool              # unpacked by this launch (False: reused)


def _memo(image: ImageRef) -> tuple[str, str | None]:
    st = image.opened.st if image.opened is not None else os.stat(image.path)
    ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{image.offset}:{image.size}"
    return ident, cache_path("digests", hashlib.sha256(ident.encode()).hexdigest()[:32])


def known_digest(image: ImageRef) -> str | None:
    """The partition's sha256 when it was computed before (for this very file), else None:
    reads nothing of the image."""
    _ident, memo = _memo(image)
    try:
        raw = read_trusted(memo)
        return json.loads(raw)["sha256"] if raw is not None else None
    except (ValueError, KeyError, TypeError):
        return None


def remember_digest(image: ImageRef, digest: str) -> None:
    """Memoise the partition's sha256 for this very file (its identity, change time included)."""
    ident, memo = _memo(image)
    write_atomic(memo, json.dumps({"sha256": digest, "identity": ident}).encode())


def partition_digest(image: ImageRef) -> str:
    """sha256 of the squashfs bytes, memoised per file identity (of the opened image: the file
    the policy judged) so a reuse reads nothing."""
    known = known_digest(image)
    if known is not None:
        return known
    ident, memo = _memo(image)
    h = hashlib.sha256()
    with open(image.via, "rb") as f:
        f.seek(image.offset)
        left = image.size
        while left > 0:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk)
    digest = h.hexdigest()
    write_atomic(memo, json.dumps({"sha256": digest, "identity": ident}).encode())
    return digest


def remove_tree(path: str) -> None:
    """rmtree that also empties the image's read-only directories (0555 in the image: the owner
    must add write permission to remove their entries)."""
    def retry(func: Callable[[str], object], failed: str, _exc: object) -> None:
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(failed), 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
            func(failed)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o700)
    shutil.rmtree(path, onerror=retry)
    shutil.rmtree(path, ignore_errors=True)


def open_lock(path: str, mode: int, wait: bool = True) -> int | None:
    """The lock file `path`, flock(mode)ed, and still the file of that name (retried once it was
    replaced); None when `wait` is False and someone holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, mode if wait else mode | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


def _unsquashfs(image: ImageRef, dest: str) -> None:
    from shim import native

    exe = shutil.which("unsquashfs")
    if exe is None:
        raise ShimError(ExitCode.HOST, "unsquashfs is not installed, so the image cannot be unpacked",
                        "install squashfs-tools (apt-get install squashfs-tools), or squashfuse and --serve mount")
    # -no-xattrs: an unprivileged user cannot write security.* xattrs (unsquashfs would fail);
    # the regex (matched against top-level names) skips dev: device nodes cannot be made, and
    # the host's /dev is bound there. -p: every CPU this process may use (the decompression is
    # what takes the time).
    # The image through its opened descriptor (inherited): the file the policy judged.
    keep = (image.opened.fd,) if image.opened is not None else ()
    import subprocess  # only for an unpack (~3 ms of every planned launch's start-up otherwise)

    cpus = len(os.sched_getaffinity(0))
    cmd = [exe, "-n", "-p", str(cpus), "-no-xattrs", "-o", str(image.offset), "-d", dest, "-r", image.via,
           r"^([^d].*|d[^e].*|de[^v].*|dev.+|de|d)$"]
    proc = subprocess.run(cmd, check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          preexec_fn=native.die_with_parent, pass_fds=keep)
    if proc.returncode != 0:
        last = (proc.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise ShimError(ExitCode.IMAGE, f"unpacking {image.path} with unsquashfs failed: {last}",
                        f"check the free space in {os.path.dirname(dest)}, or --serve mount")


def disk_usage(path: str) -> int:
    """Bytes the tree takes on disk (st_blocks), hard links counted once."""
    seen: set[tuple[int, int]] = set()
    total, todo = 0, [path]
    while todo:
        with contextlib.suppress(OSError), os.scandir(todo.pop()) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_blocks * 512
                    if stat.S_ISDIR(st.st_mode):
                        todo.append(entry.path)
    return total


def _meta(where: str, digest: str) -> dict:
    try:
        with open(os.path.join(where, f"{digest}.json"), "rb") as f:
            data = json.loads(f.read(1 << 16))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def roots(where: str) -> list[Root]:
    """The unpacked roots in `where`, least recently used first."""
    try:
        names = os.listdir(where)
    except OSError:
        return []
    out = []
    for name in names:
        path = os.path.join(where, name)
        if not _DIGEST.fullmatch(name) or not os.path.isdir(path) or os.path.islink(path):
            continue
        meta = _meta(where, name)
        lock = f"{path}.lock"
        try:
            used = os.stat(lock).st_mtime
        except OSError:
            used = 0.0
        fd = open_lock(lock, fcntl.LOCK_EX, wait=False) if os.path.exists(lock) else None
        in_use = os.path.exists(lock) and fd is None
        if fd is not None:
            os.close(fd)
        size = meta.get("size")
        out.append(Root(name, path, str(meta.get("image", "")), size if isinstance(size, int) else 0, used, in_use))
    return sorted(out, key=lambda r: r.last_used)


def remove_root(where: str, digest: str) -> bool:
    """Remove one root unless it is in use (someone holds its lock); True when it is gone."""
    path = os.path.join(where, digest)
    lock = f"{path}.lock"
    fd = open_lock(lock, fcntl.LOCK_EX, wait=False)
    if fd is None:
        return False
    try:
        if os.path.isdir(path):
            # out of the way first (readers of DIR/DIGEST see it whole or not at all); a kill
            # during the removal leaves a partial, which the next unpack of DIGEST removes
            doomed = f"{path}.partial.{os.getpid()}"
            os.rename(path, doomed)
            remove_tree(doomed)
        for leftover in (f"{path}.json", lock):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
        return True
    finally:
        os.close(fd)


def clean_to_cap(where: str, cap: int, reserve: int = 0, keep: int = 0) -> list[Root]:
    """Remove the least recently used roots not in use until they take at most cap - reserve
    bytes (and, keep > 0, at most `keep` are left); the removed ones."""
    found = roots(where)
    total = sum(r.size for r in found)
    left, removed = len(found), []
    for r in found:
        if total + reserve <= cap and (not keep or left <= keep):
            break
        if not r.in_use and remove_root(where, r.digest):
            total -= r.size
            left -= 1
            removed.append(r)
    return removed


def _remove_partials(where: str, digest: str) -> None:
    """Partials of DIGEST (a killed unpack's, or a killed removal's): the caller holds DIGEST's
    lock LOCK_EX, so no one is writing them."""
    for name in os.listdir(where):
        if name.startswith(f"{digest}.partial."):
            remove_tree(os.path.join(where, name))


def remove_orphans(where: str) -> None:
    """Partials of any image whose lock no one holds (a killed unpack or removal of another image):
    every planned launch that serves from `where` removes them, so a leftover never lingers (its
    records list `*.partial.*`: the leftover makes the next launch plan, which removes it)."""
    for name in os.listdir(where):
        digest, sep, _pid = name.partition(".partial.")
        if not sep or not _DIGEST.fullmatch(digest):
            continue
        fd = open_lock(os.path.join(where, f"{digest}.lock"), fcntl.LOCK_EX, wait=False)
        if fd is None:
            continue  # being unpacked or removed right now
        try:
            remove_tree(os.path.join(where, name))
        finally:
            os.close(fd)


class Stage(Protocol):
    """Staging (shim/launch/staging.py) as the unpack uses it: the partition copied to the node
    (or found there), as (its sha256, the copy to unpack from, how to drop the copy once unpacked)."""
    def __call__(self) -> tuple[str, ImageRef, Callable[[], None]]: ...


def _publish(image: ImageRef, where: str, digest: str, cap: int, stage: Stage | None) -> float:
    """Unpack into DIGEST.partial.PID and rename it into place (the caller holds the lock
    LOCK_EX); the seconds it took. With `stage`, from the node-local copy of the image."""
    final = os.path.join(where, digest)
    _remove_partials(where, digest)
    from shim.image.squashfs import SUPERBLOCK_SIZE, parse_superblock
    from shim.launch.serve import unpack_estimate  # serve imports nothing of this module

    try:
        raw = os.pread(image.opened.fd, SUPERBLOCK_SIZE, image.offset) if image.opened is not None else b""
        sb = parse_superblock(raw, image.offset, image.size) if raw else None
        reserve = unpack_estimate(sb.bytes_used, sb.inode_count) if sb else 0
    except (OSError, ShimError):
        reserve = 0
    clean_to_cap(where, cap, reserve)
    partial = f"{final}.partial.{os.getpid()}"
    start = time.monotonic()
    drop: Callable[[], None] = _nothing
    try:
        source = image
        if stage is not None:
            _digest, source, drop = stage()  # a copy made now hashes to `digest`, or stage() stops the launch
        _unsquashfs(source, partial)
        mount_points(partial)
        os.rename(partial, final)
    except BaseException:
        remove_tree(partial)
        raise
    finally:
        drop()
    took = time.monotonic() - start
    meta = {"image": image.path, "squashfs_bytes": image.size, "size": disk_usage(final), "seconds": round(took, 3),
            "unpacked": int(time.time())}
    write_atomic(os.path.join(where, f"{digest}.json"), json.dumps(meta).encode())
    return took


def _nothing() -> None:
    return None


def unpacked_root(image: ImageRef, where: str, cap: int, say: tuple[bool, str] = (False, ""),
                  stage: Stage | None = None) -> Unpacked:
    """The image's partition unpacked in `where` (made now if need be, one unpack however many
    launches ask at once), held LOCK_SH by this process until it execs. Prints one line when it
    unpacks (unless say[0], quiet; say[1] begins it when there was no other way); a reuse is
    silent. `stage`: unpack from a node-local copy, made (and hashed) in one read of the image."""
    quiet, why = say
    digest = known_digest(image)
    staged_now: _Staged | None = None
    if digest is None and stage is not None:
        digest, source, drop = stage()  # the copy's hash names the root: the image is read once
        staged_now = _Staged(digest, source, drop)
    elif digest is None:
        digest = partition_digest(image)
    final = os.path.join(where, digest)
    lock = f"{final}.lock"
    problem = untrusted(final, leaf_is_file=False) or untrusted(where, leaf_is_file=False)
    if problem:  # cannot happen in a private directory; if it does, it is not ours to run
        raise ShimError(ExitCode.HOST, f"the unpacked copy of this image is not to be trusted: {problem}",
                        f"remove {final}, and keep {where} private (mode 0700)")
    took = None
    try:
        while True:
            fd = open_lock(lock, fcntl.LOCK_SH)
            if os.path.isdir(final):
                break
            os.close(fd)
            fd = open_lock(lock, fcntl.LOCK_EX)  # one unpack: whoever gets it first; the others look again
            if not os.path.isdir(final):
                took = _publish(image, where, digest, cap, staged_now or stage)
                staged_now = None  # unpacked, and dropped by _publish
            # not atomic (flock(2)): a removal may come in between, so look again
            fcntl.flock(fd, fcntl.LOCK_SH)
            if os.path.isdir(final) and os.path.exists(lock) and os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
            os.close(fd)
        os.utime(fd)  # last used
        if took is None:
            mount_points(final)  # a root unpacked by an earlier shim may lack the newer ones
        remove_orphans(where)
    except OSError as e:
        raise ShimError(ExitCode.HOST, f"cannot unpack {image.path} in {where}: {e.strerror}",
                        "check the free space and permissions there, or --serve mount") from None
    finally:
        if staged_now is not None and took is None:  # another launch unpacked it meanwhile
            staged_now.drop()
    _held.append(fd)
    if took is not None:
        clean_to_cap(where, cap)  # the actual size now known; this root is held, so it stays
        if not quiet:
            print(f"shimrun: {why}unpacked {image.path} ({image.size / 2**20:.0f} MiB) to {final} in {took:.1f} s; "
                  "later launches reuse it", file=sys.stderr)
    return Unpacked(final, lock, took is not None)
