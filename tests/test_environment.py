"""The container environment: pure checks of `direct`, and runs of the action script with real
shells (dash as /bin/sh, busybox ash, bash in POSIX mode) over an env dir modelled on Apptainer's."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from shim.container.environment import (
    DEFAULT_PATH,
    HOSTVARS,
    EnvOptions,
    LaunchEnv,
    compose,
)
from shim.errors import ExitCode, UsageError

HOME = "/home/alice"
# Everything sh could misread: spaces, both quotes, $, backquote, backslash, newlines, glob, ;
TRICKY = "a  b 'q' \"d\" $HOME ${X} `id` $(id) \\n \\ *; \nline2\n\n"


def opts(*pairs: str, **kw) -> EnvOptions:
    return EnvOptions(env_pairs=pairs, home=HOME, **kw)


# ---------------------------------------------------------------- direct (pure)


@pytest.mark.parametrize("host, pairs, expected", [
    ({"FOO": "host"}, (), "host"),
    ({"FOO": "host", "SINGULARITYENV_FOO": "sing"}, (), "sing"),
    ({"SINGULARITYENV_FOO": "sing", "APPTAINERENV_FOO": "app"}, (), "app"),
    ({"APPTAINERENV_FOO": "app", "SHIMRUNENV_FOO": "shim", "SINGULARITYENV_FOO": "sing"}, (), "shim"),
    ({"SHIMRUNENV_FOO": "shim", "FOO": "host"}, ("FOO=one", "FOO=two"), "two"),
    ({}, ("FOO=a=b",), "a=b"),
    ({}, ("FOO=",), ""),
])
def test_override_precedence(host, pairs, expected):
    assert compose(host, opts(*pairs)).direct["FOO"] == expected


def test_defaults_and_runtime_vars():
    env = compose({}, opts(image_path="/data/imgs/tool.sif", extra={"SHIMRUN_X": "1"})).direct
    names = {f"{runtime}_{part}": value for runtime in ("SHIMRUN", "APPTAINER", "SINGULARITY")
             for part, value in (("CONTAINER", "/data/imgs/tool.sif"), ("NAME", "tool.sif"))}
    assert env == {"PATH": DEFAULT_PATH, "HOME": HOME, **names, "SHIMRUN_X": "1"}


def test_blocked_host_vars():
    blocked = {"HOME": "/host/home", "PATH": "/host/bin", "LD_LIBRARY_PATH": "/host/lib", "LD_PRELOAD": "x.so",
               "LD_AUDIT": "a.so", "PS1": "$ ", "PROMPT_COMMAND": "f", "IFS": ":", "SHIMRUN_BIND": "/a",
               "APPTAINER_BIND": "/b", "SINGULARITY_BIND": "/c", "APPTAINERENV_A": "1", "SINGULARITYENV_B": "2",
               "SHIMRUNENV_C": "3"}
    env = compose({**blocked, "KEEP": "yes", "LD_BIND_NOW": "1"}, opts()).direct
    assert env["HOME"] == HOME and env["PATH"] == DEFAULT_PATH
    assert env["KEEP"] == "yes" and env["LD_BIND_NOW"] == "1"
    assert not set(env) & (set(blocked) - {"HOME", "PATH"})
    assert (env["A"], env["B"], env["C"]) == ("1", "2", "3")


def test_explicit_override_of_a_blocked_var_is_allowed():
    env = compose({"LD_LIBRARY_PATH": "/host"}, opts("LD_LIBRARY_PATH=/opt/lib")).direct
    assert env["LD_LIBRARY_PATH"] == "/opt/lib"


def test_cleanenv_keeps_only_term_proxies_and_mpi():
    host = {"TERM": "xterm", "http_proxy": "h", "HTTPS_PROXY": "s", "no_proxy": "n", "ALL_PROXY": "a",
            "ftp_proxy": "f", "SLURM_JOB_ID": "42", "PMI_RANK": "3", "PMIX_NAMESPACE": "ns", "LANG": "de_DE.UTF-8",
            "USER": "alice", "OMP_NUM_THREADS": "8"}
    env = compose(host, opts(cleanenv=True)).direct
    kept = {k: v for k, v in host.items() if k not in ("LANG", "USER", "OMP_NUM_THREADS")}
    assert env == {**kept, "PATH": DEFAULT_PATH, "HOME": HOME, "LANG": "C"}


def test_cleanenv_lang_is_overridable():
    assert compose({"LANG": "x"}, opts("LANG=en_US.UTF-8", cleanenv=True)).direct["LANG"] == "en_US.UTF-8"
    assert compose({"APPTAINERENV_LANG": "fr"}, opts(cleanenv=True)).direct["LANG"] == "fr"
    assert "LANG" not in compose({}, opts()).direct


def test_slurm_vars_pass_without_cleanenv_too():
    env = compose({"SLURM_PROCID": "0", "PMI_FD": "5"}, opts()).direct
    assert (env["SLURM_PROCID"], env["PMI_FD"]) == ("0", "5")


@pytest.mark.parametrize("bad", ["FOO", "=x", "", "1A=x", "A-B=x", "A B=x", "Ä=x"])
def test_bad_env_pair(bad):
    with pytest.raises(UsageError) as err:
        compose({}, opts(bad))
    assert err.value.code == ExitCode.USAGE
    assert repr(bad) in str(err.value)


def test_malformed_host_override_names_are_ignored():
    env = compose({"APPTAINERENV_": "x", "SINGULARITYENV_A-B": "y"}, opts()).direct
    assert env == {"PATH": DEFAULT_PATH, "HOME": HOME}


@pytest.mark.parametrize("host, pairs, source", [
    ({}, ("HOME=/tmp",), "--env"),
    ({"APPTAINERENV_HOME": "/tmp"}, (), "APPTAINERENV_HOME"),
    ({"SINGULARITYENV_HOME": "/tmp"}, (), "SINGULARITYENV_HOME"),
    ({"SHIMRUNENV_HOME": "/tmp"}, (), "SHIMRUNENV_HOME"),
])
def test_home_cannot_be_overridden(host, pairs, source):
    with pytest.raises(UsageError) as err:
        compose(host, opts(*pairs))
    message = str(err.value)
    assert message.startswith(source) and "HOME cannot be overridden" in message and "\n" not in message


@pytest.mark.parametrize("pairs, path", [
    (("PREPEND_PATH=/pre",), f"/pre:{DEFAULT_PATH}"),
    (("APPEND_PATH=/app",), f"{DEFAULT_PATH}:/app"),
    (("PATH=/only", "PREPEND_PATH=/pre", "APPEND_PATH=/app"), "/pre:/only:/app"),
    (("PATH=", "PREPEND_PATH="), DEFAULT_PATH),
])
def test_path_edits(pairs, path):
    env = compose({}, opts(*pairs)).direct
    assert env["PATH"] == path
    assert "PREPEND_PATH" not in env and "APPEND_PATH" not in env


def test_base_carries_host_names_but_no_path():
    env = compose({"FOO": "1", "SLURM_NTASKS": "2", "LD_PRELOAD": "x", "PATH": "/h", "PPID": "1", "A-B": "3"},
                  opts(image_path="/i.sif"))
    assert "PATH" not in env.base and "LD_PRELOAD" not in env.base
    assert env.base["HOME"] == HOME and env.base["SHIMRUN_NAME"] == "i.sif" and env.base["A-B"] == "3"
    assert env.base[HOSTVARS].split() == ["FOO", "SLURM_NTASKS"]


# ---------------------------------------------------------------- action script, run by real shells


def _shells() -> list:
    found = [pytest.param(["/bin/sh"], id="bin-sh")]
    for argv, name in ((["busybox", "sh"], "busybox"), (["bash", "--posix"], "bash-posix")):
        exe = shutil.which(argv[0])
        mark = pytest.mark.skipif(exe is None, reason=f"{argv[0]} is not installed")
        found.append(pytest.param([exe or argv[0], *argv[1:]], id=name, marks=mark))
    return found


@pytest.fixture(params=_shells())
def shell(request) -> list[str]:
    return request.param


def write_env_dir(root: Path, **scripts: str) -> Path:
    d = root / "env"
    d.mkdir()
    for name, text in scripts.items():
        (d / name).write_text(text)
    return d


# Modelled on what Apptainer's build writes: Docker ENV (10-), %environment (90-), 99-base.
APPTAINER_LIKE = {
    "01-base.sh": "#!/bin/sh\n# \n",
    "10-docker2singularity.sh": '#!/bin/sh\nexport PATH="/opt/conda/bin:/usr/bin"\nexport FOO="${FOO:-"image"}"\n',
    "90-environment.sh": ('#!/bin/sh\nexport IMGVAR=fromimage\nexport OVR=image\nexport EMPTIED=\n'
                          'export HOME=/image/home\nset -- clobbered\n'),
    "99-base.sh": '#!/bin/sh\nPS1="Apptainer> "\nexport PS1\n',
    "99-runtimevars.sh": "export RUNTIMEVARS_SOURCED=1\n",
}


def run_action(shell: list[str], env: LaunchEnv, *argv: str) -> subprocess.CompletedProcess:
    # env=base with nothing else is what `env -i` + base gives.
    return subprocess.run([*shell, "-c", env.action_script, "shimrun", *argv], env=env.base,
                          capture_output=True, timeout=30, check=False)


def container_env(shell: list[str], env: LaunchEnv) -> dict[str, str]:
    proc = run_action(shell, env, "env", "-0")
    assert proc.returncode == 0, proc.stderr
    items = proc.stdout.decode("utf-8", "surrogateescape").split("\0")[:-1]
    return dict(item.partition("=")[::2] for item in items)


def test_layering(shell, tmp_path):
    env_dir = write_env_dir(tmp_path, **APPTAINER_LIKE)
    host = {"FOO": "host", "IMGVAR": "host", "HOSTONLY": "kept", "EMPTIED": "host", "SLURM_JOB_ID": "7",
            "LD_PRELOAD": "/host/x.so", "APPTAINERENV_OVR": "override"}
    got = container_env(shell, compose(host, opts(image_path="/x/t.sif"), env_dir=str(env_dir)))
    assert got["FOO"] == "image"  # image beats host, even via ${FOO:-...}
    assert got["IMGVAR"] == "fromimage"
    assert got["OVR"] == "override"  # override beats image
    assert got["HOSTONLY"] == "kept" and got["SLURM_JOB_ID"] == "7"
    assert got["EMPTIED"] == ""  # set (to empty) by the image: the host value does not come back
    assert got["HOME"] == HOME and got["PS1"] == "Apptainer> "
    assert got["PATH"] == "/opt/conda/bin:/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/bin"
    assert got["SHIMRUN_CONTAINER"] == "/x/t.sif"
    for gone in ("LD_PRELOAD", "RUNTIMEVARS_SOURCED", HOSTVARS, "APPTAINERENV_OVR"):
        assert gone not in got
    assert not [k for k in got if k.startswith("_shimrun")]


def test_values_survive_byte_for_byte(shell, tmp_path):
    env_dir = write_env_dir(tmp_path, **APPTAINER_LIKE)
    host = {"TRICKY_HOST": TRICKY, "QUOTE": "'", "SHIMRUNENV_TRICKY_SRC": TRICKY, "NONASCII": "é\udcff"}
    got = container_env(shell, compose(host, opts(f"TRICKY_OVR={TRICKY}", "TRAIL=x'"), env_dir=str(env_dir)))
    assert got["TRICKY_HOST"] == TRICKY
    assert got["TRICKY_OVR"] == TRICKY  # literal: no $ or ` evaluation
    assert got["TRICKY_SRC"] == TRICKY
    assert got["QUOTE"] == "'" and got["TRAIL"] == "x'"
    assert got["NONASCII"] == "é\udcff"


def test_args_reach_the_command_untouched(shell, tmp_path):
    env_dir = write_env_dir(tmp_path, **APPTAINER_LIKE)  # 90-environment.sh runs `set -- clobbered`
    proc = run_action(shell, compose({}, opts(), env_dir=str(env_dir)), "printf", "<%s>", "a b", "", TRICKY, "*")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode() == f"<a b><><{TRICKY}><*>"


def test_path_overrides_apply_after_the_image(shell, tmp_path):
    env_dir = write_env_dir(tmp_path, **APPTAINER_LIKE)
    got = container_env(shell, compose({"APPTAINERENV_PREPEND_PATH": "/pre dir"}, opts("APPEND_PATH=/app"),
                                       env_dir=str(env_dir)))
    assert got["PATH"] == ("/pre dir:/opt/conda/bin:/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/bin"
                           ":/app")
    got = container_env(shell, compose({}, opts("PATH=/usr/bin:/bin", "PREPEND_PATH=/pre"), env_dir=str(env_dir)))
    assert got["PATH"] == "/pre:/usr/bin:/bin"


def test_default_path_before_90_environment(shell, tmp_path):
    env_dir = write_env_dir(tmp_path, **{"01-base.sh": "export EARLY=${PATH-unset}\n",
                                         "90-environment.sh": 'export SEEN="$PATH"\nexport PATH="/opt/x:$PATH"\n'})
    got = container_env(shell, compose({}, opts(), env_dir=str(env_dir)))
    assert got["EARLY"] == "unset"  # as under Apptainer: the shell's own PATH does not show
    assert got["SEEN"] == DEFAULT_PATH
    assert got["PATH"] == f"/opt/x:{DEFAULT_PATH}"


def test_empty_env_dir(shell, tmp_path):
    env_dir = write_env_dir(tmp_path)
    got = container_env(shell, compose({"FOO": "1"}, opts(cleanenv=True), env_dir=str(env_dir)))
    assert got["PATH"] == DEFAULT_PATH and got["LANG"] == "C" and "FOO" not in got


def test_command_not_found(shell, tmp_path):
    env_dir = write_env_dir(tmp_path, **APPTAINER_LIKE)
    proc = run_action(shell, compose({}, opts(), env_dir=str(env_dir)), "no-such-tool", "arg")
    assert proc.returncode == ExitCode.NOT_FOUND
    # the executor's words, with the PATH the image's scripts made
    assert re.fullmatch(r"shimrun: error: no-such-tool: executable file not found in the image \(PATH=/opt/conda/bin:"
                        r"[^)]*\)\n", proc.stderr.decode()), proc.stderr
    assert proc.stdout == b""
