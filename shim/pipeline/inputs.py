"""Everything a launch record is derived from, as inputs the C executor checks before it runs the
record again (docs/launch-record.md, "Inputs"). Missing one here means a stale launch; the
invalidation tests (tests/test_records.py) change each kind and expect a fresh plan."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shim.host.paths import on_host
from shim.record.format import CHECK, IDENTITY
from shim.record.model import FileInput, Input
from shim.record.snapshot import file_input, glob_input, identity_input

if TYPE_CHECKING:
    from shim.site.profile_model import ProfileSet

FOLLOW = CHECK["FOLLOW"]
PRESENCE = CHECK["EXISTS"] | CHECK["TYPE"] | FOLLOW          # there, and still a file / a directory
FUSE_DEVICE_CHECK = CHECK["EXISTS"] | CHECK["TYPE"] | CHECK["MODE"] | FOLLOW


@dataclass
class InputSet:
    """Inputs in the order they were found, each path once."""
    items: list[Input] = field(default_factory=list)
    _seen: set = field(default_factory=set)

    def add(self, item: Input) -> None:
        key = (type(item).__name__, getattr(item, "path", None) or getattr(item, "pattern", None)
               or getattr(item, "name", None))
        if key not in self._seen:
            self._seen.add(key)
            self.items.append(item)

    def extend(self, items: Iterable[Input]) -> None:
        for i in items:
            self.add(i)


def image_inputs(path: str, kind: str, st: os.stat_result) -> list[Input]:
    """A SIF by its identity and change time (rewritten in place: a new plan, and its signatures
    checked again); a directory by what it is (what in it the plan read is listed from the read log).
    `st`: the opened image's fstat (the executor checks its own descriptor against IMAGE_FILE too)."""
    check = (CHECK["EXISTS"] | CHECK["TYPE"] | CHECK["ID"] if kind == "dir" else IDENTITY | CHECK["CTIME"]) | FOLLOW
    return [FileInput(path, check, st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)]


def read_log_inputs(base: str, reads: dict) -> list[Input]:
    """{relative path: identity} read under `base`."""
    return [identity_input(os.path.join(base, rel) if rel else base, ident) for rel, ident in reads.items()]


def profile_inputs(conf_dir: str, profiles: ProfileSet | None, host_root: str) -> list[Input]:
    """The profile files, what is in the directory, and the host files each profile named (and,
    for a glob, what it matches)."""
    found: list[Input] = [glob_input(os.path.join(conf_dir, "profiles", "*.toml"))]
    for p in profiles.profiles if profiles else ():
        found.append(file_input(p.file, IDENTITY | FOLLOW))
        pv = p.provides
        for spec in (*pv.libraries, *pv.plugin_dirs, *pv.binaries, *pv.config_files, *pv.devices):
            if spec.is_glob and spec.path:
                found.append(glob_input(on_host(host_root, spec.path)))
            found += [file_input(on_host(host_root, m), IDENTITY | FOLLOW) for m in spec.matches]
    return found

