"""OCI image layouts (a directory, or a tar of one) and `docker save` archives, read in place:
blobs are streamed from the directory or the archive's members, never unpacked to disk.

A layout whose index.json lists one image for several platforms (per-platform manifests side by
side, as `docker buildx` writes them, or one nested index, as `skopeo copy --all` does) is one
image: this node's platform is taken (or --arch's), as from a registry's index."""

from __future__ import annotations

import contextlib
import os
import tarfile
from collections.abc import Iterator
from typing import IO, Any

from shim.errors import ExitCode, ImageError, ShimError, UsageError, listed
from shim.oci import digest as digests
from shim.oci.manifest import checked_config, config_and_layers, layers_with_diff_ids, pick_platform, resolve_manifest
from shim.oci.model import MAX_JSON, REF_NAME, Descriptor, ResolvedImage, descriptor, parse_json
from shim.oci.reference import Source
from shim.oci.verify import VerifyingReader


class _Store:
    """Where a layout's files are: a directory or the members of an uncompressed tar."""

    def __init__(self, source: Source) -> None:
        self.where = source.path
        self.tar: tarfile.TarFile | None = None
        self.members: dict[str, tarfile.TarInfo] = {}
        if os.path.isdir(source.path):
            return
        if source.transport == "oci":
            raise UsageError(f"{source.path} is not a directory", "oci: names an OCI image layout directory; "
                             "for a tar of one use oci-archive:")
        self._open_tar(source.path)

    def _open_tar(self, path: str) -> None:
        try:
            size = os.stat(path).st_size
            self.tar = tarfile.open(path, mode="r:")  # noqa: SIM115 (closed by close()); read in place
            for m in self.tar.getmembers():
                if m.isfile():
                    if m.offset_data + m.size > size:
                        raise ImageError(f"{path} is truncated: member {m.name} ends past the end of the file",
                                         "copy or save the archive again")
                    self.members[os.path.normpath(m.name)] = m
        except FileNotFoundError:
            raise UsageError(f"{path} does not exist", "give the path of the archive") from None
        except IsADirectoryError:
            raise UsageError(f"{path} is a directory", "use oci:DIR for a layout directory") from None
        except (tarfile.TarError, EOFError) as e:
            raise ImageError(f"{path} is not a readable tar archive ({e})",
                             "it may be truncated or compressed; give an uncompressed archive") from None
        except OSError as e:
            raise UsageError(f"cannot read {path}: {e.strerror}") from None

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()

    def exists(self, name: str) -> bool:
        if self.tar is None:
            return os.path.isfile(os.path.join(self.where, name))
        return os.path.normpath(name) in self.members

    def size(self, name: str) -> int:
        if self.tar is None:
            return os.stat(os.path.join(self.where, name)).st_size
        return self.members[os.path.normpath(name)].size

    @contextlib.contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        if self.tar is None:
            path = os.path.join(self.where, name)
            if os.path.islink(path) or not os.path.isfile(path):
                raise ImageError(f"{self.where}: {name} is missing or not a regular file", "the layout is incomplete")
            with open(path, "rb") as f:
                yield f
            return
        m = self.members.get(os.path.normpath(name))
        f = self.tar.extractfile(m) if m is not None else None
        if f is None:
            raise ImageError(f"{self.where}: the archive has no file {name}", "the archive is incomplete")
        with f:
            yield f

    def read(self, name: str) -> bytes:
        with self.open(name) as f:
            data = f.read(MAX_JSON + 1)
        if len(data) > MAX_JSON:
            raise ImageError(f"{self.where}: {name} is larger than {MAX_JSON >> 20} MiB")
        return data

    def blob_name(self, digest: str) -> str:
        alg, encoded = digests.split(digest)
        return f"blobs/{alg}/{encoded}"

    @contextlib.contextmanager
    def open_blob(self, desc: Descriptor) -> Iterator[IO[bytes]]:
        name = desc.member or self.blob_name(desc.digest)
        with self.open(name) as f:
            yield VerifyingReader(f, desc.digest, desc.size, desc.what)  # type: ignore[misc]

    def read_blob(self, desc: Descriptor) -> bytes:
        if desc.size > MAX_JSON:
            raise ImageError(f"{self.where}: {desc.what} is larger than {MAX_JSON >> 20} MiB")
        with self.open_blob(desc) as f:
            return f.read()


@contextlib.contextmanager
def open_local(source: Source, arch: str) -> Iterator[ResolvedImage]:
    """The image of an oci:, oci-archive: or docker-archive: source, for linux/ARCH."""
    if not os.path.lexists(source.path):
        raise UsageError(f"{source.path} does not exist", f"give the path of the {source.transport} image")
    store = _Store(source)
    try:
        if source.transport == "docker-archive" and store.exists("manifest.json"):
            yield _docker_archive(source, store)
        elif store.exists("index.json"):
            yield _oci_layout(source, store, arch)
        else:
            kind = "a docker save archive (manifest.json)" if source.transport == "docker-archive" else \
                "an OCI image layout (index.json)"
            raise ImageError(f"{source.path} is not {kind}", "check the file and the transport prefix")
    finally:
        store.close()


def _oci_layout(source: Source, store: _Store, arch: str) -> ResolvedImage:
    where = str(source)
    index = parse_json(store.read("index.json"), f"{source.path}: index.json")
    entries = index.get("manifests")
    if not isinstance(entries, list) or not entries:
        raise ImageError(f"{source.path}: index.json lists no images")
    descs = [descriptor(m, f"{source.path}: index.json manifests[{i}]") for i, m in enumerate(entries)]
    top = _pick(descs, source, arch)
    manifest_desc, manifest = resolve_manifest(top, store.read_blob, where, arch)
    config_desc, config, layers = config_and_layers(manifest, store.read_blob, where)
    return ResolvedImage(where, manifest_desc.digest, config, config_desc.digest, layers, store.open_blob)


def _pick(descs: list[Descriptor], source: Source, arch: str) -> Descriptor:
    """The entry of index.json to resolve: by digest, by tag, or the only image (which may be
    listed once per platform: then this platform's)."""
    if source.digest:
        found = [d for d in descs if d.digest == source.digest]
        if not found:  # a digest of a manifest inside an index: resolve from the index then
            raise ShimError(ExitCode.NO_SUCH_IMAGE, f"{source.path} has no image {source.digest}",
                            "list its images with: skopeo inspect oci:DIR")
        return found[0]
    tags = sorted({t for d in descs if (t := d.annotations.get(REF_NAME, ""))})
    found = [d for d in descs if d.annotations.get(REF_NAME, "") == source.tag] if source.tag else descs
    if not found:
        raise ShimError(ExitCode.NO_SUCH_IMAGE, f"{source.path} has no image tagged {source.tag!r} "
                        f"(it has: {listed(tags) or 'no tags'})", "name one of its tags")
    if len(found) == 1:
        return found[0]
    if len({d.annotations.get(REF_NAME, "") for d in found}) == 1 and all(d.platform for d in found):
        return pick_platform(found, str(source), arch)  # one image, one manifest per platform
    raise UsageError(f"{source.path} holds {len(found)} images ({listed(tags) or 'untagged images'})",
                     "name one with :TAG or @sha256:DIGEST")


def _docker_archive(source: Source, store: _Store) -> ResolvedImage:
    """`docker save` output: manifest.json names the config and the layer tars (legacy: by file
    names, checked against the config's diff_ids; Docker >= 25: OCI blobs, checked by digest)."""
    where = str(source)
    doc = parse_json(b'{"images": ' + store.read("manifest.json") + b"}", f"{source.path}: manifest.json")
    images = doc["images"]
    if not isinstance(images, list) or not images or not isinstance(images[0], dict):
        raise ImageError(f"{source.path}: manifest.json lists no images")
    if len(images) > 1:
        raise UsageError(f"{source.path} holds {len(images)} images", "save one image per archive")
    entry: dict[str, Any] = images[0]
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise ImageError(f"{source.path}: manifest.json has no Config or Layers")
    config_desc = _member_desc(store, config_name)
    config = checked_config(store.read_blob(config_desc), where)
    descs = [_member_desc(store, str(n)) for n in layer_names]
    layers = layers_with_diff_ids(descs, config, where)
    return ResolvedImage(where, "", config, config_desc.digest, layers, store.open_blob)


def _member_desc(store: _Store, name: str) -> Descriptor:
    if not store.exists(name):
        raise ImageError(f"{store.where}: manifest.json names {name}, which the archive does not have",
                         "the archive is incomplete")
    base = os.path.basename(name).removesuffix(".json")
    # Legacy names are the config's hex digest (.json) or a layer directory's; OCI ones are blobs/sha256/HEX.
    known = digests.valid(f"sha256:{base}") and (name.startswith("blobs/sha256/") or name.endswith(".json"))
    digest = f"sha256:{base}" if known else ""
    return Descriptor("", digest, store.size(name), member=name)
