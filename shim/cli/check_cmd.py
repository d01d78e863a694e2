"""`shimrun check IMAGE [COMMAND] [--json]`: the injection plan and diagnostics, without launching.
`shimrun check IMAGE --against RECORD`: that record's planning replayed on this node, and what
differs (exit 0: the same computation would run; 1: it would not)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from shim.cli.parser import usage_hint
from shim.errors import UsageError
from shim.options import APPEND, FLAG, VALUE, Option, image_options

DIFFERS = 1  # as diff(1): 0 the same, 1 different
HINT = usage_hint("shimrun check")

# check's options besides the launch's image options (shim/options.py); any of them may also come
# after IMAGE and after COMMAND (`check IMAGE --json`, `check IMAGE app --json`): after `--`,
# every word is COMMAND's.
OWN_OPTIONS = (
    Option(("--json",), "json", FLAG, "print the plan (with --against: the differences) as JSON"),
    Option(("--against",), "against", VALUE, "a provenance record (--provenance): replay its planning on this "
           "node and print what differs; exit 0 when the same computation would run, 1 when not", "RECORD"),
)


def check_options() -> tuple[Option, ...]:
    return OWN_OPTIONS + image_options()


def register(subparsers: argparse._SubParsersAction) -> None:
    from shim.cli.run_cmd import _add

    p = subparsers.add_parser("check", help="show what would be injected and why, without running",
                              description="Show the injection plan and the diagnostics of IMAGE (and COMMAND) on "
                                          "this node, without running. Options may also follow IMAGE and COMMAND.")
    _add(p, check_options())
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="[COMMAND]",
                   help="the program to be run: its own needs are checked too (MPI symbols, ISA level)")
    p.set_defaults(func=main)


def read_record(path: str) -> dict:
    from shim.provenance import SCHEMA

    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read())
    except OSError as e:
        raise UsageError(f"cannot read provenance record {path}: {e.strerror}",
                         "give the file --provenance wrote") from None
    except (ValueError, RecursionError):
        raise UsageError(f"{path} is not JSON", "give the file --provenance wrote") from None
    schema = doc.get("schema") if isinstance(doc, dict) else None
    if not isinstance(schema, str) or not schema.startswith(SCHEMA.split("/")[0] + "/"):
        raise UsageError(f"{path} is not a shim provenance record (no \"schema\": \"{SCHEMA}\")",
                         "give the file --provenance wrote")
    if schema != SCHEMA:
        raise UsageError(f"{path} is a {schema} record; this shimrun reads {SCHEMA}", "check it with the shim "
                         "version that wrote it (its \"shim\" member)")
    if not isinstance(doc.get("run"), dict) or not isinstance(doc["run"].get("argv"), list):
        raise UsageError(f"{path}: the record has no run (the launch that wrote it did not finish writing it)")
    from shim.provenance.shape import shape_problem

    problem = shape_problem(doc)
    if problem:
        raise UsageError(f"{path}: {problem}: not a record as shimrun --provenance writes it",
                         "give the file --provenance wrote, unchanged")
    return doc


def against(args: argparse.Namespace) -> int:
    from shim.cli.main import launch_arguments
    from shim.cli.run_cmd import current_directory
    from shim.options import launch_values
    from shim.pipeline.planner import plan_launch
    from shim.pipeline.request import LaunchRequest
    from shim.provenance.compare import differences
    from shim.provenance.loaded import loaded_differences

    recorded = read_record(args.against)
    argv = [str(a) for a in recorded["run"]["argv"][1:]]
    replay = launch_arguments(argv)
    replay.image, replay.provenance = args.image, None
    replay.conf = args.conf or replay.conf  # check's own --conf: the configuration to replay with
    request = LaunchRequest(options=launch_values(replay), argv=tuple(argv), cwd=current_directory(),
                            environ=dict(os.environ), dry_run=True, facts_only=True)
    facts = plan_launch(request).facts or {}
    found = differences(recorded, facts) + loaded_differences(recorded, facts, _sha256_now(facts))
    material = [d for d in found if d.material]
    used, was = _site_config(facts), _site_config(recorded)
    if args.json:
        json.dump({"same_computation": not material, "configuration": {"used": used, "recorded": was},
                   "differences": [{"what": d.what, "recorded": d.recorded, "now": d.now, "material": d.material}
                                   for d in found]}, sys.stdout, indent=2)
        print()
    else:
        print(f"configuration: {used}" + ("" if not was or was == used else
              f" (the record was planned with {was}: --conf {os.path.dirname(was)} replays with it)"))
        for d in found:
            print(d.line())
        notes = len(found) - len(material)
        print(f"{len(material)} difference(s) that change what runs, {notes} note(s): another computation would run"
              if material else f"the same computation would run ({notes} note(s))")
    return DIFFERS if material else 0


def _sha256_now(facts: dict) -> Callable[[str], str | None]:
    """The sha256 of a node's file now (under the replay's simulated host root, if any)."""
    from shim.host.paths import on_host
    from shim.provenance.digests import sha256_file

    host = facts.get("host") if isinstance(facts.get("host"), dict) else {}
    root = host.get("simulated_root") or "/"
    return lambda path: sha256_file(on_host(root, path))


def _site_config(doc: dict) -> str:
    """The shim.toml a provenance record (or this replay's facts) was planned with."""
    site = doc.get("site") if isinstance(doc, dict) else None
    found = site.get("config") if isinstance(site, dict) else None
    return found if isinstance(found, str) else ""


def _options_after_image(args: argparse.Namespace) -> None:
    """check's options written after IMAGE (and after COMMAND), which argparse hands over as
    COMMAND's words: taken as if given before IMAGE. An unknown option before COMMAND is refused."""
    by_name = {name: opt for opt in check_options() for name in opt.names}
    words, command, i = list(args.command), [], 0
    raw = list(getattr(args, "argv", None) or [])
    if words and len(raw) > len(words) and raw[-len(words) - 1] == "--":
        return  # `check IMAGE -- WORDS` (argparse took the "--" away): every word is COMMAND's
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            command += words[i:]
            break
        name, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
        opt = by_name.get(name)
        if opt is None:
            if word.startswith("-") and not command:
                raise UsageError(f"unrecognized arguments: {word}", HINT)
            command.append(word)
            continue
        if opt.kind == FLAG:
            if eq:
                raise UsageError(f"argument {name}: ignored explicit argument '{value}'", HINT)
            setattr(args, opt.dest, True)
            continue
        if not eq:
            if i >= len(words):
                raise UsageError(f"argument {name}: expected one argument", HINT)
            value, i = words[i], i + 1
        if opt.kind == APPEND:
            setattr(args, opt.dest, [*getattr(args, opt.dest), value])
        else:
            setattr(args, opt.dest, value)
    args.command = command


def main(args: argparse.Namespace) -> int:
    from shim.cli.run_cmd import run

    _options_after_image(args)
    if args.against and args.command:
        raise UsageError("check --against takes no COMMAND: the record's command is replayed",
                         f"shimrun check IMAGE --against {args.against}")
    if args.against:
        return against(args)
    return run(args, dry_run=True, as_json=args.json)
