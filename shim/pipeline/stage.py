"""The stage: the installed directory the executor builds the container's root in, and the files
planning puts there."""

from __future__ import annotations

import os

STAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "stage")
STAGED_LD_CACHE = "ld.so.cache"   # the loader cache planning wrote for the injected libraries
