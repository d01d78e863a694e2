"""Step 1 of planning: the image, opened once (or as the front-end opened it), and what a later
launch checks of it; then whether it can run on this node at all."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from shim.diagnose.preflight import check_arch
from shim.image.open import ImageRef, check_squashfs, locate_image
from shim.pipeline.inputs import image_inputs
from shim.record.model import Input


class OpenedImage(NamedTuple):
    image: ImageRef                 # everything after this step reads image.opened, never the path
    inputs: tuple[Input, ...]       # the image's identity, as the executor checks it again


def open_image(given: str, handed_fd: int | None) -> OpenedImage:
    """Where the image is and what it is; its file system is read only after the site's policy."""
    image = locate_image(given, handed_fd)
    return OpenedImage(image, tuple(image_inputs(image.path, image.kind, image.opened.st)))


def check_runnable(image: ImageRef, env: Mapping[str, str], dry_run: bool) -> None:
    """A damaged squashfs or another architecture stops the launch (exit 66) before anything is
    mounted; a dry run reports the architecture in its plan instead."""
    check_squashfs(image)
    check_arch(image, env, fatal=not dry_run)
