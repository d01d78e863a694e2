"""Per-user cache of ElfFacts, so a warm run neither parses ELF files nor imports pyelftools.

One JSON file, `$SHIMRUN_CACHE/elf-facts.json` (default ~/.cache/shim, or $XDG_CACHE_HOME/shim
like the rest of shim's cache), maps each file's real path to its identity (st_dev, st_ino,
st_size, st_mtime_ns) and facts. A changed or replaced file has another identity and is parsed
again. save() merges this process's new entries into the file as it is on disk now and replaces
it atomically (temporary file in the same directory, os.replace), so concurrent shimrun
processes never leave a torn file; between two of them the last writer wins. A missing,
unreadable or corrupt file is an empty cache, never an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from shim.cachefiles import cache_path, read_trusted, write_atomic
from shim.elf.facts import ElfFacts, elf_facts

CACHE_NAME = "elf-facts.json"
_FORMAT = 1
MAX_ENTRIES = 20000  # oldest entries go first; a few thousand libraries is a big site stack

FactsFn = Callable[[str], ElfFacts | None]


def default_cache_path() -> str | None:
    return cache_path(CACHE_NAME)


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


class FactsCache:
    """get(path) -> the file's ElfFacts (None if not ELF), from the cache or computed on a miss."""

    def __init__(self, path: str | None = None, compute: FactsFn = elf_facts,
                 max_entries: int = MAX_ENTRIES) -> None:
        self.path = path or default_cache_path()   # None: caching is off (no private cache)
        self._compute = compute
        self._max = max_entries
        self._entries: dict[str, list[Any]] | None = None  # loaded on first use
        self._changed: dict[str, list[Any]] = {}

    def _load(self) -> dict[str, list[Any]]:
        if self._entries is None:
            self._entries = self._read_disk()
        return self._entries

    def _read_disk(self) -> dict[str, list[Any]]:
        try:
            raw = read_trusted(self.path)
            doc = json.loads(raw) if raw is not None else None
        except ValueError:  # torn or not JSON
            return {}
        if not isinstance(doc, dict) or doc.get("format") != _FORMAT or not isinstance(doc.get("files"), dict):
            return {}
        return {k: v for k, v in doc["files"].items() if isinstance(v, list) and len(v) == 5}

    def get(self, path: str | os.PathLike[str]) -> ElfFacts | None:
        """Raises what the compute function raises (ImageError for a malformed ELF file)."""
        path = os.fspath(path)
        try:
            st = os.stat(path)
        except OSError:
            return None
        real = os.path.realpath(path)
        ident = _identity(st)
        entries = self._load()
        entry = entries.get(real)
        if entry is not None and entry[:4] == ident:
            if entry[4] is None:
                return None
            try:
                return ElfFacts.from_dict({**entry[4], "path": path})
            except (KeyError, TypeError, ValueError, AttributeError):
                pass  # an entry from a damaged or foreign file: compute it again
        facts = self._compute(path)
        stored = None if facts is None else {**facts.to_dict(), "path": real}
        new = [*ident, stored]
        entries.pop(real, None)  # re-inserted last: the most recently used survive trimming
        entries[real] = new
        self._changed[real] = new
        return facts

    def __call__(self, path: str) -> ElfFacts | None:
        return self.get(path)

    @property
    def dirty(self) -> bool:
        return bool(self._changed)

    def save(self) -> bool:
        """Write the new entries out if there are any. False if the cache could not be written
        (read-only home, full disk): the cache is an optimisation, never a reason to fail."""
        if not self._changed:
            return True
        merged = self._read_disk()  # what other processes saved since we loaded
        for key, value in self._changed.items():
            merged.pop(key, None)
            merged[key] = value
        while len(merged) > self._max:
            del merged[next(iter(merged))]
        data = json.dumps({"format": _FORMAT, "files": merged}, separators=(",", ":")).encode()
        if not write_atomic(self.path, data):
            return False
        self._entries = merged
        self._changed = {}
        return True
