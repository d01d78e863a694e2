"""SIF (Singularity Image Format) reader: the global header and the descriptor table.

Byte format: shared/docs/sif-and-apptainer.md §1. Everything is little-endian and packed, so
the layouts below are plain `struct` formats. Only the 128-byte header and the descriptor table
are read, never object data: this runs on every launch. Unlike the reference Go loader, the
reader treats the file as untrusted and bounds-checks every used object (§1.11).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from shim.errors import ImageError
from shim.image.arch import sif_code_to_arch
from shim.image.regular import open_regular

HEADER_FORMAT = "<32s10s3s3s16s8q"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)  # 128
DESCRIPTOR_FORMAT = "<iBIIIqqqqqqq128s384s"
DESCRIPTOR_SIZE = struct.calcsize(DESCRIPTOR_FORMAT)  # 585
assert HEADER_SIZE == 128 and DESCRIPTOR_SIZE == 585

MAGIC = b"SIF_MAGIC\0"
MAGIC_OFFSET = 32
VERSION = b"01\0"
# Go's zero time.Time as Unix seconds: deterministic writers store it to mean "unset".
ZERO_TIME = -62135596800
INT64_MAX = 2**63 - 1
# IDs are uint32, but no writer needs more than a few hundred slots; the cap keeps a corrupt
# count from making us read gigabytes of "table".
MAX_DESCRIPTORS = 65536

GROUP_MASK = 0xF0000000  # raw GroupID / group LinkedID = GROUP_MASK | group
ID_MASK = 0x0FFFFFFF

# DataType -> siftool label (§1.5).
DATA_TYPES: dict[int, str] = {
    0x4001: "Def.FILE",
    0x4002: "Env.Vars",
    0x4003: "JSON.Labels",
    0x4004: "FS",
    0x4005: "Signature",
    0x4006: "JSON.Generic",
    0x4007: "Generic/Raw",
    0x4008: "Cryptographic Message",
    0x4009: "SBOM",
    0x400A: "OCI.RootIndex",
    0x400B: "OCI.Blob",
}
DATA_DEFFILE = 0x4001
DATA_LABELS = 0x4003
DATA_GENERIC_JSON = 0x4006
OCI_CONFIG_NAME = "oci-config.json"  # the image config of an image built from OCI (JSON.Generic)
DATA_PARTITION = 0x4004
DATA_SIGNATURE = 0x4005
DATA_CRYPTO_MESSAGE = 0x4008
DATA_SBOM = 0x4009
DATA_OCI_ROOT_INDEX = 0x400A
DATA_OCI_BLOB = 0x400B

# Partition extra (§1.6). Fstype 6 exists only in Apptainer's fork of the library.
FSTYPES = {1: "Squashfs", 2: "Ext3", 3: "Archive", 4: "Raw", 5: "Encrypted squashfs",
           6: "Gocryptfs squashfs"}
FS_SQUASHFS = 1
PARTTYPES = {1: "System", 2: "PrimSys", 3: "Data", 4: "Overlay"}
PART_SYSTEM = 1
PART_PRIMSYS = 2
HASH_TYPES = {1: "SHA-256", 2: "SHA-384", 3: "SHA-512", 4: "BLAKE2s-256", 5: "BLAKE2b-256"}
CRYPTO_FORMATS = {1: "OpenPGP", 2: "PEM"}
CRYPTO_MESSAGES = {0x100: "Clear Signature", 0x200: "RSA-OAEP"}
SBOM_FORMATS = {1: "cyclonedx-json", 2: "cyclonedx-xml", 3: "github-json", 4: "spdx-json",
                5: "spdx-rdf", 6: "spdx-tag-value", 7: "spdx-yaml", 8: "syft-json"}

_HINT_CORRUPT = "the image is corrupt or was cut short: copy or rebuild it"


@dataclass(frozen=True)
class SifHeader:
    launch_script: str          # e.g. "#!/usr/bin/env run-singularity\n"; "" when none
    version: str                # always "01"
    arch_code: str              # "02"; "00" when there is no primary partition
    arch: str                   # Go name of arch_code, "unknown" for "00"
    id: str | None              # canonical UUID text (as str(uuid.UUID)); None for the nil UUID of
                                # deterministic images
    created_at: int | None      # Unix seconds; None for Go's zero time ("unset")
    modified_at: int | None
    descriptors_free: int
    descriptors_total: int
    descriptors_offset: int
    descriptors_size: int
    data_offset: int
    data_size: int
    # The 128 bytes as read: signatures cover some of them (shim/verify/integrity.py).
    raw: bytes = field(default=b"", repr=False, compare=False)


@dataclass(frozen=True)
class SifDescriptor:
    slot: int                   # index in the table; not necessarily id - 1
    data_type: int
    type_name: str              # siftool label ("FS", "OCI.Blob", "Unknown")
    id: int
    group_id_raw: int
    linked_id_raw: int
    group: int | None           # None = in no group
    link: tuple[str, int] | None  # ("object", id), ("group", g) or None
    offset: int
    size: int
    size_with_padding: int
    created_at: int | None
    modified_at: int | None
    uid: int
    gid: int
    name: str
    extra: bytes                # the raw 384 bytes
    # Decoded extra; None where it does not apply to the data type.
    fstype: str | None = None   # partition: "Squashfs", "Ext3", ..., "Unknown"
    parttype: str | None = None  # partition: "System", "PrimSys", "Data", "Overlay", "Unknown"
    arch: str | None = None     # partition: Go name or "unknown"
    fstype_code: int | None = None
    parttype_code: int | None = None
    arch_code: str | None = None
    hash_type: str | None = None  # signature
    entity: str | None = None   # signature: 40 uppercase hex digits, None if all zero (DSSE)
    digest: str | None = None   # OCI root index / blob: "sha256:<hex>"
    sbom_format: str | None = None
    crypto_format: str | None = None
    crypto_message: str | None = None
    # The 585-byte record as read, and its Used byte: signatures cover most of the record,
    # Used included (shim/verify/integrity.py).
    raw: bytes = field(default=b"", repr=False, compare=False)
    used: int = 1

    @property
    def is_primary(self) -> bool:
        return self.data_type == DATA_PARTITION and self.parttype_code == PART_PRIMSYS

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class SifImage:
    path: str
    file_size: int
    header: SifHeader
    descriptors: tuple[SifDescriptor, ...]  # used slots only, in table order
    # what object data is read from: the very file the table came from (a launch's opened
    # image, /proc/self/fd/N), or `path`
    source: str = ""

    def descriptor(self, object_id: int) -> SifDescriptor | None:
        for d in self.descriptors:
            if d.id == object_id:
                return d
        return None


def _cstr(raw: bytes) -> str:
    # Fixed-size NUL-padded fields; a name may fill all its bytes with no terminator.
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def _time(t: int) -> int | None:
    return None if t == ZERO_TIME else t


def _label(table: dict[int, str], code: int) -> str:
    return table.get(code, "Unknown")


def _decode_extra(data_type: int, extra: bytes) -> dict[str, Any]:
    if data_type == DATA_PARTITION:
        fstype, parttype = struct.unpack_from("<ii", extra)
        code = _cstr(extra[8:11])
        return {"fstype": _label(FSTYPES, fstype), "parttype": _label(PARTTYPES, parttype),
                "arch": sif_code_to_arch(code), "fstype_code": fstype,
                "parttype_code": parttype, "arch_code": code}
    if data_type == DATA_SIGNATURE:
        (hashtype,) = struct.unpack_from("<i", extra)
        fingerprint = extra[4:24]  # OpenPGP v4 fingerprint; the other 236 bytes are unused
        return {"hash_type": _label(HASH_TYPES, hashtype),
                "entity": fingerprint.hex().upper() if any(fingerprint) else None}
    if data_type in (DATA_OCI_ROOT_INDEX, DATA_OCI_BLOB):
        return {"digest": _cstr(extra) or None}
    if data_type == DATA_SBOM:
        (fmt,) = struct.unpack_from("<i", extra)
        return {"sbom_format": _label(SBOM_FORMATS, fmt)}
    if data_type == DATA_CRYPTO_MESSAGE:
        fmt, msg = struct.unpack_from("<ii", extra)
        return {"crypto_format": _label(CRYPTO_FORMATS, fmt),
                "crypto_message": _label(CRYPTO_MESSAGES, msg)}
    return {}


def decode_group(raw: int) -> int | None:
    """Raw GroupID -> group number; None for "no group" (raw 0xf0000000, or 0)."""
    group = raw & ID_MASK
    return group if group else None


def decode_link(raw: int) -> tuple[str, int] | None:
    """Raw LinkedID -> ("group", g), ("object", id) or None."""
    if raw == 0:
        return None
    if raw & GROUP_MASK == GROUP_MASK:
        return ("group", raw & ID_MASK)
    return ("object", raw)


def parse_header(raw: bytes) -> SifHeader:
    """Decode the 128-byte header; the caller has checked the magic and version."""
    (launch, _magic, version, arch, image_id, created, modified, free, total, doff, dsize,
     data_off, data_size) = struct.unpack(HEADER_FORMAT, raw)
    code = _cstr(arch)
    return SifHeader(_cstr(launch), _cstr(version), code, sif_code_to_arch(code), _uuid_text(image_id),
                     _time(created), _time(modified), free,
                     total, doff, dsize, data_off, data_size, raw=bytes(raw))


def parse_descriptor(slot: int, raw: bytes) -> SifDescriptor:
    (data_type, used, obj_id, group_raw, link_raw, offset, size, size_pad, created, modified,
     uid, gid, name, extra) = struct.unpack(DESCRIPTOR_FORMAT, raw)
    return SifDescriptor(
        slot=slot, data_type=data_type, type_name=DATA_TYPES.get(data_type, "Unknown"),
        id=obj_id, group_id_raw=group_raw, linked_id_raw=link_raw,
        group=decode_group(group_raw), link=decode_link(link_raw), offset=offset, size=size,
        size_with_padding=size_pad, created_at=_time(created), modified_at=_time(modified),
        uid=uid, gid=gid, name=_cstr(name), extra=extra, **_decode_extra(data_type, extra),
        raw=bytes(raw), used=used)


def read_sif(path: str | os.PathLike[str]) -> SifImage:
    """Read and validate a SIF's header and descriptor table. Raises ImageError (one line
    naming the file, the defect and a fix) for anything that is not a sound SIF."""
    path = os.fspath(path)
    with open_regular(path) as f:
        return read_sif_file(f, path)


def read_sif_file(f: BinaryIO, path: str) -> SifImage:
    """read_sif on a file already open (named `path` in messages), so that a caller that goes on
    to read object data (object_chunks) reads the very file whose table it checked."""
    try:
        file_size = os.fstat(f.fileno()).st_size
        f.seek(0)
        head = f.read(HEADER_SIZE)
        header = _check_header(path, head, file_size)
        f.seek(header.descriptors_offset)
        table = f.read(header.descriptors_size)
    except OSError as e:
        raise ImageError(f"cannot read image {path}: {e.strerror}",
                         "check the path and its permissions") from None
    if len(table) != header.descriptors_size:  # the file shrank under us
        raise ImageError(f"{path}: truncated SIF: descriptor table is short", _HINT_CORRUPT)
    descriptors = []
    for slot in range(header.descriptors_total):
        raw = table[slot * DESCRIPTOR_SIZE:(slot + 1) * DESCRIPTOR_SIZE]
        if raw[4] == 0:  # Used flag; DescriptorsFree is not trusted
            continue
        d = parse_descriptor(slot, raw)
        _check_bounds(path, d, file_size)
        descriptors.append(d)
    name = getattr(f, "name", "")
    return SifImage(path, file_size, header, tuple(descriptors),
                    name if isinstance(name, str) and name.startswith("/proc/self/fd/") else path)


def object_chunks(f: BinaryIO, img: SifImage, d: SifDescriptor, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The data of object `d` of the open image file `f`, in pieces of at most `chunk_size` bytes
    (a partition can be gigabytes). Reads by offset, so `f`'s position does not matter."""
    pos, end = d.offset, d.offset + d.size
    while pos < end:
        try:
            chunk = os.pread(f.fileno(), min(chunk_size, end - pos), pos)
        except OSError as e:
            raise ImageError(f"cannot read image {img.path}: {e.strerror}") from None
        if not chunk:  # the file shrank after its table was read
            raise ImageError(f"{img.path}: truncated SIF: object {d.id} is short", _HINT_CORRUPT)
        pos += len(chunk)
        yield chunk


def _check_header(path: str, head: bytes, file_size: int) -> SifHeader:
    if head[MAGIC_OFFSET:MAGIC_OFFSET + len(MAGIC)] != MAGIC:
        raise ImageError(f"{path}: not a SIF file (no SIF_MAGIC at offset {MAGIC_OFFSET})",
                         "give a .sif image, or build one with 'shimrun build OUT.sif ROOTFS'")
    if len(head) < HEADER_SIZE:
        raise ImageError(f"{path}: truncated SIF: header needs {HEADER_SIZE} bytes but file is "
                         f"{file_size} bytes", _HINT_CORRUPT)
    version = head[42:45]
    if version != VERSION:
        shown = version.rstrip(b"\0").decode("ascii", "backslashreplace")
        raise ImageError(f"{path}: unsupported SIF version {shown!r} (only '01' exists)",
                         "the header is corrupt or not written by a SIF library: rebuild the image")
    h = parse_header(head)
    total, doff, dsize = h.descriptors_total, h.descriptors_offset, h.descriptors_size
    if not 0 <= total <= MAX_DESCRIPTORS:
        raise ImageError(f"{path}: corrupt SIF header: descriptor count {total} is outside "
                         f"0..{MAX_DESCRIPTORS}", _HINT_CORRUPT)
    if dsize != total * DESCRIPTOR_SIZE:
        raise ImageError(f"{path}: corrupt SIF header: descriptor table size {dsize} is not "
                         f"{total} x {DESCRIPTOR_SIZE} = {total * DESCRIPTOR_SIZE}",
                         _HINT_CORRUPT)
    if doff < HEADER_SIZE:
        raise ImageError(f"{path}: corrupt SIF header: descriptor table offset {doff} overlaps "
                         f"the {HEADER_SIZE}-byte header", _HINT_CORRUPT)
    if doff > INT64_MAX - dsize:
        raise ImageError(f"{path}: corrupt SIF header: descriptor table offset {doff} + size "
                         f"{dsize} overflows int64", _HINT_CORRUPT)
    if doff + dsize > file_size:
        raise ImageError(f"{path}: truncated SIF: descriptor table ends at {doff + dsize} but "
                         f"file is {file_size} bytes", _HINT_CORRUPT)
    return h


def _check_bounds(path: str, d: SifDescriptor, file_size: int) -> None:
    what = f"object {d.id} ({d.type_name}, slot {d.slot})"
    if d.offset < 0 or d.size < 0:
        raise ImageError(f"{path}: corrupt SIF: {what} has offset {d.offset} and size {d.size}",
                         _HINT_CORRUPT)
    if d.offset > INT64_MAX - d.size:
        raise ImageError(f"{path}: corrupt SIF: {what} offset {d.offset} + size {d.size} "
                         f"overflows int64", _HINT_CORRUPT)
    if d.offset + d.size > file_size:
        raise ImageError(f"{path}: truncated SIF: {what} ends at {d.offset + d.size} but file "
                         f"is {file_size} bytes", _HINT_CORRUPT)


# How to get a squashfs root from the partition kinds we cannot mount, by fstype.
_UNSUPPORTED_HINTS = {
    2: "convert it to squashfs: 'apptainer build new.sif old.sif'",
    5: "encrypted images need root; rebuild it unencrypted",
    6: "encrypted images are not supported; rebuild it unencrypted",
}


def primary_partition(img: SifImage) -> SifDescriptor:
    """The root filesystem: the unique used FS descriptor of type PrimSys, which must be a
    squashfs (the only kind an unprivileged runtime can mount). Raises ImageError otherwise."""
    prims = [d for d in img.descriptors if d.is_primary]
    if not prims:
        raise ImageError(f"{img.path}: no primary system partition (nothing to use as the root "
                         "filesystem)",
                         "this SIF holds no runnable container (OCI-SIF and data-only images "
                         "are not supported); rebuild it with 'shimrun build' or apptainer")
    if len(prims) > 1:
        ids = ", ".join(str(d.id) for d in prims)
        raise ImageError(f"{img.path}: {len(prims)} primary partitions (objects {ids}); a SIF "
                         "must have exactly one", _HINT_CORRUPT)
    part = prims[0]
    if part.fstype_code != FS_SQUASHFS:
        raise ImageError(f"{img.path}: primary partition (object {part.id}) is "
                         f"{part.fstype} (fstype {part.fstype_code}), which shimrun cannot "
                         "mount; it needs squashfs", _UNSUPPORTED_HINTS.get(
                             part.fstype_code, "rebuild the image with a squashfs root"))
    return part


def _uuid_text(raw: bytes) -> str | None:
    """The 16 bytes as str(uuid.UUID(bytes=raw)) writes them, None for the nil UUID. By hand:
    `uuid` imports `platform`, ~1.5 ms of every planned launch's start-up."""
    if not any(raw):
        return None
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def sif_to_dict(img: SifImage) -> dict[str, Any]:
    """JSON-ready view of an image: ids as canonical UUID strings, None for unset values."""
    h = img.header
    prims = [d.id for d in img.descriptors if d.is_primary]
    return {
        "path": img.path,
        "file_size": img.file_size,
        "header": {
            "launch_script": h.launch_script,
            "version": h.version,
            "arch": h.arch,
            "arch_code": h.arch_code,
            "id": h.id,
            "created_at": h.created_at,
            "modified_at": h.modified_at,
            "descriptors_free": h.descriptors_free,
            "descriptors_total": h.descriptors_total,
            "descriptors_offset": h.descriptors_offset,
            "descriptors_size": h.descriptors_size,
            "data_offset": h.data_offset,
            "data_size": h.data_size,
        },
        "primary_partition": prims[0] if len(prims) == 1 else None,
        "descriptors": [_descriptor_dict(d) for d in img.descriptors],
    }


def _descriptor_dict(d: SifDescriptor) -> dict[str, Any]:
    return {
        "id": d.id,
        "slot": d.slot,
        "data_type": d.data_type,
        "type": d.type_name,
        "group": d.group,
        "link": list(d.link) if d.link else None,
        "group_id_raw": d.group_id_raw,
        "linked_id_raw": d.linked_id_raw,
        "offset": d.offset,
        "size": d.size,
        "size_with_padding": d.size_with_padding,
        "created_at": d.created_at,
        "modified_at": d.modified_at,
        "uid": d.uid,
        "gid": d.gid,
        "name": d.name,
        "primary": d.is_primary,
        "fstype": d.fstype,
        "parttype": d.parttype,
        "arch": d.arch,
        "hash_type": d.hash_type,
        "entity": d.entity,
        "digest": d.digest,
        "sbom_format": d.sbom_format,
        "crypto_format": d.crypto_format,
        "crypto_message": d.crypto_message,
    }


def read_object(img: SifImage, d: SifDescriptor, limit: int = 4 << 20) -> bytes:
    """The bytes of a (small) data object; ImageError when it is larger than `limit`."""
    if d.size > limit:
        raise ImageError(f"{img.path}: object {d.id} ({d.name or d.data_type}) is larger than {limit} bytes")
    try:
        with open_regular(img.source or img.path) as f:
            f.seek(d.offset)
            data = f.read(d.size)
    except OSError as e:
        raise ImageError(f"cannot read image {img.path}: {e.strerror}") from None
    if len(data) != d.size:
        raise ImageError(f"{img.path}: truncated SIF: object {d.id} is short", _HINT_CORRUPT)
    return data


def oci_config(img: SifImage) -> dict[str, Any] | None:
    """The OCI image config stored by `shimrun pull`/`build` from an OCI source, or None."""
    import json

    for d in img.descriptors:
        if d.data_type == DATA_GENERIC_JSON and d.name == OCI_CONFIG_NAME:
            try:
                obj = json.loads(read_object(img, d))
            except (ValueError, RecursionError):
                raise ImageError(f"{img.path}: its {OCI_CONFIG_NAME} is not valid JSON", _HINT_CORRUPT) from None
            return obj if isinstance(obj, dict) else None
    return None


def sif_labels(img: SifImage) -> dict[str, Any]:
    """The JSON labels objects of a SIF, merged (a damaged one reads as no labels)."""
    labels: dict[str, Any] = {}
    for d in img.descriptors:
        if d.data_type == DATA_LABELS:
            try:
                found = json.loads(read_object(img, d))
            except (ValueError, RecursionError):
                found = {}
            labels.update(found if isinstance(found, dict) else {})
    return labels


def sbom_objects(img: SifImage) -> list[dict]:
    """The SBOM objects of a SIF (read by `inspect` too)."""
    return [{"id": d.id, "format": d.sbom_format, "size": d.size, "name": d.name}
            for d in img.descriptors if d.data_type == DATA_SBOM]
