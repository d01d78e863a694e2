"""The image part of a provenance record: what it is, to the digest of every object."""

from __future__ import annotations

import os

from shim.provenance.digests import sha256_file


def _is_sif(path: str) -> bool:
    from shim.image.sif import MAGIC, MAGIC_OFFSET

    try:
        with open(path, "rb") as f:
            head = f.read(MAGIC_OFFSET + len(MAGIC))
    except OSError:
        return False
    return head[MAGIC_OFFSET:] == MAGIC


def sbom_objects(img) -> list[dict]:
    """The SBOM objects of a SIF (read by `inspect` too)."""
    from shim.image.sif import DATA_SBOM

    return [{"id": d.id, "format": d.sbom_format, "size": d.size, "name": d.name}
            for d in img.descriptors if d.data_type == DATA_SBOM]


def _sha256(chunks) -> str:
    import hashlib

    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _sif_facts(path: str) -> dict:
    from shim.image.regular import open_regular
    from shim.image.sif import object_chunks, read_sif_file, sif_labels
    from shim.oci.config import DIGEST_LABEL, SOURCE_LABEL

    with open_regular(path) as f:  # the digests of the very file whose table was read
        img = read_sif_file(f, path)
        objects = [{"id": d.id, "type": d.type_name, "name": d.name, "group": d.group, "size": d.size,
                    "primary": d.is_primary, "sha256": _sha256(object_chunks(f, img, d))} for d in img.descriptors]
    digest = {o["id"]: o["sha256"] for o in objects}
    labels = sif_labels(img)
    source = labels.get(SOURCE_LABEL)
    return {"id": str(img.header.id) if img.header.id else None, "arch": img.header.arch, "objects": objects,
            "oci": {"source": source, "manifest_digest": labels.get(DIGEST_LABEL)} if source else None,
            "sboms": [{**s, "sha256": digest[s["id"]]} for s in sbom_objects(img)]}


def image_facts(path: str, given: str, arch: str) -> dict:
    """`path`: the image as opened (resolved); `given`: as the command line named it."""
    st = os.stat(path)
    facts: dict = {"path": path, "given": given, "arch": arch, "size": st.st_size if not os.path.isdir(path) else None}
    if os.path.isdir(path):
        # A directory has no one digest; its identity is what the record can name.
        facts.update(kind="dir", sha256=None, sif=None)
    elif _is_sif(path):
        facts.update(kind="sif", sha256=None, sif=_sif_facts(path))
    else:
        facts.update(kind="squashfs", sha256=sha256_file(path), sif=None)
    return facts
