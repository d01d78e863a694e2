"""Squashfs superblock check: is there a mountable squashfs 4.0 at this offset?

Done before handing an offset to squashfuse, whose own error for a wrong offset is a vague
"This doesn't look like a squashfs image". Layout: the 96-byte little-endian superblock of
squashfs 4.0 (the only version Linux and squashfuse read).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

from shim.errors import ImageError

SUPERBLOCK_FORMAT = "<4sIIIIHHHHHHQQQQQQQQ"
SUPERBLOCK_SIZE = struct.calcsize(SUPERBLOCK_FORMAT)  # 96
MAGIC = b"hsqs"
COMPRESSIONS = {1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}


@dataclass(frozen=True)
class SquashfsSuper:
    offset: int          # where the superblock sits in its file
    inode_count: int
    mkfs_time: int       # Unix seconds
    block_size: int
    fragment_count: int
    compression: str     # "gzip", "xz", "zstd", ...
    flags: int
    id_count: int
    version: tuple[int, int]
    bytes_used: int      # length of the filesystem proper (the file may be padded beyond it)


def read_superblock(source: str | os.PathLike[str] | BinaryIO, offset: int,
                    limit_size: int) -> SquashfsSuper:
    """Parse and check the squashfs superblock at `offset` of a path or binary file object;
    the filesystem must fit in `limit_size` bytes (the partition's size). Raises ImageError."""
    if isinstance(source, (str, os.PathLike)):
        name = os.fspath(source)
        try:
            with open(name, "rb") as f:
                f.seek(offset)
                raw = f.read(SUPERBLOCK_SIZE)
        except OSError as e:
            raise ImageError(f"cannot read image {name}: {e.strerror}",
                             "check the path and its permissions") from None
    else:
        name = str(getattr(source, "name", "image"))
        source.seek(offset)
        raw = source.read(SUPERBLOCK_SIZE)
    return parse_superblock(raw, offset, limit_size, name)


def parse_superblock(raw: bytes, offset: int, limit_size: int, name: str = "image") -> SquashfsSuper:
    where = f"{name}: partition at offset {offset}"
    hint = "the image is corrupt or its partition table is wrong: rebuild it"
    if len(raw) < SUPERBLOCK_SIZE or limit_size < SUPERBLOCK_SIZE or raw[:4] != MAGIC:
        raise ImageError(f"{where} is not squashfs (no 'hsqs' superblock)", hint)
    (_magic, inodes, mkfs_time, block_size, fragments, comp, block_log, flags, id_count, major,
     minor, _root, bytes_used, *_tables) = struct.unpack(SUPERBLOCK_FORMAT, raw)
    if (major, minor) != (4, 0):
        raise ImageError(f"{where} is squashfs {major}.{minor}, but only 4.0 can be mounted",
                         "rebuild the image with squashfs-tools 4.x")
    if comp not in COMPRESSIONS:
        raise ImageError(f"{where} is not squashfs (unknown compression id {comp})", hint)
    # The kernel's and squashfuse's sanity rule: a power of two from 4 KiB to 1 MiB.
    if not (4096 <= block_size <= 1 << 20) or block_size != 1 << block_log:
        raise ImageError(f"{where} is not squashfs (block size {block_size}, log {block_log})",
                         hint)
    if bytes_used < SUPERBLOCK_SIZE:  # not even its own superblock: nothing a mount could read
        raise ImageError(f"{where} is not squashfs (it claims {bytes_used} bytes in all)", hint)
    if bytes_used > limit_size:
        raise ImageError(f"{where}: squashfs claims {bytes_used} bytes but the partition holds "
                         f"{limit_size}", "the image was cut short: copy or rebuild it")
    return SquashfsSuper(offset, inodes, mkfs_time, block_size, fragments, COMPRESSIONS[comp],
                         flags, id_count, (major, minor), bytes_used)
