"""How much of the host a launch sees: Apptainer's --contain/--containall, --ipc/--pid/--net,
--no-mount, --home, --mount, --writable-tmpfs, as data the planner turns into record binds.

What a contained container gets instead of the host's /dev, /tmp and home is a table here (the C
executor mounts what the record lists; it knows no container layout of its own)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from shim.container.binds import KEEPDEV, OPTIONAL, RO, SYSTEM_BINDS, Bind
from shim.errors import UsageError
from shim.options import LaunchOptions
from shim.record.format import BIND, NS

TMPFS, DEVPTS, PROC = BIND["TMPFS"], BIND["DEVPTS"], BIND["PROC"]

# --contain: a /dev with only the standard devices (as Apptainer's), private /tmp and /var/tmp.
MINIMAL_DEV: tuple[Bind, ...] = (
    Bind("mode=0755", "/dev", TMPFS),
    *(Bind(f"/dev/{name}", f"/dev/{name}", KEEPDEV | OPTIONAL) for name in ("null", "zero", "full", "random",
                                                                              "urandom", "tty")),
    Bind("newinstance,ptmxmode=0666,mode=0620", "/dev/pts", DEVPTS),
    Bind("mode=1777", "/dev/shm", TMPFS),
)
DEV_LINKS: tuple[tuple[str, str], ...] = (
    ("pts/ptmx", "/dev/ptmx"), ("/proc/self/fd", "/dev/fd"), ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"), ("/proc/self/fd/2", "/dev/stderr"))
PRIVATE_TMP: tuple[Bind, ...] = (Bind("mode=1777", "/tmp", TMPFS), Bind("mode=1777", "/var/tmp", TMPFS))
NEW_PROC = Bind("", "/proc", PROC)
EMPTY_HOME_OPTIONS = "mode=0700"

# --no-mount NAME: the system mounts each name leaves out. hostfs (Apptainer's "mount hostfs",
# every host file system) is never mounted by shim: accepted, nothing to leave out.
NO_MOUNT_NAMES = ("proc", "sys", "dev", "devpts", "tmp", "home", "cwd", "bind-paths", "hostfs")
_SYSTEM_BY_NAME = {"proc": ("/proc",), "sys": ("/sys",), "dev": ("/dev",), "tmp": ("/tmp", "/var/tmp")}


@dataclass(frozen=True)
class Isolation:
    """The parts of a launch's options that decide what of the host it sees."""
    namespaces: int = 0
    contain: bool = False
    cleanenv: bool = False
    writable: bool = False
    no_mount: frozenset[str] = frozenset()
    home: tuple[str, str] | None = None        # --home SRC[:DST]

    @property
    def home_bound(self) -> bool:
        """Is a host directory bound as the home (else an empty one, or none)?"""
        return "home" not in self.no_mount and (self.home is not None or not self.contain)


def isolation(args: LaunchOptions, cwd: str) -> Isolation:
    containall = args.containall
    contain = containall or args.contain
    network = args.network
    if network is not None and network != "none":
        raise UsageError(f"--network {network}: an unprivileged container can only have no network",
                         "use --net --network none (only lo), or leave both out for the host's network")
    if args.rocm:
        raise UsageError("--rocm: shim has no ROCm driver profile yet",
                         "leave --rocm out; a site can bind the ROCm libraries with an injection profile")
    namespaces = ((NS["IPC"] if containall or args.ipc else 0)
                  | (NS["PID"] if containall or args.pid else 0)
                  | (NS["NET"] if args.net or network == "none" else 0))
    no_mount: set[str] = set()
    for item in args.no_mount:
        for name in filter(None, (n.strip() for n in item.split(","))):
            if name not in NO_MOUNT_NAMES and not name.startswith("/"):
                raise UsageError(f"--no-mount {name}: not a mount shim makes",
                                 f"use one of {', '.join(NO_MOUNT_NAMES)} or a site bind's destination path")
            no_mount.add(name)
    if args.no_home:
        no_mount.add("home")
    return Isolation(namespaces=namespaces, contain=contain, cleanenv=containall or args.cleanenv,
                     writable=args.writable_tmpfs, no_mount=frozenset(no_mount),
                     home=_home_spec(args.home, cwd))


def _home_spec(spec: str | None, cwd: str) -> tuple[str, str] | None:
    if spec is None:
        return None
    src, _, dst = spec.partition(":")
    if not src or ":" in dst:
        raise UsageError(f"--home {spec}: not SRC[:DST]", "e.g. --home /scratch/me or --home $PWD:/home/me")
    src = os.path.normpath(os.path.join(cwd, src))
    dst = os.path.normpath(dst or src)
    if not dst.startswith("/") or dst == "/":
        raise UsageError(f"--home {spec}: the container's home must be an absolute path other than /",
                         "e.g. --home $PWD:/home/me")
    if not os.path.isdir(src):
        raise UsageError(f"--home {spec}: {src} is not a directory", "create it or fix the path")
    return src, dst


def system_binds(iso: Isolation) -> list[Bind]:
    """The host paths (or fresh file systems) every container of these options gets."""
    left_out = {p for name in iso.no_mount for p in _SYSTEM_BY_NAME.get(name, ())}
    binds: list[Bind] = []
    for b in SYSTEM_BINDS:
        if b.dst in left_out:
            continue
        if b.dst == "/proc" and iso.namespaces & NS["PID"]:
            binds.append(NEW_PROC)  # the PID namespace's own processes, not the host's
        elif b.dst == "/dev" and iso.contain:
            binds += [d for d in MINIMAL_DEV if not (d.flags & DEVPTS and "devpts" in iso.no_mount)]
        elif b.dst in ("/tmp", "/var/tmp") and iso.contain:
            binds += [t for t in PRIVATE_TMP if t.dst == b.dst]
        else:
            binds.append(b)
    return binds


def dev_links(iso: Isolation) -> tuple[tuple[str, str], ...]:
    if not iso.contain or "dev" in iso.no_mount:
        return ()
    return tuple(link for link in DEV_LINKS if link[1] != "/dev/ptmx" or "devpts" not in iso.no_mount)


def home_bind(iso: Isolation, home: str) -> Bind | None:
    """The home directory's mount: --home's directory, the caller's, or (contained) an empty one."""
    if "home" in iso.no_mount:
        return None
    if iso.home is not None:
        return Bind(iso.home[0], iso.home[1])
    if iso.contain:
        return Bind(EMPTY_HOME_OPTIONS, home, TMPFS)
    return Bind(home, home) if home != "/" else None


def parse_mount(spec: str) -> Bind:
    """Apptainer's --mount type=bind,source=S,target=T[,readonly] (src/dst, ro synonyms too)."""
    fields: dict[str, str] = {}
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        fields[key.strip()] = value if eq else "true"
    kind = fields.pop("type", "")
    src = fields.pop("source", None) or fields.pop("src", None)
    dst = fields.pop("target", None) or fields.pop("destination", None) or fields.pop("dst", None)
    read_only = any(fields.pop(k, "false") in ("", "true", "1") for k in ("readonly", "ro"))
    fields.pop("bind-propagation", None)
    if kind != "bind" or not src or not dst or fields:
        raise UsageError(f"--mount {spec}: not type=bind,source=S,target=T[,readonly]",
                         "shim mounts binds only; e.g. --mount type=bind,source=/data,target=/data,readonly")
    if not dst.startswith("/"):
        raise UsageError(f"--mount {spec}: target {dst} is not an absolute path", "write it as /path")
    if not os.path.exists(src):
        raise UsageError(f"--mount {spec}: source {src} does not exist", "create it or fix the path")
    return Bind(os.path.abspath(src), os.path.normpath(dst), RO if read_only else 0)


def read_env_file(path: str) -> tuple[str, ...]:
    """--env-file: K=V lines (blank lines, # comments and a leading `export ` allowed), taken
    literally but for one pair of matching quotes around a whole value, which is removed (Apptainer
    reads the file as sh, where `K="a b"` is `a b`; Docker would keep them): shim evaluates nothing
    through a shell, no $VAR, no escapes (README, "Environment")."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--env-file {path}: cannot be read ({getattr(e, 'strerror', None) or e})",
                         "give a readable file of K=V lines") from None
    pairs = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        text = text.removeprefix("export ").strip()
        key, eq, value = text.partition("=")
        if not eq or not key.replace("_", "a").isalnum() or key[0].isdigit():
            raise UsageError(f"--env-file {path}, line {number}: not K=V", "write one NAME=value per line")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        pairs.append(f"{key}={value}")
    return tuple(pairs)
