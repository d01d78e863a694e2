"""A layer's tar stream, as the flattener reads it (twice): decompressed whatever its
compression, checked against its diff_id, bounded, its members streamed without keeping them.

Bounds, whatever the layer's headers say: every byte the decompressor yields counts against the
image's size cap (those after the tar's end-of-archive too: the whole stream is read to check the
diff_id); an extended header (pax, GNU long name) is read only up to MAX_HEADER bytes; tarfile's
list of the members it read is emptied as it goes (it would keep every header: memory per entry).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from shim.errors import ImageError, shown
from shim.oci.model import Layer, ResolvedImage
from shim.oci.verify import VerifyingReader

MAX_HEADER = 1 << 20              # bytes of one pax or GNU long-name header
SIZE_HINT = "raise it with --max-size (or SHIMRUN_PULL_MAX_SIZE) if the image is that big"
_CHUNK = 1 << 20
_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
             tarfile.GNUTYPE_LONGLINK)


@dataclass
class Budget:
    """What the layers of one image may decompress to, all together."""

    max_bytes: int
    used: int = 0


@contextlib.contextmanager
def layer_stream(image: ResolvedImage, layer: Layer, budget: Budget | None) -> Iterator[IO[bytes]]:
    """The layer's uncompressed tar, whatever its compression (told by its first bytes). With a
    `budget` (pass 1): checked against its diff_id, every decompressed byte counted against the cap."""
    import zstandard

    with image.open_blob(layer.blob) as raw:
        head = raw.read(6)
        joined = _Prefixed(head, raw)
        if head.startswith(b"\x1f\x8b"):
            plain: IO[bytes] = gzip.GzipFile(fileobj=joined, mode="rb")  # type: ignore[arg-type]
        elif head.startswith(b"\x28\xb5\x2f\xfd"):
            plain = zstandard.ZstdDecompressor().stream_reader(joined, read_across_frames=True)  # type: ignore[arg-type]
        elif head.startswith(b"\xfd7zXZ"):
            plain = lzma.LZMAFile(joined)  # type: ignore[arg-type]  # noqa: SIM115 (closed with raw)
        elif head.startswith(b"BZh"):
            plain = bz2.BZ2File(joined)  # type: ignore[arg-type]
        else:
            plain = joined  # type: ignore[assignment]
        if budget is not None:
            plain = _Counted(plain, budget, layer)  # type: ignore[assignment]
        checked = VerifyingReader(plain, layer.diff_id if budget is not None else "", -1, f"layer {layer.index} "
                                  f"({layer.blob.what}), uncompressed")
        try:
            yield checked  # type: ignore[misc]
            checked.drain()
            if isinstance(raw, VerifyingReader):
                raw.drain()
        except (OSError, EOFError, zlib.error, zstandard.ZstdError, lzma.LZMAError) as e:
            raise ImageError(f"layer {layer.index} ({layer.blob.what}) cannot be decompressed ({shown(str(e))})",
                             "the image is damaged; fetch it again") from None


class _Counted:
    """A layer's decompressed bytes, counted against the size cap as the decompressor yields them."""

    def __init__(self, src: IO[bytes], budget: Budget, layer: Layer) -> None:
        self.src, self.budget, self.layer = src, budget, layer

    def read(self, n: int = -1) -> bytes:
        data = self.src.read(n if 0 <= n <= _CHUNK else _CHUNK)
        self.budget.used += len(data)
        if self.budget.used > self.budget.max_bytes:
            raise ImageError(f"layer {self.layer.index} ({self.layer.blob.what}) decompresses past the size cap "
                             f"({self.budget.max_bytes} bytes uncompressed in all)", SIZE_HINT)
        return data

    def readable(self) -> bool:
        return True


class _Prefixed:
    """A stream with some bytes already read from it put back in front."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head, self.rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n < 0:
                data, self.head = self.head + self.rest.read(), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            return data if len(data) == n else data + self.rest.read(n - len(data))
        return self.rest.read(n)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)


class _HeaderTooLarge(tarfile.TarError):
    pass


class _BoundedInfo(tarfile.TarInfo):
    """A member header whose extended headers (pax, GNU long names) are read only up to MAX_HEADER
    bytes: tarfile reads one whole into memory, whatever size it declares."""

    def _proc_member(self, tarfile_: tarfile.TarFile):  # tarfile's documented hook for subclasses
        if self.type in _EXTENDED and self.size > MAX_HEADER:
            raise _HeaderTooLarge(f"an extended header of {self.size} bytes at offset {self.offset}, more than "
                                  f"{MAX_HEADER}")
        return super()._proc_member(tarfile_)


def members(stream: IO[bytes], layer: Layer) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    """The layer's members, streamed: none is kept once the next is read."""
    try:
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_BoundedInfo) as tf:  # type: ignore[call-overload]
            while (m := tf.next()) is not None:
                tf.members.clear()  # tarfile would keep every header it read: memory per entry
                yield tf, m
    except (tarfile.TarError, RecursionError) as e:
        why = "pax headers nested too deeply" if isinstance(e, RecursionError) else shown(str(e))
        raise ImageError(f"layer {layer.index} ({layer.blob.what}) is not a valid tar archive ({why})",
                         "the image is damaged; fetch it again") from None
