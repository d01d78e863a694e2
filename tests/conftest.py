"""Shared fixtures: a real non-root user to launch as, a world-readable work area, the images.

Launch tests run shimrun as an ordinary user (created here when the suite runs as root), the
way a scientist's batch script would, against real images."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from shim.record.format import NO_RECORD_CACHE

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHIM_SHARED", REPO.parent / "shared"))
GOLDEN = SHARED / "sif-golden"
TEST_USER = os.environ.get("SHIM_TEST_USER", "shimtest")

# Fixtures of helper modules: OCI images and registries; directory images carrying their own
# libraries; the signed SIFs' gpg homes. A test module never imports another test module.
pytest_plugins = ["oci_fixtures", "library_images", "signed_sifs"]


PREFIX = Path(os.environ.get("SHIM_PREFIX", "/opt/shim"))
VENV_PYTHON = str(PREFIX / "venv" / "bin" / "python")


def shimrun_path() -> str:
    """The installed front-end: $SHIMRUN (an install under another SHIM_PREFIX), else the one
    scripts/install.sh linked on PATH."""
    found = os.environ.get("SHIMRUN") or shutil.which("shimrun") or str(PREFIX / "venv" / "bin" / "shimrun")
    if not os.path.exists(found):
        pytest.exit("shimrun is not installed: run scripts/test.sh (it installs first)", returncode=3)
    return found


def compat_bin_dir() -> Path:
    """Where scripts/install.sh put shim's `apptainer` and `singularity` ($SHIM_PREFIX/compat/bin)."""
    found = Path(os.environ.get("SHIM_COMPAT_BIN") or PREFIX / "compat" / "bin")
    if not (found / "apptainer").exists():
        pytest.exit(f"{found}/apptainer is not installed: run scripts/test.sh (it installs first)", returncode=3)
    return found


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str


def _ordinary_user(name: str) -> User:
    """The user `name`, made (with a home) if the system has none of that name."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True)
        pw = pwd.getpwnam(name)
    return User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)


@pytest.fixture(scope="session")
def user() -> User:
    if os.getuid() != 0:
        pw = pwd.getpwuid(os.getuid())
        return User(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir)
    return _ordinary_user(TEST_USER)


@pytest.fixture
def tmp_private(user) -> Path:
    """/tmp/shim-UID of the test user (the cache's fallback): absent before and after the test."""
    path = Path(f"/tmp/shim-{user.uid}")
    shutil.rmtree(path, ignore_errors=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def other_user(user: User) -> User:
    """A second ordinary user: someone else on the same node (planting files in shared places)."""
    if os.getuid() != 0:
        pytest.skip("a second user can only be made as root")
    return _ordinary_user(f"{TEST_USER}2")


def as_user(who: User, args: Sequence[str], **kw) -> subprocess.CompletedProcess:
    """Run a command as `who` (a plain subprocess: for what that user does besides shimrun)."""
    return subprocess.run(list(map(str, args)), check=False, capture_output=True, text=True, user=who.uid,
                          group=who.gid, extra_groups=[], **kw)


@pytest.fixture(scope="session")
def world_dir() -> Path:
    """A directory the test user can read (the repo and pytest's tmp may sit under /root)."""
    d = Path(tempfile.mkdtemp(prefix="shimtests.", dir="/var/tmp"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def user_dir(world_dir: Path, user: User, request) -> Path:
    """A per-test directory owned by the test user."""
    d = world_dir / request.node.name.replace("/", "_").replace("[", "_").replace("]", "")[:80]
    d.mkdir()
    os.chown(d, user.uid, user.gid)
    return d


class Runner:
    def __init__(self, user: User, shimrun: str) -> None:
        self.user = user
        self.shimrun = shimrun

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {"HOME": self.user.home, "USER": self.user.name, "LOGNAME": self.user.name, "LANG": "C.UTF-8",
               "PATH": "/usr/local/bin:/usr/bin:/bin", "SHIMRUN_CACHE": f"{self.user.home}/.cache/shim-tests"}
        if os.environ.get(NO_RECORD_CACHE):  # scripts/test.sh's second pass: every launch is planned
            env[NO_RECORD_CACHE] = "1"
        env.update(extra or {})
        return env

    def _ids(self) -> dict:
        if os.getuid() != 0:
            return {}
        return {"user": self.user.uid, "group": self.user.gid, "extra_groups": []}

    def run(self, args: Sequence[str], cwd: str | os.PathLike = "/tmp", env: dict[str, str] | None = None,
            timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([self.shimrun, *map(str, args)], check=False, cwd=cwd, env=self.env(env),
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                              **self._ids(), **kw)

    def popen(self, args: Sequence[str], cwd: str | os.PathLike = "/tmp", env: dict[str, str] | None = None,
              **kw) -> subprocess.Popen:
        return subprocess.Popen([self.shimrun, *map(str, args)], cwd=cwd, env=self.env(env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL, **self._ids(), **kw)

    def sh(self, command: str, cwd: str | os.PathLike = "/tmp", env: dict[str, str] | None = None,
           timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a shell command line as the user (to see what a shell sees, e.g. 128+N)."""
        return subprocess.run(["/bin/sh", "-c", command], check=False, cwd=cwd, env=self.env(env), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, **self._ids())


@pytest.fixture(scope="session")
def shim(user: User) -> Runner:
    return Runner(user, shimrun_path())


@pytest.fixture(scope="session")
def busybox_sif(world_dir: Path) -> Path:
    """The real Apptainer-built busybox image from shared/sif-golden, readable by the user."""
    dst = world_dir / "busybox_amd64.sif"
    shutil.copyfile(GOLDEN / "apptainer" / "busybox_amd64.sif", dst)
    dst.chmod(0o644)
    return dst


@pytest.fixture(scope="session")
def golden_copy(world_dir: Path):
    def copy(rel: str) -> Path:
        dst = world_dir / rel.replace("/", "_")
        if not dst.exists():
            shutil.copyfile(GOLDEN / rel, dst)
            dst.chmod(0o644)
        return dst
    return copy
