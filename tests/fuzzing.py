"""The fuzz targets' shared parts (tests/test_fuzz*.py): hypothesis's two profiles, a private work
directory for the cases' files, and the byte mutator of real inputs.

The suite runs the "suite" profile (a bounded budget); scripts/fuzz.sh runs the "fuzz" profile
(HYPOTHESIS_PROFILE=fuzz, over 100,000 cases in all) and writes benchmarks/results/fuzz.md."""

from __future__ import annotations

import atexit
import os
import shutil
import struct
import tempfile
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from shim.errors import ExitCode, ShimError

T = TypeVar("T")

settings.register_profile("suite", max_examples=800, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("fuzz", max_examples=15000, deadline=timedelta(seconds=5),
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

WORK = Path(tempfile.mkdtemp(prefix="shim-fuzz."))
atexit.register(shutil.rmtree, WORK, True)  # the cases' files: nothing of the run stays behind


def file_case(data: bytes, name: str = "case") -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


@st.composite
def mutated(draw, originals: list[bytes], focus: int = 8192) -> bytes:
    """One of `originals` with bytes flipped (mostly in the first `focus` bytes, where the
    headers are), cut short, or grown."""
    data = bytearray(draw(st.sampled_from(originals)))
    for _ in range(draw(st.integers(0, 12))):
        if not data:
            break
        at = draw(st.integers(0, min(len(data), focus) - 1))
        data[at] = draw(st.integers(0, 255))
    how = draw(st.sampled_from(["keep", "truncate", "grow", "words"]))
    if how == "truncate":
        data = data[:draw(st.integers(0, len(data)))]
    elif how == "grow":
        data += draw(st.binary(max_size=256))
    elif how == "words" and len(data) >= 8:  # offsets and sizes are 8-byte words: make them huge or negative
        at = draw(st.integers(0, min(len(data), focus) - 8))
        data[at:at + 8] = struct.pack("<q", draw(st.sampled_from([-1, 2**62, 2**31, -2**63, 0, 1 << 40])))
    return bytes(data)




# What a parser of untrusted input may do: return a result, or refuse it with shim's own error of a
# documented exit code (never INTERNAL, the code of a traceback) in exactly one line; and leave
# nothing behind (no file beside the case, no child process, no mount).
DOCUMENTED = frozenset(int(c) for c in ExitCode) - {int(ExitCode.INTERNAL)}


def one_line(text: str) -> bool:
    return bool(text) and not any(c in text for c in "\n\r")


def _children() -> set[int]:
    import psutil

    return {p.pid for p in psutil.Process().children(recursive=True) if p.status() != psutil.STATUS_ZOMBIE}


def _left_behind(before: set[int]) -> tuple:
    """The case's files, and what it started that is still there: child processes that were not
    there before, mounts under the work directory (the suite's own long-lived servers, and other
    processes' mounts, are not the case's)."""
    with open("/proc/self/mountinfo") as f:
        mounts = [ln for ln in f if f" {WORK}" in ln]
    return tuple(sorted(os.listdir(WORK))), tuple(sorted(_children() - before)), tuple(mounts)


def outcome(call: Callable[..., T], *args: object, **kwargs: object) -> T | None:
    """`call(*args)` on a fuzzed input: its result, or None when it refused the input as shim
    refuses input; the case fails on any other exception, an error of an undocumented code or of
    more than one line, and on anything left behind."""
    running = _children()
    before = _left_behind(running)
    try:
        return call(*args, **kwargs)
    except ShimError as e:
        assert int(e.code) in DOCUMENTED, f"exit {int(e.code)}: {e}"
        assert one_line(str(e)), repr(str(e))
        return None
    finally:
        assert _left_behind(running) == before, "something was left behind"
