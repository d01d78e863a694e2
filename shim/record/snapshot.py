"""Inputs of a launch record taken now, the way the C executor will check them later (a file's
stat, a file's content, what a pattern matches, an environment variable)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence

from shim.record.format import CHECK, ENV_HOW, IDENTITY, MAX_CONTENT
from shim.record.model import ContentInput, EnvInput, FileInput, GlobInput


def file_input(path: str, check: int = IDENTITY) -> FileInput:
    """`path` as stat(2) (CHECK FOLLOW) or lstat(2) sees it now; absent: mode 0."""
    try:
        st = os.stat(path) if check & CHECK["FOLLOW"] else os.lstat(path)
    except OSError:
        return FileInput(path, check)
    return FileInput(path, check, st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def identity_input(path: str, ident: Sequence[int]) -> FileInput:
    """A path with the identity the planner saw ((dev, ino, mode, size, mtime_ns) of lstat, or
    None: absent; shim.elf.rootpath.identity)."""
    if ident is None:
        return FileInput(path, IDENTITY)
    dev, ino, mode, size, mtime_ns = ident
    return FileInput(path, IDENTITY, mode, dev, ino, size, mtime_ns)


def content_input(path: str) -> ContentInput:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONTENT + 1)
    except OSError:
        return ContentInput(path, None)
    return ContentInput(path, data[:MAX_CONTENT])


def glob_input(pattern: str) -> GlobInput:
    from shim import native

    return GlobInput(pattern, native.glob_names(pattern))


class RecordingEnv(Mapping[str, str]):
    """The job's environment, noting which variables were read (their values or absence): what
    the plan depends on. Names in `declared` are noted as declared ((how, ...): presence only,
    say); names in `ignored` (the runtime's own settings, part of the record's key) not at all.
    Iterating notes nothing: code that scans the environment declares what it looks for."""

    def __init__(self, environ: Mapping[str, str], declared: Mapping[str, int] | None = None,
                 ignored: tuple[str, ...] = ()) -> None:
        self._env = environ
        self._declared = dict(declared or {})
        self._ignored = ignored
        self.read: dict[str, EnvInput] = {}

    def _note(self, name: str) -> None:
        if name in self.read or name.startswith(self._ignored):
            return
        self.read[name] = env_input(self._env, name, self._declared.get(name, ENV_HOW["VALUE"]))

    def __getitem__(self, name: str) -> str:
        self._note(name)
        return self._env[name]

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            self._note(name)
        return name in self._env

    def __iter__(self) -> Iterator[str]:
        return iter(self._env)

    def __len__(self) -> int:
        return len(self._env)


def env_input(environ: Mapping[str, str], name: str, how: int) -> EnvInput:
    if how == ENV_HOW["PREFIX"]:
        return EnvInput(name, how, any(k.startswith(name) for k in environ))
    value = environ.get(name)
    if how == ENV_HOW["NONEMPTY"]:
        return EnvInput(name, how, bool(value))
    return EnvInput(name, how, value is not None, value or "")
