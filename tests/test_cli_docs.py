"""The README and shimrun's own help describe the same command line and the same exit codes."""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path

from conftest import shimrun_path

from shim.cli.main import SUBCOMMANDS, _parser
from shim.errors import EXIT_LABELS

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


def _help_options(parser: argparse.ArgumentParser | None = None) -> dict[str, str | None]:
    """Option string -> its metavar (choices as A|B|C), as `--help` shows them."""
    out: dict[str, str | None] = {}
    for action in (parser or _parser([]))._actions:
        if action.help == argparse.SUPPRESS:
            continue
        for name in action.option_strings:
            if name not in ("-h", "--help"):
                metavar = action.metavar or ("|".join(action.choices) if action.choices else None)
                out[name] = metavar if action.nargs != 0 else None
    return out


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    return parser._subparsers._group_actions[0].choices[name]


def _verb_parser(verb: str) -> argparse.ArgumentParser:
    """`check`, or a sub-verb as `profiles lint`."""
    first, _, second = verb.partition(" ")
    parser = _subparser(_parser([first]), first)
    return _subparser(parser, second) if second else parser


def _readme_verb_options() -> dict[str, dict[str, str | None]]:
    """Verb -> its options as the table under "### Each verb's options" lists them."""
    out: dict[str, dict[str, str | None]] = {}
    table = _section("### Each verb's options")
    for verbs, row in re.findall(r"^\| (`[^|]+`) \| (.*) \|$", table, re.M):
        options: dict[str, str | None] = {}
        but = re.match(r"the launch options of the table above but `([^`]+)`", row)
        if but:
            options.update({k: v for k, v in _readme_options().items() if k != but.group(1)})
        cells = row[but.end():] if but else row
        for entry in re.findall(r"`([^`]+)`", cells.replace("\\|", "|")):
            names = [part.strip() for part in entry.split(",")]
            metavar = names[-1].split(" ", 1)[1] if " " in names[-1] else None
            options.update({name.split(" ", 1)[0]: metavar for name in names if name.startswith("-")})
        for verb in re.findall(r"`([^`]+)`", verbs):
            out[verb] = options
    return out


def test_every_option_is_documented_with_its_metavar() -> None:
    assert _readme_options() == _help_options()


def test_the_usage_names_every_subcommand() -> None:
    usage = subprocess.run([shimrun_path(), "--help"], capture_output=True, text=True, check=True).stdout
    assert "{" + ",".join(SUBCOMMANDS) + "}" in usage.splitlines()[1]
    synopsis = README.split("## Using it", 1)[1].split("`IMAGE` is", 1)[0]
    assert {m for m in re.findall(r"^    shimrun (\w+)", synopsis, re.M)} == set(SUBCOMMANDS)


def test_each_verbs_options_are_the_readmes() -> None:
    documented = _readme_verb_options()
    assert set(documented) >= set(SUBCOMMANDS), set(SUBCOMMANDS) - set(documented)
    differ = {verb: (options, _help_options(_verb_parser(verb))) for verb, options in documented.items()
              if options != _help_options(_verb_parser(verb))}
    assert differ == {}


def test_help_ends_with_every_exit_code_as_the_readme_names_it() -> None:
    rows = dict(re.findall(r"^\| (\d+) \| ([^:|]+): ", _section("### Exit codes"), re.M))
    assert {int(code): label for code, label in rows.items()} == {int(c): label for c, label in EXIT_LABELS.items()}
    usage = subprocess.run([shimrun_path(), "--help"], capture_output=True, text=True, check=True).stdout
    text = " ".join(usage.split())
    for code, label in EXIT_LABELS.items():
        assert f" {int(code)} {label};" in text or f" {int(code)} {label}." in text, (code, label)


def test_the_readme_calls_no_option_of_shimrun_unimplemented() -> None:
    known = set(_help_options())
    for verb in SUBCOMMANDS:
        known |= set(_help_options(_verb_parser(verb)))
    sentences = re.split(r"(?<=[.;])\s", " ".join(README.split()))
    wrong = [s for s in sentences if re.search(r"not (?:implemented|supported)", s)
             and set(re.findall(r"`(--?[a-z][\w-]*)`", s)) & known]
    assert wrong == []
