"""Streams that check a blob's size and digest as they are read: a mismatch is an error naming
the blob, raised before the last byte is handed on (so nothing built from it is kept).

Whichever way a blob is read, what a reader is given has been checked in full before the reader
can use it as whole: `read()` with no size reads to the end and verifies; a reader that reads in
pieces gets b"" (the end) only after the check passed."""

from __future__ import annotations

from typing import IO

from shim.errors import ImageError
from shim.oci import digest as digests


class VerifyingReader:
    """Reads `src`, at most `size` bytes (-1: unknown), and checks `digest` ("" = none; else a
    digest checked by shim.oci.digest) at the end.

    The final check runs when the stream reports its end, so the reader that sees b"" has seen
    a verified blob; a source that ends early or runs long is an error too."""

    def __init__(self, src: IO[bytes], digest: str, size: int, what: str) -> None:
        self.src, self.digest, self.size, self.what = src, digest, size, what
        self.hash = digests.hasher(digest)
        self.count = 0
        self.done = False

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:  # the whole blob: verified before it is returned
            parts = []
            while chunk := self.read(1 << 20):
                parts.append(chunk)
            return b"".join(parts)
        if self.done or n == 0:
            return b""
        if self.size >= 0:
            left = self.size - self.count
            n = min(n, left)
            # Read one byte past the end, to see a source that is longer than its descriptor.
            data = self.src.read(n) if n > 0 else b""
            if not data:
                self._finish(extra=self.src.read(1))
                return b""
        else:
            data = self.src.read(n)
            if not data:
                self._finish(extra=b"")
                return b""
        self.hash.update(data)
        self.count += len(data)
        return data

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def _finish(self, extra: bytes) -> None:
        self.done = True
        if extra or (self.size >= 0 and self.count != self.size):
            got = f"more than {self.count}" if extra else str(self.count)
            raise ImageError(f"blob {self.what}: {got} bytes where its descriptor says {self.size}",
                             "the image is truncated or damaged; fetch it again")
        got = f"{self.hash.name}:{self.hash.hexdigest()}"
        if self.digest and got != self.digest:
            raise ImageError(f"blob {self.what}: its content has digest {got[:19]}…, not {self.digest}",
                             "the image is damaged or was altered; fetch it again")

    def drain(self) -> None:
        """Read to the end (verifying): what a consumer that stopped early leaves."""
        while self.read(1 << 20):
            pass
