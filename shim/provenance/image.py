"""The image part of a provenance record: what it is, to the digest of every object."""

from __future__ import annotations

import os

from shim.provenance.digests import sha256_file


def _sif_facts(path: str, source: str) -> dict:
    from shim.image.regular import open_regular
    from shim.image.sif import read_sif_file, sbom_objects, sif_labels
    from shim.oci.config import DIGEST_LABEL, SOURCE_LABEL
    from shim.verify.integrity import Stream, hash_streams

    with open_regular(source) as f:  # the digests of the very file whose table was read
        img = read_sif_file(f, path)
        # what a signature check of this planning hashed already is not read again
        sha = hash_streams(f, img, [Stream("sha256", (d.id,)) for d in img.descriptors])
    digest = {d.id: sha[Stream("sha256", (d.id,))].hex() for d in img.descriptors}
    objects = [{"id": d.id, "type": d.type_name, "name": d.name, "group": d.group, "size": d.size,
                "primary": d.is_primary, "sha256": digest[d.id]} for d in img.descriptors]
    labels = sif_labels(img)
    source = labels.get(SOURCE_LABEL)
    return {"id": str(img.header.id) if img.header.id else None, "arch": img.header.arch, "objects": objects,
            "oci": {"source": source, "manifest_digest": labels.get(DIGEST_LABEL)} if source else None,
            "sboms": [{**s, "sha256": digest[s["id"]]} for s in sbom_objects(img)]}


def image_facts(path: str, given: str, arch: str, kind: str, source: str = "") -> dict:
    """`path`: the image as opened (resolved); `given`: as the command line named it; `kind`:
    sif, squashfs or dir (shim.image.open.image_kind); `source`: what to read it by (the launch's
    opened descriptor, /proc/self/fd/N), `path` when not given."""
    source = source or path
    facts: dict = {"path": path, "given": given, "arch": arch, "kind": kind,
                   "size": None if kind == "dir" else os.stat(source).st_size}
    if kind == "dir":
        # A directory has no one digest; its identity is what the record can name.
        facts.update(sha256=None, sif=None)
    elif kind == "sif":
        facts.update(sha256=None, sif=_sif_facts(path, source))
    else:
        facts.update(sha256=sha256_file(source), sif=None)
    return facts
