"""A CDI spec's hooks, interpreted: shim runs no binary a spec names.

The hooks NVIDIA's generator emits (`nvidia-cdi-hook SUBCOMMAND ...`, or the older
`nvidia-ctk hook SUBCOMMAND ...`) are read as data and done by shim itself:
- create-symlinks --link TARGET::LINK   a symlink at LINK in the container (the record's LINK,
                                        in an underlay where the image's directory is read-only)
- update-ldcache --folder DIR           DIR's libraries folded into shim's re-pointed ld.so.cache
- enable-cuda-compat                    the image's CUDA forward-compat libraries may be used when
                                        the driver is older (the GPU rule decides, as for profiles)
- chmod --mode M --path P               nothing is changed: the nodes are the host's, bound as
                                        they are (shim never changes a host file's mode)
- disable-device-node-modification      nothing to do: shim never creates device nodes
Any other hook, subcommand or flag is refused (exit 78) with one line naming it, unless the
site sets `[cdi] unknown_hooks = "warn"`: then it is skipped with a warning. Flags take their
value as `--flag VALUE` or `--flag=VALUE`, as the hook's own parser does.
Pure over data: nothing here reads a file."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import NamedTuple

from shim.cdi.model import Hook
from shim.errors import ExitCode, ShimError

HOOK_PROGRAMS = ("nvidia-cdi-hook", "nvidia-ctk")
# Per subcommand: its flags with a value (flags we accept but need not act on are listed too:
# shim runs no ldconfig and reads the driver's version itself).
_FLAGS: dict[str, tuple[str, ...]] = {
    "create-symlinks": ("link", "container-spec"),
    "update-ldcache": ("folder", "ldconfig-path", "container-spec"),
    "enable-cuda-compat": ("host-driver-version", "container-spec"),
    "chmod": ("mode", "path", "container-spec"),
    "disable-device-node-modification": ("container-spec",),
}
_MODE = re.compile(r"^[0-7]{3,4}$")


class HookNote(NamedTuple):
    """What one hook did, for `check` (a decision) and --debug."""
    hook: str            # "create-symlinks", ... or the unknown program
    path: str            # the binary the spec names (never run)
    container_path: str  # what it is about in the container ("" for none)
    done: bool           # False: skipped (nothing to do, or unknown and the site allows that)
    reason: str


class HookEdits(NamedTuple):
    links: tuple[tuple[str, str], ...] = ()    # (target, link path in the container)
    ldcache_folders: tuple[str, ...] = ()
    cuda_compat: bool = False
    notes: tuple[HookNote, ...] = ()
    warnings: tuple[str, ...] = ()             # unknown hooks skipped under unknown_hooks = "warn"


def interpret(hooks: Sequence[Hook], where: str, unknown: str = "error") -> HookEdits:
    """The hooks' effects as data; `where` names the spec file and device for the error line."""
    links: list[tuple[str, str]] = []
    folders: list[str] = []
    notes: list[HookNote] = []
    warnings: list[str] = []
    compat = False
    for i, hook in enumerate(hooks):
        at = f"{where}: containerEdits.hooks[{i}]"
        try:
            sub, flags = _parse(hook, at)
        except ShimError as e:
            if unknown != "warn":
                raise
            warnings.append(f"{e.message}: skipped ([cdi] unknown_hooks = \"warn\")")
            notes.append(HookNote(os.path.basename(hook.path), hook.path, "", False, warnings[-1]))
            continue
        if sub == "create-symlinks":
            for spec in flags.get("link", []):
                target, sep, link = spec.partition("::")
                if not sep or not target or not os.path.isabs(link) or link.endswith("/"):
                    raise _bad(at, f"--link {spec!r} is not TARGET::LINK with LINK an absolute path")
                links.append((target, os.path.normpath(link)))
                notes.append(HookNote(sub, hook.path, link, True, f"symlink {link} -> {target} made by shim"))
        elif sub == "update-ldcache":
            for folder in flags.get("folder", []):
                if not os.path.isabs(folder):
                    raise _bad(at, f"--folder {folder!r} is not an absolute path")
                folders.append(os.path.normpath(folder))
                notes.append(HookNote(sub, hook.path, folder, True,
                                      f"{folder}'s libraries folded into shim's re-pointed ld.so.cache"))
        elif sub == "enable-cuda-compat":
            compat = True
            notes.append(HookNote(sub, hook.path, "", True, "the image's CUDA forward-compat libraries are used "
                                  "where the node's driver is older than them and its GPUs support that"))
        elif sub == "chmod":
            mode, paths = flags.get("mode", []), flags.get("path", [])
            if len(mode) != 1 or not _MODE.match(mode[0]) or not paths:
                raise _bad(at, "chmod needs one octal --mode and at least one --path")
            notes.extend(HookNote(sub, hook.path, p, False, f"mode {mode[0]} not applied: the node is the host's, "
                                  "bound as it is (shim changes no host file)") for p in paths)
        else:
            notes.append(HookNote(sub, hook.path, "", False, "nothing to do: shim never creates device nodes"))
    return HookEdits(tuple(links), tuple(dict.fromkeys(folders)), compat, tuple(notes), tuple(warnings))


def _parse(hook: Hook, at: str) -> tuple[str, dict[str, list[str]]]:
    """(subcommand, flag -> values) of a hook shim knows; ShimError (78) for any other."""
    program = os.path.basename(hook.path)
    if program not in HOOK_PROGRAMS:
        raise _bad(at, f"unknown hook {hook.path} (shim runs no hook binary; it interprets "
                       f"{' and '.join(HOOK_PROGRAMS)} only)")
    words = list(hook.args[1:])   # args[0] is the program's name
    if program == "nvidia-ctk":
        if not words or words[0] != "hook":
            raise _bad(at, f"unknown hook {hook.path} {' '.join(words[:1])}: only `nvidia-ctk hook ...` is known")
        words = words[1:]
    if not words or words[0] not in _FLAGS:
        sub = words[0] if words else "(none)"
        raise _bad(at, f"unknown subcommand {sub!r} of hook {hook.path} (known: {', '.join(_FLAGS)})")
    sub, rest = words[0], words[1:]
    flags: dict[str, list[str]] = {}
    while rest:
        word = rest.pop(0)
        name, eq, value = word.removeprefix("--").partition("=")
        if not word.startswith("--") or name not in _FLAGS[sub]:
            raise _bad(at, f"unknown flag {word!r} of hook {hook.path} {sub}")
        if not eq:
            if not rest:
                raise _bad(at, f"flag {word!r} of hook {hook.path} {sub} has no value")
            value = rest.pop(0)
        flags.setdefault(name, []).append(value)
    return sub, flags


def _bad(at: str, message: str) -> ShimError:
    return ShimError(ExitCode.CONFIG, f"{at}: {message}",
                     "fix the spec, or have the site set [cdi] unknown_hooks = \"warn\" to skip such hooks")
