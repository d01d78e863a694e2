"""From an index or manifest to one image: the platform's manifest, its config and layers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shim.errors import ExitCode, ImageError, ShimError, listed, shown
from shim.image import arch as archmod
from shim.oci import digest as digests
from shim.oci.configcheck import check_config
from shim.oci.model import INDEX_TYPES, MANIFEST_TYPES, Descriptor, Layer, descriptor, parse_json

FetchJson = Callable[[Descriptor], bytes]  # a manifest or config blob's verified bytes


def platform_name(p: dict[str, str]) -> str:
    name = f"{p.get('os', '?')}/{p.get('architecture', '?')}"
    return name + (f"/{p['variant']}" if p.get("variant") else "")


def choose_platform(index: dict[str, Any], where: str, arch: str) -> Descriptor:
    """The manifest for linux/ARCH in an image index; a one-line error listing what it has."""
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise ImageError(f"{where}: the image index lists no manifests")
    return pick_platform([descriptor(m, f"{where} manifests[{i}]") for i, m in enumerate(manifests)], where, arch)


def pick_platform(descs: list[Descriptor], where: str, arch: str) -> Descriptor:
    """The descriptor for linux/ARCH among one image's per-platform manifests; else a one-line
    error naming the platforms there are (escaped, the list cut with a count)."""
    # Attestations (buildx's "unknown/unknown" entries) are not images to run.
    images = [d for d in descs if d.platform.get("os") != "unknown"]
    for d in images:
        linux = d.platform.get("os", "linux") == "linux"
        if linux and archmod.normalize_arch(d.platform.get("architecture", "")) == arch:
            return d
    have = listed(dict.fromkeys(platform_name(d.platform) for d in images)) or "none"
    raise ShimError(ExitCode.ARCH, f"{where} has no image for linux/{arch}; it has: {have}",
                    "choose one with --arch ARCH, or pull on a node of that architecture")


def resolve_manifest(top: Descriptor, fetch: FetchJson, where: str, arch: str) -> tuple[Descriptor, dict[str, Any]]:
    """Follow an index (at most two levels: an index may point at an index) to the manifest."""
    desc = top
    for _ in range(3):
        doc = parse_json(fetch(desc), f"{where} {desc.what}")
        media = doc.get("mediaType") or desc.media_type
        if media in INDEX_TYPES or (not media and "manifests" in doc):
            desc = choose_platform(doc, where, arch)
            continue
        if media in MANIFEST_TYPES or (not media and "layers" in doc):
            return desc, doc
        if media == "application/vnd.docker.distribution.manifest.v1+prettyjws" or doc.get("schemaVersion") == 1:
            raise ImageError(f"{where}: a Docker schema 1 manifest (deprecated since 2019) is not supported",
                             "push the image again with a current Docker or skopeo")
        raise ImageError(f"{where}: unknown manifest type {shown(media, 80)}")
    raise ImageError(f"{where}: image indexes nested too deep")


def config_and_layers(manifest: dict[str, Any], fetch: FetchJson,
                      where: str) -> tuple[Descriptor, dict[str, Any], tuple[Layer, ...]]:
    config_desc = descriptor(manifest.get("config"), f"{where} config")
    config = checked_config(fetch(config_desc), where)
    raw_layers = manifest.get("layers")
    if not isinstance(raw_layers, list):
        raise ImageError(f"{where}: the manifest has no layer list")
    layer_descs = [descriptor(x, f"{where} layers[{i}]") for i, x in enumerate(raw_layers)]
    return config_desc, config, layers_with_diff_ids(layer_descs, config, where)


def checked_config(data: bytes, where: str) -> dict[str, Any]:
    """An image config's JSON, its values checked for what a launch does with them."""
    config = parse_json(data, f"{where} config")
    check_config(config, where)
    return config


def layers_with_diff_ids(descs: list[Descriptor], config: dict[str, Any], where: str) -> tuple[Layer, ...]:
    rootfs = config.get("rootfs") if isinstance(config.get("rootfs"), dict) else {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs.get("diff_ids"), list) else []
    # Non-distributable / foreign layers are not in the image to fetch; neither is an empty list.
    if len(diff_ids) != len(descs):
        raise ImageError(f"{where}: the manifest has {len(descs)} layers but the config {len(diff_ids)} diff_ids",
                         "the image is inconsistent; rebuild or push it again")
    for i, d in enumerate(diff_ids):
        digests.check(d, f"{where}: config rootfs.diff_ids[{i}]")
    return tuple(Layer(desc, diff, i + 1) for i, (desc, diff) in enumerate(zip(descs, diff_ids, strict=True)))
