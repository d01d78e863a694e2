"""The test suite's own shape: test modules share fixtures and helpers through conftest.py and
helper modules (tests/*.py not named test_*.py, named for what they hold), never by importing
another test module (whose tests would then be collected twice, and whose fixtures would change
with its tests)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _is_test_module(name: str) -> bool:
    return name.rsplit(".", 1)[-1].startswith("test_")


def _test_modules_imported(path: Path) -> list[str]:
    """`file:line module` for each import of a test module in `path`, and each test module named by
    its pytest_plugins."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [f"{node.module or ''}.{a.name}" for a in node.names if node.level]
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytest_plugins"
                                                 for t in node.targets):
            names = [c.value for c in ast.walk(node.value) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
        else:
            continue
        found += [f"{path.name}:{node.lineno} {name}" for name in names if _is_test_module(name)]
    return found


def test_no_test_module_imports_another() -> None:
    offenders = [hit for path in sorted(TESTS.rglob("*.py")) for hit in _test_modules_imported(path)]
    assert offenders == [], "share it through conftest.py or a helper module instead"


def test_the_check_sees_each_way_of_importing_a_test_module(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import test_a\nfrom tests.test_b import x\nfrom test_c import (y, z)\nfrom . import test_d\n"
                      "from .test_e import w\npytest_plugins = ['oci_fixtures', 'test_f']\n"
                      "import images\nfrom siteconf import conf_with\n")
    assert [hit.split(" ")[1] for hit in _test_modules_imported(sample)] == [
        "test_a", "tests.test_b", "test_c", ".test_d", "test_e", "test_f"]


def test_every_plugin_is_a_helper_module_here() -> None:
    conftest = ast.parse((TESTS / "conftest.py").read_text())
    plugins = next(ast.literal_eval(n.value) for n in conftest.body if isinstance(n, ast.Assign)
                   and any(isinstance(t, ast.Name) and t.id == "pytest_plugins" for t in n.targets))
    assert [p for p in plugins if not (TESTS / f"{p}.py").is_file() or _is_test_module(p)] == []
