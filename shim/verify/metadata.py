"""The signed metadata of a modern SIF signature (PGP and DSSE carry the same JSON):

    {"version":1,"header":{"digest":D},"objects":[{"relativeId":N,"descriptorDigest":D,"objectDigest":D},...]}

compact, keys in that order, objects by ID, each digest "<algorithm>:<hex>". IDs are relative to the
smallest ID of the signed group. Parsing is strict about types (Go's decoder ignores unknown keys,
so do we) and, unlike Go, requires version 1: a later version may mean other byte rules.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shim.image.sif import SifDescriptor, SifImage
from shim.verify.integrity import Digest, Stream, descriptor_stream, digest_of, header_stream, parse_digest

VERSION = 1
UINT32_MAX = 2**32 - 1


class MetadataError(ValueError):
    """The signed payload is not SIF image metadata."""


@dataclass(frozen=True)
class ObjectMetadata:
    relative_id: int
    descriptor_digest: Digest
    object_digest: Digest


@dataclass(frozen=True)
class ImageMetadata:
    header_digest: Digest
    objects: tuple[ObjectMetadata, ...]

    def absolute_ids(self, min_id: int) -> dict[int, ObjectMetadata]:
        return {min_id + o.relative_id: o for o in self.objects}


def _field(obj: object, key: str, kind: type) -> object:
    if not isinstance(obj, dict) or key not in obj:
        raise MetadataError(f"no {key!r} in the signed metadata")
    value = obj[key]
    # bool is an int in Python, never in JSON's sense
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise MetadataError(f"{key!r} in the signed metadata is not a {kind.__name__}")
    return value


def parse_metadata(payload: bytes) -> ImageMetadata:
    try:
        doc = json.loads(payload)
    except (ValueError, RecursionError):
        raise MetadataError("the signed payload is not JSON") from None
    version = _field(doc, "version", int)
    if version != VERSION:
        raise MetadataError(f"signed metadata version {version} is not supported (only {VERSION})")
    try:
        header = parse_digest(_field(_field(doc, "header", dict), "digest", str))
        objects = []
        for item in _field(doc, "objects", list):
            rel = _field(item, "relativeId", int)
            if not 0 <= rel <= UINT32_MAX:
                raise MetadataError(f"relativeId {rel} is not a uint32")
            objects.append(ObjectMetadata(rel, parse_digest(_field(item, "descriptorDigest", str)),
                                          parse_digest(_field(item, "objectDigest", str))))
    except MetadataError:
        raise
    except ValueError as e:  # a malformed digest
        raise MetadataError(str(e)) from None
    if len({o.relative_id for o in objects}) != len(objects):
        raise MetadataError("the signed metadata names an object twice")
    return ImageMetadata(header, tuple(objects))


@dataclass(frozen=True)
class GroupView:
    """One object group as the image has it now: the objects (table order) and its smallest ID."""

    group: int
    members: tuple[SifDescriptor, ...]
    min_id: int


def object_streams(md: ImageMetadata, view: GroupView) -> list[Stream]:
    """The object data the metadata's digests need, for hash_streams."""
    signed = md.absolute_ids(view.min_id)
    return [Stream(signed[d.id].object_digest.algorithm, (d.id,)) for d in view.members if d.id in signed]


@dataclass(frozen=True)
class Findings:
    """How the image differs from what was signed. Empty lists: it is what was signed."""

    covered: tuple[int, ...]        # signed objects the image still has
    not_signed: tuple[int, ...]     # in the group now, not in the metadata
    missing: tuple[int, ...]        # in the metadata, no longer in the image
    changed: tuple[str, ...]        # "header", "descriptor 1", "object 2": digest mismatches

    def problems(self, exact: bool) -> list[str]:
        out = [f"{what} changed after signing" for what in self.changed]
        if exact:
            out += [f"object {i} not signed" for i in self.not_signed]
            out += [f"signed object {i} not found" for i in self.missing]
        return out


def check_metadata(md: ImageMetadata, img: SifImage, view: GroupView,
                   digests: Mapping[Stream, bytes]) -> Findings:
    """Compare the metadata of a signature of `view.group` with the image (the object digests
    come from hash_streams over object_streams)."""
    signed = md.absolute_ids(view.min_id)
    present = {d.id for d in view.members}
    changed = []
    if digest_of(md.header_digest.algorithm, header_stream(img)) != md.header_digest:
        changed.append("header")
    for d in view.members:
        o = signed.get(d.id)
        if o is None:
            continue
        if digest_of(o.descriptor_digest.algorithm, descriptor_stream(d, d.id - view.min_id)) != o.descriptor_digest:
            changed.append(f"descriptor {d.id}")
        if digests[Stream(o.object_digest.algorithm, (d.id,))] != o.object_digest.value:
            changed.append(f"object {d.id}")
    return Findings(covered=tuple(sorted(present & set(signed))), not_signed=tuple(sorted(present - set(signed))),
                    missing=tuple(sorted(set(signed) - present)), changed=tuple(changed))


def build_metadata(img: SifImage, view: GroupView, digests: Mapping[Stream, bytes],
                   algorithm: str = "sha256") -> bytes:
    """The metadata a new signature of `view.group` signs, byte for byte as sylabs/sif writes it
    (Go's json.Marshal: compact, fields in declaration order)."""
    objects = [{"relativeId": d.id - view.min_id,
                "descriptorDigest": str(digest_of(algorithm, descriptor_stream(d, d.id - view.min_id))),
                "objectDigest": str(Digest(algorithm, digests[Stream(algorithm, (d.id,))]))}
               for d in sorted(view.members, key=lambda d: d.id)]
    doc = {"version": VERSION, "header": {"digest": str(digest_of(algorithm, header_stream(img)))},
           "objects": objects}
    return json.dumps(doc, separators=(",", ":")).encode()


def build_streams(view: GroupView, algorithm: str = "sha256") -> Sequence[Stream]:
    return [Stream(algorithm, (d.id,)) for d in view.members]
