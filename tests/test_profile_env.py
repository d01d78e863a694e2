"""A profile's [env] as the app sees it, launched: applied after the image's environment scripts
(a prepend goes in front of the image's value, an unset removes the image's and the host's
variable), composed in profile order, and below the user's own --env."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from dirimage import BUSYBOX, Extras, busybox_dir
from siteconf import conf_with

SHOW = 'echo "IMGVAR=$IMGVAR HOSTVAR=$HOSTVAR LD_RUN_DIRS=$LD_RUN_DIRS PROF_SET=$PROF_SET PATH=$PATH"'

pytestmark = pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static is not installed")


@pytest.fixture
def site(user_dir: Path) -> Path:
    # Profiles apply in file-name order: a-site, then b-site.
    conf = conf_with(user_dir / "conf", {
        "a-site": 'prepend = { PATH = "/site/bin", LD_RUN_DIRS = "/site/lib" }\nunset = ["IMGVAR", "HOSTVAR"]\n'
                  'set = { PROF_SET = "profile" }\n',
        "b-site": 'prepend = { PATH = "/b/bin" }\n'})
    subprocess.run(["chmod", "-R", "a+rX", str(user_dir)], check=True)
    return conf


def run(shim, conf: Path, image: Path, cwd: Path, *extra: str):
    env = {"HOSTVAR": "fromhost", "LD_RUN_DIRS": "/hostlib"}
    return shim.run(["--conf", conf, *extra, image, "/bin/sh", "-c", SHOW], env=env, cwd=cwd)


def test_profile_edits_apply_after_the_image_environment(shim, site: Path, user_dir: Path) -> None:
    image = busybox_dir(user_dir / "img", Extras(env="export IMGVAR=fromimage\nexport LD_RUN_DIRS=/img/lib\n",
                                                  env_name="91-test.sh"))
    subprocess.run(["chmod", "-R", "a+rX", str(user_dir)], check=True)
    r = run(shim, site, image, user_dir)
    assert r.returncode == 0, r.stderr
    assert "IMGVAR= HOSTVAR= LD_RUN_DIRS=/site/lib:/img/lib PROF_SET=profile " in r.stdout, r.stdout
    # Both prepends, in profile order: b-site's goes in front of a-site's.
    assert "PATH=/b/bin:/site/bin:/usr/local/sbin:" in r.stdout, r.stdout
    # The user's own --env wins over a profile's set and prepend.
    r = run(shim, site, image, user_dir, "-e", "PROF_SET=user", "-e", "LD_RUN_DIRS=/mine")
    assert "LD_RUN_DIRS=/mine PROF_SET=user " in r.stdout, r.stdout


def test_profile_edits_without_env_scripts(shim, site: Path, user_dir: Path) -> None:
    """No /.singularity.d/env: the app is exec'd directly, with the edits applied on the host's values."""
    image = busybox_dir(user_dir / "img")
    subprocess.run(["chmod", "-R", "a+rX", str(user_dir)], check=True)
    r = run(shim, site, image, user_dir)
    assert r.returncode == 0, r.stderr
    assert "IMGVAR= HOSTVAR= LD_RUN_DIRS=/site/lib:/hostlib PROF_SET=profile PATH=/b/bin:/site/bin:" in r.stdout
