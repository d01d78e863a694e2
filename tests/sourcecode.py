"""Reading shim's own source for the structure tests: its modules and the string literals their
code (not their docstrings) writes."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIM = REPO / "shim"


def py_files(where: Path = SHIM) -> list[Path]:
    return sorted(p for p in where.rglob("*.py") if "libexec" not in p.parts)


def code_strings(path: Path) -> list[tuple[int, str]]:
    """(line, value) of the string literals of a module that are not docstrings."""
    text = path.read_text()
    docstrings = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and node.body \
                and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
            docstrings.add(node.body[0].lineno)
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.STRING and tok.start[0] not in docstrings:
            out.append((tok.start[0], tok.string))
    return out
