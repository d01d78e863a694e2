"""Digests as the OCI image spec writes them (`algorithm:encoded`), checked where they enter.

Every digest shim takes from outside (a manifest, an index, a config's diff_ids, a reference, a
registry's header) goes through `check` before it is used for anything: compared, hashed with,
printed, or turned into a file name. Supported: sha256 (exactly 64 lower-case hex digits) and
sha512 (exactly 128); the spec's grammar allows other algorithms, which are refused by name. So
the blob cache and a layout's blobs/ are only ever indexed by ALGORITHM/HEX of a checked digest.
"""

from __future__ import annotations

import hashlib
import re

from shim.errors import ImageError, shown

ALGORITHMS = {"sha256": 64, "sha512": 128}
# The image spec's grammar: algorithm-component ([+._-] separated), ":", encoded.
_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_HEX = {alg: re.compile(f"[0-9a-f]{{{n}}}") for alg, n in ALGORITHMS.items()}
HINT = "a digest is sha256: and 64 lower-case hex digits (or sha512: and 128)"


def valid(value: object) -> bool:
    if not isinstance(value, str) or not _GRAMMAR.fullmatch(value):
        return False
    alg, _, encoded = value.partition(":")
    return alg in _HEX and bool(_HEX[alg].fullmatch(encoded))


def check(value: object, where: str, hint: str = "the image is malformed or malicious; do not use it") -> str:
    """`value` if it is a supported digest; else ImageError naming `where` and the value (escaped)."""
    if valid(value):
        return value  # type: ignore[return-value]
    alg = value.partition(":")[0] if isinstance(value, str) and _GRAMMAR.fullmatch(value) else ""
    if alg and alg not in ALGORITHMS:
        raise ImageError(f"{where}: digest algorithm {shown(alg, 40)} is not supported (sha256, sha512)", hint)
    raise ImageError(f"{where}: '{shown(value, 80)}' is not a digest: {HINT}", hint)


def split(digest: str) -> tuple[str, str]:
    """(algorithm, hex) of a checked digest; ValueError for anything else (never a path)."""
    if not valid(digest):
        raise ValueError(f"not a checked digest: {digest!r}")
    alg, _, encoded = digest.partition(":")
    return alg, encoded


def hasher(digest: str):
    """A new hash object of the digest's algorithm (sha256 when `digest` is "")."""
    return hashlib.new(split(digest)[0] if digest else "sha256")


def of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"
