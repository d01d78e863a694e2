"""The runtime's own names that the planner and the C core both read: one definition each,
written into C by shim/cgen.py (csrc/gen/runtime.h), never copied there by hand.

- Settings: the variables of the runtime itself (SHIMRUN*, APPTAINER*, SINGULARITY*). They are
  part of a record's key and of a shared container's name, never passed into the container, and
  the *ENV_ ones set the app's variables (Apptainer's rule, later names winning).
- SHIMRUN_SHARE: whether ranks share one container per node (csrc/share.c holds the election;
  shim/launch/execute.py asks whether a launch might take part in one).
- The share protocol's tags (csrc/share.c asks, csrc/serve.c answers) and the hash tags that keep
  a record key and a group name from ever colliding with a hash of anything else.
- The Slurm variables the C core reads (node, step, tasks, provenance's job identity).

Non-goal: the variables the planner's hardware check reads (shim/record/format.py JOB_VARIABLES),
which are part of the record format.
"""

from __future__ import annotations

from shim.options import TRUE_WORDS

# The runtime's names, in the order their rules are written into a record (ENV_PASS).
RUNTIMES = ("SHIMRUN", "APPTAINER", "SINGULARITY")
SETTINGS_PREFIXES = RUNTIMES  # a variable starting with one is a setting (record key, share group)
BLOCKED_PREFIXES = tuple(p for name in RUNTIMES for p in (f"{name}_", f"{name}ENV_"))  # never passed in
# --env by prefix (Apptainer's APPTAINERENV_X=v): lowest precedence first, so that later prefixes win.
OVERRIDE_PREFIXES = tuple(f"{name}ENV_" for name in reversed(RUNTIMES))
# Host variables that shape a shared container besides the settings (its app's PATH and HOME).
SHARE_SHAPING = ("PATH", "HOME")

SHARE_VARIABLE = "SHIMRUN_SHARE"
SHARE_OFF = ("0", "no", "off", "false")  # no sharing, even under srun (compared case-blind)
SHARE_ON = TRUE_WORDS  # share with the processes of the same parent; any other word is a tag

# Share protocol (csrc/share.c, csrc/serve.c): NUL-terminated fields.
SHARE_REQUEST = "SHIMREQ1"  # request: tag, cwd, argc, argv..., environ... (then EOF)
SHARE_REPLY_OK = "OK"  # reply: tag, cwd, argc, argv..., envc, envp... with the namespace fds
SHARE_REPLY_ERROR = "ER"  # reply: tag, code, message
SHARE_HASH_TAG = "shim-share-v1"  # first field hashed into a group's name
RECORD_KEY_TAG = "shim-record-v1"  # first field hashed into a record's key

# Kept mounts (csrc/kept.c asks, csrc/kepthold.c answers): the holder's abstract socket is
# "\0" KEPT_SOCKET "/UID/NODE/JOBID/HASH"; request: tag, idle seconds; reply: SHARE_REPLY_OK,
# holder pid, squashfuse pid with the namespace fds, or SHARE_REPLY_ERROR, message.
KEPT_SOCKET = "shimrun-kept"
KEPT_REQUEST = "SHIMKEPT1"
KEPT_HASH_TAG = "shim-kept-v1"  # first field hashed into a kept mount's name

# Slurm's variables, as the C core reads them (name in C: SHIM_SLURM_<key>).
SLURM = {
    "JOB_ID": "SLURM_JOB_ID",
    "STEP_ID": "SLURM_STEP_ID",
    "NODEID": "SLURM_NODEID",
    "NODENAME": "SLURMD_NODENAME",  # several slurmd on one host are several nodes
    "LOCALID": "SLURM_LOCALID",
    "PROCID": "SLURM_PROCID",
    "NTASKS": "SLURM_NTASKS",
    "JOB_NODELIST": "SLURM_JOB_NODELIST",
    "ARRAY_JOB_ID": "SLURM_ARRAY_JOB_ID",
    "ARRAY_TASK_ID": "SLURM_ARRAY_TASK_ID",
    "STEP_TASKS_PER_NODE": "SLURM_STEP_TASKS_PER_NODE",
}
# A launch's identity in a job, for the provenance record (in this order).
SLURM_IDENTITY = tuple(SLURM[k] for k in ("JOB_ID", "STEP_ID", "PROCID", "LOCALID", "NODEID", "NODENAME", "NTASKS",
                                          "JOB_NODELIST", "ARRAY_JOB_ID", "ARRAY_TASK_ID"))


def share_off(value: str) -> bool:
    """SHIMRUN_SHARE's value turns sharing off."""
    return value.lower() in SHARE_OFF
