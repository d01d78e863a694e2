"""`shimrun profiles [--conf DIR] [--json]`: the site's injection profiles and whether each is
usable on this host; `shimrun profiles lint FILE... [--host-root DIR]`: check profile files
before installing them (every problem, missing host files included)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shim.errors import ExitCode, UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("profiles", help="list the site's injection profiles, or lint profile files",
                              description="List the injection profiles of the site configuration "
                                          "(<conf dir>/profiles/*.toml) and whether each is usable on this host.")
    p.add_argument("--conf", metavar="DIR", help="site configuration directory (default: SHIMRUN_CONF, /etc/shim)")
    p.add_argument("--json", action="store_true", help="print the profiles as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.set_defaults(func=main)
    sub = p.add_subparsers(dest="profiles_action", metavar="{lint}")
    lint = sub.add_parser("lint", help="check profile files, host files included",
                          description="Check profile files as if they were a site's whole profiles/ directory: "
                                      "every problem is printed as FILE: KEY: message (fix).")
    lint.add_argument("files", nargs="+", metavar="FILE", help="profile file (.toml)")
    lint.add_argument("--host-root", default="/", metavar="DIR",
                      help="look for the host files the profiles list under DIR (default: /)")
    # SUPPRESS: the parent's --debug value must survive the subparser's defaults.
    lint.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    lint.set_defaults(func=lint_main)


def main(args: argparse.Namespace) -> int:
    from shim.plan.profiles import load_profiles
    from shim.site.config import BUNDLED_CONF_DIR, SYSTEM_CONF_DIR, find_conf_dir

    conf_dir = find_conf_dir(args.conf)
    profiles = load_profiles(conf_dir)
    if args.json:
        json.dump({"conf_dir": str(conf_dir), "profiles_dir": profiles.directory,
                   "profiles": [p.to_dict() for p in profiles.profiles]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    if not profiles.profiles:
        examples = os.path.join(BUNDLED_CONF_DIR, "profiles", "examples")
        # The bundled conf dir lives inside the installed package: a site's profiles go to
        # /etc/shim (or the --conf/SHIMRUN_CONF directory), never there.
        target = (os.path.join(SYSTEM_CONF_DIR, "profiles") if Path(conf_dir) == BUNDLED_CONF_DIR
                  else profiles.directory)
        print(f"no profiles in {profiles.directory}; to enable one, copy an example from {examples} to {target}/, "
              f"edit its paths, and check it with: shimrun profiles lint {target}/*.toml")
        return 0
    rows = [("NAME", "KIND", "APPLIES", "REPLACES", "ON THIS HOST")]
    for p in profiles.profiles:
        rows.append((p.name, p.kind, p.applies, ", ".join(p.replaces) or "-",
                     "usable" if p.available else f"unavailable: {p.why_unavailable()}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print(f"profiles in {profiles.directory}:")
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    return 0


def lint_main(args: argparse.Namespace) -> int:
    from shim.plan.profiles import lint_files

    if not os.path.isdir(args.host_root):
        raise UsageError(f"--host-root {args.host_root} is not a directory", "give the directory to look under")
    problems = lint_files(args.files, host_root=args.host_root)
    for problem in problems:
        print(problem)
    bad = {p.file for p in problems}
    for f in args.files:
        if str(f) not in bad:
            print(f"{f}: ok")
    return int(ExitCode.CONFIG) if problems else 0


if __name__ == "__main__":
    from shim.cli.main import main as shimrun

    sys.exit(shimrun(["profiles", *sys.argv[1:]]))
