"""Open an image given on the command line: a SIF file, a bare squashfs file, a legacy Singularity 2
image (squashfs behind a launch line: shim.image.legacy), or a directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shim.errors import ImageError
from shim.image.handle import OpenedImage, open_image_file
from shim.image.legacy import HEAD_BYTES, legacy_image
from shim.image.legacy import KIND as LEGACY_KIND

SIF_MAGIC_OFFSET = 32
SIF_MAGIC = b"SIF_MAGIC\0"
SQUASHFS_MAGIC = b"hsqs"


@dataclass(frozen=True)
class ImageRef:
    """Where the container's root filesystem comes from."""

    path: str
    kind: str            # "squashfs" (SIF partition or bare squashfs file) or "dir"
    offset: int = 0      # byte offset of the squashfs inside the file
    size: int = 0        # bytes of the squashfs
    arch: str = "unknown"  # Go-style name (amd64, arm64, ...)
    image_id: str | None = None
    # the OCI image config of an image built from an OCI source (its Env, Entrypoint, Cmd, WorkingDir)
    oci_config: dict[str, Any] | None = field(default=None, compare=False)
    # the image opened once: everything after locating it reads this descriptor, never the path
    opened: OpenedImage | None = field(default=None, compare=False)
    # what the file is, when its offset alone does not say: "simg" (a squashfs behind a legacy
    # Singularity 2 launch line); "" for a SIF (offset > 0), a bare squashfs (0) or a directory
    format: str = ""

    @property
    def via(self) -> str:
        """The path to read the image (or, for a directory, its contents) by: through the opened
        descriptor when there is one."""
        return self.opened.via if self.opened is not None else self.path


def image_kind(image: ImageRef) -> str:
    """sif, squashfs (a bare squashfs file), simg (a legacy Singularity 2 image) or dir."""
    if image.kind == "dir":
        return "dir"
    if image.format:
        return image.format
    return "sif" if image.offset else "squashfs"  # a SIF's partition follows its header; a bare one is at 0


def open_image(path: str) -> ImageRef:
    """The image, located and its squashfs checked (ImageError: not one shim can mount)."""
    image = locate_image(path)
    check_squashfs(image)
    return image


def check_squashfs(image: ImageRef) -> None:
    if image.kind != "dir":
        from shim.image.squashfs import read_superblock

        if image.opened is None:
            read_superblock(image.path, image.offset, image.size)
            return
        with image.opened.reader() as f:
            try:
                read_superblock(f, image.offset, image.size)
            except OSError as e:
                raise ImageError(f"cannot read image {image.path}: {e.strerror}", "check its permissions") from None


def locate_image(path: str, handed_fd: int | None = None) -> ImageRef:
    """What the image is and where its root filesystem lies, from the SIF's header and descriptors
    alone: enough for the site's image policy, which judges an image before its file system is
    read. The image is opened once (shim.image.handle): what is located, judged and mounted is
    that one file, whatever happens to `path` meanwhile."""
    return locate_opened(open_image_file(path, handed_fd))


def locate_opened(opened: OpenedImage) -> ImageRef:
    from shim.image import arch as archmod

    real = opened.path
    if opened.is_dir:
        return ImageRef(real, "dir", arch=archmod.arch_of_rootfs(opened.via) or "unknown", opened=opened)
    try:
        with opened.reader() as f:
            head = f.read(HEAD_BYTES)
            if head[:4] == SQUASHFS_MAGIC:
                return ImageRef(real, "squashfs", 0, opened.st.st_size, opened=opened)
            if head[SIF_MAGIC_OFFSET:SIF_MAGIC_OFFSET + len(SIF_MAGIC)] != SIF_MAGIC:
                legacy = legacy_image(head, opened.given)
                if legacy is not None:
                    return ImageRef(real, "squashfs", legacy.offset, opened.st.st_size - legacy.offset,
                                    opened=opened, format=LEGACY_KIND)
                raise ImageError(f"{opened.given} is not a SIF image, a squashfs file or a directory",
                                 "build one with 'shimrun build OUT.sif ROOTFS'")
            from shim.image.sif import oci_config, primary_partition, read_sif_file

            f.seek(0)
            sif = read_sif_file(f, real)
    except OSError as e:
        raise ImageError(f"cannot read image {opened.given}: {e.strerror}", "check its permissions") from None
    part = primary_partition(sif)
    return ImageRef(real, "squashfs", part.offset, part.size, part.arch or "unknown",
                    str(sif.header.id) if sif.header.id else None, oci_config(sif), opened)
