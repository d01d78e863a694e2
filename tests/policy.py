"""The site's image policy in tests: a configuration directory with [images] and keys, readable
copies of images, a byte flipped in place, what a refusal looks like (one line, exit UNTRUSTED), a
signing key made here, and the system configuration directory (the installed shim's, which every
launch reads) written for a test and put back after."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import VENV_PYTHON

from shim.errors import ExitCode


def make_conf(where: Path, images: str, keys: tuple[Path, ...] = ()) -> Path:
    (where / "keys").mkdir(parents=True, exist_ok=True)
    (where / "shim.toml").write_text(f"[launch]\nbinds = []\n\n[images]\n{images}\n")
    for key in keys:
        shutil.copy(key, where / "keys" / key.name)
    for p in [where, *where.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return where


def readable_copy(src: Path, dst: Path) -> Path:
    shutil.copy(src, dst)
    dst.chmod(0o644)
    return dst


def flip_byte(path: Path, offset: int, keep_mtime: bool = False) -> None:
    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def refused(r: subprocess.CompletedProcess, rule: str) -> bool:
    lines = r.stderr.splitlines()
    return (r.returncode == ExitCode.UNTRUSTED and len(lines) == 1 and f"images.{rule}:" in lines[0]
            and "mounted" not in r.stderr)


def make_signing_key(where: Path) -> tuple[Path, Path]:
    """An ed25519 key pair made here (PEM): (private, public)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private, public = where / "site-signer.pem", where / "site-signer.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    public.chmod(0o644)
    return private, public


def system_conf_dir() -> Path:
    """The installed shim's system configuration directory (fixed at install: SHIM_SYSCONFDIR)."""
    code = "from shim.site.config import SYSTEM_CONF_DIR; print(SYSTEM_CONF_DIR)"
    r = subprocess.run([VENV_PYTHON, "-I", "-c", code], capture_output=True, text=True, check=True)
    return Path(r.stdout.strip())


@contextmanager
def system_conf(images: str, keys: tuple[Path, ...] = (), extra: str = "") -> Iterator[Path]:
    """The system configuration directory holding a shim.toml with [images] `images` (and `extra`
    tables) and `keys`, for the duration; what was there before is put back."""
    where = system_conf_dir()
    saved = where.with_name(where.name + ".saved-by-tests")
    if where.exists():
        where.rename(saved)
    try:
        make_conf(where, images, keys)
        if extra:
            with open(where / "shim.toml", "a") as f:
                f.write("\n" + extra + "\n")
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)
        if saved.exists():
            saved.rename(where)
