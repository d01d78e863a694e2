"""Apptainer's command-line options, as data: what each means for shim under the `apptainer` and
`singularity` names (shim/compat/apptainer.py reads this table; nothing here imports the rest of
shim). Every action option Apptainer 1.3 documents is listed: passed on (shimrun has the same
option), mapped (another spelling), accepted (shim already behaves so) or refused with why."""

from __future__ import annotations

from dataclasses import dataclass

PASS, MAP, ACCEPT, REFUSE = "pass", "map", "accept", "refuse"


@dataclass(frozen=True)
class CompatOption:
    names: tuple[str, ...]
    value: bool                 # takes a value
    action: str                 # PASS | MAP | ACCEPT | REFUSE
    to: tuple[str, ...] = ()    # MAP: the shimrun options it becomes; PASS: its shimrun name (default: names[-1])
    why: str = ""               # ACCEPT / REFUSE: said to the user (REFUSE) or in --help
    env: str = ""               # APPTAINER_<env> / SINGULARITY_<env> sets it too ("" none)


def _p(*names: str, value: bool = False, env: str = "") -> CompatOption:
    return CompatOption(names, value, PASS, env=env)


def _refuse(*names: str, value: bool = False, why: str) -> CompatOption:
    return CompatOption(names, value, REFUSE, why=why)


def _accept(*names: str, value: bool = False, why: str) -> CompatOption:
    return CompatOption(names, value, ACCEPT, why=why)


UNPRIVILEGED = "shim runs unprivileged in a user namespace: no capabilities or setuid to change"
CGROUPS = "shim sets no cgroup limits: ask the batch system (e.g. sbatch --mem, --cpus-per-task)"

# exec, run, shell (and the launch part of instance commands Apptainer has; shim has none).
ACTION_OPTIONS: tuple[CompatOption, ...] = (
    _p("-B", "--bind", value=True),
    _p("--mount", value=True),
    _p("-H", "--home", value=True, env="HOME"),
    _p("--no-home", env="NO_HOME"),
    _p("--pwd", value=True, env="PWD"),
    CompatOption(("-e", "--cleanenv"), False, MAP, ("--cleanenv",), env="CLEANENV"),
    _p("--env", value=True),
    _p("--env-file", value=True, env="ENV_FILE"),
    _p("-c", "--contain", env="CONTAIN"),
    _p("-C", "--containall", env="CONTAINALL"),
    _p("-i", "--ipc", env="IPC"),
    _p("-p", "--pid", env="PID"),
    _p("-n", "--net", env="NET"),
    _p("--network", value=True, env="NETWORK"),
    _p("-u", "--userns", env="USERNS"),
    _p("--no-eval", env="NO_EVAL"),
    _p("--nv", env="NV"),
    _p("--rocm", env="ROCM"),
    _p("--device", value=True),  # Apptainer 1.4's CDI request, VENDOR/CLASS=NAME (repeatable)
    _p("-f", "--fakeroot", env="FAKEROOT"),
    _p("--no-mount", value=True, env="NO_MOUNT"),
    _p("--writable-tmpfs", env="WRITABLE_TMPFS"),
    _p("--shell", value=True),  # `shell` only (exec and run refuse it, as Apptainer's do)
    CompatOption(("--compat",), False, MAP, ("--containall", "--writable-tmpfs"),
                 why="as Apptainer: --containall --no-init --no-umask --no-eval --writable-tmpfs"),
    _accept("--no-init", why="shim starts no init unless --pid asks for a PID namespace"),
    _accept("--no-umask", why="shim keeps the caller's umask"),
    _accept("--no-privs", why=UNPRIVILEGED),
    _accept("--keep-privs", why=UNPRIVILEGED),
    _accept("--no-nv", why="shim adds the GPU driver only with --nv or a site profile"),
    _accept("--disable-cache", why="an image already on disk is run from where it is"),
    _accept("--no-https", "--nohttps", why="used only when pulling; exec runs a local image"),
    _accept("--unsquash", why="shim mounts the image, or extracts it itself where FUSE is missing"),
    _refuse("--add-caps", value=True, why=UNPRIVILEGED),
    _refuse("--drop-caps", value=True, why=UNPRIVILEGED),
    _refuse("--allow-setuid", why=UNPRIVILEGED),
    _refuse("--security", value=True, why="no SELinux/AppArmor/seccomp profiles: shim runs unprivileged"),
    _refuse("--app", value=True, why="SCIF apps are not supported: run the app's command with exec"),
    _refuse("-o", "--overlay", value=True, why="overlay images are not supported: use --writable-tmpfs"),
    _refuse("-w", "--writable", why="images are read-only in shim: use --writable-tmpfs (changes kept until exit)"),
    _refuse("-S", "--scratch", value=True, why="not supported: bind a directory there with --bind"),
    _refuse("-W", "--workdir", value=True, why="not supported: --contain's /tmp and /var/tmp are in memory; "
            "bind a directory with --bind DIR:/tmp for more room"),
    _refuse("--hostname", value=True, why="no UTS namespace in shim"),
    _refuse("--uts", why="no UTS namespace in shim"),
    _refuse("--dns", value=True, why="the host's /etc/resolv.conf is used"),
    _refuse("--network-args", value=True, why="an unprivileged container has no network to configure"),
    _refuse("--boot", why="shim does not boot an init system"),
    _refuse("--oci", why="shim runs SIF, squashfs and directory images (pull OCI images to a SIF first)"),
    _refuse("--cdi-dirs", value=True, why="CDI specs are read from /etc/cdi, /var/run/cdi and the site's "
            "[cdi] dirs (shim.toml): ask the site to add a directory; request devices with --device"),
    _refuse("--nvccli", why="the NVIDIA container CLI is not used: --nv injects the driver itself"),
    _refuse("--sharens", why="not supported"),
    _refuse("--fusemount", value=True, why="FUSE mounts into the container are not supported"),
    _refuse("--pem-path", value=True, why="encrypted images are not supported"),
    _refuse("--passphrase", why="encrypted images are not supported"),
    _refuse("--apply-cgroups", value=True, why=CGROUPS),
    *(_refuse(name, value=True, why=CGROUPS) for name in (
        "--blkio-weight", "--blkio-weight-device", "--cpu-shares", "--cpus", "--cpuset-cpus", "--cpuset-mems",
        "--memory", "--memory-reservation", "--memory-swap", "--oom-kill-disable", "--pids-limit")),
    _refuse("--vm", why="no VMs"), _refuse("--vm-cpu", value=True, why="no VMs"),
    _refuse("--vm-err", why="no VMs"), _refuse("--vm-ip", value=True, why="no VMs"),
    _refuse("--vm-ram", value=True, why="no VMs"),
    _refuse("--docker-login", why="exec runs a local image: pull it first (apptainer pull)"),
    _refuse("--docker-host", value=True, why="no Docker daemon is used"),
    _refuse("--authfile", value=True, why="exec runs a local image: pull it first (apptainer pull --authfile)"),
)
# Options on `oci`-less `inspect`, which prints a shape of its own.
INSPECT_FLAGS = ("--json", "-j", "--labels", "-l", "--runscript", "-r", "--environment", "-e", "--deffile", "-d",
                 "--helpfile", "-H", "--test", "-t", "--list-apps", "--all")
# `pull` and `build`
PULL_OPTIONS: tuple[CompatOption, ...] = (
    CompatOption(("-F", "--force"), False, MAP, ("--force",)),
    _p("--name", value=True),
    _p("--arch", value=True),
    _p("--authfile", value=True),
    CompatOption(("--no-https", "--nohttps"), False, MAP, ("--no-https",)),
    _p("--dir", value=True),
    _accept("--disable-cache", why="the blob cache is only a cache: every blob is verified by digest anyway"),
    _accept("--no-cleanup", why="shim leaves nothing behind to clean"),
    _accept("--fakeroot", "-f", why="OCI layers are applied without privileges"),
    _refuse("--library", value=True, why="the Sylabs library is not supported: use docker:// or oras://"),
    _refuse("--oci", why="shim writes SIF images"),
    _refuse("-s", "--sandbox", why="sandbox directories are not built by shim: build a SIF (shim runs it unpacked "
            "where FUSE is missing)"),
    _refuse("-U", "--disable-cache-only", why="not supported"),
    _refuse("--docker-login", why="give credentials with --authfile or APPTAINER_DOCKER_USERNAME/_PASSWORD"),
    _refuse("--pem-path", value=True, why="encrypted images are not supported"),
    _refuse("--encrypt", "-e", why="encrypted images are not supported"),
    _refuse("--section", value=True, why="definition files are not supported"),
    _refuse("--notest", "-T", why="definition files are not supported"),
    _refuse("--update", "-u", why="definition files are not supported"),
    _refuse("--bind", "-B", value=True, why="definition files are not supported"),
)
