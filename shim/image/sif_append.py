"""Add data objects (signatures) to an existing SIF in place, as sylabs/sif's AddObject does:
each takes the first free descriptor slot (its ID is the slot's number + 1), its data goes after
the image's last byte, packed, and then the table and the header (DescriptorsFree, DataSize,
ModifiedAt) are rewritten. Nothing else moves, so existing signatures stay valid.

All or nothing: the file is locked while it changes, and on any failure (no free slot, a full
disk, an interrupt) the header and table are written back and the file is cut back to its old
length, so it is left as it was.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import BinaryIO

from shim.errors import ExitCode, ImageError, ShimError
from shim.image import sif

# Header fields rewritten (offsets into the 128-byte header, int64 little-endian).
MODIFIED_AT_OFFSET = 72
DESCRIPTORS_FREE_OFFSET = 80
DATA_SIZE_OFFSET = 120


@dataclass(frozen=True)
class NewObject:
    data_type: int
    data: bytes
    group_raw: int          # sif.GROUP_MASK | group, or sif.GROUP_MASK for none
    link_raw: int           # sif.GROUP_MASK | group for a group link, an object ID, or 0
    extra: bytes = b""      # at most 384 bytes, NUL-padded
    name: str = ""


def _timestamp(header: sif.SifHeader) -> int:
    """Go's rule (FileImage.isDeterministic): a deterministic image (nil ID, unset times) stays
    deterministic; any other gets the current time."""
    deterministic = header.id is None and header.created_at is None and header.modified_at is None
    return sif.ZERO_TIME if deterministic else int(time.time())


def _record(obj: NewObject, obj_id: int, offset: int, padding: int, t: int) -> bytes:
    name = obj.name.encode()
    if len(name) > 128 or len(obj.extra) > 384:
        raise ValueError("descriptor name or extra too long")
    return struct.pack(sif.DESCRIPTOR_FORMAT, obj.data_type, 1, obj_id, obj.group_raw, obj.link_raw, offset,
                       len(obj.data), padding + len(obj.data), t, t, 0, 0, name, obj.extra)


def free_slots(img: sif.SifImage) -> int:
    return img.header.descriptors_total - len(img.descriptors)  # DescriptorsFree is not trusted


def check_room(img: sif.SifImage, count: int) -> None:
    """ImageError (65) unless `count` descriptor slots are free."""
    free = free_slots(img)
    if free < count:
        raise ImageError(f"{img.path}: no free descriptor slot for {count} new object(s): {free} of "
                         f"{img.header.descriptors_total} are free",
                         "rebuild the image (shimrun build makes 48 slots), or sign fewer groups (--group-id)")


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _open_for_update(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)  # O_NONBLOCK: a FIFO must not hang us
    except OSError as e:
        if e.errno == errno.EISDIR:
            raise ImageError(f"{path} is a directory: only SIF images carry signatures",
                             "build a SIF of it (shimrun build OUT.sif DIR) and sign that") from None
        if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ETXTBSY):  # the image could not be written
            raise ShimError(ExitCode.HOST, f"cannot open {path} for writing: {e.strerror}",
                            "sign a copy that you can write") from None
        raise ImageError(f"cannot read image {path}: {e.strerror}", "check the path and its permissions") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ImageError(f"{path} is not a regular file, not a SIF image", "give a SIF file")
    return fd


@dataclass(frozen=True)
class _Layout:
    slots: tuple[int, ...]
    ids: tuple[int, ...]
    offsets: tuple[int, ...]
    start: int       # where the first new object's data goes (the old end of the file, at least)
    data_end: int    # the end of the image's data before


def _layout(img: sif.SifImage, table: bytes, objects: Sequence[NewObject]) -> _Layout:
    h = img.header
    free = [s for s in range(h.descriptors_total) if table[s * sif.DESCRIPTOR_SIZE + 4] == 0]
    check_room(img, len(objects))
    used = {d.id for d in img.descriptors}
    ids = []
    for slot in free[:len(objects)]:
        # Go derives the ID from the slot; a table that already uses that ID gets the next unused.
        new = slot + 1
        while new in used:
            new = max(used) + 1
        used.add(new)
        ids.append(new)
    data_end = max([h.data_offset] + [d.end for d in img.descriptors])
    start = max(img.file_size, data_end)
    offsets, pos = [], start
    for obj in objects:
        offsets.append(pos)
        pos += len(obj.data)
    return _Layout(tuple(free[:len(objects)]), tuple(ids), tuple(offsets), start, data_end)


class SifUpdate:
    """`with SifUpdate(path) as u:` the image, open and locked: read it (u.img, u.file), then
    u.append(objects). What is read and what is appended to are one file, whatever else renames
    or rewrites the path meanwhile."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> SifUpdate:
        self.fd = _open_for_update(self.path)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)  # two signers at once must not take the same slot
            self.file: BinaryIO = os.fdopen(os.dup(self.fd), "rb")
            self.img = sif.read_sif_file(self.file, self.path)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if getattr(self, "file", None) is not None:
            self.file.close()
        if self.fd >= 0:
            os.close(self.fd)  # also releases the lock
            self.fd = -1

    def append(self, objects: Sequence[NewObject]) -> tuple[int, ...]:
        """Add `objects`; returns their IDs. ImageError (65) when too few descriptor slots are
        free; the file is then unchanged, as after any other failure."""
        if not objects:
            return ()
        img, fd = self.img, self.fd
        head = os.pread(fd, sif.HEADER_SIZE, 0)
        table = os.pread(fd, img.header.descriptors_size, img.header.descriptors_offset)
        lay = _layout(img, table, objects)
        try:
            _write(fd, img, lay, objects, _timestamp(img.header))
        except BaseException as e:
            _restore(fd, head, table, img)
            if isinstance(e, OSError):
                raise ShimError(ExitCode.HOST, f"cannot write {self.path}: {e.strerror}; it is unchanged",
                                "check the free space of its file system") from None
            raise
        self.img = sif.read_sif_file(self.file, self.path)
        return lay.ids


def append_objects(path: str, objects: Sequence[NewObject]) -> tuple[int, ...]:
    with SifUpdate(path) as u:
        return u.append(objects)


def _write(fd: int, img: sif.SifImage, lay: _Layout, objects: Sequence[NewObject], t: int) -> None:
    h = img.header
    for obj, offset in zip(objects, lay.offsets, strict=True):
        _pwrite_all(fd, obj.data, offset)
    os.fsync(fd)   # the data is on disk before any descriptor points at it
    for i, (obj, slot, obj_id, offset) in enumerate(zip(objects, lay.slots, lay.ids, lay.offsets, strict=True)):
        padding = lay.start - lay.data_end if i == 0 else 0
        _pwrite_all(fd, _record(obj, obj_id, offset, padding, t), h.descriptors_offset + slot * sif.DESCRIPTOR_SIZE)
    free = h.descriptors_total - len(img.descriptors) - len(objects)
    end = lay.offsets[-1] + len(objects[-1].data) if objects else lay.data_end
    _pwrite_all(fd, struct.pack("<q", t), MODIFIED_AT_OFFSET)
    _pwrite_all(fd, struct.pack("<q", free), DESCRIPTORS_FREE_OFFSET)
    _pwrite_all(fd, struct.pack("<q", end - h.data_offset), DATA_SIZE_OFFSET)
    os.fsync(fd)


def _restore(fd: int, head: bytes, table: bytes, img: sif.SifImage) -> None:
    """Put back what _write may have changed; errors here leave nothing better to do."""
    try:
        _pwrite_all(fd, table, img.header.descriptors_offset)
        _pwrite_all(fd, head, 0)
        os.ftruncate(fd, img.file_size)
        os.fsync(fd)
    except OSError:
        pass
