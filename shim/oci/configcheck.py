"""An image config's values checked before shim uses any: at pull (a registry's or an archive's
config) and at launch (a SIF's oci-config.json, which another tool may have written).

What a launch takes from a config becomes C strings, file contents and exec arguments: Env,
Entrypoint, Cmd, WorkingDir, Labels (and the platform fields). Each must be of its JSON type,
hold no NUL byte, be valid UTF-8 (JSON's \\ud800 escapes can spell text no file can hold), and
stay within what an exec can take (MAX_STRING bytes a string, MAX_ENV variables, MAX_WORDS
words). A value that is not is refused with one line naming the field, never carried into a
SIF that every later launch would fail on.
"""

from __future__ import annotations

from typing import Any

from shim.errors import ImageError, shown
from shim.oci.config import section

MAX_ENV = 200_000        # Env entries (a launch with 100,000 is a benchmark row, linear)
MAX_WORDS = 10_000       # Entrypoint and Cmd words
MAX_LABELS = 100_000     # Labels entries
MAX_STRING = 128 << 10   # bytes of one Env entry, word or label (the kernel's MAX_ARG_STRLEN)
MAX_PATH = 4095          # bytes of WorkingDir
_HINT = "the image config is malformed or malicious; fix the image (its Dockerfile ENV, CMD, ...) and push it again"


def _text(value: Any, field: str, where: str, limit: int = MAX_STRING) -> None:
    if not isinstance(value, str):
        raise ImageError(f"{where}: config {field} is a {type(value).__name__}, not a string", _HINT)
    if "\0" in value:
        raise ImageError(f"{where}: config {field} holds a NUL byte ({shown(value, 60)})", _HINT)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ImageError(f"{where}: config {field} is not valid UTF-8 ({shown(value, 60)})", _HINT) from None
    if size > limit:
        raise ImageError(f"{where}: config {field} is {size} bytes long, more than {limit}", _HINT)


def _list(value: Any, field: str, where: str, most: int) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ImageError(f"{where}: config {field} is a {type(value).__name__}, not a list", _HINT)
    if len(value) > most:
        raise ImageError(f"{where}: config {field} has {len(value)} entries, more than {most}", _HINT)
    return value


def check_config(config: dict[str, Any], where: str) -> None:
    """ImageError naming the first field of `config` (whole, or its execution section as a SIF
    stores it) that a launch could not use."""
    for key in ("architecture", "os", "variant"):
        if key in config:
            _text(config[key], key, where, 256)
    part = section(config)
    for i, entry in enumerate(_list(part.get("Env"), "Env", where, MAX_ENV)):
        _text(entry, f"Env[{i}]", where)
    for key in ("Entrypoint", "Cmd"):
        value = part.get(key)
        if isinstance(value, str):
            _text(value, key, where)
            continue
        for i, word in enumerate(_list(value, key, where, MAX_WORDS)):
            _text(word, f"{key}[{i}]", where)
    if part.get("WorkingDir") is not None:
        _text(part["WorkingDir"], "WorkingDir", where, MAX_PATH)
    found = part.get("Labels")
    if found is None:
        return
    if not isinstance(found, dict):
        raise ImageError(f"{where}: config Labels is a {type(found).__name__}, not an object", _HINT)
    if len(found) > MAX_LABELS:
        raise ImageError(f"{where}: config Labels has {len(found)} entries, more than {MAX_LABELS}", _HINT)
    for name, value in found.items():
        _text(name, "Labels (a name)", where)
        _text(value, f"Labels[{shown(name, 40)}]", where)
