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

Bounded by the pull's caps, whatever the layers' headers say: the bytes the layers decompress
to (everything the decompressor yields, shim.oci.layerstream) and the sizes their members
declare both count against `max_bytes`; the members of all layers against `max_entries`. No
member header is kept once read, so memory grows with the final tree's paths, not with entries.
"""

from __future__ import annotations

import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO

from shim.errors import ImageError, shown
from shim.image.arch import resolve_links
from shim.oci.layerstream import SIZE_HINT, Budget, layer_stream, members
from shim.oci.model import Layer, ResolvedImage

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
DEFAULT_MAX_ENTRIES = 2_000_000   # entries of all layers of one image ([pull] max_entries in shim.toml)
MAX_DEPTH = 512                   # directories a member's name goes through


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
    max_entries: int = DEFAULT_MAX_ENTRIES         # the members of all layers, at most
    total: int = field(default=0, init=False)      # the members' declared sizes, so far
    entries: int = field(default=0, init=False)    # the members read, so far (pass 1)


def _dir(layer: int, seq: int, info: tarfile.TarInfo | None) -> _Node:
    return _Node(layer, seq, "dir", info, {}, "", (0, 0))


class Flattener:
    def __init__(self, image: ResolvedImage, opts: FlattenOptions) -> None:
        self.image, self.opts = image, opts
        self.root = _dir(0, 0, None)
        self.extra_layer = len(image.layers) + 1
        self.budget = Budget(opts.max_bytes)

    # ---- pass 1: the final tree ----

    def plan(self) -> None:
        for layer in self.image.layers:
            self.opts.progress(f"reading layer {layer.index}/{len(self.image.layers)} ({layer.blob.what})")
            with layer_stream(self.image, layer, self.budget) as stream:
                for seq, (_tf, m) in enumerate(members(stream, layer)):
                    self._apply(layer, seq, m)
        for seq, extra in enumerate(self.opts.extra):
            info = tarfile.TarInfo(extra.path)
            info.size, info.mode, info.type = len(extra.data), extra.mode, tarfile.REGTYPE
            parts = _split(extra.path)
            self._place(self.extra_layer, seq, info, parts, self._mkdirs(parts[:-1]))

    def _refuse(self, layer: Layer, m: tarfile.TarInfo, why: str) -> ImageError:
        return ImageError(f"layer {layer.index} ({layer.blob.what}): member '{shown(m.name)}' {why}; nothing was "
                          "written", "the image is malformed or malicious; do not use it")

    def _count(self, layer: Layer, m: tarfile.TarInfo) -> None:
        opts = self.opts
        opts.total += max(m.size, 0)
        opts.entries += 1
        if opts.total > opts.max_bytes:
            raise ImageError(f"layer {layer.index} ({layer.blob.what}) expands past the size cap "
                             f"({opts.max_bytes} bytes uncompressed in all)", SIZE_HINT)
        if opts.entries > opts.max_entries:
            raise ImageError(f"layer {layer.index} ({layer.blob.what}) takes the image past {opts.max_entries} "
                             "entries, the site's cap", "a site raises it with [pull] max_entries in shim.toml")

    def _apply(self, layer: Layer, seq: int, m: tarfile.TarInfo) -> None:
        self._count(layer, m)
        if m.name.startswith("/"):
            raise self._refuse(layer, m, "has an absolute path")
        parts = _split(m.name)
        if ".." in parts:
            raise self._refuse(layer, m, "would land outside the root ('..')")
        if len(parts) > MAX_DEPTH:
            raise self._refuse(layer, m, f"is {len(parts)} directories deep (at most {MAX_DEPTH})")
        if not parts:
            return  # "./": the root's own entry; the root is always 0755
        if m.islnk():
            target = _split(m.linkname)
            if m.linkname.startswith("/") or ".." in target:
                raise self._refuse(layer, m, f"is a hard link out of the root ('{shown(m.linkname)}')")
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
                    raise self._refuse(layer, m, f"goes through the symlink {shown('/'.join([*walked, name]))} -> "
                                       f"{shown(child.link)} that the same layer made")
                resolved = resolve_links("/".join([*walked, name]), self._readlink)
                if resolved is None:
                    raise self._refuse(layer, m, "goes through a symlink loop")
                return self._parent(layer, m, [*_split(resolved), *parts[i + 1:]])
            elif child.kind != "dir":
                raise self._refuse(layer, m, f"is below {shown('/'.join([*walked, name]))}, which is not a directory")
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
                raise self._refuse(layer, m, f"is a hard link to '{shown(m.linkname)}', which is not a file of the "
                                   "image")
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
        with layer_stream(self.image, layer, None) as stream:
            for seq, (src, m) in enumerate(members(stream, layer)):
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
    """Remove what layers below `layer_no` put under directory `node` (a directory emptied so
    goes too, unless its own layer or a later one made it). Without recursion: trees are deep."""
    if node.children is None:
        return
    dirs, todo = [], [node]
    while todo:  # every directory below, each before what is in it
        d = todo.pop()
        dirs.append(d)
        todo.extend(c for c in d.children.values() if c.kind == "dir")  # type: ignore[union-attr]
    for d in reversed(dirs):  # what is in a directory before the directory
        assert d.children is not None
        for name, child in list(d.children.items()):
            if child.layer < layer_no and (child.kind != "dir" or not child.children):
                del d.children[name]


def _walk(root: _Node, path: str) -> Iterator[tuple[str, _Node]]:
    """Every node below `root`, a directory before what is in it, names sorted (without recursion)."""
    assert root.children is not None
    stack, paths = [iter(sorted(root.children.items()))], [path]
    while stack:
        for name, child in stack[-1]:
            child_path = f"{paths[-1]}/{name}" if paths[-1] else name
            yield child_path, child
            if child.kind == "dir":
                assert child.children is not None
                stack.append(iter(sorted(child.children.items())))
                paths.append(child_path)
                break
        else:
            stack.pop()
            paths.pop()


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
