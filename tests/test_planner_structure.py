"""Planning as typed steps (README, "How a launch works"): the request holds typed options made
from shim/options.py's table, no argparse below shim/cli/, planning prints nothing and keeps no
hub class, and every import inside a function says why it is there."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from shim.options import OPTIONS, LaunchOptions, launch_values
from shim.pipeline.request import LaunchRequest

REPO = Path(__file__).resolve().parents[1]
SHIM = REPO / "shim"
PIPELINE = SHIM / "pipeline"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text())


def test_launch_options_are_the_option_table_typed_and_immutable() -> None:
    assert set(LaunchOptions._fields) == {o.dest for o in OPTIONS} | {"image", "command", "runscript"}
    assert all(LaunchOptions.__annotations__[name] for name in LaunchOptions._fields)
    opts = launch_values(type("Given", (), {"image": "x.sif", "bind": ["/a"], "quiet": True})())
    assert (opts.image, opts.bind, opts.quiet, opts.env, opts.pwd) == ("x.sif", ("/a",), True, (), None)
    with pytest.raises(AttributeError):
        opts.profile = ("cuda",)  # type: ignore[misc]
    assert "LaunchOptions" in str(LaunchRequest.__annotations__["options"])
    with pytest.raises(AttributeError):
        LaunchRequest(opts, (), "/", {}).cwd = "/tmp"  # type: ignore[misc]


def test_no_argparse_below_the_cli() -> None:
    found = []
    for path in sorted(SHIM.rglob("*.py")):
        if "cli" in path.relative_to(SHIM).parts[:1] or "libexec" in path.parts:
            continue
        for node in ast.walk(_tree(path)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.relative_to(REPO)}:{node.lineno}" for n in names if n.split(".")[0] == "argparse"]
    assert found == []


def test_planning_prints_nothing_and_has_no_hub_class() -> None:
    """Lines for the user are values (Planned.said, the record's notices and diagnostics)."""
    printing, classes = [], []
    for path in sorted(PIPELINE.glob("*.py")):
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                printing.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.Attribute) and node.attr in ("stderr", "stdout"):
                printing.append(f"{path.name}:{node.lineno}")
            if isinstance(node, ast.ClassDef):
                methods = [n for n in node.body if isinstance(n, ast.FunctionDef)]
                if len(methods) > 3:
                    classes.append(f"{path.name}:{node.name} ({len(methods)} methods)")
    assert printing == [] and classes == []


def _function_imports(path: Path) -> list[ast.stmt]:
    out = []
    for fn in ast.walk(_tree(path)):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            out += [n for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)]
    return out


def test_every_import_inside_a_planning_function_says_why() -> None:
    """An import is deferred only for a measured start-up cost, and the comment says which: on
    its line, or on the lines just above the first of a group."""
    unexplained = []
    for path in sorted(PIPELINE.glob("*.py")):
        lines = path.read_text().splitlines()
        for node in _function_imports(path):
            above = range(node.lineno - 1, max(node.lineno - 6, 0), -1)
            context = [lines[node.lineno - 1]] + [lines[i - 1] for i in above]
            # the group's comment: this line, or a comment above with only imports between
            ok = "#" in context[0]
            for line in context[1:]:
                if ok or not line.strip().startswith(("from ", "import ", "#")):
                    break
                ok = "#" in line
            if not ok:
                unexplained.append(f"{path.name}:{node.lineno}")
    assert unexplained == []


def test_every_step_takes_and_returns_typed_values() -> None:
    untyped = []
    for path in sorted(PIPELINE.glob("*.py")):
        for fn in ast.walk(_tree(path)):
            if not isinstance(fn, ast.FunctionDef) or fn.name.startswith("__"):
                continue
            args = [a for a in (*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs) if a.arg != "self"]
            if fn.returns is None or any(a.annotation is None for a in args):
                untyped.append(f"{path.name}:{fn.lineno} {fn.name}")
    assert untyped == []


def test_the_container_is_built_purely_and_run_only_from_launch() -> None:
    """shim/container/ builds the record's parts from values; what mounts, forks or executes lives
    in shim/launch/ (and the C core)."""
    running = ("subprocess", "shim.launch", "shim._core", "ctypes", "multiprocessing")
    found = []
    for path in sorted((SHIM / "container").glob("*.py")):
        for node in ast.walk(_tree(path)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            found += [f"{path.name}:{node.lineno} {n}" for n in names if n.startswith(running)]
            if isinstance(node, ast.Attribute) and node.attr in ("fork", "execv", "execve", "system", "mount"):
                found.append(f"{path.name}:{node.lineno} os.{node.attr}")
    assert found == []


def test_every_knowledge_table_is_one_file_in_shim_knowledge() -> None:
    tables = sorted(p.relative_to(SHIM).as_posix() for p in SHIM.rglob("*.json") if "libexec" not in p.parts)
    assert tables and all(t.startswith("knowledge/") for t in tables), tables
    readers = [f"{p.relative_to(REPO)}" for p in SHIM.rglob("*.py")
               if p.name != "tables.py" and '.json")' in p.read_text() and "knowledge" in p.read_text()
               and "table(" not in p.read_text()]
    assert readers == []


def test_every_parameter_in_shim_is_typed() -> None:
    untyped = []
    for path in sorted(SHIM.rglob("*.py")):
        if "libexec" in path.parts:
            continue
        for fn in ast.walk(_tree(path)):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                a = fn.args
                untyped += [f"{path.relative_to(REPO)}:{fn.lineno} {fn.name}({x.arg})"
                            for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)
                            if x.annotation is None and x.arg not in ("self", "cls")]
    assert untyped == []
