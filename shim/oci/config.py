"""An OCI image config, as Apptainer lays it out in an image, and as a launch applies it.

    Env                -> /.singularity.d/env/10-docker2singularity.sh (PATH set, others defaults)
    Entrypoint + Cmd   -> /.singularity.d/runscript (arguments replace Cmd)
    Labels             -> /.singularity.d/labels.json (with the source and the manifest digest)

The launch does not need a shell for any of it: `shimrun run` execs the Entrypoint and Cmd words
itself, and the Env is applied as data (shim.container.environment), so images without /bin/sh
(distroless, scratch) keep their environment.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

from shim.oci.flatten import ExtraFile

ENV_SCRIPT = "/.singularity.d/env/10-docker2singularity.sh"
RUNSCRIPT = "/.singularity.d/runscript"
LABELS = "/.singularity.d/labels.json"
SOURCE_LABEL = "org.shim.source"
DIGEST_LABEL = "org.shim.manifest-digest"


def section(config: dict[str, Any]) -> dict[str, Any]:
    """The execution part of an image config (Env, Entrypoint, Cmd, WorkingDir, Labels): the
    "config" member of a whole OCI image config, or the object itself as Singularity and Apptainer
    store it in a SIF's oci-config.json ({"Env": [...], "Cmd": ["sh"]})."""
    c = config.get("config")
    if isinstance(c, dict) and ("rootfs" in config or "architecture" in config):
        return c
    return config


def _words(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(str(w) for w in value)
    if isinstance(value, str) and value:  # a string form some builders write: a shell command
        return ("/bin/sh", "-c", value)
    return ()


def env_pairs(config: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """The image's Env as (name, value), in order; malformed entries (no "=") skipped."""
    out = []
    for item in section(config).get("Env") or []:
        if isinstance(item, str) and "=" in item and not item.startswith("="):
            name, _, value = item.partition("=")
            out.append((name, value))
    return tuple(out)


def runscript_words(config: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(Entrypoint words, Cmd words): the app is the first, then the arguments or else the second."""
    part = section(config)
    return _words(part.get("Entrypoint")), _words(part.get("Cmd"))


def working_dir(config: dict[str, Any]) -> str:
    wd = section(config).get("WorkingDir")
    return wd if isinstance(wd, str) and wd.startswith("/") else ""


def labels(config: dict[str, Any], source: str, digest: str) -> dict[str, str]:
    found = section(config).get("Labels")
    out = {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
    out[SOURCE_LABEL] = source
    if digest:
        out[DIGEST_LABEL] = digest
    return out


def _dq(value: str) -> str:
    """`value` inside shell double quotes."""
    return "".join("\\" + c if c in '"$`\\' else c for c in value)


def env_script(config: dict[str, Any]) -> str:
    lines = ["#!/bin/sh", "# Docker/OCI Env of this image (written by shim, as Apptainer writes it)"]
    for name, value in env_pairs(config):
        if not name.replace("_", "a").isalnum() or name[0].isdigit():
            continue  # not a shell name: the launch applies it as data all the same
        if name == "PATH":
            lines.append(f'export PATH="{_dq(value)}"')
        else:
            lines.append(f'export {name}="${{{name}:-"{_dq(value)}"}}"')
    return "\n".join(lines) + "\n"


def runscript(config: dict[str, Any]) -> str:
    fixed, default = runscript_words(config)
    quoted = " ".join(shlex.quote(w) for w in fixed)
    cmd = " ".join(shlex.quote(w) for w in default)
    if not fixed and not default:
        body = 'if [ $# -eq 0 ]; then exec /bin/sh; fi\nexec "$@"'
    else:
        body = f'if [ $# -eq 0 ]; then set -- {cmd}; fi\nexec {quoted} "$@"'.replace("exec  ", "exec ")
    return f"#!/bin/sh\n# Entrypoint and Cmd of this OCI image (written by shim): arguments replace Cmd.\n{body}\n"


def apptainer_files(config: dict[str, Any], source: str, digest: str) -> tuple[ExtraFile, ...]:
    return (ExtraFile(ENV_SCRIPT, env_script(config).encode(), 0o755),
            ExtraFile(RUNSCRIPT, runscript(config).encode(), 0o755),
            ExtraFile(LABELS, (json.dumps(labels(config, source, digest), indent=2, sort_keys=True) + "\n").encode()))
