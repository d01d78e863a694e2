"""A real, private Slurm cluster on this machine for the tests: slurmctld plus 1..N slurmd, all on
127.0.0.1, started and stopped by the tests themselves (needs root and the Debian packages
slurm-wlm and munge, see requirements-apt.txt).

    with LocalSlurm(nodes=3) as slurm:
        r = slurm.srun(["-N", "3", "-n", "3", "hostname"], user=user)

Everything belongs to one instance and lives in a fresh directory BASE (`mkdtemp` under
`base_dir`, default /var/tmp; world-traversable so an ordinary user's srun can read the config):

    BASE/slurm.conf            the cluster's config (SLURM_CONF for srun/sinfo: see env())
    BASE/plugstack.conf        its SPANK plugins (the `plugstack` argument's text; empty by default)
    BASE/munge/socket          a private munged (run as user munge) with the host key
    BASE/state, BASE/spool/nX  slurmctld's StateSaveLocation, each slurmd's SlurmdSpoolDir (%n)
    BASE/log/                  slurmctld.log, slurmd.nX.log, the daemons' stdout/stderr (*.out)
    BASE/run/                  pid files
    BASE/owner                 "PID STARTTIME" of the process that started it (crash detection)

Nodes are named n1..nN (also for one node), each slurmd started with `-N nX` on its own port.
Ports are picked at random among free ones for every start, so two instances (or a crashed
earlier run whose daemons still hold their ports) never clash. munged is private too (its own
socket, AuthInfo=socket=... in slurm.conf), so the host's munged is neither needed nor touched;
only /etc/munge/munge.key is shared, and created (mode 0400, owner munge) only if absent.

stop() cancels the jobs, terminates every daemon it started, kills whatever is still attached to
BASE (slurmstepd and the tasks below them), and removes BASE. start() first cleans up the
leftovers of instances whose owner process is gone (a crashed or killed test run).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Protocol

SBIN = Path("/usr/sbin")
MUNGE_KEY = Path("/etc/munge/munge.key")
DEFAULT_PARENT = Path("/var/tmp")
BASE_PREFIX = "shim-slurm."
CLUSTER_NAME = "shimtest"
PARTITION = "debug"
START_TIMEOUT = 30.0
# Ports are drawn from below the kernel's ephemeral range (32768-60999), so outgoing connections
# cannot take one between our check and the daemon's bind.
PORT_RANGE = (20000, 32000)
DAEMON_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class HasIds(Protocol):
    """What run()/srun() need of a user (conftest's User has it)."""

    @property
    def uid(self) -> int: ...

    @property
    def gid(self) -> int: ...


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _starttime(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): a pid plus this names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _pids() -> list[int]:
    return [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int) -> bool:
    """Running, i.e. existing and not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def procs_using(root: Path) -> list[int]:
    """Live processes (other than this one) whose cwd, command line or an open file lies under
    `root`: our daemons, and slurmstepd (cwd is slurmd's, and it keeps slurmd's log open)."""
    prefix = str(root).rstrip("/") + "/"
    me = os.getpid()
    found = []
    for pid in _pids():
        if pid == me or not alive(pid):
            continue
        base = Path(f"/proc/{pid}")
        try:
            links = [os.readlink(base / "cwd")]
            links += [os.readlink(base / "fd" / fd) for fd in os.listdir(base / "fd")]
            cmdline = (base / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if prefix in cmdline or any(link == prefix[:-1] or link.startswith(prefix) for link in links):
            found.append(pid)
    return found


def descendants(pids: Sequence[int]) -> list[int]:
    """`pids` and every live process below them (parents before children)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        ppid = _ppid(pid)
        if ppid is not None:
            children.setdefault(ppid, []).append(pid)
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop(0)
        if pid in out:
            continue
        out.append(pid)
        todo.extend(children.get(pid, []))
    return [p for p in out if alive(p)]


def kill_tree(pids: Sequence[int], timeout: float = 5.0) -> None:
    """SIGKILL `pids` and their descendants (found first, so orphans are not lost) and wait."""
    victims = descendants(pids)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    end = time.monotonic() + timeout
    while any(alive(p) for p in victims) and time.monotonic() < end:
        time.sleep(0.02)


def free_ports(count: int, avoid: Sequence[int] = ()) -> list[int]:
    """`count` distinct TCP ports in PORT_RANGE that can be bound right now on all addresses."""
    ports: list[int] = []
    rng = random.Random()
    for _ in range(2000):
        port = rng.randrange(*PORT_RANGE)
        if port in ports or port in avoid:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError(f"no {count} free TCP ports in {PORT_RANGE}")


def reap_stale(parent: Path = DEFAULT_PARENT) -> list[Path]:
    """Kill the processes of, and remove, every PARENT/shim-slurm.* whose owner is gone."""
    removed = []
    for base in parent.glob(BASE_PREFIX + "*"):
        try:
            pid_s, start = (base / "owner").read_text().split()
            pid = int(pid_s)
        except (OSError, ValueError):
            # No (complete) owner file: a start() that crashed before writing it, or not ours.
            # Only touch it when it is old enough not to be one starting right now.
            try:
                if time.time() - base.stat().st_mtime < 120:
                    continue
            except OSError:
                continue
            pid, start = -1, ""
        if pid > 0 and _starttime(pid) == start:
            continue  # its owner still runs
        kill_tree(procs_using(base))
        shutil.rmtree(base, ignore_errors=True)
        removed.append(base)
    return removed


def ensure_munge_key(path: Path = MUNGE_KEY) -> bool:
    """Create the host's munge key (1024 random bytes, 0400, owner munge) if absent; True if made."""
    if path.exists():
        return False
    pw = pwd.getpwnam("munge")
    path.parent.mkdir(mode=0o700, exist_ok=True)
    os.chown(path.parent, pw.pw_uid, pw.pw_gid)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    try:
        os.write(fd, os.urandom(1024))
        os.fchown(fd, pw.pw_uid, pw.pw_gid)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replace a key someone else created meanwhile
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


def missing_tools() -> list[str]:
    tools = [SBIN / "slurmctld", SBIN / "slurmd", SBIN / "munged"]
    found = [str(t) for t in tools if not os.access(t, os.X_OK)]
    return found + [t for t in ("srun", "sinfo", "squeue", "scancel", "munge") if shutil.which(t) is None]


class LocalSlurm:
    """A private Slurm cluster of `nodes` nodes (n1..nN) with `cpus` CPUs each (declared, not
    real: SlurmdParameters=config_overrides, so `srun -n 64` fits on a 2-core machine)."""

    def __init__(self, nodes: int = 1, base_dir: str | os.PathLike | None = None, cpus: int = 64,
                 timeout: float = START_TIMEOUT, plugstack: str = "") -> None:
        if nodes < 1:
            raise ValueError("nodes must be >= 1")
        self.nodes = nodes
        self.cpus = cpus
        self.timeout = timeout
        # BASE/plugstack.conf's text (SPANK plugins): written before the daemons start, as slurmd
        # reads it once at its start (a plugin's job prolog/epilog), srun and slurmstepd at each step.
        self.plugstack = plugstack
        self.parent = Path(base_dir) if base_dir is not None else DEFAULT_PARENT
        self.node_names = [f"n{i}" for i in range(1, nodes + 1)]
        self.base: Path | None = None
        self.ctld_port = 0
        self.node_ports: dict[str, int] = {}
        self.munge_socket: Path | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self.start_seconds = 0.0
        self.created_munge_key = False
        self.first_job_id = random.randrange(1000, 60_000_000)

    # -- paths -------------------------------------------------------------------------------

    def _base(self) -> Path:
        if self.base is None:
            raise RuntimeError("LocalSlurm is not started")
        return self.base

    @property
    def conf(self) -> Path:
        return self._base() / "slurm.conf"

    @property
    def log_dir(self) -> Path:
        return self._base() / "log"

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalSlurm:
        if self.base is not None:
            raise RuntimeError("LocalSlurm already started")
        if os.getuid() != 0:
            raise PermissionError("LocalSlurm needs root (slurmd runs as root)")
        missing = missing_tools()
        if missing:
            raise RuntimeError(f"Slurm/munge not installed ({', '.join(missing)}): install requirements-apt.txt")
        t0 = time.monotonic()
        reap_stale(self.parent)
        self.created_munge_key = ensure_munge_key()
        self.parent.mkdir(parents=True, exist_ok=True)
        self.base = Path(tempfile.mkdtemp(prefix=BASE_PREFIX, dir=self.parent))
        try:
            self.base.chmod(0o755)
            (self.base / "owner").write_text(f"{os.getpid()} {_starttime(os.getpid())}\n")
            for sub in ("state", "log", "run", *(f"spool/{n}" for n in self.node_names)):
                (self.base / sub).mkdir(parents=True, mode=0o755)
            self._start_munged()
            for attempt in range(3):
                try:
                    self._start_slurm()
                    break
                except _PortClash:
                    self._stop_slurm(timeout=0)
                    if attempt == 2:
                        raise RuntimeError("slurm daemons could not bind their ports 3 times") from None
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _spawn(self, name: str, argv: Sequence[str], **kw) -> subprocess.Popen:
        base = self._base()
        out = open(base / "log" / f"{name}.out", "ab")  # noqa: SIM115 (the child keeps it)
        try:
            proc = subprocess.Popen(list(argv), cwd=base, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env={"PATH": DAEMON_PATH, "LANG": "C"},
                                    start_new_session=True, **kw)
        finally:
            out.close()
        self._procs[name] = proc
        return proc

    def _start_munged(self) -> None:
        pw = pwd.getpwnam("munge")
        d = self._base() / "munge"
        d.mkdir(mode=0o755)
        d.chmod(0o755)
        os.chown(d, pw.pw_uid, pw.pw_gid)
        self.munge_socket = d / "socket"
        proc = self._spawn("munged", [str(SBIN / "munged"), "--foreground", f"--socket={self.munge_socket}",
                                      f"--key-file={MUNGE_KEY}", f"--pid-file={d / 'munged.pid'}",
                                      f"--seed-file={d / 'munged.seed'}", f"--log-file={d / 'munged.log'}"],
                           user=pw.pw_uid, group=pw.pw_gid, extra_groups=[])
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if proc.poll() is not None:
                break
            if self.munge_socket.exists():
                r = subprocess.run(["munge", "-n", "-S", str(self.munge_socket)], capture_output=True,
                                   stdin=subprocess.DEVNULL, check=False, timeout=10)
                if r.returncode == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError(f"munged did not start (exit {proc.poll()}):\n{self.logs()}")

    def _start_slurm(self) -> None:
        ports = free_ports(1 + self.nodes)
        self.ctld_port = ports[0]
        self.node_ports = dict(zip(self.node_names, ports[1:], strict=True))
        self.conf.write_text(self.config_text())
        self.conf.chmod(0o644)
        (self._base() / "plugstack.conf").write_text(self.plugstack)
        (self._base() / "plugstack.conf").chmod(0o644)
        for f in self.log_dir.glob("slurm*"):
            f.unlink()
        self._spawn("slurmctld", [str(SBIN / "slurmctld"), "-D", "-i", "-f", str(self.conf)])
        for n in self.node_names:
            self._spawn(f"slurmd.{n}", [str(SBIN / "slurmd"), "-D", "-f", str(self.conf), "-N", n])
        self._wait_idle()

    def _wait_idle(self) -> None:
        end = time.monotonic() + self.timeout
        states: dict[str, str] = {}
        while time.monotonic() < end:
            if "Address already in use" in self.logs():  # a daemon would retry binding for a while
                raise _PortClash
            dead = [name for name, p in self._procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"slurm daemon(s) {', '.join(dead)} exited during startup:\n{self.logs()}")
            try:  # short: a port clash can leave sinfo talking to someone else's listener
                r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, check=False,
                                   env=self.env(), stdin=subprocess.DEVNULL, timeout=3)
            except subprocess.TimeoutExpired:
                continue
            if r.returncode == 0:
                states = dict(line.split(None, 1) for line in r.stdout.splitlines() if line.strip())
                if sorted(states) == sorted(self.node_names) and all(s == "idle" for s in states.values()):
                    return
            time.sleep(0.1)
        raise RuntimeError(f"slurm nodes not idle after {self.timeout:.0f}s (sinfo: {states}):\n{self.logs()}")

    def _terminate(self, names: Sequence[str], timeout: float = 10.0) -> None:
        procs = [(n, self._procs.pop(n)) for n in names if n in self._procs]
        for _, p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for _, p in procs:
            try:
                p.wait(max(0.05, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill_tree([p.pid])
                p.wait()

    def _cancel_jobs(self) -> None:
        if "slurmctld" not in self._procs or self._procs["slurmctld"].poll() is not None:
            return
        env = self.env()
        r = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=False, env=env,
                           stdin=subprocess.DEVNULL, timeout=10)
        jobs = r.stdout.split() if r.returncode == 0 else []
        if not jobs:
            return
        subprocess.run(["scancel", *jobs], capture_output=True, check=False, env=env, stdin=subprocess.DEVNULL,
                       timeout=10)
        end = time.monotonic() + 10
        while time.monotonic() < end:
            r = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=False, env=env,
                               stdin=subprocess.DEVNULL, timeout=10)
            if r.returncode != 0 or not r.stdout.strip():
                return
            time.sleep(0.1)

    def _stop_slurm(self, timeout: float = 10.0) -> None:
        self._terminate([n for n in self._procs if n.startswith("slurmd.")], timeout)
        self._terminate(["slurmctld"], timeout)
        if self.base is not None:
            kill_tree([p for p in procs_using(self.base) if not self._is_munged(p)])

    def _is_munged(self, pid: int) -> bool:
        return "munged" in self._procs and self._procs["munged"].pid == pid

    def stop(self) -> None:
        """Idempotent: cancel jobs, stop the daemons, kill leftovers under BASE, remove BASE."""
        try:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                self._cancel_jobs()
            self._stop_slurm()
            self._terminate(["munged"])
        finally:
            for p in self._procs.values():
                if p.poll() is None:
                    kill_tree([p.pid])
                    p.wait()
            self._procs.clear()
            if self.base is not None:
                kill_tree(procs_using(self.base))
                shutil.rmtree(self.base, ignore_errors=True)
                self.base = None

    # -- use ---------------------------------------------------------------------------------

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """`base` (default: os.environ) without SLURM_*/PMI*/PMIX_* variables (the test run may itself
        be a Slurm job), plus SLURM_CONF of this cluster: the environment for srun/sinfo/squeue."""
        src = os.environ if base is None else base
        env = {k: v for k, v in src.items() if not k.startswith(("SLURM_", "PMI_", "PMI2_", "PMIX_"))}
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, argv: Sequence[str], user: HasIds | None = None, env: Mapping[str, str] | None = None,
            timeout: float = 60, cwd: str | os.PathLike = "/tmp", **kw) -> subprocess.CompletedProcess:
        """Run a command (srun, sbatch...) against this cluster, as `user` (uid/gid) if given."""
        ids = {"user": user.uid, "group": user.gid, "extra_groups": []} if user is not None else {}
        return subprocess.run(list(map(str, argv)), check=False, cwd=cwd, env=self.env(env), capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, **ids, **kw)

    def srun(self, args: Sequence[str], user: HasIds | None = None, env: Mapping[str, str] | None = None,
             timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return self.run(["srun", *args], user=user, env=env, timeout=timeout, **kw)

    def pids(self) -> list[int]:
        """Live processes of this instance: its daemons and anything attached to BASE."""
        own = [p.pid for p in self._procs.values() if p.poll() is None]
        return sorted(set(own) | (set(procs_using(self.base)) if self.base else set()))

    def logs(self, n: int = 25) -> str:
        if self.base is None:
            return ""
        files = sorted(self.log_dir.glob("*")) + [self._base() / "munge" / "munged.log"]
        return "\n".join(f"--- {f.name} (last {n} lines)\n{_tail(f, n)}" for f in files if f.exists())

    def config_text(self) -> str:
        b = self._base()
        nodes = "\n".join(f"NodeName={n} NodeAddr=127.0.0.1 NodeHostname={n} Port={self.node_ports[n]} "
                          f"CPUs={self.cpus} RealMemory=1000 State=UNKNOWN" for n in self.node_names)
        return f"""\
# Written by tests/slurm.py: a private test cluster; removed when it stops.
ClusterName={CLUSTER_NAME}
SlurmctldHost=localhost
SlurmctldPort={self.ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=none
SlurmdParameters=config_overrides
ReturnToService=2
MaxJobCount=10000
# Job ids start somewhere new for every test cluster: MPI libraries name shared-memory segments
# after the job and step (MPICH's /dev/shm/mpich_shm_*), and a segment left by a killed run of an
# earlier cluster with the same ids would be attached to and break MPI_Init.
FirstJobId={self.first_job_id}
MinJobAge=10
KillWait=5
KillOnBadExit=1
InactiveLimit=0
MessageTimeout=20
MailProg=/bin/true
PlugStackConfig={b}/plugstack.conf
StateSaveLocation={b}/state
SlurmdSpoolDir={b}/spool/%n
SlurmctldPidFile={b}/run/slurmctld.pid
SlurmdPidFile={b}/run/slurmd.%n.pid
SlurmctldLogFile={b}/log/slurmctld.log
SlurmdLogFile={b}/log/slurmd.%n.log
SlurmctldDebug=info
SlurmdDebug=info
{nodes}
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
"""

    def mpi_plugins(self) -> list[str]:
        """`srun --mpi=list`: the MPI plugin types this Slurm has (e.g. pmix, none, cray_shasta, pmi2)."""
        r = self.run(["srun", "--mpi=list"])
        text = r.stdout + r.stderr
        return [line.strip() for line in text.splitlines() if line.startswith("\t") and line.strip()]


class _PortClash(Exception):
    pass


def local_slurm_fixture(nodes: int = 1, *, scope: str = "module", name: str | None = None, **kwargs):
    """A pytest fixture yielding a started LocalSlurm(nodes, **kwargs), stopped after its scope:

        slurm1 = local_slurm_fixture(1)                  # in conftest.py or a test module
        slurm3 = local_slurm_fixture(3, scope="session")

    (the fixture's name is the variable's, or `name`). Skips when not root."""
    import pytest

    @pytest.fixture(scope=scope, name=name)
    def _local_slurm() -> Iterator[LocalSlurm]:
        if os.getuid() != 0:
            pytest.skip("a local Slurm needs root")
        with LocalSlurm(nodes, **kwargs) as cluster:
            yield cluster

    return _local_slurm
