"""Launch records (docs/launch-record.md): the second launch of a command line runs from its
record without Python, and every input the record lists makes a fresh plan when it changes, one
by one: a SIF rebuilt in place, a directory image's file, the site configuration, a profile
edited, added or removed, a host library, the host's ld.so.cache, the NVIDIA driver (simulated
node), a relevant environment variable, another command. A damaged record (garbage, truncated,
another build's, another user's, a symlink) is never run: replanned, without a crash."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import hostroot
import pytest
from dirimage import BUSYBOX, busybox_dir
from library_images import foo_profile
from siteconf import write_conf

from shim.errors import ExitCode
from shim.record.format import NO_RECORD_CACHE

WARM = "launch record from the cache"
COLD = "no launch record to run"

pytestmark = [pytest.mark.skipif(not BUSYBOX.exists(), reason="busybox-static is not installed"),
              pytest.mark.skipif(bool(os.environ.get(NO_RECORD_CACHE)),
                                 reason="SHIMRUN_NO_RECORD_CACHE: no launch runs from a record")]


class Launcher:
    """One command line, launched again and again with --debug, said to be warm or cold."""

    def __init__(self, shim, cache: Path, cwd: Path) -> None:
        self.shim, self.cache, self.cwd = shim, cache, cwd

    def run(self, args, env=None, ok=(0,)):
        r = self.shim.run(["--debug", *map(str, args)], cwd=self.cwd,
                          env={"SHIMRUN_CACHE": str(self.cache), **(env or {})})
        assert r.returncode in ok, r.stderr
        return r

    def state(self, args, env=None, ok=(0,)) -> str:
        r = self.run(args, env, ok)
        assert (WARM in r.stderr) != (COLD in r.stderr), r.stderr
        return "warm" if WARM in r.stderr else "cold"

    def why(self, args, env=None) -> str:
        r = self.run(args, env)
        line = next((ln for ln in r.stderr.splitlines() if COLD in ln), "")
        return line

    def records(self) -> list[Path]:
        return sorted((self.cache / "records").glob("*.rec"))


@pytest.fixture
def launcher(shim, user_dir: Path) -> Launcher:
    return Launcher(shim, user_dir / "cache", user_dir)


def _world_readable(path: Path) -> None:
    subprocess.run(["chmod", "-R", "a+rX", str(path)], check=True)


def test_the_second_launch_runs_from_the_record_and_says_the_same(launcher, busybox_sif):
    args = [busybox_sif, "/bin/busybox", "sh", "-c", "echo out; echo err >&2; exit 3"]
    cold = launcher.run(args, ok=(3,))
    warm = launcher.run(args, ok=(3,))
    assert COLD in cold.stderr and WARM in warm.stderr
    assert cold.stdout == warm.stdout == "out\n"
    # the same lines, but the unpack's, which the launch that unpacks the image says once
    assert [ln for ln in cold.stderr.splitlines() if not ln.startswith(("shimrun: debug", "shimrun[core]"))
            and "later launches reuse it" not in ln] == \
           [ln for ln in warm.stderr.splitlines() if not ln.startswith(("shimrun: debug", "shimrun[core]"))]
    assert len(launcher.records()) == 1
    # Other arguments of the same command: the same record; another command: another one.
    assert launcher.state([busybox_sif, "/bin/busybox", "true", "more", "args"]) == "warm"
    assert launcher.state([busybox_sif, "/bin/busybox", "false", "x"], ok=(1,)) == "warm"
    assert launcher.state([busybox_sif, "/bin/true"], ok=(0, ExitCode.NOT_FOUND)) == "cold"


def test_a_warm_launch_starts_no_python(shim, launcher, busybox_sif, user_dir):
    if not shutil.which("strace"):
        pytest.skip("strace is not installed")
    trace = user_dir / "execve.txt"
    line = f"strace -f -e trace=execve -o {trace} {shim.shimrun} --serve mount {busybox_sif} /bin/busybox true"
    for _ in range(2):  # planned, then from the record
        r = shim.sh(line, cwd=user_dir, env={"SHIMRUN_CACHE": str(launcher.cache)})
        assert r.returncode == 0, r.stderr
    execs = [os.path.basename(ln.split('"')[1]) for ln in trace.read_text().splitlines()
             if "execve(" in ln and "= 0" in ln]
    # the front-end, squashfuse, and the app (through the image's /bin/sh: it has environment scripts)
    assert execs == ["shimrun", "squashfuse_ll", "sh", "busybox"], execs


def test_a_sif_rebuilt_in_place(launcher, busybox_sif, user_dir):
    image = user_dir / "img.sif"
    shutil.copy(busybox_sif, image)
    _world_readable(user_dir)
    args = [image, "/bin/busybox", "true"]
    assert [launcher.state(args), launcher.state(args)] == ["cold", "warm"]
    shutil.copy(busybox_sif, image)  # the same bytes written again: another mtime
    assert "changed" in launcher.why(args) and launcher.state(args) == "warm"


def test_a_directory_image_whose_file_changed(launcher, user_dir):
    image = busybox_dir(user_dir / "img")
    args = [image, "/bin/busybox", "true"]
    assert [launcher.state(args), launcher.state(args)] == ["cold", "warm"]
    shutil.copy(BUSYBOX, image / "bin/busybox.new")
    os.replace(image / "bin/busybox.new", image / "bin/busybox")  # the app, replaced
    _world_readable(image)
    assert f"{image}/bin" in launcher.why(args) and launcher.state(args) == "warm"


def test_site_configuration_and_profiles(launcher, busybox_sif, user_dir):
    conf = write_conf(user_dir / "conf", {})
    args = ["--conf", conf, busybox_sif, "/bin/busybox", "true"]
    assert [launcher.state(args), launcher.state(args)] == ["cold", "warm"]
    (conf / "shim.toml").write_text("[launch]\nbinds = []\n# edited\n")
    assert "shim.toml changed" in launcher.why(args) and launcher.state(args) == "warm"
    profile = conf / "profiles" / "extra.toml"
    profile.write_text('[profile]\nkind = "other"\napplies = "always"\n[provides]\n[env]\nset = { A = "1" }\n')
    _world_readable(conf)
    assert "profiles/*.toml" in launcher.why(args) and launcher.state(args) == "warm"
    profile.write_text('[profile]\nkind = "other"\napplies = "always"\n[provides]\n[env]\nset = { A = "2" }\n')
    r = launcher.run([*args[:-2], "/bin/busybox", "sh", "-c", "echo A=$A"])
    assert "A=2" in r.stdout and COLD in r.stderr, r.stderr
    profile.unlink()
    r = launcher.run([*args[:-2], "/bin/busybox", "sh", "-c", "echo A=$A"])
    assert r.stdout == "A=\n" and COLD in r.stderr, r.stderr


def test_a_host_library_replaced(launcher, foo_image, site_libs, user_dir):
    lib = user_dir / "site" / "libsitefoo.so.1"
    lib.parent.mkdir()
    shutil.copy(site_libs["good"], lib)
    shutil.copy(site_libs["good"].parent / "libsitedep.so.1", lib.parent / "libsitedep.so.1")
    conf = write_conf(user_dir / "conf", {"site-foo": foo_profile(lib)})
    _world_readable(user_dir)
    args = ["--conf", conf, foo_image, "/opt/app/foo-app"]
    assert [launcher.state(args), launcher.state(args)] == ["cold", "warm"]
    assert launcher.run(args).stdout.startswith("foo: host\n")
    shutil.copy(site_libs["good"], lib.with_suffix(".new"))
    os.replace(lib.with_suffix(".new"), lib)
    _world_readable(user_dir)
    assert str(lib) in launcher.why(args) and launcher.state(args) == "warm"


def test_the_host_ld_so_cache_and_the_nvidia_driver_of_a_simulated_node(launcher, cuda_image, user_dir):
    root = user_dir / "node"
    hostroot.gpu_present(root, driver="535.104.05", cuda=12020)
    _world_readable(root)
    env = {"SHIMRUN_HOST_ROOT": str(root)}
    args = [cuda_image, "/bin/sh", "-c", "true"]
    assert [launcher.state(args, env), launcher.state(args, env)] == ["cold", "warm"]
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/ld.so.cache").write_bytes(b"glibc-ld.so.cache1.1")
    _world_readable(root)
    assert "ld.so.cache" in launcher.why(args, env) and launcher.state(args, env) == "warm"
    # The driver downgraded: the next launch plans again, and says so.
    shutil.rmtree(root)
    hostroot.gpu_present(root, driver="470.199.02", cuda=11040)
    _world_readable(root)
    r = launcher.run(args, env, ok=(0, ExitCode.REFUSED))
    assert COLD in r.stderr and "CUDA-DRIVER-TOO-OLD" in r.stderr, r.stderr


def test_relevant_environment_variables(launcher, busybox_sif, user_dir):
    args = [busybox_sif, "/bin/busybox", "true"]
    assert [launcher.state(args), launcher.state(args)] == ["cold", "warm"]
    assert launcher.state(args, {"UNRELATED": "x"}) == "warm"  # passes to the app, plans nothing
    # A job variable the hardware check reads by value: each value its own record (a step that
    # alternates them does not plan every time)...
    assert launcher.state(args, {"CUDA_VISIBLE_DEVICES": "0"}) == "cold"
    assert launcher.state(args, {"CUDA_VISIBLE_DEVICES": "0"}) == "warm"
    assert launcher.state(args) == "warm"
    # ... one it reads for being set: another job step is the same record, no job step is not.
    assert launcher.state(args, {"SLURM_JOB_ID": "1"}) == "cold"
    assert launcher.state(args, {"SLURM_JOB_ID": "2"}) == "warm"
    assert "SLURM_JOB_ID changed" in launcher.why(args)
    bound = user_dir / "data"
    bound.mkdir()
    _world_readable(user_dir)
    assert launcher.state(args, {"SHIMRUN_BIND": str(bound)}) == "cold"  # a setting: another key
    assert launcher.state(args, {"SHIMRUN_BIND": str(bound)}) == "warm"
    bound.rmdir()  # the bind's source is gone: planned again, which says so
    r = launcher.shim.run(args, cwd=user_dir, env={"SHIMRUN_CACHE": str(launcher.cache), "SHIMRUN_BIND": str(bound)})
    assert r.returncode == ExitCode.USAGE, r.stderr
    assert f"bind source {bound}" in r.stderr and "does not exist" in r.stderr, r.stderr


def test_the_environment_is_each_launchs_own(launcher, busybox_sif):
    args = [busybox_sif, "/bin/busybox", "sh", "-c", "echo $MINE"]
    assert launcher.run(args, {"MINE": "one"}).stdout == "one\n"
    warm = launcher.run(args, {"MINE": "two"})
    assert WARM in warm.stderr and warm.stdout == "two\n"


def _key_record(launcher, args) -> Path:
    launcher.state(args)
    (record,) = launcher.records()
    assert launcher.state(args) == "warm"
    return record


@pytest.mark.parametrize("damage", ["garbage", "truncated", "another-build", "bit-flip"])
def test_a_damaged_record_is_replanned(launcher, busybox_sif, damage):
    args = [busybox_sif, "/bin/busybox", "sh", "-c", "echo ran"]
    record = _key_record(launcher, args)
    data = record.read_bytes()
    if damage == "garbage":
        data = os.urandom(len(data))
    elif damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "another-build":
        data = data.replace(b"0.1.0+", b"0.0.9+", 1)
    else:
        data = data[:40] + bytes([data[40] ^ 0xFF]) + data[41:]
    record.write_bytes(data)
    r = launcher.run(args)
    assert COLD in r.stderr and r.stdout == "ran\n", r.stderr
    assert launcher.state(args) == "warm"  # the fresh record replaced it


def test_a_record_of_another_user_or_a_symlink_is_not_trusted(launcher, busybox_sif, other_user, user_dir):
    args = [busybox_sif, "/bin/busybox", "sh", "-c", "echo ran"]
    record = _key_record(launcher, args)
    elsewhere = user_dir / "planted.rec"
    shutil.copy(record, elsewhere)
    record.unlink()
    record.symlink_to(elsewhere)
    assert "is a symlink" in launcher.why(args)
    if os.getuid() == 0:
        record.unlink()
        shutil.copy(elsewhere, record)
        os.chown(record, other_user.uid, other_user.gid)
        assert "belongs to uid" in launcher.why(args)
        # ... and the cache directory opened to others: nothing in it is used
        (launcher.cache / "records").chmod(0o777)
        assert "writable by group or others" in launcher.why(args)
