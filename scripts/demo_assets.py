"""Build (or reuse) what scripts/demo.sh runs, with the test suite's own builders, so that the demo
and the tests share one cache (env SHIM_TEST_CACHE, default /var/cache/shim-test) and whichever
runs first leaves the other a warm start:

  - the app image: tests/images.py DEBIAN_MPICH (Debian 12 with libmpich12 and mpich, MPICH 4.0.2;
    /opt/app/hello built from tests/data/mpi_hello.c), built with mmdebstrap and `shimrun build`;
  - the "site MPI": tests/hostmpi.py, PyPI's mpich wheel (MPICH 5.0.x, the same ABI) unpacked
    into a prefix (PREFIX/lib/libmpi.so.12).

Run as root with shim's venv python: /opt/shim/venv/bin/python scripts/demo_assets.py
Prints one line, tab-separated: SIF  PREFIX  VERSION (progress and errors go to stderr).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import hostmpi  # noqa: E402
import images  # noqa: E402


def say(msg: str) -> None:
    print(f"demo: {msg}", file=sys.stderr, flush=True)


def main() -> int:
    recipe = images.DEBIAN_MPICH
    t0 = time.monotonic()
    try:
        if not any(images.image_dir(recipe).glob("image-*.sif")):
            say(f"building the app image {recipe.slug} (Debian {recipe.suite}, {', '.join(recipe.packages)}; "
                f"mmdebstrap, first run only: about a minute) in {images.cache_root()}")
        sif = images.build_sif(recipe)
    except Exception as e:  # noqa: BLE001 - one clear line for the demo, the builder's log tail after it
        say(f"FAILED: cannot build the app image {recipe.slug}: {e}")
        return 1
    t1 = time.monotonic()
    if t1 - t0 > 1:
        say(f"app image built in {t1 - t0:.0f} s: {sif}")
    try:
        if not list(images.cache_root().glob("site-mpich-*/wheel.json")):
            say("downloading PyPI's mpich wheel (the demo's site MPI; first run only)")
        mpi = hostmpi.build_host_mpi()
    except Exception as e:  # noqa: BLE001
        say(f"FAILED: cannot set up the site MPI (PyPI's mpich wheel): {e}")
        return 1
    if time.monotonic() - t1 > 1:
        say(f"site MPI ready in {time.monotonic() - t1:.0f} s: {mpi.prefix}")
    print(f"{sif}\t{mpi.prefix}\t{mpi.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
