"""shim under Apptainer's names (`apptainer`, `singularity`: scripts/install.sh puts them in
$SHIM_PREFIX/compat/bin) and shimrun's own verbs: versions engines parse, Apptainer's option
meanings, the isolation options (--contain, --containall, --ipc, --pid, --net), and every action
option Apptainer documents either working or refused with one line and exit 64."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import Runner, User, compat_bin_dir
from leftovers import wait_until
from signed_sifs import KEYS, SIFS
from simulated_gpu import cuda_conf, gpu_host, plain_image

from shim import __version__
from shim.compat.options import ACCEPT, ACTION_OPTIONS, MAP, PASS, REFUSE
from shim.errors import ExitCode
from shim.record.format import NO_RECORD_CACHE

STANDARD_DEV = {"fd", "full", "null", "ptmx", "pts", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom",
                "zero"}


@pytest.fixture(scope="session")
def apptainer(user: User) -> Runner:
    return Runner(user, str(compat_bin_dir() / "apptainer"))


@pytest.fixture(scope="session")
def singularity(user: User) -> Runner:
    return Runner(user, str(compat_bin_dir() / "singularity"))


def _ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, r.stderr
    return r.stdout


def _refused(r: subprocess.CompletedProcess, *words: str) -> None:
    """Exit 64 and one line on stderr naming what was refused."""
    assert r.returncode == ExitCode.USAGE, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_version_under_every_name(apptainer: Runner, singularity: Runner, shim: Runner) -> None:
    want = f"apptainer version 1.3.6+shim.{__version__}"
    assert _ok(apptainer.run(["--version"])).strip() == want
    assert _ok(singularity.run(["--version"])).strip() == want
    assert _ok(apptainer.run(["version"])).strip() == f"1.3.6+shim.{__version__}"
    assert _ok(shim.run(["version"])).strip() == __version__


def test_compat_commands_live_apart_from_the_default_path() -> None:
    """Never where they would shadow a real Apptainer: only in their own directory."""
    for d in ("/usr/bin", "/usr/local/bin", "/bin"):
        for name in ("apptainer", "singularity"):
            target = Path(d) / name
            assert not (target.exists() and compat_bin_dir() in target.resolve().parents), target


def test_containall_pid_net(apptainer: Runner, busybox_sif: Path, tmp_path: Path) -> None:
    """The issue's acceptance command: a low pid, an empty /tmp, only lo."""
    marker = Path("/tmp") / f"shim-host-file-{tmp_path.name}"
    marker.write_text("host")
    try:
        out = _ok(apptainer.run(["exec", "--containall", "--pid", "--net", "--network", "none", busybox_sif, "sh",
                                 "-c", "echo $$; ls -A /tmp; echo ---; ip -o link; echo ---; ps -o pid,comm"]))
    finally:
        marker.unlink()
    pid, tmp, links, ps = out.split("\n", 1)[0], *out.split("\n", 1)[1].split("---\n")
    assert int(pid) <= 3, out  # PID 1 is shim's init (2: squashfuse, when the image is mounted)
    assert tmp.strip() == "", out
    assert [ln.split(":")[1].strip() for ln in links.strip().splitlines()] == ["lo"], out
    assert len(ps.strip().splitlines()) <= 6, out  # the namespace's processes only, not the host's


def test_contain_gives_standard_dev_empty_home_private_tmp(apptainer: Runner, busybox_sif: Path, user: User,
                                                            tmp_path: Path) -> None:
    marker = Path("/tmp") / f"shim-host-file-{tmp_path.name}"
    marker.write_text("host")
    try:
        seen = _ok(apptainer.run(["exec", busybox_sif, "ls", "/tmp"]))
        out = _ok(apptainer.run(["exec", "--contain", busybox_sif, "sh", "-c",
                                 "ls /dev; echo ---; pwd; ls -A ~; echo ---; ls -A /tmp /var/tmp; touch /tmp/x ~/y"]))
    finally:
        marker.unlink()
    assert marker.name in seen.split()  # without --contain: the host's /tmp
    dev, home, tmp = out.split("---\n")
    assert set(dev.split()) == STANDARD_DEV
    assert home.split() == [user.home]  # in the (empty) home directory, as Apptainer starts
    assert marker.name not in tmp


def test_ipc_namespace_only_when_asked(apptainer: Runner, busybox_sif: Path) -> None:
    host = os.readlink("/proc/self/ns/ipc")
    assert _ok(apptainer.run(["exec", busybox_sif, "readlink", "/proc/self/ns/ipc"])).strip() == host
    assert _ok(apptainer.run(["exec", "--ipc", busybox_sif, "readlink", "/proc/self/ns/ipc"])).strip() != host


def test_pid_namespace_keeps_exit_status_and_signals(apptainer: Runner, busybox_sif: Path, user: User,
                                                     tmp_path: Path) -> None:
    assert apptainer.run(["exec", "--pid", busybox_sif, "sh", "-c", "exit 7"]).returncode == 7
    assert apptainer.run(["exec", "--pid", busybox_sif, "sh", "-c", "kill -TERM $$"]).returncode == -signal.SIGTERM
    mark = f"shim-pid-{tmp_path.name}"
    proc = apptainer.popen(["exec", "--pid", busybox_sif, "sh", "-c", f"sleep 100 & sleep 101; echo {mark}"])

    def sleepers() -> list[int]:
        found = []
        for p in Path("/proc").iterdir():
            try:
                if p.name.isdigit() and p.stat().st_uid == user.uid and (p / "comm").read_text().strip() == "sleep":
                    found.append(int(p.name))
            except OSError:
                continue
        return found

    assert wait_until(lambda: len(sleepers()) >= 2, timeout=30), proc.stderr
    proc.send_signal(signal.SIGTERM)  # to shimrun's pid, as srun and scancel do
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM
    assert wait_until(lambda: not sleepers(), timeout=10), "the PID namespace's processes outlived it"


def test_writable_tmpfs(apptainer: Runner, busybox_sif: Path) -> None:
    before = hashlib.sha256(busybox_sif.read_bytes()).hexdigest()
    assert apptainer.run(["exec", busybox_sif, "mkdir", "/newdir"]).returncode != 0
    out = _ok(apptainer.run(["exec", "--writable-tmpfs", busybox_sif, "sh", "-c",
                             "mkdir /newdir && echo kept > /newdir/f && cat /newdir/f"]))
    assert out.strip() == "kept"
    assert apptainer.run(["exec", busybox_sif, "ls", "/newdir"]).returncode != 0  # gone with the launch
    assert hashlib.sha256(busybox_sif.read_bytes()).hexdigest() == before


def test_home_mount_env_file(apptainer: Runner, busybox_sif: Path, user_dir: Path, user: User) -> None:
    (user_dir / "home").mkdir()
    (user_dir / "home" / "dotfile").write_text("mine\n")
    (user_dir / "data").mkdir()
    (user_dir / "data" / "in.txt").write_text("data\n")
    (user_dir / "vars").write_text("# comment\nexport ALPHA=one\nBETA='two words'\nGAMMA=file\n")
    for p in (user_dir / "home", user_dir / "home" / "dotfile", user_dir / "data", user_dir / "data" / "in.txt"):
        os.chown(p, user.uid, user.gid)
    mount = f"--mount=type=bind,source={user_dir / 'data'},target=/data,readonly"
    out = _ok(apptainer.run([
        "exec", "--home", f"{user_dir / 'home'}:/home/me", mount, "--env-file", user_dir / "vars", "--env",
        "GAMMA=option", busybox_sif, "sh", "-c",
        'echo "$HOME $(cat ~/dotfile) $(cat /data/in.txt) $ALPHA/$BETA/$GAMMA"; touch /data/x 2>/dev/null || echo ro']))
    assert out.split("\n")[:2] == ["/home/me mine data one/two words/option", "ro"]


def test_dash_e_means_cleanenv_under_apptainer_and_env_under_shimrun(apptainer: Runner, shim: Runner,
                                                                     busybox_sif: Path) -> None:
    host = {"SHIM_HOST_VAR": "from-host"}
    assert "SHIM_HOST_VAR=from-host" in _ok(apptainer.run(["exec", busybox_sif, "env"], env=host))
    assert "SHIM_HOST_VAR" not in _ok(apptainer.run(["exec", "-e", busybox_sif, "env"], env=host))
    assert "SHIM_HOST_VAR=mine" in _ok(shim.run(["-e", "SHIM_HOST_VAR=mine", busybox_sif, "env"], env=host))


def test_apptainer_settings_from_the_environment(apptainer: Runner, busybox_sif: Path, user_dir: Path,
                                                 user: User) -> None:
    os.chown(user_dir, user.uid, user.gid)
    (user_dir / "f").write_text("bound\n")
    out = _ok(apptainer.run(["exec", busybox_sif, "sh", "-c", "cat /bound/f; ls /dev | wc -l"],
                            env={"APPTAINER_BIND": f"{user_dir}:/bound", "SINGULARITY_CONTAIN": "1"}))
    assert out.split() == ["bound", str(len(STANDARD_DEV))]
    out = _ok(apptainer.run(["exec", busybox_sif, "sh", "-c", "echo $FROM_ENV"],
                            env={"SINGULARITYENV_FROM_ENV": "s", "APPTAINERENV_FROM_ENV": "a"}))
    assert out.strip() == "a"


def _value_for(name: str, user_dir: Path) -> list[str]:
    values = {"--bind": f"{user_dir}:/mnt/bound", "-B": f"{user_dir}:/mnt/bound",
              "--mount": f"type=bind,source={user_dir},target=/mnt/mounted", "--home": str(user_dir),
              "-H": str(user_dir), "--pwd": "/", "--env": "A=1", "--env-file": str(user_dir / "env"),
              "--network": "none", "--no-mount": "tmp"}
    return [values.get(name, "x")]


@pytest.mark.parametrize("opt", ACTION_OPTIONS, ids=lambda o: o.names[-1])
def test_every_apptainer_action_option(apptainer: Runner, busybox_sif: Path, world_dir: Path, user: User,
                                       opt) -> None:
    """Every action option of Apptainer 1.3, each spelling: it works as Apptainer documents (the
    launch succeeds) or is refused with one line naming it and exit 64."""
    user_dir = world_dir / f"opt{opt.names[-1]}"
    user_dir.mkdir(exist_ok=True)
    (user_dir / "env").write_text("A=1\n")
    os.chown(user_dir, user.uid, user.gid)
    for name in opt.names:
        argv = ["exec", name, *(_value_for(name, user_dir) if opt.value else []), busybox_sif, "true"]
        r = apptainer.run(argv)
        if opt.action == REFUSE:
            _refused(r, opt.names[-1], "not supported")
        elif name in ("--rocm", "--shell"):  # no ROCm profile yet; --shell belongs to `shell`
            _refused(r, name)
        elif name == "--device":  # "x" is no VENDOR/CLASS=NAME (tests/test_cdi_specs.py: real requests)
            _refused(r, "--device 'x'", "VENDOR/CLASS=NAME")
        elif name == "--nv":  # no GPU profile in this site configuration
            assert r.returncode == ExitCode.CONFIG and "--nv" in r.stderr, r.stderr
        else:
            assert opt.action in (PASS, MAP, ACCEPT)
            assert r.returncode == 0, (argv, r.stderr)


def test_unknown_options_and_global_options(apptainer: Runner, busybox_sif: Path) -> None:
    _refused(apptainer.run(["exec", "--no-such-option", busybox_sif, "true"]), "--no-such-option")
    _refused(apptainer.run(["--no-such-global", "exec", busybox_sif, "true"]), "--no-such-global")
    _refused(apptainer.run(["exec", "--network", "bridge", busybox_sif, "true"]), "--network bridge")
    _refused(apptainer.run(["exec", "--no-mount", "nonsense", busybox_sif, "true"]), "nonsense")
    for flags in (["-q"], ["-s"], ["--silent"], ["-v"], ["--verbose"], ["-d"], ["--nocolor"], ["-q", "--debug"]):
        assert apptainer.run([*flags, "exec", busybox_sif, "true"]).returncode == 0, flags


def test_shimrun_verbs(shim: Runner, busybox_sif: Path) -> None:
    assert _ok(shim.run(["exec", busybox_sif, "echo", "via", "exec"])).strip() == "via exec"
    assert _ok(shim.run(["-q", "exec", busybox_sif, "echo", "quiet"])).strip() == "quiet"
    r = shim.run(["shell", busybox_sif, "-c", "echo shell $0"])
    assert _ok(r).strip() == "shell /bin/sh"
    r = shim.run(["shell", "--shell", "/bin/busybox", busybox_sif, "sh", "-c", "echo via $0"])
    assert _ok(r).strip() == "via sh"


def test_inspect_in_apptainer_shapes(apptainer: Runner, busybox_sif: Path, user_dir: Path, user: User) -> None:
    doc = json.loads(_ok(apptainer.run(["inspect", "--json", busybox_sif])))
    labels = doc["data"]["attributes"]["labels"]
    assert labels["org.label-schema.usage.singularity.deffile.from"] == "busybox:1.33.1"
    doc = json.loads(_ok(apptainer.run(["inspect", "--json", "--runscript", "--environment", busybox_sif])))
    assert doc["data"]["attributes"]["runscript"].startswith("#!/bin/sh")
    assert "=== /.singularity.d/env/90-environment.sh ===" in doc["data"]["attributes"]["environment"]
    assert "From: busybox:1.33.1" in _ok(apptainer.run(["inspect", "--deffile", busybox_sif]))
    # a sandbox (directory) too
    meta = user_dir / "sandbox" / ".singularity.d"
    meta.mkdir(parents=True)
    (meta / "labels.json").write_text(json.dumps({"org.example": "sandbox"}))
    (meta / "runscript").write_text("#!/bin/sh\necho hi\n")
    doc = json.loads(_ok(apptainer.run(["inspect", "--json", "--labels", "--runscript", user_dir / "sandbox"])))
    assert doc["data"]["attributes"] == {"labels": {"org.example": "sandbox"}, "runscript": "#!/bin/sh\necho hi\n"}
    assert _ok(apptainer.run(["inspect", user_dir / "sandbox"])) == "org.example: sandbox\n"


def test_verify_and_sign_with_apptainers_options(apptainer: Runner, user_dir: Path) -> None:
    keys, sylabs = KEYS, SIFS
    r = apptainer.run(["verify", "--key", keys / "ed25519-public.pem", "-j", sylabs / "one-group-signed-dsse.sif"])
    assert r.returncode == 0 and json.loads(r.stdout)["ok"] is True, r.stderr
    r = apptainer.run(["verify", "--key", keys / "ed25519-public.pem", sylabs / "one-group.sif"])
    assert r.returncode == ExitCode.UNTRUSTED and "not verified" in r.stdout + r.stderr
    r = apptainer.run(["verify", "--url", "https://keys.example", sylabs / "one-group-signed-pgp.sif"])
    assert r.returncode == ExitCode.USAGE and "--url" in r.stderr


def test_pull_names_and_settings_like_apptainer(apptainer: Runner, registry, tools_layout, user_dir: Path,
                                                user: User) -> None:
    registry.push(tools_layout, "sci/tools:1")
    os.chown(user_dir, user.uid, user.gid)
    env = {"APPTAINER_NO_HTTPS": "1", "APPTAINER_CACHEDIR": str(user_dir / "cache")}
    src = f"docker://{registry.host}/sci/tools:1"
    _ok(apptainer.run(["pull", src], cwd=user_dir, env=env))
    assert (user_dir / "tools_1.sif").is_file()
    assert list((user_dir / "cache").rglob("blobs/sha256/*")), "APPTAINER_CACHEDIR holds the blob cache"
    r = apptainer.run(["pull", src], cwd=user_dir, env=env)
    assert r.returncode != 0 and "--force" in r.stderr
    _ok(apptainer.run(["pull", "-F", src], cwd=user_dir, env=env))
    (user_dir / "out").mkdir()
    os.chown(user_dir / "out", user.uid, user.gid)
    _ok(apptainer.run(["pull", "--dir", user_dir / "out", "--name", "named.simg", src], cwd=user_dir, env=env))
    assert (user_dir / "out" / "named.simg").is_file()  # any name: shim reads images by content
    out = _ok(apptainer.run(["run", user_dir / "out" / "named.simg", "sh", "-c", "echo $GREETING"]))
    assert out.strip() == "hello from the image's Env"
    _refused(apptainer.run(["exec", src, "true"]), "pull it first")


def test_bad_input_under_the_compat_name(apptainer: Runner, user_dir: Path) -> None:
    """One line and the exit code of its class; the compat layer's own lines carry its name."""
    r = apptainer.run(["exec", user_dir / "missing.sif", "true"])
    assert r.returncode == ExitCode.IMAGE and r.stderr.count("\n") == 1, r.stderr
    r = apptainer.run(["frobnicate"])
    _refused(r, "frobnicate")
    assert r.stderr.startswith("apptainer: error:")


def test_no_leftovers_after_contained_launches(apptainer: Runner, busybox_sif: Path, tmp_path: Path) -> None:
    """The fresh mounts and the PID namespace's init end with the launch."""
    mark = f"contained-{tmp_path.name}"
    for _ in range(3):
        _ok(apptainer.run(["exec", "--containall", "--net", "--writable-tmpfs", busybox_sif, "true"],
                          env={"SHIM_TEST_MARK": mark}))
    assert wait_until(lambda: not _marked(mark), timeout=10), _marked(mark)


def _marked(mark: str) -> list[str]:
    """Live processes with this marker in their environment."""
    needle = f"SHIM_TEST_MARK={mark}".encode()
    found = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and needle in (p / "environ").read_bytes().split(b"\0"):
                found.append(f"{p.name} {(p / 'comm').read_text().strip()}")
        except OSError:
            continue
    return found


def test_nv_requests_the_sites_gpu_profile(shim: Runner, world_dir: Path) -> None:
    """--nv plans exactly what --profile cuda-driver plans (a simulated GPU host: fake /proc,
    /dev and gcc-built driver stubs, tests/hostroot.py)."""
    base = world_dir / "nv"
    host, image, conf = gpu_host(base / "host"), plain_image(base / "image"), cuda_conf(base / "conf")
    (conf / "shim.toml").write_text("")
    subprocess.run(["chmod", "-R", "a+rX", str(base)], check=True)
    env = {"SHIMRUN_HOST_ROOT": str(host.root), NO_RECORD_CACHE: "1"}

    def planned(*opts: str) -> dict:
        r = shim.run(["--dry-run", "--json", "--conf", conf, *opts, image, "/opt/app/app"], env=env)
        assert r.returncode == 0, r.stderr
        return {d["library"]: (d["decision"], d["container_path"]) for d in json.loads(r.stdout)["decisions"]}

    with_nv = planned("--nv")
    assert with_nv == planned("--profile", "cuda-driver")
    assert with_nv["libcuda.so.1"][0] == "inject"


ENGINE_LINES = {
    "cwltool": ["--quiet", "run", "--contain", "--ipc", "--cleanenv", "--no-eval", "--userns", "--home", "{d}:/cwlhome",
                "--mount=type=bind,source={d},target=/var/lib/cwl/in,readonly", "--pwd", "/cwlhome", "--net",
                "--network", "none"],
    "cwltool --pid": ["--quiet", "run", "--contain", "--ipc", "--cleanenv", "--no-eval", "--pid", "--home",
                      "{d}:/cwlhome", "--pwd", "/cwlhome"],
    "snakemake": ["--quiet", "--silent", "exec", "--home", "{d}", "--bind", "{d}", "--pwd", "{d}"],
    "nextflow": ["exec", "--no-home", "--pid", "-B", "{d}"],
    "miniwdl": ["exec", "--pwd", "/mnt/task/work", "--containall", "--no-mount", "hostfs", "--fakeroot", "--bind",
                "{d}:/mnt/task/work:ro"],
    "reana": ["exec", "--home", "{d}:/srv", "--bind", "{d}:/srv"],
}


@pytest.mark.parametrize("engine", ENGINE_LINES)
def test_the_option_lines_engines_pass(apptainer: Runner, busybox_sif: Path, world_dir: Path, user: User,
                                       engine: str) -> None:
    """The options each engine passes, as the issue lists them: the task runs where it asked."""
    d = world_dir / f"engine-{engine.replace(' ', '_')}"
    d.mkdir(exist_ok=True)
    (d / "task-input").write_text("input\n")
    os.chown(d, user.uid, user.gid)
    argv = [a.format(d=d) for a in ENGINE_LINES[engine]]
    pwd_at = argv.index("--pwd") + 1 if "--pwd" in argv else None
    where = argv[pwd_at].split(":")[0] if pwd_at else None
    r = apptainer.run([*argv, busybox_sif, "sh", "-c", "pwd; ls"], cwd=d)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    if where:
        assert lines[0] == where
    if engine in ("snakemake", "reana", "cwltool"):
        assert "task-input" in lines  # the home or working directory is the host's directory
