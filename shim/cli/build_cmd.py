"""`shimrun build OUT.sif SOURCE`: pack a root filesystem directory or tarball (mmdebstrap's
output, for instance) into a SIF that shimrun, Apptainer and SingularityCE can all run."""

from __future__ import annotations

import argparse
import os
import sys

from shim.cli.pull_cmd import add_source_options, pull_to
from shim.errors import UsageError
from shim.image.build import COMPRESSIONS, build_sif
from shim.image.sif import DATA_SBOM, SBOM_FORMATS
from shim.image.sif_write import SifObject


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "build", help="build a SIF from a root filesystem directory or tarball",
        description="Build OUT.sif from SOURCE, a root filesystem directory or a tarball "
                    "(.tar, .tar.gz, .tar.xz, .tar.zst, ...), or an OCI/Docker image: docker://NAME[:TAG], "
                    "docker-archive:FILE, oci-archive:FILE[:TAG], oci:DIR[:TAG]. Needs mksquashfs (squashfs-tools).")
    p.add_argument("out", metavar="OUT.sif", help="image to write (replaced atomically)")
    p.add_argument("source", metavar="SOURCE", help="root filesystem directory or tarball, or an OCI source")
    p.add_argument("--compression", choices=COMPRESSIONS, default="zstd",
                   help="squashfs compression (default: zstd; gzip for very old runtimes)")
    p.add_argument("--deterministic", action="store_true",
                   help="reproducible image: nil ID, unset times, no launch script, file times "
                        "SOURCE_DATE_EPOCH (default 0)")
    p.add_argument("--sbom", metavar="FILE[:FORMAT]", action="append", default=[],
                   help="store FILE in the image as its SBOM (repeatable); FORMAT one of " + ", ".join(
                       SBOM_FORMATS.values()) + " (default: told from the file)")
    add_source_options(p)  # --arch: of a rootfs (default: read from its /bin/sh), or the platform to take
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=main)


def sbom_object(spec: str) -> SifObject:
    """An SBOM object from FILE[:FORMAT]: the format named, or told from the document itself."""
    import struct

    head, _, tail = spec.rpartition(":")
    path, fmt = (head, tail) if head and tail in SBOM_FORMATS.values() else (spec, "")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UsageError(f"--sbom: cannot read {path}: {e.strerror}", "give an SBOM file (CycloneDX or SPDX)") from None
    fmt = fmt or sniff_sbom_format(data)
    if not fmt:
        raise UsageError(f"--sbom: cannot tell the format of {path}",
                         f"name it: --sbom {path}:FORMAT, FORMAT one of {', '.join(SBOM_FORMATS.values())}")
    code = next(c for c, name in SBOM_FORMATS.items() if name == fmt)
    return SifObject(DATA_SBOM, os.path.basename(path), data, struct.pack("<i", code))


def sniff_sbom_format(data: bytes) -> str | None:
    """cyclonedx-json, spdx-json, syft-json, cyclonedx-xml or spdx-tag-value, from the document."""
    import json

    head = data[:4096].lstrip()
    if head.startswith(b"{"):
        try:
            doc = json.loads(data)
        except (ValueError, RecursionError):
            return None
        if isinstance(doc, dict):
            if doc.get("bomFormat") == "CycloneDX":
                return "cyclonedx-json"
            if "spdxVersion" in doc:
                return "spdx-json"
            if "artifacts" in doc and "source" in doc:
                return "syft-json"
        return None
    if head.startswith(b"<") and b"cyclonedx" in head:
        return "cyclonedx-xml"
    if head.startswith(b"SPDXVersion:"):
        return "spdx-tag-value"
    return None


def main(args: argparse.Namespace) -> int:
    from shim.oci.reference import is_source

    if is_source(args.source):
        if args.sbom:
            raise UsageError("--sbom is for a build from a root filesystem",
                             "build the OCI image to a SIF first, or give its root filesystem")
        return pull_to(args.out, args.source, args)
    from shim.oci.progress import Progress

    objects = tuple(sbom_object(s) for s in args.sbom)
    progress = Progress(quiet=args.quiet)
    arch = build_sif(args.out, args.source, compression=args.compression, deterministic=args.deterministic,
                     progress=progress.reporter(), arch=args.arch, objects=objects)
    progress.result(f"wrote {args.out} ({arch}, {os.path.getsize(args.out)} bytes)")
    return 0


if __name__ == "__main__":
    from shim.cli.main import main as shimrun

    sys.exit(shimrun(["build", *sys.argv[1:]]))
