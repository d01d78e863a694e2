"""What a SIF signature covers, byte for byte, and the digests over it (sylabs/sif v2 rules,
docs/sif-signatures.md §1).

* The header stream is 61 of the header's 128 bytes: LaunchScript, Magic, Version and ID. The
  architecture, the times, the counts, the offsets and DataSize are left out, so they may change
  after signing (objects may move, the table may grow).
* The descriptor stream is 557 of a descriptor's 585 bytes, with the object's ID replaced by its ID
  relative to the smallest ID of its group; ID, GroupID, Offset, SizeWithPadding and ModifiedAt
  are left out.
* An object's digest is over data[Offset:Offset+Size]; padding between objects is not covered.

Object data is read once, in chunks, however many signatures and algorithms want it (hash_streams).
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import BinaryIO

from shim.image.sif import SifDescriptor, SifImage, object_chunks
from shim.verify.shared import SHARED

# The header bytes that signatures cover, as (start, end) ranges: Arch (45..48) and everything
# from CreatedAt (64) on are left out.
HEADER_RANGES = ((0, 45), (48, 64))
# Descriptor bytes covered: DataType+Used, [relative ID], LinkedID, Size, CreatedAt, UID+GID+Name+Extra.
DESCRIPTOR_HEAD = (0, 5)
DESCRIPTOR_TAIL = ((13, 17), (25, 33), (41, 49), (57, 585))

# Digest names of the signed metadata ("sha256:<hex>") -> hashlib constructor.
DIGEST_ALGORITHMS: dict[str, Callable[[], hashlib._Hash]] = {
    "sha224": hashlib.sha224,
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
    "sha512_224": lambda: hashlib.new("sha512_224"),
    "sha512_256": lambda: hashlib.new("sha512_256"),
    # Only legacy signatures name these (through the descriptor's HashType): never in metadata.
    "blake2s_256": lambda: hashlib.blake2s(digest_size=32),
    "blake2b_256": lambda: hashlib.blake2b(digest_size=32),
}
METADATA_ALGORITHMS = ("sha224", "sha256", "sha384", "sha512", "sha512_224", "sha512_256")
# A signature descriptor's HashType (extra bytes 0..4) -> digest name. Legacy signatures hash the
# object data with it; modern ones name their algorithm in the metadata instead.
SIF_HASH_TYPES = {1: "sha256", 2: "sha384", 3: "sha512", 4: "blake2s_256", 5: "blake2b_256"}
SIF_HASH_SHA256 = 1


@dataclass(frozen=True)
class Digest:
    algorithm: str   # a DIGEST_ALGORITHMS name
    value: bytes

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.value.hex()}"


def parse_digest(text: object) -> Digest:
    """"sha256:<hex>" -> Digest; ValueError for anything else (an unknown algorithm, a value of the
    wrong length, more than one ':')."""
    if not isinstance(text, str):
        raise ValueError(f"digest {text!r} is not a string")
    parts = text.split(":")
    if len(parts) != 2 or parts[0] not in METADATA_ALGORITHMS:
        raise ValueError(f"digest {text!r} is not <algorithm>:<hex> with a known algorithm")
    try:
        value = bytes.fromhex(parts[1])
    except ValueError:
        raise ValueError(f"digest {text!r} has a value that is not hex") from None
    if len(value) != new_hash(parts[0]).digest_size:
        raise ValueError(f"digest {text!r} has a value of the wrong length")
    return Digest(parts[0], value)


def new_hash(algorithm: str) -> hashlib._Hash:
    return DIGEST_ALGORITHMS[algorithm]()


def digest_of(algorithm: str, data: bytes) -> Digest:
    h = new_hash(algorithm)
    h.update(data)
    return Digest(algorithm, h.digest())


def header_stream(img: SifImage) -> bytes:
    return b"".join(img.header.raw[a:b] for a, b in HEADER_RANGES)


def descriptor_stream(d: SifDescriptor, relative_id: int) -> bytes:
    r = d.raw
    head = r[DESCRIPTOR_HEAD[0]:DESCRIPTOR_HEAD[1]] + struct.pack("<I", relative_id)
    return head + b"".join(r[a:b] for a, b in DESCRIPTOR_TAIL)


@dataclass(frozen=True)
class Stream:
    """Some objects' data, concatenated in descriptor-table order, hashed with one algorithm: one
    object for modern signatures and object-linked legacy ones, a whole group for group-linked
    legacy ones."""

    algorithm: str
    object_ids: tuple[int, ...]


def hash_streams(f: BinaryIO, img: SifImage, streams: Iterable[Stream]) -> dict[Stream, bytes]:
    """The digest of every stream, reading each object's data once: every chunk goes to each
    stream that holds the object. Objects are read in table order, which is also the order in
    which a group stream concatenates them. Within shared_digests(), a stream hashed before in the
    same file (device, inode, size, mtime, change time) is not read again."""
    shared = SHARED.get()
    if shared is None:
        return _hash(f, img, set(streams))
    st = os.fstat(f.fileno())
    done = shared.setdefault((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns), {})
    asked = set(streams)
    fresh = _hash(f, img, asked - done.keys())
    done.update(fresh)
    return {s: done[s] for s in asked}


def _hash(f: BinaryIO, img: SifImage, wanted: set[Stream]) -> dict[Stream, bytes]:
    by_id = {d.id: d for d in img.descriptors}
    hashers = {s: new_hash(s.algorithm) for s in wanted}
    readers: dict[int, list[Stream]] = {}
    for s in wanted:
        ordered = sorted(s.object_ids, key=lambda i: by_id[i].slot)
        if list(s.object_ids) != ordered:
            raise ValueError(f"stream {s} is not in table order")
        for object_id in s.object_ids:
            readers.setdefault(object_id, []).append(s)
    for d in img.descriptors:  # table order
        if d.id not in readers:
            continue
        targets = [hashers[s] for s in readers[d.id]]
        for chunk in object_chunks(f, img, d):
            for h in targets:
                h.update(chunk)
    return {s: h.digest() for s, h in hashers.items()}
