"""The per-user blob cache, $SHIMRUN_CACHE/blobs/ALGORITHM/HEX, shared by every later pull.

Its file names come from digests checked against the OCI grammar (shim.oci.digest) and from
nothing else: `path` refuses any other string, so no descriptor can name a file outside it.

A blob is stored under its digest only after its whole content was checked against it, written
to a temporary name beside its final one and renamed into place, so a reader never sees a partial
blob. Pulls of the same image at once download each blob once: the first takes an flock on
.HEX.lock, the others wait on it and then find the blob. The cache obeys the trust rules of every
shim cache (shim/cachefiles.py): a blob that is not this user's alone is ignored, and without a
trustworthy cache root blobs go to a private temporary directory that the pull removes.

Its size is capped (SHIMRUN_CACHE_MAX, default 20G): after a pull, the least recently used blobs
go until the rest fit, never one the pull just used.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO

from shim.errors import UsageError
from shim.oci import digest as digests
from shim.oci.model import Descriptor
from shim.oci.verify import VerifyingReader

DEFAULT_CAP = "20G"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_CHUNK = 1 << 20

Fetch = Callable[[Descriptor], IO[bytes]]  # the raw (unverified) content of a blob


def parse_size(text: str, what: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", text.upper())
    if not m:
        raise UsageError(f"{what}={text!r} is not a size", "write bytes or a number with K, M, G or T (e.g. 20G)")
    return int(m.group(1)) * _UNITS[m.group(2)]


@dataclass(frozen=True)
class BlobInfo:
    digest: str
    size: int
    used: float  # last use (mtime)


class BlobCache:
    def __init__(self, root: str, persistent: bool) -> None:
        self.top = os.path.join(root, "blobs")
        self.dir = os.path.join(self.top, "sha256")   # where most blobs are (sha512 ones beside it)
        self.persistent = persistent  # False: a private temporary directory, removed by `close`
        self.used: set[str] = set()

    @classmethod
    @contextlib.contextmanager
    def open(cls, near: str) -> Iterator[BlobCache]:
        """The user's blob cache, or (caching off or untrusted) a temporary one in directory `near`."""
        from shim.cachefiles import cache_path, untrusted

        root = cache_path()
        if root is not None:
            dirs = [os.path.join(root, "blobs", alg) for alg in digests.ALGORITHMS]
            try:
                for d in dirs:
                    os.makedirs(d, mode=0o700, exist_ok=True)
            except OSError:
                root = None
            else:
                if any(untrusted(d, leaf_is_file=False) for d in dirs):
                    root = None
        if root is not None:
            cache = cls(root, persistent=True)
            cache.cleanup_partials()
            yield cache
            cache.enforce_cap()
            return
        try:
            tmp = tempfile.mkdtemp(prefix=".shim-blobs.", dir=near)
        except OSError as e:
            raise UsageError(f"cannot write in {near}: {e.strerror}", "pull into a directory of your own") from None
        try:
            for alg in digests.ALGORITHMS:
                os.makedirs(os.path.join(tmp, "blobs", alg))
            yield cls(tmp, persistent=False)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def path(self, digest: str) -> str:
        """ALGORITHM/HEX of a checked digest (ValueError for anything else: a bug, never a path)."""
        alg, encoded = digests.split(digest)
        return os.path.join(self.top, alg, encoded)

    def have(self, desc: Descriptor) -> str | None:
        """The stored blob's path, if it is there, trusted and of the right size."""
        from shim.cachefiles import notice, untrusted

        path = self.path(desc.digest)
        try:
            st = os.lstat(path)
        except OSError:
            return None
        problem = untrusted(path) if self.persistent else ""
        if problem or st.st_size != desc.size:
            notice(f"ignoring the cached blob {path}: {problem or 'wrong size'}")
            with contextlib.suppress(OSError):
                os.unlink(path)
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # last use, for the cap
        self.used.add(desc.digest)
        return path

    def get(self, desc: Descriptor, fetch: Fetch, progress: Callable[[int], None] | None = None) -> str:
        """The blob's path in the cache, downloading it (verified) if it is not there yet."""
        found = self.have(desc)
        if found:
            return found
        with self._lock(desc.digest):
            found = self.have(desc)
            if found:
                return found
            final = self.path(desc.digest)
            fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.", suffix=".partial",
                                       dir=os.path.dirname(final))
            try:
                with os.fdopen(fd, "wb") as out, fetch(desc) as raw:
                    src = VerifyingReader(raw, desc.digest, desc.size, desc.what)
                    while chunk := src.read(_CHUNK):
                        out.write(chunk)
                        if progress:
                            progress(len(chunk))
                os.replace(tmp, final)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        self.used.add(desc.digest)
        return final

    @contextlib.contextmanager
    def _lock(self, digest: str) -> Iterator[None]:
        """An flock on .HEX.lock; the holder removes the file, so a waiter re-checks that the file
        it locked is still the one at that path (else it locked a removed one, and tries again)."""
        blob = self.path(digest)
        path = os.path.join(os.path.dirname(blob), f".{os.path.basename(blob)}.lock")
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)

    def cleanup_partials(self) -> None:
        """Remove downloads a killed pull left (older than an hour: a running pull's are younger)."""
        now = time.time()
        for alg in digests.ALGORITHMS:
            where = os.path.join(self.top, alg)
            for name in _listdir(where):
                if name.endswith(".partial"):
                    path = os.path.join(where, name)
                    with contextlib.suppress(OSError):
                        if now - os.lstat(path).st_mtime > 3600:
                            os.unlink(path)

    def blobs(self) -> list[BlobInfo]:
        out = []
        for alg in digests.ALGORITHMS:
            for name in _listdir(os.path.join(self.top, alg)):
                if digests.valid(f"{alg}:{name}"):
                    with contextlib.suppress(OSError):
                        st = os.lstat(os.path.join(self.top, alg, name))
                        out.append(BlobInfo(f"{alg}:{name}", st.st_size, st.st_mtime))
        return sorted(out, key=lambda b: b.used)

    def enforce_cap(self) -> list[BlobInfo]:
        """Remove least recently used blobs (never one this pull used) until the rest fit the cap."""
        cap = parse_size(os.environ.get("SHIMRUN_CACHE_MAX", DEFAULT_CAP), "SHIMRUN_CACHE_MAX")
        blobs = self.blobs()
        total = sum(b.size for b in blobs)
        removed = []
        for b in blobs:
            if total <= cap:
                break
            if b.digest in self.used:
                continue
            with contextlib.suppress(OSError):
                os.unlink(self.path(b.digest))
                total -= b.size
                removed.append(b)
        return removed


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []
