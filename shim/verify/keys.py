"""Key material: which keys are trusted, and PEM keys loaded with `cryptography`.

Trusted keys are the files named on the command line (--key PEM, --keyring OpenPGP), or else the
files in two directories: the site's `<conf>/keys/` and the user's `$XDG_CONFIG_HOME/shim/keys/`
(`~/.config/shim/keys/`): `*.asc` and `*.gpg` are OpenPGP keyrings, `*.pem` PEM public keys; other
names are ignored and a missing directory holds no keys. The site's image policy leaves the user's
directory out: a user must not be able to trust their own key past the site.

A DSSE signature names its key by `SHA256:<base64>` of the key's SSH wire form, the form of
`ssh-keygen -l` (and of Go's ssh.FingerprintSHA256), so that is the keyid shim reports.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from shim.errors import ExitCode, ShimError

PGP_SUFFIXES = (".asc", ".gpg")
PEM_SUFFIXES = (".pem",)
MAX_KEY_FILE = 1 << 20   # a key or keyring larger than this is not one
SITE_KEYS = "keys"

PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_KEY_TYPES_HINT = "use an ed25519, RSA or ECDSA key"


@dataclass(frozen=True)
class TrustedKeys:
    pgp_keyrings: tuple[str, ...] = ()
    pem_keys: tuple[str, ...] = ()
    # True when the files come from the key directories (trusted_keys): a broken one is then a
    # configuration error (exit 78), not a bad command line (64).
    configured: bool = False

    @property
    def empty(self) -> bool:
        return not (self.pgp_keyrings or self.pem_keys)

    @property
    def error_code(self) -> ExitCode:
        return ExitCode.CONFIG if self.configured else ExitCode.USAGE


def user_keys_dir(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):  # the XDG rule: a relative value is ignored
        home = environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
        base = os.path.join(home, ".config")
    return Path(base) / "shim" / "keys"


def _key_dirs(conf_dir: Path, environ: Mapping[str, str], include_user: bool) -> list[Path]:
    dirs = [Path(conf_dir) / SITE_KEYS]
    return dirs + [user_keys_dir(environ)] if include_user else dirs


def _listing(directory: Path) -> list[Path]:
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise ShimError(ExitCode.CONFIG, f"key directory {directory} is not a directory",
                        "remove it, or make it a directory of *.asc, *.gpg and *.pem keys") from None
    except OSError as e:
        raise ShimError(ExitCode.CONFIG, f"cannot read key directory {directory}: {e.strerror}",
                        "make it readable (chmod a+rx), or remove it") from None
    return [directory / n for n in names if n.endswith(PGP_SUFFIXES + PEM_SUFFIXES) and not n.startswith(".")]


def trusted_keys(conf_dir: Path, environ: Mapping[str, str], *, include_user: bool) -> TrustedKeys:
    files = [p for d in _key_dirs(conf_dir, environ, include_user) for p in _listing(d)]
    return TrustedKeys(pgp_keyrings=tuple(str(p) for p in files if p.name.endswith(PGP_SUFFIXES)),
                       pem_keys=tuple(str(p) for p in files if p.name.endswith(PEM_SUFFIXES)),
                       configured=True)


def key_files(conf_dir: Path, environ: Mapping[str, str], *, include_user: bool) -> list[str]:
    """The key directories (whether they exist or not) and the key files in them: what a cached
    verdict depends on besides the image."""
    out = []
    for d in _key_dirs(conf_dir, environ, include_user):
        out += [str(d), *(str(p) for p in _listing(d))]
    return out


def read_key_file(path: str, code: ExitCode) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as e:
        raise ShimError(code, f"cannot read key {path}: {e.strerror}", _fix_hint(code, "check the path and its "
                                                                                      "permissions")) from None
    if len(data) > MAX_KEY_FILE:
        raise ShimError(code, f"{path} is larger than {MAX_KEY_FILE >> 20} MiB: not a key", _fix_hint(code))
    return data


def _fix_hint(code: ExitCode, otherwise: str = "give a key file") -> str:
    return "fix or remove it" if code == ExitCode.CONFIG else otherwise


@dataclass(frozen=True)
class PemKey:
    path: str
    key: PublicKey
    keyid: str       # "SHA256:<base64 of the SSH wire form>"


def keyid_of(key: PublicKey) -> str:
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    wire = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(wire).digest()).decode().rstrip("=")


def load_public_key(path: str, code: ExitCode) -> PemKey:
    data = read_key_file(path, code)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        if b"PRIVATE KEY-----" in data:
            raise ShimError(code, f"{path} is a private key; verifying takes the public one",
                            "make it with: openssl pkey -in PRIVATE.pem -pubout -out public.pem") from None
        raise ShimError(code, f"{path} is not a PEM public key",
                        _fix_hint(code, "give a -----BEGIN PUBLIC KEY----- file; an OpenPGP key goes to "
                                        "--keyring")) from None
    if not isinstance(key, PublicKey):
        raise ShimError(code, f"{path}: {type(key).__name__} keys cannot sign SIF images", _KEY_TYPES_HINT)
    return PemKey(path, key, keyid_of(key))


def load_private_key(path: str, passphrase: bytes | None = None) -> PrivateKey:
    """A PEM private key for `shimrun sign --key`. A key protected by a passphrase needs it."""
    data = read_key_file(path, ExitCode.USAGE)
    try:
        key = serialization.load_pem_private_key(data, password=passphrase)
    except TypeError as e:  # a passphrase was needed, or given for a key that has none
        raise ShimError(ExitCode.USAGE, f"{path}: {e}", "give the passphrase on a terminal") from None
    except ValueError:
        if b"PUBLIC KEY-----" in data:
            raise ShimError(ExitCode.USAGE, f"{path} is a public key; signing takes the private one",
                            "give the private half of the key pair") from None
        raise ShimError(ExitCode.USAGE, f"{path} is not a PEM private key (or its passphrase is wrong)",
                        "give a -----BEGIN PRIVATE KEY----- file") from None
    if not isinstance(key, PrivateKey):
        raise ShimError(ExitCode.USAGE, f"{path}: {type(key).__name__} keys cannot sign SIF images",
                        _KEY_TYPES_HINT)
    return key


def is_encrypted_pem(path: str) -> bool:
    data = read_key_file(path, ExitCode.USAGE)
    return b"ENCRYPTED" in data.split(b"\n", 2)[0] or b"Proc-Type: 4,ENCRYPTED" in data
