"""The shape the code promises (README, "How a launch works"): layers that import only downward,
a planner of small functions and files, each piece of compatibility knowledge in one data file,
and a registry that holds every diagnostic code the code emits."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from sourcecode import REPO, SHIM, code_strings, py_files

from shim.knowledge.codes import registry

# Lowest first: a module may import its own layer and the layers before it, never one after.
LAYERS = [("errors", "model", "options"), ("knowledge", "cgen", "native", "record"),
          ("cachefiles", "image", "elf", "oci"),
          ("host", "expect", "verify", "audit"), ("site", "cdi", "provenance", "container"), ("diagnose",), ("plan",),
          ("report",),
          ("launch",), ("pipeline",),
          ("cli", "compat", "__main__", "__init__")]


def _layer(module: str) -> int:
    top = module.split(".")[1] if module.startswith("shim.") else module
    return next(i for i, names in enumerate(LAYERS) if top in names)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every shim import in the file, at module level or inside functions."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shim"):
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("shim")]
    return out


def test_layers_import_only_downward() -> None:
    upward = []
    for path in py_files():
        module = "shim." + ".".join(path.relative_to(SHIM).with_suffix("").parts)
        mine = _layer(module)
        for line, imported in _imports(path):
            if imported in ("shim", "shim._core", "shim._install"):
                continue  # the package's version, the C core and the install's paths (built, below everything)
            if _layer(imported) > mine:
                upward.append(f"{path.relative_to(REPO)}:{line} imports {imported}")
    assert upward == []


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    n = len(names) + (a.vararg is not None) + (a.kwarg is not None)
    return n - (names[:1] in (["self"], ["cls"]))


def test_the_planner_is_small_functions_in_small_files() -> None:
    too_long = [f"{p.relative_to(REPO)}: {n} lines" for p in py_files(SHIM / "plan")
                if (n := len(p.read_text().splitlines())) > 400]
    too_many = [f"{p.relative_to(REPO)}:{fn.lineno} {fn.name}: {_params(fn)} parameters"
                for p in py_files(SHIM / "plan") for fn in ast.walk(ast.parse(p.read_text()))
                if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and _params(fn) > 6]
    assert too_long == [] and too_many == []


# Knowledge that lives in exactly one data file: none of it may appear as a literal in the code.
KNOWLEDGE = {
    "shim/knowledge/abi.json": [r"libmpich", r"libmpi_cxx", r"libmpi_mpifh", r"libmpi_abi"],
    "shim/knowledge/gpus.json": [r"\bTesla\b", r"GeForce", r"TITAN", r"_nvidia\)"],
    "shim/knowledge/rdma.json": [r"rdmav\\?\(", r"rdmav\(\\d", r"IBVERBS_PRIVATE_\("],
    "shim/knowledge/glibc_search.json": [r"haswell", r"xeon_phi", r"avx512_1", r"x86-64-v\d"],
}


@pytest.mark.parametrize("data_file", sorted(KNOWLEDGE))
def test_each_piece_of_knowledge_lives_in_one_data_file(data_file: str) -> None:
    assert (REPO / data_file).is_file()
    found = []
    for path in py_files():
        for line, value in code_strings(path):
            found += [f"{path.relative_to(REPO)}:{line}: {value}" for rx in KNOWLEDGE[data_file]
                      if re.search(rx, value)]
    assert found == []


def _emitted_codes() -> dict[str, set[str]]:
    """Code -> the files whose code (not docstrings) names it as a string literal."""
    rx = re.compile(r"^[\"']([A-Z][A-Z0-9]+(?:-[A-Z0-9]+)*)[\"']$")
    found: dict[str, set[str]] = {}
    for path in py_files():
        for _line, value in code_strings(path):
            m = rx.match(value)
            # A word with a hyphen is a code unless it is a known word; one without is a code
            # only if registered (single words like PATH are everywhere).
            if m and m.group(1) not in NOT_CODES and ("-" in m.group(1) or m.group(1) in registry()):
                found.setdefault(m.group(1), set()).add(path.relative_to(REPO).as_posix())
    return found


NOT_CODES = {"SHA-256", "SHA-384", "SHA-512", "RSA-OAEP", "IA-64", "AVX-512"}   # words, not diagnostics


def test_every_diagnostic_code_is_registered_and_emitted_where_the_registry_says() -> None:
    emitted, known = _emitted_codes(), registry()
    assert sorted(set(emitted) - set(known)) == []           # emitted but not registered
    assert sorted(set(known) - set(emitted)) == []           # registered but emitted nowhere
    wrong = {c: (known[c]["origin"], sorted(files)) for c, files in emitted.items() if known[c]["origin"] not in files}
    assert wrong == {}


def test_the_registry_is_the_readme_table() -> None:
    """Every code is explained in the README (the tables users read), and nothing else is there."""
    readme = (REPO / "README.md").read_text()
    in_readme = set(re.findall(r"\| `([A-Z][A-Z0-9]+(?:-[A-Z0-9]+)*)` \|", readme))
    assert in_readme == set(registry()), sorted(in_readme ^ set(registry()))
    assert json.loads((SHIM / "knowledge" / "codes.json").read_text())["codes"] == registry()


# Files in shim/ longer than a module of one concern (~400 lines), each with the reason it is
# still one file. A file over 400 lines not listed here fails; so does a listed one that is no
# longer over 400 lines or gone (the list says what is true today).
LONG_FILES = {
    "shim/image/sif.py": "one untrusted binary format read in one place: header, descriptors and their bounds checks",
    "shim/elf/facts.py": "one ELF reader: headers, dynamic segment, version tables and .dynsym, all bounds-checked",
}


def test_long_files_are_listed_with_a_reason() -> None:
    lengths = {p.relative_to(REPO).as_posix(): len(p.read_text().splitlines()) for p in py_files()}
    unlisted = sorted(f"{f}: {n} lines" for f, n in lengths.items() if n > 400 and f not in LONG_FILES)
    stale = sorted(f for f in LONG_FILES if lengths.get(f, 0) <= 400)
    assert unlisted == [] and stale == [] and all(LONG_FILES.values())
