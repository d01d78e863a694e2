"""Checks made before any namespace is entered, so failures are one clear line."""

from __future__ import annotations

from shim.errors import ExitCode, ShimError
from shim.image.open import ImageRef


def check_arch(image: ImageRef) -> None:
    from shim.image.arch import host_arch

    host = host_arch()
    if image.arch not in ("unknown", "", host):
        raise ShimError(ExitCode.ARCH, f"the image's architecture ({image.arch}) cannot run on this host's ({host}): "
                        f"{image.path}", f"use an image built for {host}")
