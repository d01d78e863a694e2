"""From an OCI/Docker source to a SIF: resolve the image for this platform, fetch its blobs into
the blob cache (docker://) or read them in place (archives, layouts), flatten the layers into one
tar stream, squash it, and store the image config beside the partition."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING

from shim.errors import ImageError
from shim.image import arch as archmod
from shim.image.sif import DATA_GENERIC_JSON, DATA_LABELS, OCI_CONFIG_NAME
from shim.image.sif_write import SifObject
from shim.oci import digest as digests
from shim.oci.auth import RegistryOptions
from shim.oci.flatten import DEFAULT_MAX_ENTRIES
from shim.oci.layerstream import SIZE_HINT
from shim.oci.model import INDEX_TYPES, MANIFEST_TYPES, MAX_JSON, Descriptor, Layer, ResolvedImage
from shim.oci.progress import Progress
from shim.oci.reference import Source
from shim.oci.transport import Limits

if TYPE_CHECKING:
    from shim.oci.blobs import BlobCache

DEFAULT_MAX_SIZE = "256G"


@dataclass(frozen=True)
class PullOptions:
    arch: str = ""                        # "" : this host's
    compression: str = "zstd"
    deterministic: bool = False
    max_size: int = 256 << 30             # per blob downloaded, and the layers' uncompressed bytes, all together
    max_entries: int = DEFAULT_MAX_ENTRIES  # entries of all layers together (the site's [pull] max_entries)
    registry: RegistryOptions = field(default_factory=RegistryOptions)
    limits: Limits = field(default_factory=Limits)  # network deadlines and rate (SHIMRUN_PULL_*)


@dataclass(frozen=True)
class Pulled:
    arch: str
    source: str
    manifest_digest: str
    size: int


def _arch(opts: PullOptions) -> str:
    if not opts.arch:
        return archmod.host_arch()
    archmod.arch_to_sif_code(opts.arch)  # UsageError listing the valid names
    return archmod.normalize_arch(opts.arch) or opts.arch


@contextlib.contextmanager
def resolve(source: Source, opts: PullOptions, progress: Progress, near: str) -> Iterator[ResolvedImage]:
    """The image, its blobs readable; `near`: where a temporary blob cache may go."""
    arch = _arch(opts)
    if source.transport != "docker":
        from shim.oci.layout import open_local

        with open_local(source, arch) as image:
            yield image
        return
    from shim.oci.blobs import BlobCache

    with BlobCache.open(near) as cache:
        yield _from_registry(source, opts, arch, cache, progress)


def _from_registry(source: Source, opts: PullOptions, arch: str, cache: BlobCache,
                   progress: Progress) -> ResolvedImage:
    from shim.oci.manifest import config_and_layers, resolve_manifest
    from shim.oci.registry import Registry

    reg = Registry(source, opts.registry, opts.limits)
    top, body = reg.manifest(source.digest or source.tag)
    first = {top.digest: body}

    def fetch_json(desc: Descriptor) -> bytes:
        if desc.digest in first:
            return first[desc.digest]
        if desc.media_type in MANIFEST_TYPES + INDEX_TYPES:
            return reg.manifest(desc.digest, desc.size)[1]
        if desc.size > MAX_JSON:
            return reg.read_blob(desc)  # refused there, with the limit
        # the image config: a blob like the layers, kept in the cache (concurrent pulls fetch it once),
        # its bytes checked again as they are read from there
        with open(cache.get(desc, reg.blob), "rb") as f:
            data = f.read(desc.size + 1)
        if len(data) != desc.size or digests.of(data, digests.split(desc.digest)[0]) != desc.digest:
            raise ImageError(f"{source}: the cached {desc.what} is not the blob its descriptor names",
                             "remove it: shimrun cache clean")
        return data

    where = str(source)
    manifest_desc, manifest = resolve_manifest(top, fetch_json, where, arch)
    config_desc, config, layers = config_and_layers(manifest, fetch_json, where)
    _check_declared(layers, opts.max_size, where)
    for layer in layers:
        progress.start(f"layer {layer.index}/{len(layers)} {layer.blob.what}", layer.blob.size)
        cache.get(layer.blob, reg.blob, progress.advance)
    progress.step(f"{len(layers)} layers in the blob cache")
    return ResolvedImage(where, manifest_desc.digest, config, config_desc.digest, layers, _cached(cache))


def _check_declared(layers: tuple[Layer, ...], cap: int, where: str) -> None:
    """No download past the size cap: each blob's declared size, and all of them together (a
    blob longer than it declares is stopped at that size, shim.oci.verify)."""
    total = 0
    for layer in layers:
        total += layer.blob.size
        if layer.blob.size > cap or total > cap:
            raise ImageError(f"{where}: layer {layer.index} ({layer.blob.what}) declares {layer.blob.size} bytes, "
                             f"past the size cap ({cap} bytes{' in all' if total > layer.blob.size else ''}); "
                             "nothing was downloaded", SIZE_HINT)


def _cached(cache: BlobCache) -> Callable[[Descriptor], contextlib.AbstractContextManager[IO[bytes]]]:
    from shim.oci.verify import VerifyingReader

    @contextlib.contextmanager
    def open_blob(desc: Descriptor) -> Iterator[IO[bytes]]:
        path = cache.have(desc) or cache.path(desc.digest)
        with open(path, "rb") as f:
            yield VerifyingReader(f, desc.digest, desc.size, desc.what)  # type: ignore[misc]

    return open_blob


def build_from_source(out: str, source: Source, opts: PullOptions, progress: Progress) -> Pulled:
    """Write OUT (a SIF) from `source`. OUT appears only at the end, whole."""
    from shim.image.build import StreamBuild, build_sif_from_stream
    from shim.oci.config import apptainer_files, labels, section
    from shim.oci.flatten import Flattener, FlattenOptions

    near = os.path.dirname(os.path.abspath(out))
    with resolve(source, opts, progress, near) as image:
        arch = archmod.normalize_arch(image.arch) or _arch(opts)
        flat = Flattener(image, FlattenOptions(max_bytes=opts.max_size, progress=progress.step,
                                               extra=apptainer_files(image.config, image.source,
                                                                     image.manifest_digest),
                                               max_entries=opts.max_entries))
        flat.plan()
        # oci-config.json holds the config's execution part, as Singularity and Apptainer store it.
        config_json = json.dumps(section(image.config), sort_keys=True, separators=(",", ":")).encode()
        label_json = json.dumps(labels(image.config, image.source, image.manifest_digest), sort_keys=True).encode()
        spec = StreamBuild(what=image.source, arch=arch, compression=opts.compression,
                           deterministic=opts.deterministic, progress=progress.reporter(),
                           objects=(SifObject(DATA_LABELS, "", label_json),
                                    SifObject(DATA_GENERIC_JSON, OCI_CONFIG_NAME, config_json)))
        build_sif_from_stream(out, flat.write, spec)
        return Pulled(arch, image.source, image.manifest_digest, flat.opts.total)
