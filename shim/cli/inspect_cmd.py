"""`shimrun inspect IMAGE [--json]`: show a SIF's header and objects, as `siftool header` and
`siftool list` lay them out, or everything as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from shim.image.sif import SifDescriptor, SifImage, read_sif, sbom_objects, sif_to_dict

RULE = "-" * 78
LIST_ROW = "{:<5}|{:<8}|{:<8}|{:<26}|{}"
_SIZE_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("inspect", help="show a SIF image's header and objects",
                              description="Show a SIF image's header and data objects.")
    p.add_argument("image", metavar="IMAGE", help="SIF file (or, with the Apptainer metadata options, a squashfs "
                   "file or a directory)")
    p.add_argument("--json", "-j", action="store_true", help="print everything as JSON")
    p.add_argument("--format", choices=("shim", "apptainer"), default="shim",
                   help="apptainer: `apptainer inspect`'s output (JSON: data.attributes)")
    for flag, short, what in _APPTAINER_PARTS:
        p.add_argument(flag, short, dest=flag[2:], action="store_true", help=f"show the image's {what}")
    p.add_argument("--all", action="store_true", help="all of the above")
    p.add_argument("--sbom", action="store_true", help="print the image's SBOM (software bill of materials) object")
    p.add_argument("--sbom-id", type=int, metavar="ID", help="with --sbom: which one, when the image has several")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=main)


def oci_origin(img: SifImage) -> dict[str, object] | None:
    """Where an image built from OCI came from: its source, manifest digest, labels, runscript."""
    from shim.image.sif import oci_config, sif_labels
    from shim.oci.config import DIGEST_LABEL, SOURCE_LABEL, runscript_words, working_dir

    config = oci_config(img)
    if config is None:
        return None
    labels = sif_labels(img)
    entrypoint, cmd = runscript_words(config)
    return {"source": labels.get(SOURCE_LABEL, ""), "manifest_digest": labels.get(DIGEST_LABEL, ""),
            "labels": labels, "entrypoint": list(entrypoint), "cmd": list(cmd), "working_dir": working_dir(config)}


_APPTAINER_PARTS = (("--labels", "-l", "labels"), ("--runscript", "-r", "runscript"),
                    ("--environment", "-e", "environment scripts"), ("--deffile", "-d", "definition file"),
                    ("--helpfile", "-H", "runscript help"), ("--test", "-t", "test script"))


def apptainer_view(args: argparse.Namespace) -> str:
    """What `apptainer inspect` prints for these options (labels when none is given)."""
    from shim.image.metadata import read_metadata

    meta = read_metadata(args.image)
    parts = [flag[2:] for flag, _, _ in _APPTAINER_PARTS if args.all or getattr(args, flag[2:])] or ["labels"]
    if args.json:
        attributes: dict[str, object] = {}
        for part in parts:
            if part == "environment":
                attributes[part] = "\n".join(f"=== {path} ===\n{text}" for path, text in meta.environment)
            else:
                attributes[part] = getattr(meta, part)
        return json.dumps({"data": {"attributes": attributes, "type": "container"}, "type": "container"},
                          indent=4) + "\n"
    out = []
    for part in parts:
        if part == "labels":
            out += [f"{k}: {v}\n" for k, v in sorted(meta.labels.items())]
        elif part == "environment":
            out += [f"=== {path} ===\n{text}" + ("" if text.endswith("\n") else "\n")
                    for path, text in meta.environment]
        else:
            text = getattr(meta, part)
            out.append(text + ("" if not text or text.endswith("\n") else "\n"))
    return "".join(out)


def main(args: argparse.Namespace) -> int:
    if args.format == "apptainer" or args.all or any(getattr(args, f[2:]) for f, _, _ in _APPTAINER_PARTS):
        sys.stdout.write(apptainer_view(args))
        return 0
    if not_a_sif(args):
        return 0
    img = read_sif(args.image)
    if args.sbom or args.sbom_id is not None:
        return print_sbom(img, args.sbom_id)
    origin = oci_origin(img)
    if args.json:
        doc = sif_to_dict(img)
        if origin is not None:
            doc["oci"] = origin
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_header(img) + "\n" + format_list(img))
        sboms = sbom_objects(img)
        for sbom in sboms:
            which = f" --sbom-id {sbom['id']}" if len(sboms) > 1 else ""
            sys.stdout.write(f"\nSBOM: object {sbom['id']}, {sbom['format']}, {format_size(sbom['size'])} "
                             f"(shimrun inspect --sbom{which} {args.image} prints it)\n")
        if origin is not None:
            sys.stdout.write(format_origin(origin))
    return 0


def format_origin(origin: dict[str, object]) -> str:
    """Where an OCI image came from, as far as the SIF says: shim's labels name the source and the
    manifest digest; an image another tool built from OCI (Apptainer) has its config only."""
    source, digest = origin["source"], origin["manifest_digest"]
    if not source:
        source = "not recorded (an image shim did not pull)"
        digest = "not recorded"
    elif not digest:
        digest = "none (a docker save archive has none)"
    return (f"\nOCI source:           {source}\nManifest digest:      {digest}\n"
            f"Entrypoint / Cmd:     {origin['entrypoint']} / {origin['cmd']}\n")


def not_a_sif(args: argparse.Namespace) -> bool:
    """A directory (sandbox), a bare squashfs file or a legacy Singularity 2 image: what it is, and
    where its metadata is shown (it has no SIF header or objects); False for anything else (read as
    a SIF, which says why it is not one)."""
    import os

    from shim.errors import ImageError
    from shim.image.legacy import HEAD_BYTES
    from shim.image.open import SIF_MAGIC, SIF_MAGIC_OFFSET, SQUASHFS_MAGIC, image_kind, locate_image
    from shim.image.squashfs import read_superblock

    if not os.path.isdir(args.image):
        head = _head(args.image, HEAD_BYTES)
        legacy = head[SIF_MAGIC_OFFSET:SIF_MAGIC_OFFSET + len(SIF_MAGIC)] != SIF_MAGIC and _launch_line(head)
        if not head.startswith(SQUASHFS_MAGIC) and not legacy:
            return False
    image = locate_image(args.image)
    kind = image_kind(image)
    what = {"dir": "directory", "simg": "legacy Singularity image"}.get(kind, "squashfs file")
    if args.sbom or args.sbom_id is not None:
        raise ImageError(f"{args.image} is a {what}: only a SIF carries SBOM objects",
                         "build a SIF with shimrun build OUT.sif SOURCE --sbom FILE")
    doc: dict[str, object] = {"path": args.image, "kind": kind, "arch": image.arch}
    described = {"dir": "directory (a sandbox): no SIF header or objects",
                 "simg": f"legacy Singularity image (squashfs at offset {image.offset}): no SIF header or objects"}
    rows = [("Image:", args.image), ("Kind:", described.get(kind, "squashfs file: no SIF header or objects"))]
    if image.arch != "unknown":
        rows.append(("Architecture:", image.arch))
    if kind != "dir":
        with image.opened.reader() as f:
            sb = read_superblock(f, image.offset, image.size)
        doc["offset"] = image.offset
        doc["squashfs"] = {"compression": sb.compression, "block_size": sb.block_size, "bytes": sb.bytes_used,
                           "inodes": sb.inode_count, "created_at": sb.mkfs_time}
        summary = (f"{sb.compression}, {format_size(sb.bytes_used)}, {sb.inode_count} inodes, "
                   f"{format_size(sb.block_size)} blocks")
        rows += [("Squashfs:", summary), ("Created At:", format_time(sb.mkfs_time))]
    rows.append(("Metadata:", f"shimrun inspect --labels|--runscript|--environment|--all {args.image}"))
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write("".join(f"{label:<22}{value}\n" for label, value in rows))
    return True


def _launch_line(head: bytes) -> bool:
    """Whether `head` begins with a legacy Singularity launch line (one too long counts: opening
    the image then says why it is refused)."""
    from shim.errors import ImageError
    from shim.image.legacy import launch_line_end

    try:
        return launch_line_end(head) is not None
    except ImageError:
        return True


def _head(path: str, size: int) -> bytes:
    from shim.errors import ImageError
    from shim.image.regular import open_regular

    try:
        with open_regular(path) as f:  # never blocks on a FIFO
            return f.read(size)
    except (ImageError, OSError):
        return b""  # read_sif says why


def print_sbom(img: SifImage, wanted: int | None) -> int:
    """The SBOM's bytes as stored, to stdout (a pipe to a scanner: nothing else is printed there)."""
    from shim.errors import UsageError
    from shim.image.sif import read_object

    found = sbom_objects(img)
    if wanted is not None:
        found = [s for s in found if s["id"] == wanted]
    if not found:
        what = f"no SBOM object {wanted}" if wanted is not None else "no SBOM object"
        raise UsageError(f"{img.path} has {what}", "shimrun inspect IMAGE lists its objects; an SBOM is added with "
                         "shimrun build --sbom FILE")
    if len(found) > 1:
        ids = ", ".join(str(s["id"]) for s in found)
        raise UsageError(f"{img.path} has several SBOM objects ({ids})", "choose one with --sbom-id ID")
    d = img.descriptor(found[0]["id"])
    sys.stdout.buffer.write(read_object(img, d, limit=1 << 30))
    sys.stdout.flush()
    return 0


def format_size(n: int) -> str:
    """siftool's sizes: the largest IEC unit not above n, rounded half up ("27 KiB")."""
    unit, value = 0, float(n)
    while value >= 1024 and unit < len(_SIZE_UNITS) - 1:
        value /= 1024
        unit += 1
    return f"{int(value + 0.5)} {_SIZE_UNITS[unit]}"


def format_time(t: int) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S +0000 UTC")
    except (ValueError, OverflowError, OSError):  # a damaged header: a time no calendar holds
        return f"{t} (seconds since 1970: out of range)"


def format_header(img: SifImage) -> str:
    """Header fields, unset ones (no launch script, unknown arch, nil ID, zero time) left out."""
    h = img.header
    rows: list[tuple[str, str]] = []
    if h.launch_script:
        rows.append(("Launch Script:", h.launch_script.rstrip("\n")))
    rows.append(("Version:", h.version))
    if h.arch_code != "00":
        rows.append(("Primary Architecture:", h.arch))
    if h.id:
        rows.append(("ID:", str(h.id)))
    if h.created_at is not None:
        rows.append(("Created At:", format_time(h.created_at)))
    if h.modified_at is not None:
        rows.append(("Modified At:", format_time(h.modified_at)))
    rows += [
        ("Descriptors Free:", str(h.descriptors_free)),
        ("Descriptors Total:", str(h.descriptors_total)),
        ("Descriptors Offset:", str(h.descriptors_offset)),
        ("Descriptors Size:", format_size(h.descriptors_size)),
        ("Data Offset:", str(h.data_offset)),
        ("Data Size:", format_size(h.data_size)),
    ]
    width = max(len(label) for label, _ in rows) + 1
    return "".join(f"{label:<{width}}{value}\n" for label, value in rows)


def type_label(d: SifDescriptor) -> str:
    """The TYPE column: the data type, plus what its extra says for the kinds siftool expands."""
    if d.fstype is not None:
        part = "*System" if d.is_primary else d.parttype
        return f"{d.type_name} ({d.fstype}/{part}/{d.arch})"
    if d.hash_type is not None:
        return f"{d.type_name} ({d.hash_type})"
    if d.crypto_format is not None:
        return f"{d.type_name} ({d.crypto_format}/{d.crypto_message})"
    if d.sbom_format is not None:
        return f"{d.type_name} ({d.sbom_format})"
    return d.type_name


def format_list(img: SifImage) -> str:
    lines = [RULE, LIST_ROW.format("ID", "GROUP", "LINK", "SIF POSITION (start-end)", "TYPE"),
             RULE]
    for d in img.descriptors:
        group = str(d.group) if d.group is not None else "NONE"
        if d.link is None:
            link = "NONE"
        elif d.link[0] == "group":
            link = f"{d.link[1]} (G)"
        else:
            link = str(d.link[1])
        lines.append(LIST_ROW.format(d.id, group, link, f"{d.offset}-{d.end}", type_label(d)))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    from shim.cli.main import main as shimrun

    sys.exit(shimrun(["inspect", *sys.argv[1:]]))
