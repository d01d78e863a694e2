"""shim.toml's [serve]: how a SIF's (or squashfs file's) files are served to the app, as the site
sets it (a launch's --serve / SHIMRUN_SERVE chooses the mode for one run).

- mode: auto (default: a node-local unpacked copy when it fits, else a kept mount), unpack, kept,
  mount (a squashfuse mount per launch, shim's behaviour before the node-local cache).
- local_dir: where unpacked roots go: a private directory shim-UID made in it; "" (default): the
  user's cache ($SHIMRUN_CACHE/rootfs), or /tmp/shim-UID when that is on a network file system.
- unpack_cap: how much the unpacked roots may take together: bytes (an integer), a size ("20G"),
  or a share of the file system holding them ("50%", the default); least recently used roots go.
- kept_idle: seconds a kept mount stays up with no launch using it (default 600).
- stage: "auto" (copy the image to the node first when it lies on a network file system),
  "always", "never" (shim/launch/staging.py).

Non-goal: deciding anything (shim/launch/serve.py does, over these settings and the node's facts).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, NamedTuple

from shim.errors import ExitCode, ShimError

STAGE_MODES = ("auto", "always", "never")
MODES = ("auto", "unpack", "kept", "mount")
DEFAULT_CAP = "50%"
DEFAULT_KEPT_IDLE = 600
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class ServeSettings(NamedTuple):
    mode: str = "auto"
    local_dir: str = ""             # "": the user's cache (see the module's docstring)
    unpack_cap: str = DEFAULT_CAP   # as written: "50%", "20G", "1073741824"
    kept_idle: int = DEFAULT_KEPT_IDLE
    stage: str = "auto"


class Cap(NamedTuple):
    """unpack_cap understood: a fixed number of bytes, or a share (percent) of the file system."""
    size: int = 0
    percent: int = 0

    def bytes(self, fs_total: int) -> int:
        return self.size if not self.percent else fs_total * self.percent // 100


def parse_cap(text: str) -> Cap | None:
    """"50%", "20G", "20GiB", "1073741824" -> Cap; None when it is none of these."""
    text = text.strip().upper()
    if m := re.fullmatch(r"(\d{1,3})\s*%", text):
        percent = int(m.group(1))
        return Cap(percent=percent) if 0 < percent <= 100 else None
    if m := re.fullmatch(r"(\d+)\s*([KMGT]?)(?:I?B)?", text):
        return Cap(size=int(m.group(1)) * _UNITS[m.group(2)])
    return None


def _fail(path: Path, key: str, value: Any, why: str, example: str) -> ShimError:
    return ShimError(ExitCode.CONFIG, f"{path}: serve.{key} = {value!r} {why}", f"e.g. {example} (see conf/shim.toml)")


def serve_settings(path: Path, data: dict) -> ServeSettings:
    """[serve] of one shim.toml (its keys' types are checked by the schema already)."""
    section = data.get("serve", {})
    mode = section.get("mode", "auto")
    if mode not in MODES:
        raise _fail(path, "mode", mode, f"is not one of {', '.join(MODES)}", 'mode = "auto"')
    local_dir = section.get("local_dir", "")
    if local_dir and not local_dir.startswith("/"):
        raise _fail(path, "local_dir", local_dir, "is not an absolute path", 'local_dir = "/local/scratch"')
    cap = section.get("unpack_cap", DEFAULT_CAP)
    if isinstance(cap, bool) or (isinstance(cap, int) and cap <= 0) or parse_cap(str(cap)) is None:
        raise _fail(path, "unpack_cap", cap, "is not a size", 'unpack_cap = "20G", or "50%" of the local file system')
    idle = section.get("kept_idle", DEFAULT_KEPT_IDLE)
    if isinstance(idle, bool) or idle < 0:
        raise _fail(path, "kept_idle", idle, "is not a number of seconds", "kept_idle = 600")
    stage = section.get("stage", "auto")
    if stage not in STAGE_MODES:
        raise _fail(path, "stage", stage, f"is not one of {', '.join(STAGE_MODES)}", 'stage = "auto"')
    return ServeSettings(mode, local_dir.rstrip("/") or ("/" if local_dir else ""), str(cap), idle, stage)
