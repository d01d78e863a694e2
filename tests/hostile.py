"""Images as a hostile registry or archive serves them: layer tars, configs, manifests and indexes
built in memory, each part open to a lie (a digest that is a path, a size that is not the
content's, a config with a NUL), served by a tests/hostile_server.Server or written as an OCI
layout directory. tests/test_oci_hostile.py pulls them; tests/test_fuzz_oci.py mutates them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hostile_server import Server, reply

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
BUSYBOX = Path("/bin/busybox")


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def entry(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "",
          mode: int = 0) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, len(data), link
    info.mode = mode or (0o755 if kind == tarfile.DIRTYPE else 0o644)
    return info, data


def layer_tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def busybox_tar(extra: list[tuple[tarfile.TarInfo, bytes]] | None = None) -> bytes:
    """bin/busybox and the applets a launch test uses, as links to it (and `extra` members)."""
    return layer_tar([entry("bin", kind=tarfile.DIRTYPE), entry("bin/busybox", BUSYBOX.read_bytes(), mode=0o755),
                      *(entry(f"bin/{a}", kind=tarfile.SYMTYPE, link="busybox") for a in ("sh", "echo", "env", "cat")),
                      *(extra or [])])


def empty_files_tar(count: int) -> bytes:
    """`count` empty files f0 ... (raw ustar headers: fast for a hundred thousand)."""
    out = bytearray()
    for i in range(count):
        info = tarfile.TarInfo(f"f{i}")
        out += info.tobuf(tarfile.USTAR_FORMAT)
    return bytes(out + b"\0" * 1024)


@dataclass
class Blob:
    data: bytes
    media_type: str
    digest: str = ""
    size: int = -1                      # what the descriptor says; -1: the truth
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.digest = self.digest or digest_of(self.data)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest,
                "size": len(self.data) if self.size < 0 else self.size, **self.extra}


def layer(tar: bytes, compress: bool = True) -> tuple[Blob, str]:
    """A layer blob (gzip) and its diff_id."""
    return Blob(gzip.compress(tar, 1) if compress else tar, MT_LAYER), digest_of(tar)


def config_doc(diff_ids: list[str], **section: Any) -> dict[str, Any]:
    conf = {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"], **section}
    return {"architecture": "amd64", "os": "linux", "config": conf,
            "rootfs": {"type": "layers", "diff_ids": diff_ids}}


# Config values a launch could not use, by the field the refusal names (what makes it so).
HOSTILE_CONFIGS = {
    "Env[1] (NUL)": {"Env": ["PATH=/bin", "EVIL=a\u0000b"]},
    "Env[1] (UTF-8)": {"Env": ["PATH=/bin", "EVIL=\ud800"]},   # JSON can spell it: "\\ud800"
    "WorkingDir (NUL)": {"WorkingDir": "/work\u0000/x"},
    "Entrypoint[0] (NUL)": {"Entrypoint": ["/bin/sh\u0000"]},
    "Env (count)": {"Env": [f"E{i}=1" for i in range(200_001)]},
    "Labels (not a string)": {"Labels": {"a": ["b"]}},
    "Cmd[0] (length)": {"Cmd": ["x" * (128 << 10 | 1)]},
}


def hostile_config(field: str, diff_ids: list[str] | None = None) -> bytes:
    """A config (of one layer holding the file "a") whose `field` a launch could not use."""
    ids = diff_ids if diff_ids is not None else [digest_of(layer_tar([entry("a", b"a")]))]
    return json.dumps(config_doc(ids, **HOSTILE_CONFIGS[field])).encode()


@dataclass
class Image:
    """An image's blobs and documents, any of them changed by a test before it is served."""

    layers: list[Blob]
    config: Blob
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def make(cls, tars: list[bytes] | None = None, **section: Any) -> Image:
        pairs = [layer(t) for t in (tars if tars is not None else [busybox_tar()])]
        config = Blob(json.dumps(config_doc([d for _, d in pairs], **section)).encode(), MT_CONFIG)
        return cls([b for b, _ in pairs], config)

    def manifest_doc(self) -> dict[str, Any]:
        return self.manifest or {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": self.config.descriptor(),
                                 "layers": [b.descriptor() for b in self.layers]}

    def manifest_bytes(self) -> bytes:
        return json.dumps(self.manifest_doc()).encode()


def serve(server: Server, image: Image, repo: str = "sci/app", tag: str = "1",
          manifest: bytes | None = None, headers: dict[str, str] | None = None) -> str:
    """Routes for `image` on `server` (the manifest by tag and by digest, each blob by its
    descriptor's digest); returns the manifest's digest."""
    body = image.manifest_bytes() if manifest is None else manifest
    digest = digest_of(body)
    for ref in (tag, digest):
        server.routes[f"/v2/{repo}/manifests/{ref}"] = reply(body, headers=headers, content_type=MT_MANIFEST)
    for blob in (image.config, *image.layers):
        server.routes[f"/v2/{repo}/blobs/{blob.digest}"] = reply(blob.data)
    return digest


def index_doc(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": entries}


def platform_entry(image: Image, architecture: str, variant: str = "") -> dict[str, Any]:
    body = image.manifest_bytes()
    platform = {"architecture": architecture, "os": "linux", **({"variant": variant} if variant else {})}
    return {"mediaType": MT_MANIFEST, "digest": digest_of(body), "size": len(body), "platform": platform}


def write_layout(dest: Path, images: list[Image], index_entries: list[dict[str, Any]]) -> Path:
    """An OCI layout directory holding `images`' blobs and manifests, its index.json listing
    `index_entries`; world-readable (shimrun runs as the test user)."""
    blobs = dest / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(data: bytes) -> None:
        (blobs / digest_of(data).split(":", 1)[1]).write_bytes(data)

    for image in images:
        for blob in (image.config, *image.layers):
            put(blob.data)
        put(image.manifest_bytes())
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (dest / "index.json").write_text(json.dumps(index_doc(index_entries)))
    subprocess.run(["chmod", "-R", "a+rX", str(dest)], check=True)
    return dest


def tagged(image: Image, tag: str) -> dict[str, Any]:
    body = image.manifest_bytes()
    return {"mediaType": MT_MANIFEST, "digest": digest_of(body), "size": len(body), "annotations": {REF_NAME: tag}}


def path_digest(target: str) -> str:
    """A "sha256:" followed by `target` padded with slashes in front to 64 characters: a path
    that a cache joining it onto its directory would reach."""
    assert len(target) <= 64, target
    return "sha256:" + "/" * (64 - len(target)) + target


def files_under(root: Path) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs}
