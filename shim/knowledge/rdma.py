"""Reads rdma.json: how a verbs provider's file name and libibverbs' version nodes name the
provider ABI."""

from __future__ import annotations

import re
from functools import cache

from shim.knowledge.tables import table, table_path

DATA = table_path("rdma")


@cache
def _data() -> dict:
    return table("rdma")


def verbs_library() -> str:
    return _data()["verbs_library"]


def provider_of(file_name: str) -> tuple[str, int] | None:
    """"libmlx5-rdmav34.so" -> ("mlx5", 34); None for another file."""
    m = re.match(_data()["provider_file"], file_name)
    return (m.group(1), int(m.group(2))) if m else None


def provider_abi(version_node: str) -> int | None:
    """"IBVERBS_PRIVATE_34" -> 34; None for another version node."""
    m = re.match(_data()["provider_abi_version"], version_node)
    return int(m.group(1)) if m else None
