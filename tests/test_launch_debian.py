"""A real Debian image (mmdebstrap, cached by recipe) as a SIF built by `shimrun build`, as a
bare squashfs and as a directory, run by an ordinary user."""

from __future__ import annotations

from pathlib import Path

import images
import pytest

from shim.errors import ExitCode


@pytest.fixture(scope="module")
def rootfs() -> Path:
    return images.build_rootfs(images.DEBIAN_BASE)


@pytest.fixture(scope="module")
def debian_images(rootfs) -> dict[str, Path]:
    return {"sif": images.build_sif(images.DEBIAN_BASE), "sqfs": images.build_squashfs(images.DEBIAN_BASE),
            "dir": rootfs}


@pytest.mark.parametrize("kind", ["sif", "sqfs", "dir"])
def test_os_release_is_the_images(shim, debian_images, rootfs, kind):
    r = shim.run([debian_images[kind], "cat", "/etc/os-release"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == (rootfs / "etc" / "os-release").read_text()
    assert "SHIM_TEST_IMAGE=debian-base" in r.stdout
    assert "SHIM_TEST_IMAGE" not in Path("/etc/os-release").read_text()


@pytest.mark.parametrize("kind", ["sif", "dir"])
def test_pwd_and_user(shim, debian_images, user_dir, kind):
    r = shim.run([debian_images[kind], "sh", "-c", "pwd; id -u; echo $HOME"], cwd=user_dir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [str(user_dir), str(shim.user.uid), shim.user.home]


def test_users_own_directory_image_is_not_modified(shim, user_dir):
    """A sandbox the user could write: mount points still go to an underlay, never into it."""
    import shutil
    import subprocess

    image = user_dir / "sandbox"
    (image / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", image / "bin" / "busybox")
    subprocess.run(["chown", "-R", f"{shim.user.uid}:{shim.user.gid}", str(image)], check=True)
    before = sorted(str(p.relative_to(image)) for p in image.rglob("*"))
    r = shim.run(["--bind", f"{user_dir}:/newtop/deeper", image, "/bin/busybox", "ls", "/newtop/deeper"],
                 cwd="/tmp")
    assert r.returncode == 0, r.stderr
    assert "sandbox" in r.stdout.split()
    assert sorted(str(p.relative_to(image)) for p in image.rglob("*")) == before


def test_exit_codes_pass_through(shim, debian_images):
    r = shim.run([debian_images["sif"], "sh", "-c", "echo out; echo err >&2; exit 42"])
    assert (r.returncode, r.stdout, r.stderr) == (42, "out\n", "err\n")


def test_not_executable(shim, debian_images):
    r = shim.run([debian_images["sif"], "/etc/os-release"])
    assert r.returncode == ExitCode.NOT_EXECUTABLE
    assert r.stderr.count("\n") == 1


def test_user_has_a_name_inside(shim, debian_images, rootfs):
    r = shim.run([debian_images["sif"], "sh", "-c", "id -un; id -gn; grep -c . /etc/passwd"])
    assert r.returncode == 0, r.stderr
    name, group, count = r.stdout.split()
    assert name == shim.user.name
    assert group == __import__("grp").getgrgid(shim.user.gid).gr_name
    image_lines = len((rootfs / "etc" / "passwd").read_text().splitlines())
    assert int(count) == image_lines + 1  # the image's entries, plus the user's
