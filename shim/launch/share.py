"""One container per node per job step: ranks that run the same image the same way share one
image mount and one user + mount namespace.

Under `srun` (SLURM_JOB_ID and SLURM_STEP_ID set) this is the default; `SHIMRUN_SHARE=0` turns
it off. Elsewhere (e.g. ranks started by `mpiexec`) `SHIMRUN_SHARE=1` groups the processes that
have the same parent (the launcher's proxy on that node), `SHIMRUN_SHARE=TAG` groups by TAG.

The group is named by an abstract unix socket (nothing on disk to leave behind): the user, the
job step, the node (SLURMD_NODENAME: several slurmd on one machine are several nodes) and a hash
of everything that shapes the container: shimrun's arguments, the working directory, the image
file's identity and shimrun's own environment settings. csrc/frontend.c computes the same name
(group_key below and its group_name must stay in step).

The first rank to bind the name leads: it forks the holder, which mounts, plans, prints the
diagnostics (once per node), sets the container up (csrc/share.c) and serves it. Every rank, the
leader included, then sends the holder its arguments, working directory and environment; the
holder composes that rank's environment with the same code as a single launch and answers with
its namespaces (SCM_RIGHTS) and what to exec; the rank enters them and execs, keeping its pid,
so signals and exit status stay native. The native front-end does this without starting Python.
The holder watches each app through a pidfd and leaves when the node's tasks of the step
(SLURM_STEP_TASKS_PER_NODE) have come and gone, or when none has been there for LINGER_MS;
Slurm's end-of-step kill also ends it, and squashfuse with it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import select
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

LINGER_MS = 2000        # how long a holder waits for more ranks once none is left, when it cannot know
FIRST_MEMBER_MS = 10000  # the leader connects as soon as the holder serves; this is a backstop
_JOIN_TIMEOUT = 120.0    # seconds a rank keeps trying to join or lead
_REQUEST = b"SHIMREQ1"
_MAX_REQUEST = 1 << 22
_SETTINGS_PREFIXES = ("SHIMRUN", "APPTAINERENV_", "SINGULARITYENV_", "APPTAINER_", "SINGULARITY_", "PATH=", "HOME=")
_FNV_PRIME = 0x100000001B3
_MASK = (1 << 64) - 1


@dataclass(frozen=True)
class ShareGroup:
    name: bytes            # abstract socket address
    node: str              # Slurm node name (or host name), for the diagnostics' prefix
    scope: str             # what is shared, for --debug
    expected: int = 0      # ranks of the step on this node (0: unknown)
    linger_ms: int = LINGER_MS


def local_tasks(environ: Mapping[str, str]) -> int:
    """How many tasks of this step run on this node, from SLURM_STEP_TASKS_PER_NODE ("4(x2),3")
    and SLURM_NODEID (this node's index in the step); 0 when Slurm does not say."""
    spec, node_id = environ.get("SLURM_STEP_TASKS_PER_NODE", ""), environ.get("SLURM_NODEID", "")
    if not spec or not node_id.isdigit():
        return 0
    counts: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            return 0
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    index = int(node_id)
    return counts[index] if index < len(counts) else 0


def group_key(fields: Sequence[str]) -> str:
    """Two FNV-1a 64-bit hashes over the fields, each with its NUL (frontend.c's fnv_add)."""
    a, b = 0xCBF29CE484222325, 0x84222325CBF29CE4
    for field in fields:
        for byte in field.encode("utf-8", "surrogateescape") + b"\0":
            a = ((a ^ byte) * _FNV_PRIME) & _MASK
            b = ((b ^ byte) * _FNV_PRIME) & _MASK
    return f"{a:016x}{b:016x}"


def share_group(args: Sequence[str], environ: Mapping[str, str], cwd: str, image_path: str) -> ShareGroup | None:
    setting = environ.get("SHIMRUN_SHARE", "")
    if setting.lower() in ("0", "no", "off", "false"):
        return None
    node = environ.get("SLURMD_NODENAME") or socket.gethostname()
    expected = 0
    if environ.get("SLURM_JOB_ID") and environ.get("SLURM_STEP_ID"):
        scope = f"slurm-{environ['SLURM_JOB_ID']}.{environ['SLURM_STEP_ID']}@{node}"
        expected = local_tasks(environ)
    elif setting.lower() in ("1", "yes", "on", "true"):
        scope = f"parent-{os.getppid()}@{node}"
    elif setting:
        scope = f"tag-{setting}@{node}"
    else:
        return None
    try:
        st = os.stat(image_path)
    except OSError:
        return None
    uid = str(os.getuid())
    settings = sorted(f"{k}={v}" for k, v in environ.items() if f"{k}=".startswith(_SETTINGS_PREFIXES))
    key = group_key(["shim-share-v1", uid, scope, cwd, os.path.realpath(image_path),
                     f"{st.st_dev} {st.st_ino} {st.st_size} {st.st_mtime_ns}", "--args--", *args, "--env--",
                     *settings])
    name = f"\0shimrun/{uid}/{scope}/{key}".encode()
    if len(name) > 107:  # sun_path's size: the same rule as frontend.c (it then falls back to Python)
        return None
    return ShareGroup(name, node, scope, expected)


# ---- a rank's side ----------------------------------------------------------------------------

@dataclass
class Joined:
    userns: int
    mntns: int
    cwd: str
    argv: list[str]
    envp: list[str]


def _fields(data: bytes) -> list[str]:
    return [f.decode("utf-8", "surrogateescape") for f in data.split(b"\0")[:-1]]


def request_bytes(args: Sequence[str], cwd: str, environ: Mapping[str, str]) -> bytes:
    parts = [_REQUEST, cwd.encode(), str(len(args)).encode(), *(a.encode("utf-8", "surrogateescape") for a in args),
             *(f"{k}={v}".encode("utf-8", "surrogateescape") for k, v in environ.items())]
    return b"".join(p + b"\0" for p in parts)


def _ask(conn: socket.socket, args: Sequence[str], cwd: str, environ: Mapping[str, str]) -> Joined | str | None:
    """Joined; or the holder's refusal message ("code\\0message"); None: the holder was leaving."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
    if int.from_bytes(creds[4:8], "little") != os.getuid():
        # An abstract name is not private: another user squats it. Tell them nothing.
        raise PermissionError(errno.EACCES, "the node's shared-container socket belongs to another user")
    try:
        conn.sendall(request_bytes(args, cwd, environ))
        conn.shutdown(socket.SHUT_WR)
        data, fds, _flags, _addr = socket.recv_fds(conn, 1 << 16, 2)
        chunks = [data]
        while chunk := conn.recv(1 << 16):
            chunks.append(chunk)
    except OSError:
        return None
    fields = _fields(b"".join(chunks))
    if fields[:1] == ["ER"] and len(fields) >= 3:
        return f"{fields[1]}\0{fields[2]}"
    if fields[:1] != ["OK"] or len(fds) != 2:
        for fd in fds:
            os.close(fd)
        return None
    argc = int(fields[2])
    argv = fields[3:3 + argc]
    envc = int(fields[3 + argc])
    return Joined(fds[0], fds[1], fields[1], argv, fields[4 + argc:4 + argc + envc])


def join_or_lead(group: ShareGroup, args: Sequence[str], cwd: str,
                 environ: Mapping[str, str]) -> Joined | str | socket.socket:
    """Joined: a holder served us. str: the holder refused ("code\\0message"). A listening socket:
    we lead (we bound the group's name)."""
    deadline = time.monotonic() + _JOIN_TIMEOUT
    while time.monotonic() < deadline:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            conn.connect(group.name)
        except (ConnectionRefusedError, FileNotFoundError):
            conn.close()
        else:
            with conn:
                answer = _ask(conn, args, cwd, environ)  # blocks until the holder has the container ready
            if answer is not None:
                return answer
            time.sleep(0.005)  # the holder was leaving: start afresh
            continue
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            listener.bind(group.name)
        except OSError as e:
            listener.close()
            if e.errno != errno.EADDRINUSE:
                raise
            time.sleep(0.001)  # another rank just became leader and is about to listen: join it
            continue
        listener.listen(socket.SOMAXCONN)
        return listener
    raise OSError(errno.EAGAIN, "could not join or start the node's container")


# ---- the holder's side ------------------------------------------------------------------------

@dataclass(frozen=True)
class ExecSpec:
    cwd: str
    argv: list[str]
    envp: list[str]


class Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def parse_request(data: bytes) -> tuple[list[str], str, dict[str, str]]:
    fields = _fields(data)
    if fields[:1] != [_REQUEST.decode()] or len(fields) < 3 or not fields[2].isdigit():
        raise Refused(71, "malformed request to the node's container")
    argc = int(fields[2])
    args = fields[3:3 + argc]
    env = dict(e.split("=", 1) for e in fields[3 + argc:] if "=" in e)
    return args, fields[1], env


def _reply(conn: socket.socket, userns: int, mntns: int, spec: ExecSpec) -> None:
    parts = ["OK", spec.cwd, str(len(spec.argv)), *spec.argv, str(len(spec.envp)), *spec.envp]
    body = b"".join(p.encode("utf-8", "surrogateescape") + b"\0" for p in parts)
    sent = socket.send_fds(conn, [body[:4096]], [userns, mntns])
    conn.sendall(body[sent:])


def _refuse(conn: socket.socket, code: int, message: str) -> None:
    conn.sendall(serve_refusal(code, message))


def _read_request(conn: socket.socket) -> bytes:
    conn.settimeout(10)
    chunks, size = [], 0
    while chunk := conn.recv(1 << 16):
        chunks.append(chunk)
        size += len(chunk)
        if size > _MAX_REQUEST:
            raise Refused(71, "request to the node's container too large")
    return b"".join(chunks)


def refuse_all(listener: socket.socket, code: int, message: str, expected: int = 0,
               linger_ms: int = LINGER_MS) -> None:
    """The node's container could not be set up (its leader printed why, once for the node):
    answer every other rank of the step with the same refusal instead of letting each become a
    leader in turn and print it all again. Until `expected` ranks (0: unknown) have been answered,
    or none came for linger_ms."""
    answer = serve_refusal(code, message)
    uid, refused = os.getuid(), 0
    listener.settimeout(linger_ms / 1000)
    while not (expected and refused >= expected):
        try:
            conn, _ = listener.accept()
        except OSError:  # the linger time passed with nobody coming
            break
        with conn:
            try:
                creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                if int.from_bytes(creds[4:8], "little") != uid:
                    continue
                _read_request(conn)
                conn.sendall(answer)
            except (OSError, Refused):
                continue
        refused += 1
    listener.close()


def serve_refusal(code: int, message: str) -> bytes:
    return b"ER\0" + str(code).encode() + b"\0" + message.encode("utf-8", "replace") + b"\0"


def serve(listener: socket.socket, userns: int, mntns: int, exec_spec: Callable[[bytes], ExecSpec],
          expected: int = 0, linger_ms: int = LINGER_MS) -> None:
    """Answer ranks until every expected member (0: unknown) has come and its app exited, or none
    has been there for linger_ms. Runs after pivot_root: everything it uses is imported already."""
    poller = select.poll()
    poller.register(listener.fileno(), select.POLLIN)
    members: dict[int, int] = {}  # pidfd -> pid
    served = 0
    uid = os.getuid()
    while True:
        timeout = None if members else (linger_ms if served else FIRST_MEMBER_MS)
        events = poller.poll(timeout)
        if not events:
            break
        for fd, _ev in events:
            if fd in members:  # that member's app has exited
                poller.unregister(fd)
                os.close(fd)
                del members[fd]
                continue
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            with conn:
                try:
                    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
                    pid, peer_uid = int.from_bytes(creds[0:4], "little"), int.from_bytes(creds[4:8], "little")
                    if peer_uid != uid:  # an abstract socket's name is not private
                        continue
                    pidfd = os.pidfd_open(pid)
                except OSError:
                    continue
                try:
                    _reply(conn, userns, mntns, exec_spec(_read_request(conn)))
                except Refused as e:
                    os.close(pidfd)
                    with contextlib.suppress(OSError):
                        _refuse(conn, e.code, e.message)
                    continue
                except OSError:
                    os.close(pidfd)
                    continue
                members[pidfd] = pid
                poller.register(pidfd, select.POLLIN)
                served += 1
        if not members and expected and served >= expected:
            break
    listener.close()  # a rank connecting now is refused and starts afresh
