"""OCI images for the tests: image layouts written by Python, a real registry, archives and
reference unpackings made by independent tools (skopeo, umoci, unsquashfs).

Layouts. A `LayoutSpec` describes an OCI image layout: its tags, each pointing at an `Image`
(layers plus an `ImageConfig`) or at an `Index` of images for several platforms. A `Layer` is
a list of tar entries (`Member`s made by `directory`, `file`, `symlink`, `whiteout`... and
`Tree`s, whole host directories) and a compression. Every tar is written with fixed owners and
mtimes, so the same spec always gives the same bytes and digests. `build_layout(spec)` writes
the layout once into CACHE/oci/<name>-<key>/ (CACHE as in images.py); the key hashes the spec,
the content of the host files it copies, and the writer's source code, so a changed spec or
writer never reuses an old layout. Everything cached is world-readable: shimrun runs as the
non-root test user.

Registry. `start_registry(workdir, tls=...)` runs the CNCF distribution registry
(/usr/bin/docker-registry) on a free 127.0.0.1 port, optionally with TLS (a throwaway CA made
with the openssl CLI) and htpasswd basic auth.

The independent tools are the reference: what shim makes of an image is compared with what
umoci unpacks (`umoci_rootfs`, `tree_listing`), and archives come from skopeo where it can
write them (`docker_archive`, `oci_archive`); only Docker >= 25's `docker save` format, which
no tool here writes, is written by Python (`docker25_archive`).
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import hashlib
import http.server
import inspect
import json
import os
import re
import secrets
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import images

# 2023-11-14T22:13:20Z: every tar entry and the configs' "created" (deterministic bytes).
MTIME = 1_700_000_000
CREATED = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(MTIME))

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
REF_NAME = "org.opencontainers.image.ref.name"
IMAGE_NAME = "io.containerd.image.name"  # Docker >= 25 `docker save` puts the full name here
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"

BUSYBOX = Path("/bin/busybox")
REGISTRY_BIN = Path("/usr/bin/docker-registry")
TOOL_TIMEOUT = 300.0
START_TIMEOUT = 30.0

# Runtime additions a launcher or SIF builder puts into a root filesystem, left out of listings.
RUNTIME_ADDITIONS: tuple[str, ...] = (".singularity.d", ".shim")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _digest_hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexpart):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return hexpart


def _run(cmd: Sequence[str | os.PathLike], timeout: float = TOOL_TIMEOUT,
         env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a tool, raising with its output on failure (the message is all a test log shows)."""
    argv = [str(a) for a in cmd]
    r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stderr or r.stdout}")
    return r


def no_proxy_env() -> dict[str, str]:
    """The environment with 127.0.0.1 exempt from any configured proxy: the test registries are local."""
    env = dict(os.environ)
    for var in ("no_proxy", "NO_PROXY"):
        env[var] = ",".join(p for p in (env.get(var, ""), "127.0.0.1", "localhost") if p)
    return env


# ---------------------------------------------------------------------------------------------
# Layout descriptions


@dataclass(frozen=True)
class Member:
    """One tar entry. `path` is relative ("etc/passwd"); owners are always root."""

    path: str
    kind: str                     # "dir", "file", "symlink", "hardlink", "chardev"
    mode: int = 0o644
    data: bytes = b""             # a file's content...
    source: str = ""              # ...or the host file it is copied from
    target: str = ""              # symlink target; hard link target (a path in the same layer)
    device: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        if self.kind not in ("dir", "file", "symlink", "hardlink", "chardev"):
            raise ValueError(f"{self.path}: unknown member kind {self.kind!r}")
        if self.path.startswith("/") or not self.path.strip("/"):
            raise ValueError(f"member path {self.path!r}: use a relative path")

    def canonical(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"path": self.path, "kind": self.kind, "mode": self.mode,
                               "data": hashlib.sha256(self.data).hexdigest(), "target": self.target,
                               "device": list(self.device)}
        if self.source:  # the content, not the host path, is what the layer holds
            doc["source"] = sha256_file(Path(self.source))
        return doc


def directory(path: str, mode: int = 0o755) -> Member:
    return Member(path.strip("/"), "dir", mode)


def file(path: str, data: bytes | str = b"", mode: int = 0o644) -> Member:
    return Member(path.strip("/"), "file", mode, data.encode() if isinstance(data, str) else data)


def host_file(path: str, source: Path, mode: int = 0o755) -> Member:
    return Member(path.strip("/"), "file", mode, source=str(source))


def symlink(path: str, target: str) -> Member:
    return Member(path.strip("/"), "symlink", 0o777, target=target)


def hardlink(path: str, target: str) -> Member:
    """A hard link to `target`, an earlier member of the same layer (tar's relative link name)."""
    return Member(path.strip("/"), "hardlink", 0o644, target=target.strip("/"))


def chardev(path: str, major: int, minor: int, mode: int = 0o666) -> Member:
    return Member(path.strip("/"), "chardev", mode, device=(major, minor))


def whiteout(path: str) -> Member:
    """Deletes `path` from the layers below (an empty file `.wh.NAME` next to it)."""
    parent, _, name = path.strip("/").rpartition("/")
    return Member(f"{parent}/{WHITEOUT}{name}" if parent else f"{WHITEOUT}{name}", "file", 0o644)


def opaque(dir_path: str) -> Member:
    """Hides everything the layers below have in `dir_path` (the opaque marker inside it)."""
    return Member(f"{dir_path.strip('/')}/{OPAQUE}", "file", 0o644)


@dataclass(frozen=True)
class Tree:
    """Everything under a host directory, as the host has it (owners, modes, hard links), except
    device nodes and sockets. `key` names the content for the cache key (e.g. the images.py slug
    the tree was built as): hashing a whole root filesystem on every run would be slow."""

    root: Path
    key: str
    include: tuple[str, ...] = ()   # relative paths taken (with their parent directories); () = all
    exclude: tuple[str, ...] = ()   # relative paths left out, with everything below them

    def canonical(self) -> dict[str, Any]:
        return {"tree": self.key, "include": list(self.include), "exclude": list(self.exclude)}


@dataclass(frozen=True)
class Layer:
    entries: tuple[Member | Tree, ...]
    compression: str = "gzip"       # "gzip", "zstd" or "none"
    add_parents: bool = True        # write missing parent directories first, as image builders do

    def __post_init__(self) -> None:
        if self.compression not in MT_LAYER:
            raise ValueError(f"compression {self.compression!r}: use one of {sorted(MT_LAYER)}")
        object.__setattr__(self, "entries", tuple(self.entries))

    def canonical(self) -> dict[str, Any]:
        return {"entries": [e.canonical() for e in self.entries], "compression": self.compression,
                "add_parents": self.add_parents}


@dataclass(frozen=True)
class ImageConfig:
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] | None = None
    cmd: tuple[str, ...] | None = None
    working_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    user: str = ""
    architecture: str = "amd64"
    os: str = "linux"
    variant: str = ""

    @property
    def platform(self) -> dict[str, str]:
        p = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            p["variant"] = self.variant
        return p

    def document(self, diff_ids: Sequence[str]) -> dict[str, Any]:
        """The image config JSON (OCI image-spec config.md); absent fields are left out, as
        image builders do, so a reader sees "no Cmd" rather than an empty one."""
        conf: dict[str, Any] = {}
        if self.user:
            conf["User"] = self.user
        if self.env:
            conf["Env"] = list(self.env)
        if self.entrypoint is not None:
            conf["Entrypoint"] = list(self.entrypoint)
        if self.cmd is not None:
            conf["Cmd"] = list(self.cmd)
        if self.working_dir:
            conf["WorkingDir"] = self.working_dir
        if self.labels:
            conf["Labels"] = dict(sorted(self.labels.items()))
        doc: dict[str, Any] = {"created": CREATED, **self.platform, "config": conf,
                               "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
                               "history": [{"created": CREATED, "created_by": f"shim tests: layer {i + 1}"}
                                           for i in range(len(diff_ids))]}
        return doc

    def canonical(self) -> dict[str, Any]:
        return self.document([])


@dataclass(frozen=True)
class Image:
    layers: tuple[Layer, ...]
    config: ImageConfig

    def canonical(self) -> dict[str, Any]:
        return {"layers": [la.canonical() for la in self.layers], "config": self.config.canonical()}


@dataclass(frozen=True)
class Index:
    """A multi-platform image index (stored as a blob; index.json's tag points at it)."""

    images: tuple[Image, ...]

    def canonical(self) -> dict[str, Any]:
        return {"index": [i.canonical() for i in self.images]}


@dataclass(frozen=True)
class LayoutSpec:
    name: str                                         # cache directory name
    repo: str                                         # suggested repository, e.g. "sci/app"
    refs: tuple[tuple[str, Image | Index], ...]       # (tag, what it points at); the first is the main tag

    @property
    def tag(self) -> str:
        return self.refs[0][0]

    def canonical(self) -> str:
        doc = {"name": self.name, "repo": self.repo,
               "refs": [[tag, target.canonical()] for tag, target in self.refs],
               "writer": _writer_key()}
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))

    @property
    def key(self) -> str:
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Writing layouts


def _json_bytes(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


class _Blobs:
    """blobs/sha256 of a layout being written."""

    def __init__(self, layout: Path) -> None:
        self.dir = layout / "blobs" / "sha256"
        self.dir.mkdir(parents=True, exist_ok=True)

    def put_bytes(self, data: bytes, media_type: str) -> dict[str, Any]:
        hexd = hashlib.sha256(data).hexdigest()
        (self.dir / hexd).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{hexd}", "size": len(data)}

    def put_file(self, path: Path, media_type: str) -> dict[str, Any]:
        """Move `path` into the store under its digest."""
        hexd = sha256_file(path)
        size = path.stat().st_size
        os.replace(path, self.dir / hexd)
        return {"mediaType": media_type, "digest": f"sha256:{hexd}", "size": size}


class _TarWriter:
    """Writes one layer's entries, each path once, parents first (when asked to)."""

    def __init__(self, tar: tarfile.TarFile, add_parents: bool) -> None:
        self.tar = tar
        self.add_parents = add_parents
        self.written: set[str] = set()
        self.links: dict[tuple[int, int], str] = {}   # host (dev, inode) -> first path, for Trees

    def _info(self, path: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(path)
        ti.type, ti.mode, ti.mtime = kind, mode, MTIME
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti

    def _parents(self, path: str, host_root: Path | None = None) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            parent = "/".join(parts[:i])
            if parent in self.written:
                continue
            mode = 0o755
            if host_root is not None and (host_root / parent).is_dir():
                mode = stat.S_IMODE(os.lstat(host_root / parent).st_mode)
            self._add(self._info(parent, tarfile.DIRTYPE, mode))

    def _add(self, ti: tarfile.TarInfo, content: Any = None) -> None:
        self.tar.addfile(ti, content)
        self.written.add(ti.name)

    def member(self, m: Member) -> None:
        if self.add_parents:
            self._parents(m.path)
        kinds = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE,
                 "hardlink": tarfile.LNKTYPE, "chardev": tarfile.CHRTYPE}
        ti = self._info(m.path, kinds[m.kind], m.mode)
        if m.kind == "file":
            data = Path(m.source).read_bytes() if m.source else m.data
            ti.size = len(data)
            self._add(ti, _BytesReader(data))
            return
        ti.linkname = m.target
        ti.devmajor, ti.devminor = m.device
        self._add(ti)

    def tree(self, t: Tree) -> None:
        for top in (p.strip("/") for p in t.include or ("",)):
            if top and self.add_parents:
                self._parents(top, t.root)
            start = t.root / top if top else t.root
            if top:
                self._host_entry(t, top)
            if start.is_dir() and not start.is_symlink():
                self._walk(t, start)

    def _walk(self, t: Tree, start: Path) -> None:
        for dirpath, dirnames, filenames in os.walk(start):
            rel_dir = os.path.relpath(dirpath, t.root)
            keep = []
            for name in sorted(dirnames + filenames):
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                if _excluded(rel, t.exclude):
                    continue
                self._host_entry(t, rel)
                keep.append(name)
            dirnames[:] = sorted(d for d in dirnames if d in keep)

    def _host_entry(self, t: Tree, rel: str) -> None:
        if rel in self.written:
            return
        host = t.root / rel
        st = os.lstat(host)
        mode = stat.S_IMODE(st.st_mode)
        fmt = stat.S_IFMT(st.st_mode)
        if fmt == stat.S_IFDIR:
            ti = self._info(rel, tarfile.DIRTYPE, mode)
        elif fmt == stat.S_IFLNK:
            ti = self._info(rel, tarfile.SYMTYPE, 0o777)
            ti.linkname = os.readlink(host)
        elif fmt == stat.S_IFIFO:
            ti = self._info(rel, tarfile.FIFOTYPE, mode)
        elif fmt == stat.S_IFREG:
            first = self.links.get((st.st_dev, st.st_ino)) if st.st_nlink > 1 else None
            if first is not None:  # a hard link within this layer, as `tar` writes it
                ti = self._info(rel, tarfile.LNKTYPE, mode)
                ti.linkname = first
            else:
                self.links[(st.st_dev, st.st_ino)] = rel
                ti = self._info(rel, tarfile.REGTYPE, mode)
                ti.size = st.st_size
                _host_owner(ti, st)
                with open(host, "rb") as f:
                    self._add(ti, f)
                return
        else:  # device nodes and sockets: runtimes make their own /dev, a socket cannot be stored
            return
        _host_owner(ti, st)
        self._add(ti)


def _host_owner(ti: tarfile.TarInfo, st: os.stat_result) -> None:
    """The host's numeric owner, without names: "root" for gid 42 (shadow) would be a lie to
    extractors that prefer names, as GNU tar does."""
    ti.uid, ti.gid, ti.uname, ti.gname = st.st_uid, st.st_gid, "", ""


class _BytesReader:
    """A minimal file object over bytes for TarFile.addfile."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        chunk, self.pos = self.data[self.pos:end], min(end, len(self.data))
        return chunk


def _excluded(rel: str, prefixes: Sequence[str]) -> bool:
    return any(rel == p.strip("/") or rel.startswith(p.strip("/") + "/") for p in prefixes)


def _compress(raw: Path, compression: str) -> Path:
    """The layer blob for an uncompressed tar (gzip without name and mtime: deterministic)."""
    if compression == "none":
        return raw
    out = raw.with_suffix(f".{compression}")
    if compression == "gzip":
        with open(raw, "rb") as src, open(out, "wb") as dst, \
                gzip.GzipFile(filename="", mode="wb", fileobj=dst, mtime=0, compresslevel=6) as gz:
            shutil.copyfileobj(src, gz, 1 << 20)
    else:  # the zstd CLI: no Python dependency
        _run(["zstd", "-q", "-f", "-3", "-o", out, raw])
    raw.unlink()
    return out


def _write_layer(layer: Layer, blobs: _Blobs, work: Path) -> tuple[dict[str, Any], str]:
    """(layer descriptor, diff_id)."""
    raw = work / "layer.tar"
    with tarfile.open(raw, "w", format=tarfile.PAX_FORMAT) as tar:
        writer = _TarWriter(tar, layer.add_parents)
        for entry in layer.entries:
            if isinstance(entry, Tree):
                writer.tree(entry)
            else:
                writer.member(entry)
    diff_id = f"sha256:{sha256_file(raw)}"
    return blobs.put_file(_compress(raw, layer.compression), MT_LAYER[layer.compression]), diff_id


def _write_image(image: Image, blobs: _Blobs, work: Path) -> dict[str, Any]:
    """Layers, config and manifest of `image`; returns the manifest's descriptor (with platform)."""
    descs, diff_ids = [], []
    for layer in image.layers:
        desc, diff_id = _write_layer(layer, blobs, work)
        descs.append(desc)
        diff_ids.append(diff_id)
    config = blobs.put_bytes(_json_bytes(image.config.document(diff_ids)), MT_CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config, "layers": descs}
    return {**blobs.put_bytes(_json_bytes(manifest), MT_MANIFEST), "platform": image.config.platform}


def write_layout(spec: LayoutSpec, dest: Path) -> None:
    """Write the layout `spec` describes into the new directory `dest`."""
    dest.mkdir(mode=0o755)
    (dest / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    blobs = _Blobs(dest)
    work = dest / ".work"
    work.mkdir()
    refs = []
    for tag, target in spec.refs:
        if isinstance(target, Index):
            manifests = [_write_image(img, blobs, work) for img in target.images]
            desc = blobs.put_bytes(_json_bytes({"schemaVersion": 2, "mediaType": MT_INDEX,
                                                "manifests": manifests}), MT_INDEX)
        else:
            desc = _write_image(target, blobs, work)
            desc.pop("platform")  # index.json entries of single images carry only the ref name
        refs.append({**desc, "annotations": {REF_NAME: tag}})
    shutil.rmtree(work)
    (dest / "index.json").write_bytes(_json_bytes({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": refs}))
    subprocess.run(["chmod", "-R", "u+rwX,go+rX,go-w", str(dest)], check=True)


@dataclass(frozen=True)
class Layout:
    """An OCI image layout on disk and what one of its tags points at."""

    path: Path
    tag: str
    name: str                   # suggested repository, e.g. "sci/app"
    manifest_digest: str        # what the tag's index.json entry names: a manifest, or an index
    media_type: str             # of that entry
    manifest: dict[str, Any]    # the image manifest (for an index: its linux/amd64 entry, else its first)
    config: dict[str, Any]      # that image's config
    platforms: dict[str, str]   # for an index: "os/arch[/variant]" -> manifest digest; else {}
    tags: tuple[str, ...]       # all tags of the layout

    def blob(self, digest: str) -> Path:
        return self.path / "blobs" / "sha256" / _digest_hex(digest)

    def read_json(self, digest: str) -> Any:
        return json.loads(self.blob(digest).read_bytes())

    @property
    def config_digest(self) -> str:
        return self.manifest["config"]["digest"]

    @property
    def ref(self) -> str:
        """The `oci:` transport reference skopeo and umoci take (DIR:TAG)."""
        return f"{self.path}:{self.tag}"

    def with_tag(self, tag: str) -> Layout:
        return load_layout(self.path, tag, self.name)


def _platform_key(p: dict[str, str]) -> str:
    return "/".join(x for x in (p.get("os", ""), p.get("architecture", ""), p.get("variant", "")) if x)


def load_layout(path: Path, tag: str, name: str) -> Layout:
    index = json.loads((path / "index.json").read_bytes())
    tags = tuple(d.get("annotations", {}).get(REF_NAME, "") for d in index["manifests"])
    try:
        desc = next(d for d in index["manifests"] if d.get("annotations", {}).get(REF_NAME) == tag)
    except StopIteration:
        raise KeyError(f"{path}: no tag {tag!r} (tags: {', '.join(tags)})") from None
    blob_dir = path / "blobs" / "sha256"
    doc = json.loads((blob_dir / _digest_hex(desc["digest"])).read_bytes())
    platforms: dict[str, str] = {}
    manifest = doc
    if desc["mediaType"] == MT_INDEX:
        platforms = {_platform_key(m.get("platform", {})): m["digest"] for m in doc["manifests"]}
        chosen = platforms.get("linux/amd64") or doc["manifests"][0]["digest"]
        manifest = json.loads((blob_dir / _digest_hex(chosen)).read_bytes())
    config = json.loads((blob_dir / _digest_hex(manifest["config"]["digest"])).read_bytes())
    return Layout(path, tag, name, desc["digest"], desc["mediaType"], manifest, config, platforms, tags)


def layout_dir(spec: LayoutSpec) -> Path:
    """CACHE/oci/<name>-<key> (not created)."""
    return images.cache_root() / "oci" / f"{spec.name}-{spec.key}"


def build_layout(spec: LayoutSpec) -> Layout:
    """The layout `spec` describes, written once into the cache (images.cached: lock, rename into place)."""
    path = images.cached(layout_dir(spec), lambda tmp: write_layout(spec, tmp))
    return load_layout(path, spec.tag, spec.repo)


def _writer_key() -> str:
    """Hash of the code that turns a spec into bytes: a changed writer must not reuse an old
    layout, while edits elsewhere in this file (registry, archives) keep the cache."""
    parts = (Member, Tree, Layer, ImageConfig, _json_bytes, _Blobs, _TarWriter, _host_owner, _BytesReader, _excluded,
             _compress, _write_layer, _write_image, write_layout)
    h = hashlib.sha256(f"{MTIME}".encode())
    for part in parts:
        h.update(inspect.getsource(part).encode())
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The test images

BUSYBOX_APPLETS = ("sh", "env", "ls", "cat", "echo", "id", "pwd")
APP_ENTRY = b"""#!/bin/sh
echo "entry args: $*"
echo "greeting: $GREETING"
echo "pwd: $(pwd)"
"""
APP_DATA = b"data of the app image\n"


def app_spec(l2_compression: str = "zstd") -> LayoutSpec:
    """tag "1" of "sci/app": busybox, every kind of tar entry, whiteouts and an opaque directory."""
    l1 = Layer((
        host_file("bin/busybox", BUSYBOX, 0o755),
        *(symlink(f"bin/{a}", "busybox") for a in BUSYBOX_APPLETS),
        *(directory(d) for d in ("etc", "home", "proc", "sys", "dev", "work", "opt/old")),
        directory("tmp", 0o1777), directory("var/tmp", 0o1777),
        file("opt/old/a", "old a\n"), file("opt/old/b", "old b\n"),
        file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), file("etc/group", "root:x:0:\n"),
        file("etc/remove-me", "deleted by layer 3\n"),
        chardev("dev/null-ish", 1, 3),                   # a runtime must drop it: no mknod unprivileged
        file("usr/bin/su-like", "#!/bin/sh\necho su-like\n", 0o4755),
    ), "gzip")
    l2 = Layer((
        file("opt/app/data.txt", APP_DATA),
        hardlink("opt/app/data-link", "opt/app/data.txt"),
        symlink("opt/app/current", "data.txt"),
        file("bin/app-entry", APP_ENTRY, 0o755),
        directory("opt/empty"),
    ), l2_compression)
    l3 = Layer((
        whiteout("etc/remove-me"),
        opaque("opt/old"), file("opt/old/c", "new c\n"),
        file("opt/app/version", "1\n"),
    ), "none")
    config = ImageConfig(
        env=("PATH=/usr/local/bin:/usr/bin:/bin", "GREETING=hello from the image", "SPACED=a b  c"),
        entrypoint=("/bin/app-entry",), cmd=("default-arg",), working_dir="/work",
        labels={"org.example.purpose": "shim tests"})
    name = "app" if l2_compression == "zstd" else f"app-{l2_compression}"
    return LayoutSpec(name, "sci/app", (("1", Image((l1, l2, l3), config)),))


def noshell_spec() -> LayoutSpec:
    """tag "1" of "sci/noshell": a busybox without /bin/sh; the entrypoint runs `busybox env`."""
    layer = Layer((host_file("bin/busybox", BUSYBOX, 0o755),
                   *(directory(d) for d in ("etc", "home", "proc", "sys", "dev")), directory("tmp", 0o1777)))
    config = ImageConfig(env=("PATH=/bin", "GREETING=no shell here"), entrypoint=("/bin/busybox", "env"))
    return LayoutSpec("noshell", "sci/noshell", (("1", Image((layer,), config)),))


def arm64_image() -> Image:
    layer = Layer((file("hello-arm64.txt", "this is the arm64 image\n"),))
    return Image((layer,), ImageConfig(env=("PATH=/bin",), cmd=("/bin/sh",), architecture="arm64", variant="v8"))


def multi_spec() -> LayoutSpec:
    """Tag "multi": an index of the app image (linux/amd64) and an arm64 one; "arm64-only": only the latter."""
    app = app_spec().refs[0][1]
    assert isinstance(app, Image)
    return LayoutSpec("multi", "sci/multi", (("multi", Index((app, arm64_image()))),
                                             ("arm64-only", Index((arm64_image(),)))))


# Layer 3 of the Debian image: deletes these files, replaces this directory's content.
DEBIAN_DELETED = ("etc/motd", "etc/issue.net")
DEBIAN_OPAQUE = "etc/skel"
DEBIAN_ADDED = {"etc/skel/.shim-test-profile": "# the only file left in /etc/skel\n",
                "etc/shim-test-layer": "added by layer 3\n"}


def debian_expected_listing(rootfs: Path) -> list[Entry]:
    """tree_listing of what debian_spec's image unpacks to: `rootfs` with layer 3 applied."""
    gone = (*DEBIAN_DELETED, f"{DEBIAN_OPAQUE}/")
    kept = [e for e in tree_listing(rootfs) if not any(e[0] == g or e[0].startswith(g) for g in gone)]
    added = [(p, "file", 0o644, len(text.encode()), hashlib.sha256(text.encode()).hexdigest(), None)
             for p, text in DEBIAN_ADDED.items()]
    return sorted(kept + added)


def debian_spec(recipe: images.Recipe = images.DEBIAN_BASE) -> LayoutSpec:
    """tag "1" of "sci/debian": the images.py root of `recipe` (built if need be) in 3 layers."""
    rootfs = images.build_rootfs(recipe)
    l1 = Layer((Tree(rootfs, recipe.slug, exclude=("usr/share",)),), "gzip")
    l2 = Layer((Tree(rootfs, recipe.slug, include=("usr/share",)),), "gzip")
    l3 = Layer((*(whiteout(p) for p in DEBIAN_DELETED), opaque(DEBIAN_OPAQUE),
                *(file(p, text) for p, text in DEBIAN_ADDED.items())), "none")
    config = ImageConfig(env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",),
                         entrypoint=("/bin/sh", "-c", "echo debian-app; cat /etc/debian_version"),
                         working_dir="/", labels={"org.example.purpose": "shim tests (debian)"})
    return LayoutSpec(recipe.name, "sci/debian", (("1", Image((l1, l2, l3), config)),))


TOOLS_GREETING = "hello from the image's Env"


def tools_spec(recipe: images.Recipe = images.DEBIAN_BASE) -> LayoutSpec:
    """tag "1" of "sci/tools": a Debian root (sh, bash, coreutils) in 2 layers, as workflow engines'
    images are: no Entrypoint, Cmd bash, an Env variable (GREETING) the workflows read."""
    rootfs = images.build_rootfs(recipe)
    l1 = Layer((Tree(rootfs, recipe.slug, exclude=("usr/share",)),), "gzip")
    l2 = Layer((Tree(rootfs, recipe.slug, include=("usr/share",)),), "gzip")
    config = ImageConfig(env=("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                              f"GREETING={TOOLS_GREETING}"),
                         cmd=("/bin/bash",), labels={"org.example.purpose": "shim tests (workflow engines)"})
    return LayoutSpec(f"{recipe.name}-tools", "sci/tools", (("1", Image((l1, l2), config)),))


# ---------------------------------------------------------------------------------------------
# Archives


def _layout_path(layout: Layout | Path) -> Path:
    return layout.path if isinstance(layout, Layout) else Path(layout)


def skopeo(*args: str | os.PathLike, timeout: float = TOOL_TIMEOUT) -> subprocess.CompletedProcess:
    """skopeo with an accept-anything signature policy (the host's policy.json is not ours to rely on)."""
    return _run(["skopeo", "--insecure-policy", *args], timeout=timeout, env=no_proxy_env())


def docker_archive(layout: Layout | Path, tag: str, out: Path, repo_tag: str = "sci/app:1") -> Path:
    """The legacy `docker save` tar (manifest.json, <diff_id>.tar layers, <v1 id>/layer.tar
    symlinks to them, repositories), written by skopeo. skopeo 1.9 refuses to convert a zstd
    layer's media type for a Docker manifest, so the image first goes to a `dir:` copy with its
    layers decompressed: the archive holds uncompressed layers either way."""
    with tempfile.TemporaryDirectory(prefix="docker-archive.", dir=out.parent) as tmp:
        plain = f"dir:{tmp}/image"
        skopeo("copy", "-q", "--dest-decompress", f"oci:{_layout_path(layout)}:{tag}", plain)
        skopeo("copy", "-q", plain, f"docker-archive:{out}:{repo_tag}")
    out.chmod(0o644)
    return out


def oci_archive(layout: Layout | Path, tag: str, out: Path) -> Path:
    """A tar of an OCI image layout, written by skopeo."""
    # --preserve-digests: skopeo would otherwise gzip the uncompressed layer, changing the image.
    skopeo("copy", "-q", "--preserve-digests", f"oci:{_layout_path(layout)}:{tag}", f"oci-archive:{out}:{tag}")
    out.chmod(0o644)
    return out


def _decompressed(blob: Path, media_type: str, out: Path) -> Path:
    if media_type.endswith("+gzip"):
        with gzip.open(blob, "rb") as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    elif media_type.endswith("+zstd"):
        _run(["zstd", "-q", "-d", "-f", "-o", out, blob])
    else:
        shutil.copyfile(blob, out)
    return out


def docker25_archive(layout: Layout | Path, tag: str, out: Path, repo_tag: str = "sci/app:1") -> Path:
    """What Docker >= 25's `docker save` writes: an OCI layout in a tar, its layers uncompressed
    (blob digest = diff_id, media type ...layer.v1.tar), index.json naming the image in both the
    containerd and the OCI annotation, plus the legacy manifest.json pointing into blobs/.
    This is the classic (graphdriver) image store's output; Docker's legacy `repositories` file
    and per-layer v1 JSON blobs are left out: they hold Docker-internal v1 IDs that no reader of
    this format uses."""
    repo, _, ref_tag = repo_tag.rpartition(":")
    src = load_layout(_layout_path(layout), tag, repo)
    with tempfile.TemporaryDirectory(prefix="docker25.", dir=out.parent) as tmp:
        stage = Path(tmp) / "stage"
        blobs = _Blobs(stage)
        layers = []
        for i, desc in enumerate(src.manifest["layers"]):
            raw = _decompressed(src.blob(desc["digest"]), desc["mediaType"], Path(tmp) / f"layer{i}.tar")
            layers.append(blobs.put_file(raw, MT_LAYER["none"]))
        diff_ids = src.config["rootfs"]["diff_ids"]
        assert [d["digest"] for d in layers] == diff_ids, "the layout's diff_ids do not match its layers"
        platform = {k: src.config[k] for k in ("architecture", "os", "variant") if k in src.config}
        config = {**blobs.put_bytes(src.blob(src.config_digest).read_bytes(), MT_CONFIG), "platform": platform}
        manifest = blobs.put_bytes(_json_bytes({"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": config,
                                                "layers": layers}), MT_MANIFEST)
        entry = {**manifest, "platform": platform,
                 "annotations": {IMAGE_NAME: f"{_docker_full_name(repo)}:{ref_tag}", REF_NAME: ref_tag}}
        (stage / "index.json").write_bytes(_json_bytes({"schemaVersion": 2, "mediaType": MT_INDEX,
                                                        "manifests": [entry]}))
        legacy = [{"Config": f"blobs/sha256/{_digest_hex(config['digest'])}", "RepoTags": [repo_tag],
                   "Layers": [f"blobs/sha256/{_digest_hex(d['digest'])}" for d in layers]}]
        (stage / "manifest.json").write_text(json.dumps(legacy) + "\n")
        (stage / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        _tar_tree(stage, out)
    out.chmod(0o644)
    return out


def _docker_full_name(repo: str) -> str:
    """Docker's normalised name: "sci/app" -> "docker.io/sci/app", "ubuntu" -> "docker.io/library/ubuntu";
    a first component with a dot or a port, or "localhost", is a registry host already."""
    first, sep, _ = repo.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return repo
    return f"docker.io/{repo}" if sep else f"docker.io/library/{repo}"


def _lexical_walk(root: Path, rel: str = "") -> Iterator[str]:
    """Relative paths below root, depth first in lexical order (as Go's filepath.Walk, which
    Docker's archive writer uses): blobs/, blobs/sha256/, blobs/sha256/..., index.json..."""
    for name in sorted(os.listdir(root / rel if rel else root)):
        path = f"{rel}/{name}" if rel else name
        yield path
        if (root / path).is_dir() and not (root / path).is_symlink():
            yield from _lexical_walk(root, path)


def _tar_tree(root: Path, out: Path) -> None:
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in _lexical_walk(root):
            ti = tar.gettarinfo(str(root / rel), arcname=rel)
            ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = MTIME, 0, 0, "", ""
            ti.mode = 0o755 if ti.isdir() else 0o644
            if ti.isreg():
                with open(root / rel, "rb") as f:
                    tar.addfile(ti, f)
            else:
                tar.addfile(ti)


# ---------------------------------------------------------------------------------------------
# Reference unpackings and listings


def umoci_rootfs(layout: Layout | Path, tag: str, dest: Path) -> Path:
    """`umoci unpack --rootless` of DIR:TAG into the bundle `dest` (must not exist); its rootfs."""
    _run(["umoci", "unpack", "--rootless", "--image", f"{_layout_path(layout)}:{tag}", dest])
    return dest / "rootfs"


def _kind(mode: int) -> str:
    return {stat.S_IFDIR: "dir", stat.S_IFREG: "file", stat.S_IFLNK: "symlink", stat.S_IFCHR: "chardev",
            stat.S_IFBLK: "blockdev", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}[stat.S_IFMT(mode)]


Entry = tuple[str, str, int | None, int | None, str | None, str | None]


def tree_listing(root: Path, exclude: Sequence[str] = RUNTIME_ADDITIONS) -> list[Entry]:
    """Every entry below `root` as (relative path, kind, permission bits incl. setuid, size,
    sha256, link target or "major:minor"), sorted. Fields that mean nothing for a kind are None
    (a symlink's mode, a directory's size). Owners and times are left out (shim makes everything
    root's, umoci --rootless the caller's); hard links show as the regular files they are.
    Entries whose relative path starts with one of `exclude` are left out (runtime additions)."""
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if any(rel.startswith(prefix) for prefix in exclude):
                continue
            entries.append(_entry(p, rel))
    return sorted(entries)


def _entry(p: Path, rel: str) -> Entry:
    st = os.lstat(p)
    kind = _kind(st.st_mode)
    mode = None if kind == "symlink" else stat.S_IMODE(st.st_mode)
    if kind == "file":
        return (rel, kind, mode, st.st_size, sha256_file(p), None)
    if kind == "symlink":
        return (rel, kind, mode, None, None, os.readlink(p))
    if kind in ("chardev", "blockdev"):
        return (rel, kind, mode, None, None, f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}")
    return (rel, kind, mode, None, None, None)


def sif_partition(sif: Path) -> dict[str, Any]:
    """The descriptor of the SIF's primary (else first) squashfs partition, from `shim inspect --json`."""
    r = _run([sys.executable, "-m", "shim", "inspect", "--json", sif], timeout=60)
    doc = json.loads(r.stdout)
    squashfs = [d for d in doc["descriptors"] if d.get("type") == "FS" and d.get("fstype") == "Squashfs"]
    if not squashfs:
        raise RuntimeError(f"{sif}: no squashfs partition in {[d.get('type') for d in doc['descriptors']]}")
    return next((d for d in squashfs if d["id"] == doc.get("primary_partition")), squashfs[0])


def sif_rootfs(sif: Path, dest: Path) -> Path:
    """The SIF's root filesystem, extracted with unsquashfs into `dest` (must not exist)."""
    part = sif_partition(sif)
    _run(["unsquashfs", "-no-xattrs", "-no-progress", "-d", dest, "-o", str(part["offset"]), sif])
    return dest


# ---------------------------------------------------------------------------------------------
# A real registry


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@dataclass(frozen=True)
class Tls:
    ca_file: Path       # the CA certificate (PEM), world-readable
    cert_dir: Path      # a directory holding only ca.crt: skopeo's --*-cert-dir
    cert: Path
    key: Path


def make_tls(d: Path, host: str = "127.0.0.1") -> Tls:
    """A throwaway CA and a server certificate for `host` (an IP: subjectAltName IP:host) it signs."""
    d.mkdir(mode=0o755, exist_ok=True)
    ca_key, ca = d / "ca.key", d / "ca.crt"
    key, csr, cert = d / "server.key", d / "server.csr", d / "server.crt"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]  # EC: fast to generate
    _run(["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "30", "-subj",
          "/CN=shim tests CA", "-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    _run(["openssl", "req", "-new", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={host}"])
    ext = d / "server.ext"
    ext.write_text(f"subjectAltName=IP:{host}\nbasicConstraints=critical,CA:FALSE\n"
                   "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    _run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
          "-out", cert, "-days", "30", "-extfile", ext])
    cert_dir = d / "certs.d"
    cert_dir.mkdir(mode=0o755)
    shutil.copyfile(ca, cert_dir / "ca.crt")
    for p in (ca, cert_dir / "ca.crt", cert):
        p.chmod(0o644)
    return Tls(ca, cert_dir, cert, key)


@dataclass
class Registry:
    """A running /usr/bin/docker-registry (distribution 2.8) on 127.0.0.1."""

    host: str                  # "127.0.0.1:PORT"
    root: Path                 # its directory: config, log, storage, certificates
    storage: Path              # filesystem driver root
    log: Path
    proc: subprocess.Popen
    tls: Tls | None = None
    username: str = ""
    password: str = ""

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def ca_file(self) -> Path | None:
        return self.tls.ca_file if self.tls else None

    def url(self, path: str = "/v2/") -> str:
        return f"{self.scheme}://{self.host}{path}"

    def log_tail(self, n: int = 40) -> str:
        return f"registry log {self.log}:\n{_tail(self.log, n)}"

    def skopeo_args(self, side: str = "dest", creds: bool = True) -> list[str]:
        """skopeo's TLS and credential options for this registry as `side` ("src", "dest" or "" for inspect)."""
        opt = f"--{side}-" if side else "--"
        if not self.tls:
            return [f"{opt}tls-verify=false"]
        args = [f"{opt}cert-dir", str(self.tls.cert_dir)]
        if creds and self.username:
            args += [f"{opt}creds", f"{self.username}:{self.password}"]
        return args

    def push(self, layout: Layout, repo_tag: str, src_tag: str | None = None) -> str:
        """skopeo copy --all of layout:TAG to HOST/REPO:TAG unchanged (--preserve-digests: skopeo
        would otherwise compress the uncompressed layer); returns the pushed digest."""
        with tempfile.NamedTemporaryFile(prefix="digest.", dir=self.root) as df:
            try:
                skopeo("copy", "-q", "--all", "--preserve-digests", "--digestfile", df.name,
                       *self.skopeo_args("dest"), f"oci:{layout.path}:{src_tag or layout.tag}",
                       f"docker://{self.host}/{repo_tag}")
            except RuntimeError as e:
                raise RuntimeError(f"{e}\n{self.log_tail()}") from None
            return Path(df.name).read_text().strip()

    def blob_file(self, digest: str) -> Path:
        """The data file of a blob in the registry's storage (a test may alter it)."""
        hexd = _digest_hex(digest)
        return self.storage / "docker" / "registry" / "v2" / "blobs" / "sha256" / hexd[:2] / hexd / "data"

    def get(self, path: str = "/v2/", creds: tuple[str, str] | None = None, anonymous: bool = False,
            headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
        """(status, headers, body) of GET path, with `creds` (user, password), else this
        registry's own credentials unless `anonymous`. The headers are case-insensitive: Go
        writes "Www-Authenticate"."""
        return self.request("GET", path, creds, anonymous, headers)

    def request(self, method: str, path: str, creds: tuple[str, str] | None = None, anonymous: bool = False,
                headers: dict[str, str] | None = None) -> tuple[int, Message, bytes]:
        """As get, with another method (DELETE a manifest: deletes are enabled)."""
        req = urllib.request.Request(self.url(path), headers=dict(headers or {}), method=method)
        if creds is None and not anonymous and self.username:
            creds = (self.username, self.password)
        if creds:
            token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]  # never via a proxy
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls.ca_file))
            handlers.append(urllib.request.HTTPSHandler(context=context))
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(req, timeout=10) as resp:
                return resp.status, resp.headers, resp.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _registry_config(storage: Path, port: int, tls: Tls | None, htpasswd: Path | None,
                     token: TokenServer | None = None) -> str:
    """config.yml for distribution 2.8. No blob descriptor cache: a test that alters a stored blob
    must see the registry serve what is on disk."""
    lines = ["version: 0.1", "log:", "  level: info", "  formatter: text", "  accesslog:", "    disabled: false",
             "storage:", "  filesystem:", f"    rootdirectory: {storage}", "  delete:", "    enabled: true",
             "  maintenance:", "    uploadpurging:", "      enabled: false",
             "http:", f"  addr: 127.0.0.1:{port}", f"  secret: {secrets.token_hex(16)}"]
    if tls:
        lines += ["  tls:", f"    certificate: {tls.cert}", f"    key: {tls.key}"]
    if htpasswd:
        lines += ["auth:", "  htpasswd:", "    realm: shim-tests", f"    path: {htpasswd}"]
    if token:
        lines += ["auth:", "  token:", f"    realm: {token.realm}", f"    service: {token.service}",
                  f"    issuer: {token.issuer}", f"    rootcertbundle: {token.signer.ca_file}"]
    return "\n".join(lines) + "\n"


def _dies_with_parent() -> list[str]:
    """A command prefix that has the registry SIGTERMed when pytest dies, so a killed session
    leaves no registry behind (util-linux's setpriv; the death signal survives its exec)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


def start_registry(root: Path, tls: bool = False, username: str = "sci", attempts: int = 5) -> Registry:
    """Start a registry in the new directory `root` on a free port (another on a clash); with
    `tls`, HTTPS with a fresh CA and htpasswd (bcrypt) auth for `username` with a random password."""
    root.mkdir(mode=0o755)
    certs = make_tls(root / "tls") if tls else None
    password = secrets.token_urlsafe(12) if tls else ""
    htpasswd = None
    if tls:
        htpasswd = root / "htpasswd"
        htpasswd.write_text(_run(["htpasswd", "-Bbn", username, password]).stdout)
    storage = root / "storage"
    storage.mkdir(mode=0o755)
    return _launch(root, lambda port: _registry_config(storage, port, certs, htpasswd),
                   lambda port, log, proc: Registry(f"127.0.0.1:{port}", root, storage, log, proc, certs,
                                                    username if tls else "", password), attempts)


def _launch(root: Path, config_text: Callable[[int], str],
            make: Callable[[int, Path, subprocess.Popen], Registry], attempts: int) -> Registry:
    """Run docker-registry with root/config.yml (`config_text(port)`) on a free port, another on a
    clash; `make(port, log, proc)` gives the Registry object, checked with _wait_ready."""
    failures = []
    for attempt in range(attempts):
        port = _free_port()
        config = root / "config.yml"
        config.write_text(config_text(port))
        log = root / f"registry.{attempt}.log"
        with open(log, "wb") as logf:
            proc = subprocess.Popen([*_dies_with_parent(), str(REGISTRY_BIN), "serve", str(config)], stdout=logf,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=no_proxy_env())
        reg = make(port, log, proc)
        why = _wait_ready(reg)
        if why is None:
            return reg
        reg.stop()
        failures.append(f"port {port}: {why}\n{reg.log_tail()}")
        if "address already in use" not in _tail(log, 200):
            break  # not a port clash: another port will not help
    raise RuntimeError("docker-registry did not start:\n" + "\n".join(failures))


def _wait_ready(reg: Registry) -> str | None:
    """None once the registry has bound its own port (its log says so) and answers GET /v2/
    (200, or 401 with auth); else why not. Checking the log first keeps a stranger that
    already listens on the port from passing for ours."""
    end = time.monotonic() + START_TIMEOUT
    while time.monotonic() < end:
        if reg.proc.poll() is not None:
            return f"exited with {reg.proc.returncode}"
        if f"listening on {reg.host}" in _tail(reg.log, 200):
            with contextlib.suppress(OSError):
                status, _, _ = reg.get("/v2/", anonymous=True)
                if status in (200, 401):
                    return None
        time.sleep(0.05)
    return f"not ready after {START_TIMEOUT:.0f}s"


def stop_registry(reg: Registry) -> None:
    reg.stop()
    shutil.rmtree(reg.root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# A registry with bearer token auth (the Docker token protocol, as Docker Hub, GHCR and Quay do it)

TOKEN_SERVICE = "shim-test-registry"     # the registry's auth.token.service: the tokens' "aud"
TOKEN_ISSUER = "shim-test-issuer"        # auth.token.issuer: the tokens' "iss"
TOKEN_LIFETIME = 300                     # seconds ("expires_in", exp - iat)
PUBLIC_PREFIX = "public/"                # repositories anyone may pull
TOKEN_ACTIONS = ("pull", "push", "delete")  # what a user with the password may do anywhere


def b64url(data: bytes) -> str:
    """JOSE base64url, unpadded (RFC 7515 section 2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    """(header, claims, signature) of a compact JWS, unverified: what a test looks into."""
    header, claims, signature = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(claims)), b64url_decode(signature)


@dataclass(frozen=True)
class TokenSigner:
    """The token server's signing key and certificate, and the CA that issued the certificate
    (the registry's auth.token.rootcertbundle); made with the openssl CLI."""

    ca_file: Path        # CA certificate (PEM)
    cert: Path           # the signing certificate (PEM), issued by the CA
    key: Path            # its RSA private key (PEM)
    cert_der: bytes      # the signing certificate (DER): the JWT header's x5c

    def sign(self, data: bytes) -> bytes:
        """RS256: RSASSA-PKCS1-v1_5 with SHA-256 over `data` (openssl dgst -sign writes exactly that)."""
        r = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(self.key)], input=data,
                           capture_output=True, check=False, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"openssl dgst -sign failed ({r.returncode}): {r.stderr.decode(errors='replace')}")
        return r.stdout

    def jwt(self, claims: dict[str, Any]) -> str:
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(self.cert_der).decode()]}
        signed = f"{b64url(_json_bytes(header))}.{b64url(_json_bytes(claims))}"
        return f"{signed}.{b64url(self.sign(signed.encode()))}"


def make_token_signer(d: Path) -> TokenSigner:
    """A throwaway CA (EC, fast) and an RSA-2048 signing certificate it issues, for RS256 tokens.
    The registry checks a token's x5c chain against the CA (Go's x509 Verify, any key usage)."""
    d.mkdir(mode=0o755)
    ca_key, ca = d / "ca.key", d / "ca.pem"
    key, csr, cert = d / "signer.key", d / "signer.csr", d / "signer.pem"
    _run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
          "-keyout", ca_key, "-out", ca, "-days", "30", "-subj", "/CN=shim tests token CA",
          "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
    _run(["openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
          "-subj", "/CN=shim tests token signer"])
    ext = d / "signer.ext"
    ext.write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n")
    _run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
          "-out", cert, "-days", "30", "-extfile", ext])
    return TokenSigner(ca, cert, key, ssl.PEM_cert_to_DER_cert(cert.read_text()))


class TokenServer:
    """The Docker token protocol's authorization server (distribution's docs/spec/auth/token.md),
    in a thread of this process on a free 127.0.0.1 port (port 0: the kernel's choice, no clash).

    GET /token?service=SERVICE&scope=repository:NAME:ACTIONS (scope repeated, or space-separated)
    answers {"token", "access_token", "expires_in", "issued_at"}. Without an Authorization header
    the client is anonymous and gets "pull" on repositories under public/ only (a scope elsewhere
    is left out of "access", which may then be empty); with basic credentials for the user it gets
    what it asked of pull, push and delete on any repository; wrong credentials: 401; another
    service: 400."""

    def __init__(self, signer: TokenSigner, username: str, password: str, log: Path,
                 service: str = TOKEN_SERVICE, issuer: str = TOKEN_ISSUER) -> None:
        self.signer, self.username, self.password = signer, username, password
        self.service, self.issuer, self.log = service, issuer, log
        self._log_lock = threading.Lock()
        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenHandler)
        self._httpd.daemon_threads = True
        self._httpd.token_server = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="shim-test-token-server", daemon=True)
        self._thread.start()

    @property
    def realm(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/token"

    def note(self, line: str) -> None:
        with self._log_lock, open(self.log, "a") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {line}\n")

    def user(self, authorization: str | None) -> str | None:
        """"" for an anonymous client, the user name for good basic credentials, None for bad ones."""
        if authorization is None:
            return ""
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
        except ValueError:
            return None
        good = sep and secrets.compare_digest(user.encode(), self.username.encode()) \
            and secrets.compare_digest(password.encode(), self.password.encode())
        return user if good else None

    def grant(self, scope: str, user: str) -> dict[str, Any] | None:
        """The access entry for `scope` ("repository:NAME:pull,push"), or None for nothing granted."""
        kind, _, rest = scope.partition(":")
        name, _, actions = rest.rpartition(":")
        if kind != "repository" or not name:
            return None
        allowed = TOKEN_ACTIONS if user else ("pull",) if name.startswith(PUBLIC_PREFIX) else ()
        granted = [a for a in dict.fromkeys(actions.split(",")) if a in allowed]
        return {"type": "repository", "name": name, "actions": granted} if granted else None

    def issue(self, user: str, scopes: Sequence[str]) -> dict[str, Any]:
        now = int(time.time())
        access = [a for a in (self.grant(s, user) for s in dict.fromkeys(scopes)) if a]
        claims = {"iss": self.issuer, "sub": user, "aud": self.service, "exp": now + TOKEN_LIFETIME, "nbf": now,
                  "iat": now, "jti": secrets.token_hex(16), "access": access}
        token = self.signer.jwt(claims)
        return {"token": token, "access_token": token, "expires_in": TOKEN_LIFETIME,
                "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)


class _TokenHandler(http.server.BaseHTTPRequestHandler):
    server_version = "shim-test-token-server"

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        ts: TokenServer = self.server.token_server  # type: ignore[attr-defined]
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        scopes = [s for value in query.get("scope", []) for s in value.split()]
        user = ts.user(self.headers.get("Authorization"))
        if url.path != "/token":
            self._reply(404, {"errors": [{"code": "NOT_FOUND", "message": f"no {url.path} here"}]})
        elif query.get("service", [""])[0] != ts.service:
            self._reply(400, {"errors": [{"code": "INVALID_REQUEST", "message": f"service must be {ts.service!r}"}]})
        elif user is None:
            self._reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "invalid username or password"}]},
                        {"WWW-Authenticate": 'Basic realm="shim-test-token"'})
        else:
            doc = ts.issue(user, scopes)
            self._reply(200, doc, note=f"sub={user!r} access={jwt_parts(doc['token'])[1]['access']}")

    def _reply(self, status: int, doc: dict[str, Any], headers: dict[str, str] | None = None,
               note: str = "") -> None:
        body = _json_bytes(doc)
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", "Content-Length": str(len(body)),
                            **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.server.token_server.note(f"GET {self.path} -> {status} {note}".rstrip())  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        pass  # _reply notes each request in the token log; stderr would interleave with pytest's


def bearer_challenge(header: str) -> dict[str, str]:
    """The parameters of a `Bearer realm="...",service="...",scope="..."` challenge; {} for another scheme."""
    scheme, _, params = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return {}
    return {k.lower(): v for k, v in re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', params)}


def fetch_token(realm: str, service: str, scopes: Sequence[str] = (),
                creds: tuple[str, str] | None = None) -> tuple[int, Message, bytes]:
    """(status, headers, body) of GET REALM?service=...&scope=... (one scope parameter each), with
    basic `creds` if given, as a registry client follows a Bearer challenge."""
    query = urllib.parse.urlencode([("service", service), *(("scope", s) for s in scopes)])
    req = urllib.request.Request(f"{realm}?{query}")
    if creds:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode())
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


@dataclass
class TokenRegistry(Registry):
    """A plain-HTTP registry with auth.token: it trusts tokens the in-process TokenServer signs.
    `get`/`request` follow its Bearer challenge (with this registry's credentials, or `creds`, or
    none when `anonymous`) unless `follow=False` or the caller sets its own Authorization header."""

    token_server: TokenServer | None = None

    @property
    def realm(self) -> str:
        assert self.token_server is not None
        return self.token_server.realm

    @property
    def service(self) -> str:
        assert self.token_server is not None
        return self.token_server.service

    @property
    def issuer(self) -> str:
        assert self.token_server is not None
        return self.token_server.issuer

    @property
    def signer(self) -> TokenSigner:
        assert self.token_server is not None
        return self.token_server.signer

    def skopeo_args(self, side: str = "dest", creds: bool = True) -> list[str]:
        opt = f"--{side}-" if side else "--"
        return [f"{opt}tls-verify=false", *([f"{opt}creds", f"{self.username}:{self.password}"] if creds else [])]

    def token(self, *scopes: str, creds: tuple[str, str] | None = None, anonymous: bool = False) -> str:
        """A token for `scopes` from the token server, with `creds`, else this registry's own
        credentials unless `anonymous`; raises unless the server answers 200."""
        if creds is None and not anonymous:
            creds = (self.username, self.password)
        status, _, body = fetch_token(self.realm, self.service, scopes, creds)
        if status != 200:
            raise RuntimeError(f"token server: {status} {body.decode(errors='replace')}\n{self.log_tail()}")
        return json.loads(body)["token"]

    def get(self, path: str = "/v2/", creds: tuple[str, str] | None = None, anonymous: bool = False,
            headers: dict[str, str] | None = None, follow: bool = True) -> tuple[int, Message, bytes]:
        return self.request("GET", path, creds, anonymous, headers, follow)

    def request(self, method: str, path: str, creds: tuple[str, str] | None = None, anonymous: bool = False,
                headers: dict[str, str] | None = None, follow: bool = True) -> tuple[int, Message, bytes]:
        status, got, body = super().request(method, path, anonymous=True, headers=headers)
        challenge = bearer_challenge(got.get("WWW-Authenticate", ""))
        if not follow or status != 401 or not challenge or any(h.lower() == "authorization" for h in headers or {}):
            return status, got, body
        if creds is None and not anonymous:
            creds = (self.username, self.password)
        tstatus, theaders, tbody = fetch_token(challenge.get("realm", ""), challenge.get("service", ""),
                                               challenge.get("scope", "").split(), creds)
        if tstatus != 200:
            return tstatus, theaders, tbody  # the token server's refusal (wrong credentials: 401)
        token = json.loads(tbody)["token"]
        return super().request(method, path, anonymous=True,
                               headers={**(headers or {}), "Authorization": f"Bearer {token}"})

    def log_tail(self, n: int = 40) -> str:
        tokens = f"token server log {self.token_server.log}:\n{_tail(self.token_server.log, n)}" \
            if self.token_server else ""
        return f"{super().log_tail(n)}\n{tokens}"

    def stop(self) -> None:
        super().stop()
        if self.token_server:
            self.token_server.stop()


def start_token_registry(root: Path, username: str = "sci", attempts: int = 5) -> TokenRegistry:
    """A token server (fresh signing CA and key, user `username` with a random password) and a
    plain-HTTP registry in the new directory `root` that trusts its tokens (auth.token with
    rootcertbundle = the signing CA) on a free port (another on a clash). Checks that a token
    from the server opens GET /v2/ before returning."""
    root.mkdir(mode=0o755)
    signer = make_token_signer(root / "token")
    password = secrets.token_urlsafe(12)
    server = TokenServer(signer, username, password, root / "token.log")
    storage = root / "storage"
    try:
        storage.mkdir(mode=0o755)
        # The server joins the registry object once it runs: a registry stopped on a port clash
        # must not take the server down with it.
        reg = _launch(root, lambda port: _registry_config(storage, port, None, None, server),
                      lambda port, log, proc: TokenRegistry(f"127.0.0.1:{port}", root, storage, log, proc, None,
                                                            username, password), attempts)
    except BaseException:
        server.stop()
        raise
    assert isinstance(reg, TokenRegistry)
    reg.token_server = server
    status, headers, body = reg.get("/v2/", follow=False)
    challenge = bearer_challenge(headers.get("WWW-Authenticate", ""))
    opened = reg.get("/v2/", anonymous=True)[0] if challenge else None
    if status != 401 or challenge.get("realm") != server.realm or opened != 200:
        reg.stop()
        raise RuntimeError(f"token registry: GET /v2/ gave {status} {headers.get('WWW-Authenticate')!r}, "
                           f"with an anonymous token {opened}\n{reg.log_tail()}")
    return reg
