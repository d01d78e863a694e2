"""Both launch paths give the same launch: planned afresh (SHIMRUN_NO_RECORD_CACHE=1), planned and
stored (the first launch), and run from the stored record without Python (the second). For each
launch of a matrix (SIF and directory images, environment scripts, --cleanenv, --env, --pwd,
--fakeroot, a profile's [env], a missing command, a missing working directory): the app's
environment (diff of `env`), its mounts, its exit status and everything shimrun prints."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from dirimage import BUSYBOX, Extras, busybox_dir
from siteconf import conf_with

from shim.record.format import NO_RECORD_CACHE

SHOW = ("/bin/busybox env | /bin/busybox sort; echo ---; /bin/busybox cut -d' ' -f5 /proc/self/mountinfo "
        "| /bin/busybox sort; echo ---; /bin/busybox id; /bin/busybox pwd")

pytestmark = pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static is not installed")


@pytest.fixture(scope="module")
def images(world_dir: Path, busybox_sif: Path) -> dict[str, Path]:
    root = world_dir / "record-paths"
    if not root.exists():
        busybox_dir(root / "plain")
        busybox_dir(root / "scripts", Extras(env="export IMGVAR=fromimage\nexport PATH=/opt/x:$PATH\n",
                                             env_name="90-environment.sh"))
        conf_with(root / "conf", {"site": 'prepend = { PATH = "/site/bin" }\nset = { SITE = "yes" }\n'
                                  'unset = ["HOSTVAR"]\n'})
        subprocess.run(["chmod", "-R", "a+rX", str(root)], check=True)
    return {"sif": busybox_sif, "dir": root / "plain", "scripts": root / "scripts", "conf": root / "conf"}


CASES = {
    "sif": ([], "sif", ["sh", "-c", SHOW], {}),
    "dir": ([], "dir", ["sh", "-c", SHOW], {}),
    "env-scripts": ([], "scripts", ["sh", "-c", SHOW], {}),
    "cleanenv": (["--cleanenv"], "scripts", ["sh", "-c", SHOW], {"http_proxy": "p", "SLURM_JOB_ID": "9"}),
    "overrides": (["-e", "A=1", "-e", "PREPEND_PATH=/pre"], "scripts", ["sh", "-c", SHOW],
                  {"SHIMRUNENV_B": "2", "APPTAINERENV_A": "lost"}),
    "pwd": (["--pwd", "/tmp"], "dir", ["sh", "-c", SHOW], {}),
    "fakeroot": (["--fakeroot", "--no-home"], "sif", ["sh", "-c", SHOW], {}),
    "profile-env": (["--conf", "CONF"], "scripts", ["sh", "-c", SHOW], {}),
    "not-found": ([], "dir", ["no-such-app"], {}),
    "exit-status": ([], "sif", ["sh", "-c", "echo x; exit 7"], {}),
    "missing-cwd": ([], "dir", ["sh", "-c", "/bin/busybox pwd"], {}),
}


def _launch(shim, images, case: str, cwd: Path, env: dict[str, str]):
    opts, image, command, extra = CASES[case]
    opts = [str(images["conf"]) if o == "CONF" else o for o in opts]
    args = [*opts, images[image], *(["/bin/busybox", *command] if command[0] == "sh" else command)]
    r = shim.run(args, cwd=cwd, env={"HOSTVAR": "host", **extra, **env})
    return r.returncode, r.stdout, r.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_planned_stored_and_cached_launches_agree(shim, images, case: str, user_dir: Path) -> None:
    cwd = user_dir / "work"
    cwd.mkdir()
    if case == "missing-cwd":  # the caller's directory, under /usr: not bound, and not in the image
        cwd = Path("/usr/share/doc")
    cache = {"SHIMRUN_CACHE": str(user_dir / "cache"), NO_RECORD_CACHE: ""}  # on, in either pass
    # the image unpacked into the node-local cache first: its one line belongs to that launch alone
    _launch(shim, images, case, cwd, {**cache, NO_RECORD_CACHE: "1"})
    planned = _launch(shim, images, case, cwd, {**cache, NO_RECORD_CACHE: "1"})
    stored = _launch(shim, images, case, cwd, cache)
    cached = _launch(shim, images, case, cwd, cache)
    assert (user_dir / "cache" / "records").is_dir() and os.listdir(user_dir / "cache" / "records")
    assert planned == stored == cached
    if case not in ("not-found", "exit-status", "missing-cwd"):
        assert planned[0] == 0, planned[2]
