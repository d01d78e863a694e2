"""The user's story on the real Apptainer-built busybox image: run, exit codes, signals, cwd,
environment, binds, and nothing left behind, as an ordinary user."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from leftovers import (
    host_fuse_mounts,
    mount_ns_members,
    stage_dir_entries,
    user_processes,
    wait_until,
)

from shim.errors import ExitCode


def test_echo_hello(shim, busybox_sif):
    r = shim.run([busybox_sif, "/bin/busybox", "echo", "hello"])
    assert (r.returncode, r.stdout, r.stderr) == (0, "hello\n", "")


def test_exit_status_is_the_apps(shim, busybox_sif):
    r = shim.run([busybox_sif, "/bin/busybox", "sh", "-c", "exit 7"])
    assert r.returncode == 7


def test_death_by_signal_is_128_plus_n_in_the_shell(shim, busybox_sif):
    r = shim.sh(f"{shim.shimrun} {busybox_sif} /bin/busybox sh -c 'kill -USR1 $$'; echo status=$?")
    assert r.stdout.strip() == f"status={128 + signal.SIGUSR1}"


def test_pwd_inside_is_callers_cwd(shim, busybox_sif, user_dir):
    work = user_dir / "a dir" / "sub"
    work.mkdir(parents=True)
    os.chown(work, shim.user.uid, shim.user.gid)
    r = shim.run([busybox_sif, "/bin/busybox", "pwd"], cwd=work)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(work)


def test_home_tmp_and_cwd_are_the_hosts(shim, busybox_sif, user_dir):
    (user_dir / "data.txt").write_text("from the host\n")
    marker = f"/tmp/shimtest-{os.getpid()}"
    r = shim.run([busybox_sif, "/bin/busybox", "sh", "-c",
                  f"cat data.txt; echo x > {marker}; test -d \"$HOME\" && echo home-ok"], cwd=user_dir)
    try:
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["from the host", "home-ok"]
        assert Path(marker).read_text() == "x\n"  # the container's /tmp is the host's
    finally:
        os.unlink(marker)


def test_runs_as_the_user_and_image_is_read_only(shim, busybox_sif):
    r = shim.run([busybox_sif, "/bin/busybox", "sh", "-c", "id -u; touch /etc/x 2>&1; echo rc=$?"])
    lines = r.stdout.splitlines()
    assert lines[0] == str(shim.user.uid)
    assert "Read-only file system" in lines[1] and lines[2] == "rc=1"


def test_fakeroot_maps_to_uid_0(shim, busybox_sif):
    r = shim.run(["--fakeroot", busybox_sif, "/bin/busybox", "id", "-u"])
    assert (r.returncode, r.stdout) == (0, "0\n")


def test_stdin_is_passed_through(shim, busybox_sif):
    r = subprocess.run([shim.shimrun, busybox_sif, "/bin/busybox", "tr", "a-z", "A-Z"], input="shim\n", check=False,
                       capture_output=True, text=True, env=shim.env(), cwd="/tmp", timeout=30, **shim._ids())
    assert r.stdout == "SHIM\n"


def test_image_environment_scripts_are_honoured(shim, busybox_sif):
    # 10-docker2singularity.sh in the image sets PATH; 99-base.sh appends /.singularity.d/libs.
    r = shim.run([busybox_sif, "busybox", "sh", "-c", 'echo "$PATH"; echo "$LD_LIBRARY_PATH"'])
    assert r.returncode == 0, r.stderr
    path, ldpath = r.stdout.splitlines()
    assert path.split(":")[:2] == ["/usr/local/sbin", "/usr/local/bin"]
    assert ldpath.endswith("/.singularity.d/libs")


def test_env_overrides_and_cleanenv(shim, busybox_sif):
    host = {"HOSTVAR": "from host", "SHIMRUNENV_VIA_PREFIX": "prefixed", "APPTAINERENV_VIA_APPT": "appt"}
    show = ["/bin/busybox", "sh", "-c", 'echo "$HOSTVAR|$VIA_PREFIX|$VIA_APPT|$OPT"']
    r = shim.run(["--env", "OPT=a b", busybox_sif, *show], env=host)
    assert r.stdout == "from host|prefixed|appt|a b\n"
    r = shim.run(["--cleanenv", busybox_sif, *show], env=host)
    assert r.stdout == "|prefixed|appt|\n"


def test_bind_option_and_read_only(shim, busybox_sif, user_dir):
    src = user_dir / "in"
    src.mkdir()
    (src / "f").write_text("bound\n")
    os.chown(src, shim.user.uid, shim.user.gid)
    r = shim.run(["--bind", f"{src}:/data/in:ro", busybox_sif, "/bin/busybox", "sh", "-c",
                  "cat /data/in/f; touch /data/in/g 2>/dev/null || echo ro"])
    assert (r.returncode, r.stdout) == (0, "bound\nro\n"), r.stderr
    r = shim.run([busybox_sif, "/bin/busybox", "cat", "/mnt/x/f"], env={"SHIMRUN_BIND": f"{src}:/mnt/x"})
    assert r.stdout == "bound\n"


def test_command_not_found_in_image(shim, busybox_sif):
    r = shim.run([busybox_sif, "no-such-program"])
    assert r.returncode == ExitCode.NOT_FOUND
    assert r.stderr.count("\n") == 1 and "no-such-program" in r.stderr and "not found" in r.stderr


def test_sigterm_reaches_the_app(shim, busybox_sif):
    p = shim.popen([busybox_sif, "/bin/busybox", "sh", "-c",
                    "trap 'echo got TERM; exit 3' TERM; echo ready; while :; do sleep 0.05; done"])
    assert p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=10)
    assert (p.returncode, out) == (3, "got TERM\n")


@pytest.mark.parametrize("delay", [0.0, 0.005, 0.02, 0.05, None])
def test_sigkill_leaves_nothing_behind(shim, busybox_sif, delay):
    """SIGKILL of shimrun at any moment (during set-up, or while the app runs)."""
    before_stage = stage_dir_entries()
    before_fuse = host_fuse_mounts()
    p = shim.popen([busybox_sif, "/bin/busybox", "sh", "-c", "echo running; exec sleep 30"])
    if delay is None:
        assert p.stdout.readline() == "running\n"
    else:
        time.sleep(delay)
    try:
        ns = os.readlink(f"/proc/{p.pid}/ns/mnt")
    except OSError:
        ns = None
    p.kill()
    p.communicate(timeout=10)
    assert wait_until(lambda: "squashfuse_ll" not in user_processes(shim.user.uid).values()), \
        user_processes(shim.user.uid)
    if ns and ns != os.readlink("/proc/self/ns/mnt"):
        assert wait_until(lambda: mount_ns_members(ns) == [])
    assert host_fuse_mounts() == before_fuse
    assert stage_dir_entries() == before_stage == ["README"]


def test_bind_a_file_to_a_new_path(shim, busybox_sif, user_dir):
    src = user_dir / "f.txt"
    src.write_text("file bind\n")
    src.chmod(0o644)
    r = shim.run(["--bind", f"{src}:/new/dir/f.txt", "--bind", f"{src}:/tmp/sub/g.txt", busybox_sif,
                  "/bin/busybox", "cat", "/new/dir/f.txt", "/tmp/sub/g.txt"])
    assert (r.returncode, r.stdout) == (0, "file bind\nfile bind\n"), r.stderr
    assert not os.path.exists("/tmp/sub")  # the mount point was made in an underlay, not on the host
