"""The one rule for knowledge tables: each is a JSON file in this directory, read (once per
process, by its reader module) through table(NAME). Code never writes a table's facts as literals
(tests/test_structure.py checks it)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def table_path(name: str) -> Path:
    """The file of the table NAME (e.g. "abi" -> shim/knowledge/abi.json)."""
    return HERE / f"{name}.json"


def table(name: str) -> Any:
    return json.loads(table_path(name).read_text())
