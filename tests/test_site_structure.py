"""Facts of the site and planning layers that have one definition each, and the test that fails
when one of them is written again by hand: the words that turn a setting on (shim/options.py),
the MPI ABI families (shim/knowledge/abi.json), the host's ld.so.cache path (shim/elf/ldcache.py),
where the GPUs' information files live (shim/host/paths.py), the bind grammar
(shim/site/binds.py) and the reader of shim's TOML files (shim/site/schema.py)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from sourcecode import REPO, SHIM, code_strings, py_files

from shim.container.binds import parse_bind
from shim.errors import UsageError
from shim.knowledge.abi import mpi_families
from shim.options import TRUE_WORDS
from shim.plan.profiles import lint_files
from shim.site.profile_file import read_profile
from shim.site.profile_model import MPI_ABIS, BindEntry


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _literals_matching(rx: str, home: str) -> list[str]:
    """Where the code outside `home` writes a string literal matching rx."""
    return [f"{_rel(p)}:{line}: {value}" for p in py_files() if _rel(p) != home
            for line, value in code_strings(p) if re.search(rx, value)]


def _string_collections(path: Path) -> list[tuple[int, set[str]]]:
    """(line, strings) of every tuple, list and set literal of a module that holds strings."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            words = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            if words:
                out.append((node.lineno, words))
    return out


def test_the_true_words_are_written_once() -> None:
    assert set(TRUE_WORDS) >= {"1", "true", "yes", "on"}
    again = [f"{_rel(p)}:{line}: {sorted(words)}" for p in py_files() if _rel(p) != "shim/options.py"
             for line, words in _string_collections(p) if len(words & {"true", "yes", "on"}) >= 2]
    assert again == []


def test_the_mpi_abi_families_come_from_abi_json() -> None:
    data = json.loads((SHIM / "knowledge" / "abi.json").read_text())
    families = list(dict.fromkeys(a["family"] for a in data["mpi_abis"]))
    assert list(mpi_families()) == families and list(MPI_ABIS) == families
    assert set(data["pmi"]) <= set(families)
    # A family named in code (a quoted word standing alone) is a second list of them.
    rx = r"^[\"'](" + "|".join(map(re.escape, families)) + r")[\"']$"
    assert _literals_matching(rx, "shim/knowledge/abi.py") == []


def test_the_host_ld_so_cache_path_is_written_once() -> None:
    assert _literals_matching(r"etc/ld\.so\.cache", "shim/elf/ldcache.py") == []


def test_the_gpu_information_files_are_named_once() -> None:
    assert _literals_matching(r"driver/nvidia/gpus", "shim/host/paths.py") == []
    defined = [f"{_rel(p)}:{node.lineno}" for p in py_files() for node in ast.walk(ast.parse(p.read_text()))
               if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id.startswith("GPU_INFO")
                                                       for t in node.targets)]
    assert [d.split(":")[0] for d in defined] == ["shim/host/paths.py"] * len(defined), defined


def test_one_parser_of_the_bind_grammar() -> None:
    """Only shim/site/binds.py knows the modes: a second parser would have to name them."""
    modes = [f"{_rel(p)}:{line}" for p in py_files() if _rel(p) != "shim/site/binds.py"
             for line, words in _string_collections(p) if {"ro", "rw"} <= words]
    assert modes == []
    assert _literals_matching(r"^[\"']rw[\"']$", "shim/site/binds.py") == []


def test_one_reader_of_toml_files() -> None:
    """shim.toml and the profiles are read through shim/site/schema.py, the only module that parses TOML."""
    rx = re.compile(r"^\s*(import tomllib|from tomllib import)", re.M)
    readers = [_rel(p) for p in py_files() if rx.search(p.read_text())]
    assert readers == ["shim/site/schema.py"]


@pytest.mark.parametrize("module", ["shim/site", "shim/plan"])
def test_site_and_plan_modules_are_of_one_concern(module: str) -> None:
    long = [f"{_rel(p)}: {n}" for p in py_files(REPO / module) if (n := len(p.read_text().splitlines())) > 400]
    assert long == []


_OTHER_KIND = '[profile]\nkind = "other"\napplies = "on-request"\n[provides]\nbinds = ["{spec}"]\n'


def _profile_bind(tmp_path: Path, spec: str) -> tuple[str, str, bool] | str:
    """What a profile's provides.binds makes of spec: (src, dst, read-only), or the problem."""
    (tmp_path / "p.toml").write_text(_OTHER_KIND.format(spec=spec))
    problems = [p for p in lint_files([tmp_path / "p.toml"], host_root="/") if not p.host]
    if problems:
        return problems[0].message
    b = _first_bind(tmp_path / "p.toml")
    return (b.src, b.dst, b.read_only)


def _first_bind(path: Path) -> BindEntry:
    profile, _ = read_profile(str(path), "/", {})
    assert profile is not None
    return profile.provides.binds[0]


def _user_bind(spec: str) -> tuple[str, str, bool] | str:
    try:
        b = parse_bind(spec, "--bind", "/work")
    except UsageError as e:
        return e.message
    assert b is not None
    return (b.src, b.dst, b.read_only)


@pytest.mark.parametrize(("spec", "bind"), [
    ("/tmp", ("/tmp", "/tmp", False)),
    ("/tmp:/data", ("/tmp", "/data", False)),
    ("/tmp::ro", ("/tmp", "/tmp", True)),
    ("/tmp/../tmp:/data/./x:rw", ("/tmp", "/data/x", False)),
])
def test_a_bind_means_the_same_in_a_profile_and_on_the_command_line(tmp_path: Path, spec: str, bind: tuple) -> None:
    assert _profile_bind(tmp_path, spec) == bind == _user_bind(spec)


@pytest.mark.parametrize(("spec", "profile_says", "user_says"), [
    ("/tmp:/a:b:c", "is not SRC[:DST[:ro|rw]]", "bad bind '/tmp:/a:b:c'"),
    (":/data", "is not SRC[:DST[:ro|rw]]", "bad bind ':/data'"),
    ("/tmp:/data:rx", "bad mode 'rx'", "bad bind mode 'rx'"),
    ("/tmp:data", "must be absolute paths", "bind destination 'data' in --bind is not an absolute path"),
    ("/tmp:/", "would cover the container's root", "would cover the container's root"),
])
def test_a_bad_bind_is_refused_in_a_profile_and_on_the_command_line(tmp_path: Path, spec: str, profile_says: str,
                                                                    user_says: str) -> None:
    assert profile_says in _profile_bind(tmp_path, spec)
    assert user_says in _user_bind(spec)


def test_a_relative_source_is_the_working_directory_s_on_the_command_line_only(tmp_path: Path) -> None:
    assert "must be absolute paths" in _profile_bind(tmp_path, "tmp:/data")
    assert _user_bind("../tmp:/data") == ("/tmp", "/data", False)
