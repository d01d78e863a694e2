"""An image's layers applied in order, as one tar stream (for `mksquashfs -tar`), in two passes
over the layers and without writing any of them to disk.

Pass 1 reads every layer's headers (the data is decompressed and hashed, to check the layer
against its diff_id, but not kept) and builds the final tree: later layers replace entries,
`.wh.NAME` removes NAME of the layers below, `.wh..wh..opq` empties a directory of what the
layers below put there (both as the OCI image spec's layer section says: they act on lower
layers only, whatever their place in their own layer). Pass 2 writes every directory first,
parents before children, then streams each layer again and passes on the members that survived,
then the hard links (so each comes after its target). Memory is one small node per path.

Refused, with the layer and member named: absolute names, names with `..`, a name that goes
through a symlink its own layer made (`lib -> /etc`, then `lib/x`), a name below a file, a hard
link to nothing. A name through a lower layer's symlink is resolved inside the image, as umoci
does. Device nodes are dropped (an unprivileged runtime cannot use them; /dev is the host's).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

from shim.errors import ImageError
from shim.image.arch import resolve_links
from shim.oci.model import Layer, ResolvedImage
from shim.oci.verify import VerifyingReader

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_COPY = 1 << 20


@dataclass(eq=False)
class _Node:
    __slots__ = ("layer", "seq", "kind", "info", "children", "link", "source")
    layer: int                       # 0: implied by a child; n+1: shim's own files
    seq: int                         # the member's place in its layer
    kind: str                        # "dir", "sym", "hard", "file" (regular, fifo: anything with a body or none)
    info: tarfile.TarInfo | None     # a directory's header (None when implied)
    children: dict[str, _Node] | None
    link: str                        # a symlink's target
    source: tuple[int, int]          # a hard link's content: (layer, seq) of the file it names


@dataclass(frozen=True)
class ExtraFile:
    """A file shim adds on top of the image (the Apptainer metadata)."""

    path: str
    data: bytes
    mode: int = 0o644


@dataclass
class FlattenOptions:
    max_bytes: int                                 # the uncompressed layers' total, at most
    progress: Callable[[str], None] = lambda _m: None
    extra: tuple[ExtraFile, ...] = ()
    total: int = field(default=0, init=False)


def _dir(layer: int, seq: int, info: tarfile.TarInfo | None) -> _Node:
    return _Node(layer, seq, "dir", info, {}, "", (0, 0))


@contextlib.contextmanager
def _layer_stream(image: ResolvedImage, layer: Layer, check_diff_id: bool) -> Iterator[IO[bytes]]:
    """The layer's uncompressed tar, whatever its compression (told by its first bytes)."""
    import zstandard

    with image.open_blob(layer.blob) as raw:
        head = raw.read(6)
        joined = _Prefixed(head, raw)
        if head.startswith(b"\x1f\x8b"):
            plain: IO[bytes] = gzip.GzipFile(fileobj=joined, mode="rb")  # type: ignore[arg-type]
        elif head.startswith(b"\x28\xb5\x2f\xfd"):
            plain = zstandard.ZstdDecompressor().stream_reader(joined, read_across_frames=True)  # type: ignore[arg-type]
        elif head.startswith(b"\xfd7zXZ"):
            plain = lzma.LZMAFile(joined)  # type: ignore[arg-type]  # noqa: SIM115 (closed with raw)
        elif head.startswith(b"BZh"):
            plain = bz2.BZ2File(joined)  # type: ignore[arg-type]
        else:
            plain = joined  # type: ignore[assignment]
        checked = VerifyingReader(plain, layer.diff_id if check_diff_id else "", -1, f"layer {layer.index} "
                                  f"({layer.blob.what}), uncompressed")
        try:
            yield checked  # type: ignore[misc]
            checked.drain()
            if isinstance(raw, VerifyingReader):
                raw.drain()
        except (OSError, EOFError, zstandard.ZstdError, lzma.LZMAError) as e:
            raise ImageError(f"layer {layer.index} ({layer.blob.what}) cannot be decompressed ({e})",
                             "the image is damaged; fetch it again") from None


class _Prefixed:
    """A stream with some bytes already read from it put back in front."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self.head, self.rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if self.head:
            if n < 0:
                data, self.head = self.head + self.rest.read(), b""
                return data
            data, self.head = self.head[:n], self.head[n:]
            return data if len(data) == n else data + self.rest.read(n - len(data))
        return self.rest.read(n)

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:
        data = self.read(len(buf))
        buf[:len(data)] = data
        return len(data)


def _members(stream: IO[bytes], layer: Layer) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tf:  # type: ignore[call-overload]
            for m in tf:
                yield tf, m
    except tarfile.TarError as e:
        raise ImageError(f"layer {layer.index} ({layer.blob.what}) is not a valid tar archive ({e})",
                         "the image is damaged; fetch it again") from None


class Flattener:
    def __init__(self, image: ResolvedImage, opts: FlattenOptions) -> None:
        self.image, self.opts = image, opts
        self.root = _dir(0, 0, None)
        self.extra_layer = len(image.layers) + 1

    # ---- pass 1: the final tree ----

    def plan(self) -> None:
        for layer in self.image.layers:
            self.opts.progress(f"reading layer {layer.index}/{len(self.image.layers)} ({layer.blob.what})")
            with _layer_stream(self.image, layer, check_diff_id=True) as stream:
                for seq, (_tf, m) in enumerate(_members(stream, layer)):
                    self._apply(layer, seq, m)
        for seq, extra in enumerate(self.opts.extra):
            info = tarfile.TarInfo(extra.path)
            info.size, info.mode, info.type = len(extra.data), extra.mode, tarfile.REGTYPE
            parts = _split(extra.path)
            self._place(self.extra_layer, seq, info, parts, self._mkdirs(parts[:-1]))

    def _refuse(self, layer: Layer, m: tarfile.TarInfo, why: str) -> ImageError:
        return ImageError(f"layer {layer.index} ({layer.blob.what}): member {m.name!r} {why}; nothing was written",
                          "the image is malformed or malicious; do not use it")

    def _apply(self, layer: Layer, seq: int, m: tarfile.TarInfo) -> None:
        self.opts.total += max(m.size, 0)
        if self.opts.total > self.opts.max_bytes:
            raise ImageError(f"layer {layer.index} ({layer.blob.what}) expands past the size cap "
                             f"({self.opts.max_bytes} bytes uncompressed in all)",
                             "raise it with --max-size (or SHIMRUN_PULL_MAX_SIZE) if the image is that big")
        if m.name.startswith("/"):
            raise self._refuse(layer, m, "has an absolute path")
        parts = _split(m.name)
        if ".." in parts:
            raise self._refuse(layer, m, "would land outside the root ('..')")
        if not parts:
            return  # "./": the root's own entry; the root is always 0755
        if m.islnk():
            target = _split(m.linkname)
            if m.linkname.startswith("/") or ".." in target:
                raise self._refuse(layer, m, f"is a hard link out of the root ({m.linkname!r})")
        parent = self._parent(layer, m, parts[:-1])
        base = parts[-1]
        if base == OPAQUE:
            _prune(parent, layer.index)
            return
        if base.startswith(WHITEOUT):
            name = base[len(WHITEOUT):]
            gone = parent.children.get(name) if parent.children is not None else None
            if gone is not None and gone.layer < layer.index:
                _prune(gone, layer.index)
                if gone.kind != "dir" or not gone.children:
                    del parent.children[name]  # type: ignore[union-attr]
            return
        self._place(layer.index, seq, m, [*parts[:-1], base], parent, layer)

    def _parent(self, layer: Layer, m: tarfile.TarInfo, parts: list[str]) -> _Node:
        """The directory node for `parts`, made where missing; through a lower layer's symlink
        resolved inside the image."""
        node, walked = self.root, []
        for i, name in enumerate(parts):
            assert node.children is not None
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = _dir(0, 0, None)
            elif child.kind == "sym":
                if child.layer == layer.index:
                    raise self._refuse(layer, m, f"goes through the symlink {'/'.join([*walked, name])} -> "
                                       f"{child.link} that the same layer made")
                resolved = resolve_links("/".join([*walked, name]), self._readlink)
                if resolved is None:
                    raise self._refuse(layer, m, "goes through a symlink loop")
                return self._parent(layer, m, [*_split(resolved), *parts[i + 1:]])
            elif child.kind != "dir":
                raise self._refuse(layer, m, f"is below {'/'.join([*walked, name])}, which is not a directory")
            node = child
            walked.append(name)
        return node

    def _readlink(self, rel: str) -> str | None:
        node = self._lookup(_split(rel))
        return node.link if node is not None and node.kind == "sym" else None

    def _lookup(self, parts: list[str]) -> _Node | None:
        node: _Node | None = self.root
        for name in parts:
            if node is None or node.children is None:
                return None
            node = node.children.get(name)
        return node

    def _place(self, layer_no: int, seq: int, m: tarfile.TarInfo, parts: list[str],  # noqa: PLR0913
               parent: _Node, layer: Layer | None = None) -> None:
        assert parent.children is not None
        name, old = parts[-1], parent.children.get(parts[-1])
        if m.isdir():
            if old is not None and old.kind == "dir":
                old.layer, old.seq, old.info = layer_no, seq, m
            else:
                parent.children[name] = _dir(layer_no, seq, m)
        elif m.ischr() or m.isblk():
            parent.children.pop(name, None)  # dropped, and it hides what was there
        elif m.issym():
            parent.children[name] = _Node(layer_no, seq, "sym", None, None, m.linkname, (0, 0))
        elif m.islnk():
            target = self._lookup(_split(m.linkname))
            if target is None or target.kind not in ("file", "hard"):
                assert layer is not None
                raise self._refuse(layer, m, f"is a hard link to {m.linkname!r}, which is not a file of the image")
            source = target.source if target.kind == "hard" else (target.layer, target.seq)
            parent.children[name] = _Node(layer_no, seq, "hard", None, None, "", source)
        else:
            parent.children[name] = _Node(layer_no, seq, "file", None, None, "", (0, 0))

    def _mkdirs(self, parts: list[str]) -> _Node:
        node = self.root
        for name in parts:
            assert node.children is not None
            child = node.children.get(name)
            if child is None or child.kind != "dir":
                child = node.children[name] = _dir(0, 0, None)
            node = child
        return node

    # ---- pass 2: the stream ----

    def write(self, out: IO[bytes]) -> None:
        """Write the flattened tree to `out` as one tar archive."""
        files: dict[tuple[int, int], str] = {}
        links: list[tuple[str, tuple[int, int]]] = []
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            for path, node in _walk(self.root, ""):
                if node.kind == "dir":
                    tf.addfile(_header(path, node.info, tarfile.DIRTYPE))
                elif node.kind == "hard":
                    links.append((path, node.source))
                else:
                    files[(node.layer, node.seq)] = path
            # A hard link whose file a later layer replaced keeps the old content: the first
            # such link carries it as a file, the others link to that.
            carriers: dict[tuple[int, int], str] = {}
            for path, source in links:
                if source not in files and source not in carriers:
                    carriers[source] = path
            wanted = {**carriers, **files}
            for layer in self.image.layers:
                self.opts.progress(f"writing layer {layer.index}/{len(self.image.layers)}")
                self._stream_layer(tf, layer, wanted)
            for seq, extra in enumerate(self.opts.extra):
                if (self.extra_layer, seq) in wanted:
                    import io

                    info = _header(extra.path, None, tarfile.REGTYPE)
                    info.mode, info.size = extra.mode, len(extra.data)
                    tf.addfile(info, io.BytesIO(extra.data))
            for path, source in links:
                target = wanted[source]
                if target != path:
                    info = _header(path, None, tarfile.LNKTYPE)
                    info.linkname = target
                    tf.addfile(info)

    def _stream_layer(self, tf: tarfile.TarFile, layer: Layer, wanted: dict[tuple[int, int], str]) -> None:
        mine = {seq: path for (n, seq), path in wanted.items() if n == layer.index}
        if not mine:
            return
        with _layer_stream(self.image, layer, check_diff_id=False) as stream:
            for seq, (src, m) in enumerate(_members(stream, layer)):
                path = mine.get(seq)
                if path is None:
                    continue
                info = _header(path, m, m.type if not m.islnk() else tarfile.REGTYPE)
                if m.issym():
                    info.linkname = m.linkname
                if m.isreg() or m.type == tarfile.CONTTYPE:
                    info.type, info.size = tarfile.REGTYPE, m.size
                    tf.addfile(info, src.extractfile(m))
                else:
                    tf.addfile(info)


def _split(name: str) -> list[str]:
    return [p for p in name.split("/") if p not in ("", ".")]


def _prune(node: _Node, layer_no: int) -> None:
    """Remove what layers below `layer_no` put under directory `node`."""
    if node.children is None:
        return
    for name, child in list(node.children.items()):
        if child.kind == "dir":
            _prune(child, layer_no)
            if child.layer < layer_no and not child.children:
                del node.children[name]
        elif child.layer < layer_no:
            del node.children[name]


def _walk(node: _Node, path: str) -> Iterator[tuple[str, _Node]]:
    """Every node below `node`, a directory before what is in it."""
    assert node.children is not None
    for name in sorted(node.children):
        child = node.children[name]
        child_path = f"{path}/{name}" if path else name
        yield child_path, child
        if child.kind == "dir":
            yield from _walk(child, child_path)


def _header(path: str, src: tarfile.TarInfo | None, kind: bytes) -> tarfile.TarInfo:
    """A fresh header (never a copy of the source's pax records, whose "path" would win over the
    new name): type, mode and times of `src`, or a plain 0755 directory / 0644 file."""
    info = tarfile.TarInfo(path)
    info.type = kind
    if src is not None:
        info.mode = stat.S_IMODE(src.mode) | (src.mode & 0o7000)
        info.mtime = int(src.mtime)
    else:
        info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
        info.mtime = 0
    info.uname = info.gname = ""
    return info
