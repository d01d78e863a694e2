"""Hostile inputs and odd environments, as batch systems and careless users produce them: closed
standard descriptors, a FIFO as the image, broken configuration, a deleted working directory,
odd but legal image layouts, a corrupt squashfs, a relative HOME, stale extraction leftovers.
Every case ends in the app running or in one line with its documented exit code, never exit 70."""

from __future__ import annotations

import os
import re
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import images
import pytest
from dirimage import BUSYBOX, Extras, busybox_dir
from error_line import one_error_line
from leftovers import user_processes, wait_until

from shim.errors import ExitCode

pytestmark = pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static is not installed")


# ------------------------------------------------------------------ 1. closed standard descriptors

@pytest.mark.parametrize("closed", [0, 1, 2])
def test_closed_standard_descriptors(shim, busybox_sif, user_dir: Path, closed: int) -> None:
    """The image is never opened into 0, 1 or 2 (squashfuse would read its stdin as the image);
    the app finds /dev/null where the caller left a descriptor closed, the others untouched."""

    def seen(close: str) -> dict[str, str]:
        out = user_dir / "fds.txt"
        # Expansions come before redirections: readlink sees the shell's own 0, 1, 2.
        report = f"exec 3>{out}; for n in 0 1 2; do echo $n=$(readlink /proc/$$/fd/$n) >&3; done"
        r = shim.sh(f"echo x | {shim.shimrun} {busybox_sif} /bin/busybox sh -c '{report}' {close}", cwd=user_dir)
        assert r.returncode == 0, r.stderr
        # Pipes are new ones in every run: compare what kind of file each is.
        return {n: re.sub(r"^pipe:\[\d+\]$", "pipe", v) for n, v in (line.split("=", 1)
                                                                   for line in out.read_text().split())}

    before, after = seen(""), seen(f"{closed}>&-")
    assert before[str(closed)] != "/dev/null" and after[str(closed)] == "/dev/null"
    assert {n: v for n, v in after.items() if n != str(closed)} == {n: v for n, v in before.items()
                                                                     if n != str(closed)}


# ------------------------------------------------------------------ 3. not a regular file

@pytest.mark.parametrize("subcommand", [[], ["inspect"], ["check"]])
@pytest.mark.parametrize("kind", ["fifo", "socket", "chardev"])
def test_a_non_file_image_is_refused_at_once(shim, user_dir: Path, subcommand: list[str], kind: str) -> None:
    if kind == "fifo":
        path = user_dir / "image.fifo"
        os.mkfifo(path)
        word = "a FIFO"
    elif kind == "socket":
        import socket

        path = user_dir / "image.sock"
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
        word = "a socket"
    else:
        path, word = Path("/dev/null"), "a character device"
    os.chmod(path, 0o666) if kind != "chardev" else None
    args = [*subcommand, path] + ([] if subcommand == ["inspect"] else ["/bin/true"])
    start = time.monotonic()
    r = shim.run(args, timeout=20)
    assert time.monotonic() - start < 10
    one_error_line(r, ExitCode.IMAGE, f"{path} is {word}, not an image")


# ------------------------------------------------------------------ 4. no internal errors

@pytest.mark.parametrize(("text", "words"), [
    ('launch = "x"\n', "launch must be a table, not a str"),
    ("a = " + "[" * 1000 + "]" * 1000 + "\n", "nested too deeply"),
])
def test_broken_site_configuration_is_one_line(shim, busybox_sif, user_dir: Path, text: str, words: str) -> None:
    conf = user_dir / "conf"
    conf.mkdir()
    (conf / "shim.toml").write_text(text)
    subprocess.run(["chmod", "-R", "a+rX", str(conf)], check=True)
    one_error_line(shim.run(["--conf", conf, busybox_sif, "/bin/busybox", "true"]), ExitCode.CONFIG,
                   str(conf / "shim.toml"), words)


def test_deeply_nested_profiles_are_one_line(shim, busybox_sif, user_dir: Path) -> None:
    conf = user_dir / "conf"
    (conf / "profiles").mkdir(parents=True)
    (conf / "shim.toml").write_text("")
    deep = conf / "profiles" / "deep.toml"
    deep.write_text("a = " + "[" * 1000 + "]" * 1000 + "\n")
    subprocess.run(["chmod", "-R", "a+rX", str(conf)], check=True)
    one_error_line(shim.run(["--conf", conf, busybox_sif, "/bin/busybox", "true"]), ExitCode.CONFIG,
                   "nested too deeply")
    r = shim.run(["profiles", "lint", deep])
    assert r.returncode == ExitCode.CONFIG, r.stderr
    assert "nested too deeply" in r.stdout + r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("cache", ["file", "unwritable"])
def test_extraction_without_a_usable_cache_is_one_line(shim, busybox_sif, user_dir: Path, cache: str) -> None:
    path = user_dir / "cache"
    if cache == "file":
        path.write_text("not a directory")
    else:
        path.mkdir(mode=0o500)
    r = shim.run([busybox_sif, "/bin/busybox", "true"], env={"SHIMRUN_NO_FUSE": "1", "SHIMRUN_CACHE": str(path)})
    line = one_error_line(r, ExitCode.HOST, str(path))
    assert "SHIMRUN_CACHE" in line


def test_a_conf_dir_the_user_cannot_enter_is_one_line(shim, busybox_sif, user_dir: Path) -> None:
    conf = Path(str(user_dir) + "-closed")
    conf.mkdir()
    (conf / "shim.toml").write_text("")
    conf.chmod(0o700)  # root's: the test user cannot enter it
    try:
        one_error_line(shim.run([busybox_sif, "/bin/busybox", "true"], env={"SHIMRUN_CONF": str(conf)}),
                       ExitCode.CONFIG, f"cannot enter configuration directory {conf}")
    finally:
        shutil.rmtree(conf)


def test_a_deleted_working_directory_is_one_line(shim, busybox_sif, user_dir: Path) -> None:
    gone = user_dir / "gone"
    r = shim.sh(f"mkdir {gone} && cd {gone} && rmdir {gone} && exec {shim.shimrun} {busybox_sif} /bin/busybox true",
                cwd=user_dir)
    one_error_line(r, ExitCode.USAGE, "the current directory cannot be read")


# ------------------------------------------------------------------ 5. odd but legal layouts

def test_home_linked_to_the_root_is_resolved_inside_it(shim, user_dir: Path) -> None:
    image = busybox_dir(user_dir / "img", Extras(links={"home": "/"}))
    r = shim.run([image, "/bin/busybox", "sh", "-c", "cd && pwd && ls -d /$(basename $HOME)"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [shim.user.home, f"/{os.path.basename(shim.user.home)}"]


def test_binding_onto_the_root_is_refused(shim, busybox_sif) -> None:
    one_error_line(shim.run(["--bind", "/tmp:/", busybox_sif, "/bin/busybox", "true"]), ExitCode.USAGE,
             "cover the container's root")


def test_a_corrupt_squashfs_is_an_image_error(shim, user_dir: Path) -> None:
    """A data block that does not decompress: reading the image's /etc/passwd (for the user's
    entry) fails with EIO inside squashfuse; that is a corrupt image (65), not a launch failure."""
    root = busybox_dir(user_dir / "root", Extras(passwd="".join(f"user{i}:x:{i}:{i}::/home/u:/bin/sh\n"
                                                             for i in range(3000))))
    good = user_dir / "good.sqfs"
    subprocess.run(["mksquashfs", root, good, "-comp", "gzip", "-no-fragments", "-noappend", "-all-root", "-quiet",
                    "-no-progress"], check=True)
    data = bytearray(good.read_bytes())
    inode_table = struct.unpack_from("<Q", data, 64)[0]
    for i in range(inode_table - 600, inode_table - 100):  # the last data block: /etc/passwd's
        data[i] ^= 0x5A
    bad = user_dir / "bad.sqfs"
    bad.write_bytes(bytes(data))
    subprocess.run(["chmod", "a+r", str(good), str(bad)], check=True)
    assert shim.run(["--serve", "mount", good, "/bin/busybox", "true"]).returncode == 0
    one_error_line(shim.run(["--serve", "mount", bad, "/bin/busybox", "true"]), ExitCode.IMAGE, "the image is corrupt",
                   "/etc/passwd", "Input/output error")
    # unpacked instead: unsquashfs cannot read the block either, and nothing of the copy is left
    cache = user_dir / "cache"
    one_error_line(shim.run(["--serve", "unpack", bad, "/bin/busybox", "true"], env={"SHIMRUN_CACHE": str(cache)}),
                   ExitCode.IMAGE, f"unpacking {bad} with unsquashfs failed")
    assert not [p for p in (cache / "rootfs").iterdir() if p.is_dir()]


def test_a_relative_home_does_not_put_the_cache_in_the_working_directory(shim, user_dir: Path, busybox_sif) -> None:
    work = user_dir / "work"
    work.mkdir()
    env = {"HOME": "relative/home", "SHIMRUN_CACHE": "", "XDG_CACHE_HOME": "rel"}
    r = shim.run([busybox_sif, "/bin/busybox", "true"], env=env, cwd=work)
    assert r.returncode == 0, r.stderr
    assert list(work.iterdir()) == []
    assert (Path(shim.user.home) / ".cache" / "shim").is_dir()


# ------------------------------------------------------------------ 6. stale partial extractions

def test_a_killed_extraction_leaves_nothing_the_next_launch_keeps(shim, busybox_sif, user_dir: Path) -> None:
    cache = user_dir / "cache"
    env = {"SHIMRUN_NO_FUSE": "1", "SHIMRUN_CACHE": str(cache)}
    other = images.build_sif(images.DEBIAN_BASE)  # big enough to kill its extraction midway
    assert shim.run([busybox_sif, "/bin/busybox", "true"], env=env).returncode == 0  # extracted once
    rootfs = cache / "rootfs"
    # Kill an extraction of the other image while unsquashfs runs.
    p = shim.popen([other, "/bin/true"], env=env)
    assert wait_until(lambda: any(".partial." in n for n in os.listdir(rootfs)), timeout=20)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert wait_until(lambda: "unsquashfs" not in user_processes(shim.user.uid).values(), timeout=10)
    assert any(".partial." in n for n in os.listdir(rootfs))
    # A warm launch of the first image looks there: the dead run's partial copy goes.
    assert shim.run([busybox_sif, "/bin/busybox", "true"], env=env).returncode == 0
    assert not any(".partial." in n for n in os.listdir(rootfs))
