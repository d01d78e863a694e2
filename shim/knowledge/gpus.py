"""Reads gpus.json: which driver files name a driver release, and which GPU models support
CUDA forward compatibility."""

from __future__ import annotations

import re
from functools import cache

from shim.knowledge.tables import table, table_path

DATA = table_path("gpus")


@cache
def _data() -> dict:
    return table("gpus")


@cache
def _rx(key: str, sub: str = "") -> re.Pattern[str]:
    value = _data()[key]
    return re.compile(value[sub] if sub else value)


def driver_release(file_name: str) -> str | None:
    """"libcuda.so.535.104.05" -> "535.104.05"; None for a file that names no driver release."""
    m = _rx("driver_file").match(file_name)
    return m.group(2) if m else None


def supports_forward_compat(model: str) -> bool:
    """Does a GPU of this model name (NVML's, or /proc/driver/nvidia/gpus/*/information's)
    run CUDA forward compatibility?"""
    return bool(_rx("forward_compat", "supported").match(model)) and not _rx(
        "forward_compat", "unsupported").search(model)
