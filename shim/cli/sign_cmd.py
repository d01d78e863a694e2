"""`shimrun sign IMAGE [--key PRIVATE.pem | --pgp-key KEY | --keyidx N] [--group-id N]...`: add
signatures to a SIF in the format Apptainer verifies, one per object group (every group unless
--group-id says which). A PEM private key makes a DSSE signature; otherwise gpg signs with a key
of the user's GNUPGHOME. Option names follow `apptainer sign`."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from shim.cli.verify_cmd import object_number
from shim.errors import UsageError
from shim.verify.keys import is_encrypted_pem, load_private_key
from shim.verify.pgp import find_secret_key
from shim.verify.sign import PemSigner, PgpSigner, Signer, sign_image


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "sign", help="sign a SIF image (OpenPGP with gpg, or DSSE with a PEM key)",
        description="Add one signature per object group of a SIF, as 'apptainer sign' does. With --key, a "
                    "DSSE signature by that PEM private key; otherwise an OpenPGP one by gpg, with the only "
                    "(or the chosen) secret key of GNUPGHOME.")
    key = p.add_mutually_exclusive_group()
    key.add_argument("--key", metavar="PRIVATE.pem", help="sign with this PEM private key (DSSE)")
    key.add_argument("--pgp-key", metavar="KEY",
                     help="sign with this OpenPGP secret key (fingerprint, key id or user id, as gpg names it)")
    key.add_argument("-k", "--keyidx", type=int, metavar="N",
                     help="sign with the N-th secret key that can sign (from 0, in 'gpg --list-secret-keys' order)")
    p.add_argument("-g", "--group-id", "--group", dest="groups", action="append", type=object_number, default=[],
                   metavar="N", help="sign object group N only (repeatable; default: every group)")
    p.add_argument("image", metavar="IMAGE")
    p.set_defaults(func=main)


def _pem_signer(path: str) -> PemSigner:
    passphrase = None
    if is_encrypted_pem(path):
        if not sys.stdin.isatty():
            raise UsageError(f"{path} is protected by a passphrase and there is no terminal to ask for it",
                             "run shimrun sign on a terminal, or give an unencrypted key")
        passphrase = getpass.getpass(f"Passphrase for {path}: ").encode()
    return PemSigner(load_private_key(path, passphrase))


def _signer(args: argparse.Namespace) -> Signer:
    if args.key:
        return _pem_signer(args.key)
    return PgpSigner(find_secret_key(os.environ, args.pgp_key, args.keyidx), dict(os.environ))


def main(args: argparse.Namespace) -> int:
    signer = _signer(args)
    for s in sign_image(args.image, signer, args.groups):
        print(f"signed group {s.group} of {args.image}: signature object {s.object_id}, by {s.signer}")
    return 0
