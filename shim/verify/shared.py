"""The scope in which digests of a SIF's objects are shared (integrity.hash_streams): a launch
planned with a signature check and a provenance record reads each object once for both. Only
within it: file times are coarser than a quick rewrite, so a long-lived process must not trust a
file's identity to mean its bytes. A module of its own so that the planner opens the scope
without importing hashing or crypto."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

# {file identity: {Stream: digest}} within shared_digests(), else None
SHARED: contextvars.ContextVar[dict | None] = contextvars.ContextVar("shared_digests", default=None)


@contextlib.contextmanager
def shared_digests() -> Iterator[None]:
    token = SHARED.set({})
    try:
        yield
    finally:
        SHARED.reset(token)
