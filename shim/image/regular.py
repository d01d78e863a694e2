"""Opening what the user named as an image without ever blocking: a FIFO, a socket or a device
given as IMAGE is refused at once (open() of a FIFO waits for a writer forever)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from shim.errors import ImageError

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"))


def not_an_image_file(path: str, mode: int) -> ImageError:
    kind = next((word for test, word in _KINDS if test(mode)), "not a regular file")
    return ImageError(f"{path} is {kind}, not an image", "give a SIF file, a squashfs file or a directory")


def open_regular(path: str) -> BinaryIO:
    """The regular file at `path`, opened for reading; ImageError for anything else (checked on
    the opened descriptor, so a FIFO swapped in after a stat is refused too)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # a socket cannot even be opened (ENXIO): say what it is
            raise not_an_image_file(path, st.st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise ImageError(f"cannot read image {path}: {e.strerror}", "check the path and its permissions") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise not_an_image_file(path, st.st_mode)
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return os.fdopen(fd, "rb")


@contextlib.contextmanager
def reading_image(image: str) -> Iterator[None]:
    """Reading a mounted image's files: EIO there means squashfuse could not decompress a
    block, a corrupt image (exit 65), not a fault of shim's."""
    try:
        yield
    except OSError as e:
        if e.errno != errno.EIO:
            raise
        where = f" {e.filename}" if e.filename else ""
        raise ImageError(f"the image {image} is corrupt: reading{where} in it failed: Input/output error",
                         "rebuild or fetch it again; shimrun inspect IMAGE checks its header") from None
