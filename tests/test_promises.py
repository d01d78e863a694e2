"""README promises tried as a user: --quiet prints errors only, --strict makes every warning
fatal, --pwd must name a directory the image has, a warning of a shared container is printed
once per node, unusable bind destinations in an image get a hint, and `shimrun profiles`
without profiles says where a site's go."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from dirimage import BUSYBOX, Extras, busybox_dir

pytestmark = pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static is not installed")


def test_quiet_hides_warnings_and_notices(shim, busybox_sif, user_dir: Path) -> None:
    # /usr/share is not bound in (a system directory) and the image has none: a warning, and /.
    r = shim.run([busybox_sif, "/bin/busybox", "pwd"], cwd="/usr/share")
    assert r.returncode == 0 and r.stdout == "/\n" and "warning: cannot enter /usr/share" in r.stderr
    r = shim.run(["--quiet", busybox_sif, "/bin/busybox", "pwd"], cwd="/usr/share")
    assert (r.returncode, r.stdout, r.stderr) == (0, "/\n", "")
    # The FUSE fallback's notice is a notice, not an error.
    env = {"SHIMRUN_NO_FUSE": "1", "SHIMRUN_CACHE": str(user_dir / "cache")}
    r = shim.run([busybox_sif, "/bin/busybox", "true"], env=env)
    assert r.returncode == 0 and "FUSE unusable" in r.stderr
    r = shim.run(["--quiet", busybox_sif, "/bin/busybox", "true"], env=env)
    assert (r.returncode, r.stderr) == (0, "")


def test_pwd_must_exist_and_strict_makes_the_cwd_warning_fatal(shim, busybox_sif) -> None:
    r = shim.run(["--pwd", "/nonexist", busybox_sif, "/bin/busybox", "pwd"])
    assert r.returncode == 71 and r.stdout == ""
    assert "working directory /nonexist: No such file or directory in the container (give --pwd" in r.stderr
    r = shim.run(["--pwd", "relative/dir", busybox_sif, "/bin/busybox", "pwd"])
    assert r.returncode == 64 and "--pwd relative/dir: not an absolute path" in r.stderr
    r = shim.run(["--strict", busybox_sif, "/bin/busybox", "pwd"], cwd="/usr/share")
    assert r.returncode == 71 and r.stdout == "" and "working directory /usr/share" in r.stderr
    r = shim.run(["--pwd", "/etc", busybox_sif, "/bin/busybox", "pwd"])
    assert (r.returncode, r.stdout) == (0, "/etc\n")


def test_the_refusal_hint_names_strict_only_when_it_was_given(shim, user_dir: Path) -> None:
    """A warning-only image (an undeclared CUDA image on a node without a GPU) runs; with --strict
    it is refused, and the hint says it was --strict; an error diagnostic says nothing of it."""
    image = busybox_dir(user_dir / "cuda", Extras(env="export CUDA_VERSION=12.2.0\n"))
    r = shim.run([image, "/bin/busybox", "true"])
    assert r.returncode == 0 and "warning: GPU-ABSENT" in r.stderr, r.stderr
    r = shim.run(["--strict", image, "/bin/busybox", "true"])
    assert r.returncode == 67 and "--strict makes every refusal and warning fatal" in r.stderr
    (image / ".shim").mkdir()
    (image / ".shim/requires").write_text("gpu.cuda>=12.2\n")
    subprocess.run(["chmod", "-R", "a+rX", str(image)], check=True)
    r = shim.run([image, "/bin/busybox", "true"])
    assert r.returncode == 67 and "error: GPU-ABSENT" in r.stderr and "strict" not in r.stderr, r.stderr


def test_a_shared_containers_warning_is_printed_once_per_node(shim, user_dir: Path) -> None:
    """Four ranks of one parent (as mpiexec starts them) in one container, --strict and a warning:
    the warning once, then every rank refused (exit 67)."""
    image = busybox_dir(user_dir / "cuda", Extras(env="export CUDA_VERSION=12.2.0\n"))
    start = f"SHIMRUN_SHARE=1 {shim.shimrun} --strict {image} /bin/busybox true"
    line = "; ".join(f"{start} & p{i}=$!" for i in range(4)) + "; " + "; ".join(
        f"wait $p{i}; echo rc=$?" for i in range(4))  # one parent shell, as mpiexec is
    r = shim.sh(line, cwd=user_dir)
    assert r.stdout.split().count("rc=67") == 4, (r.stdout, r.stderr)
    assert r.stderr.count("GPU-ABSENT") == 1, r.stderr


@pytest.mark.parametrize(("links", "bind", "words"), [
    ({"home": "nowhere"}, None, "home"),             # a dangling symlink where $HOME is bound
    ({"tmp": "tmp"}, None, "/tmp"),                  # a symlink loop where /tmp is bound
])
def test_unusable_bind_destinations_in_the_image_have_a_hint(shim, user_dir: Path, links, bind, words) -> None:
    image = busybox_dir(user_dir / "odd", Extras(links=links))
    r = shim.run([image, "/bin/busybox", "true"])
    assert r.returncode == 71, r.stderr
    (line,) = r.stderr.splitlines()
    assert words in line and "bind it elsewhere with --bind SRC:DST, or leave it out (--no-home" in line, line


def test_profiles_without_any_say_where_a_sites_go(shim) -> None:
    from policy import system_conf_dir

    r = shim.run(["profiles"])
    assert r.returncode == 0
    assert "copy an example from " in r.stdout and f" to {system_conf_dir()}/profiles/" in r.stdout
    assert "site-packages/shim/conf/profiles/," not in r.stdout
