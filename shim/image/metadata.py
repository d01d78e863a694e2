"""An image's Apptainer metadata: labels, runscript, environment scripts, definition file, help,
read from a directory (sandbox) or from inside a SIF/squashfs without mounting it (unsquashfs
-cat, squashfs-tools; the SIF's own labels and definition-file objects first)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass, field

from shim.errors import ImageError

META_DIR = ".singularity.d"
MAX_FILE = 4 << 20  # bytes read of one metadata file


@dataclass
class Metadata:
    labels: dict[str, object] = field(default_factory=dict)
    runscript: str = ""
    environment: list[tuple[str, str]] = field(default_factory=list)  # (container path, content)
    deffile: str = ""
    helpfile: str = ""
    test: str = ""


class _Tree:
    """Files of the image by container path: a directory's, or a squashfs's through unsquashfs."""

    def __init__(self, path: str, offset: int | None) -> None:
        self.path, self.offset = path, offset
        self.unsquashfs = shutil.which("unsquashfs") if offset is not None else None
        if offset is not None and self.unsquashfs is None:
            raise ImageError("unsquashfs is needed to read the image's metadata", "install squashfs-tools")

    def read(self, rel: str) -> str | None:
        if self.offset is None:
            full = os.path.join(self.path, rel)
            if os.path.islink(full) or not os.path.isfile(full):
                return None
            with open(full, "rb") as f:
                return f.read(MAX_FILE).decode("utf-8", "replace")
        done = subprocess.run([self.unsquashfs, "-o", str(self.offset), "-cat", self.path, rel],
                              capture_output=True, check=False)
        return done.stdout[:MAX_FILE].decode("utf-8", "replace") if done.returncode == 0 else None

    def names(self, rel_dir: str) -> list[str]:
        if self.offset is None:
            full = os.path.join(self.path, rel_dir)
            return sorted(os.listdir(full)) if os.path.isdir(full) and not os.path.islink(full) else []
        done = subprocess.run([self.unsquashfs, "-o", str(self.offset), "-l", "-d", "", self.path, rel_dir],
                              capture_output=True, text=True, check=False)
        prefix = "/" + rel_dir.strip("/") + "/"
        return sorted(line[len(prefix):] for line in done.stdout.splitlines()
                      if line.startswith(prefix) and "/" not in line[len(prefix):])


def read_metadata(image_path: str) -> Metadata:
    from shim.image.open import image_kind, open_image

    ref = open_image(image_path)
    tree = _Tree(ref.path, None if ref.kind == "dir" else ref.offset)
    meta = Metadata()
    if image_kind(ref) == "sif":
        _from_sif(ref.path, meta)
    if not meta.labels:
        labels = tree.read(f"{META_DIR}/labels.json")
        try:
            found = json.loads(labels) if labels else {}
        except ValueError:
            found = {}
        meta.labels = found if isinstance(found, dict) else {}
    meta.runscript = tree.read(f"{META_DIR}/runscript") or ""
    meta.test = tree.read(f"{META_DIR}/test") or ""
    meta.helpfile = tree.read(f"{META_DIR}/runscript.help") or ""
    meta.deffile = meta.deffile or tree.read(f"{META_DIR}/Singularity") or ""
    for name in tree.names(f"{META_DIR}/env"):
        if name.endswith(".sh"):
            meta.environment.append((f"/{META_DIR}/env/{name}", tree.read(f"{META_DIR}/env/{name}") or ""))
    return meta


def _from_sif(path: str, meta: Metadata) -> None:
    from shim.image.sif import DATA_DEFFILE, read_object, read_sif, sif_labels

    img = read_sif(path)
    meta.labels.update(sif_labels(img))
    for d in img.descriptors:
        if d.data_type == DATA_DEFFILE:
            meta.deffile = read_object(img, d).decode("utf-8", "replace")
