"""One container per node per job step: ranks that run the same image the same way share one
image mount and one user + mount namespace.

Under `srun` (SLURM_JOB_ID and SLURM_STEP_ID set) this is the default; `SHIMRUN_SHARE=0` turns
it off. Elsewhere (e.g. ranks started by `mpiexec`) `SHIMRUN_SHARE=1` groups the processes that
have the same parent (the launcher's proxy on that node), `SHIMRUN_SHARE=TAG` groups by TAG.

The group is named by an abstract unix socket (nothing on disk to leave behind) that holds the
user, the job step, the node (SLURMD_NODENAME: several slurmd on one machine are several nodes)
and a hash of everything that shapes the container: shimrun's arguments, the working directory,
the image file's identity and shimrun's own environment settings. The first rank to bind the
name leads: it plans, prints the diagnostics (once per node), and forks the holder (csrc/share.c),
which sets the container up and serves it; every rank, the leader included, then joins it and
execs its app, keeping its pid (signals and exit status stay native). The holder leaves when the
last member's app has exited; Slurm's end-of-step kill also ends it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

_MAX_PAYLOAD = 1 << 16
_SETTINGS_PREFIXES = ("SHIMRUN", "APPTAINERENV_", "SINGULARITYENV_", "APPTAINER_", "SINGULARITY_")
_JOIN_TIMEOUT = 120.0  # seconds a rank keeps trying to join or lead


LINGER_MS = 2000  # how long a holder waits for more ranks once none is left, when it cannot know


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
        image = [os.path.realpath(image_path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]
    except OSError:
        return None
    settings = sorted((k, v) for k, v in environ.items() if k.startswith(_SETTINGS_PREFIXES) or k in ("PATH", "HOME"))
    doc = json.dumps({"args": list(args), "cwd": cwd, "image": image, "env": settings}, sort_keys=True)
    key = hashlib.sha256(doc.encode()).hexdigest()[:24]
    return ShareGroup(f"\0shimrun/{os.getuid()}/{scope}/{key}".encode(), node, scope, expected)


@dataclass
class Joined:
    userns: int
    mntns: int
    payload: dict


def _receive(conn: socket.socket) -> Joined | None:
    from shim._core import ffi, lib

    userns, mntns = ffi.new("int *"), ffi.new("int *")
    buf = ffi.new("char[]", _MAX_PAYLOAD)
    n = lib.shim_receive(conn.fileno(), userns, mntns, buf, _MAX_PAYLOAD)
    if n < 0:
        return None
    try:
        payload = json.loads(ffi.string(buf).decode())
    except ValueError:
        payload = {}
    return Joined(userns[0], mntns[0], payload)


def join_or_lead(group: ShareGroup) -> Joined | socket.socket:
    """Joined: a holder served us. A listening socket: we lead (bound the group's name)."""
    deadline = time.monotonic() + _JOIN_TIMEOUT
    while time.monotonic() < deadline:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            conn.connect(group.name)
        except (ConnectionRefusedError, FileNotFoundError):
            conn.close()
        else:
            with conn:
                joined = _receive(conn)  # blocks until the holder has the container ready
            if joined:
                return joined
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


def payload_for(env_pairs: Sequence[str], env_unset: Sequence[str]) -> bytes:
    """What the holder tells every joining rank: the plan's environment edits (the rest of the
    environment each rank composes from its own, so PMI ranks and the like stay per rank)."""
    data = json.dumps({"env_pairs": list(env_pairs), "env_unset": list(env_unset)}).encode()
    if len(data) >= _MAX_PAYLOAD:
        raise ValueError("environment edits too large to share")
    return data
