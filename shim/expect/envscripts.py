"""The image's environment as its scripts (/.singularity.d/env/*.sh) set it, read without a shell.

Only assignments are understood: `export NAME=value`, `NAME="value"`, and the form Apptainer
writes for Docker ENV (10-docker2singularity.sh): `export NAME="${NAME:-"value"}"`, whose default
is the image's value. $NAME / ${NAME} / ${NAME:-default} are expanded from what the scripts set
before (unknown names expand to nothing, as in a clean environment). Nothing is executed: these
are facts for diagnostics, not the environment the app gets (shim.container.environment does that).
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping, Sequence

from shim.elf.rootpath import RootPaths

ENV_DIR = "/.singularity.d/env"
_MAX_SCRIPT = 1 << 20  # env scripts are a few KiB; do not read a planted giant

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
# export NAME="${NAME:-"value with spaces"}": shlex would split the inner quoted default.
_DOCKER_FORM = re.compile(rf'^(?:export\s+)?({_NAME})="\$\{{\1:?-"(.*)"\}}"\s*;?$')
_ASSIGN = re.compile(rf"^(?:export\s+)?({_NAME})=(.*)$")
_EXPAND = re.compile(rf"\$\{{({_NAME})(?::?-([^}}]*))?\}}|\$({_NAME})")


def _expand(value: str, known: Mapping[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        if name in known and known[name] != "":
            return known[name]
        default = m.group(2)
        return default.strip("\"'") if default is not None else ""

    return _EXPAND.sub(sub, value) if "$" in value else value


def _unquote(raw: str) -> str:
    raw = raw.strip().rstrip(";").strip()
    try:
        words = shlex.split(raw, comments=True, posix=True)
    except ValueError:  # unbalanced quotes: keep the text
        return raw
    if len(words) == 1:
        return words[0]
    return raw if words else ""


def parse_env_script(text: str, known: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables the script assigns, expanded against `known` (earlier scripts) and itself."""
    env = dict(known or {})
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _DOCKER_FORM.match(line)
        if m:
            name, value = m.group(1), m.group(2)
            # The image's value is the default; an earlier script's value wins, as in the shell.
            env[name] = env[name] if env.get(name) else _expand(value, env)
            continue
        m = _ASSIGN.match(line)
        if m:
            env[m.group(1)] = _expand(_unquote(m.group(2)), env)
    return env


def env_scripts(paths: RootPaths) -> list[str]:
    """Container paths of the image's environment scripts, in the order they are sourced."""
    host = paths.host(ENV_DIR)
    if host is None or not paths.is_dir(ENV_DIR):
        return []
    try:
        names = sorted(n for n in os.listdir(host) if n.endswith(".sh"))
    except OSError:
        return []
    return [f"{ENV_DIR}/{n}" for n in names]


def read_image_env(paths: RootPaths, scripts: Sequence[str] | None = None) -> dict[str, str]:
    """The variables the image's scripts set; `scripts`: container paths (default: all, in order)."""
    env: dict[str, str] = {}
    for script in env_scripts(paths) if scripts is None else scripts:
        host = paths.regular_file(script)
        if host is None:
            continue
        try:
            with open(host, "rb") as f:
                text = f.read(_MAX_SCRIPT).decode("utf-8", "replace")
        except OSError:
            continue
        env = parse_env_script(text, env)
    return env
