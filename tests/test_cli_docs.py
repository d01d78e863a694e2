"""The README and shimrun's own help describe the same command line and the same exit codes."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from shim.cli.main import INTERNAL_ERROR, SUBCOMMANDS, _parser
from shim.errors import ExitCode

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _section(title: str) -> str:
    return README.split(f"\n{title}\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]


def _readme_options() -> dict[str, str | None]:
    """Option string -> its metavar, from the table under "## Using it"."""
    out: dict[str, str | None] = {}
    for cell in re.findall(r"^\| `([^`]+)` \|", _section("## Using it"), re.M):
        if not cell.startswith("-"):
            continue
        names = [part.strip() for part in cell.replace("\\|", "|").split(",")]
        metavar = names[-1].split(" ", 1)[1] if " " in names[-1] else None
        for name in names:
            out[name.split(" ", 1)[0]] = metavar
    return out


def _help_options() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for action in _parser([])._actions:
        for name in action.option_strings:
            if name not in ("-h", "--help"):
                out[name] = action.metavar if action.nargs != 0 else None
    return out


def test_every_option_is_documented_with_its_metavar() -> None:
    assert _readme_options() == _help_options()


def test_the_usage_names_every_subcommand() -> None:
    usage = subprocess.run(["shimrun", "--help"], capture_output=True, text=True, check=True).stdout
    assert "{" + ",".join(SUBCOMMANDS) + "}" in usage.splitlines()[1]
    synopsis = README.split("## Using it", 1)[1].split("`IMAGE` is", 1)[0]
    assert {m for m in re.findall(r"^    shimrun (\w+)", synopsis, re.M)} == set(SUBCOMMANDS)


def test_every_exit_code_is_in_the_readme_table() -> None:
    rows = re.findall(r"^\| (\d+)(?: / (\d+))? \|", _section("### Exit codes"), re.M)
    documented = {int(c) for row in rows for c in row if c}
    assert documented == {int(c) for c in ExitCode} | {INTERNAL_ERROR}
