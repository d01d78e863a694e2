"""Write a SIF holding one squashfs root filesystem, laid out like the sylabs/sif v2.8+ writer
(what Apptainer >= 1.2 produces), so that every SIF tool reads it as one of its own:

    0      128-byte header, zero padding
    4096   48 descriptor slots of 585 bytes (28080)
    32176  DataOffset: Def.FILE object if any, packed (no alignment)
    ...    squashfs partition (FS, Squashfs/PrimSys/arch), aligned to 4096

The file is written next to OUT under a temporary name and renamed over OUT at the end, so a
reader never sees a half-written image.
"""

from __future__ import annotations

import contextlib
import errno
import os
import struct
import tempfile
import time
import uuid
from dataclasses import dataclass

from shim.errors import ExitCode, ImageError, ShimError, UsageError
from shim.image import arch as archmod
from shim.image import sif
from shim.image.squashfs import read_superblock

LAUNCH_SCRIPT = b"#!/usr/bin/env run-singularity\n"
DESCRIPTOR_CAPACITY = 48
DESCRIPTORS_OFFSET = 4096
DATA_OFFSET = DESCRIPTORS_OFFSET + DESCRIPTOR_CAPACITY * sif.DESCRIPTOR_SIZE  # 32176
PARTITION_ALIGN = 4096
DEFAULT_GROUP = 1


@dataclass(frozen=True)
class SifObject:
    """A small data object to store before the partition (a definition file, JSON)."""

    data_type: int
    name: str
    data: bytes
    extra: bytes = b""      # the descriptor's type-specific field (an SBOM's format)


@dataclass(frozen=True)
class _Object:
    data_type: int
    size: int
    extra: bytes
    name: str
    align: int               # 0 = packed right after the previous object
    data: bytes | None = None  # in-memory payload, or None for the squashfs file


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align if align else n


def _descriptor(obj: _Object, obj_id: int, offset: int, padding: int, t: int) -> bytes:
    name = obj.name.encode()
    if len(name) > 128:
        raise UsageError(f"object name {obj.name!r} is longer than 128 bytes")
    return struct.pack(sif.DESCRIPTOR_FORMAT, obj.data_type, 1, obj_id,
                       sif.GROUP_MASK | DEFAULT_GROUP, 0, offset, obj.size, padding + obj.size,
                       t, t, 0, 0, name, obj.extra)


def _copy(src: int, dst: int, count: int) -> None:
    """Append bytes [0, count) of file src to dst, by explicit offset (src's position is
    whatever Python's buffering left it at)."""
    pos = 0
    try:
        # sendfile keeps a multi-GB squashfs out of Python buffers; fall back where it cannot.
        while pos < count:
            n = os.sendfile(dst, src, pos, min(count - pos, 1 << 30))
            if n == 0:
                break
            pos += n
    except OSError:
        pass
    while pos < count:
        chunk = os.pread(src, min(count - pos, 1 << 20), pos)
        if not chunk:
            raise ImageError("the squashfs file shrank while it was copied into the SIF")
        _write_all(dst, chunk)
        pos += len(chunk)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_sif(out: str | os.PathLike[str], squashfs: str | os.PathLike[str], arch: str, *,
              objects: tuple[SifObject, ...] = (), deterministic: bool = False,
              launch_script: bytes | None = None, partition_name: str = "") -> None:
    """Write OUT as a SIF whose primary partition is the squashfs file SQUASHFS.

    deterministic: nil image ID, Go zero time in every timestamp and no launch script, so
    that the same inputs give byte-identical files (as sylabs' OptCreateDeterministic).
    Otherwise a random ID, the current time and `#!/usr/bin/env run-singularity`.
    """
    out, squashfs = os.fspath(out), os.fspath(squashfs)
    code = archmod.arch_to_sif_code(arch)
    if code == archmod.UNKNOWN_SIF_CODE:
        raise UsageError("the architecture of the root filesystem is unknown",
                         "name it, e.g. --arch amd64")
    if launch_script is None:
        launch_script = b"" if deterministic else LAUNCH_SCRIPT
    if len(launch_script) >= 32:  # as the reference writer: it must stay NUL-terminated
        raise UsageError(f"launch script {launch_script!r} is not shorter than 32 bytes")
    t = sif.ZERO_TIME if deterministic else int(time.time())
    image_id = bytes(16) if deterministic else uuid.uuid4().bytes
    try:
        _write(out, squashfs, code, objects, _Stamp(launch_script, partition_name, t, image_id))
    except OSError as e:
        if e.filename == squashfs:
            raise ImageError(f"cannot read squashfs {squashfs}: {e.strerror}") from None
        exit_code = ExitCode.USAGE if e.errno in _USER_ERRNOS else ExitCode.HOST
        raise ShimError(exit_code, f"cannot write SIF {out}: {e.strerror}",
                        "check that the output directory exists, is writable and has space"
                        ) from None


# Failures that a different OUT path fixes, as opposed to a full or failing disk.
_USER_ERRNOS = (errno.ENOENT, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS,
                errno.EISDIR)


@dataclass(frozen=True)
class _Stamp:
    """What the header says of the file besides its objects."""
    launch_script: bytes
    partition_name: str
    t: int                      # every timestamp
    image_id: bytes


def _write(out: str, squashfs: str, code: str, extra: tuple[SifObject, ...], stamp: _Stamp) -> None:
    launch_script, partition_name, t, image_id = stamp.launch_script, stamp.partition_name, stamp.t, stamp.image_id
    with open(squashfs, "rb") as sq:
        sq_size = os.fstat(sq.fileno()).st_size
        read_superblock(sq, 0, sq_size)
        objects = []
        objects += [_Object(o.data_type, len(o.data), o.extra, o.name, 0, o.data) for o in extra]
        part_extra = struct.pack("<ii3s", sif.FS_SQUASHFS, sif.PART_PRIMSYS, code.encode())
        objects.append(_Object(sif.DATA_PARTITION, sq_size, part_extra, partition_name,
                               PARTITION_ALIGN))

        # Lay out first: the header and table go at the start, before the data.
        table = bytearray(DESCRIPTOR_CAPACITY * sif.DESCRIPTOR_SIZE)
        placed: list[tuple[int, _Object]] = []
        end = DATA_OFFSET
        for i, obj in enumerate(objects):
            offset = _round_up(end, obj.align)
            table[i * sif.DESCRIPTOR_SIZE:(i + 1) * sif.DESCRIPTOR_SIZE] = _descriptor(
                obj, i + 1, offset, offset - end, t)
            placed.append((offset, obj))
            end = offset + obj.size
        header = struct.pack(
            sif.HEADER_FORMAT, launch_script, sif.MAGIC, sif.VERSION, code.encode() + b"\0",
            image_id, t, t, DESCRIPTOR_CAPACITY - len(objects), DESCRIPTOR_CAPACITY,
            DESCRIPTORS_OFFSET, len(table), DATA_OFFSET, end - DATA_OFFSET)

        out_dir = os.path.dirname(os.path.abspath(out))
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out)}.", suffix=".tmp",
                                   dir=out_dir)
        try:
            _write_all(fd, header.ljust(DESCRIPTORS_OFFSET, b"\0") + table)
            pos = DATA_OFFSET
            for offset, obj in placed:
                _write_all(fd, bytes(offset - pos))
                if obj.data is not None:
                    _write_all(fd, obj.data)
                else:
                    _copy(sq.fileno(), fd, obj.size)
                pos = offset + obj.size
            os.fsync(fd)
            umask = os.umask(0)
            os.umask(umask)
            # Executable like Apptainer's images: the launch script makes `./image.sif` run it.
            os.fchmod(fd, 0o777 & ~umask)
            os.close(fd)
            fd = -1
            os.replace(tmp, out)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
