"""`shimrun build OUT.sif SOURCE`: pack a root filesystem directory or tarball (mmdebstrap's
output, for instance) into a SIF that shimrun, Apptainer and SingularityCE can all run."""

from __future__ import annotations

import argparse
import os
import sys

from shim.cli.pull_cmd import add_source_options, pull_to
from shim.image.build import COMPRESSIONS, build_sif


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
    add_source_options(p)  # --arch: of a rootfs (default: read from its /bin/sh), or the platform to take
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=main)


def _say(msg: str) -> None:
    print(f"shimrun: {msg}", file=sys.stderr, flush=True)


def main(args: argparse.Namespace) -> int:
    from shim.oci.reference import is_source

    if is_source(args.source):
        return pull_to(args.out, args.source, args)
    arch = build_sif(args.out, args.source, compression=args.compression,
                     deterministic=args.deterministic, progress=_say, arch=args.arch)
    _say(f"wrote {args.out} ({arch}, {os.path.getsize(args.out)} bytes)")
    return 0


if __name__ == "__main__":
    from shim.cli.main import main as shimrun

    sys.exit(shimrun(["build", *sys.argv[1:]]))
