"""cffi (API mode) builder for the C core: compiles csrc/*.c into the extension `shim._core`."""

import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
# The constants the C code shares with Python are written from the Python definitions first.
sys.path.insert(0, str(HERE.parent))
from shim import cgen  # noqa: E402

cgen.write(str(HERE / "gen"))
# Every file but the front-end's main: the same executor runs in both.
SOURCES = sorted(p.name for p in HERE.glob("*.c") if p.name != "frontend.c")

ffibuilder = FFI()
# The cdef is the public header minus preprocessor lines other than simple #defines.
_header = (HERE / "shim_core.h").read_text()
ffibuilder.cdef(
    "\n".join(
        line
        for line in _header.splitlines()
        if not line.startswith(("#ifndef", "#endif", "#define SHIM_CORE_H", "#include"))
    )
)
ffibuilder.set_source(
    "shim._core",
    '#include "shim_core.h"',
    sources=[f"csrc/{name}" for name in SOURCES],
    include_dirs=["csrc"],
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-std=gnu11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
