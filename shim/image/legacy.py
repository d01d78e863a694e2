"""Legacy Singularity 2 images: a launch script line naming `run-singularity` (Singularity 2.4 to
2.6 wrote "#!/usr/bin/env run-singularity\\n"), then a file system starting right after its newline.

A `.simg` holds squashfs there: it is served exactly as a bare squashfs file, at that offset (the
offset travels in the launch record like a SIF partition's: squashfuse `-o offset=`, unsquashfs
`-o`), and the site's image policy judges it as one (unsigned, not a SIF). An older `.img` holds
ext3 there, which no unprivileged mount can serve: it is refused with one line saying so.

Rules (strict, on the bytes read from the opened descriptor, never on the name):
- the file starts with "#!" and its first line ends within HEADER_LIMIT bytes, newline included;
  a longer line is refused, never searched further;
- that line names `run-singularity` (the launcher Singularity 2 installed);
- squashfs's magic 'hsqs' (or ext3's superblock magic) sits exactly after the newline.
A SIF begins with such a line too (its 32-byte launch field): its SIF_MAGIC at offset 32 is
checked first (shim.image.open), so a SIF is never taken for a legacy image.
Non-goals: Singularity 2's writable ext3 images, overlay partitions, image "append"."""

from __future__ import annotations

from dataclasses import dataclass

from shim.errors import ImageError

HEADER_LIMIT = 4096          # bytes of the launch line, its newline included
LAUNCHER = b"run-singularity"
SQUASHFS_MAGIC = b"hsqs"
EXT_MAGIC_AT = 1024 + 56     # ext2/3/4: the superblock 1 KiB into the file system, its magic 56 bytes in
EXT_MAGIC = b"\x53\xef"      # 0xEF53, little-endian
HEAD_BYTES = HEADER_LIMIT + EXT_MAGIC_AT + len(EXT_MAGIC)  # enough to tell every case apart
KIND = "simg"                # its kind, as image_kind() and the site's image policy name it
DESCRIPTION = "legacy Singularity image"


@dataclass(frozen=True)
class LegacyImage:
    offset: int   # where the squashfs starts: just after the launch line


def launch_line_end(head: bytes) -> int | None:
    """The offset just past a Singularity launch line that `head` (the file's first HEAD_BYTES)
    begins with; None when it begins with none (not a legacy image: the caller says what it is).
    A "#!" line naming run-singularity without a newline within HEADER_LIMIT bytes is refused."""
    if not head.startswith(b"#!"):
        return None
    end = head.find(b"\n", 0, HEADER_LIMIT)
    if end < 0:
        if LAUNCHER in head[:HEADER_LIMIT]:
            raise ImageError(f"its launch script line is longer than {HEADER_LIMIT} bytes, more than a legacy "
                             "Singularity image has", "the image is corrupt: fetch or rebuild it")
        return None
    return end + 1 if LAUNCHER in head[:end] else None


def legacy_image(head: bytes, given: str) -> LegacyImage | None:
    """The squashfs behind a legacy launch line, or None when `head` has no such line; ImageError
    for a line followed by ext3 (a Singularity 2 .img) or by nothing shim can read."""
    try:
        offset = launch_line_end(head)
    except ImageError as e:
        raise ImageError(f"{given}: {e.message}", e.hint) from None
    if offset is None:
        return None
    if head[offset:offset + len(SQUASHFS_MAGIC)] == SQUASHFS_MAGIC:
        return LegacyImage(offset)
    if head[offset + EXT_MAGIC_AT:offset + EXT_MAGIC_AT + len(EXT_MAGIC)] == EXT_MAGIC:
        raise ImageError(f"{given} is a Singularity 2 ext3 image (.img), which shim cannot mount without "
                         "privileges: only squashfs images (SIF, .simg, a squashfs file) or directories run",
                         f"convert it once where Singularity or Apptainer runs: apptainer build OUT.sif {given}")
    raise ImageError(f"{given} begins with a Singularity launch line but neither a SIF header (SIF_MAGIC at "
                     f"offset 32) nor a squashfs file system (at offset {offset}) follows it",
                     "the image is corrupt or cut short: fetch or rebuild it")
