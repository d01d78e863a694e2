"""Every error of the command line is one line (README, "Exit codes"): an unknown option, a bad
value and a missing argument, for every verb of shimrun (each of its options taken in turn) and
for the `apptainer`/`singularity` commands, print exactly one line naming `--help` as the way to
the usage, and exit 64; never argparse's usage block."""

from __future__ import annotations

import argparse
import subprocess

import pytest
from conftest import compat_bin_dir

from shim.cli.main import SUBCOMMANDS, _parser
from shim.errors import ExitCode

BAD = "not-a-valid-value!"


def _verb_parser(verb: str | None) -> argparse.ArgumentParser:
    parser = _parser([verb] if verb else [])
    return parser._subparsers._group_actions[0].choices[verb] if verb else parser


def _with_values(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.nargs != 0 and a.help != argparse.SUPPRESS]


def bad_command_lines(verb: str | None) -> list[list[str]]:
    """Command lines `verb` cannot read: an unknown option, each option with a value given none,
    each option with a type or choices given a bad value, no arguments at all."""
    parser, head = _verb_parser(verb), [verb] if verb else []
    lines = [[*head, "--no-such-option"], [*head, "--no-such-option", "x", "y"]]
    for action in _with_values(parser):
        lines.append([*head, action.option_strings[-1]])
        if action.choices or action.type not in (None, str):
            lines.append([*head, action.option_strings[-1], BAD, "x", "y"])
    if any(a.required for a in parser._actions if not a.option_strings):
        lines.append(head or ["--quiet"])
    else:
        lines.append([*head, "surplus", "words"])
    return lines


def one_usage_line(r: subprocess.CompletedProcess, prog: str = "shimrun", names_help: bool = True) -> str:
    """The one line; a command line that is read but makes no sense (an option after IMAGE) gets
    the right spelling as its hint instead of --help."""
    lines = r.stderr.splitlines()
    assert r.returncode == ExitCode.USAGE, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), r.stderr
    assert ("--help shows the usage" in lines[0] or not names_help) and r.stdout == "", r.stderr
    return lines[0]


@pytest.mark.parametrize("verb", [None, *SUBCOMMANDS], ids=lambda v: v or "launch")
def test_every_error_of_a_verbs_command_line_is_one_line(shim, verb: str | None) -> None:
    for line in bad_command_lines(verb):
        r = shim.run(line)
        assert one_usage_line(r), line


def test_checks_options_after_the_image_are_checked_too(shim, busybox_sif) -> None:
    for line in (["check", busybox_sif, "--no-such-option"], ["check", busybox_sif, "--against"],
                 ["check", busybox_sif, "--profile"], ["check", busybox_sif, "--json=yes"]):
        assert one_usage_line(shim.run(line)), line
    line = one_usage_line(shim.run(["check", busybox_sif, "--against", "r.json", "app"]), names_help=False)
    assert "takes no COMMAND" in line


def test_an_option_after_the_image_is_refused_in_one_line(shim, busybox_sif) -> None:
    """After IMAGE comes COMMAND: a shimrun option there is a mistake, said as one."""
    for option in ("--no-profiles", "--pid", "--bind"):
        line = one_usage_line(shim.run([busybox_sif, option, "true"]), names_help=False)
        assert f"{option} after IMAGE" in line and "options go before IMAGE" in line, line


COMPAT_LINES = [
    [], ["--no-such-global"], ["--no-such-global", "exec"], ["frobnicate"], ["exec"], ["exec", "IMG"],
    ["exec", "--no-such-option", "IMG", "true"], ["exec", "--bind"], ["exec", "--cpus", "2", "IMG", "true"],
    ["run", "--no-such-option", "IMG"], ["shell", "--pwd"], ["exec", "--shell", "/bin/sh", "IMG", "true"],
    ["exec", "docker://busybox", "true"], ["pull"], ["pull", "--no-such-option", "docker://x/y:1"],
    ["pull", "--name"], ["build", "out.sif"], ["build", "--no-such-option", "out.sif", "dir"], ["inspect"],
    ["inspect", "--no-such-option", "IMG"], ["verify"], ["verify", "--no-such-option", "IMG"],
    ["sign", "--keyidx", BAD, "IMG"], ["cache", "frob"], ["-c", "apptainer.conf", "exec", "IMG", "true"],
]


@pytest.mark.parametrize("prog", ["apptainer", "singularity"])
def test_every_error_of_the_compat_commands_is_one_line(shim, prog: str) -> None:
    for words in COMPAT_LINES:
        r = shim.sh(" ".join([str(compat_bin_dir() / prog), *(f"'{w}'" for w in words)]))
        line = r.stderr.splitlines()[0] if r.stderr else ""
        assert one_usage_line(r, "shimrun" if line.startswith("shimrun:") else prog), words


@pytest.mark.parametrize("verb", ["exec", "run", "shell", "pull", "build", "inspect"])
def test_compat_verbs_have_help(shim, verb: str) -> None:
    r = shim.sh(f"{compat_bin_dir()}/apptainer {verb} --help")
    assert r.returncode == 0 and r.stdout.startswith(f"Usage: apptainer {verb} ") and r.stderr == "", r.stderr
