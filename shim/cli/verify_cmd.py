"""`shimrun verify IMAGE [--key PEM]... [--keyring FILE]... [--group-id N | --sif-id N | --all]
[--legacy-insecure] [--json] [--conf DIR]`: check a SIF's signatures against its bytes.

One line per signature and a verdict line; exit 0 when every object that runs is covered by a
valid signature from a trusted key, 79 when not. Option names follow `apptainer verify`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from shim.errors import ExitCode
from shim.site.config import BUNDLED_CONF_DIR, SYSTEM_CONF_DIR, find_conf_dir
from shim.verify import TrustedKeys, VerifyOptions, trusted_keys, verify_image
from shim.verify.keys import SITE_KEYS, user_keys_dir


def object_number(text: str) -> int:
    try:
        n = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < n < 1 << 28:
        raise argparse.ArgumentTypeError(f"{n} is not an object or group number (1 to {(1 << 28) - 1})")
    return n


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "verify", help="check the signatures of a SIF image",
        description="Check every signature of a SIF (OpenPGP, DSSE, legacy) against the image's bytes. "
                    "Trusted keys: --key/--keyring, or else <conf>/keys/ and ~/.config/shim/keys/.")
    p.add_argument("--key", action="append", default=[], metavar="PEM",
                   help="trust this PEM public key (DSSE signatures; repeatable)")
    p.add_argument("--keyring", action="append", default=[], metavar="FILE",
                   help="trust the OpenPGP public keys in FILE (armored or binary; repeatable)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("-g", "--group-id", "--group", dest="group", type=object_number, metavar="N",
                       help="verify object group N only")
    which.add_argument("-i", "--sif-id", "--id", dest="object_id", type=object_number, metavar="N",
                       help="verify object N only")
    which.add_argument("-a", "--all", dest="all_objects", action="store_true",
                       help="with --legacy-insecure: every object, not only the primary partition")
    p.add_argument("--legacy-insecure", action="store_true",
                   help="count signatures of Singularity < 3.6 (they cover object data only)")
    p.add_argument("-j", "--json", action="store_true", help="print the verdicts as JSON (schema shim-verify/1)")
    p.add_argument("--conf", metavar="DIR", help="site configuration directory (default: SHIMRUN_CONF, /etc/shim)")
    p.add_argument("image", metavar="IMAGE")
    p.set_defaults(func=main)


def _keys(args: argparse.Namespace) -> TrustedKeys:
    if args.key or args.keyring:
        return TrustedKeys(pgp_keyrings=tuple(args.keyring), pem_keys=tuple(args.key))
    return trusted_keys(find_conf_dir(args.conf), os.environ, include_user=True)


def _key_dirs_hint(args: argparse.Namespace) -> str:
    conf = find_conf_dir(args.conf)
    # The bundled conf dir lives inside the installed package: a site's keys go to /etc/shim.
    site = Path(SYSTEM_CONF_DIR) if conf == BUNDLED_CONF_DIR else conf
    return f"{site / SITE_KEYS}/ or {user_keys_dir(os.environ)}/"


def main(args: argparse.Namespace) -> int:
    keys = _keys(args)
    options = VerifyOptions(legacy_insecure=args.legacy_insecure, group=args.group, object_id=args.object_id,
                            all_objects=args.all_objects)
    report = verify_image(args.image, keys, options)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        lines = report.lines()
        if keys.empty and not report.ok:
            lines.append(f"no trusted keys: give --key PEM or --keyring FILE, or put keys in {_key_dirs_hint(args)}")
        print("\n".join(lines))
    return 0 if report.ok else int(ExitCode.UNTRUSTED)
