"""`shimrun pull [--force] [--name NAME] [OUT.sif] SOURCE`: an OCI/Docker image to a SIF, as
`apptainer pull` does (default name NAME_TAG.sif; an existing file is kept unless --force)."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from shim.errors import ExitCode, ShimError, UsageError


def add_source_options(p: argparse.ArgumentParser) -> None:
    """What `build` and `pull` share for OCI sources."""
    p.add_argument("--arch", metavar="ARCH", help="the platform's architecture to take from an index "
                   "(amd64, arm64, ...); default: this host's")
    p.add_argument("--no-https", "--nohttps", dest="no_https", action="store_true",
                   help="talk plain HTTP to the registry (a local or test registry)")
    p.add_argument("--ca-file", metavar="PEM", default="", help="also trust this CA certificate for the registry")
    p.add_argument("--authfile", metavar="FILE", default="", help="credentials file (Docker/Podman auth.json); "
                   "default: $REGISTRY_AUTH_FILE, else ~/.docker/config.json")
    p.add_argument("--max-size", metavar="SIZE", default=os.environ.get("SHIMRUN_PULL_MAX_SIZE", "256G"),
                   help="refuse an image whose layers expand past SIZE (default 256G; SHIMRUN_PULL_MAX_SIZE)")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only (no progress, no result line)")


def register(subparsers: argparse._SubParsersAction) -> None:
    from shim.image.build import COMPRESSIONS

    p = subparsers.add_parser(
        "pull", help="pull an OCI/Docker image into a SIF",
        description="Pull SOURCE (docker://NAME[:TAG|@DIGEST], docker-archive:FILE, oci-archive:FILE[:TAG], "
                    "oci:DIR[:TAG]) and write it as a SIF: OUT.sif, or NAME_TAG.sif in the current directory.")
    p.add_argument("paths", nargs="+", metavar="[OUT.sif] SOURCE")
    p.add_argument("--force", "-F", action="store_true", help="replace an existing OUT.sif")
    p.add_argument("--name", metavar="NAME", help="the file to write (instead of NAME_TAG.sif)")
    p.add_argument("--compression", choices=COMPRESSIONS, default="zstd", help="squashfs compression")
    p.add_argument("--deterministic", action="store_true",
                   help="reproducible image: the same digest gives a byte-identical SIF")
    add_source_options(p)
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=main)


def options(args: argparse.Namespace):
    from shim.oci.auth import RegistryOptions
    from shim.oci.blobs import parse_size
    from shim.oci.flatten import DEFAULT_MAX_ENTRIES
    from shim.oci.pull import PullOptions
    from shim.oci.transport import Limits
    from shim.site.config import load_site_config

    return PullOptions(arch=args.arch or "", compression=args.compression, deterministic=args.deterministic,
                       max_size=parse_size(args.max_size, "--max-size"),
                       max_entries=load_site_config().pull_max_entries or DEFAULT_MAX_ENTRIES,
                       registry=RegistryOptions(no_https=args.no_https, ca_file=args.ca_file, authfile=args.authfile),
                       limits=Limits.from_env())


def terminate_cleanly() -> None:
    """SIGTERM (a job's time limit, scancel) unwinds like ^C: temporary files and helpers go."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))


def pull_to(out: str, source_text: str, args: argparse.Namespace) -> int:
    from shim.oci import reference
    from shim.oci.progress import Progress
    from shim.oci.pull import build_from_source

    source = reference.parse(source_text)
    terminate_cleanly()
    progress = Progress(quiet=args.quiet)
    pulled = build_from_source(out, source, options(args), progress)
    digest = f", {pulled.manifest_digest}" if pulled.manifest_digest else ""
    progress.result(f"wrote {out} ({pulled.arch}{digest}, {os.path.getsize(out)} bytes)")
    return 0


def main(args: argparse.Namespace) -> int:
    from shim.oci import reference

    if len(args.paths) > 2:
        raise UsageError("pull takes [OUT.sif] SOURCE", "usage: shimrun pull [--force] [--name NAME] [OUT.sif] SOURCE")
    source_text = args.paths[-1]
    if not reference.is_source(source_text):
        raise UsageError(f"{source_text!r} is not an image source",
                         "use docker://NAME[:TAG], docker-archive:FILE, oci-archive:FILE[:TAG] or oci:DIR[:TAG]")
    out = args.paths[0] if len(args.paths) == 2 else args.name or reference.parse(source_text).default_name
    if os.path.lexists(out) and not args.force:
        raise ShimError(ExitCode.USAGE, f"{out} already exists", "pass --force to replace it, or --name another")
    if os.path.isdir(out):
        raise UsageError(f"{out} is a directory", "give the SIF file to write")
    return pull_to(out, source_text, args)
