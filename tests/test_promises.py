"""README promises tried as a user: --quiet prints errors only, --strict makes every warning
fatal, --pwd must name a directory the image has, a warning of a shared container is printed
once per node, unusable bind destinations in an image get a hint, and `shimrun profiles`
without profiles says where a site's go. Then issue 22's: `shell --shell`, --writable-tmpfs over
an Apptainer-built SIF, no Python left with --pid, --no-home's HOME, one wording for commands
that cannot start, --env-file's quotes and the filtered host variables as the README says."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import NO_RECORD_CACHE, compat_bin_dir
from dirimage import BUSYBOX, Extras, busybox_dir

from shim.errors import ExitCode

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
    assert r.returncode == ExitCode.LAUNCH and r.stdout == ""
    assert "working directory /nonexist: No such file or directory in the container (give --pwd" in r.stderr
    r = shim.run(["--pwd", "relative/dir", busybox_sif, "/bin/busybox", "pwd"])
    assert r.returncode == ExitCode.USAGE and "--pwd relative/dir: not an absolute path" in r.stderr
    r = shim.run(["--strict", busybox_sif, "/bin/busybox", "pwd"], cwd="/usr/share")
    assert r.returncode == ExitCode.LAUNCH and r.stdout == "" and "working directory /usr/share" in r.stderr
    r = shim.run(["--pwd", "/etc", busybox_sif, "/bin/busybox", "pwd"])
    assert (r.returncode, r.stdout) == (0, "/etc\n")


def test_the_refusal_hint_names_strict_only_when_it_was_given(shim, user_dir: Path) -> None:
    """A warning-only image (an undeclared CUDA image on a node without a GPU) runs; with --strict
    it is refused, and the hint says it was --strict; an error diagnostic says nothing of it."""
    image = busybox_dir(user_dir / "cuda", Extras(env="export CUDA_VERSION=12.2.0\n"))
    r = shim.run([image, "/bin/busybox", "true"])
    assert r.returncode == 0 and "warning: GPU-ABSENT" in r.stderr, r.stderr
    r = shim.run(["--strict", image, "/bin/busybox", "true"])
    assert r.returncode == ExitCode.REFUSED and "--strict makes every refusal and warning fatal" in r.stderr
    (image / ".shim").mkdir()
    (image / ".shim/requires").write_text("gpu.cuda>=12.2\n")
    subprocess.run(["chmod", "-R", "a+rX", str(image)], check=True)
    r = shim.run([image, "/bin/busybox", "true"])
    assert r.returncode == ExitCode.REFUSED and "error: GPU-ABSENT" in r.stderr and "strict" not in r.stderr, r.stderr


def test_a_shared_containers_warning_is_printed_once_per_node(shim, user_dir: Path) -> None:
    """Four ranks of one parent (as mpiexec starts them) in one container, --strict and a warning:
    the warning once, then every rank refused (exit 67)."""
    image = busybox_dir(user_dir / "cuda", Extras(env="export CUDA_VERSION=12.2.0\n"))
    start = f"SHIMRUN_SHARE=1 {shim.shimrun} --strict {image} /bin/busybox true"
    line = "; ".join(f"{start} & p{i}=$!" for i in range(4)) + "; " + "; ".join(
        f"wait $p{i}; echo rc=$?" for i in range(4))  # one parent shell, as mpiexec is
    r = shim.sh(line, cwd=user_dir)
    assert r.stdout.split().count(f"rc={ExitCode.REFUSED:d}") == 4, (r.stdout, r.stderr)
    assert r.stderr.count("GPU-ABSENT") == 1, r.stderr


@pytest.mark.parametrize(("links", "bind", "words"), [
    ({"home": "nowhere"}, None, "home"),             # a dangling symlink where $HOME is bound
    ({"tmp": "tmp"}, None, "/tmp"),                  # a symlink loop where /tmp is bound
])
def test_unusable_bind_destinations_in_the_image_have_a_hint(shim, user_dir: Path, links, bind, words) -> None:
    image = busybox_dir(user_dir / "odd", Extras(links=links))
    r = shim.run([image, "/bin/busybox", "true"])
    assert r.returncode == ExitCode.LAUNCH, r.stderr
    (line,) = r.stderr.splitlines()
    assert words in line and "bind it elsewhere with --bind SRC:DST, or leave it out (--no-home" in line, line


def test_profiles_without_any_say_where_a_sites_go(shim) -> None:
    from policy import system_conf_dir

    r = shim.run(["profiles"])
    assert r.returncode == 0
    assert "copy an example from " in r.stdout and f" to {system_conf_dir()}/profiles/" in r.stdout
    assert "site-packages/shim/conf/profiles/," not in r.stdout


# ---- issue 22 ---------------------------------------------------------------------------------

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
PLANNED = {NO_RECORD_CACHE: "1"}


def apptainer_line(shim, args: list[str], **kw) -> subprocess.CompletedProcess:
    """The compat `apptainer` command, as the user, with `args`."""
    line = " ".join(f"'{a}'" for a in map(str, args))
    return shim.sh(f"{compat_bin_dir()}/apptainer {line}", **kw)


@pytest.mark.parametrize("env", [{}, PLANNED], ids=["as-it-comes", "planned"])
def test_shell_starts_the_shell_named_by_shell(shim, busybox_sif, user_dir: Path, env) -> None:
    """`shell --shell PATH IMAGE ARGS`: PATH runs with ARGS (twice: the second launch of a command
    line may run from its record), and options before --shell stay the launch's."""
    for _ in range(2):
        r = shim.run(["shell", "--shell", "/bin/echo", busybox_sif, "hello", "there"], cwd=user_dir, env=env)
        assert (r.returncode, r.stdout, r.stderr) == (0, "hello there\n", ""), r.stderr
        r = shim.run(["shell", "--shell", "/bin/ash", busybox_sif, "-c", 'echo "$0"'], cwd=user_dir, env=env)
        assert (r.returncode, r.stdout, r.stderr) == (0, "/bin/ash\n", ""), r.stderr
    r = shim.run(["shell", "-e", "X=1", "--shell=/bin/sh", "--cleanenv", busybox_sif, "-c", 'echo "$0 $X"'],
                 cwd=user_dir, env=env)
    assert (r.returncode, r.stdout) == (0, "/bin/sh 1\n"), r.stderr
    r = apptainer_line(shim, ["shell", "--shell", "/bin/ash", busybox_sif, "-c", 'echo "via $0"'], cwd=user_dir,
                       env=env)
    assert (r.returncode, r.stdout) == (0, "via /bin/ash\n"), r.stderr


def test_writable_tmpfs_with_fakeroot_over_an_apptainer_built_sif(shim, busybox_sif) -> None:
    """The golden busybox SIF is served by squashfuse, whose files list trusted.* attributes this
    user cannot read: copying them up must not fail the write."""
    script = "touch /etc/x && echo more >> /etc/passwd && mkdir /usr/new && tail -1 /etc/passwd && id -u"
    r = shim.run(["--fakeroot", "--writable-tmpfs", busybox_sif, "sh", "-c", script])
    assert (r.returncode, r.stdout) == (0, "more\n0\n"), r.stderr
    r = shim.run(["--fakeroot", busybox_sif, "sh", "-c", "test -e /etc/x || echo gone"])
    assert r.stdout == "gone\n"


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry))
    return out


def _names(pid: int) -> list[str]:
    """The command names of `pid` and everything below it."""
    names = [Path(f"/proc/{pid}/comm").read_text().strip()]
    for child in _children(pid):
        names += _names(child)
    return names


@pytest.mark.parametrize("option", ["--pid", "--containall"])
def test_a_planned_launch_with_a_pid_namespace_leaves_no_python(shim, busybox_sif, user_dir: Path, option) -> None:
    """Planned (no record), the launch's processes while the app runs: the process the caller
    started, the namespace's init (PID 1 inside) and the app; none of them Python."""
    p = shim.popen([option, busybox_sif, "sh", "-c", "cat /proc/1/comm; exec sleep 30"], cwd=user_dir, env=PLANNED)
    try:
        assert p.stdout.readline() == "shimrun\n"  # PID 1 inside
        deadline = time.monotonic() + 10
        while "sleep" not in (names := _names(p.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)  # the app's shell is about to exec sleep
        assert names[0] == "shimrun" and "sleep" in names, names
        assert not [n for n in names if n.startswith("python")], names
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    assert p.returncode == -signal.SIGTERM


def test_no_home_keeps_home_set_without_binding_it(shim, busybox_sif, user) -> None:
    marker = Path(user.home) / ".shim-no-home-marker"
    marker.write_text("x")
    try:
        r = shim.run(["--no-home", busybox_sif, "sh", "-c", f'echo "$HOME"; test -e {marker} || echo unbound'])
        assert (r.returncode, r.stdout) == (0, f"{user.home}\nunbound\n"), r.stderr
        r = shim.run([busybox_sif, "sh", "-c", f"test -e {marker} && echo bound"])
        assert r.stdout == "bound\n"
    finally:
        marker.unlink()


@pytest.mark.parametrize("env_scripts", [True, False], ids=["image-shell", "direct"])
def test_commands_that_cannot_start_read_the_same_whatever_the_image(shim, busybox_sif, user_dir: Path,
                                                                      env_scripts: bool) -> None:
    """126 and 127 in one wording: with the image's environment scripts (its shell starts the app)
    or without (shim execs it), never a line of an internal script."""
    image = busybox_sif if env_scripts else busybox_dir(user_dir / "img", Extras(passwd="root:x:0:0::/:/bin/sh\n"))
    for command, code, line in (
            ("/etc/passwd", ExitCode.NOT_EXECUTABLE,
             "shimrun: error: /etc/passwd: found in the image but cannot be executed: Permission denied"),
            ("nosuchcmd", ExitCode.NOT_FOUND,
             r"shimrun: error: nosuchcmd: executable file not found in the image \(PATH=[^)]*/bin\)"),
            ("/no/such", ExitCode.NOT_FOUND,
             r"shimrun: error: /no/such: executable file not found in the image \(PATH=[^)]*/bin\)")):
        r = shim.run([image, command])
        assert r.returncode == code and re.fullmatch(line + "\n", r.stderr), (command, r.stderr)


def _readme_table(after: str) -> list[list[str]]:
    """The rows (cells without their backquotes) of the first table after the text `after`."""
    text = README.split(after, 1)[1]
    rows = re.findall(r"^\| `(.*)` \| `(.*)` \|$", text.split("\n\n|", 1)[1].split("\n\n", 1)[0], re.M)
    return [list(row) for row in rows]


def test_env_file_lines_give_what_the_readme_says(shim, busybox_sif, user_dir: Path) -> None:
    rows = _readme_table("`--env-file FILE` sets its")
    assert len(rows) >= 4
    env_file = user_dir / "vars.env"
    env_file.write_text("# a comment\n\n" + "\n".join(line for line, _ in rows) + "\n")
    env_file.chmod(0o644)
    r = shim.run(["--env-file", env_file, busybox_sif, "env"])
    assert r.returncode == 0, r.stderr
    seen = dict(line.split("=", 1) for line in r.stdout.splitlines() if "=" in line)
    for _, want in rows:
        name, value = want.split("=", 1)
        assert seen.get(name) == value, (want, seen.get(name))


def test_host_variables_are_filtered_by_the_prefixes_the_readme_lists(shim, busybox_sif) -> None:
    item = README.split("4. **Host variables**, passed through except:", 1)[1].split(";", 1)[0]
    prefixes = re.findall(r"`([A-Z]+_)\*`", item)
    assert sorted(prefixes) == sorted(["SHIMRUN_", "SHIMRUNENV_", "APPTAINER_", "APPTAINERENV_", "SINGULARITY_",
                                       "SINGULARITYENV_"]), item
    near = re.findall(r"such as\s+`([A-Z_]+)`, passes", item)
    assert near == ["APPTAINERX_FOO"], item
    env = {f"{p}T22": "host" for p in prefixes if not p.endswith("ENV_")} | {"APPTAINERX_FOO": "host"}
    r = shim.run([busybox_sif, "env"], env=env)
    seen = {line.split("=", 1)[0] for line in r.stdout.splitlines()}
    assert "APPTAINERX_FOO" in seen and not {f"{p}T22" for p in prefixes} & seen, r.stdout
