"""What an OCI image is made of, as far as building a SIF needs: descriptors, the chosen
manifest's layers and the image config."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO, Any

from shim.errors import ImageError, shown
from shim.oci import digest as digests

MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
REF_NAME = "org.opencontainers.image.ref.name"
MAX_JSON = 4 << 20  # manifests and configs are KiB; refuse a planted giant before parsing it


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str                 # "sha256:..." of the stored bytes, checked (shim.oci.digest); "" when unknown
    size: int                   # -1 when unknown
    platform: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    member: str = ""            # a legacy `docker save` archive's member holding it (shim's own, never from JSON)

    @property
    def what(self) -> str:
        """How errors name this blob."""
        return self.digest[:19] if self.digest else shown(self.member or "blob", 60)


@dataclass(frozen=True)
class Layer:
    blob: Descriptor
    diff_id: str                # sha256 of the uncompressed tar, from the config's rootfs.diff_ids
    index: int                  # 1-based, bottom first: how messages name it


# Opens a blob as a stream that checks its digest and size as it is read.
BlobOpener = Callable[[Descriptor], AbstractContextManager[IO[bytes]]]


@dataclass(frozen=True)
class ResolvedImage:
    """One image (one platform) of a source, ready to flatten."""

    source: str                 # the reference as given, normalised
    manifest_digest: str        # "" for a legacy docker-archive (no manifest blob)
    config: dict[str, Any]
    config_digest: str
    layers: tuple[Layer, ...]
    open_blob: BlobOpener

    @property
    def arch(self) -> str:
        return str(self.config.get("architecture", ""))


def descriptor(obj: Any, where: str) -> Descriptor:
    """A descriptor from its JSON; ImageError naming `where` when it is not one."""
    if not isinstance(obj, dict):
        raise ImageError(f"{where}: a descriptor is not a JSON object")
    digest, size, media = obj.get("digest"), obj.get("size"), obj.get("mediaType", "")
    digests.check(digest, f"{where} digest")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 63:
        raise ImageError(f"{where}: descriptor size {shown(size, 40)} is not a byte count")
    platform = obj.get("platform") if isinstance(obj.get("platform"), dict) else {}
    annotations = obj.get("annotations") if isinstance(obj.get("annotations"), dict) else {}
    return Descriptor(str(media), str(digest), size, {str(k): str(v) for k, v in platform.items()},
                      {str(k): str(v) for k, v in annotations.items()})


def parse_json(data: bytes, where: str) -> dict[str, Any]:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise ImageError(f"{where} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ImageError(f"{where} is not a JSON object")
    return obj
