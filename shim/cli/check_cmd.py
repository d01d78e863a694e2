"""`shimrun check IMAGE [COMMAND] [--json]`: the injection plan and diagnostics, without launching.
`shimrun check IMAGE --against RECORD`: that record's planning replayed on this node, and what
differs (exit 0: the same computation would run; 1: it would not)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from shim.errors import UsageError

DIFFERS = 1  # as diff(1): 0 the same, 1 different


def register(subparsers) -> None:
    from shim.cli.run_cmd import add_image_options

    p = subparsers.add_parser("check", help="show what would be injected and why, without running")
    p.add_argument("--json", action="store_true", help="print the plan (with --against: the differences) as JSON")
    p.add_argument("--against", metavar="RECORD", help="a provenance record (--provenance): replay its planning on "
                   "this node and print what differs; exit 0 when the same computation would run, 1 when not")
    add_image_options(p)
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
    from shim.cli.run_cmd import current_directory, fill_defaults
    from shim.pipeline.launch import plan_launch
    from shim.pipeline.request import LaunchRequest
    from shim.provenance.compare import differences

    recorded = read_record(args.against)
    argv = [str(a) for a in recorded["run"]["argv"][1:]]
    replay = launch_arguments(argv)
    replay.image, replay.provenance = args.image, None
    fill_defaults(replay)
    request = LaunchRequest(args=replay, argv=tuple(argv), cwd=current_directory(), environ=dict(os.environ),
                            dry_run=True, facts_only=True)
    found = differences(recorded, plan_launch(request).facts or {})
    material = [d for d in found if d.material]
    if args.json:
        json.dump({"same_computation": not material, "differences": [
            {"what": d.what, "recorded": d.recorded, "now": d.now, "material": d.material} for d in found]},
            sys.stdout, indent=2)
        print()
    else:
        for d in found:
            print(d.line())
        notes = len(found) - len(material)
        print(f"{len(material)} difference(s) that change what runs, {notes} note(s): another computation would run"
              if material else f"the same computation would run ({notes} note(s))")
    return DIFFERS if material else 0


def _options_after_image(args: argparse.Namespace) -> None:
    """`check IMAGE --against RECORD`, `check IMAGE --json`: the options written after IMAGE, which
    argparse hands over as the start of COMMAND."""
    command = list(args.command)
    while command and command[0] in ("--against", "--json"):
        if command[0] == "--json":
            args.json = True
            command = command[1:]
        elif len(command) < 2:
            raise UsageError("--against needs a provenance record", "shimrun check IMAGE --against RECORD")
        else:
            args.against, command = command[1], command[2:]
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
