"""OpenPGP clear-signed signatures through `gpg` (no OpenPGP code of shim's own).

Verifying: a throwaway GNUPGHOME (mode 0700) holds only the trusted keyrings, gpg runs without
starting an agent or dirmngr (--no-autostart: verifying needs neither), and the home is removed,
after `gpgconf --kill all`, whatever happens. The verdict comes from gpg's --status-fd lines
(VALIDSIG, GOODSIG, BADSIG, EXPKEYSIG, EXPSIG, REVKEYSIG, ERRSIG, NO_PUBKEY), the signed text from
gpg's own output: shim never splits the armor itself. gpg's trust model is not used: a key is
trusted because the caller gave it.

Signing: in the user's own GNUPGHOME (gpg's default, or $GNUPGHOME), with their agent, as
`gpg --clearsign --digest-algo SHA256 --local-user KEY`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType

from shim.errors import ExitCode, ShimError, UsageError
from shim.verify.keys import read_key_file

STATUS_PREFIX = "[GNUPG:] "
# OpenPGP hash algorithm ids gpg reports in VALIDSIG; Go accepts the SHA-2 family only.
ACCEPTED_HASHES = {8: "SHA256", 9: "SHA384", 10: "SHA512", 11: "SHA224"}
ERRSIG_NO_PUBKEY = "9"
ERRSIG_UNKNOWN_ALGORITHM = "4"
GPG_TIMEOUT = 60
_GPG_OPTS = ("--batch", "--no-tty", "--status-fd", "2")

# A finished signature of a key gpg could check -> shim's verdict.
_KEY_STATES = {"EXPKEYSIG": "key expired", "EXPSIG": "signature expired", "REVKEYSIG": "key revoked",
               "BADSIG": "bad signature"}


def gpg_program() -> str:
    found = shutil.which("gpg")
    if not found:
        raise ShimError(ExitCode.HOST, "gpg is not installed: OpenPGP signatures need it",
                        "install it (apt-get install gnupg, dnf install gnupg2)")
    return found


@dataclass(frozen=True)
class GpgRun:
    returncode: int
    stdout: bytes
    status: list[tuple[str, list[str]]]   # (keyword, arguments) of each [GNUPG:] line
    messages: list[str]                    # gpg's other stderr lines

    def last_message(self) -> str:
        return self.messages[-1].removeprefix("gpg: ") if self.messages else f"gpg exited with {self.returncode}"


def run_gpg(args: Sequence[str], data: bytes = b"", env: Mapping[str, str] | None = None,
            timeout: float | None = GPG_TIMEOUT) -> GpgRun:
    try:
        p = subprocess.run([gpg_program(), *_GPG_OPTS, *args], input=data, capture_output=True, env=env,
                           timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ShimError(ExitCode.HOST, f"gpg did not answer within {timeout} s",
                        "check that gpg works: gpg --version") from None
    status, messages = [], []
    for line in p.stderr.decode("utf-8", "replace").splitlines():
        if line.startswith(STATUS_PREFIX):
            keyword, *rest = line[len(STATUS_PREFIX):].split(" ")
            status.append((keyword, rest))
        elif line.strip():
            messages.append(line)
    return GpgRun(p.returncode, p.stdout, status, messages)


@dataclass(frozen=True)
class PgpResult:
    reason: str           # "" when the signature is good and its key was trusted
    plaintext: bytes      # gpg's output: the signed text (trust it only when reason == "")
    primary: str = ""     # the signer's primary key fingerprint (VALIDSIG's last field)
    issuer: str = ""      # the key id or fingerprint the signature names (for "unknown key")

    @property
    def ok(self) -> bool:
        return not self.reason


def interpret(run: GpgRun) -> PgpResult:
    """gpg's status lines for one clear-signed message -> the verdict."""
    keywords = [k for k, _ in run.status]
    if keywords.count("NEWSIG") != 1 or keywords.count("PLAINTEXT") > 1:
        what = "no OpenPGP signature" if "NEWSIG" not in keywords else "more than one OpenPGP signature"
        return PgpResult(f"bad signature: {what} in the signature object", run.stdout)
    args = {k: a for k, a in run.status}
    if "ERRSIG" in args:
        e = args["ERRSIG"]
        issuer = e[6] if len(e) > 6 and e[6] != "-" else e[0]
        if len(e) > 5 and e[5] == ERRSIG_NO_PUBKEY:
            return PgpResult(f"signed by unknown key {issuer}", run.stdout, issuer=issuer)
        if len(e) > 5 and e[5] == ERRSIG_UNKNOWN_ALGORITHM:
            return PgpResult("bad signature: an algorithm gpg does not support", run.stdout, issuer=issuer)
        return PgpResult(f"bad signature: gpg cannot check it ({run.last_message()})", run.stdout, issuer=issuer)
    valid = args.get("VALIDSIG", [])
    primary = valid[9] if len(valid) > 9 else (valid[0] if valid else "")
    for keyword, reason in _KEY_STATES.items():
        if keyword in args:
            return PgpResult(reason, run.stdout, primary, args[keyword][0] if args[keyword] else "")
    if "GOODSIG" not in args or len(valid) < 8:
        return PgpResult(f"bad signature: {run.last_message()}", run.stdout)
    if not valid[7].isdigit() or int(valid[7]) not in ACCEPTED_HASHES:
        return PgpResult(f"bad signature: weak hash algorithm {valid[7]} (SHA-2 required)", run.stdout, primary)
    return PgpResult("", run.stdout, primary, primary)


class GpgVerifier:
    """`with GpgVerifier(keyrings, code) as v: v.verify(blob)`: the throwaway home lives for the
    block. A keyring gpg cannot import is a ShimError with `code` (64 named on the command line,
    78 in a key directory)."""

    def __init__(self, keyrings: Sequence[str], code: ExitCode) -> None:
        self.keyrings = tuple(keyrings)
        self.code = code
        self.home = ""

    def __enter__(self) -> GpgVerifier:
        try:
            self.home = tempfile.mkdtemp(prefix="shim-gpg-")  # mode 0700
        except OSError as e:
            raise ShimError(ExitCode.HOST, f"cannot make a directory for gpg in {tempfile.gettempdir()}: "
                            f"{e.strerror}", "set TMPDIR to a writable directory") from None
        try:
            for path in self.keyrings:
                self._import(path)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _args(self, *args: str) -> list[str]:
        return ["--homedir", self.home, "--no-options", "--no-autostart", "--trust-model", "always", *args]

    def _import(self, path: str) -> None:
        data = read_key_file(path, self.code)
        run = run_gpg(self._args("--import"), data)
        res = next((a for k, a in run.status if k == "IMPORT_RES"), None)
        # IMPORT_RES count no_user_id imported 0 unchanged ...: a keyring gives at least one key
        if res is None or len(res) < 5 or int(res[2]) + int(res[4]) == 0:
            fix = "fix or remove it" if self.code == ExitCode.CONFIG else "give an OpenPGP public key (gpg --export)"
            why = "it holds no OpenPGP key" if res is None or res[0] == "0" else run.last_message()
            raise ShimError(self.code, f"gpg cannot import {path}: {why}", fix)

    def verify(self, blob: bytes) -> PgpResult:
        return interpret(run_gpg(self._args("--output", "-", "--decrypt"), blob))

    def close(self) -> None:
        if not self.home:
            return
        try:
            if shutil.which("gpgconf"):  # nothing should run (--no-autostart); make sure of it
                subprocess.run(["gpgconf", "--homedir", self.home, "--kill", "all"], capture_output=True,
                               timeout=GPG_TIMEOUT, check=False)
        finally:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = ""


# ---- signing, in the user's own GNUPGHOME ---------------------------------------------------

@dataclass(frozen=True)
class SecretKey:
    fingerprint: str   # primary key, 40 hex digits
    uid: str


def _signing_keys(environ: Mapping[str, str], spec: str | None) -> list[SecretKey]:
    """The secret keys gpg can sign with now (not expired, revoked or disabled), optionally
    those matching `spec` (a fingerprint, key id or user id, as gpg matches it)."""
    run = run_gpg(["--with-colons", "--fixed-list-mode", "--list-secret-keys", *([spec] if spec else [])],
                  env=environ)
    keys, current = [], None
    for line in run.stdout.decode("utf-8", "replace").splitlines():
        f = line.split(":")
        if f[0] == "sec":
            # field 2: validity (e expired, r revoked, d/i disabled/invalid); 12: usable capabilities
            usable = len(f) > 11 and "S" in f[11] and f[1] not in ("e", "r", "d", "i")
            current = [usable, "", ""]
            keys.append(current)
        elif current is not None and f[0] == "fpr" and not current[1]:
            current[1] = f[9]
        elif current is not None and f[0] == "uid" and not current[2]:
            current[2] = f[9]
    return [SecretKey(fpr, uid) for usable, fpr, uid in keys if usable and fpr]


def find_secret_key(environ: Mapping[str, str], spec: str | None = None, index: int | None = None) -> SecretKey:
    """The key to sign with: the one `spec` names, the index-th of the signing keys, or the only one."""
    home = environ.get("GNUPGHOME") or "~/.gnupg"
    keys = _signing_keys(environ, spec)
    listing = "; ".join(f"{i}: {k.fingerprint} {k.uid}" for i, k in enumerate(keys))
    if index is not None:
        if not 0 <= index < len(keys):
            raise UsageError(f"--keyidx {index}: {home} has {len(keys)} secret keys that can sign"
                             + (f" ({listing})" if keys else ""), "give an index from 0 to the count minus 1")
        return keys[index]
    if len(keys) == 1:
        return keys[0]
    if not keys:
        named = f" matching {spec!r}" if spec else ""
        raise UsageError(f"no OpenPGP secret key{named} that can sign in {home}",
                         "make one (gpg --quick-gen-key 'Name <email>' default sign) or sign with --key PRIVATE.pem")
    raise UsageError(f"{home} has several secret keys that can sign ({listing})",
                     "choose one with --pgp-key FINGERPRINT or --keyidx N")


def clearsign(message: bytes, key: SecretKey, environ: Mapping[str, str]) -> bytes:
    env = dict(environ)
    if "GPG_TTY" not in env and sys.stdin.isatty():  # so that pinentry can ask for a passphrase
        env["GPG_TTY"] = os.ttyname(sys.stdin.fileno())
    run = run_gpg(["--clearsign", "--digest-algo", "SHA256", "--local-user", key.fingerprint, "--output", "-"],
                  message, env=env, timeout=None)
    if run.returncode != 0 or not any(k == "SIG_CREATED" for k, _ in run.status):
        raise ShimError(ExitCode.USAGE, f"gpg cannot sign with {key.fingerprint}: {run.last_message()}",
                        "check the key with: gpg --list-secret-keys; a passphrase needs a terminal (GPG_TTY)")
    return run.stdout
