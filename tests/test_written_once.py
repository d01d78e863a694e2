"""Facts written once: each fact below has one definition, and the places where it used to be written
again by hand are checked, so a second copy (which drifts) fails here. One row per fact and place:
the fact, its one definition, and what must not appear elsewhere (or what must match it). C facts
are checked in tests/test_c_structure.py, the site's in tests/test_site_structure.py.

A test names an exit code by ExitCode; a number is shim's exit code wherever a test compares or
passes it as one (`r.returncode == 78`, `code in (0, 64)`, `one_line(r, 65)`, `ok=(0, 67)`) or
names it (`USAGE = 64`). A number that is someone else's status (the app's, a shell's, srun's) and
happens to equal one of shim's says so on its line: `# not shim's exit code: ...`."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from shim.errors import ExitCode
from shim.record import format as record_format

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
EXIT_NUMBERS = frozenset(int(c) for c in ExitCode)
NOT_SHIMS = "# not shim's exit code"
# Names under which a test holds an exit status: compared or passed with a number, it is an exit code.
STATUS_NAME = re.compile(r"(returncode|exit_?code|exit_?status|rc|code|codes|ok)")


# ---------------------------------------------------------------------------------- readers

def _test_files() -> list[Path]:
    return sorted(p for p in TESTS.glob("*.py") if p.name != Path(__file__).name)


def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path.name}:{node.lineno}"


def _section(text: str, title: str) -> str:
    """The text under the Markdown heading `title`, up to the next heading of any level."""
    return re.split(r"\n#{1,6} ", text.split(f"\n{title}\n", 1)[1], maxsplit=1)[0]


def _table(section: str) -> list[list[str]]:
    """The cells of each row of the first Markdown table in `section` (header and rule left out)."""
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[2:]]


# ---------------------------------------------------------------------------------- exit codes

def _status_names(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and STATUS_NAME.fullmatch(n.id)
               or isinstance(n, ast.Attribute) and STATUS_NAME.fullmatch(n.attr) for n in ast.walk(node))


def _exit_numbers(node: ast.AST) -> Iterator[ast.Constant]:
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and type(n.value) is int and n.value in EXIT_NUMBERS:
            yield n


def _code_parameters(trees: dict[Path, ast.Module]) -> dict[str, int]:
    """Helper functions of the tests that take an exit code: name -> the code's position."""
    out = {}
    for tree in trees.values():
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef):
                for i, arg in enumerate(fn.args.args):
                    if STATUS_NAME.fullmatch(arg.arg):
                        out[fn.name] = i
    return out


def _status_column(names: list[str], rows: ast.AST) -> Iterator[ast.Constant]:
    """Exit numbers in the column of `rows` (a literal list of tuples) that `names` calls a status."""
    for k, name in enumerate(names):
        if STATUS_NAME.fullmatch(name) and isinstance(rows, ast.List | ast.Tuple):
            for row in rows.elts:
                if isinstance(row, ast.Tuple) and len(row.elts) > k:
                    yield from _exit_numbers(row.elts[k])


def _parametrized_names(call: ast.Call) -> list[str]:
    """The argument names of a pytest.mark.parametrize call: "a, code" or ("a", "code")."""
    first = call.args[0] if call.args else None
    if isinstance(first, ast.Constant) and isinstance(first.value, str):
        return [n.strip() for n in first.value.split(",")]
    return [e.value for e in getattr(first, "elts", []) if isinstance(e, ast.Constant)]


def _bare_exit_codes_in(path: Path, tree: ast.Module, takes_code: dict[str, int]) -> Iterator[ast.Constant]:
    for node in ast.walk(tree):
        if isinstance(node, ast.For) and isinstance(node.target, ast.Tuple):  # for cmd, code, line in (...)
            yield from _status_column([getattr(e, "id", "") for e in node.target.elts], node.iter)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "parametrize" and len(node.args) > 1:
            yield from _status_column(_parametrized_names(node), node.args[1])
        if isinstance(node, ast.Compare) and _status_names(node):
            yield from _exit_numbers(node)
        elif isinstance(node, ast.Call):
            callee = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
            if callee in takes_code and len(node.args) > takes_code[callee]:
                yield from _exit_numbers(node.args[takes_code[callee]])
            for kw in node.keywords:
                if kw.arg and STATUS_NAME.fullmatch(kw.arg):
                    yield from _exit_numbers(kw.value)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(n, ast.Name) and n.id in ExitCode.__members__ for t in targets for n in ast.walk(t)):
                yield from _exit_numbers(node.value)  # USAGE, IMAGE = 64, 65: ExitCode written again


def bare_exit_codes(files: list[Path] | None = None) -> list[str]:
    trees = {path: _parsed(path) for path in files or _test_files()}
    takes_code = _code_parameters(trees)
    out = []
    for path, tree in trees.items():
        lines = path.read_text().splitlines()
        out += [f"{_where(path, n)} {n.value}" for n in _bare_exit_codes_in(path, tree, takes_code)
                if NOT_SHIMS not in lines[n.lineno - 1]]
    return sorted(set(out))


def exit_numbers_in_the_errors_docstring() -> list[str]:
    doc = ast.get_docstring(_parsed(REPO / "shim" / "errors.py")) or ""
    return [f"shim/errors.py docstring: {n}" for n in re.findall(r"\b\d+\b", doc) if int(n) in EXIT_NUMBERS]


def readme_exit_code_table() -> list[str]:
    """The README's "Exit codes" table has one row per ExitCode (and the app's own status), no other."""
    rows = _table(_section((REPO / "README.md").read_text(), "### Exit codes"))
    documented = [int(cells[0]) for cells in rows if cells[0].isdigit()]
    return ([f"README.md: {n} is no ExitCode" for n in documented if n not in EXIT_NUMBERS]
            + [f"README.md: no row for {c.name} ({int(c)})" for c in ExitCode if int(c) not in documented]
            + [f"README.md: {n} has two rows" for n in sorted(set(documented)) if documented.count(n) > 1])


# ---------------------------------------------------------------------------------- record tags

def _tag_numbers(cell: str) -> list[int]:
    """"20–25" (a range), "45, 46" (a list) or "61"."""
    if m := re.fullmatch(r"(\d+)[–-](\d+)", cell):
        return list(range(int(m[1]), int(m[2]) + 1))
    return [int(n) for n in cell.split(",")]


def launch_record_tag_table() -> list[str]:
    """docs/launch-record.md's "Fields" table names each tag of record/format.py with its number."""
    rows = _table(_section((REPO / "docs" / "launch-record.md").read_text(), "## Fields"))
    out, documented = [], []
    for tag, names, _ in rows:
        numbers, words = _tag_numbers(tag), [w.strip() for w in names.split(",")]
        if len(numbers) != len(words):
            out.append(f"docs/launch-record.md: row {tag} names {len(words)} fields")
        documented += zip(words, numbers, strict=False)
    defined = [(name, number) for name, (number, _) in record_format.TAGS.items()]
    out += [f"docs/launch-record.md: {name} = {n}, not in record/format.py" for name, n in documented
            if (name, n) not in defined]
    out += [f"docs/launch-record.md: no row for {name} = {n}" for name, n in defined if (name, n) not in documented]
    return out + [f"docs/launch-record.md: {name} has two rows" for name, _ in set(documented)
                  if [w for w, _ in documented].count(name) > 1]


# ---------------------------------------------------------------------------------- test-side facts

def written(pattern: str, defined_in: str = "") -> Callable[[], list[str]]:
    """Each line of a test file (the defining one aside) where `pattern` is written."""
    regex = re.compile(pattern)

    def offenders() -> list[str]:
        return [f"{path.relative_to(REPO)}:{i} {line.strip()}" for path in _test_files() if path.name != defined_in
                for i, line in enumerate(path.read_text().splitlines(), 1) if regex.search(line)]
    return offenders


@dataclass(frozen=True)
class Fact:
    """One row: a fact, its one definition, and the place it must not be written again."""

    fact: str
    definition: str
    elsewhere: str                      # what must not appear elsewhere, or must match the definition
    offenders: Callable[[], list[str]]  # `file:line what` of each copy written again by hand


FACTS = [
    Fact("exit codes", "shim/errors.py ExitCode", "a number of ExitCode restated in shim/errors.py's docstring",
         exit_numbers_in_the_errors_docstring),
    Fact("exit codes", "shim/errors.py ExitCode", "README.md's \"Exit codes\" table: one row per code, no other",
         readme_exit_code_table),
    Fact("exit codes", "shim/errors.py ExitCode",
         "a bare exit-code number in a test (returncode == 78, USAGE = 64): write ExitCode.CONFIG",
         bare_exit_codes),
    Fact("record tags", "shim/record/format.py TAGS",
         "docs/launch-record.md's \"Fields\" table: the same names with the same numbers, each once",
         launch_record_tag_table),
    Fact("the record cache switch", "shim/record/format.py NO_RECORD_CACHE",
         "the variable's name spelled in a test", written(r"[\"']SHIMRUN_NO_RECORD_CACHE[=\"']")),
    Fact("ld.so.cache flags of an x86-64 library", "shim/elf/layout.py (tests: library_images.X86_64_LIBC6)",
         "the number 0x0303 in a test", written(r"\b0x0*303\b")),
    Fact("what a refused run looks like", "tests/error_line.py (one_error_line, error_line_after_steps)",
         "another check that stderr is one `shimrun: error:` line",
         written(r"startswith\([\"']shimrun: error: ", "error_line.py")),
    Fact("where the golden SIFs are", "tests/conftest.py GOLDEN ($SHIM_SHARED/sif-golden)",
         "the golden set's directory spelled in another test file", written(r"[\"']sif-golden[\"']", "conftest.py")),
    Fact("the golden signed SIFs and their signer", "tests/signed_sifs.py (SIFS, KEYS, FPR)",
         "the golden keys' or sylabs SIFs' directory, or the signer's fingerprint, spelled in another test file",
         written(r"GOLDEN / [\"'](sylabs-sif|keys)\b|12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84", "signed_sifs.py")),
]


@pytest.mark.parametrize("fact", FACTS, ids=lambda f: f"{f.fact}: {f.elsewhere[:40]}")
def test_each_fact_is_written_once(fact: Fact) -> None:
    assert fact.offenders() == [], f"{fact.fact} is defined in {fact.definition}; not here: {fact.elsewhere}"


def test_bare_exit_codes_are_found_however_a_test_writes_them(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def one_line(r, code, *words): ...\n"
        "USAGE, IMAGE = 64, 65\n"
        "assert r.returncode == 78\n"
        "assert (r.returncode, r.stdout) == (71, '')\n"
        "assert code in (0, 67)\n"
        "one_line(r, 69, 'word')\n"
        "launcher.run(args, ok=(0, 67))\n"
        "assert r.returncode == 127  # not shim's exit code: the image's shell said it\n"
        "assert r.returncode in (0, 3) and len(x) == 64 and r.returncode == ExitCode.CONFIG\n"
        "for cmd, code in (('a', 126), ('b', 0)): pass\n"
        "@pytest.mark.parametrize('args, rc', [(['--x'], 64), ([], 0)])\n"
        "def test_x(args, rc): pass\n")
    assert [hit.split(":", 1)[1] for hit in bare_exit_codes([sample])] == [
        "10 126", "11 64", "2 64", "2 65", "3 78", "4 71", "5 67", "6 69", "7 67"]
