"""The signed SIF fixtures of the golden set (sylabs/sif's test images and the public test keys that
signed them), and what `shimrun verify` and `shimrun sign` tests do with them: copy one, read its
signatures, run shimrun, check a one-line refusal. `nothing_left_behind` (a fixture, registered
by conftest.py's pytest_plugins; verify and sign tests use it for every test): each test's gpg
homes go to a TMPDIR of its own, empty afterwards, with no agent of theirs running."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import GOLDEN, shimrun_path
from error_line import one_error_line

from shim.errors import ExitCode
from shim.image import sif
from shim.verify import TrustedKeys

SIFS = GOLDEN / "sylabs-sif"
KEYS = GOLDEN / "keys"
FPR = "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"
ED25519_ID = "SHA256:x6l8ZblpSSXGaPMCzySedWg88BwIFcz8jlPb6el0mFs"
RSA_ID = "SHA256:BhCwr7qZulYcOMSl2Jt2DuYHxHNnN6th4NdMqR/PGa4"
PGP_RING = str(KEYS / "pgp-public.asc")
PEMS = tuple(str(KEYS / f"{n}-public.pem") for n in ("ed25519", "rsa", "ecdsa"))
ALL_KEYS = TrustedKeys(pgp_keyrings=(PGP_RING,), pem_keys=PEMS)


def shimrun(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([shimrun_path(), *map(str, args)], capture_output=True, text=True, env=env, check=False)


def copy(tmp_path: Path, name: str, src: Path = SIFS) -> Path:
    out = tmp_path / name
    shutil.copyfile(src / name, out)
    return out


def signature(path: Path, n: int = 0) -> sif.SifDescriptor:
    return [d for d in sif.read_sif(path).descriptors if d.data_type == sif.DATA_SIGNATURE][n]


def one_line_error(p: subprocess.CompletedProcess, code: ExitCode) -> str:
    """verify or sign refused: nothing on stdout, and one error line (returned)."""
    assert p.stdout == "", p.stdout
    return one_error_line(p, code)


def gpg_daemons(where: Path) -> list[str]:
    """gpg-agent / dirmngr processes of a throwaway verify home under `where` (never one)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(where) in cmd and ("gpg-agent" in cmd or "dirmngr" in cmd):
            out.append(cmd)
    return out


@pytest.fixture
def nothing_left_behind(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Each test's gpg homes go to a TMPDIR of its own (shimrun inherits it), which must be empty
    afterwards, with no agent of theirs running."""
    private = tmp_path_factory.mktemp("tmpdir")
    monkeypatch.setenv("TMPDIR", str(private))
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    yield
    assert sorted(os.listdir(private)) == []
    assert gpg_daemons(private) == []
